//! Request rate per client address: a token bucket each (`limits.rate` per second, bursts of
//! `limits.burst`); over it, `429` with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::OPEN_PATHS;
use super::error::ApiError;
use crate::server::ClientAddr;

/// Buckets idle this long are forgotten (a full bucket and a missing one are the same).
const FORGET_AFTER_SECS: f64 = 60.0;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    // A std mutex: held for a map lookup and a little arithmetic, never across an await.
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` requests per second, at most `burst` at once; a rate of 0 disables the limit.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`; `Err(seconds)` until the next one when there is none.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 10_000 {
            buckets
                .retain(|_, (_, last)| now.duration_since(*last).as_secs_f64() < FORGET_AFTER_SECS);
        }
        let (tokens, last) = buckets.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// The middleware.
pub async fn limit(State(limiter): State<Arc<RateLimiter>>, req: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    if let Some(ClientAddr(addr)) = req.extensions().get::<ClientAddr>()
        && let Err(retry_after) = limiter.check(addr.ip(), Instant::now())
    {
        return ApiError::too_many_requests(retry_after).into_response();
    }
    next.run(req).await
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
}
