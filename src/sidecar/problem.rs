//! The sidecar's own problem+json answers, written as the hub writes them
//! (`{"type","title","status","detail"}`, docs/API.md §3), with the hub's types where the hub
//! would refuse the same input, so a client sees one contract whichever it talks to.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    retry_after: Option<u32>,
}

impl Problem {
    fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "urn:plexus:problem:bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn bad_topic(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "urn:plexus:problem:bad-topic",
            "Bad topic name",
            detail,
        )
    }

    pub fn bad_since(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "urn:plexus:problem:bad-since",
            "Bad since",
            detail,
        )
    }

    /// The status and detail, for a WebSocket `error` frame.
    pub fn frame_parts(&self) -> (u16, &str) {
        (self.status.as_u16(), &self.detail)
    }

    pub fn bad_event(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "urn:plexus:problem:bad-event",
            "Bad event name",
            detail,
        )
    }

    pub fn reserved_topic(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "urn:plexus:problem:reserved-topic",
            "Reserved topic",
            detail,
        )
    }

    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "urn:plexus:problem:too-large",
            "Payload too large",
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "urn:plexus:problem:unauthorized",
            "Unauthorized",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "urn:plexus:problem:not-found",
            "Not found",
            detail,
        )
    }

    /// The hub cannot be reached (a read, a job, a stream): retry after `Retry-After`.
    pub fn hub_unavailable(detail: impl Into<String>) -> Self {
        Problem {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:plexus:problem:unavailable",
                "Unavailable",
                detail,
            )
        }
    }

    /// The application (hold mode) answered with a malformed GRIP instruction, or could not
    /// be reached.
    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "urn:plexus:problem:bad-gateway",
            "Bad gateway",
            detail,
        )
    }

    /// The spool holds `sidecar.spool_max_bytes` or `spool_max_messages`: nothing was stored.
    pub fn spool_full() -> Self {
        Problem {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "urn:plexus:problem:spool-full",
                "Spool full",
                "the sidecar's spool is full while the hub is away; nothing was stored, retry after Retry-After",
            )
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = json!({
            "type": self.kind,
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
