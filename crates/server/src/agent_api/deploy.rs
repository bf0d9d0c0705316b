//! `/agent/v1/assignments`, `/agent/v1/certificates[/{id}[/renew]]` and
//! `/agent/v1/reports`: what an agent installs, and what it reports back.
//! They run behind the agent `guard` (routes.rs), which authenticates the
//! caller and puts [`AgentCaller`] into the request.
//!
//! The assignment poll is answered from the deployment cache
//! ([`crate::deploy_cache`]), whose module header says why.

use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::Entry;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use certflow_api::agent::{
    AgentCertificateRequest, AgentRenewRequest, Assignment, CertificateBundle, ReportRequest,
};
use uuid::Uuid;

use super::routes::{AgentCaller, AgentState, require_agent_api};
use crate::deploy_cache::assignment_view;
use crate::errors::{ApiError, ApiResult};
use crate::extract::{Json, Path};

/// Longest long poll, seconds (a longer `wait` is shortened to it).
pub const MAX_WAIT_SECS: u64 = 60;
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
            post(super::discovery::agent_report).layer(axum::middleware::from_fn_with_state(
                super::discovery::DISCOVERY_BODY_LIMIT,
                crate::errors::limit_body,
            )),
        )
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

/// The request's `If-None-Match` values, moved out of its head: a request's
/// head is dropped before a long poll parks (see [`assignments_of`]), and
/// these values, alone in a slice, are what the poll keeps of it for up to a
/// minute (a `HeaderMap` holding only them was about 0.6 KB per parked
/// agent, by its types; BENCHMARKS.md, goal 6).
fn if_none_match(headers: &mut HeaderMap) -> Box<[HeaderValue]> {
    match headers.entry(header::IF_NONE_MATCH) {
        Entry::Occupied(values) => values.remove_entry_mult().1.collect(),
        Entry::Vacant(_) => Box::default(),
    }
}

/// Whether the `If-None-Match` values `tags` name `etag` (weak comparison,
/// RFC 9110 13.1.2).
fn matches(tags: &[HeaderValue], etag: &str) -> bool {
    tags.iter()
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
/// for a change. The listener answers `GET` through [`assignments_of`]
/// directly (`poll.rs`); this route serves the router's other callers.
async fn assignments(
    State(agent_state): State<AgentState>,
    Extension(caller): Extension<AgentCaller>,
    req: Request,
) -> ApiResult<Response> {
    // The request itself rather than a `HeaderMap` extractor, which copies every header.
    assignments_for(&agent_state, &caller, req.into_parts().0).await
}

/// The assignment poll of `caller`, whose request's head is `parts`.
async fn assignments_for(
    agent_state: &AgentState,
    caller: &AgentCaller,
    parts: Parts,
) -> ApiResult<Response> {
    require_agent_api(caller)?;
    assignments_of(agent_state, caller.agent.id, Box::new(parts)).await
}

/// The assignment poll of `agent` (already checked for the agent API),
/// whose request's head is `parts`.
pub(super) async fn assignments_of(
    agent_state: &AgentState,
    agent: Uuid,
    mut parts: Box<Parts>,
) -> ApiResult<Response> {
    let state = &agent_state.deploy;
    let wait = wait_of(parts.uri.query())?;
    let conditional = if_none_match(&mut parts.headers);
    drop(parts);
    let deadline = tokio::time::Instant::now() + wait;
    // Only a long poll waits for changes; a plain poll has nothing to subscribe for.
    let mut changes = (!wait.is_zero()).then(|| state.cache.subscribe());
    loop {
        // Seen before reading, so a change after the read wakes the wait below.
        if let Some(changes) = changes.as_mut() {
            changes.borrow_and_update();
        }
        // A miss reads the database: boxed, so that its large future is not
        // part of this one, which a long poll keeps for up to a minute.
        let current = match state.cache.get(agent).0 {
            Some(cached) => cached,
            None => Box::pin(state.current(agent)).await?,
        };
        if !matches(&conditional, &current.etag) {
            let resp = (
                [(header::CONTENT_TYPE, "application/json")],
                current.body.clone(),
            )
                .into_response();
            return Ok(with_etag(resp, &current.etag));
        }
        let not_modified = || with_etag(StatusCode::NOT_MODIFIED.into_response(), &current.etag);
        // No wait asked, or none left: answer now. A timer, even an expired
        // one, fires only on the runtime's next millisecond tick, which held
        // every plain poll about a millisecond.
        let Some(changes) = changes
            .as_mut()
            .filter(|_| tokio::time::Instant::now() < deadline)
        else {
            return Ok(not_modified());
        };
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => return Ok(not_modified()),
        }
    }
}

/// The current version of an assigned certificate, to install.
async fn bundle(
    State(agent_state): State<AgentState>,
    Extension(caller): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let state = &agent_state.deploy;
    require_agent_api(&caller)?;
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
    State(agent_state): State<AgentState>,
    Extension(caller): Extension<AgentCaller>,
    Json(req): Json<AgentCertificateRequest>,
) -> ApiResult<Response> {
    let state = &agent_state.deploy;
    require_agent_api(&caller)?;
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
    State(agent_state): State<AgentState>,
    Extension(caller): Extension<AgentCaller>,
    Path(id): Path<Uuid>,
    Json(req): Json<AgentRenewRequest>,
) -> ApiResult<Json<Assignment>> {
    let state = &agent_state.deploy;
    require_agent_api(&caller)?;
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
    State(agent_state): State<AgentState>,
    Extension(caller): Extension<AgentCaller>,
    Json(req): Json<ReportRequest>,
) -> ApiResult<StatusCode> {
    let state = &agent_state.deploy;
    require_agent_api(&caller)?;
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

    #[test]
    fn wait_parameter_and_if_none_match() {
        assert_eq!(wait_of(None).unwrap(), Duration::ZERO);
        assert_eq!(wait_of(Some("wait=5")).unwrap(), Duration::from_secs(5));
        assert_eq!(wait_of(Some("wait=600")).unwrap(), Duration::from_secs(60));
        assert!(wait_of(Some("wait=soon")).is_err());
        assert!(wait_of(Some("other=1")).is_err());
        let mut h = HeaderMap::new();
        assert!(if_none_match(&mut h).is_empty());
        h.append(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        h.append(header::IF_NONE_MATCH, HeaderValue::from_static("W/\"abc\""));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let tags = if_none_match(&mut h);
        assert_eq!(tags.len(), 2);
        assert!(!h.contains_key(header::IF_NONE_MATCH) && h.contains_key(header::ACCEPT));
        assert!(!matches(&[], "\"abc\""));
        assert!(matches(&tags, "\"abc\""));
        assert!(!matches(&tags, "\"abd\""));
        assert!(matches(
            &[HeaderValue::from_static("\"y\", W/\"abc\"")],
            "\"abc\""
        ));
        assert!(matches(&[HeaderValue::from_static("*")], "\"abd\""));
    }
}
