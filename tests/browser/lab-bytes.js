// "Lab bytes are real": the same SSE and short-poll traffic the lab measures, made by a page on
// the hub's origin with fetch, counted by Chromium's own network events (CDP): the bytes
// received for the SSE stream (Network.dataReceived) and for each poll (Network.loadingFinished,
// response head and body), between the first publish and `DURATION_MS` later, as the lab counts.
"use strict";
const { launch, run } = require("./lib.js");

run(async () => {
  const env = process.env;
  const args = {
    sseTopic: env.SSE_TOPIC,
    pollTopic: env.POLL_TOPIC,
    rate: Number(env.RATE),
    durationMs: Number(env.DURATION_MS),
    pollMs: Number(env.POLL_MS),
    size: Number(env.SIZE),
  };
  const browser = await launch();
  const page = await browser.newPage();
  await page.goto(env.PLEXUS_URL + "/healthz");
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  const kind = new Map(); // requestId -> "sse" | "poll"
  const total = { sse: 0, poll: 0 };
  cdp.on("Network.requestWillBeSent", (e) => {
    if (e.request.method !== "GET") return;
    if (e.request.url.includes("/sse?")) kind.set(e.requestId, "sse");
    else if (e.request.url.includes("/messages?since=")) kind.set(e.requestId, "poll");
  });
  cdp.on("Network.dataReceived", (e) => {
    if (kind.get(e.requestId) === "sse") total.sse += e.encodedDataLength;
  });
  cdp.on("Network.loadingFinished", (e) => {
    if (kind.get(e.requestId) === "poll") total.poll += e.encodedDataLength;
  });
  const marks = {};
  await page.exposeFunction("mark", (name) => { marks[name] = { ...total }; });
  const counts = await page.evaluate(async (a) => {
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const pub = (t, body) => fetch(`/v1/topics/${t}/messages`, { method: "POST", body });
    await pub(a.sseTopic, "warm-up");
    await pub(a.pollTopic, "warm-up");
    const got = { sse: 0, poll: 0, polls: 0 };
    const resp = await fetch(`/v1/topics/${a.sseTopic}/sse?since=1`);
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          got.sse += (buf.slice(0, i).match(/"data":"/g) || []).length;
          buf = buf.slice(i + 2);
        }
      }
    })();
    let cursor = "1";
    let busy = false;
    const poller = setInterval(async () => {
      if (busy) return;
      busy = true;
      const r = await fetch(`/v1/topics/${a.pollTopic}/messages?since=${cursor}`);
      const p = await r.json();
      got.poll += p.messages.length;
      got.polls += 1;
      cursor = p.next;
      busy = false;
    }, a.pollMs);
    await sleep(500);
    const messages = Math.round(a.rate * a.durationMs / 1000);
    const pad = "x".repeat(a.size - 21);
    await window.mark("start");
    const t0 = performance.now();
    for (let i = 0; i < messages; i++) {
      const due = t0 + (i * 1000) / a.rate;
      await sleep(Math.max(0, due - performance.now()));
      const body = String(Date.now() * 1000000).padStart(20, "0") + " " + pad;
      await Promise.all([pub(a.sseTopic, body), pub(a.pollTopic, body)]);
    }
    await sleep(Math.max(0, t0 + a.durationMs - performance.now()));
    await window.mark("end");
    const drainUntil = performance.now() + 3000;
    while ((got.sse < messages || got.poll < messages) && performance.now() < drainUntil) {
      await sleep(50);
    }
    clearInterval(poller);
    reader.cancel();
    return { messages, ...got };
  }, args);
  await browser.close();
  const per = (k, n) => (n > 0 ? (marks.end[k] - marks.start[k]) / n : null);
  return {
    counts,
    marks,
    sse_bytes_received_per_message: per("sse", counts.sse),
    poll_bytes_received_per_message: per("poll", counts.poll),
  };
});
