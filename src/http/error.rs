//! The one place where errors become HTTP: `application/problem+json` (RFC 9457).
//! A problem `type` URI, once published, keeps its meaning forever.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::hub::HubError;
use crate::model::{CursorError, EventNameError, SinceError, TopicError};
use crate::store::StoreError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    retry_after: Option<u32>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl ApiError {
    fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            slug,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn bad_topic(e: TopicError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-topic",
            "Bad topic name",
            e.to_string(),
        )
    }

    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Payload too large",
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    pub fn too_many_requests(retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after.min(u32::MAX as u64) as u32),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!("this client is over its request rate; retry in {retry_after} s"),
            )
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this path does not accept that method",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<TopicError> for ApiError {
    fn from(e: TopicError) -> Self {
        ApiError::bad_topic(e)
    }
}

impl From<SinceError> for ApiError {
    fn from(e: SinceError) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-since",
            "Bad since",
            e.to_string(),
        )
    }
}

impl From<CursorError> for ApiError {
    fn from(e: CursorError) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-cursor",
            "Bad cursor",
            e.to_string(),
        )
    }
}

impl From<EventNameError> for ApiError {
    fn from(e: EventNameError) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-event",
            "Bad event name",
            e.to_string(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                // The cause goes to the log, not to the client.
                tracing::error!(error = %e, "store unavailable");
                ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "Service unavailable",
                        "the store cannot serve this request now; retry shortly",
                    )
                }
            }
            StoreError::IdempotencyConflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency-conflict",
                "Idempotency key reused",
                e.to_string(),
            ),
            StoreError::JobChanged(_) => ApiError::new(
                StatusCode::CONFLICT,
                "stale-lease",
                "Stale lease",
                e.to_string(),
            ),
            StoreError::UnknownJob(_) => ApiError::not_found(e.to_string()),
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Store(e) => e.into(),
            HubError::ReservedTopic(_) => ApiError::new(
                StatusCode::FORBIDDEN,
                "reserved-topic",
                "Reserved topic",
                e.to_string(),
            ),
            HubError::BareCursorForTopics(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-cursor",
                "Bad cursor",
                e.to_string(),
            ),
            HubError::Draining => ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "draining",
                    "Draining",
                    e.to_string(),
                )
            },
        }
    }
}

impl From<crate::jobs::JobError> for ApiError {
    fn from(e: crate::jobs::JobError) -> Self {
        use crate::jobs::JobError;
        match e {
            JobError::Hub(e) => e.into(),
            JobError::UnknownJob(_) => ApiError::not_found(e.to_string()),
            JobError::StaleLease(_) => ApiError::new(
                StatusCode::CONFLICT,
                "stale-lease",
                "Stale lease",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("urn:plexus:problem:{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
