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
use certflow_core::access::{Permission, Principal};
use certflow_core::deployments::DeploymentState;
use certflow_core::model::Actor;
use uuid::Uuid;

use super::AppState;
use crate::deploy_cache::DeployState;
use crate::errors::ApiResult;
use crate::extract::{Json, Path, now};
use crate::state::AppShared;
use crate::views::view;

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
    State(app): State<AppState>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<DeploymentView>>> {
    let AppShared { deploy: state, .. } = &*app;
    let list = state.deployments.agent_deployments(id).await?;
    Ok(Json(views(state, list)))
}

/// Assigns a certificate (of one of the agent's teams) to an agent: 201,
/// or 200 if it already was.
#[utoipa::path(post, path = "/agents/{id}/assignments", tag = "agents", params(("id" = Uuid, Path)),
    request_body = AssignRequest,
    responses((status = 201, body = DeploymentView), (status = 200, body = DeploymentView),
        (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn assign(
    State(app): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
    Json(req): Json<AssignRequest>,
) -> ApiResult<Response> {
    let AppShared { deploy: state, .. } = &*app;
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
    State(app): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, certificate_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    let AppShared { deploy: state, .. } = &*app;
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
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<DeploymentView>>> {
    // The team first: a caller outside it learns nothing.
    app.services
        .certificate_for(&principal, Permission::CertificateRead, id)
        .await?;
    let state = &app.deploy;
    let list = state.deployments.certificate_deployments(id).await?;
    Ok(Json(views(state, list)))
}
