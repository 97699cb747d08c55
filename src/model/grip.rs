//! GRIP channels and EPCP items as the hub's own types, shared by the sidecar's hold mode and
//! the hub's `POST /publish/` (docs/API.md §9.1): one channel → topic escape, one item → message
//! mapping, so a publish through either lands on the same topic with the same bytes.

use bytes::Bytes;
use serde_json::Value;

use super::{EventName, NewMessage, Topic, valid_idempotency_key};

/// The event of a message made from an EPCP item; its payload is the item's JSON.
pub const GRIP_EVENT: &str = "grip";
/// Items in one EPCP publish, as in a batch.
const MAX_ITEMS: usize = 1000;

/// A GRIP channel name as a topic. Channel names are free text; topics are dot-separated
/// tokens of `[A-Za-z0-9_-]`. The one escape: every byte outside `[A-Za-z0-9-.]`, and `_`
/// itself, becomes `_` and two upper-case hex digits (`a:b` → `a_3Ab`, `a_b` → `a_5Fb`), so a
/// name of letters, digits, `-` and dots maps to itself.
pub fn channel_topic(name: &str) -> Result<Topic, String> {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out.parse::<Topic>()
        .map_err(|e| format!("channel {name:?} maps to topic {out:?}, which is not a topic: {e}"))
}

/// The items of an EPCP body `{"items":[…]}` as messages, or why the body is refused (then
/// nothing is to be stored). An item's `id` is its idempotency key.
pub fn epcp_messages(body: &[u8], max_bytes: usize) -> Result<Vec<NewMessage>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let items = v
        .get("items")
        .and_then(|i| i.as_array())
        .ok_or("\"items\" is missing or not a list")?;
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(format!("a publish holds 1 to {MAX_ITEMS} items"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| epcp_message(i, item, max_bytes))
        .collect()
}

fn epcp_message(i: usize, item: &Value, max_bytes: usize) -> Result<NewMessage, String> {
    let channel = item
        .get("channel")
        .and_then(|c| c.as_str())
        .ok_or_else(|| format!("item {i}: \"channel\" is missing or not a string"))?;
    let topic = channel_topic(channel).map_err(|e| format!("item {i}: {e}"))?;
    if topic.is_reserved() {
        return Err(format!("item {i}: topic {topic} is reserved for the hub"));
    }
    let formats = item.get("formats").unwrap_or(item);
    if formats.get("http-stream").is_none() && formats.get("http-response").is_none() {
        return Err(format!("item {i}: no http-stream or http-response format"));
    }
    for name in ["http-stream", "http-response"] {
        if let Some(action) = formats.get(name).and_then(|f| f.get("action")) {
            match action.as_str() {
                Some("send" | "close") => {}
                _ => return Err(format!("item {i}: {name}.action is not send or close")),
            }
        }
    }
    let idempotency_key = match item.get("id") {
        None => None,
        Some(Value::String(id)) if valid_idempotency_key(id) => Some(id.clone()),
        Some(_) => {
            return Err(format!(
                "item {i}: \"id\" is an idempotency key, 1-200 visible ASCII characters"
            ));
        }
    };
    let data = Bytes::from(item.to_string());
    if data.len() > max_bytes {
        return Err(format!(
            "item {i}: {} bytes, at most {max_bytes}",
            data.len()
        ));
    }
    Ok(NewMessage {
        topic,
        event: GRIP_EVENT.parse::<EventName>().ok(),
        data,
        idempotency_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_map_to_topics_by_one_escape() {
        assert_eq!(
            channel_topic("news.sports").unwrap().as_str(),
            "news.sports"
        );
        assert_eq!(channel_topic("a:b").unwrap().as_str(), "a_3Ab");
        assert_eq!(channel_topic("a_b").unwrap().as_str(), "a_5Fb");
        assert_eq!(channel_topic("a b/c").unwrap().as_str(), "a_20b_2Fc");
        assert!(channel_topic("a..b").is_err());
    }

    #[test]
    fn epcp_items_become_grip_messages_keyed_by_id() {
        let m = epcp_messages(
            br#"{"items":[{"channel":"a:b","id":"k1","formats":{"http-stream":{"content":"x"}}},
                {"channel":"c","http-response":{"body":"y","action":"close"}}]}"#,
            1000,
        )
        .unwrap();
        assert_eq!(m[0].topic.as_str(), "a_3Ab");
        assert_eq!(m[0].idempotency_key.as_deref(), Some("k1"));
        assert_eq!(m[0].event.as_ref().map(|e| e.as_str()), Some(GRIP_EVENT));
        assert_eq!(m[1].idempotency_key, None);
        for bad in [
            &b"{"[..],
            br#"{"items":[]}"#,
            br#"{"items":[{"channel":"c"}]}"#,
            br#"{"items":[{"channel":"_x","http-stream":{}}]}"#,
            br#"{"items":[{"channel":"c","id":7,"http-stream":{}}]}"#,
            br#"{"items":[{"channel":"c","http-stream":{"action":"hint"}}]}"#,
        ] {
            assert!(
                epcp_messages(bad, 1000).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(
            epcp_messages(
                br#"{"items":[{"channel":"c","http-stream":{"content":"long"}}]}"#,
                10
            )
            .is_err()
        );
    }
}
