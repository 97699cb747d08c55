// The Plexus dashboard: views over the public API (docs/API.md), no framework, no build step.
import { session, api, json, ApiError, Live, poll } from "./live.js";

const $ = (sel, root = document) => root.querySelector(sel);
const live = new Live();
const POLL_MS = 2000; // the overview's refresh: idle, a tab costs the hub one request per 2 s
const TAIL_START = 50; // a tail starts with the topic's last 50 messages
const TAIL_KEEP = 1000; // rows kept in a tail

// Builds an element: el("td", {class: "num"}, "12").
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function problemText(e) { return e instanceof ApiError ? `${e.status}: ${e.message}` : String(e); }

// ---- theme: the system's, or the one picked, kept across reloads ----
const THEME_KEY = "plexus.theme";
function currentTheme() {
  return localStorage.getItem(THEME_KEY)
    || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
}
function applyTheme() { document.documentElement.dataset.theme = currentTheme(); }
function toggleTheme() {
  localStorage.setItem(THEME_KEY, currentTheme() === "dark" ? "light" : "dark");
  applyTheme();
}

// ---- views: each returns a stop function ----
let me = { auth: "open", admin: true };

function visibleTimer(fn, ms) {
  // Refreshes stop while the tab is hidden, so a forgotten tab costs the hub nothing.
  let timer = null;
  const tick = async () => {
    if (document.visibilityState === "visible") { try { await fn(); } catch (_) { /* shown by fn */ } }
    timer = setTimeout(tick, ms);
  };
  tick();
  return () => clearTimeout(timer);
}

function sparkline(values) {
  const w = 120, h = 24;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("aria-hidden", "true");
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? w / (values.length - 1) : w;
  const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 1 - (v / max) * (h - 2)).toFixed(1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", pts.join(" "));
  svg.append(line);
  return svg;
}

// Per topic, (time, last_seq) samples: the publish rate is the last interval's slope.
const samples = new Map();
function sample(topic, seq, t) {
  const s = samples.get(topic) || [];
  s.push({ t, seq });
  while (s.length > 31) s.shift();
  samples.set(topic, s);
  const rates = [];
  for (let i = 1; i < s.length; i++) rates.push(Math.max(0, (s[i].seq - s[i - 1].seq) / ((s[i].t - s[i - 1].t) / 1000)));
  return rates;
}

function topicsView(main) {
  const status = el("p", { class: "status", role: "status" });
  const body = el("tbody");
  // The hub's own topics (`_jobs.…`, `_queues.…`) are many and read in the Jobs view.
  const hubTopics = el("input", { id: "hub-topics", type: "checkbox" });
  hubTopics.checked = sessionStorage.getItem("plexus.hubTopics") === "1";
  hubTopics.addEventListener("change", () => sessionStorage.setItem("plexus.hubTopics", hubTopics.checked ? "1" : ""));
  main.append(
    el("h2", { text: "Topics" }),
    el("label", { class: "controls" }, hubTopics, "show the hub's own topics (_…)"),
    el("table", { id: "topics" },
      el("thead", {}, el("tr", {},
        el("th", { text: "Topic" }), el("th", { class: "num", text: "Last seq" }),
        el("th", { class: "num", text: "Messages" }), el("th", { class: "num", text: "Bytes" }),
        el("th", { class: "num", text: "Subscribers" }), el("th", { class: "num", text: "msg/s" }),
        el("th", { text: "Rate" }))),
      body),
    status);
  return visibleTimer(async () => {
    try {
      // The sample's time is the middle of the request, nearest to when the hub read it.
      const t0 = performance.now();
      const list = await json("/v1/topics?limit=1000");
      const t = (t0 + performance.now()) / 2;
      const shown = list.topics.filter((x) => hubTopics.checked || !x.topic.startsWith("_"));
      body.replaceChildren(...shown.map((x) => {
        const rates = sample(x.topic, x.last_seq, t);
        const rate = rates.length ? rates[rates.length - 1] : 0;
        return el("tr", { "data-topic": x.topic },
          el("td", {}, el("a", { href: `#/topic/${encodeURIComponent(x.topic)}`, text: x.topic })),
          el("td", { class: "num last-seq", text: String(x.last_seq) }),
          el("td", { class: "num", text: String(x.messages) }),
          el("td", { class: "num", text: fmtBytes(x.bytes) }),
          el("td", { class: "num", text: String(x.subscribers) }),
          el("td", { class: "num rate", text: rate.toFixed(1) }),
          el("td", {}, sparkline(rates)));
      }));
      status.textContent = shown.length ? "" : "No topics yet: publish a message to create one.";
    } catch (e) { status.textContent = problemText(e); }
  }, POLL_MS);
}

