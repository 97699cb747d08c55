// The dashboard's link to the hub: every request goes through `api` (the token, when there is
// one, travels in the Authorization header, never in a URL), and one `Live` channel per tab
// carries every live view: a streaming fetch of SSE or one WebSocket, never both.

const TOKEN_KEY = "plexus.token";

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY) || ""; },
  set token(t) { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); },
  onUnauthorized: () => {},
};

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function withAuth(headers) {
  const h = new Headers(headers || {});
  if (session.token) h.set("Authorization", "Bearer " + session.token);
  return h;
}

export async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: withAuth(opts.headers) });
  if (r.status === 401) session.onUnauthorized();
  return r;
}

// The JSON answer of `path`, or an ApiError carrying the problem.
export async function json(path, opts = {}) {
  const r = await api(path, opts);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

// A topic's position: the seq after which reading goes on.
function cursorOf(subs) {
  const topics = [...subs.keys()];
  if (topics.length === 1) return String(subs.get(topics[0]).cursor);
  return topics.map((t) => `${t}:${subs.get(t).cursor}`).join(",");
}

// Calls `handler(event)` with {kind:"message", msg} or {kind:"gap", gap}, for every topic
// subscribed, over the tab's one streaming connection. Each subscription keeps its cursor, so
// a reconnect, a switch of transport or a resume goes on exactly after the last event seen.
export class Live {
  constructor() {
    this.mode = "sse";
    this.subs = new Map(); // topic -> {cursor, handler}
    this.sse = null; // AbortController of the streaming fetch
    this.sseEnded = Promise.resolve(); // settles once the last streaming fetch is torn down
    this.ws = null;
    this.wsReady = false;
    this.retry = null;
    this.pending = false;
    this.linger = null;
    this.state = "closed";
    this.onState = () => {};
  }

  setMode(mode) {
    if (mode === this.mode) return;
    this.close();
    this.mode = mode;
    this.schedule();
  }

  subscribe(topic, cursor, handler) {
    clearTimeout(this.linger);
    this.linger = null;
    this.subs.set(topic, { cursor, handler });
    if (this.mode === "ws" && this.ws && this.wsReady) this.wsSubscribe(topic);
    else if (this.mode === "sse") { this.closeSse(); this.schedule(); }
    else this.schedule();
  }

  unsubscribe(topic) {
    if (!this.subs.delete(topic)) return;
    if (this.mode === "ws" && this.ws && this.wsReady) {
      this.ws.send(JSON.stringify({ op: "unsubscribe", topic }));
    } else if (this.mode === "sse") { this.closeSse(); }
    // A WebSocket left with no subscription lingers a moment: a resume or a replay that
    // subscribes again right away reuses it instead of holding a second one while the first
    // closes.
    if (this.subs.size === 0) {
      clearTimeout(this.linger);
      this.linger = setTimeout(() => { this.linger = null; if (this.subs.size === 0) this.close(); }, 2000);
    } else this.schedule();
  }

  cursor(topic) { const s = this.subs.get(topic); return s ? s.cursor : null; }

  // Opens (or reopens) the connection once the current turn of subscribes is done.
  schedule() {
    if (this.pending) return;
    this.pending = true;
    queueMicrotask(() => { this.pending = false; this.open(); });
  }

  setState(s) { this.state = s; this.onState(s); }

  open() {
    if (this.subs.size === 0) return;
    if (this.mode === "sse" && !this.sse) this.openSse();
    if (this.mode === "ws" && !this.ws) this.openWs();
  }

  close() {
    clearTimeout(this.linger);
    this.linger = null;
    clearTimeout(this.retry);
    this.retry = null;
    this.closeSse();
    if (this.ws) { const ws = this.ws; this.ws = null; this.wsReady = false; ws.close(1000); }
    this.setState("closed");
  }

  closeSse() {
    if (this.sse) { const c = this.sse; this.sse = null; c.abort(); }
  }

  reconnectLater() {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => { this.retry = null; this.open(); }, 1000);
  }

  dispatch(topic, event) {
    const sub = this.subs.get(topic);
    if (!sub) return;
    if (event.kind === "message") {
      if (event.msg.seq <= sub.cursor) return;
      sub.cursor = event.msg.seq;
    } else if (event.gap.to !== undefined && event.gap.to > sub.cursor) {
      sub.cursor = event.gap.to;
    }
    sub.handler(event);
  }

  openSse() {
    const ctrl = new AbortController();
    this.sse = ctrl;
    // A new stream starts only once the one it replaces is gone: the tab never holds two.
    this.sseEnded = this.sseEnded
      .then(() => new Promise((r) => setTimeout(r, 25)))
      .then(() => (this.sse === ctrl ? this.streamSse(ctrl) : undefined));
  }

  async streamSse(ctrl) {
    const topics = [...this.subs.keys()].map(encodeURIComponent).join(",");
    const since = encodeURIComponent(cursorOf(this.subs));
    this.setState("connecting");
    try {
      const r = await api(`/v1/topics/${topics}/sse?since=${since}`, {
        signal: ctrl.signal, headers: { Accept: "text/event-stream" },
      });
      if (r.status >= 400 && r.status < 500 && r.status !== 429) {
        // Refused (a topic this token may not read, a bad cursor): retrying cannot help.
        if (this.sse === ctrl) { this.sse = null; this.setState(`refused (${r.status})`); }
        return;
      }
      if (!r.ok || !r.body) throw new ApiError(r.status, null);
      this.setState("live");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          this.sseFrame(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
      }
    } catch (_) {
      // Aborted on purpose, or the connection dropped: the cursors resume it.
    }
    if (this.sse === ctrl) { this.sse = null; this.setState("reconnecting"); this.reconnectLater(); }
  }

  sseFrame(frame) {
    let event = "message";
    const data = [];
    for (const line of frame.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length === 0) return;
    let body;
    try { body = JSON.parse(data.join("\n")); } catch (_) { return; }
    if (event === "gap") this.dispatch(body.topic, { kind: "gap", gap: body });
    else this.dispatch(body.topic, { kind: "message", msg: body });
  }

  openWs() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
    const ws = new WebSocket(url);
    this.ws = ws;
    this.wsReady = false;
    this.setState("connecting");
    ws.onopen = () => {
      if (session.token) ws.send(JSON.stringify({ op: "auth", id: "auth", token: session.token }));
      this.wsReady = true;
      this.setState("live");
      for (const topic of this.subs.keys()) this.wsSubscribe(topic);
    };
    ws.onmessage = (e) => {
      let f;
      try { f = JSON.parse(e.data); } catch (_) { return; }
      if (f.op === "message") this.dispatch(f.topic, { kind: "message", msg: f });
      else if (f.op === "gap") this.dispatch(f.topic, { kind: "gap", gap: f });
      else if (f.op === "error" && f.status === 401) session.onUnauthorized();
      // A subscription the hub ended (its store read failed, or a slow-consumer disconnect):
      // subscribe again from the cursor, so nothing is lost.
      else if ((f.op === "disconnect" || (f.op === "error" && f.id === undefined)) && f.topic) {
        setTimeout(() => { if (this.ws === ws && this.wsReady && this.subs.has(f.topic)) this.wsSubscribe(f.topic); }, 1000);
      }
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.wsReady = false;
      this.setState("reconnecting");
      this.reconnectLater();
    };
  }

  wsSubscribe(topic) {
    const sub = this.subs.get(topic);
    this.ws.send(JSON.stringify({ op: "subscribe", topic, since: String(sub.cursor) }));
  }
}

