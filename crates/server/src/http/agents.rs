//! `/console/api/v1/agents`: join tokens (create, list, revoke) and agent
//! administration (list, disable, re-enable, revoke). Every change is
//! audited by the store in its transaction.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certflow_api::agent::{
    AgentList, AgentView, CreateJoinTokenRequest, JoinTokenInfo, JoinTokenList, JoinTokenView,
};
use certflow_core::agents::{Agent, AgentStatus, JoinToken};
use certflow_core::model::Actor;
use certflow_services::agents::{Agents, NewJoinToken};
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::errors::ApiResult;
use crate::extract::{Json, Path, Query, now};
use crate::state::{AppShared, AppState};

fn view(a: Agent) -> AgentView {
    AgentView {
        id: a.id,
        name: a.name,
        teams: a.teams,
        status: a.status.as_str().into(),
        certificate_serial: a.cert_serial,
        certificate_sha256: a.cert_fingerprint_sha256,
        certificate_not_after: a.cert_not_after,
        created_at: a.created_at,
        last_seen: a.last_seen,
    }
}

/// Creates a single-use join token.
#[utoipa::path(post, path = "/agents/join-tokens", tag = "agents",
    request_body = CreateJoinTokenRequest,
    responses((status = 201, body = JoinTokenView), (status = 400, body = certflow_api::Problem)))]
pub async fn create_join_token(
    State(app): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<CreateJoinTokenRequest>,
) -> ApiResult<Response> {
    let AppShared { agents, .. } = &*app;
    let created = agents
        .create_join_token(
            &actor,
            &NewJoinToken {
                name: req.name,
                teams: req.teams,
                ttl_minutes: req.ttl_minutes,
            },
            now(),
        )
        .await?;
    let r = created.record;
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenView {
            id: r.id,
            token: created.token,
            name: r.name,
            teams: r.teams,
            expires_at: r.expires_at,
        }),
    )
        .into_response())
}

/// Lists agents.
#[utoipa::path(get, path = "/agents", tag = "agents",
    responses((status = 200, body = AgentList)))]
pub async fn list_agents(State(app): State<AppState>) -> ApiResult<Json<AgentList>> {
    let AppShared { agents, .. } = &*app;
    let items = agents.list().await?.into_iter().map(view).collect();
    Ok(Json(AgentList { items }))
}

async fn set_status(
    agents: &Agents,
    actor: &Actor,
    id: Uuid,
    status: AgentStatus,
) -> ApiResult<Json<AgentView>> {
    let agent = agents.set_status(actor, id, status, now()).await?;
    Ok(Json(view(agent)))
}

/// Disables an agent: refused from its next request on.
#[utoipa::path(post, path = "/agents/{id}/disable", tag = "agents", params(("id" = Uuid, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = certflow_api::Problem), (status = 409, body = certflow_api::Problem)))]
pub async fn disable_agent(
    State(app): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<AgentView>> {
    let AppShared { agents, .. } = &*app;
    set_status(agents, &actor, id, AgentStatus::Disabled).await
}

/// Re-enables a disabled agent: its current identity certificate works
/// again. A revoked agent stays revoked (409).
#[utoipa::path(post, path = "/agents/{id}/enable", tag = "agents", params(("id" = Uuid, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = certflow_api::Problem), (status = 409, body = certflow_api::Problem)))]
pub async fn enable_agent(
    State(app): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<AgentView>> {
    let AppShared { agents, .. } = &*app;
    set_status(agents, &actor, id, AgentStatus::Active).await
}

/// Revokes an agent for good (enrol again with a new join token).
#[utoipa::path(post, path = "/agents/{id}/revoke", tag = "agents", params(("id" = Uuid, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = certflow_api::Problem)))]
pub async fn revoke_agent(
    State(app): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<AgentView>> {
    let AppShared { agents, .. } = &*app;
    set_status(agents, &actor, id, AgentStatus::Revoked).await
}

fn token_info(t: JoinToken, at: OffsetDateTime) -> JoinTokenInfo {
    let state = if t.used_at.is_some() {
        "used"
    } else if at >= t.expires_at {
        "expired"
    } else {
        "unused"
    };
    JoinTokenInfo {
        id: t.id,
        name: t.name,
        teams: t.teams,
        state: state.into(),
        expires_at: t.expires_at,
        created_by: t.created_by,
        created_at: t.created_at,
        used_at: t.used_at,
        agent_id: t.agent_id,
    }
}

/// Join token listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenParams {
    /// At most this many, newest first (1-500, default 100).
    #[serde(default = "default_token_limit")]
    pub limit: u32,
}

fn default_token_limit() -> u32 {
    100
}

/// Lists join tokens (id, name, teams, state and times; never the token).
#[utoipa::path(get, path = "/agents/join-tokens", tag = "agents", params(JoinTokenParams),
    responses((status = 200, body = JoinTokenList), (status = 400, body = certflow_api::Problem)))]
pub async fn list_join_tokens(
    State(app): State<AppState>,
    Query(q): Query<JoinTokenParams>,
) -> ApiResult<Json<JoinTokenList>> {
    let AppShared { agents, .. } = &*app;
    let at = now();
    let items = agents
        .join_tokens(q.limit)
        .await?
        .into_iter()
        .map(|t| token_info(t, at))
        .collect();
    Ok(Json(JoinTokenList { items }))
}

/// Revokes a join token that has not enrolled an agent: it expires at once.
/// A used token is a 409 (disable or revoke its agent instead).
#[utoipa::path(post, path = "/agents/join-tokens/{id}/revoke", tag = "agents", params(("id" = Uuid, Path)),
    responses((status = 200, body = JoinTokenInfo), (status = 404, body = certflow_api::Problem), (status = 409, body = certflow_api::Problem)))]
pub async fn revoke_join_token(
    State(app): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<JoinTokenInfo>> {
    let AppShared { agents, .. } = &*app;
    let at = now();
    let token = agents.revoke_join_token(&actor, id, at).await?;
    Ok(Json(token_info(token, at)))
}
