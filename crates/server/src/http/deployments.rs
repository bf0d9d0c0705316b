//! `/console/api/v1/agents/{id}/assignments` and
//! `/console/api/v1/certificates/{id}/deployments`: which certificates each
//! agent installs, and where each certificate stands on its agents.
//! Assigning is agent administration (admins); reading a certificate's
//! deployments follows the certificate's team, like the other certificate routes.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certflow_api::Problem;
use certflow_api::agent::{AssignRequest, DeploymentView};
use certflow_core::DomainError;
use certflow_core::access::{Permission, Principal};
use certflow_core::deployments::DeploymentState;
use certflow_core::model::Actor;
use time::OffsetDateTime;
use uuid::Uuid;

use super::AppState;
use super::access::check_team;
use super::console::{Json, Path, now};
use super::errors::{ApiError, ApiResult};
use crate::agent::deploy::DeployState;

fn deploy_state(ext: Option<Extension<DeployState>>) -> ApiResult<DeployState> {
    ext.map(|e| e.0).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "deployments-unavailable",
            "Deployments are not available",
            "this server does not manage deployments",
        )
    })
}

/// The console's view of one deployment state at `now`.
pub fn view(
    s: DeploymentState,
    now: OffsetDateTime,
    drift_after: time::Duration,
) -> DeploymentView {
    let drift = s.drifting(now, drift_after);
    let report = s.last_report;
    DeploymentView {
        agent_id: s.agent_id,
        agent_name: s.agent_name,
        certificate_id: s.assigned.certificate_id,
        current_version: s.assigned.version,
        deployed_version: report.as_ref().map(|d| d.version),
        fingerprint_sha256: report.as_ref().map(|d| d.fingerprint_sha256.clone()),
        status: report
            .as_ref()
            .map_or("pending", |d| d.status.as_str())
            .to_owned(),
        error: report.as_ref().and_then(|d| d.error.clone()),
        reported_at: report.as_ref().map(|d| d.reported_at),
        drift,
    }
}

fn views(state: &DeployState, list: Vec<DeploymentState>) -> Vec<DeploymentView> {
    let now = now();
    let drift_after = state.deployments.drift_after();
    list.into_iter()
        .map(|s| view(s, now, drift_after))
        .collect()
}

/// Certificates assigned to an agent, with where each stands.
#[utoipa::path(get, path = "/agents/{id}/assignments", tag = "agents", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<DeploymentView>), (status = 404, body = Problem)))]
pub async fn list_assignments(
    ext: Option<Extension<DeployState>>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<DeploymentView>>> {
    let state = deploy_state(ext)?;
    let list = state.deployments.agent_deployments(id).await?;
    Ok(Json(views(&state, list)))
}

/// Assigns a certificate (of one of the agent's teams) to an agent: 201,
/// or 200 if it already was.
#[utoipa::path(post, path = "/agents/{id}/assignments", tag = "agents", params(("id" = Uuid, Path)),
    request_body = AssignRequest,
    responses((status = 201, body = DeploymentView), (status = 200, body = DeploymentView),
        (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn assign(
    ext: Option<Extension<DeployState>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    Json(req): Json<AssignRequest>,
) -> ApiResult<Response> {
    let state = deploy_state(ext)?;
    let (s, created) = state
        .deployments
        .assign(&actor, id, req.certificate_id, now())
        .await?;
    if created {
        state.assignments_changed(id).await;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let drift_after = state.deployments.drift_after();
    Ok((status, Json(view(s, now(), drift_after))).into_response())
}

/// Removes an assignment: the agent stops seeing the certificate.
#[utoipa::path(delete, path = "/agents/{id}/assignments/{certificate_id}", tag = "agents",
    params(("id" = Uuid, Path), ("certificate_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn unassign(
    ext: Option<Extension<DeployState>>,
    Extension(actor): Extension<Actor>,
    Path((id, certificate_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    let state = deploy_state(ext)?;
    state
        .deployments
        .unassign(&actor, id, certificate_id, now())
        .await?;
    state.assignments_changed(id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Where a certificate stands on each agent it is assigned to.
#[utoipa::path(get, path = "/certificates/{id}/deployments", tag = "certificates", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<DeploymentView>), (status = 404, body = Problem)))]
pub async fn certificate_deployments(
    State(app): State<AppState>,
    ext: Option<Extension<DeployState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<DeploymentView>>> {
    // The team first: a caller outside it learns nothing, not even whether
    // this server manages deployments.
    let cert = app
        .services
        .store()
        .get_certificate(id)
        .await?
        .ok_or_else(|| DomainError::NotFound(format!("certificate {id}")))?;
    check_team(&principal, Permission::CertificateRead, &cert.team)?;
    let state = deploy_state(ext)?;
    let list = state.deployments.certificate_deployments(id).await?;
    Ok(Json(views(&state, list)))
}