function topicView(main, topic) {
  const enc = encodeURIComponent(topic);
  const rows = el("ol", { id: "tail", class: "tail", reversed: true });
  const state = el("span", { id: "tail-state", class: "badge", text: "starting" });
  const transport = el("select", { id: "transport", "aria-label": "Transport" },
    ...[["sse", "SSE (fetch stream)"], ["ws", "WebSocket"], ["long-poll", "Long poll"], ["short-poll", "Short poll"]]
      .map(([v, label]) => el("option", { value: v, text: label })));
  transport.value = sessionStorage.getItem("plexus.transport") || live.mode;
  const pauseBtn = el("button", { id: "pause", type: "button", text: "Pause" });
  const replayInput = el("input", { id: "replay-from", placeholder: "seq, time or 10m", "aria-label": "Replay from" });
  const replayBtn = el("button", { id: "replay", type: "button", text: "Replay" });
  const info = el("p", { id: "topic-info", class: "status" });
  const pubSection = el("section", { id: "publish", hidden: true });
  const adminSection = el("section", { id: "admin", hidden: true });
  main.append(
    el("h2", {}, el("a", { href: "#/topics", text: "Topics" }), ` / ${topic}`),
    info,
    el("div", { class: "controls" }, transport, pauseBtn, replayInput, replayBtn, state),
    rows, pubSection, adminSection);

  let cursor = 0;
  let highest = 0;
  let paused = false;
  let feed = null; // the running poll, or "live"
  let stopped = false;

  const show = (ev) => {
    if (ev.kind === "gap") {
      rows.prepend(el("li", { class: "gap", text: `gap ${ev.gap.from ?? ""}–${ev.gap.to ?? ""} (${ev.gap.reason})` }));
      if (ev.gap.to > cursor) cursor = ev.gap.to;
      return;
    }
    const m = ev.msg;
    if (m.seq <= highest) return;
    highest = m.seq;
    cursor = m.seq;
    const data = m.data !== undefined ? m.data : `base64: ${m.data_base64}`;
    rows.prepend(el("li", { "data-seq": String(m.seq) },
      el("span", { class: "seq", text: `#${m.seq}` }),
      el("time", { datetime: m.time, text: m.time.slice(11, 23) }),
      m.event ? el("span", { class: "event", text: m.event }) : null,
      el("code", { text: data })));
    while (rows.children.length > TAIL_KEEP) rows.lastChild.remove();
  };

  const stopFeed = () => {
    if (feed === "live") { const c = live.cursor(topic); if (c !== null && c > cursor) cursor = c; live.unsubscribe(topic); }
    else if (feed) feed.stop();
    feed = null;
  };
  const startFeed = () => {
    if (stopped || paused) return;
    // One feed at a time: a feed started over a running one would be left polling unseen.
    if (feed) stopFeed();
    const t = transport.value;
    if (t === "sse" || t === "ws") {
      live.setMode(t);
      live.subscribe(topic, cursor, show);
      feed = "live";
      state.textContent = `live: ${t}`;
    } else {
      feed = t === "long-poll"
        ? poll(topic, cursor, show, { wait: 25 })
        : poll(topic, cursor, show, { every: 1000 });
      state.textContent = `live: ${t}`;
    }
    state.dataset.state = "live";
  };

  transport.addEventListener("change", () => {
    sessionStorage.setItem("plexus.transport", transport.value);
    stopFeed();
    startFeed();
  });
  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    if (paused) { stopFeed(); state.textContent = "paused"; state.dataset.state = "paused"; pauseBtn.textContent = "Resume"; }
    else { pauseBtn.textContent = "Pause"; startFeed(); }
  });
  replayBtn.addEventListener("click", async () => {
    const from = replayInput.value.trim();
    if (!from) return;
    let start;
    if (/^\d+$/.test(from)) start = Math.max(0, Number(from) - 1);
    else {
      try {
        const page = await json(`/v1/topics/${enc}/messages?since=${encodeURIComponent(from)}&limit=1`);
        start = page.messages.length ? page.messages[0].seq - 1 : highest;
      } catch (e) { info.textContent = problemText(e); return; }
    }
    stopFeed();
    rows.replaceChildren();
    highest = start;
    cursor = start;
    startFeed();
  });

  (async () => {
    try {
      const [t, rights] = await Promise.all([
        json(`/v1/topics/${enc}`).catch((e) => { if (e.status === 404) return null; throw e; }),
        json(`/v1/me?topic=${enc}`),
      ]);
      if (stopped) return;
      // A feed already running (the transport was changed before this answer came) keeps
      // its position; only the first feed starts from the topic's tail.
      const first = feed === null;
      if (t) {
        info.textContent = `last seq ${t.last_seq} · ${t.messages} messages · ${fmtBytes(t.bytes)} · ${t.subscribers} subscribers`;
        if (first) cursor = Math.max(t.first_seq - 1, t.last_seq - TAIL_START, 0);
      }
      if (first) highest = cursor;
      if (rights.topic.publish) renderPublish(pubSection, topic);
      if (rights.topic.delete) renderDelete(adminSection, topic, info);
      if (first) startFeed();
    } catch (e) { info.textContent = problemText(e); }
  })();

  return () => { stopped = true; stopFeed(); };
}

