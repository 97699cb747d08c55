//! Hold mode: the sidecar as a GRIP proxy in front of a request-response application
//! (docs/API.md, hold mode). Every request outside the sidecar's own routes goes to the app
//! over HTTP/1.1, signed with `Grip-Sig`. An answer without GRIP instructions streams back
//! unchanged; one with them (`instruct`) becomes a hold over the hub's log: a response hold
//! (a long poll) or a stream hold, fed by reads through `plexus-client` from the hold's
//! cursor, so a `prev-id` that is a seq loses nothing.

pub mod epcp;
mod instruct;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Shared;
use super::problem::Problem;
use instruct::{BadInstruct, Hold, Instruct, Mode};

use crate::model::GRIP_EVENT;
/// A response hold's own body is read up to this (Pushpin's limit).
const MAX_HELD_BODY: usize = 100_000;
/// An `application/grip-instruct` body, or a stream hold's initial body, up to this.
const MAX_INSTRUCT_BODY: usize = 16 << 20;
/// The longest one long-poll read asks the hub to wait; a longer hold reads again.
const READ_WAIT: Duration = Duration::from_secs(30);

/// Request headers of one hop, never sent to the app; `grip-sig` is the sidecar's to set.
const HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "grip-sig",
];

/// The application behind the sidecar and the key its requests are signed with.
pub struct App {
    base: String,
    http: reqwest::Client,
    key: Option<jsonwebtoken::EncodingKey>,
}

impl App {
    pub fn new(base: &str, grip_key: Option<&str>) -> Result<App, String> {
        let http = reqwest::Client::builder()
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("app {base}: {e}"))?;
        Ok(App {
            base: base.trim_end_matches('/').to_owned(),
            http,
            key: grip_key.map(|k| jsonwebtoken::EncodingKey::from_secret(k.as_bytes())),
        })
    }

    /// `Grip-Sig`: HS256, `iss` plexus, expiring in an hour.
    fn sig(&self) -> Option<String> {
        let key = self.key.as_ref()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let claims = serde_json::json!({"iss": "plexus", "exp": now + 3600});
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key).ok()
    }

    fn url(&self, target: &str) -> String {
        if target.starts_with("http://") || target.starts_with("https://") {
            target.to_owned()
        } else {
            format!("{}{target}", self.base)
        }
    }
}

fn bad_instruct(path: &str, e: BadInstruct) -> Response {
    tracing::warn!(header = e.header, path, detail = %e.detail, "the app answered with a malformed GRIP instruction");
    Problem::bad_gateway(format!("the app's {}: {}", e.header, e.detail)).into_response()
}

/// Whether a response header is an instruction to the sidecar, never shown to the client.
fn is_instruction(name: &str) -> bool {
    name.starts_with("grip-") || name == "plexus-hold"
}

