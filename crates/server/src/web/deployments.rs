//! Deployments in the console: where a certificate stands on each agent it
//! is assigned to (certificate page), what each agent installs and reported
//! (agents page), the versions not deployed (dashboard), and assigning or
//! unassigning an agent (administrators, as in the API).
//!
//! The rows come from the same use cases as `/console/api/v1/.../deployments`
//! and [`crate::views::view`] decides status and drift, so the
//! page and the API never disagree.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use certflow_core::DomainError;
use certflow_core::access::Permission;
use certflow_core::agents::{Agent, AgentStatus};
use certflow_core::deployments::DeploymentState;
use certflow_core::model::CertificateStatus;
use certflow_services::agents::Agents;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Ctx, Form, PageError, PageResult, redirect, relative, when};
use crate::deploy_cache::DeployState;
use crate::extract::now;
use crate::state::AppState;

/// One (agent, certificate) deployment as a table row.
pub(crate) struct DeployRow {
    pub agent_id: String,
    pub agent_name: String,
    pub certificate_id: String,
    pub certificate_name: String,
    pub team: String,
    /// The version the host should serve.
    pub current: u32,
    /// The version it serves, as reported ("none" before any report).
    pub deployed: String,
    /// `installed`, `failed`, `broken` or `pending` (never reported).
    pub status: String,
    /// The current version is installed.
    pub up_to_date: bool,
    /// The current version is late (issued longer ago than the drift tolerance).
    pub drift: bool,
    pub error: String,
    pub reported: String,
    /// When the last report arrived.
    pub reported_at: Option<OffsetDateTime>,
    /// The agent software's version from its last report.
    pub agent_version: String,
}

/// The row of `s` at `now`.
pub(crate) fn row(
    s: DeploymentState,
    now: OffsetDateTime,
    drift_after: time::Duration,
) -> DeployRow {
    let up_to_date = s.current_installed();
    let certificate_name = s.assigned.name.clone();
    let team = s.assigned.team.clone();
    let agent_version = s
        .last_report
        .as_ref()
        .and_then(|d| d.agent_version.clone())
        .unwrap_or_default();
    let attempted = s.last_report.as_ref().and_then(|d| d.attempted_version);
    let v = crate::views::view(s, now, drift_after);
    let mut error = v.error.unwrap_or_default();
    if let Some(a) = attempted.filter(|a| Some(*a) != v.deployed_version) {
        error = if error.is_empty() {
            format!("while installing version {a}")
        } else {
            format!("version {a}: {error}")
        };
    }
    DeployRow {
        agent_id: v.agent_id.to_string(),
        agent_name: v.agent_name,
        certificate_id: v.certificate_id.to_string(),
        certificate_name,
        team,
        current: v.current_version,
        deployed: match v.deployed_version {
            Some(0) | None => "none".into(),
            Some(n) => n.to_string(),
        },
        status: v.status,
        up_to_date,
        drift: v.drift,
        error: error.chars().take(300).collect(),
        reported: v
            .reported_at
            .map(|t| format!("{} ({})", when(t), relative(t, now)))
            .unwrap_or_else(|| "never".into()),
        reported_at: v.reported_at,
        agent_version,
    }
}

/// Where certificate `id` stands on each of its agents.
pub(crate) async fn certificate_rows(deploy: &DeployState, id: Uuid) -> PageResult<Vec<DeployRow>> {
    let now = now();
    let drift_after = deploy.deployments.drift_after();
    Ok(deploy
        .deployments
        .certificate_deployments(id)
        .await?
        .into_iter()
        .map(|s| row(s, now, drift_after))
        .collect())
}

/// Every deployment of every agent, by agent (one query per agent).
pub(crate) async fn by_agent(
    deploy: &DeployState,
    agents: &[Agent],
) -> PageResult<Vec<(Uuid, Vec<DeployRow>)>> {
    let now = now();
    let drift_after = deploy.deployments.drift_after();
    let mut out = Vec::with_capacity(agents.len());
    for a in agents {
        let rows = deploy
            .deployments
            .agent_deployments(a.id)
            .await?
            .into_iter()
            .map(|s| row(s, now, drift_after))
            .collect();
        out.push((a.id, rows));
    }
    Ok(out)
}

