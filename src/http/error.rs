//! The one place where errors become HTTP: `application/problem+json` (RFC 9457), and the
//! status of a WebSocket error frame, which is the status the same error has over HTTP.
//! A problem `type` URI, once published, keeps its meaning forever.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::consumers::ConsumerError;
use crate::hub::HubError;
use crate::jobs::JobError;
use crate::model::StoreError;
use crate::model::{CursorError, EventNameError, SinceError, TopicError};
use crate::wire::ws::FrameError;

/// One kind of problem: its status, its `type` (`urn:plexus:problem:{slug}`) and title.
#[derive(Debug)]
pub struct ProblemType {
    pub status: StatusCode,
    pub slug: &'static str,
    pub title: &'static str,
    /// `Retry-After` seconds a client is told, when the kind always carries one.
    retry_after: Option<u32>,
}

impl ProblemType {
    const fn new(status: StatusCode, slug: &'static str, title: &'static str) -> Self {
        ProblemType {
            status,
            slug,
            title,
            retry_after: None,
        }
    }

    /// The problem's `type` URI.
    pub fn uri(&self) -> String {
        format!("urn:plexus:problem:{}", self.slug)
    }
}

const BAD_REQUEST: ProblemType =
    ProblemType::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request");
const BAD_TOPIC: ProblemType =
    ProblemType::new(StatusCode::BAD_REQUEST, "bad-topic", "Bad topic name");
const BAD_SINCE: ProblemType = ProblemType::new(StatusCode::BAD_REQUEST, "bad-since", "Bad since");
const BAD_CURSOR: ProblemType =
    ProblemType::new(StatusCode::BAD_REQUEST, "bad-cursor", "Bad cursor");
const BAD_EVENT: ProblemType =
    ProblemType::new(StatusCode::BAD_REQUEST, "bad-event", "Bad event name");
const UNAUTHORIZED: ProblemType =
    ProblemType::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized");
const FORBIDDEN: ProblemType = ProblemType::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden");
const RESERVED_TOPIC: ProblemType =
    ProblemType::new(StatusCode::FORBIDDEN, "reserved-topic", "Reserved topic");
const NOT_FOUND: ProblemType = ProblemType::new(StatusCode::NOT_FOUND, "not-found", "Not found");
const METHOD_NOT_ALLOWED: ProblemType = ProblemType::new(
    StatusCode::METHOD_NOT_ALLOWED,
    "method-not-allowed",
    "Method not allowed",
);
const IDEMPOTENCY_CONFLICT: ProblemType = ProblemType::new(
    StatusCode::CONFLICT,
    "idempotency-conflict",
    "Idempotency key reused",
);
const STALE_LEASE: ProblemType =
    ProblemType::new(StatusCode::CONFLICT, "stale-lease", "Stale lease");
const JOB_NOT_DEAD: ProblemType =
    ProblemType::new(StatusCode::CONFLICT, "job-not-dead", "Job not dead");
const TOO_LARGE: ProblemType = ProblemType::new(
    StatusCode::PAYLOAD_TOO_LARGE,
    "too-large",
    "Payload too large",
);
const REQUEST_TIMEOUT: ProblemType = ProblemType::new(
    StatusCode::REQUEST_TIMEOUT,
    "request-timeout",
    "Request timeout",
);
/// Its `Retry-After` is how long the client's bucket needs, so it is set per answer.
const RATE_LIMITED: ProblemType = ProblemType::new(
    StatusCode::TOO_MANY_REQUESTS,
    "rate-limited",
    "Too many requests",
);
const UNAVAILABLE: ProblemType = ProblemType {
    retry_after: Some(1),
    ..ProblemType::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Service unavailable",
    )
};
const DRAINING: ProblemType = ProblemType {
    retry_after: Some(1),
    ..ProblemType::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "Draining")
};
/// The hub's memory budget for reads is spent (`limits.read_budget_bytes`).
const BUSY: ProblemType = ProblemType {
    retry_after: Some(1),
    ..ProblemType::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "Busy")
};

/// `durability = "replicated"`: too few replicas confirmed the write in time.
const NOT_REPLICATED: ProblemType = ProblemType {
    retry_after: Some(1),
    ..ProblemType::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-replicated",
        "Not replicated",
    )
};
/// A write would create a topic beyond `limits.max_topics_total`.
const TOO_MANY_TOPICS: ProblemType = ProblemType::new(
    StatusCode::INSUFFICIENT_STORAGE,
    "too-many-topics",
    "Too many topics",
);

