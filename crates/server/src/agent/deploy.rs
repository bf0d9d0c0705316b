//! `/agent/v1/assignments`, `/agent/v1/certificates[/{id}[/renew]]` and
//! `/agent/v1/reports`: what an agent installs, and what it reports back.
//! They run behind the agent `guard` (routes.rs), which authenticates the
//! caller and puts [`AgentCaller`] into the request.
//!
//! # Why the assignment poll is built like this
//!
//! Every agent polls `GET /agent/v1/assignments` every few seconds to
//! minutes, and almost every poll finds nothing new. So the answer for each
//! agent (its JSON body and a strong ETag over it) is kept in memory
//! ([`AssignmentCache`]): a poll whose `If-None-Match` equals the cached ETag
//! gets 304 without touching the database; only the first poll, and the
//! first after a change, reads it. Changes that alter an agent's list — a
//! new version, a revocation or archival of an assigned certificate, an
//! assignment made or removed — drop the affected entries, here at once and
//! on other replicas through the change feed ([`super::watch`]), so a
//! renewal by a worker replica reaches an API replica's agents. Each drop
//! also bumps a generation on a `tokio::sync::watch` channel: a long poll
//! (`?wait=<s>`, at most 60 s) parks on it and wakes within milliseconds of
//! a change, re-checks its own entry (a memory look-up) and answers 200 if
//! its list changed, or parks again until the wait is over (304). Entries
//! also expire after [`CACHE_MAX_AGE`] as a safety net for an announcement
//! lost in a crash.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use certflow_api::agent::{
    AgentCertificateRequest, AgentRenewRequest, Assignment, AssignmentList, CertificateBundle,
    ReportRequest,
};
use certflow_core::DomainError;
use certflow_core::access::Permission;
use certflow_core::deployments::AssignedCertificate;
use certflow_services::deployments::Deployments;
use certflow_store::ChangeFeed;
use tokio::sync::watch;
use uuid::Uuid;

use super::routes::{AgentCaller, AgentState};
use super::watch::ASSIGNMENTS_TOPIC;
use crate::http::console::{Json, Path};
use crate::http::errors::{ApiError, ApiResult};

/// Longest long poll, seconds (a longer `wait` is shortened to it).
pub const MAX_WAIT_SECS: u64 = 60;
/// How long a cached answer is trusted without any announcement.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(300);

/// One agent's cached answer.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The strong ETag, quoted.
    pub etag: Arc<str>,
    /// The JSON body.
    pub body: Bytes,
    certificates: Vec<Uuid>,
    loaded: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    entries: HashMap<Uuid, Cached>,
    /// Which cached agents list a certificate, to drop only those.
    by_certificate: HashMap<Uuid, HashSet<Uuid>>,
}

impl Inner {
    fn remove(&mut self, agent: Uuid) {
        if let Some(old) = self.entries.remove(&agent) {
            for c in old.certificates {
                if let Some(agents) = self.by_certificate.get_mut(&c) {
                    agents.remove(&agent);
                    if agents.is_empty() {
                        self.by_certificate.remove(&c);
                    }
                }
            }
        }
    }
}

/// Per-agent answers of `GET /agent/v1/assignments`, and a generation that
/// moves on every invalidation (what long polls wait on).
#[derive(Debug)]
pub struct AssignmentCache {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    max_age: Duration,
}

impl AssignmentCache {
    /// An empty cache whose entries expire after `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changed: watch::channel(0).0,
            max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map is consistent after every statement: a panic elsewhere
        // while holding the lock cannot leave it half-updated.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's answer, if cached and fresh, and the current generation.
    pub fn get(&self, agent: Uuid) -> (Option<Cached>, u64) {
        let inner = self.lock();
        let fresh = inner
            .entries
            .get(&agent)
            .filter(|c| c.loaded.elapsed() < self.max_age)
            .cloned();
        (fresh, inner.generation)
    }

    /// Caches an answer read at `generation`, unless something was
    /// invalidated since (the answer may predate that change).
    pub fn put(&self, agent: Uuid, cached: Cached, generation: u64) -> bool {
        let mut inner = self.lock();
        if inner.generation != generation {
            return false;
        }
        inner.remove(agent);
        for c in &cached.certificates {
            inner.by_certificate.entry(*c).or_default().insert(agent);
        }
        inner.entries.insert(agent, cached);
        true
    }

    fn bump(&self, inner: &mut Inner) {
        inner.generation += 1;
        self.changed.send_replace(inner.generation);
    }

    /// Drops one agent's answer.
    pub fn invalidate_agent(&self, agent: Uuid) {
        let mut inner = self.lock();
        inner.remove(agent);
        self.bump(&mut inner);
    }

    /// Drops the answers of every agent that lists `certificate`.
    pub fn invalidate_certificate(&self, certificate: Uuid) {
        let mut inner = self.lock();
        for agent in inner
            .by_certificate
            .get(&certificate)
            .cloned()
            .unwrap_or_default()
        {
            inner.remove(agent);
        }
        self.bump(&mut inner);
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.by_certificate.clear();
        self.bump(&mut inner);
    }