/// Undeployed versions for the dashboard: active certificates of `teams`
/// (`None`: all) whose current version failed to install on an active
/// agent, or is late there (drift). Failures first, at most `limit`.
pub(crate) async fn undeployed(
    deploy: &DeployState,
    agents: &Agents,
    teams: &Option<Vec<String>>,
    limit: usize,
) -> PageResult<(Vec<DeployRow>, usize)> {
    let now = now();
    let drift_after = deploy.deployments.drift_after();
    let mut found = Vec::new();
    for a in agents.list().await? {
        if a.status != AgentStatus::Active {
            continue;
        }
        // Only agents sharing a team with the reader can hold its certificates.
        if let Some(t) = teams
            && !a.teams.iter().any(|at| t.contains(at))
        {
            continue;
        }
        for s in deploy.deployments.agent_deployments(a.id).await? {
            if s.assigned.status != CertificateStatus::Active
                || teams
                    .as_ref()
                    .is_some_and(|t| !t.contains(&s.assigned.team))
                || s.current_installed()
            {
                continue;
            }
            let r = row(s, now, drift_after);
            if r.drift || r.status == "failed" || r.status == "broken" {
                found.push(r);
            }
        }
    }
    let total = found.len();
    // Failed installs first, then late ones.
    found.sort_by_key(|r| {
        (
            !(r.status == "failed" || r.status == "broken"),
            r.certificate_name.clone(),
            r.agent_name.clone(),
        )
    });
    found.truncate(limit);
    Ok((found, total))
}

fn agent_field(form: &Form) -> PageResult<Uuid> {
    Uuid::parse_str(form.get("agent_id")).map_err(|_| {
        PageError::Status(
            StatusCode::BAD_REQUEST,
            "agent_id: choose an agent from the list".into(),
        )
    })
}

fn require_agent_admin(ctx: &Ctx) -> PageResult<()> {
    if ctx.principal().can(Permission::AgentAdmin, None) {
        Ok(())
    } else {
        Err(DomainError::Forbidden(format!(
            "{} may not assign certificates to agents",
            ctx.principal().subject
        ))
        .into())
    }
}

/// `POST /console/certificates/{id}/assign`: give the certificate to the
/// agent `agent_id` (administrators; the agent must share its team).
pub(super) async fn assign(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    require_agent_admin(&ctx)?;
    state
        .services
        .certificate_for(ctx.principal(), Permission::CertificateRead, id)
        .await?;
    let deploy = &state.deploy;
    let agent = agent_field(&form)?;
    let created = match deploy
        .deployments
        .assign(&ctx.actor, agent, id, now())
        .await
    {
        Ok((_, created)) => created,
        Err(DomainError::Invalid(fields)) => {
            return Err(PageError::Status(
                StatusCode::BAD_REQUEST,
                fields
                    .iter()
                    .map(|f| f.reason.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if created {
        deploy.assignments_changed(agent).await;
    }
    Ok(redirect(&format!(
        "/console/certificates/{id}?done=assigned"
    )))
}

/// `POST /console/certificates/{id}/unassign`: the agent `agent_id` stops
/// installing the certificate (administrators).
pub(super) async fn unassign(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    require_agent_admin(&ctx)?;
    state
        .services
        .certificate_for(ctx.principal(), Permission::CertificateRead, id)
        .await?;
    let deploy = &state.deploy;
    let agent = agent_field(&form)?;
    deploy
        .deployments
        .unassign(&ctx.actor, agent, id, now())
        .await?;
    deploy.assignments_changed(agent).await;
    Ok(redirect(&format!(
        "/console/certificates/{id}?done=unassigned"
    )))
}