/// A bad consumer name, setting or ack body (docs/API.md, "Durable consumers").
const BAD_CONSUMER: ProblemType = ProblemType::new(
    StatusCode::BAD_REQUEST,
    "bad-consumer",
    "Bad consumer request",
);
/// A consumer exists with other settings, or is read with other topics.
const CONSUMER_CONFLICT: ProblemType = ProblemType::new(
    StatusCode::CONFLICT,
    "consumer-conflict",
    "Consumer conflict",
);
/// An ack, nak or term naming a delivery that is not the current lease.
const STALE_DELIVERY: ProblemType =
    ProblemType::new(StatusCode::CONFLICT, "stale-delivery", "Stale delivery");

/// A bad webhook URL, scheme, secret, since or rate (docs/API.md, "Webhooks").
const BAD_WEBHOOK: ProblemType = ProblemType::new(
    StatusCode::BAD_REQUEST,
    "bad-webhook",
    "Bad webhook request",
);
/// A webhook URL whose host is an address webhooks may not reach.
const ADDRESS_NOT_ALLOWED: ProblemType = ProblemType::new(
    StatusCode::BAD_REQUEST,
    "address-not-allowed",
    "Address not allowed",
);
/// A pattern-lab run is already going on (docs/API.md, "The pattern lab").
const LAB_BUSY: ProblemType = ProblemType::new(StatusCode::CONFLICT, "lab-busy", "Lab busy");
/// The pattern lab cannot measure this hub now (no runner installed, a TLS-only listener).
const LAB_UNAVAILABLE: ProblemType = ProblemType::new(
    StatusCode::SERVICE_UNAVAILABLE,
    "lab-unavailable",
    "Lab unavailable",
);

/// Every problem type the API answers with, each once.
pub const PROBLEM_TYPES: [&ProblemType; 28] = [
    &BAD_REQUEST,
    &BAD_TOPIC,
    &BAD_SINCE,
    &BAD_CURSOR,
    &BAD_EVENT,
    &UNAUTHORIZED,
    &FORBIDDEN,
    &RESERVED_TOPIC,
    &NOT_FOUND,
    &METHOD_NOT_ALLOWED,
    &IDEMPOTENCY_CONFLICT,
    &STALE_LEASE,
    &JOB_NOT_DEAD,
    &TOO_LARGE,
    &RATE_LIMITED,
    &UNAVAILABLE,
    &DRAINING,
    &REQUEST_TIMEOUT,
    &BUSY,
    &NOT_REPLICATED,
    &TOO_MANY_TOPICS,
    &BAD_CONSUMER,
    &CONSUMER_CONFLICT,
    &STALE_DELIVERY,
    &BAD_WEBHOOK,
    &ADDRESS_NOT_ALLOWED,
    &LAB_BUSY,
    &LAB_UNAVAILABLE,
];

/// The kind of problem a store error is.
fn store_problem(e: &StoreError) -> &'static ProblemType {
    match e {
        StoreError::Unavailable(_) => &UNAVAILABLE,
        StoreError::IdempotencyConflict { .. } => &IDEMPOTENCY_CONFLICT,
        StoreError::JobChanged(_) => &STALE_LEASE,
        StoreError::UnknownJob(_) => &NOT_FOUND,
        StoreError::NotReplicated(_) => &NOT_REPLICATED,
        StoreError::TooManyTopics { .. } => &TOO_MANY_TOPICS,
    }
}

/// The kind of problem a refused WebSocket frame is.
fn frame_problem(e: &FrameError) -> &'static ProblemType {
    match e {
        FrameError::BadFrame(_) => &BAD_REQUEST,
        FrameError::TooLarge(_) => &TOO_LARGE,
    }
}

/// The kind of problem a hub error is.
fn hub_problem(e: &HubError) -> &'static ProblemType {
    match e {
        HubError::Store(e) => store_problem(e),
        HubError::ReservedTopic(_) => &RESERVED_TOPIC,
        HubError::BareCursorForTopics(_) => &BAD_CURSOR,
        HubError::Draining => &DRAINING,
        HubError::Busy => &BUSY,
    }
}

