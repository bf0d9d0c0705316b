//! `POST /agent/v1/discovered`: an agent's whole current view of the
//! certificates on its host (files, directories, TLS endpoints), stored for
//! the console's Discovered page and the compliance report.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use certflow_api::agent::DiscoveryReport;

use super::routes::{AgentCaller, AgentState, require_agent_api};
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
    require_agent_api(&caller)?;
    state
        .deploy
        .discovery
        .record(&caller.agent, Some(caller.source.clone()), &req, now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
