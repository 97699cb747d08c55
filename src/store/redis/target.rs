//! Where the engine connects: a Redis URL or a cluster's seed nodes, passwords hidden.

use std::time::Duration;

/// Where the engine connects. Its `Debug` hides passwords (it is logged at start).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server: `redis://HOST:PORT`.
    Single(String),
    /// The seed nodes of a Redis Cluster: `redis+cluster://HOST:PORT,HOST:PORT`.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Single(url) => f.debug_tuple("Single").field(&redact(url)).finish(),
            RedisTarget::Cluster(nodes) => f
                .debug_tuple("Cluster")
                .field(&nodes.iter().map(|n| redact(n)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A Redis URL with its password, if any, replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(name, _)| name);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// Every connection to Redis probes an idle peer: a subscription that only ever reads would
/// otherwise wait forever on a Redis that vanished without closing the socket.
pub(super) fn tcp_settings() -> redis::io::tcp::TcpSettings {
    let keepalive = redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(5));
    let settings = redis::io::tcp::TcpSettings::default().set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(Duration::from_secs(30));
    settings
}

impl RedisTarget {
    /// Parses a `--storage` value; `None` when it is not a Redis URL.
    pub fn parse(url: &str) -> Option<Result<RedisTarget, String>> {
        if url.starts_with("redis://") {
            return Some(Ok(RedisTarget::Single(url.to_owned())));
        }
        let nodes = url.strip_prefix("redis+cluster://")?;
        let nodes: Vec<String> = nodes
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| format!("redis://{n}"))
            .collect();
        Some(if nodes.is_empty() {
            Err(format!(
                "{url:?} names no node; use redis+cluster://HOST:PORT,HOST:PORT"
            ))
        } else {
            Ok(RedisTarget::Cluster(nodes))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://:s3cret@h:6379"), "redis://:***@h:6379");
        assert_eq!(
            redact("redis://me:s3cret@h:6379/0"),
            "redis://me:***@h:6379/0"
        );
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let shown = format!(
            "{:?}",
            RedisTarget::Cluster(vec!["redis://:pw@a:1".into(), "redis://b:2".into()])
        );
        assert!(!shown.contains("pw"), "{shown}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379"),
            Some(Ok(RedisTarget::Single("redis://127.0.0.1:6379".into())))
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://a:1,b:2"),
            Some(Ok(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ])))
        );
        assert!(matches!(
            RedisTarget::parse("redis+cluster://"),
            Some(Err(_))
        ));
        assert_eq!(RedisTarget::parse("sqlite"), None);
    }
}
