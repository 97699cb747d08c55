//! One log line per request, with a request id: taken from `X-Request-Id` when the client
//! (or a proxy) sent a sane one, made here otherwise, and echoed in the response. The query
//! string and credentials are never logged (tokens travel there).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

const HEADER: &str = "x-request-id";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The request's id, and whether the client sent it (a sane one) rather than it being made.
fn request_id(req: &Request) -> (String, bool) {
    req.headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(|v| (v.to_owned(), true))
        .unwrap_or_else(|| {
            let id = format!(
                "{:x}-{:x}",
                std::process::id(),
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            );
            (id, false)
        })
}

pub async fn trace(req: Request, next: Next) -> Response {
    let (id, sent) = request_id(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let version = req.version();
    // The client: the peer, or behind a trusted proxy the address it forwarded.
    let client = req
        .extensions()
        .get::<crate::server::ClientAddr>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let started = Instant::now();
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    let protocol = match version {
        axum::http::Version::HTTP_2 => "h2",
        axum::http::Version::HTTP_10 => "http/1.0",
        _ => "http/1.1",
    };
    metrics::counter!("plexus_http_requests_total", "protocol" => protocol).increment(1);
    if status >= 400 {
        metrics::counter!("plexus_http_errors_total", "status" => status.to_string()).increment(1);
    }
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(%client, %method, %path, ?version, status, micros, "request");
        } else {
            tracing::debug!(%client, %method, %path, ?version, status, micros, "request");
        }
    });
    // An event stream echoes only an id its client sent: its connection keeps the response's
    // header map for the stream's life, and a made-up fourth header would double that map
    // (320 -> 640 bytes an idle stream; `streaming::streaming_response`). Its id is in the
    // log line all the same.
    if (sent || !super::streaming::is_stream(&response))
        && let Ok(value) = HeaderValue::from_str(&id)
    {
        response.headers_mut().insert(HEADER, value);
    }
    response
}