/// What a publisher is told of a write its replicas did not confirm in time.
const NOT_REPLICATED_DETAIL: &str = "the write was not confirmed by enough replicas in time and \
     is not acknowledged; retry with the same Idempotency-Key to get its first result once \
     replicated (without a key a retry may store it twice)";

/// What a client is told of a store that cannot serve it; the cause goes to the log.
const STORE_UNAVAILABLE: &str = "the store cannot serve this request now; retry shortly";

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    kind: &'static ProblemType,
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
    fn new(kind: &'static ProblemType, detail: impl Into<String>) -> Self {
        ApiError {
            kind,
            detail: detail.into(),
            retry_after: kind.retry_after,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(&BAD_REQUEST, detail)
    }

    pub fn bad_topic(e: TopicError) -> Self {
        Self::new(&BAD_TOPIC, e.to_string())
    }

    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(&TOO_LARGE, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(&UNAUTHORIZED, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(&FORBIDDEN, detail)
    }

    /// A client may not change a topic the hub keeps (`_…`), whatever its rights.
    pub fn reserved_topic(detail: impl Into<String>) -> Self {
        Self::new(&RESERVED_TOPIC, detail)
    }

    pub fn too_many_requests(retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after.min(u32::MAX as u64) as u32),
            ..Self::new(
                &RATE_LIMITED,
                format!("this client is over its request rate; retry in {retry_after} s"),
            )
        }
    }

    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self::new(&REQUEST_TIMEOUT, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(&NOT_FOUND, detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(&METHOD_NOT_ALLOWED, "this path does not accept that method")
    }

    pub fn bad_consumer(detail: impl Into<String>) -> Self {
        Self::new(&BAD_CONSUMER, detail)
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status
    }
}

impl From<TopicError> for ApiError {
    fn from(e: TopicError) -> Self {
        ApiError::bad_topic(e)
    }
}

impl From<SinceError> for ApiError {
    fn from(e: SinceError) -> Self {
        ApiError::new(&BAD_SINCE, e.to_string())
    }
}

impl From<CursorError> for ApiError {
    fn from(e: CursorError) -> Self {
        ApiError::new(&BAD_CURSOR, e.to_string())
    }
}

impl From<EventNameError> for ApiError {
    fn from(e: EventNameError) -> Self {
        ApiError::new(&BAD_EVENT, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let kind = store_problem(&e);
        if let StoreError::Unavailable(_) = e {
            // The cause goes to the log, not to the client.
            tracing::error!(error = %e, "store unavailable");
            return ApiError::new(kind, STORE_UNAVAILABLE);
        }
        if let StoreError::NotReplicated(_) = e {
            tracing::warn!(error = %e, "write not replicated in time");
            return ApiError::new(kind, NOT_REPLICATED_DETAIL);
        }
        ApiError::new(kind, e.to_string())
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Store(e) => e.into(),
            e => ApiError::new(hub_problem(&e), e.to_string()),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Hub(e) => e.into(),
            JobError::UnknownJob(_) => ApiError::not_found(e.to_string()),
            JobError::StaleLease(_) => ApiError::new(&STALE_LEASE, e.to_string()),
            JobError::NotDead(..) => ApiError::new(&JOB_NOT_DEAD, e.to_string()),
        }
    }
}

impl From<ConsumerError> for ApiError {
    fn from(e: ConsumerError) -> Self {
        match e {
            ConsumerError::Hub(e) => e.into(),
            ConsumerError::BadName(_) | ConsumerError::BadSettings(_) => {
                ApiError::new(&BAD_CONSUMER, e.to_string())
            }
            ConsumerError::Unknown(_) => ApiError::not_found(e.to_string()),
            ConsumerError::Conflict(_) => ApiError::new(&CONSUMER_CONFLICT, e.to_string()),
            ConsumerError::StaleDelivery(_) => ApiError::new(&STALE_DELIVERY, e.to_string()),
        }
    }
}

impl From<crate::webhooks::WebhookError> for ApiError {
    fn from(e: crate::webhooks::WebhookError) -> Self {
        use crate::webhooks::WebhookError;
        match e {
            WebhookError::Consumer(e) => e.into(),
            WebhookError::Bad(_) => ApiError::new(&BAD_WEBHOOK, e.to_string()),
            WebhookError::AddressNotAllowed(_) => {
                ApiError::new(&ADDRESS_NOT_ALLOWED, e.to_string())
            }
            WebhookError::Unknown(_) => ApiError::not_found(e.to_string()),
        }
    }
}

