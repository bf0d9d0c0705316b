//! Discovery in the console API (agents post what they found on the agent
//! listener, `crate::agent_api::discovery`): the console lists it (`GET
//! /console/api/v1/discovered`) and takes an unmanaged certificate over
//! (`POST /console/api/v1/discovered/{id}/take-over`).

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use certflow_api::agent::{DiscoveredList, DiscoveredView, TakeOverRequest};
use certflow_api::{CertificateDetail, Problem};
use certflow_core::access::{Permission, Principal};
use certflow_core::discovery::{Discovered, DiscoveryStatus};
use certflow_core::model::Actor;
use uuid::Uuid;

use super::AppState;
use super::console::detail;
use crate::errors::{ApiError, ApiResult};
use crate::extract::{Json, Path, now};
use crate::state::AppShared;

/// The console's view of a discovery.
pub fn view(d: Discovered) -> DiscoveredView {
    DiscoveredView {
        id: d.id,
        agent_id: d.agent_id,
        agent_name: d.agent_name,
        source: d.item.source,
        fingerprint_sha256: d.item.fingerprint_sha256,
        serial: d.item.serial,
        subject: d.item.subject,
        issuer: d.item.issuer,
        names: d.item.names,
        not_after: d.item.not_after,
        first_seen: d.first_seen,
        last_seen: d.last_seen,
        managed_certificate_id: d.managed.map(|(id, _)| id),
        taken_over_certificate_id: d.taken_over_certificate_id,
    }
}

/// Parsed `GET /discovered` query.
#[derive(Debug, Default)]
struct ListQuery {
    status: DiscoveryStatus,
    agent: Option<Uuid>,
    team: Option<String>,
}

fn parse_query(raw: Option<&str>) -> ApiResult<ListQuery> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::invalid_field("query", e.to_string()))?;
    let mut q = ListQuery::default();
    for (k, v) in pairs {
        match k.as_str() {
            "status" => {
                q.status = DiscoveryStatus::parse(&v).ok_or_else(|| {
                    ApiError::invalid_field(
                        "status",
                        format!("'{v}' is not one of unmanaged, managed, all"),
                    )
                })?;
            }
            "agent" => {
                q.agent = Some(Uuid::parse_str(&v).map_err(|_| {
                    ApiError::invalid_field("agent", format!("'{v}' is not an agent id"))
                })?);
            }
            "team" => q.team = Some(v).filter(|t| !t.is_empty()),
            other => return Err(ApiError::invalid_field(other, "unknown query parameter")),
        }
    }
    Ok(q)
}

/// Certificates agents found on their hosts: unmanaged ones by default.
/// Team-scoped: a discovery is visible to the teams of the agent that
/// found it (admins see all).
#[utoipa::path(get, path = "/discovered", tag = "agents",
    params(
        ("status" = Option<String>, Query, description = "`unmanaged` (default), `managed` or `all`"),
        ("agent" = Option<Uuid>, Query, description = "Only this agent's discoveries"),
        ("team" = Option<String>, Query, description = "Only discoveries of this team's agents"),
    ),
    responses((status = 200, body = DiscoveredList), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<DiscoveredList>> {
    let AppShared { deploy: state, .. } = &*app;
    let q = parse_query(raw.as_deref())?;
    let teams = principal.scope(Permission::CertificateRead, q.team.as_deref())?;
    let items = state
        .discovery
        .list(&teams, q.status, q.agent)
        .await?
        .into_iter()
        .map(view)
        .collect();
    Ok(Json(DiscoveredList { items }))
}

/// Takes a discovered certificate over: certflow issues a new certificate
/// for its names in `team` (one of the discovering agent's teams; issuance
/// policies apply), assigns it to that agent, and renews it from then on.
/// Answers like `POST /certificates`.
#[utoipa::path(post, path = "/discovered/{id}/take-over", tag = "agents",
    params(("id" = Uuid, Path)),
    request_body = TakeOverRequest,
    responses((status = 201, body = CertificateDetail), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn take_over(
    State(app): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
    Json(req): Json<TakeOverRequest>,
) -> ApiResult<Response> {
    principal.authorize(Permission::CertificateWrite, Some(&req.team))?;
    let state = &app.deploy;
    let teams = principal.readable_teams();
    let view = state
        .discovery
        .take_over(&actor, &teams, id, &req, now())
        .await?;
    let agent = state.discovery.get(&teams, id).await?.agent_id;
    state.assignments_changed(agent).await;
    let location = format!("/console/api/v1/certificates/{}", view.certificate.id);
    let body = detail(&app, view).await?;
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}
