//! `/agent/v1/*`: enrolment (join token or OIDC client-credentials token),
//! identity renewal and `whoami` (identity certificate, plus a bearer token
//! for token-enrolled agents), behind one middleware that finds the caller's
//! certificate, checks its agent and token, applies the rate limit and counts
//! requests.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use certflow_api::agent::{EnrollRequest, IdentityView, RenewIdentityRequest, WhoamiView};
use certflow_core::DomainError;
use certflow_core::access::{Permission, Principal, PrincipalKind};
use certflow_core::agents::Agent;
use certflow_services::agents::{Agents, IssuedIdentity, JOIN_TOKEN_PREFIX, TokenEnrolment};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use time::OffsetDateTime;

use super::token::{AgentTokenVerifier, TokenError, check_binding};
use super::{ClientIdentity, ConnInfo};
use crate::config::AgentConfig;
use crate::deploy_cache::DeployState;
use crate::errors::{ApiError, ApiResult};
use crate::extract::Json;
use crate::rate_limit::RateLimiter;

/// Path of the one route reachable without a client certificate.
pub const ENROLL: &str = "/agent/v1/enroll";

/// Shared state of the agent routes. Cloned for every request by each
/// `State` extractor and stateful middleware, so it is one `Arc`: cloning
/// the use cases by value copied dozens of `Arc`s a request, and those
/// reference counts were a visible share of a poll's CPU.
#[derive(Clone)]
pub struct AgentState(Arc<AgentShared>);

impl std::ops::Deref for AgentState {
    type Target = AgentShared;

    fn deref(&self) -> &AgentShared {
        &self.0
    }
}

/// What [`AgentState`] shares.
#[derive(Clone)]
pub struct AgentShared {
    agents: Agents,
    /// The deployment use cases and the assignment cache.
    pub deploy: DeployState,
    verifier: Arc<dyn ClientCertVerifier>,
    cert_header: Option<HeaderName>,
    proxies: Arc<Vec<ipnet::IpNet>>,
    limiter: Arc<RateLimiter>,
    tokens: Option<Arc<dyn AgentTokenVerifier>>,
    require_token: bool,
}

impl AgentState {
    /// State for `agents` under `config`; `verifier` also checks gateway-forwarded certificates.
    pub fn new(
        agents: Agents,
        deploy: DeployState,
        config: &AgentConfig,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(AgentShared {
            agents,
            deploy,
            verifier,
            cert_header: config
                .client_cert_header
                .as_deref()
                .map(HeaderName::try_from)
                .transpose()?,
            proxies: Arc::new(config.proxies()?),
            limiter: Arc::new(RateLimiter::new(
                config.rate_limit_per_sec,
                config.rate_limit_burst,
            )),
            tokens: None,
            require_token: config.require_token,
        })))
    }

    /// Accepts OIDC client-credentials tokens validated by `verifier`: for
    /// enrolment, and on every request of an agent enrolled with one (or of
    /// every agent under `require_token`), bound to the agent by [`check_binding`].
    pub fn with_token_verifier(mut self, verifier: Arc<dyn AgentTokenVerifier>) -> Self {
        Arc::make_mut(&mut self.0).tokens = Some(verifier);
        self
    }
}

/// The token of `Authorization: Bearer <token>`, if the request has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(certflow_auth::bearer_token)
}

/// A token refusal as a problem: the issuer being down is ours to fix (503),
/// anything else is the caller's (401).
fn token_problem(e: &TokenError) -> ApiError {
    match e {
        TokenError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "token-issuer-unavailable",
            "Token issuer unavailable",
            "the token issuer's keys cannot be fetched now; retry later",
        ),
        TokenError::Invalid(_) => refused("the bearer token is not valid"),
    }
}

/// The authenticated agent of a request.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    /// The agent as stored.
    pub agent: Agent,
    /// Its principal, for permission checks shared with the console.
    pub principal: Principal,
    /// Where the request came from (the TCP peer).
    pub source: String,
}

/// The agent API router (no socket: the listener serves it per connection).
pub fn router(state: AgentState) -> Router {
    Router::new()
        .route(ENROLL, post(enroll))
        .route("/agent/v1/identity/renew", post(renew))
        .route("/agent/v1/whoami", get(whoami))
        .merge(super::deploy::routes())
        .fallback(crate::errors::not_found)
        .method_not_allowed_fallback(crate::errors::method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn_with_state(
            crate::extract::BODY_LIMIT,
            crate::errors::limit_body,
        ))
        .layer(middleware::from_fn(crate::telemetry::observe::access_log))
        // Outermost: whatever answers with an error answers with a problem document.
        .layer(middleware::from_fn(crate::errors::problem_responses))
        .with_state(state)
}

