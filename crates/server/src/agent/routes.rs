//! `/agent/v1/*`: enrolment (join token), identity renewal and `whoami`
//! (identity certificate), behind one middleware that finds the caller's
//! certificate, checks its agent, applies the rate limit and counts requests.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use certflow_api::agent::{EnrollRequest, IdentityView, RenewIdentityRequest, WhoamiView};
use certflow_core::DomainError;
use certflow_core::access::{Permission, Principal, PrincipalKind};
use certflow_core::agents::{Agent, parse_agent_uri};
use certflow_services::agents::{Agents, IssuedIdentity};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use time::OffsetDateTime;
use uuid::Uuid;

use super::limit::RateLimiter;
use super::token::{AgentTokenVerifier, check_binding};
use super::{AgentConfig, ConnInfo};
use crate::http::console::Json;
use crate::http::errors::{ApiError, ApiResult};

/// Path of the one route reachable without a client certificate.
pub const ENROLL: &str = "/agent/v1/enroll";

/// Shared state of the agent routes.
#[derive(Clone)]
pub struct AgentState {
    agents: Agents,
    verifier: Arc<dyn ClientCertVerifier>,
    cert_header: Option<HeaderName>,
    proxies: Arc<Vec<ipnet::IpNet>>,
    limiter: Arc<RateLimiter>,
    tokens: Option<Arc<dyn AgentTokenVerifier>>,
}

impl AgentState {
    /// State for `agents` under `config`; `verifier` also checks gateway-forwarded certificates.
    pub fn new(
        agents: Agents,
        config: &AgentConfig,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            agents,
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
        })
    }

    /// Requires, besides the certificate, a bearer token validated by
    /// `verifier` and bound to the agent (see [`check_binding`]).
    #[allow(
        dead_code,
        reason = "the seam for OIDC client-credentials agent tokens, wired once certflow-auth validates them"
    )]
    pub fn with_token_verifier(mut self, verifier: Arc<dyn AgentTokenVerifier>) -> Self {
        self.tokens = Some(verifier);
        self
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
        .fallback(|| async { ApiError::no_route() })
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::http::BODY_LIMIT,
        ))
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

/// The client certificate of the request: the one rustls verified on the
/// connection, else the gateway header's if the peer is a trusted proxy
/// (verified here against the same CA). An untrusted peer's header is ignored.
fn presented_cert(
    state: &AgentState,
    req: &Request,
    peer_ip: Option<IpAddr>,
) -> Option<Arc<Vec<u8>>> {
    let info = req.extensions().get::<ConnInfo>();
    if let Some(cert) = info.and_then(|i| i.client_cert.clone()) {
        return Some(cert);
    }
    let name = state.cert_header.as_ref()?;
    let value = req.headers().get(name)?;
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
        Ok(_) => Some(Arc::new(leaf)),
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
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let peer_ip = req.extensions().get::<ConnInfo>().map(|i| i.peer.ip());
    let resp = match authenticate(&state, &mut req, &route, peer_ip).await {
        Ok(()) => next.run(req).await,
        Err(resp) => resp,
    };
    crate::http::metrics::observe(&route, &route, resp.status().as_u16(), started.elapsed());
    resp
}

async fn authenticate(
    state: &AgentState,
    req: &mut Request,
    route: &str,
    peer_ip: Option<IpAddr>,
) -> Result<(), Response> {
    let source = peer_ip.map(|ip| ip.to_string()).unwrap_or_default();
    if route == ENROLL {
        return state
            .limiter
            .check(&format!("ip:{source}"), Instant::now())
            .map_err(too_many);
    }
    let Some(cert) = presented_cert(state, req, peer_ip) else {
        return Err(
            refused("a client certificate from the agent-identity CA is required").into_response(),
        );
    };
    let info = certflow_pki::inspect(&cert)
        .map_err(|_| refused("unreadable client certificate").into_response())?;
    let agent_id: Option<Uuid> = certflow_pki::uri_names(&cert)
        .ok()
        .and_then(|uris| uris.iter().find_map(|u| parse_agent_uri(u)));
    let Some(agent_id) = agent_id else {
        return Err(refused("the client certificate names no agent").into_response());
    };
    state
        .limiter
        .check(&format!("agent:{agent_id}"), Instant::now())
        .map_err(too_many)?;
    let agent = match state
        .agents
        .authenticate(agent_id, &info.serial_hex, OffsetDateTime::now_utc())
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
    if let Some(tokens) = &state.tokens {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(bearer) = bearer else {
            return Err(refused("send Authorization: Bearer <token>").into_response());
        };
        let verified = tokens.verify(bearer).await.map_err(|why| {
            tracing::info!(agent = %agent_id, %why, "agent token refused");
            refused("the bearer token is not valid").into_response()
        })?;
        check_binding(&verified, agent_id, &cert)
            .map_err(|e| refused(&e.to_string()).into_response())?;
    }
    let principal = Principal {
        subject: agent.id.to_string(),
        kind: PrincipalKind::Agent {
            agent_id: agent.id.to_string(),
        },
        roles: Vec::new(),
        teams: agent.teams.clone(),
    };
    req.extensions_mut().insert(AgentCaller {
        agent,
        principal,
        source,
    });
    Ok(())
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
    headers: axum::http::HeaderMap,
    Json(req): Json<EnrollRequest>,
) -> ApiResult<Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| refused("send Authorization: Bearer <join token>"))?;
    let source = conn.map(|c| c.0.peer.ip().to_string());
    let issued = state
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
        })?;
    Ok((StatusCode::CREATED, Json(identity_view(issued))).into_response())
}

/// The shared access model agrees: agents (and only agents) hold `AgentApi`.
fn require_agent_api(caller: &AgentCaller) -> ApiResult<()> {
    if caller.principal.can(Permission::AgentApi, None) {
        Ok(())
    } else {
        Err(DomainError::Forbidden("agent API calls are for agents".into()).into())
    }
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
