//! The WebSocket (`/v1/ws`, docs/API.md §2.4) served by the sidecar itself: the hub's frames
//! both ways (decoded and encoded by `wire::ws`), subscriptions served from the shared feeds
//! of `share.rs`, publishes through the spool as over HTTP. An upstream WebSocket would need
//! a connection of its own; this way the socket costs the hub nothing beyond the shared
//! subscriptions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Shared;
use super::problem::Problem;
use super::spool::{NewEntry, Outcome};
use crate::model::{Since, SlowPolicy, Topic, TopicList};
use crate::wire::ws::{
    CLOSE_RESTARTING, Command, Reply, decode_client_frame, error_frame, ok_frame,
};

/// Topics one socket may hold, as on the hub (`limits.max_topics` default).
const MAX_TOPICS: usize = 64;

pub async fn upgrade(
    State(sc): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return Problem::bad_request("not a WebSocket upgrade").into_response();
    };
    let mut topics = None;
    let mut since = Since::Now;
    for kv in query.as_deref().unwrap_or_default().split('&') {
        match kv.split_once('=') {
            Some(("topic", t)) => match TopicList::parse(t, MAX_TOPICS) {
                Ok(list) => topics = Some(list),
                Err(e) => return Problem::bad_topic(e.to_string()).into_response(),
            },
            Some(("since", s)) => {
                let s = s.replace("%3A", ":").replace("%2C", ",");
                match Since::parse_bounded(&s, MAX_TOPICS) {
                    Ok(parsed) => since = parsed,
                    Err(e) => return Problem::bad_since(e.to_string()).into_response(),
                }
            }
            _ => {}
        }
    }
    let initial: Vec<Topic> = topics
        .map(|l| l.iter().cloned().collect())
        .unwrap_or_default();
    ws.on_upgrade(move |socket| session(sc, socket, initial, since))
}

fn text(s: String) -> Message {
    Message::Text(Utf8Bytes::from(s))
}

async fn session(sc: Arc<Shared>, socket: WebSocket, initial: Vec<Topic>, since: Since) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    let mut subs: HashMap<Topic, JoinHandle<()>> = HashMap::new();
    for topic in initial {
        let reply = subscribe(
            &sc,
            &mut subs,
            None,
            topic,
            &since,
            SlowPolicy::Catchup,
            &tx,
        )
        .await;
        if sink.send(text(reply)).await.is_err() {
            return end(subs);
        }
    }
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(frame) = out else { break };
                let Ok(frame) = Utf8Bytes::try_from(frame) else { continue };
                if sink.send(Message::Text(frame)).await.is_err() {
                    break;
                }
            }
            got = stream.next() => match got {
                Some(Ok(Message::Text(t))) => {
                    let reply = handle(&sc, &mut subs, t.as_str(), &tx).await;
                    if sink.send(text(reply)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = error_frame(None, 400, "binary frames are not accepted; send JSON text frames");
                    if sink.send(text(reply)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = sc.shutdown.cancelled() => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: CLOSE_RESTARTING.code,
                        reason: Utf8Bytes::from_static(CLOSE_RESTARTING.reason),
                    })))
                    .await;
                break;
            }
        }
    }
    end(subs);
}

fn end(subs: HashMap<Topic, JoinHandle<()>>) {
    for task in subs.into_values() {
        task.abort();
    }
}

async fn subscribe(
    sc: &Arc<Shared>,
    subs: &mut HashMap<Topic, JoinHandle<()>>,
    id: Option<&Value>,
    topic: Topic,
    since: &Since,
    slow: SlowPolicy,
    tx: &mpsc::Sender<Bytes>,
) -> String {
    if !subs.contains_key(&topic) && subs.len() >= MAX_TOPICS {
        return error_frame(
            id,
            400,
            &format!("a socket holds at most {MAX_TOPICS} topics"),
        );
    }
    // Subscribing again replaces the subscription.
    if let Some(old) = subs.remove(&topic) {
        old.abort();
    }
    match super::share::subscribe_frames(sc, &topic, since, slow, tx.clone()).await {
        Ok((task, start)) => {
            subs.insert(topic.clone(), task);
            ok_frame(
                id,
                Reply::Subscribed {
                    topic: &topic,
                    next: &start.to_string(),
                },
            )
        }
        Err((status, detail)) => error_frame(id, status, &detail),
    }
}

async fn handle(
    sc: &Arc<Shared>,
    subs: &mut HashMap<Topic, JoinHandle<()>>,
    frame: &str,
    tx: &mpsc::Sender<Bytes>,
) -> String {
    let max_message = sc.config.max_message_bytes;
    let max_frame = max_message / 3 * 4 + 4096;
    let (id, command) = decode_client_frame(frame, max_frame, max_message, MAX_TOPICS);
    let id = id.as_ref();
    let command = match command {
        Ok(c) => c,
        Err(crate::wire::ws::FrameError::TooLarge(d)) => return error_frame(id, 413, &d),
        Err(e) => return error_frame(id, 400, e.detail()),
    };
    match command {
        Command::Subscribe { topic, since, slow } => {
            subscribe(sc, subs, id, topic, &since, slow, tx).await
        }
        // The sidecar checks its local token at the upgrade and holds the hub credential
        // itself: an `auth` frame is the hub's (docs/API.md §13), not the sidecar's.
        Command::Auth { .. } => error_frame(
            id,
            400,
            "the sidecar takes its local token at connect; auth frames are the hub's",
        ),
        // Durable consumers keep their state in the hub; the sidecar's shared subscriptions
        // serve cursors only.
        Command::Consume { .. } => error_frame(
            id,
            400,
            "the sidecar's WebSocket serves cursors; read a durable consumer from the hub",
        ),
        Command::Unsubscribe { topic } => {
            if let Some(task) = subs.remove(&topic) {
                task.abort();
            }
            ok_frame(id, Reply::Unsubscribed { topic: &topic })
        }
        Command::Publish { topic, event, data } => {
            if topic.is_reserved() {
                return error_frame(
                    id,
                    403,
                    &format!(
                        "topic {topic} is reserved for the hub (names starting with _ can be read, not published to)"
                    ),
                );
            }
            let entry = NewEntry {
                topic: topic.as_str().to_owned(),
                event: event.map(|e| e.as_str().to_owned()),
                data,
                key: None,
            };
            match super::publish::spool(sc, vec![entry]).await {
                Ok(mut done) => match done.pop() {
                    Some((_, Some(Outcome::Stored(v)))) => {
                        let mut ok = json!({"op": "ok", "topic": topic.as_str(), "seq": v["seq"], "time": v["time"]});
                        if let Some(id) = id {
                            ok["id"] = id.clone();
                        }
                        ok.to_string()
                    }
                    Some((_, Some(Outcome::Refused { status, body }))) => {
                        let p: Value = serde_json::from_slice(&body).unwrap_or_default();
                        error_frame(
                            id,
                            status,
                            p["detail"].as_str().unwrap_or("refused by the hub"),
                        )
                    }
                    Some((a, _)) => {
                        let mut ok = super::publish::spooled(topic.as_str(), &a);
                        ok["op"] = json!("ok");
                        if let Some(id) = id {
                            ok["id"] = id.clone();
                        }
                        ok.to_string()
                    }
                    None => error_frame(id, 400, "nothing was published"),
                },
                Err(p) => {
                    let (status, detail) = p.frame_parts();
                    error_frame(id, status, detail)
                }
            }
        }
    }
}