function renderPublish(section, topic) {
  const data = el("textarea", { id: "pub-data", rows: "3", "aria-label": "Message" });
  const event = el("input", { id: "pub-event", placeholder: "event type (optional)", "aria-label": "Event type" });
  const result = el("p", { id: "pub-result", class: "status", role: "status" });
  const form = el("form", { id: "pub-form" }, data, el("div", { class: "controls" }, event, el("button", { type: "submit", text: "Publish" })), result);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const headers = { "Content-Type": "text/plain" };
    if (event.value.trim()) headers["Plexus-Event"] = event.value.trim();
    try {
      const r = await json(`/v1/topics/${encodeURIComponent(topic)}/messages`, { method: "POST", body: data.value, headers });
      result.textContent = `published #${r.seq}`;
      result.dataset.seq = String(r.seq);
    } catch (err) { result.textContent = problemText(err); }
  });
  section.append(el("h3", { text: "Publish" }), form);
  section.hidden = false;
}

function renderDelete(section, topic, info) {
  const btn = el("button", { id: "delete", type: "button", class: "danger", text: "Delete messages" });
  let armed = false;
  btn.addEventListener("click", async () => {
    // Two clicks: the first arms the button, so a stray click deletes nothing.
    if (!armed) { armed = true; btn.textContent = "Click again to delete every message"; return; }
    armed = false;
    btn.textContent = "Delete messages";
    try {
      await json(`/v1/topics/${encodeURIComponent(topic)}`, { method: "DELETE" });
      info.textContent = "messages deleted (the counter is kept)";
    } catch (e) { info.textContent = problemText(e); }
  });
  section.append(el("h3", { text: "Admin" }), btn);
  section.hidden = false;
}

// /metrics, parsed: {name: [{labels, value}]}.
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+)$/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const kv of (m[2] || "").split(",")) {
      const p = /^([a-z_]+)="(.*)"$/.exec(kv);
      if (p) labels[p[1]] = p[2];
    }
    (out[m[1]] ||= []).push({ labels, value: Number(m[3]) });
  }
  return out;
}

function connectionsView(main) {
  const byProtocol = el("tbody");
  const byTransport = el("tbody");
  const status = el("p", { class: "status", role: "status" });
  main.append(el("h2", { text: "Connections" }),
    el("h3", { text: "By protocol" }), el("table", { id: "by-protocol" }, byProtocol),
    el("h3", { text: "Streams by transport" }), el("table", { id: "by-transport" }, byTransport), status);
  return visibleTimer(async () => {
    try {
      const r = await api("/metrics");
      const m = parseMetrics(await r.text());
      const rows = (list, key) => (list || []).map((x) => el("tr", { "data-key": x.labels[key] },
        el("th", { text: x.labels[key] }), el("td", { class: "num", text: String(x.value) })));
      byProtocol.replaceChildren(...rows(m.plexus_connections_open, "protocol"));
      const waiting = (m.plexus_long_polls_waiting || [{ value: 0 }])[0].value;
      byTransport.replaceChildren(...rows(m.plexus_streams_open, "transport"),
        el("tr", { "data-key": "long-poll" }, el("th", { text: "long polls waiting" }), el("td", { class: "num", text: String(waiting) })));
      status.textContent = "";
    } catch (e) { status.textContent = problemText(e); }
  }, POLL_MS);
}

