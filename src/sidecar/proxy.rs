//! Everything the sidecar does not answer itself (polls, streams, topics, jobs) goes to the
//! hub as it came, as one stream of the upstream HTTP/2 connection, and the hub's status,
//! headers and body come back unchanged, problems included. A hub that cannot be reached
//! within `forward_wait` is a `503` with `Retry-After`, never a hang.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::problem::Problem;

/// Headers of one hop, never forwarded (RFC 9110 §7.6.1), and the ones the sidecar sets itself.
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
    "authorization",
];

/// The longest a long poll or job wait may hold (the hub clamps to its `limits.max_wait`).
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The wait a request asks the hub for: `wait=` in the query, or `Prefer: wait=N`.
fn asked_wait(query: &str, prefer: Option<&str>) -> Duration {
    let from_query = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))
        .and_then(|v| v.parse::<f64>().ok());
    let from_prefer = prefer.and_then(|p| {
        p.split([',', ';'])
            .find_map(|part| part.trim().strip_prefix("wait="))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    from_query
        .or(from_prefer)
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s).min(MAX_WAIT))
        .unwrap_or_default()
}

/// Removes `access_token` (the local credential) from a query string.
fn without_access_token(query: &str) -> String {
    query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("access_token="))
        .collect::<Vec<_>>()
        .join("&")
}

pub async fn forward(State(sc): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if !path.starts_with("/v1/") {
        // Hold mode: everything outside the sidecar's own routes belongs to the app.
        if let Some(app) = &sc.app {
            return super::grip::proxy(sc.clone(), app, parts, body).await;
        }
        return Problem::not_found(format!("no route {path}")).into_response();
    }
    let query = without_access_token(parts.uri.query().unwrap_or_default());
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    let headers: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .filter(|(k, _)| !HOP.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let body = match axum::body::to_bytes(body, super::MAX_BATCH_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return Problem::too_large(format!(
                "a forwarded body is at most {} bytes",
                super::MAX_BATCH_BYTES
            ))
            .into_response();
        }
    };
    let stream = path.ends_with("/sse") || path.ends_with("/stream");
    if stream && parts.method == axum::http::Method::GET {
        let last_event_id = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok());
        if let Some((topic, since, format)) = super::share::shareable(path, &query, last_event_id)
            && let Some(response) = super::share::subscribe(sc.clone(), topic, since, format).await
        {
            return response;
        }
    }
    let prefer = parts.headers.get("prefer").and_then(|v| v.to_str().ok());
    // The head of the answer comes at once, or after the wait the request asked for.
    let head_within = sc.config.forward_wait + asked_wait(&query, prefer);
    // The lease lives as long as the answer's body: a stream holds its place on the connection.
    let lease = sc.upstream.lease();
    let sent = lease.forward(parts.method.as_str(), &target, &headers, body, None);
    let answered = tokio::select! {
        a = tokio::time::timeout(head_within, sent) => a,
        _ = sc.shutdown.cancelled() => {
            return Problem::hub_unavailable("the sidecar is shutting down").into_response();
        }
    };
    let answer = match answered {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            sc.hub_up.store(false, Ordering::Relaxed);
            return Problem::hub_unavailable(format!("the hub cannot be reached: {e}"))
                .into_response();
        }
        Err(_) => {
            return Problem::hub_unavailable(format!(
                "the hub did not answer within {head_within:?}"
            ))
            .into_response();
        }
    };
    sc.hub_up.store(true, Ordering::Relaxed);
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let shutdown = sc.shutdown.clone();
    let open = stream.then(|| StreamGuard::new(sc.clone()));
    let chunks = futures_util::stream::unfold(
        (answer.body, shutdown, open, lease),
        |(mut upstream, shutdown, open, lease)| async move {
            tokio::select! {
                chunk = upstream.next() => chunk.map(|c| (c, (upstream, shutdown, open, lease))),
                // A stream ends at shutdown: its client resumes by its cursor.
                _ = shutdown.cancelled() => None,
            }
        },
    );
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = status;
    for (name, value) in answer.headers {
        if HOP.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

/// Counts an open forwarded stream while it lives.
struct StreamGuard(Arc<Shared>);

impl StreamGuard {
    fn new(sc: Arc<Shared>) -> Self {
        sc.counters.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(sc)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.counters.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_read_from_the_query_or_prefer() {
        assert_eq!(
            asked_wait("since=1&wait=2.5", None),
            Duration::from_millis(2500)
        );
        assert_eq!(
            asked_wait("", Some("respond-async, wait=10")),
            Duration::from_secs(10)
        );
        assert_eq!(
            asked_wait("wait=3", Some("wait=10")),
            Duration::from_secs(3)
        );
        assert_eq!(asked_wait("wait=-1", None), Duration::ZERO);
        assert_eq!(asked_wait("wait=1e9", None), MAX_WAIT);
        assert_eq!(without_access_token("a=1&access_token=s&b=2"), "a=1&b=2");
    }
}