fn too_many(retry_after: u64) -> Response {
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!("slow down; retry in {retry_after} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Parses the gateway header: a URL-encoded PEM certificate (then its chain).
fn forwarded_cert(value: &HeaderValue) -> Option<Vec<Vec<u8>>> {
    let text = percent_encoding::percent_decode(value.as_bytes())
        .decode_utf8()
        .ok()?;
    certflow_pki::parse_pem_certs("client_cert_header", &text)
        .ok()
        .filter(|c| !c.is_empty())
}

/// What a request presents to the agent check: its headers, and what the
/// accept loop knows about its connection.
pub(super) struct Presented<'a> {
    /// The request's headers (bearer token, gateway certificate header).
    pub headers: &'a HeaderMap,
    /// The connection.
    pub conn: Option<&'a ConnInfo>,
    /// The connection's client certificate, read when it was accepted.
    pub identity: Option<&'a Arc<ClientIdentity>>,
}

impl<'a> Presented<'a> {
    /// What `req` presents, from its extensions (as the accept loop inserts them).
    fn of(req: &'a Request) -> Self {
        Self {
            headers: req.headers(),
            conn: req.extensions().get::<ConnInfo>(),
            identity: req.extensions().get::<Arc<ClientIdentity>>(),
        }
    }

    fn peer_ip(&self) -> Option<IpAddr> {
        self.conn.map(|i| i.peer.ip())
    }
}

/// The client certificate of the request: the one rustls verified on the
/// connection (read once per connection by the accept loop), else the
/// gateway header's if the peer is a trusted proxy (verified and read here,
/// against the same CA). An untrusted peer's header is ignored.
fn presented_identity(
    state: &AgentState,
    presented: &Presented<'_>,
    peer_ip: Option<IpAddr>,
) -> Option<Arc<ClientIdentity>> {
    if let Some(identity) = presented.identity {
        return Some(identity.clone());
    }
    let name = state.cert_header.as_ref()?;
    let value = presented.headers.get(name)?;
    let trusted = peer_ip.is_some_and(|ip| state.proxies.iter().any(|n| n.contains(&ip)));
    if !trusted {
        tracing::warn!(peer = ?peer_ip, header = %name, "ignored a client certificate header from an untrusted peer");
        return None;
    }
    let mut certs = forwarded_cert(value)?.into_iter();
    let leaf = certs.next()?;
    let intermediates: Vec<CertificateDer<'static>> = certs.map(CertificateDer::from).collect();
    match state.verifier.verify_client_cert(
        &CertificateDer::from(leaf.clone()),
        &intermediates,
        UnixTime::now(),
    ) {
        Ok(_) => Some(Arc::new(ClientIdentity::read(&leaf))),
        Err(e) => {
            tracing::warn!(peer = ?peer_ip, error = %e, "refused a forwarded client certificate");
            None
        }
    }
}

fn refused(detail: &str) -> ApiError {
    ApiError::unauthorized(detail.to_owned())
}

/// Middleware on every agent route: certificate and agent check (all but
/// enrolment), rate limit, request counter.
async fn guard(State(state): State<AgentState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let checked = if route == ENROLL {
        limit_enrolment(&state, &Presented::of(&req)).map(|()| None)
    } else {
        // Boxed: the check's future (cache misses read the database) is large,
        // and inline it would stay allocated in this middleware's future for as
        // long as the request runs — a long poll, up to a minute per agent.
        Box::pin(authenticate(&state, Presented::of(&req)))
            .await
            .map(Some)
    };
    let resp = match checked {
        Ok(caller) => {
            if let Some(caller) = caller {
                // For the access line (noted here rather than in a route layer
                // of its own: each layer is another boxed service cloned for
                // every request).
                if let Some(slot) = req
                    .extensions()
                    .get::<crate::telemetry::observe::ActorSlot>()
                {
                    slot.set(actor_of(caller.agent.id));
                }
                req.extensions_mut().insert(caller);
            }
            next.run(req).await
        }
        Err(resp) => resp,
    };
    crate::telemetry::metrics::observe(route, route, resp.status().as_u16(), started.elapsed());
    resp
}

/// The actor of an authenticated agent's access line.
pub(super) fn actor_of(agent: uuid::Uuid) -> String {
    format!("agent:{agent}")
}

/// Enrolment's check: the per-IP rate limit (no certificate yet).
// The refusal is the response itself, on a rare path: boxing buys nothing.
#[allow(clippy::result_large_err)]
fn limit_enrolment(state: &AgentState, presented: &Presented<'_>) -> Result<(), Response> {
    let source = presented
        .peer_ip()
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    state
        .limiter
        .check(&format!("ip:{source}"), Instant::now())
        .map_err(too_many)
}

/// The bearer token of a request for `agent`, who presented the
/// certificate of SHA-256 `cert`: valid, of the subject the agent enrolled
/// with, and bound to that certificate if it is certificate-bound. Every
/// refusal is logged with its reason (never the token).
async fn check_token(
    state: &AgentState,
    headers: &HeaderMap,
    agent: &Agent,
    cert: &[u8; 32],
    source: &str,
) -> Result<(), Response> {
    let deny = |reason: &str| {
        tracing::warn!(agent = %agent.id, source, reason, "agent token refused");
    };
    let Some(tokens) = &state.tokens else {
        deny("token validation is not configured ([[auth.issuers]])");
        return Err(
            refused("this agent needs a bearer token, which this server cannot validate")
                .into_response(),
        );
    };
    let Some(token) = bearer(headers) else {
        deny("no bearer token");
        return Err(refused(
            "send Authorization: Bearer <access token> with the client certificate",
        )
        .into_response());
    };
    let verified = tokens.verify(token).await.map_err(|e| {
        deny(&e.to_string());
        token_problem(&e).into_response()
    })?;
    let Some(subject) = agent.subject.as_deref() else {
        // require_token, but the agent enrolled with a join token: no subject to bind to.
        deny("the agent enrolled with a join token and has no token subject");
        return Err(refused("this agent enrolled with a join token; tokens are required here: enrol again with an access token").into_response());
    };
    check_binding(&verified, subject, cert).map_err(|e| {
        deny(&e.to_string());
        refused(&e.to_string()).into_response()
    })
}

/// The agent check of every route but enrolment: a client certificate of
/// an active agent with its current serial, within its validity, under the
/// rate limit, and the agent's bearer token where one is required.
pub(super) async fn authenticate(
    state: &AgentState,
    presented: Presented<'_>,
) -> Result<AgentCaller, Response> {
    let peer_ip = presented.peer_ip();
    let source = peer_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let Some(identity) = presented_identity(state, &presented, peer_ip) else {
        return Err(
            refused("a client certificate from the agent-identity CA is required").into_response(),
        );
    };
    let cert = identity
        .parsed
        .as_ref()
        .map_err(|why| refused(why).into_response())?;
    let agent_id = cert.agent_id;
    let now = OffsetDateTime::now_utc();
    // rustls checked validity at the handshake; a kept-alive connection may outlive it.
    if now > cert.not_after {
        return Err(refused("the client certificate has expired").into_response());
    }
    state
        .limiter
        .check(&cert.rate_key, Instant::now())
        .map_err(too_many)?;
    let agent = match state
        .agents
        .authenticate(agent_id, &cert.serial_hex, now)
        .await
    {
        Ok(a) => a,
        Err(DomainError::Forbidden(why)) => {
            tracing::info!(agent = %agent_id, %why, "agent refused");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "agent-refused",
                "Agent refused",
                "this agent is not active or this identity certificate was replaced",
            )
            .into_response());
        }
        Err(e) => return Err(ApiError::from(e).into_response()),
    };
    // An agent enrolled with a token proves, on every request, that it still
    // holds a valid one for the same subject; join-token agents only need
    // their certificate unless `require_token` says otherwise.
    if agent.subject.is_some() || state.require_token {
        check_token(state, presented.headers, &agent, &identity.sha256, &source).await?;
    }
    let principal = Principal {
        subject: agent.id.to_string(),
        kind: PrincipalKind::Agent {
            agent_id: agent.id.to_string(),
        },
        roles: Vec::new(),
        teams: agent.teams.clone(),
    };
    Ok(AgentCaller {
        agent,
        principal,
        source,
    })
}

