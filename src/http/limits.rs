//! Request rate per client address: a token bucket each (`limits.rate` per second, bursts of
//! `limits.burst`); over it, `429` with `Retry-After`. And the body timeout: a request body
//! that makes no progress for `limits.body_timeout` fails with `408`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use super::auth::OPEN_PATHS;
use super::error::ApiError;
use crate::server::ClientAddr;

/// Buckets idle this long are forgotten (a full bucket and a missing one are the same): the
/// map is kept in two generations, each at most this old.
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// Most buckets in one generation; a full one starts the next generation early, so the map
/// stays bounded whatever number of addresses a client rotates through.
const MAX_BUCKETS: usize = 65_536;

/// Two generations of buckets: a lookup finds its bucket in the current one or moves it there
/// from the previous one; a new generation drops the previous one whole. Every request costs
/// two hash lookups at most, never a scan (one over 10,000 buckets cost 375 µs a request).
struct Buckets {
    current: HashMap<IpAddr, (f64, Instant)>,
    previous: HashMap<IpAddr, (f64, Instant)>,
    started: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    // A std mutex: held for two map lookups and a little arithmetic, never across an await.
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    /// `rate` requests per second, at most `burst` at once; a rate of 0 disables the limit.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(Buckets {
                current: HashMap::new(),
                previous: HashMap::new(),
                started: Instant::now(),
            }),
        }
    }

    /// Takes a token for `client` (an IPv6 client counts by its /64); `Err(seconds)` until
    /// the next one when there is none.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let key = crate::model::client_key(client);
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let buckets = &mut *guard;
        if now.saturating_duration_since(buckets.started) >= FORGET_AFTER
            || (buckets.current.len() >= MAX_BUCKETS && !buckets.current.contains_key(&key))
        {
            // Entries are plain values: dropping the old generation frees one allocation.
            buckets.previous = std::mem::take(&mut buckets.current);
            buckets.started = now;
        }
        let kept = buckets.previous.remove(&key);
        let (tokens, last) = buckets
            .current
            .entry(key)
            .or_insert_with(|| kept.unwrap_or((self.burst, now)));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate)
            .min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// The request's client takes a token: `429` when it has none. The open paths are never
/// limited.
pub fn admit(limiter: &RateLimiter, req: &Request) -> Result<(), ApiError> {
    if OPEN_PATHS.contains(&req.uri().path()) {
        return Ok(());
    }
    if let Some(ClientAddr(addr)) = req.extensions().get::<ClientAddr>()
        && let Err(retry_after) = limiter.check(addr.ip(), Instant::now())
    {
        return Err(ApiError::too_many_requests(retry_after));
    }
    Ok(())
}

/// The body timeout (`limits.body_timeout`): a request body from which nothing arrives for
/// that long fails the request with `408`, and the connection is closed (a stalled client
/// would otherwise hold its connection and the handler's task forever). `watch` puts the
/// request's body under the deadline; `verdict` replaces the answer of a request whose body
/// expired.
pub struct BodyDeadline {
    /// Set by the body when it expires; `None` for a request without a body.
    expired: Option<Arc<std::sync::atomic::AtomicBool>>,
    timeout: std::time::Duration,
}

impl BodyDeadline {
    /// `req` with its body under the deadline (a request without a body is left as it is).
    pub fn watch(timeout: std::time::Duration, req: Request) -> (Request, BodyDeadline) {
        use axum::body::HttpBody;
        if req.body().is_end_stream() {
            return (
                req,
                BodyDeadline {
                    expired: None,
                    timeout,
                },
            );
        }
        let expired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = expired.clone();
        let req = req.map(|inner| {
            axum::body::Body::new(Deadline {
                inner,
                timeout,
                timer: None,
                expired: seen,
                started: tokio::time::Instant::now(),
                received: 0,
            })
        });
        (
            req,
            BodyDeadline {
                expired: Some(expired),
                timeout,
            },
        )
    }