// Lag of a consumer (or a webhook's): its topics' `pending` and `ack_pending`, summed.
function lag(state) {
  const st = Object.values(state || {});
  const sum = (k) => st.reduce((a, x) => a + (x[k] || 0), 0);
  return { pending: sum("pending"), ackPending: sum("ack_pending") };
}

function consumersView(main) {
  const cons = el("tbody");
  const hooks = el("tbody");
  const status = el("p", { class: "status", role: "status" });
  const head = (...names) => el("thead", {}, el("tr", {}, ...names.map(([n, c]) => el("th", { class: c, text: n }))));
  main.append(el("h2", { text: "Consumers" }),
    el("table", { id: "consumers" }, head(["Name"], ["Ack"], ["Topics"], ["Pending", "num"], ["Ack pending", "num"]), cons),
    el("h2", { text: "Webhooks" }),
    el("table", { id: "webhooks" }, head(["Id"], ["URL"], ["State"], ["Pending", "num"], ["Last attempt"]), hooks), status);
  return visibleTimer(async () => {
    const notes = [];
    try {
      const c = await json("/v1/consumers");
      cons.replaceChildren(...c.consumers.filter((x) => !x.name.startsWith("_webhook-")).map((x) => {
        const l = lag(x.topics_state);
        return el("tr", { "data-consumer": x.name }, el("td", { text: x.name }), el("td", { text: x.ack }),
          el("td", { text: (x.topics || []).join(", ") }),
          el("td", { class: "num pending", text: String(l.pending) }), el("td", { class: "num ack-pending", text: String(l.ackPending) }));
      }));
    } catch (e) { notes.push(`consumers: ${problemText(e)}`); }
    try {
      const w = await json("/v1/webhooks");
      // The list has no lag or attempts: each webhook's own answer has them (a handful at most).
      const shown = await Promise.all((w.webhooks || []).slice(0, 50).map((x) =>
        json(`/v1/webhooks/${encodeURIComponent(x.id)}`).catch(() => x)));
      hooks.replaceChildren(...shown.map((x) => {
        const a = x.last_attempt;
        const attempt = a ? `#${a.seq} try ${a.attempt}: ${a.status !== undefined ? a.status : a.error}` : "none yet";
        return el("tr", { "data-webhook": x.id }, el("td", {}, el("code", { text: x.id })), el("td", { text: x.url }),
          el("td", { class: "state", text: x.state + (x.disabled_reason ? ` (${x.disabled_reason})` : "") }),
          el("td", { class: "num pending", text: String(lag(x.lag).pending) }),
          el("td", { class: "attempt", text: attempt }));
      }));
    } catch (e) { notes.push(`webhooks: ${problemText(e)}`); }
    status.textContent = notes.join(" · ");
  }, 5000);
}

// A small line chart, one polyline per series, with a legend: {name: [numbers…]}.
function lineChart(series) {
  const NS = "http://www.w3.org/2000/svg";
  const w = 480, h = 160, pad = 4;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const names = Object.keys(series);
  const max = Math.max(1, ...names.flatMap((n) => series[n]));
  const len = Math.max(2, ...names.map((n) => series[n].length));
  names.forEach((name, k) => {
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("class", `series s${k % 6}`);
    line.setAttribute("points", series[name].map((v, i) =>
      `${(pad + (i / (len - 1)) * (w - 2 * pad)).toFixed(1)},${(h - pad - (v / max) * (h - 2 * pad)).toFixed(1)}`).join(" "));
    const title = document.createElementNS(NS, "title");
    title.textContent = name;
    line.append(title);
    svg.append(line);
  });
  const legend = el("ul", { class: "legend" }, ...names.map((n, k) => el("li", { class: `s${k % 6}`, text: n })));
  return el("figure", { class: "chart-box" }, svg, legend);
}

