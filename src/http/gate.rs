//! Every request's way in, before it is routed, as one service around the routes: the client
//! behind a trusted proxy (`client`), the request id and log line (`trace`), web pages against
//! an open hub (`origin`), the rate limit and the body timeout (`limits`), and the credential
//! (`auth`), in that order. A request refused by one is answered there (with its id and log
//! line all the same) and goes no further.
//!
//! One hand-written service and not a middleware layer per check: a layer applied to the
//! router wraps every route, and each one clones the whole stack beneath it for every
//! request (a boxed service and a boxed future per layer). Here a request costs one boxed
//! future and a router clone (one reference count).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tower::Service;

use super::limits::{BodyDeadline, RateLimiter};
use super::origin::OriginPolicy;
use super::{auth, client, limits, origin, trace};
use crate::auth::Authenticator;
use crate::model::Cidr;

/// What the gate checks against.
pub struct Policy {
    /// `limits.trusted_proxies`.
    pub proxies: Vec<Cidr>,
    pub origins: OriginPolicy,
    pub limiter: Arc<RateLimiter>,
    pub auth: Arc<Authenticator>,
    /// `limits.body_timeout`.
    pub body_timeout: Duration,
}

/// The routes behind the gate.
#[derive(Clone)]
pub struct Gate {
    routes: Router,
    policy: Arc<Policy>,
}

impl Gate {
    pub fn new(routes: Router, policy: Policy) -> Self {
        Gate {
            routes,
            policy: Arc::new(policy),
        }
    }
}

impl Service<Request> for Gate {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let routes = self.routes.clone();
        let policy = self.policy.clone();
        Box::pin(async move { Ok(policy.pass(routes, req).await) })
    }
}

impl Policy {
    async fn pass(&self, routes: Router, mut req: Request) -> Response {
        client::resolve(&self.proxies, &mut req);
        let record = trace::Record::start(&req);
        let span = record.span();
        let response = tracing::Instrument::instrument(self.admit(routes, req), span).await;
        record.finish(response)
    }

    async fn admit(&self, mut routes: Router, mut req: Request) -> Response {
        let checked = origin::check(&self.origins, &req)
            .and_then(|()| limits::admit(&self.limiter, &req))
            .and_then(|()| auth::authenticate(&self.auth, &mut req));
        if let Err(refused) = checked {
            return refused.into_response();
        }
        let (req, deadline) = BodyDeadline::watch(self.body_timeout, req);
        let response = match routes.call(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        deadline.verdict(response)
    }
}
