//! The client address behind a reverse proxy. For a peer in `limits.trusted_proxies`, the
//! client is the rightmost address of `Forwarded` (`for=`), or else of `X-Forwarded-For`, that
//! is not itself a trusted proxy; it replaces the request's [`ClientAddr`], which the rate
//! limit and the logs read. From any other peer those headers are ignored: a client cannot
//! choose its own address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::Request;
use axum::http::HeaderMap;

use crate::model::Cidr;
use crate::server::ClientAddr;

/// Replaces the request's client by the one a trusted proxy forwarded for; a no-op when no
/// proxy is trusted.
pub fn resolve(trusted: &[Cidr], req: &mut Request) {
    if !trusted.is_empty()
        && let Some(ClientAddr(peer)) = req.extensions().get::<ClientAddr>().copied()
        && let Some(client) = forwarded_client(trusted, peer.ip(), req.headers())
    {
        req.extensions_mut()
            .insert(ClientAddr(SocketAddr::new(client, 0)));
    }
}

/// The client a trusted `peer` forwarded for, if `peer` is trusted and named one.
fn forwarded_client(trusted: &[Cidr], peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return None;
    }
    let chain = match forwarded_for(headers) {
        Some(chain) => chain,
        None => x_forwarded_for(headers)?,
    };
    // From the right: each hop was added by the one before it; the first one that is not a
    // trusted proxy is the client. A hop that is no address (`unknown`, an obfuscated name)
    // ends the walk: nothing to its left can be trusted, so the last proxy is the client.
    let mut client = None;
    for hop in chain.iter().rev() {
        let ip = (*hop)?;
        client = Some(ip);
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// The `for=` values of every `Forwarded` header, in order; `None` without one. A value that
/// is no address is a `None` hop.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut values = headers.get_all("forwarded").iter().peekable();
    values.peek()?;
    let mut chain = Vec::new();
    for value in values {
        let Ok(text) = value.to_str() else {
            chain.push(None);
            continue;
        };
        for element in text.split(',') {
            let hop = element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| node_ip(value.trim().trim_matches('"')))
            });
            if let Some(hop) = hop {
                chain.push(hop);
            }
        }
    }
    Some(chain)
}

/// The addresses of every `X-Forwarded-For` header, in order; `None` without one.
fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut values = headers.get_all("x-forwarded-for").iter().peekable();
    values.peek()?;
    let mut chain = Vec::new();
    for value in values {
        match value.to_str() {
            Ok(text) => chain.extend(text.split(',').map(|hop| node_ip(hop.trim()))),
            Err(_) => chain.push(None),
        }
    }
    Some(chain)
}

/// The address of a node (RFC 7239 §6): `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`, or a bare IPv6 address (as `X-Forwarded-For` writes it).
fn node_ip(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = node.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, axum::http::HeaderValue::from_static(v));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted: Vec<Cidr> = ["127.0.0.1", "10.0.0.0/8"]
            .iter()
            .map(|c| c.parse().unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let peer = ip("127.0.0.1");
        let got =
            |h: &[(&'static str, &'static str)]| forwarded_client(&trusted, peer, &headers(h));
        assert_eq!(
            got(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.1.1.1")]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            got(&[(
                "forwarded",
                "for=198.51.100.1, for=\"[2001:db8::7]:4711\";proto=https"
            )]),
            Some(ip("2001:db8::7"))
        );
        assert_eq!(
            got(&[
                ("forwarded", "for=192.0.2.60;by=10.0.0.1"),
                ("x-forwarded-for", "198.51.100.1")
            ]),
            Some(ip("192.0.2.60")),
            "Forwarded wins"
        );
        assert_eq!(
            got(&[("x-forwarded-for", "10.0.0.2")]),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(got(&[("forwarded", "for=unknown")]), None);
        assert_eq!(got(&[]), None);
        assert_eq!(
            forwarded_client(
                &trusted,
                ip("192.0.2.1"),
                &headers(&[("x-forwarded-for", "198.51.100.1")])
            ),
            None,
            "an untrusted peer's header is ignored"
        );
    }
}