// The pattern lab (a run on the hub, docs/API.md §12 of the lab): the form starts a run, its
// progress on `_lab.{run}` feeds a live chart of deliveries per pattern over the tail's one
// connection, and each pattern's figures fill the table as they are final.
function labView(main) {
  const status = el("p", { id: "lab-status", class: "status", role: "status" });
  const patterns = el("input", { id: "lab-patterns", value: "short-poll,long-poll,sse,ws", "aria-label": "Patterns" });
  const clients = el("input", { id: "lab-clients", type: "number", value: "10", min: "1", "aria-label": "Clients" });
  const rate = el("input", { id: "lab-rate", type: "number", value: "1", min: "0.1", step: "0.1", "aria-label": "Rate" });
  const duration = el("input", { id: "lab-duration", value: "10s", "aria-label": "Duration" });
  const pollEvery = el("input", { id: "lab-poll-interval", value: "1s", "aria-label": "Poll interval" });
  const chart = el("div", { id: "lab-chart" });
  const results = el("tbody");
  const form = el("form", { id: "lab-form" }, el("div", { class: "controls" }, patterns, clients, rate, duration, pollEvery,
    el("button", { type: "submit", text: "Run" })));
  main.append(el("h2", { text: "Pattern lab" }), form, status, chart,
    el("table", { id: "lab-results" }, el("thead", {}, el("tr", {}, ...["Pattern", "Deliveries", "Lost", "p50 ms", "p99 ms",
      "Requests/msg", "Bytes/msg", "CPU s", "Connections"].map((h) => el("th", { text: h })))), results));
  let run = null;
  const series = {};
  const figures = {};
  const disabled = () => { status.textContent = "lab disabled"; form.hidden = true; };
  const fmt = (v) => (v === undefined || v === null ? "" : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : String(v));
  const table = () => results.replaceChildren(...Object.entries(figures).map(([p, x]) => el("tr", { "data-pattern": p },
    el("th", { text: p }), ...[x.deliveries, x.lost, x.latency_ms && x.latency_ms.p50, x.latency_ms && x.latency_ms.p99,
      x.requests_per_message, x.bytes_per_message, x.cpu_s, x.connections].map((v) => el("td", { class: "num", text: fmt(v) })))));
  const onProgress = (ev) => {
    if (ev.kind !== "message") return;
    let p;
    try { p = JSON.parse(ev.msg.data); } catch (_) { return; }
    if (p.event === "started") { series[p.pattern] = []; status.textContent = `run ${run}: ${p.pattern} (${p.clients} clients)`; }
    else if (p.event === "tick") { (series[p.pattern] ||= []).push(p.deliveries); chart.replaceChildren(lineChart(series)); }
    else if (p.event === "done") { figures[p.pattern] = p.result; table(); }
    else if (p.event === "finished" && p.run) {
      Object.assign(figures, p.run.patterns || {});
      table();
      status.textContent = `run ${run}: ${p.run.state}`;
      live.unsubscribe(`_lab.${run}`);
    }
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { patterns: patterns.value.split(",").map((x) => x.trim()).filter(Boolean), clients: Number(clients.value),
      rate: Number(rate.value), duration: duration.value, poll_interval: pollEvery.value };
    try {
      const r = await json("/v1/lab/runs", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
      if (run) live.unsubscribe(`_lab.${run}`);
      run = r.id;
      for (const k of Object.keys(series)) delete series[k];
      for (const k of Object.keys(figures)) delete figures[k];
      status.textContent = `run ${run}: ${r.state}`;
      live.subscribe(`_lab.${run}`, 0, onProgress);
    } catch (err) {
      if (err.status === 404 || err.status === 403) disabled(); else status.textContent = problemText(err);
    }
  });
  return () => { if (run) live.unsubscribe(`_lab.${run}`); };
}

// The jobs: each job's state is the last event of its topic `_jobs.{id}` (docs/API.md §2.5),
// read 64 topics per poll; a job whose last event is a progress report is asked for directly.
const STATES = ["queued", "running", "succeeded", "dead"];

async function loadJobs() {
  const list = await json("/v1/topics?after=_jobs&limit=1000");
  const topics = list.topics.filter((t) => t.topic.startsWith("_jobs.") && t.last_seq >= t.first_seq);
  const jobs = [];
  for (let i = 0; i < topics.length; i += 64) {
    const chunk = topics.slice(i, i + 64);
    const names = chunk.map((t) => t.topic).join(",");
    const since = chunk.map((t) => `${t.topic}:${t.last_seq - 1}`).join(",");
    const page = await json(`/v1/topics/${names}/messages?since=${encodeURIComponent(since)}&limit=1000`);
    const last = new Map();
    for (const m of page.messages) last.set(m.topic, m);
    for (const t of chunk) {
      const m = last.get(t.topic);
      if (m && STATES.includes(m.event)) {
        try { jobs.push(JSON.parse(m.data)); continue; } catch (_) { /* asked below */ }
      }
      try { jobs.push(await json(`/v1/jobs/${t.topic.slice(6)}`)); } catch (_) { /* finished and purged */ }
    }
  }
  return jobs;
}

