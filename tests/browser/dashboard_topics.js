// The dashboard loads clean (CSP header, no console error, nothing off loopback, bytes
// transferred), then its topics view follows 50 messages published at 10/s.
"use strict";
const { launch, record, run } = require("./lib.js");

const BASE = process.env.PLEXUS_URL;
const TOPIC = "dash.rate";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function loopback(url) {
  const u = new URL(url);
  return u.protocol === "data:" || ["127.0.0.1", "localhost", "[::1]"].includes(u.hostname);
}

run(async () => {
  const browser = await launch();
  const context = await browser.newContext();
  const page = await context.newPage();
  const seen = record(page);
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  let transferred = 0;
  cdp.on("Network.loadingFinished", (e) => { transferred += e.encodedDataLength; });
  const resp = await page.goto(BASE + "/", { waitUntil: "load" });
  const csp = resp.headers()["content-security-policy"] || "";
  await page.waitForSelector("#topics");
  await sleep(300);
  const loadBytes = transferred;

  // 50 messages at 10/s, while the page is read every 200 ms.
  const rates = [];
  let lastSeq = "";
  const publishing = (async () => {
    const start = Date.now();
    for (let i = 1; i <= 50; i++) {
      const wait = start + i * 100 - Date.now();
      if (wait > 0) await sleep(wait);
      const r = await fetch(`${BASE}/v1/topics/${TOPIC}/messages`, { method: "POST", body: `m${i}` });
      if (r.status !== 201) throw new Error(`publish ${i}: ${r.status}`);
    }
  })();
  let done = false;
  publishing.then(() => { done = true; });
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    const row = await page.$(`tr[data-topic="${TOPIC}"]`);
    if (row) {
      lastSeq = await row.$eval(".last-seq", (e) => e.textContent);
      rates.push(Number(await row.$eval(".rate", (e) => e.textContent)));
      if (done && lastSeq === "50") break;
    }
    await sleep(200);
  }
  await publishing;
  const offLoopback = seen.requests.map((r) => r.url).filter((u) => !loopback(u));
  await browser.close();
  return {
    csp, transferred: loadBytes, lastSeq, maxRate: Math.max(0, ...rates), rates,
    consoleErrors: seen.consoleErrors.concat(seen.pageErrors), offLoopback,
  };
});