fn identity_view(i: IssuedIdentity) -> IdentityView {
    IdentityView {
        agent_id: i.agent.id,
        name: i.agent.name,
        teams: i.agent.teams,
        certificate_pem: i.certificate_pem,
        ca_chain_pem: i.ca_chain_pem,
        not_after: i.agent.cert_not_after,
    }
}

async fn enroll(
    State(state): State<AgentState>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    Json(req): Json<EnrollRequest>,
) -> ApiResult<Response> {
    let source = conn.map(|c| c.0.peer.ip().to_string());
    let Some(token) = bearer(&headers) else {
        return Err(refused(
            "send Authorization: Bearer <join token or client-credentials access token>",
        ));
    };
    let issued = if token.starts_with(JOIN_TOKEN_PREFIX) {
        if state.require_token {
            // An agent enrolled this way would have no token subject to check.
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "join-tokens-disabled",
                "Join tokens are disabled",
                "this server requires agents to enrol with an OIDC client-credentials access token (agent.require_token)",
            ));
        }
        state
            .agents
            .enroll(
                token,
                req.csr.as_bytes(),
                req.name.as_deref(),
                source,
                OffsetDateTime::now_utc(),
            )
            .await
            .map_err(|e| match e {
                DomainError::Forbidden(_) => refused("the join token is unknown, used or expired"),
                other => other.into(),
            })?
    } else {
        enroll_with_token(&state, token, &req, source).await?
    };
    Ok((StatusCode::CREATED, Json(identity_view(issued))).into_response())
}

