//! `POST /agent/v1/discovered`: an agent's whole current view of the
//! certificates on its host (files, directories, TLS endpoints), stored for
//! the console's Discovered page and the compliance report.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use certflow_api::agent::DiscoveryReport;
use certflow_core::DomainError;
use certflow_core::access::Permission;

use super::routes::{AgentCaller, AgentState};
use crate::errors::ApiResult;
use crate::extract::{Json, now};

/// Largest discovery report body: 2000 items with their leaf PEMs (a few
/// KiB each for RSA-4096) fit; the agent listener's default is 64 KiB.
pub const DISCOVERY_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// `POST /agent/v1/discovered`: the agent's whole current view, replacing
/// its previous report (behind the agent guard, like `/agent/v1/reports`).
pub async fn agent_report(
    State(state): State<AgentState>,
    Extension(caller): Extension<AgentCaller>,
    Json(req): Json<DiscoveryReport>,
) -> ApiResult<StatusCode> {
    if !caller.principal.can(Permission::AgentApi, None) {
        return Err(DomainError::Forbidden("agent API calls are for agents".into()).into());
    }
    state
        .deploy
        .deployments
        .record_discovery(&caller.agent, Some(caller.source.clone()), &req, now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
