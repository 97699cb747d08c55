//! Credentials are checked before routing: every path but `/healthz`, `/readyz`, `/metrics`
//! and `/openapi.json` needs one when `auth.mode = required` (401 otherwise); each handler
//! then asks the [`Caller`] for the right it needs (403 otherwise).

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri, header};

use super::error::ApiError;
use crate::auth::{Authenticator, Principal, ReadAccess};
use crate::jobs::{JobError, Jobs};
use crate::model::Topic;

/// The paths anyone may call.
pub(super) const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `access_token` from the query: browsers' EventSource and WebSocket cannot send headers.
fn query_token(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .and_then(percent_decode)
}

/// Authenticates the request: its [`Principal`] goes into its extensions, or `401`. The open
/// paths and the dashboard's files need no credential.
pub fn authenticate(auth: &Authenticator, req: &mut Request) -> Result<(), ApiError> {
    if OPEN_PATHS.contains(&req.uri().path()) {
        return Ok(());
    }
    // The dashboard's files hold no data; the page must load to ask for a token.
    if matches!(*req.method(), Method::GET | Method::HEAD)
        && super::dashboard::is_page(req.uri().path())
    {
        return Ok(());
    }
    let credential = bearer(req.headers()).or_else(|| query_token(req.uri()));
    match auth.authenticate(credential.as_deref()) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            Ok(())
        }
        // A browser WebSocket cannot send headers: with no credential at all, the socket
        // opens and its first frame must be `{"op":"auth"}` (docs/API.md §13), so no token
        // travels in a URL. The handler refuses subscriptions at connect without one.
        Err(crate::auth::AuthError::Missing) if req.uri().path() == WS_PATH => {
            req.extensions_mut().insert(AuthPending);
            Ok(())
        }
        Err(e) => Err(ApiError::unauthorized(e.to_string())),
    }
}

/// The WebSocket's path, which may open without a credential and authenticate by its first
/// frame.
pub(super) const WS_PATH: &str = "/v1/ws";

/// Marks a WebSocket upgrade that came without a credential: its first frame must carry one.
#[derive(Clone, Copy, Debug)]
pub struct AuthPending;

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::unauthorized("no credentials were checked"))
    }
}

impl Caller {
    pub fn publish(&self, topic: &Topic) -> Result<(), ApiError> {
        if self.0.can_publish(topic) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this credential may not publish to {topic}"
            )))
        }
    }

    /// Whether this caller may read `topic`: its `subscribe` rule and, for a job's events
    /// (`_jobs.{id}`), `jobs` on the job's queue, looked up in `jobs`. An unknown job counts
    /// as a foreign one, so the answer tells nothing of which jobs exist.
    pub async fn may_read(&self, jobs: &Jobs, topic: &Topic) -> Result<bool, ApiError> {
        Ok(match self.0.read_access(topic) {
            ReadAccess::Allowed => true,
            ReadAccess::Denied => false,
            ReadAccess::IfJobsOnQueueOf(id) => match jobs.get(&id).await {
                Ok(job) => self.0.can_use_queue(&job.queue),
                Err(JobError::UnknownJob(_)) => false,
                Err(e) => return Err(e.into()),
            },
        })
    }

    /// Reading `topic` (see [`Caller::may_read`]): `403` when not allowed.
    pub async fn subscribe(&self, jobs: &Jobs, topic: &Topic) -> Result<(), ApiError> {
        if self.may_read(jobs, topic).await? {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this credential may not read {topic}"
            )))
        }
    }

    pub fn queue(&self, queue: &Topic) -> Result<(), ApiError> {
        if self.0.can_use_queue(queue) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this credential may not use job queue {queue}"
            )))
        }
    }

    pub fn admin(&self) -> Result<(), ApiError> {
        if self.0.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs an admin credential"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens() {
        let uri: Uri = "/v1/topics/a/sse?since=all&access_token=abc.def%2Bg"
            .parse()
            .unwrap();
        assert_eq!(query_token(&uri).as_deref(), Some("abc.def+g"));
        let uri: Uri = "/v1/ws".parse().unwrap();
        assert_eq!(query_token(&uri), None);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