    /// The handler's `response`, or a `408` when the body expired.
    pub fn verdict(self, response: Response) -> Response {
        match self.expired {
            Some(expired) if expired.load(std::sync::atomic::Ordering::Relaxed) => {
                request_timeout(self.timeout)
            }
            _ => response,
        }
    }
}

fn request_timeout(timeout: std::time::Duration) -> Response {
    let mut response = ApiError::request_timeout(format!(
        "the request body made no progress for {} s, or arrived slower than {} bytes/s after \
         its first {} s",
        timeout.as_secs_f64(),
        MIN_BODY_RATE,
        timeout.as_secs_f64()
    ))
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// The slowest a request body may arrive on average once its first `limits.body_timeout` is
/// over, in bytes per second: a body trickling a byte at a time makes progress and would
/// never trip the idle timer, on HTTP/1.1 or on an HTTP/2 stream (docs/API.md, limits).
pub const MIN_BODY_RATE: u64 = 1024;

/// A request body that fails once nothing has arrived for `timeout` (any frame restarts
/// that), or once it is slower than [`MIN_BODY_RATE`]: at any moment it may have taken
/// `timeout` plus one second per `MIN_BODY_RATE` bytes received. The timer exists only while
/// the body waits.
struct Deadline {
    inner: axum::body::Body,
    timeout: std::time::Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    expired: Arc<std::sync::atomic::AtomicBool>,
    started: tokio::time::Instant,
    received: u64,
}

impl Deadline {
    fn fail(&self, why: &'static str) -> Result<http_body::Frame<bytes::Bytes>, axum::Error> {
        self.expired
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Err(axum::Error::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            why,
        )))
    }
}

impl http_body::Body for Deadline {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Poll::Ready(Some(
                    this.fail("the request body made no progress within the body timeout"),
                ))
            }
            ready => {
                this.timer = None;
                if let Poll::Ready(Some(Ok(frame))) = &ready
                    && let Some(data) = frame.data_ref()
                {
                    this.received = this.received.saturating_add(data.len() as u64);
                    let allowed = this.timeout
                        + std::time::Duration::from_secs_f64(
                            this.received as f64 / MIN_BODY_RATE as f64,
                        );
                    if this.started.elapsed() > allowed {
                        return Poll::Ready(Some(
                            this.fail("the request body arrived slower than the minimum rate"),
                        ));
                    }
                }
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_the_rate() {
        let limiter = RateLimiter::new(10.0, 2.0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(limiter.check(ip, t0).is_ok());
        assert!(limiter.check(ip, t0).is_ok());
        assert_eq!(limiter.check(ip, t0), Err(1));
        assert!(
            limiter.check(other, t0).is_ok(),
            "each client has its own bucket"
        );
        assert!(
            limiter.check(ip, t0 + Duration::from_millis(100)).is_ok(),
            "refilled 1 token"
        );
        assert!(RateLimiter::new(0.0, 1.0).check(ip, t0).is_ok());
    }

    #[test]
    fn an_ipv6_client_shares_one_bucket_per_64() {
        let limiter = RateLimiter::new(1.0, 1.0);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(limiter.check(a, t0).is_ok());
        assert!(limiter.check(b, t0).is_err(), "the same /64");
        assert!(limiter.check(other, t0).is_ok(), "another /64");
    }

    /// The map never grows past two generations, and a bucket survives a new generation.
    #[test]
    fn the_map_stays_bounded_and_keeps_busy_buckets() {
        let limiter = RateLimiter::new(1.0, 1.0);
        let t0 = Instant::now();
        let busy: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.check(busy, t0).is_ok());
        for i in 0..(3 * MAX_BUCKETS as u32) {
            let _ = limiter.check(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0);
            if i == MAX_BUCKETS as u32 {
                assert!(limiter.check(busy, t0).is_err(), "its bucket moved over");
            }
        }
        let buckets = limiter.buckets.lock().unwrap();
        assert!(buckets.current.len() + buckets.previous.len() <= 2 * MAX_BUCKETS);
    }
}
