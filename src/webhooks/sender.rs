//! One webhook's sender: reads its consumer one message at a time and POSTs it, so exactly
//! one request is in flight and the order is the consumer's (topics merged by commit order).
//! A message that keeps failing holds back the ones after it until it succeeds, is
//! dead-lettered or the webhook is disabled. The position moves past a message only once it
//! is done with, so a hub killed mid-delivery sends it again (same `webhook-id`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{Handle, LEASE, Record, State, Webhooks, consumer_name, guard, lease_key, sign};
use crate::consumers::{ConsumerError, ReadSpec};
use crate::model::{Message, NewMessage, Since, TopicList, now_millis};
use crate::wire::Envelope;

/// How long one read waits for a message before it looks at the webhook again.
const READ_WAIT: Duration = Duration::from_secs(5);
/// The longest a `Retry-After` may hold a message back.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of a response body the attempt log keeps.
const RESPONSE_KEEP: usize = 2048;

enum Outcome {
    /// Answered with a 2xx, or dead-lettered: move past it.
    Done,
    /// Disabled, paused, replayed, deleted or shutting down: keep the position.
    Stop,
}

/// What one attempt came to.
enum Answer {
    Status(u16, Option<Duration>, String),
    Error(String),
}

pub(super) async fn run(hooks: Arc<Webhooks>, id: String, handle: Arc<Handle>) {
    let token = hooks.hub.shutdown_token().clone();
    let Ok(name) = consumer_name(&id) else {
        return;
    };
    let mut failing_since: Option<Instant> = None;
    let mut last_start: Option<Instant> = None;
    loop {
        if token.is_cancelled() {
            return;
        }
        let generation = handle.generation.load(Ordering::SeqCst);
        let record = match hooks.load(&id).await {
            Ok(Some((_, r))) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("webhook {id}: {e}");
                pause(&handle, &token, Duration::from_secs(1)).await;
                continue;
            }
        };
        if record.state != State::Active {
            // Woken by resume, replay or delete; looked at again now and then for changes
            // made through another node.
            pause(&handle, &token, LEASE).await;
            continue;
        }
        if !hold_lease(&hooks, &id).await {
            pause(&handle, &token, LEASE / 3).await;
            continue;
        }
        let Ok(topics) = TopicList::parse(&record.topics.join(","), usize::MAX) else {
            return;
        };
        let spec = ReadSpec {
            topics,
            limit: 1,
            wait: READ_WAIT,
            implicit_start: Since::Now,
        };
        let batch = tokio::select! {
            b = hooks.consumers.stream_batch(&name, &spec) => b,
            _ = handle.wake.notified() => continue,
            _ = token.cancelled() => return,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(ConsumerError::Unknown(_)) => return,
            Err(e) => {
                tracing::warn!("webhook {id}: reading: {e}");
                pause(&handle, &token, Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some((msg, _)) = batch.delivered.messages.into_iter().next() else {
            // Only gaps (messages gone by retention): step over them.
            if !batch.delivered.gaps.is_empty()
                && let Some(next) = batch.delivered.next
            {
                let to: Vec<_> = batch
                    .before
                    .iter()
                    .filter_map(|(t, _)| next.position(t).map(|s| (t.clone(), s)))
                    .collect();
                let _ = hooks.consumers.advance(&name, &to).await;
            }
            continue;
        };
        if record.rate > 0.0
            && let Some(last) = last_start
        {
            let gap = Duration::from_secs_f64(1.0 / record.rate);
            tokio::time::sleep_until(last + gap).await;
        }
        last_start = Some(Instant::now());
        let outcome = deliver(
            &hooks,
            &handle,
            &record,
            &msg,
            generation,
            &mut failing_since,
        )
        .await;
        // Advanced only from where the read began: a replay's seek made since wins (the
        // generation alone left a window between the seek and its poke, in which a message
        // read at the new position was sent and then not advanced past: it went out twice).
        if matches!(outcome, Outcome::Done)
            && let Err(e) = hooks
                .consumers
                .advance_from(&name, &batch.before, &[(msg.topic.clone(), msg.seq)])
                .await
        {
            tracing::warn!("webhook {id}: advancing: {e}");
        }
    }
}

/// Waits `d`, or until woken or shut down.
async fn pause(handle: &Handle, token: &tokio_util::sync::CancellationToken, d: Duration) {
    tokio::select! {
        _ = handle.wake.notified() => {}
        _ = token.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// On a store several nodes share, takes or renews this node's hold on the webhook, so one
/// node delivers it at a time; another takes over once a hold runs out ([`LEASE`] plus
/// `webhooks.timeout`).
async fn hold_lease(hooks: &Webhooks, id: &str) -> bool {
    if !hooks.hub.shared_store() {
        return true;
    }
    let key = lease_key(id);
    let now = now_millis();
    let stored = match hooks.store.consumer(&key).await {
        Ok(s) => s,
        Err(_) => return false,
    };
    let version = match &stored {
        Some(s) => {
            let held: serde_json::Value = serde_json::from_slice(&s.body).unwrap_or_default();
            let node = held.get("node").and_then(|v| v.as_str()).unwrap_or("");
            let until = held.get("until").and_then(|v| v.as_i64()).unwrap_or(0);
            if node != hooks.node && until > now {
                return false;
            }
            s.version
        }
        None => 0,
    };
    // Held past the longest request this node may still have in flight, so no other node
    // sends while an answer could still come.
    let hold = LEASE + hooks.options.timeout;
    let body = json!({"node": hooks.node, "until": now + hold.as_millis() as i64});
    matches!(
        hooks
            .store
            .put_consumer(&key, version, body.to_string().into_bytes(), Vec::new())
            .await,
        Ok(Some(_))
    )
}

/// The `webhook-id` of a message: the same on every attempt and replay, without `.`.
fn message_id(id: &str, msg: &Message) -> String {
    let topic: String = msg
        .topic
        .as_str()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{id}_{topic}_{}", msg.seq)
}

/// ±20 % of `d`.
fn jitter(d: Duration) -> Duration {
    let r = sign::random_hex(2)
        .ok()
        .and_then(|h| u16::from_str_radix(&h, 16).ok())
        .unwrap_or(32768);
    let factor = 0.8 + 0.4 * (f64::from(r) / 65535.0);
    d.mul_f64(factor)
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

async fn deliver(
    hooks: &Webhooks,
    handle: &Handle,
    first: &Record,
    msg: &Message,
    generation: u64,
    failing_since: &mut Option<Instant>,
) -> Outcome {
    let token = hooks.hub.shutdown_token().clone();
    let id = first.id.as_str();
    let wid = message_id(id, msg);
    let body: bytes::Bytes = if first.raw {
        msg.data.clone()
    } else {
        serde_json::to_vec(&Envelope::of(msg))
            .unwrap_or_default()
            .into()
    };
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        // Reloaded each attempt: a rotation signs from the next one on, a pause stops it.
        let record = match hooks.load(id).await {
            Ok(Some((_, r))) if r.state == State::Active => r,
            _ => return Outcome::Stop,
        };
        if handle.generation.load(Ordering::SeqCst) != generation || !hold_lease(hooks, id).await {
            return Outcome::Stop;
        }
        let started = Instant::now();
        let answer = send(hooks, &record, msg, &wid, &body).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let mut log = json!({
            "topic": msg.topic.as_str(),
            "seq": msg.seq,
            "attempt": attempt,
            "webhook_id": wid,
            "duration_ms": duration_ms,
        });
        let mut wait_at_least = None;
        let mut gone = false;
        let ok = match &answer {
            Answer::Status(status, ra, text) => {
                log["status"] = json!(status);
                log["response"] = json!(text);
                wait_at_least = *ra;
                gone = *status == 410;
                (200..300).contains(status)
            }
            Answer::Error(e) => {
                log["error"] = json!(e);
                false
            }
        };
        *handle
            .last_attempt
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(log.clone());
        hooks.publish_own(id, "attempts", log).await;
        if ok {
            *failing_since = None;
            return Outcome::Done;
        }
        let since = *failing_since.get_or_insert(started);
        if gone || since.elapsed() >= hooks.options.disable_after {
            let reason = if gone {
                "the receiver answered 410 Gone".to_string()
            } else {
                format!(
                    "failing for {:?} (webhooks.disable_after)",
                    hooks.options.disable_after
                )
            };
            disable(hooks, id, &reason).await;
            return Outcome::Stop;
        }
        let Some(step) = hooks.options.retry.get(attempt as usize - 1) else {
            dead_letter(hooks, id, msg, &wid, attempt).await;
            return Outcome::Done;
        };
        let mut delay = jitter(*step);
        if let Some(ra) = wait_at_least {
            delay = delay.max(ra.clamp(*step, MAX_RETRY_AFTER.max(*step)));
        }
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = token.cancelled() => return Outcome::Stop,
                _ = handle.wake.notified() => {
                    if handle.generation.load(Ordering::SeqCst) != generation {
                        return Outcome::Stop;
                    }
                }
            }
        }
    }
}

/// One POST. Redirects are not followed (the client's policy): a 3xx is a failure.
async fn send(
    hooks: &Webhooks,
    record: &Record,
    msg: &Message,
    wid: &str,
    body: &bytes::Bytes,
) -> Answer {
    // IP literals never reach the resolver: judged here.
    if let Ok(url) = reqwest::Url::parse(&record.url)
        && let Some(ip) = url.host_str().and_then(super::literal_ip)
        && !hooks.policy.permits(ip)
    {
        return Answer::Error("address not allowed".into());
    }
    let timestamp = now_millis() / 1000;
    let signatures: Vec<String> = record
        .signing_keys()
        .iter()
        .map(|k| sign::signature(k, wid, timestamp, body))
        .collect();
    let content_type = if record.raw {
        "application/octet-stream"
    } else {
        "application/json"
    };
    let sent = hooks
        .client
        .post(&record.url)
        .header("content-type", content_type)
        .header("webhook-id", wid)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures.join(" "))
        .header("plexus-topic", msg.topic.as_str())
        .header("plexus-seq", msg.seq.to_string())
        .body(body.clone())
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let ra = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            let mut text = Vec::new();
            let mut resp = resp;
            while text.len() < RESPONSE_KEEP {
                match resp.chunk().await {
                    Ok(Some(c)) => text.extend_from_slice(&c),
                    _ => break,
                }
            }
            text.truncate(RESPONSE_KEEP);
            Answer::Status(status, ra, String::from_utf8_lossy(&text).into_owned())
        }
        Err(e) => Answer::Error(describe(&e)),
    }
}