    /// Wakes on every invalidation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How many agents have a cached answer.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no agent has a cached answer.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the deployment routes (agent and console) share.
#[derive(Clone)]
pub struct DeployState {
    /// The use cases.
    pub deployments: Deployments,
    /// The agents' assignment answers.
    pub cache: Arc<AssignmentCache>,
    feed: ChangeFeed,
}

impl DeployState {
    /// State over `deployments`, announcing assignment changes on `feed`.
    pub fn new(deployments: Deployments, feed: ChangeFeed) -> Self {
        Self {
            deployments,
            cache: Arc::new(AssignmentCache::new(CACHE_MAX_AGE)),
            feed,
        }
    }

    /// After an agent's assignments changed: drop its answer here at once,
    /// and on every replica through the feed.
    pub async fn assignments_changed(&self, agent: Uuid) {
        self.cache.invalidate_agent(agent);
        if let Err(e) = self
            .feed
            .publish(&format!("{ASSIGNMENTS_TOPIC}{agent}"))
            .await
        {
            tracing::warn!(%agent, error = %e, "cannot announce an assignment change");
        }
    }

    /// The agent's answer: cached, or read and cached.
    async fn current(&self, agent: Uuid) -> ApiResult<Cached> {
        let (cached, generation) = self.cache.get(agent);
        if let Some(c) = cached {
            return Ok(c);
        }
        let items: Vec<Assignment> = self
            .deployments
            .assignments(agent)
            .await?
            .into_iter()
            .map(assignment_view)
            .collect();
        let certificates = items.iter().map(|a| a.certificate_id).collect();
        let body = serde_json::to_vec(&AssignmentList { items })
            .map_err(|e| DomainError::Internal(format!("encoding assignments: {e}")))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let cached = Cached {
            etag: format!("\"{}\"", hex::encode(&digest.as_ref()[..16])).into(),
            body: Bytes::from(body),
            certificates,
            loaded: Instant::now(),
        };
        self.cache.put(agent, cached.clone(), generation);
        Ok(cached)
    }
}

/// The wire form of an assignment.
pub fn assignment_view(a: AssignedCertificate) -> Assignment {
    Assignment {
        certificate_id: a.certificate_id,
        name: a.name,
        names: a.names.iter().map(|n| n.to_text()).collect(),
        key_source: a.key_source.as_str().into(),
        status: a.status.as_str().into(),
        version: a.version,
        serial: a.serial,
        fingerprint_sha256: a.fingerprint_sha256,
        not_after: a.not_after,
    }
}

/// The deployment routes, merged into the agent router (before its guard).
pub fn routes() -> Router<AgentState> {
    Router::new()
        .route("/agent/v1/assignments", get(assignments))
        .route("/agent/v1/certificates", post(request_certificate))
        .route("/agent/v1/certificates/{id}", get(bundle))
        .route("/agent/v1/certificates/{id}/renew", post(renew))
        .route("/agent/v1/reports", post(report))
        // Reports carry up to 2000 leaf PEMs: more than the listener's default body limit.
        .route(
            "/agent/v1/discovered",
            post(crate::http::discovery::agent_report).layer(axum::extract::DefaultBodyLimit::max(
                crate::http::discovery::DISCOVERY_BODY_LIMIT,
            )),
        )
}

fn deploy_state(ext: Option<Extension<DeployState>>) -> ApiResult<DeployState> {
    ext.map(|e| e.0).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "deployments-unavailable",
            "Deployments are not available",
            "this server does not serve deployments",
        )
    })
}

fn require_agent_api(caller: &AgentCaller) -> ApiResult<()> {
    if caller.principal.can(Permission::AgentApi, None) {
        Ok(())
    } else {
        Err(DomainError::Forbidden("agent API calls are for agents".into()).into())
    }
}

/// `?wait=<seconds>`: absent is 0, more than [`MAX_WAIT_SECS`] is shortened.
fn wait_of(query: Option<&str>) -> ApiResult<Duration> {
    let mut wait = 0;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("wait", v)) => {
                wait = v.parse::<u64>().map_err(|_| {
                    ApiError::invalid_field("wait", format!("'{v}' is not a number of seconds"))
                })?;
            }
            _ => {
                let name = pair.split('=').next().unwrap_or_default();
                return Err(ApiError::invalid_field(
                    name,
                    "unknown parameter; the only one is wait",
                ));
            }
        }
    }
    Ok(Duration::from_secs(wait.min(MAX_WAIT_SECS)))
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 13.1.2).
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

fn with_etag(mut resp: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    resp
}

/// Certificates assigned to the calling agent; 304 when `If-None-Match`
/// holds the current ETag (from memory), after waiting up to `wait` seconds
/// for a change.
async fn assignments(
    ext: Option<Extension<DeployState>>,
    Extension(caller): Extension<AgentCaller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    require_agent_api(&caller)?;
    let state = deploy_state(ext)?;
    let wait = wait_of(query.as_deref())?;
    let deadline = tokio::time::Instant::now() + wait;
    let agent = caller.agent.id;
    let mut changes = state.cache.subscribe();
    loop {
        // Seen before reading, so a change after the read wakes the wait below.
        changes.borrow_and_update();
        let current = state.current(agent).await?;
        if !matches(&headers, &current.etag) {
            let resp = (
                [(header::CONTENT_TYPE, "application/json")],
                current.body.clone(),
            )
                .into_response();
            return Ok(with_etag(resp, &current.etag));
        }
        let not_modified = || with_etag(StatusCode::NOT_MODIFIED.into_response(), &current.etag);
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => return Ok(not_modified()),
        }
    }
}

