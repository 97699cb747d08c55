//! The commit feed: what each node hears of every commit (its own too) — Pub/Sub on one
//! Redis, sharded Pub/Sub per followed topic on a cluster — decoded for the hub.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::RedisError;
use redis::cluster_async::ClusterConnection;

use crate::model::{EventName, Message, Millis, Topic};

use super::core::Core;
use super::keys::*;

/// The topics a cluster node's hub wants followed: kept so that a subscription Redis drops
/// (a slot moved, a failover) or one that failed is made again while it is wanted.
pub(super) type Followed = Arc<Mutex<HashSet<Topic>>>;

pub(super) fn wanted(followed: &Followed, topic: &Topic) -> bool {
    followed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(topic)
}

/// What the hub asks a cluster node to follow (see [`Follow::follow`]).
pub(super) enum Interest {
    Follow(Topic),
    Unfollow(Topic),
}

pub(super) async fn subscribe(client: &redis::Client) -> Result<redis::aio::PubSub, RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    Ok(pubsub)
}

/// Feeds every commit published on the channel to the hub, resubscribing when the
/// connection drops.
pub(super) async fn follow_commits(
    client: redis::Client,
    mut pubsub: redis::aio::PubSub,
    feed: tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>>,
) {
    loop {
        {
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                match decode_commit(msg.get_payload_bytes()) {
                    Some(batch) => {
                        if feed.send(batch).is_err() {
                            return;
                        }
                    }
                    None => tracing::warn!("redis: an undecodable message on {CHANNEL}"),
                }
            }
        }
        tracing::warn!("redis: the commit subscription dropped; reconnecting");
        let mut delay = Duration::from_millis(100);
        pubsub = loop {
            tokio::time::sleep(delay).await;
            match subscribe(&client).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, "redis: cannot resubscribe yet");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!("redis: the commit subscription is back");
        // Commits made while it was down were not fed: an empty batch tells the hub to
        // check the heads of the topics it serves.
        if feed.send(Vec::new()).is_err() {
            return;
        }
    }
}