/// An error as the attempt log shows it; a refused address as `"address not allowed"`, a
/// failed TLS handshake as `"tls: …"`.
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<guard::NotAllowed>().is_some() {
            return "address not allowed".into();
        }
        if let Some(t) = tls_cause(s) {
            return format!("tls: {t}");
        }
        source = s.source();
    }
    if e.is_timeout() {
        return "timeout".into();
    }
    if e.is_connect() {
        return format!("connect: {e}");
    }
    e.to_string()
}

/// The rustls error inside `e`. A failed handshake arrives wrapped in io::Errors (two, from
/// reqwest's connector), whose `source()` skips what they wrap: look inside each, so the log
/// names TLS and why (e.g. an unknown issuer).
fn tls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    tls_cause(inner)
}

async fn dead_letter(hooks: &Webhooks, id: &str, msg: &Message, wid: &str, attempts: u32) {
    let Some(topic) = super::own_topic(id, "dead") else {
        return;
    };
    let mut envelope = serde_json::to_value(Envelope::of(msg)).unwrap_or_default();
    envelope["webhook_id"] = json!(wid);
    envelope["attempts"] = json!(attempts);
    let dead = NewMessage {
        topic,
        event: None,
        data: serde_json::to_vec(&envelope).unwrap_or_default().into(),
        idempotency_key: None,
    };
    if let Err(e) = hooks.hub.publish_internal(vec![dead]).await {
        tracing::warn!("webhook {id}: dead letter: {e}");
    }
}

async fn disable(hooks: &Webhooks, id: &str, reason: &str) {
    let r = reason.to_string();
    let done = hooks
        .update(id, move |rec| {
            rec.state = State::Disabled;
            rec.disabled_reason = Some(r.clone());
        })
        .await;
    if done.is_ok() {
        hooks
            .publish_own(id, "events", json!({"event": "disabled", "reason": reason}))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 120 "), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let d = retry_after(&later).unwrap_or_default();
        assert!(
            d > Duration::from_secs(80) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..200 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
    }

    #[test]
    fn message_ids_have_no_dots_and_differ_per_topic() {
        let msg = |topic: &str| Message {
            topic: topic.parse().unwrap_or_else(|_| unreachable!()),
            seq: 7,
            time: 0,
            event: None,
            data: bytes::Bytes::new(),
        };
        let a = message_id("abc", &msg("orders.eu"));
        let b = message_id("abc", &msg("orders.us"));
        assert!(!a.contains('.') && !b.contains('.'), "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, message_id("abc", &msg("orders.eu")));
    }
}