/// The current version of an assigned certificate, to install.
async fn bundle(
    ext: Option<Extension<DeployState>>,
    Extension(caller): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    require_agent_api(&caller)?;
    let state = deploy_state(ext)?;
    let b = state
        .deployments
        .bundle(
            &caller.agent,
            Some(caller.source.clone()),
            id,
            time::OffsetDateTime::now_utc(),
        )
        .await?;
    let body = CertificateBundle {
        certificate_id: b.certificate_id,
        version: b.version,
        serial: b.serial,
        fingerprint_sha256: b.fingerprint_sha256,
        certificate_pem: b.certificate_pem,
        chain_pem: b.chain_pem,
        key_pem: b.key_pem.as_ref().map(|k| k.as_str().to_owned()),
    };
    let mut resp = Json(body).into_response();
    // It may carry a private key: no cache anywhere keeps it.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// A certificate for a key the agent generated, assigned to it.
async fn request_certificate(
    ext: Option<Extension<DeployState>>,
    Extension(caller): Extension<AgentCaller>,
    Json(req): Json<AgentCertificateRequest>,
) -> ApiResult<Response> {
    require_agent_api(&caller)?;
    let state = deploy_state(ext)?;
    let (assigned, created) = state
        .deployments
        .request_certificate(
            &caller.agent,
            Some(caller.source.clone()),
            &req,
            time::OffsetDateTime::now_utc(),
        )
        .await?;
    if created {
        state.assignments_changed(caller.agent.id).await;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(assignment_view(assigned))).into_response())
}

/// Renews an assigned certificate (with a CSR: for a new key).
async fn renew(
    ext: Option<Extension<DeployState>>,
    Extension(caller): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    Json(req): Json<AgentRenewRequest>,
) -> ApiResult<Json<Assignment>> {
    require_agent_api(&caller)?;
    let state = deploy_state(ext)?;
    let assigned = state
        .deployments
        .renew(
            &caller.agent,
            Some(caller.source.clone()),
            id,
            req.csr.as_deref(),
            time::OffsetDateTime::now_utc(),
        )
        .await?;
    Ok(Json(assignment_view(assigned)))
}

/// Records what the agent installed (or failed to).
async fn report(
    ext: Option<Extension<DeployState>>,
    Extension(caller): Extension<AgentCaller>,
    Json(req): Json<ReportRequest>,
) -> ApiResult<StatusCode> {
    require_agent_api(&caller)?;
    let state = deploy_state(ext)?;
    state
        .deployments
        .report(
            &caller.agent,
            Some(caller.source.clone()),
            &req,
            time::OffsetDateTime::now_utc(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cached(certs: &[Uuid]) -> Cached {
        Cached {
            etag: "\"x\"".into(),
            body: Bytes::from_static(b"{}"),
            certificates: certs.to_vec(),
            loaded: Instant::now(),
        }
    }

    #[test]
    fn invalidation_drops_only_the_agents_concerned_and_wakes_waiters() {
        let cache = AssignmentCache::new(Duration::from_secs(60));
        let (a, b, c1, c2) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let g = cache.get(a).1;
        assert!(cache.put(a, cached(&[c1]), g));
        assert!(cache.put(b, cached(&[c1, c2]), g));
        let rx = cache.subscribe();
        cache.invalidate_certificate(c2);
        assert!(rx.has_changed().unwrap());
        assert!(cache.get(a).0.is_some());
        assert!(cache.get(b).0.is_none());
        cache.invalidate_certificate(c1);
        assert!(cache.is_empty());
        // An answer read before an invalidation is not cached.
        let g = cache.get(a).1;
        cache.invalidate_agent(b);
        assert!(!cache.put(a, cached(&[c1]), g));
        assert!(cache.get(a).0.is_none());
        // Expired entries read as absent.
        let short = AssignmentCache::new(Duration::ZERO);
        let g = short.get(a).1;
        assert!(short.put(a, cached(&[]), g));
        assert!(short.get(a).0.is_none());
    }

    #[test]
    fn wait_parameter_and_if_none_match() {
        assert_eq!(wait_of(None).unwrap(), Duration::ZERO);
        assert_eq!(wait_of(Some("wait=5")).unwrap(), Duration::from_secs(5));
        assert_eq!(wait_of(Some("wait=600")).unwrap(), Duration::from_secs(60));
        assert!(wait_of(Some("wait=soon")).is_err());
        assert!(wait_of(Some("other=1")).is_err());
        let mut h = HeaderMap::new();
        assert!(!matches(&h, "\"abc\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(matches(&h, "\"abc\""));
        assert!(!matches(&h, "\"abd\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches(&h, "\"abd\""));
    }
}