function jobsView(main) {
  const counts = el("tbody");
  const dead = el("tbody");
  const status = el("p", { id: "jobs-status", class: "status", role: "status" });
  main.append(el("h2", { text: "Jobs" }),
    el("table", { id: "job-counts" }, el("thead", {}, el("tr", {}, el("th", { text: "Queue" }),
      ...STATES.map((st) => el("th", { class: "num", text: st })))), counts),
    el("h3", { text: "Dead jobs" }),
    el("table", { id: "dead-jobs" }, el("thead", {}, el("tr", {}, el("th", { text: "Job" }), el("th", { text: "Queue" }),
      el("th", { class: "num", text: "Attempts" }), el("th", { text: "Error" }), el("th", { text: "" }))), dead), status);
  let refresh = async () => {};
  const retry = async (id) => {
    try { await json(`/v1/jobs/${id}/retry`, { method: "POST" }); status.textContent = `job ${id} queued again`; }
    catch (e) { status.textContent = problemText(e); }
    await refresh();
  };
  refresh = async () => {
    try {
      const jobs = await loadJobs();
      const byQueue = new Map();
      for (const j of jobs) {
        const c = byQueue.get(j.queue) || Object.fromEntries(STATES.map((st) => [st, 0]));
        c[j.state] = (c[j.state] || 0) + 1;
        byQueue.set(j.queue, c);
      }
      counts.replaceChildren(...[...byQueue.entries()].sort().map(([q, c]) => el("tr", { "data-queue": q },
        el("th", { text: q }), ...STATES.map((st) => el("td", { class: `num ${st}`, text: String(c[st]) })))));
      dead.replaceChildren(...jobs.filter((j) => j.state === "dead").map((j) => el("tr", { "data-job": j.id },
        el("td", {}, el("code", { text: j.id })), el("td", { text: j.queue }),
        el("td", { class: "num", text: String(j.attempts) }), el("td", { class: "error-text", text: j.error || "" }),
        el("td", {}, el("button", { type: "button", class: "retry", onclick: () => retry(j.id), text: "Retry" })))));
      if (!status.textContent.startsWith("job ")) status.textContent = jobs.length ? "" : "No jobs.";
    } catch (e) { status.textContent = problemText(e); }
  };
  return visibleTimer(refresh, 5000);
}

// ---- shell: login, navigation ----
let stopView = () => {};

function route() {
  stopView();
  const main = $("#main");
  main.replaceChildren();
  const hash = location.hash || "#/topics";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("current", hash.startsWith(a.getAttribute("href")));
  const m = /^#\/topic\/(.+)$/.exec(hash);
  if (m) stopView = topicView(main, decodeURIComponent(m[1]));
  else if (hash === "#/connections") stopView = connectionsView(main);
  else if (hash === "#/jobs") stopView = jobsView(main);
  else if (hash === "#/consumers") stopView = consumersView(main);
  else if (hash === "#/lab") stopView = labView(main);
  else stopView = topicsView(main);
}

function showLogin(message) {
  stopView();
  stopView = () => {};
  live.close();
  $("#main").replaceChildren();
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

async function start() {
  try {
    me = await json("/v1/me");
  } catch (e) {
    if (e.status === 401) { showLogin(session.token ? "That token was refused." : ""); return; }
    $("#main").replaceChildren(el("p", { class: "status", text: problemText(e) }));
    return;
  }
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = me.auth !== "required";
  $("#who").textContent = me.auth === "required" ? (me.admin ? "admin" : "signed in") : "open hub";
  route();
}

session.onUnauthorized = () => {
  if (!$("#login").hidden) return;
  session.token = "";
  showLogin("Your token was refused; sign in again.");
};

applyTheme();
$("#theme").addEventListener("click", toggleTheme);
$("#login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  session.token = $("#token").value.trim();
  $("#token").value = "";
  start();
});
$("#logout").addEventListener("click", () => { session.token = ""; showLogin(""); });
live.onState = (s) => { $("#live-state").textContent = s === "closed" ? "" : `stream: ${live.mode} ${s}`; };
addEventListener("hashchange", () => { if ($("#login").hidden) route(); });
start();