async fn enroll_with_token(
    state: &AgentState,
    token: &str,
    req: &EnrollRequest,
    source: Option<String>,
) -> ApiResult<IssuedIdentity> {
    let log_source = source.clone().unwrap_or_default();
    let Some(tokens) = &state.tokens else {
        // Without [[auth.issuers]] only join tokens exist: same answer as a bad one.
        return Err(refused("the join token is unknown, used or expired"));
    };
    let verified = match tokens.verify(token).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(source = %log_source, reason = %e, "agent enrolment token refused");
            return Err(token_problem(&e));
        }
    };
    let Some(teams) = verified.teams.clone() else {
        tracing::warn!(source = %log_source, client = %verified.client_id, "agent enrolment refused: no teams configured for the client");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "agent-client-not-mapped",
            "Client not mapped to teams",
            format!(
                "client {:?} has no teams for agents: add them under [auth.issuers.service_roles.{}] teams",
                verified.client_id, verified.client_id
            ),
        ));
    };
    let who = TokenEnrolment {
        subject: verified.subject,
        client_id: verified.client_id,
        teams,
    };
    state
        .agents
        .enroll_with_token(
            &who,
            req.csr.as_bytes(),
            req.name.as_deref(),
            source,
            OffsetDateTime::now_utc(),
        )
        .await
        .map_err(|e| match e {
            DomainError::Forbidden(why) => {
                tracing::warn!(source = %log_source, client = %who.client_id, %why, "agent enrolment refused");
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "agent-refused",
                    "Agent refused",
                    "the agent of this token is disabled or revoked; an admin must act before it can enrol again",
                )
            }
            other => other.into(),
        })
}

/// Every agent API handler's check: the shared access model agrees that
/// agents (and only agents) hold `AgentApi`.
pub(super) fn require_agent_api(caller: &AgentCaller) -> ApiResult<()> {
    caller
        .principal
        .authorize(Permission::AgentApi, None)
        .map_err(|_| DomainError::Forbidden("agent API calls are for agents".into()).into())
}

async fn renew(
    State(state): State<AgentState>,
    Extension(caller): Extension<AgentCaller>,
    Json(req): Json<RenewIdentityRequest>,
) -> ApiResult<Json<IdentityView>> {
    require_agent_api(&caller)?;
    let issued = state
        .agents
        .renew(
            &caller.agent,
            req.csr.as_bytes(),
            Some(caller.source.clone()),
            OffsetDateTime::now_utc(),
        )
        .await?;
    Ok(Json(identity_view(issued)))
}

async fn whoami(Extension(caller): Extension<AgentCaller>) -> ApiResult<Json<WhoamiView>> {
    require_agent_api(&caller)?;
    let a = caller.agent;
    Ok(Json(WhoamiView {
        agent_id: a.id,
        name: a.name,
        teams: a.teams,
        status: a.status.as_str().into(),
        certificate_serial: a.cert_serial,
        certificate_not_after: a.cert_not_after,
    }))
}
