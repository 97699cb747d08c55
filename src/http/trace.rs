//! One log line per request, with a request id: taken from `X-Request-Id` when the client
//! (or a proxy) sent a sane one, made here otherwise, and echoed in the response. The query
//! string and credentials are never logged (tokens travel there).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, Method, Uri, Version};
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
        .unwrap_or_else(|| (made_id(NEXT_ID.fetch_add(1, Ordering::Relaxed)), false))
}

/// `{pid:x}-{n:x}`: the process's part is formatted once, only the counter per request.
fn made_id(n: u64) -> String {
    use std::fmt::Write;
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| format!("{:x}-", std::process::id()));
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    // Writing to a String cannot fail.
    let _ = write!(id, "{n:x}");
    id
}

/// The metrics every request counts in, looked up once (a `counter!` with labels costs a
/// registry lookup each time).
struct Counters {
    h1: metrics::Counter,
    h10: metrics::Counter,
    h2: metrics::Counter,
}

fn counters() -> &'static Counters {
    static COUNTERS: std::sync::OnceLock<Counters> = std::sync::OnceLock::new();
    COUNTERS.get_or_init(|| {
        // Handles taken before the recorder is installed would count nowhere, for good.
        crate::observe::prometheus();
        let of = |protocol: &'static str| {
            metrics::counter!("plexus_http_requests_total", "protocol" => protocol)
        };
        Counters {
            h1: of("http/1.1"),
            h10: of("http/1.0"),
            h2: of("h2"),
        }
    })
}

/// One request as it came in, until its answer is logged with [`Record::finish`].
pub struct Record {
    id: String,
    sent: bool,
    method: Method,
    uri: Uri,
    version: Version,
    client: Option<IpAddr>,
    started: Instant,
    span: tracing::Span,
}

impl Record {
    /// Notes `req`'s id, client, method and path; the span is the one its handling runs in.
    pub fn start(req: &Request) -> Record {
        let (id, sent) = request_id(req);
        let span = tracing::info_span!("request", request_id = %id);
        Record {
            id,
            sent,
            method: req.method().clone(),
            // A clone shares the request's bytes; the path is copied only if it is logged.
            uri: req.uri().clone(),
            version: req.version(),
            // The client: the peer, or behind a trusted proxy the address it forwarded.
            client: req
                .extensions()
                .get::<crate::server::ClientAddr>()
                .map(|c| c.0.ip()),
            started: Instant::now(),
            span,
        }
    }

    /// The span to run the request's handling in.
    pub fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// Counts and logs the answer, and echoes the request id in it.
    pub fn finish(self, mut response: Response) -> Response {
        let status = response.status().as_u16();
        let micros = self.started.elapsed().as_micros() as u64;
        let counters = counters();
        match self.version {
            Version::HTTP_2 => &counters.h2,
            Version::HTTP_10 => &counters.h10,
            _ => &counters.h1,
        }
        .increment(1);
        if status >= 400 {
            metrics::counter!("plexus_http_errors_total", "status" => status.to_string())
                .increment(1);
        }
        let Record {
            id,
            sent,
            method,
            uri,
            version,
            client,
            span,
            ..
        } = self;
        let client = Client(client);
        let path = uri.path();
        span.in_scope(|| {
            if status >= 500 {
                tracing::warn!(%client, %method, %path, ?version, status, micros, "request");
            } else {
                tracing::debug!(%client, %method, %path, ?version, status, micros, "request");
            }
        });
        // An event stream echoes only an id its client sent: its connection keeps the
        // response's header map for the stream's life, and a made-up fourth header would
        // double that map (320 -> 640 bytes an idle stream; `streaming::streaming_response`).
        // Its id is in the log line all the same.
        if (sent || !super::streaming::is_stream(&response))
            && let Ok(value) = HeaderValue::from_str(&id)
        {
            response.headers_mut().insert(HEADER, value);
        }
        response
    }
}

/// The client's address as logged (empty when unknown), formatted only when a line is written.
struct Client(Option<IpAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn made_ids_are_the_pid_and_a_counter_in_hex() {
        let pid = format!("{:x}", std::process::id());
        for n in [0u64, 1, 9, 10, 15, 16, 255, 4096, 0xdead_beef, u64::MAX] {
            assert_eq!(super::made_id(n), format!("{pid}-{n:x}"));
        }
    }
}
