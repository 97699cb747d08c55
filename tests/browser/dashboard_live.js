// Connections: with 3 SSE streams and 1 NDJSON stream over HTTP/1.1 and 1 SSE stream over h2c
// held by this script, the page's Connections view shows what /metrics says (by protocol and
// by transport). Tabs: four tabs, each tailing its own topic over SSE, stay live, and an API
// call from the first answers promptly (the browser's 6-connection pool is never exhausted).
"use strict";
const http = require("http");
const http2 = require("http2");
const { launch, record, run } = require("./lib.js");

const BASE = process.env.PLEXUS_URL;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// An HTTP/1.1 stream held open on its own connection; `close()` ends it.
function hold(path) {
  return new Promise((resolve, reject) => {
    const agent = new http.Agent({ keepAlive: false });
    const req = http.get(BASE + path, { agent }, (res) => {
      res.on("data", () => {});
      resolve({ close: () => req.destroy() });
    });
    req.on("error", reject);
  });
}

function holdH2c(path) {
  return new Promise((resolve, reject) => {
    const session = http2.connect(BASE);
    session.on("error", reject);
    const req = session.request({ ":path": path });
    req.on("response", () => resolve({ close: () => session.destroy() }));
    req.on("data", () => {});
    req.on("error", reject);
  });
}

function metricsTable(text) {
  const out = {};
  for (const line of text.split("\n")) {
    let m = /^plexus_connections_open\{protocol="([^"]+)"\} (\d+)$/.exec(line);
    if (m) out[`protocol:${m[1]}`] = Number(m[2]);
    m = /^plexus_streams_open\{transport="([^"]+)"\} (\d+)$/.exec(line);
    if (m) out[`transport:${m[1]}`] = Number(m[2]);
  }
  return out;
}

async function pageTable(page) {
  const rows = async (sel, prefix) => page.$$eval(`${sel} tr[data-key]`, (trs, p) =>
    trs.map((tr) => [`${p}:${tr.dataset.key}`, Number(tr.querySelector("td").textContent)]), prefix);
  const out = {};
  for (const [k, v] of [...await rows("#by-protocol", "protocol"), ...await rows("#by-transport", "transport")]) {
    if (k !== "transport:long-poll") out[k] = v;
  }
  return out;
}

run(async () => {
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await hold("/v1/topics/dash.conn/sse"));
  held.push(await hold("/v1/topics/dash.conn/stream"));
  held.push(await holdH2c("/v1/topics/dash.conn/sse"));

  const browser = await launch();
  const context = await browser.newContext();
  const page = await context.newPage();
  const seen = record(page);
  await page.goto(`${BASE}/#/connections`);
  await page.waitForSelector("#by-protocol tr[data-key]");
  // The view refreshes every 2 s: it must agree with a scrape made between two refreshes.
  let shown = {};
  let metrics = {};
  let agreed = false;
  for (let i = 0; i < 20 && !agreed; i++) {
    await sleep(500);
    const before = metricsTable(await (await fetch(BASE + "/metrics")).text());
    shown = await pageTable(page);
    metrics = metricsTable(await (await fetch(BASE + "/metrics")).text());
    agreed = JSON.stringify(before) === JSON.stringify(metrics)
      && JSON.stringify(Object.entries(shown).sort()) === JSON.stringify(Object.entries(metrics).sort());
  }
  for (const h of held) h.close();

  // Four tabs, each tailing its own topic over SSE.
  const tabs = [];
  for (let i = 1; i <= 4; i++) {
    const tab = i === 1 ? page : await context.newPage();
    if (i > 1) record(tab);
    await fetch(`${BASE}/v1/topics/dash.tab${i}/messages`, { method: "POST", body: "first" });
    await tab.goto(`${BASE}/#/topic/dash.tab${i}`);
    await tab.waitForSelector("#transport");
    await tab.selectOption("#transport", "sse");
    await tab.waitForSelector('#tail li[data-seq="1"]');
    tabs.push(tab);
  }
  for (let i = 1; i <= 4; i++) await fetch(`${BASE}/v1/topics/dash.tab${i}/messages`, { method: "POST", body: "second" });
  const live = [];
  for (const tab of tabs) {
    live.push(await tab.waitForSelector('#tail li[data-seq="2"]', { timeout: 10000 }).then(() => true, () => false));
  }
  const apiMs = await page.evaluate(async () => {
    const t0 = performance.now();
    const r = await fetch("/v1/topics");
    await r.json();
    return performance.now() - t0;
  });
  await browser.close();
  return { agreed, shown, metrics, live, apiMs, consoleErrors: seen.consoleErrors.concat(seen.pageErrors) };
});