// A poll loop beside the streaming connection: `wait` seconds per long poll, or a short poll
// every `every` ms. Calls `handler` like Live does; `stop()` ends it.
export function poll(topic, cursor, handler, { wait = 0, every = 1000 } = {}) {
  let stopped = false;
  let ctrl = null;
  let timer = null;
  const state = { cursor };
  const loop = async () => {
    if (stopped) return;
    ctrl = new AbortController();
    const since = encodeURIComponent(String(state.cursor));
    const q = wait > 0 ? `&wait=${wait}` : "";
    let ok = true;
    try {
      const page = await json(`/v1/topics/${encodeURIComponent(topic)}/messages?since=${since}&limit=1000${q}`, { signal: ctrl.signal });
      if (stopped) return;
      for (const gap of page.gaps || []) handler({ kind: "gap", gap });
      for (const msg of page.messages) {
        if (msg.seq > state.cursor) { state.cursor = msg.seq; handler({ kind: "message", msg }); }
      }
      const next = Number(page.next);
      if (Number.isFinite(next) && next > state.cursor) state.cursor = next;
    } catch (_) {
      ok = false;
    }
    if (stopped) return;
    timer = setTimeout(loop, wait > 0 && ok ? 0 : every);
  };
  loop();
  return {
    get cursor() { return state.cursor; },
    stop() { stopped = true; clearTimeout(timer); if (ctrl) ctrl.abort(); },
  };
}
