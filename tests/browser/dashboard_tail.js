// A topic's tail over each of the four transports: seqs 1..20 in order (10 from before the
// page opened, 10 live), pause, 5 published through the API, resume: 21..25, none lost; replay
// from seq 10. Counts, from the browser's own network events, the streaming connections the
// tab holds at once (SSE fetches and WebSockets): at most one.
"use strict";
const { launch, record, run } = require("./lib.js");

const BASE = process.env.PLEXUS_URL;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function publish(topic, from, to) {
  for (let i = from; i <= to; i++) {
    const r = await fetch(`${BASE}/v1/topics/${topic}/messages`, { method: "POST", body: `m${i}` });
    if (r.status !== 201) throw new Error(`publish ${topic} ${i}: ${r.status}`);
  }
}

// The tail's seqs, oldest first (the page shows the newest on top).
async function seqs(page) {
  const shown = await page.$$eval("#tail li[data-seq]", (lis) => lis.map((li) => Number(li.dataset.seq)));
  return shown.reverse();
}

async function until(page, what, pred, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await seqs(page);
    if (pred(last)) return last;
    await sleep(100);
  }
  throw new Error(`${what}: the tail shows ${JSON.stringify(last)}`);
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

run(async () => {
  const browser = await launch();
  const context = await browser.newContext();
  const page = await context.newPage();
  const seen = record(page);
  // Streaming connections (SSE fetches, WebSockets) as Chromium's network stack reports
  // them, ordered by its own timestamps: the most ever open at once.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const events = [];
  const streams = new Set();
  cdp.on("Network.requestWillBeSent", (e) => {
    if (e.request.url.includes("/sse")) { streams.add(e.requestId); events.push([e.timestamp, 1, "sse"]); }
  });
  const sseEnd = (e) => { if (streams.delete(e.requestId)) events.push([e.timestamp, -1, "sse"]); };
  cdp.on("Network.loadingFinished", sseEnd);
  cdp.on("Network.loadingFailed", sseEnd);
  cdp.on("Network.webSocketWillSendHandshakeRequest", (e) => events.push([e.timestamp, 1, "ws"]));
  cdp.on("Network.webSocketClosed", (e) => events.push([e.timestamp, -1, "ws"]));
  const maxOpen = () => {
    let open = 0;
    let max = 0;
    for (const [, d] of events.slice().sort((a, b) => a[0] - b[0] || a[1] - b[1])) { open += d; max = Math.max(max, open); }
    return max;
  };

  await page.goto(BASE + "/");
  await page.waitForSelector("#topics");
  const results = {};
  for (const transport of ["sse", "ws", "long-poll", "short-poll"]) {
    const topic = `dash.tail.${transport.replace("-", "")}`;
    await publish(topic, 1, 10);
    await page.goto(`${BASE}/#/topic/${topic}`);
    await page.waitForSelector("#transport");
    await page.selectOption("#transport", transport);
    await until(page, `${transport}: the first 10`, (s) => s.length >= 10);
    await publish(topic, 11, 20);
    const first = await until(page, `${transport}: 1..20`, (s) => s.length >= 20);
    await page.click("#pause");
    await page.waitForSelector('#tail-state[data-state="paused"]');
    await publish(topic, 21, 25);
    await sleep(1500);
    const whilePaused = await seqs(page);
    await page.click("#pause");
    const resumed = await until(page, `${transport}: 21..25 after resume`, (s) => s.length >= 25);
    await page.fill("#replay-from", "10");
    await page.click("#replay");
    const replayed = await until(page, `${transport}: replay from 10`, (s) => s[0] === 10 && s.length >= 16);
    // Replay from a time: ten minutes back shows the whole topic again.
    let sinceTime = true;
    if (transport === "sse") {
      await page.fill("#replay-from", "10m");
      await page.click("#replay");
      const all = await until(page, "replay from 10m", (s) => s[0] === 1 && s.length >= 25);
      sinceTime = same(all, range(1, 25));
    }
    results[transport] = {
      sinceTime,
      first: same(first, range(1, 20)),
      pausedHeld: same(whilePaused, range(1, 20)),
      resumed: same(resumed, range(1, 25)),
      replayed: same(replayed, range(10, 25)),
      shown: { first, whilePaused, resumed, replayed },
    };
  }
  await browser.close();
  return {
    results, maxOpen: maxOpen(), streams: events.slice().sort((a, b) => a[0] - b[0]),
    consoleErrors: seen.consoleErrors.concat(seen.pageErrors),
  };
});