/// Proxies one request to the app and serves what it answers.
pub async fn proxy(sc: Arc<Shared>, app: &App, parts: Parts, body: Body) -> Response {
    let path = parts.uri.path().to_owned();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.clone());
    let body = match axum::body::to_bytes(body, super::MAX_BATCH_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return Problem::too_large(format!(
                "a proxied body is at most {} bytes",
                super::MAX_BATCH_BYTES
            ))
            .into_response();
        }
    };
    let mut request = app.http.request(parts.method.clone(), app.url(&target));
    for (k, v) in &parts.headers {
        if !HOP.contains(&k.as_str()) {
            request = request.header(k, v);
        }
    }
    if let Some(sig) = app.sig() {
        request = request.header("grip-sig", sig);
    }
    let answer = tokio::select! {
        a = request.body(body).send() => a,
        _ = sc.shutdown.cancelled() => {
            return Problem::hub_unavailable("the sidecar is shutting down").into_response();
        }
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(path, error = %e, "the app cannot be reached");
            return Problem::bad_gateway(format!("the app cannot be reached: {e}")).into_response();
        }
    };
    let headers: Vec<(String, String)> = answer
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let json_form = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grip-instruct"));
    if !json_form && !headers.iter().any(|(k, _)| is_instruction(k)) {
        return pass_through(answer.status().as_u16(), &headers, answer.bytes_stream());
    }
    let status = answer.status().as_u16();
    if json_form {
        if status != 200 {
            return bad_instruct(
                &path,
                BadInstruct {
                    header: "application/grip-instruct",
                    detail: format!("the status is {status}, not 200"),
                },
            );
        }
        let body = match read_capped(answer, MAX_INSTRUCT_BODY).await {
            Ok(b) => b,
            Err(e) => return Problem::bad_gateway(e).into_response(),
        };
        let j = match instruct::from_json(&body) {
            Ok(j) => j,
            Err(e) => return bad_instruct(&path, e),
        };
        let held = Held {
            status: j.code,
            headers: j.headers,
            body: Bytes::from(j.body),
        };
        return serve(sc, j.instruct, held).await;
    }
    let instruct = match instruct::from_headers(&headers) {
        Ok(i) => i,
        Err(e) => return bad_instruct(&path, e),
    };
    let Some(_) = &instruct.hold else {
        let status = instruct.status.unwrap_or(status);
        return pass_through(status, &headers, answer.bytes_stream());
    };
    let cap = match instruct.hold.as_ref().map(|h| h.mode) {
        Some(Mode::Response) => MAX_HELD_BODY,
        _ => MAX_INSTRUCT_BODY,
    };
    let body = match read_capped(answer, cap).await {
        Ok(b) => b,
        Err(e) => return Problem::bad_gateway(e).into_response(),
    };
    let held = Held {
        status: instruct.status.unwrap_or(status),
        headers: headers
            .into_iter()
            .filter(|(k, _)| !is_instruction(k))
            .collect(),
        body,
    };
    serve(sc, instruct, held).await
}

