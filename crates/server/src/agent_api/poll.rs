//! The agent listener's service: `GET /agent/v1/assignments`, the request
//! every agent repeats all day, answered without the router, and every
//! other request through it (`routes::router`).
//!
//! Why a path of its own: through the router a poll went through four
//! `from_fn` layers, each cloning its inner service into a new box and
//! boxing its future, plus the router's own clone and route lookup, the
//! body-limit layer and the request extensions each layer reads. Together
//! they were a visible share of a poll's CPU (BENCHMARKS.md, goal 5). This
//! path does what those layers do for this one route, with the same
//! functions: the access record and request id ([`Access`]), the agent check
//! ([`authenticate`]), the request counter, and the handler's own code
//! ([`assignments_of`]). Every answer on it is a 200, a 304 or an
//! [`crate::errors::ApiError`] problem document, which the router's outer
//! `problem_responses` layer passes unchanged; the body limit does not apply
//! to a handler that reads no body. `HEAD`, other methods and other paths
//! take the router, as before.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{Method, Request};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;

use super::deploy::assignments_of;
use super::routes::{AgentState, Presented, actor_of, authenticate, require_agent_api, router};
use super::{ClientIdentity, ConnInfo};
use crate::telemetry::metrics;
use crate::telemetry::observe::Access;

/// The route answered here.
pub const ASSIGNMENTS: &str = "/agent/v1/assignments";

/// The agent listener's application: the router, and the state the poll
/// path answers from.
#[derive(Clone)]
pub struct AgentApp {
    router: axum::Router,
    state: AgentState,
}

impl AgentApp {
    /// The agent API over `state`.
    pub fn new(state: AgentState) -> Self {
        Self {
            router: router(state.clone()),
            state,
        }
    }
}

/// What every request of one connection shares.
pub struct ConnContext {
    /// The application.
    pub app: AgentApp,
    /// The TCP peer and the client certificate of the handshake.
    pub info: ConnInfo,
    /// That certificate, read.
    pub identity: Option<Arc<ClientIdentity>>,
}

impl ConnContext {
    /// Answers one request of the connection.
    pub async fn call(self: Arc<Self>, mut req: Request<Body>) -> Response {
        if is_poll(req.method(), req.uri().path()) {
            return self.poll(req).await;
        }
        req.extensions_mut().insert(self.info.clone());
        if let Some(identity) = &self.identity {
            req.extensions_mut().insert(identity.clone());
        }
        let Ok(resp) = self.app.router.clone().oneshot(req).await;
        resp
    }

    /// `GET /agent/v1/assignments`: what the router's layers and the
    /// route's handler would answer (see the module header).
    pub(super) fn poll<B>(&self, req: Request<B>) -> impl Future<Output = Response> + '_ {
        // The head goes to the heap (and goes once read): a future keeps its
        // arguments for its whole life, and a long poll's lives for up to a
        // minute per connected agent.
        self.poll_head(Box::new(req.into_parts().0))
    }

    /// [`ConnContext::poll`] of a request head.
    async fn poll_head(&self, parts: Box<Parts>) -> Response {
        // A long poll waits up to a minute: no span is kept while it does.
        let mut access = Access::begin_per_run(&parts.headers, &parts.method, ASSIGNMENTS, "agent");
        let answer = std::pin::pin!(self.answer(parts));
        let (mut resp, agent) = access.run(answer).await;
        access.finish(&mut resp, || agent.map(actor_of), || None);
        resp
    }

    /// The guard's check, the handler and the request counter; also the
    /// agent, when the caller was authenticated (the access line's actor).
    async fn answer(&self, parts: Box<Parts>) -> (Response, Option<uuid::Uuid>) {
        let started = Instant::now();
        // Boxed, and only the agent's id comes out: a long poll keeps this
        // future for up to a minute per connected agent.
        let checked = Box::pin(self.check(&parts)).await;
        let (resp, actor) = match checked {
            Ok(agent) => {
                let resp = assignments_of(&self.app.state, agent, parts)
                    .await
                    .unwrap_or_else(IntoResponse::into_response);
                (resp, Some(agent))
            }
            Err(refused) => refused,
        };
        metrics::observe(
            ASSIGNMENTS,
            ASSIGNMENTS,
            resp.status().as_u16(),
            started.elapsed(),
        );
        (resp, actor)
    }

    /// The guard's check for the poll: the agent, or the refusal (with the
    /// agent when it was authenticated).
    async fn check(&self, parts: &Parts) -> Result<uuid::Uuid, (Response, Option<uuid::Uuid>)> {
        let presented = Presented {
            headers: &parts.headers,
            conn: Some(&self.info),
            identity: self.identity.as_ref(),
        };
        let caller = authenticate(&self.app.state, presented)
            .await
            .map_err(|resp| (resp, None))?;
        require_agent_api(&caller).map_err(|e| (e.into_response(), Some(caller.agent.id)))?;
        Ok(caller.agent.id)
    }
}

/// Whether a request is the assignment poll this path answers.
pub(super) fn is_poll(method: &Method, path: &str) -> bool {
    method == Method::GET && path == ASSIGNMENTS
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests;
