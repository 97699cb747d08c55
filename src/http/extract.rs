//! Our own parsing of paths, query strings, headers and bodies, so bad input is reported in
//! our format (a problem), not in axum's text.

use std::time::Duration;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

use super::error::ApiError;
use crate::model::valid_idempotency_key;

/// The one path parameter of a route (a topic, topic list, queue or job id).
pub fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|p| p.0)
        .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
}

/// A header as text; absent is `None`, not visible ASCII is a 400.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII")))
        })
        .transpose()
}

/// A header copied out as text, for a handler that drops the request's headers before it
/// waits (see `streaming::stream_request`): the result owns nothing of the request.
pub fn header_owned(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    header_str(headers, name).map(|v| v.map(str::to_owned))
}

/// The `Idempotency-Key` header, validated (publish and job submit share it).
pub fn idempotency_key_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    idempotency_key(header_str(headers, "idempotency-key")?)
}

/// An idempotency key, from the header or a batch item.
pub fn idempotency_key(key: Option<&str>) -> Result<Option<String>, ApiError> {
    match key {
        None => Ok(None),
        Some(k) if valid_idempotency_key(k) => Ok(Some(k.to_owned())),
        Some(_) => Err(ApiError::bad_request(
            "an idempotency key is 1-200 visible ASCII characters",
        )),
    }
}

/// Query parameters as pairs; a malformed query string is a 400 problem.
pub type QueryPairs = Result<axum::extract::Query<Vec<(String, String)>>, QueryRejection>;

pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn from(query: QueryPairs) -> Result<Self, ApiError> {
        query.map(|q| Params(q.0)).map_err(|e| {
            ApiError::bad_request(format!("malformed query string: {}", e.body_text()))
        })
    }

    /// The value of a parameter; given twice is a 400 (which one would win is unclear).
    pub fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(ApiError::bad_request(format!(
                "parameter {name} given more than once"
            )));
        }
        Ok(first)
    }
}

/// Seconds as a whole or decimal number (`30`, `0.5`).
pub fn parse_seconds(name: &str, value: &str) -> Result<Duration, ApiError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9 && !value.starts_with('+'))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            ApiError::bad_request(format!("{name}={value:?} is not a number of seconds"))
        })
}

/// `Prefer: wait=N` (RFC 7240); other preferences are ignored.
pub fn prefer_wait(headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    for value in headers.get_all("prefer") {
        let Ok(text) = value.to_str() else {
            return Err(ApiError::bad_request("Prefer header is not ASCII"));
        };
        for pref in text.split([',', ';']) {
            if let Some((k, v)) = pref.split_once('=')
                && k.trim().eq_ignore_ascii_case("wait")
            {
                return parse_seconds("Prefer: wait", v.trim().trim_matches('"')).map(Some);
            }
        }
    }
    Ok(None)
}

/// `route` with a body limit of `limit` bytes: a body that grows past it is a `413` as it is
/// read (axum's `DefaultBodyLimit`), and a request whose `Content-Length` already says so is
/// a `413` before its body is touched. hyper sends `100 Continue` only when a handler starts
/// reading the body, so a client that sent `Expect: 100-continue` gets the `413` at once and
/// never uploads the body it announced.
pub fn body_limit<S>(route: MethodRouter<S>, limit: usize) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    route.layer(BodyLimit(limit))
}

/// [`body_limit`]'s layer: axum's `DefaultBodyLimit` behind the `Content-Length` check, as
/// one service with no boxed future of its own (it runs on every publish).
#[derive(Clone, Copy)]
struct BodyLimit(usize);

impl<S> tower::Layer<S> for BodyLimit {
    type Service = BodyLimited<<DefaultBodyLimit as tower::Layer<S>>::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimited {
            inner: tower::Layer::layer(&DefaultBodyLimit::max(self.0), inner),
            limit: self.0,
        }
    }
}

#[derive(Clone)]
struct BodyLimited<S> {
    inner: S,
    limit: usize,
}

impl<S> tower::Service<Request> for BodyLimited<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        futures_util::future::Either<std::future::Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        use futures_util::future::Either;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(length) if length > self.limit as u64 => {
                let detail = format!(
                    "the body is larger than {} bytes (Content-Length: {length})",
                    self.limit
                );
                Either::Left(std::future::ready(Ok(
                    ApiError::too_large(detail).into_response()
                )))
            }
            _ => Either::Right(self.inner.call(request)),
        }
    }
}

/// A request body, or the problem for one that is too large or broken.
pub fn body(
    body: Result<bytes::Bytes, BytesRejection>,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("the body is larger than {limit} bytes"))
        } else {
            ApiError::bad_request(format!("cannot read the body: {}", e.body_text()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds() {
        assert_eq!(
            parse_seconds("wait", "30").unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            parse_seconds("wait", "0.5").unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["", "-1", "x", "NaN", "inf", "1e99", "+3"] {
            assert!(parse_seconds("wait", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefer() {
        let mut h = HeaderMap::new();
        assert_eq!(prefer_wait(&h).unwrap(), None);
        h.insert("prefer", "respond-async, wait=5".parse().unwrap());
        assert_eq!(prefer_wait(&h).unwrap(), Some(Duration::from_secs(5)));
        h.insert("prefer", "wait=abc".parse().unwrap());
        assert!(prefer_wait(&h).is_err());
    }
}