/// Subscribes to (and from) the sharded channels of the topics the hub follows. redis-rs
/// resubscribes after a reconnect or a resharding; a failed request is retried a few times.
pub(super) async fn follow_interests(
    mut conn: ClusterConnection,
    mut interests: tokio::sync::mpsc::UnboundedReceiver<Interest>,
    followed: Followed,
    core: Core,
) {
    while let Some(interest) = interests.recv().await {
        match interest {
            Interest::Follow(topic) => {
                // Retried, with a capped backoff, for as long as the topic is wanted.
                let mut delay = Duration::from_millis(100);
                while wanted(&followed, &topic) {
                    let subscribed = match core.slot(&topic).await {
                        Ok(slot) => conn
                            .ssubscribe(slot.channel())
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match subscribed {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(%topic, error = %e, "redis: cannot subscribe to the topic's shard channel; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
            Interest::Unfollow(topic) => {
                if !wanted(&followed, &topic)
                    && let Ok(slot) = core.slot(&topic).await
                    && let Err(e) = conn.sunsubscribe(slot.channel()).await
                {
                    tracing::debug!(%topic, error = %e, "redis: cannot unsubscribe");
                }
            }
        }
    }
}

/// Feeds the hub what the sharded subscriptions receive. When a topic's subscription is
/// confirmed (a new topic, or every topic again after a reconnect), the topic's newest message
/// is fed too: a commit made before the subscription took effect then reaches its readers (a
/// reader behind it sees the hole and catches up from the store; one level with it ignores
/// the repeat).
pub(super) async fn feed_pushes(
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    feed: tokio::sync::mpsc::UnboundedSender<Vec<Arc<Message>>>,
    reader: Core,
    followed: Followed,
    interests: tokio::sync::mpsc::UnboundedSender<Interest>,
) {
    let topic_of = |channel: &[u8]| {
        std::str::from_utf8(channel)
            .ok()
            .and_then(Slot::topic_of_channel)
    };
    while let Some(push) = pushes.recv().await {
        if push.kind == redis::PushKind::SUnsubscribe
            && let Some(redis::Value::BulkString(channel)) = push.data.first()
            && let Some(topic) = topic_of(channel)
            && wanted(&followed, &topic)
        {
            // Redis dropped a subscription the hub still wants (its slot moved): again.
            let _ = interests.send(Interest::Follow(topic));
            continue;
        }
        let bytes = match push.data.first() {
            Some(redis::Value::BulkString(channel)) if push.kind == redis::PushKind::SSubscribe => {
                if let Some(topic) = topic_of(channel) {
                    let (reader, feed) = (reader.clone(), feed.clone());
                    tokio::spawn(async move {
                        match reader.newest(&topic).await {
                            Ok(Some(newest)) => {
                                let _ = feed.send(vec![newest]);
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(%topic, error = %e, "redis: cannot read the head of a followed topic");
                                let _ = feed.send(Vec::new());
                            }
                        }
                    });
                }
                continue;
            }
            _ if push.kind == redis::PushKind::SMessage => push.data.get(1),
            _ if push.kind == redis::PushKind::Disconnection => {
                // Resubscribing confirms each topic again (above); until then, a full check.
                if feed.send(Vec::new()).is_err() {
                    return;
                }
                continue;
            }
            _ => continue,
        };
        let batch = match bytes {
            Some(redis::Value::BulkString(bytes)) => decode_commit(bytes),
            _ => None,
        };
        let Some(batch) = batch else {
            tracing::warn!("redis: an undecodable sharded message");
            continue;
        };
        if feed.send(batch).is_err() {
            return;
        }
    }
}

/// `TOPIC\n` then per message `SEQ TIME EVENT_LEN DATA_LEN\n EVENT DATA` (see append.lua).
pub(super) fn decode_commit(bytes: &[u8]) -> Option<Vec<Arc<Message>>> {
    fn line(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let end = b.iter().position(|&c| c == b'\n')?;
        Some((&b[..end], &b[end + 1..]))
    }
    let (topic, mut rest) = line(bytes)?;
    let topic: Topic = std::str::from_utf8(topic).ok()?.parse().ok()?;
    let mut batch = Vec::new();
    while !rest.is_empty() {
        let (head, body) = line(rest)?;
        let mut nums = std::str::from_utf8(head).ok()?.split(' ');
        let mut next = || nums.next()?.parse::<u64>().ok();
        let (seq, time, elen, dlen) = (next()?, next()?, next()? as usize, next()? as usize);
        if body.len() < elen + dlen {
            return None;
        }
        let event = match elen {
            0 => None,
            _ => Some(
                std::str::from_utf8(&body[..elen])
                    .ok()?
                    .parse::<EventName>()
                    .ok()?,
            ),
        };
        batch.push(Arc::new(Message {
            topic: topic.clone(),
            seq,
            time: time as Millis,
            event,
            data: Bytes::copy_from_slice(&body[elen..elen + dlen]),
        }));
        rest = &body[elen + dlen..];
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_decode() {
        let mut wire = b"news.eu\n".to_vec();
        wire.extend_from_slice(b"7 1700000000000 4 3\nnoteabc");
        wire.extend_from_slice(b"8 1700000000001 0 2\n\n\x00");
        let batch = decode_commit(&wire).expect("decodes");
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].seq, 7);
        assert_eq!(batch[0].event.as_ref().map(|e| e.as_str()), Some("note"));
        assert_eq!(&batch[0].data[..], b"abc");
        assert_eq!(batch[1].seq, 8);
        assert_eq!(batch[1].event, None);
        assert_eq!(&batch[1].data[..], b"\n\x00");
        assert!(decode_commit(b"news\n9 1 0 5\nab").is_none(), "short body");
        assert!(decode_commit(b"bad topic!\n").is_none());
    }
}