impl ApiError {
    pub fn bad_webhook(detail: impl Into<String>) -> Self {
        ApiError::new(&BAD_WEBHOOK, detail)
    }

    pub fn lab_busy(detail: impl Into<String>) -> Self {
        ApiError::new(&LAB_BUSY, detail)
    }

    pub fn lab_unavailable(detail: impl Into<String>) -> Self {
        ApiError::new(&LAB_UNAVAILABLE, detail)
    }
}

/// A refused WebSocket frame, on its way into an `error` frame: the status the same refusal
/// has over HTTP, and a detail.
#[derive(Debug)]
pub struct FrameRefusal {
    kind: &'static ProblemType,
    detail: String,
}

impl FrameRefusal {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::bad_request(detail).into()
    }

    /// A subscription whose store read failed (the cause was logged where it happened): `503`,
    /// with the detail a store failure has over HTTP.
    pub fn store_unavailable() -> Self {
        ApiError::new(&UNAVAILABLE, STORE_UNAVAILABLE).into()
    }

    /// The error frame's `status`.
    pub fn status(&self) -> u16 {
        self.kind.status.as_u16()
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl From<ApiError> for FrameRefusal {
    fn from(e: ApiError) -> Self {
        FrameRefusal {
            kind: e.kind,
            detail: e.detail,
        }
    }
}

/// A frame the decoder refused: a bad frame is a 400, one over a limit a 413.
impl From<FrameError> for FrameRefusal {
    fn from(e: FrameError) -> Self {
        let kind = frame_problem(&e);
        match e {
            FrameError::BadFrame(detail) | FrameError::TooLarge(detail) => {
                FrameRefusal { kind, detail }
            }
        }
    }
}

/// A hub error in a WebSocket error frame: the status and the detail the same error has over
/// HTTP, so a store failure's cause goes to the log, never to the client.
impl From<HubError> for FrameRefusal {
    fn from(e: HubError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: self.kind.uri(),
            title: self.kind.title,
            status: self.kind.status.as_u16(),
            detail: &self.detail,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.kind.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.kind.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobId;

    #[test]
    fn every_problem_type_is_listed_once() {
        let mut slugs: Vec<&str> = PROBLEM_TYPES.iter().map(|p| p.slug).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), PROBLEM_TYPES.len());
    }

    #[test]
    fn http_and_websocket_agree_on_the_status() {
        let topic: crate::model::Topic = "t".parse().unwrap();
        let id: JobId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        for (e, status) in [
            (HubError::ReservedTopic(topic.clone()), 403),
            (HubError::BareCursorForTopics(2), 400),
            (HubError::Draining, 503),
            (HubError::Busy, 503),
            (HubError::Store(StoreError::Unavailable("down".into())), 503),
            (
                HubError::Store(StoreError::IdempotencyConflict {
                    topic,
                    key: "k".into(),
                }),
                409,
            ),
            (HubError::Store(StoreError::JobChanged(id.clone())), 409),
            (HubError::Store(StoreError::UnknownJob(id)), 404),
            (HubError::Store(StoreError::TooManyTopics { limit: 3 }), 507),
        ] {
            let frame = FrameRefusal::from(e.clone());
            assert_eq!(frame.status(), status, "{e}");
            let problem = ApiError::from(e.clone());
            assert_eq!(
                frame.detail(),
                problem.detail,
                "the same detail as over HTTP"
            );
            assert_eq!(problem.status().as_u16(), status);
            if let HubError::Store(StoreError::Unavailable(cause)) = &e {
                assert!(
                    !frame.detail().contains(cause.as_str()),
                    "{}",
                    frame.detail()
                );
            }
        }
    }

    /// A frame the WebSocket decoder refused has the status of the same refusal over HTTP:
    /// wire/ names the kind, this file the status.
    #[test]
    fn decode_errors_map_to_their_status() {
        let bad = FrameRefusal::from(FrameError::BadFrame("not a frame".into()));
        assert_eq!((bad.status(), bad.detail()), (400, "not a frame"));
        assert_eq!(bad.status(), ApiError::bad_request("x").status().as_u16());
        let large = FrameRefusal::from(FrameError::TooLarge("too big".into()));
        assert_eq!((large.status(), large.detail()), (413, "too big"));
        assert_eq!(large.status(), ApiError::too_large("x").status().as_u16());
    }
}
