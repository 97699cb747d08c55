//! Web pages against an open hub (review finding 12). A page in a browser can reach a hub on
//! loopback: by DNS rebinding (its own name resolving to 127.0.0.1, so the browser sends that
//! name as `Host`), or by a cross-site "simple" request or WebSocket, which browsers send
//! without a preflight. In open mode, or whenever CORS is not configured, this refuses with
//! `403`: a `Host` that is no loopback name or address when the hub listens on loopback (a
//! single-label name passes: no page can rebind one), and
//! an `Origin` that is neither listed in `cors.allowed_origins` nor the hub's own, on a
//! state-changing request or a WebSocket upgrade. A request without `Origin` (curl, servers)
//! is not a browser's cross-site request and passes.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, header};

use super::error::ApiError;
use crate::server::Listening;

/// Who may call from a browser.
pub struct OriginPolicy {
    /// Whether the checks run: open mode, or no CORS configured.
    pub active: bool,
    /// `cors.allowed_origins` (`*`: any).
    pub allowed: Vec<String>,
}

/// The check: `403` for a foreign `Host` or `Origin`.
pub fn check(policy: &OriginPolicy, req: &Request) -> Result<(), ApiError> {
    if !policy.active {
        return Ok(());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let loopback = req
        .extensions()
        .get::<Listening>()
        .is_some_and(|l| l.loopback);
    if loopback
        && let Some(host) = host
        && !is_loopback_host(host)
    {
        return Err(ApiError::forbidden(format!(
            "this hub listens on loopback and answers only loopback names; Host {host:?} is not one"
        )));
    }
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || is_websocket_upgrade(req.headers());
    if changes_state && let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        if !policy.allows(origin) && !same_origin(origin, host) {
            return Err(ApiError::forbidden(format!(
                "origin {origin:?} is not in cors.allowed_origins"
            )));
        }
    }
    Ok(())
}

impl OriginPolicy {
    fn allows(&self, origin: &str) -> bool {
        self.allowed
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `http(s)://HOST` naming the host the request was sent to: the hub's own pages.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// Whether a `Host` may reach a hub on loopback: `localhost`, `*.localhost`, a loopback
/// address (`127.x.x.x`, `[::1]`), or a single-label name (`plexus`, the machine's name),
/// with or without a port. A page can rebind only a name it controls in DNS, which has a dot;
/// a single-label name resolves only locally (hosts file, search domains).
fn is_loopback_host(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').is_some_and(|(inner, _)| {
            inner
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
        });
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return ip.to_canonical().is_loopback();
    }
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || (!name.is_empty() && !name.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:7539",
            "LOCALHOST.",
            "a.localhost:1",
            "127.0.0.1:80",
            "127.1.2.3",
            "[::1]:7539",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7539",
            "10.0.0.1:7539",
            "[2001:db8::1]:80",
            "localhost.evil.example",
            "[::1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn the_hubs_own_origin() {
        assert!(same_origin("http://127.0.0.1:7539", Some("127.0.0.1:7539")));
        assert!(same_origin(
            "https://LOCALHOST:7539",
            Some("localhost:7539")
        ));
        assert!(!same_origin("http://evil.example", Some("127.0.0.1:7539")));
        assert!(!same_origin("null", Some("127.0.0.1:7539")));
        assert!(!same_origin("http://127.0.0.1:7539", None));
    }
}