async fn read_capped(answer: reqwest::Response, cap: usize) -> Result<Bytes, String> {
    let mut out = Vec::new();
    let mut chunks = answer.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| format!("the app's body failed: {e}"))?;
        if out.len() + chunk.len() > cap {
            return Err(format!("the app's held body is over {cap} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// Response headers of one hop, never passed on.
fn hop_response(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

fn head(status: u16, headers: &[(String, String)], body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if hop_response(&lower) || is_instruction(&lower) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

fn pass_through(
    status: u16,
    headers: &[(String, String)],
    body: impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
) -> Response {
    head(status, headers, Body::from_stream(body))
}

/// The app's response that a hold wraps: what a response hold answers at its timeout, and
/// the head (and first bytes) of a stream hold.
struct Held {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Held {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn serve(sc: Arc<Shared>, instruct: Instruct, held: Held) -> Response {
    match instruct.hold {
        Some(hold) if hold.mode == Mode::Response => response_hold(sc, hold, held).await,
        Some(hold) => stream_hold(sc, hold, instruct.next, held),
        None => head(held.status, &held.headers, Body::from(held.body)),
    }
}

/// What one hub message delivers to a hold.
enum Delivery {
    /// Bytes for a stream (an `http-stream` item, a plain message's frame or payload).
    Content(Bytes),
    /// A full response (an `http-response` item).
    Response(Held),
    /// `action: close`: the stream ends.
    Close,
    /// Nothing for this kind of hold.
    Skip,
}

/// A hub message for a hold of `mode` whose response is `content_type`.
fn delivery(env: &plexus_client::Envelope, mode: Mode, content_type: Option<&str>) -> Delivery {
    let Some(msg) = super::share::message(env) else {
        return Delivery::Skip;
    };
    if env.event.as_deref() == Some(GRIP_EVENT)
        && let Ok(item) = serde_json::from_slice::<serde_json::Value>(&msg.data)
    {
        let formats = item.get("formats").unwrap_or(&item);
        let key = match mode {
            Mode::Response => "http-response",
            Mode::Stream => "http-stream",
        };
        let Some(format) = formats.get(key) else {
            return Delivery::Skip;
        };
        if format.get("action").and_then(|a| a.as_str()) == Some("close") {
            return Delivery::Close;
        }
        let text = |k: &str| format.get(k).and_then(|v| v.as_str());
        let bin = |k: &str| text(k).and_then(crate::wire::base64::decode);
        return match mode {
            Mode::Stream => {
                let content = text("content")
                    .map(|s| s.as_bytes().to_vec())
                    .or_else(|| bin("content-bin"))
                    .unwrap_or_default();
                Delivery::Content(Bytes::from(content))
            }
            Mode::Response => {
                let body = text("body")
                    .map(|s| s.as_bytes().to_vec())
                    .or_else(|| bin("body-bin"))
                    .unwrap_or_default();
                let headers = format
                    .get("headers")
                    .and_then(|h| h.as_object())
                    .map(|h| {
                        h.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                let status = format
                    .get("code")
                    .and_then(|c| c.as_u64())
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(200);
                Delivery::Response(Held {
                    status,
                    headers,
                    body: Bytes::from(body),
                })
            }
        };
    }
    let sse = content_type.is_some_and(|t| t.starts_with("text/event-stream"));
    match mode {
        Mode::Stream if sse => Delivery::Content(crate::wire::frames::sse_message(
            &msg.seq.to_string(),
            &msg,
            false,
        )),
        _ => Delivery::Content(msg.data.clone()),
    }
}

/// Reads a channel's topic from its cursor (or from now), sending each message with its seq
/// until the receiver is gone or the hub fails. For a response hold (`mode` Response) it stops
/// after a page that answers the hold: a read started after it would only be cancelled when
/// the hold returns, and a burst of cancelled HTTP/2 streams (every hold of a channel answers
/// at once) is what a server's rapid-reset guard closes the whole upstream connection for.
async fn follow(
    sc: Arc<Shared>,
    channel: instruct::Channel,
    tx: mpsc::Sender<plexus_client::Envelope>,
    mode: Mode,
) {
    let mut since = channel
        .cursor()
        .map(|c| c.to_string())
        .unwrap_or_else(|| "now".to_owned());
    loop {
        let options = plexus_client::ReadOptions {
            since: Some(since.clone()),
            limit: Some(100),
            wait: Some(READ_WAIT),
        };
        let lease = sc.upstream.lease();
        let read = tokio::select! {
            r = lease.read(channel.topic.as_str(), &options) => r,
            _ = tx.closed() => return,
            _ = sc.shutdown.cancelled() => return,
        };
        let page = match read {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(topic = %channel.topic, error = %e, "a hold's read failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = tx.closed() => return,
                }
            }
        };
        let answered = mode == Mode::Response
            && page.messages.iter().any(|env| {
                matches!(
                    delivery(env, Mode::Response, None),
                    Delivery::Response(_) | Delivery::Content(_)
                )
            });
        for env in page.messages {
            if tx.send(env).await.is_err() {
                return;
            }
        }
        if answered {
            return;
        }
        since = page.next;
    }
}

fn follow_all(sc: &Arc<Shared>, hold: &Hold) -> mpsc::Receiver<plexus_client::Envelope> {
    let (tx, rx) = mpsc::channel(64);
    for channel in &hold.channels {
        tokio::spawn(follow(sc.clone(), channel.clone(), tx.clone(), hold.mode));
    }
    rx
}

fn with_seq(mut response: Response, seq: u64) -> Response {
    response
        .headers_mut()
        .insert("plexus-seq", HeaderValue::from(seq));
    response
}

/// A long poll: the first message for the hold answers it; at the timeout, the app's own
/// response does.
async fn response_hold(sc: Arc<Shared>, hold: Hold, held: Held) -> Response {
    let mut rx = follow_all(&sc, &hold);
    let deadline = tokio::time::sleep(hold.timeout);
    tokio::pin!(deadline);
    let content_type = held.header("content-type").map(str::to_owned);
    loop {
        let env = tokio::select! {
            env = rx.recv() => env,
            _ = &mut deadline => None,
            _ = sc.shutdown.cancelled() => None,
        };
        let Some(env) = env else {
            return head(held.status, &held.headers, Body::from(held.body));
        };
        let seq = env.seq;
        match delivery(&env, Mode::Response, content_type.as_deref()) {
            Delivery::Response(r) => {
                // The published response inherits the held one's headers; its own win.
                let mut headers: Vec<(String, String)> = held
                    .headers
                    .iter()
                    .filter(|(k, _)| r.header(k).is_none())
                    .cloned()
                    .collect();
                headers.extend(r.headers);
                return with_seq(head(r.status, &headers, Body::from(r.body)), seq);
            }
            Delivery::Content(bytes) => {
                return with_seq(head(200, &held.headers, Body::from(bytes)), seq);
            }
            Delivery::Close | Delivery::Skip => continue,
        }
    }
}

/// The `id` and `prev-id` of a published GRIP item (`None` for a plain Plexus message).
fn chain_ids(env: &plexus_client::Envelope) -> Option<(Option<String>, Option<String>)> {
    if env.event.as_deref() != Some(GRIP_EVENT) {
        return None;
    }
    let item: serde_json::Value = serde_json::from_str(env.data.as_deref()?).ok()?;
    let text = |k: &str| item.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Some((text("id"), text("prev-id")))
}

/// A stream hold's position in each channel's publish chain (GRIP's `id`/`prev-id`), and the
/// next link that recovers from a gap in it, as Pushpin does: an item whose `prev-id` is not
/// the last id the stream delivered on its channel means the stream missed what the app
/// published in between (it was never published, or published before the hold began), so
/// the item is not sent; the next link is fetched with `Grip-Last` instead, and its body —
/// what came after the last id, by the app's own account — goes into the stream.
struct Chain {
    next: Option<String>,
    /// Per topic: the channel's name and the last id delivered on it.
    last: Vec<(String, String, Option<String>)>,
}

impl Chain {
    fn new(hold: &Hold, next: Option<String>) -> Chain {
        let last = hold
            .channels
            .iter()
            .map(|c| {
                // A prev-id that is a cursor says where the log read starts, not an app id.
                let id = c.prev_id.clone().filter(|_| c.cursor().is_none());
                (c.topic.as_str().to_owned(), c.name.clone(), id)
            })
            .collect();
        Chain { next, last }
    }

    /// Whether `env` follows what was delivered on its channel; records its id when it does.
    fn follows(&mut self, env: &plexus_client::Envelope) -> bool {
        let Some((id, prev)) = chain_ids(env) else {
            return true;
        };
        let Some(entry) = self.last.iter_mut().find(|(t, _, _)| *t == env.topic) else {
            return true;
        };
        if self.next.is_some()
            && let (Some(prev), Some(last)) = (&prev, &entry.2)
            && prev != last
        {
            return false;
        }
        if id.is_some() {
            entry.2 = id;
        }
        true
    }

    /// `Grip-Last: <channel>; last-id=<id>`, one per channel with a known last id.
    fn grip_last(&self) -> Vec<String> {
        self.last
            .iter()
            .filter_map(|(_, name, id)| Some(format!("{name}; last-id={}", id.as_ref()?)))
            .collect()
    }

    /// Takes what a next link's answer instructs: the channels' ids to follow from, and the
    /// next link (none: no more recovery). Its channels must be the hold's own; a hold cannot
    /// move to other channels mid-stream here.
    fn update(&mut self, instruct: &Instruct) {
        self.next = instruct.next.clone();
        if let Some(hold) = &instruct.hold {
            for c in &hold.channels {
                if let Some(entry) = self.last.iter_mut().find(|(_, n, _)| *n == c.name)
                    && c.prev_id.is_some()
                {
                    entry.2 = c.prev_id.clone();
                }
            }
        }
    }
}

/// GETs a stream hold's next link with `Grip-Last` (and `Grip-Sig`): its body, and the
/// instructions it answers with (`None` when it holds no more: the stream ends after it).
async fn fetch_next(app: &App, uri: &str, chain: &Chain) -> Result<(Bytes, Instruct), String> {
    let mut request = app.http.get(app.url(uri));
    for last in chain.grip_last() {
        request = request.header("grip-last", last);
    }
    if let Some(sig) = app.sig() {
        request = request.header("grip-sig", sig);
    }
    let answer = request
        .send()
        .await
        .map_err(|e| format!("the next link cannot be fetched: {e}"))?;
    if !answer.status().is_success() {
        return Err(format!("the next link answered {}", answer.status()));
    }
    let headers: Vec<(String, String)> = answer
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let instruct = instruct::from_headers(&headers)
        .map_err(|e| format!("the next link's {}: {}", e.header, e.detail))?;
    let body = read_capped(answer, MAX_INSTRUCT_BODY).await?;
    Ok((body, instruct))
}

/// A stream: the app's body, then each message for the hold in order, with keep-alives; a
/// gap in a channel's publish chain is filled from the next link (see [`Chain`]).
fn stream_hold(sc: Arc<Shared>, hold: Hold, next: Option<String>, held: Held) -> Response {
    let content_type = held.header("content-type").map(str::to_owned);
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(64);
    let mut rx = follow_all(&sc, &hold);
    let keep_alive = hold.keep_alive.clone();
    let first = held.body.clone();
    let mut chain = Chain::new(&hold, next);
    tokio::spawn(async move {
        if !first.is_empty() && out_tx.send(first).await.is_err() {
            return;
        }
        let idle = keep_alive
            .as_ref()
            .map(|k| k.timeout)
            .unwrap_or(Duration::from_secs(24 * 3600));
        let mut next_keep_alive = tokio::time::Instant::now() + idle;
        loop {
            tokio::select! {
                env = rx.recv() => {
                    let Some(env) = env else { return };
                    let bytes = if chain.follows(&env) {
                        match delivery(&env, Mode::Stream, content_type.as_deref()) {
                            Delivery::Content(bytes) => bytes,
                            Delivery::Close => return,
                            Delivery::Response(_) | Delivery::Skip => continue,
                        }
                    } else {
                        let (Some(app), Some(uri)) = (sc.app.as_ref(), chain.next.clone()) else {
                            return;
                        };
                        match fetch_next(app, &uri, &chain).await {
                            Ok((body, instruct)) => {
                                chain.update(&instruct);
                                if instruct.hold.is_none() {
                                    // No hold in the answer: its body ends the stream.
                                    let _ = out_tx.send(body).await;
                                    return;
                                }
                                body
                            }
                            Err(e) => {
                                tracing::warn!(uri, error = %e, "a stream hold's next link failed; the stream ends");
                                return;
                            }
                        }
                    };
                    if bytes.is_empty() {
                        continue;
                    }
                    if out_tx.send(bytes).await.is_err() {
                        return;
                    }
                    if keep_alive.as_ref().is_some_and(|k| !k.interval) {
                        next_keep_alive = tokio::time::Instant::now() + idle;
                    }
                }
                _ = tokio::time::sleep_until(next_keep_alive) => {
                    if let Some(k) = &keep_alive
                        && out_tx.send(Bytes::from(k.data.clone())).await.is_err()
                    {
                        return;
                    }
                    next_keep_alive = tokio::time::Instant::now() + idle;
                }
                _ = out_tx.closed() => return,
                _ = sc.shutdown.cancelled() => return,
            }
        }
    });
    let body = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    head(held.status, &held.headers, Body::from_stream(body))
}
