// Shared by the browser checks (run through scripts/browser): launches Debian's Chromium
// headless with playwright-core, and records what the page did on the network and the console.
"use strict";
const { chromium } = require("playwright-core");

// Chromium's background services try to reach the internet; the machine's closed network
// refuses them, and a check must see only the page's own requests.
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-default-apps", "--disable-extensions",
];

async function launch() {
  return chromium.launch({
    executablePath: process.env.PLEXUS_CHROMIUM || "/usr/bin/chromium",
    args: FLAGS,
  });
}

// Every request the page makes (url, method, resourceType) and every console error, for checks
// such as "nothing off loopback" and "no console error".
function record(page) {
  const seen = { requests: [], consoleErrors: [], pageErrors: [] };
  page.on("request", (r) => seen.requests.push({ url: r.url(), method: r.method(), type: r.resourceType() }));
  page.on("console", (m) => { if (m.type() === "error") seen.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => seen.pageErrors.push(String(e)));
  return seen;
}

// Runs `main` and prints its result as the last line of stdout; a throw prints the error and
// exits 1, so the Rust test shows why.
function run(main) {
  main().then(
    (result) => { process.stdout.write(JSON.stringify(result) + "\n"); process.exit(0); },
    (err) => { process.stderr.write((err && err.stack) || String(err)); process.stderr.write("\n"); process.exit(1); },
  );
}

module.exports = { launch, record, run, FLAGS };
