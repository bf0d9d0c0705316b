//! Operations pages: agents (list, join tokens, disable), the audit log
//! (filterable), issuers and notification subscriptions.

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use certflow_core::DomainError;
use certflow_core::access::{Permission, TeamScope};
use certflow_core::agents::AgentStatus;
use certflow_core::model::{AuditQuery, IssuerKind, Outcome};
use certflow_services::agents::NewJoinToken;
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::{self, AuditRow};
use super::deployments::{self, DeployRow};
use super::{Ctx, Layout, PageResult, html, redirect, relative, when};
use crate::extract::now;
use crate::state::AppState;

/// Audit events per page.
const AUDIT_PAGE: u32 = 50;

fn require(ctx: &Ctx, permission: Permission, what: &str) -> PageResult<()> {
    if ctx.principal().can(permission, None) {
        Ok(())
    } else {
        Err(DomainError::Forbidden(format!("{} may not {what}", ctx.principal().subject)).into())
    }
}

// ------------------------------------------------------------------- agents

/// An agent row.
pub(crate) struct AgentRow {
    id: String,
    name: String,
    teams: String,
    status: &'static str,
    active: bool,
    last_seen: String,
    identity_expires: String,
    enrolled: String,
    /// The agent software's version, from its latest report.
    version: String,
    /// Its assignments with the last report about each.
    deployments: Vec<DeployRow>,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    l: Layout,
    agents: Vec<AgentRow>,
    notice: &'static str,
    /// A join token just created: shown once.
    token: String,
    token_name: String,
    token_expires: String,
    error: String,
    form_name: String,
    form_teams: String,
    form_ttl: String,
}

/// The agent software version of the most recent report among `rows`.
fn latest_version(rows: &[DeployRow]) -> String {
    rows.iter()
        .filter(|r| !r.agent_version.is_empty())
        .max_by_key(|r| r.reported_at)
        .map(|r| r.agent_version.clone())
        .unwrap_or_default()
}

async fn agents_page(ctx: &Ctx, app: &AppState, mut page: AgentsPage) -> PageResult<Response> {
    let now = now();
    let list = app.agents.list().await?;
    let mut per_agent = deployments::by_agent(&app.deploy, &list).await?;
    page.agents = list
        .into_iter()
        .map(|a| {
            let deployments = per_agent
                .iter_mut()
                .find(|(id, _)| *id == a.id)
                .map(|(_, rows)| std::mem::take(rows))
                .unwrap_or_default();
            AgentRow {
                id: a.id.to_string(),
                name: a.name,
                teams: a.teams.join(", "),
                status: a.status.as_str(),
                active: a.status == AgentStatus::Active,
                last_seen: a
                    .last_seen
                    .map(|t| format!("{} ({})", when(t), relative(t, now)))
                    .unwrap_or_else(|| "never".into()),
                identity_expires: when(a.cert_not_after),
                enrolled: when(a.created_at),
                version: latest_version(&deployments),
                deployments,
            }
        })
        .collect();
    let status = if page.error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    page.l = ctx.layout("Agents", "agents");
    let mut resp = html(&page);
    *resp.status_mut() = status;
    Ok(resp)
}

fn blank_agents(ctx: &Ctx) -> AgentsPage {
    AgentsPage {
        l: ctx.layout("Agents", "agents"),
        agents: Vec::new(),
        notice: "",
        token: String::new(),
        token_name: String::new(),
        token_expires: String::new(),
        error: String::new(),
        form_name: String::new(),
        form_teams: String::new(),
        form_ttl: "60".into(),
    }
}

/// `GET /console/agents`.
pub(super) async fn agents(
    ctx: Ctx,
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    require(&ctx, Permission::AgentAdmin, "administer agents")?;
    let mut page = blank_agents(&ctx);
    if raw.as_deref() == Some("done=disabled") {
        page.notice = "The agent was disabled: its next request is refused.";
    }
    agents_page(&ctx, &app, page).await
}

/// `POST /console/agents/join-token`: a single-use join token, shown once.
pub(super) async fn join_token(
    ctx: Ctx,
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    require(&ctx, Permission::AgentAdmin, "administer agents")?;
    let mut page = blank_agents(&ctx);
    page.form_name = form.get("name").trim().to_owned();
    page.form_teams = form.get("teams").to_owned();
    page.form_ttl = form.get("ttl_minutes").trim().to_owned();
    let Ok(ttl_minutes) = page.form_ttl.parse::<u32>() else {
        page.error = "Expires after: a whole number of minutes (1-1440)".into();
        return agents_page(&ctx, &app, page).await;
    };
    let teams = page
        .form_teams
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    match app
        .agents
        .create_join_token(
            &ctx.actor,
            &NewJoinToken {
                name: page.form_name.clone(),
                teams,
                ttl_minutes,
            },
            now(),
        )
        .await
    {
        Ok(created) => {
            page.token = created.token;
            page.token_name = created.record.name;
            page.token_expires = when(created.record.expires_at);
            page.form_name.clear();
            page.form_teams.clear();
            page.form_ttl = "60".into();
        }
        Err(DomainError::Invalid(fields)) => {
            page.error = fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
        }
        Err(e) => return Err(e.into()),
    }
    agents_page(&ctx, &app, page).await
}

/// `POST /console/agents/{id}/disable`.
pub(super) async fn disable_agent(
    ctx: Ctx,
    State(app): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    ctx.form(&headers, &body)?;
    require(&ctx, Permission::AgentAdmin, "administer agents")?;
    app.agents
        .set_status(&ctx.actor, id, AgentStatus::Disabled, now())
        .await?;
    Ok(redirect("/console/agents?done=disabled"))
}

// -------------------------------------------------------------------- audit

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    l: Layout,
    target: String,
    action: String,
    subject: String,
    outcome: String,
    since: String,
    until: String,
    error: String,
    hint: String,
    rows: Vec<AuditRow>,
    total: u64,
    prev: String,
    next: String,
}

fn day_start(field: &str, v: &str) -> Result<Option<OffsetDateTime>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(v, &format)
        .map(|d| Some(d.midnight().assume_utc()))
        .map_err(|_| format!("{field}: a date, YYYY-MM-DD"))
}

/// `GET /console/audit`: the trail, newest first, filterable. Administrators
/// read all of it; others one certificate of their teams at a time (the API's rule).
pub(super) async fn audit(
    ctx: Ctx,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    require(&ctx, Permission::AuditRead, "read the audit trail")?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let page_no: u64 = get("page").parse().unwrap_or(0);
    let mut page = AuditPage {
        l: ctx.layout("Audit log", "audit"),
        target: get("target"),
        action: get("action"),
        subject: get("subject"),
        outcome: get("outcome"),
        since: get("since"),
        until: get("until"),
        error: String::new(),
        hint: String::new(),
        rows: Vec::new(),
        total: 0,
        prev: String::new(),
        next: String::new(),
    };
    let p = ctx.principal();
    if p.teams_with(Permission::AuditRead) != TeamScope::All {
        let id = page
            .target
            .strip_prefix("certificate/")
            .and_then(|id| Uuid::parse_str(id).ok());
        match id {
            None => {
                page.hint = "Only administrators read the whole trail: open a certificate's \
                             history from its page, or filter by target certificate/<id>."
                    .into();
                return Ok(html(&page));
            }
            Some(id) => {
                state
                    .services
                    .certificate_for(p, Permission::AuditRead, id)
                    .await?;
            }
        }
    }
    let outcome = match page.outcome.as_str() {
        "" => None,
        "success" => Some(Outcome::Success),
        "failure" => Some(Outcome::Failure),
        _ => {
            page.error = "outcome: success or failure".into();
            None
        }
    };
    let since = day_start("since", &page.since).unwrap_or_else(|e| {
        page.error = e;
        None
    });
    let until = day_start("until", &page.until)
        .map(|d| d.map(|d| d + time::Duration::days(1)))
        .unwrap_or_else(|e| {
            page.error = e;
            None
        });
    if !page.error.is_empty() {
        let mut resp = html(&page);
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(resp);
    }
    let result = state
        .services
        .audit(&AuditQuery {
            target: Some(page.target.clone()).filter(|s| !s.is_empty()),
            action_prefix: Some(page.action.clone()).filter(|s| !s.is_empty()),
            subject: Some(page.subject.clone()).filter(|s| !s.is_empty()),
            outcome,
            since,
            until,
            limit: AUDIT_PAGE,
            offset: page_no * u64::from(AUDIT_PAGE),
        })
        .await?;
    page.total = result.total;
    page.rows = audit::rows(&state, ctx.principal(), &result.items).await?;
    let query = |n: u64| {
        let mut kept: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, v)| k != "page" && !v.is_empty())
            .cloned()
            .collect();
        kept.push(("page".into(), n.to_string()));
        serde_urlencoded::to_string(kept).unwrap_or_default()
    };
    if page_no > 0 {
        page.prev = query(page_no - 1);
    }
    if (page_no + 1) * u64::from(AUDIT_PAGE) < result.total {
        page.next = query(page_no + 1);
    }
    Ok(html(&page))
}

// ------------------------------------------------------------------ issuers

/// An issuer.
pub(crate) struct IssuerRow {
    id: String,
    name: String,
    kind: &'static str,
    default: bool,
    key_type: &'static str,
    subject: String,
    not_after: String,
    created: String,
    chain_pem: String,
}

#[derive(Template)]
#[template(path = "issuers.html")]
struct IssuersPage {
    l: Layout,
    issuers: Vec<IssuerRow>,
}

/// `GET /console/issuers`.
pub(super) async fn issuers(ctx: Ctx, State(state): State<AppState>) -> PageResult<Response> {
    require(&ctx, Permission::IssuerRead, "read issuers")?;
    let issuers = state
        .services
        .issuers()
        .await?
        .into_iter()
        .map(|i| IssuerRow {
            id: i.id.to_string(),
            name: i.name,
            kind: match i.kind {
                IssuerKind::Internal => "internal CA",
                IssuerKind::Acme => "ACME",
                IssuerKind::External => "external",
            },
            default: i.is_default,
            key_type: i.key_type.as_str(),
            subject: i.subject,
            not_after: when(i.not_after),
            created: when(i.created_at),
            chain_pem: format!("{}{}", i.issuing_cert_pem, i.chain_pem),
        })
        .collect();
    Ok(html(&IssuersPage {
        l: ctx.layout("Issuers", "issuers"),
        issuers,
    }))
}

// ------------------------------------------------------------ subscriptions

/// A subscription.
pub(crate) struct SubscriptionRow {
    team: String,
    events: String,
    channel: String,
    created: String,
}

#[derive(Template)]
#[template(path = "subscriptions.html")]
struct SubscriptionsPage {
    l: Layout,
    subscriptions: Vec<SubscriptionRow>,
}

/// `GET /console/subscriptions`: the caller's teams' subscriptions (secrets redacted).
pub(super) async fn subscriptions(ctx: Ctx, State(state): State<AppState>) -> PageResult<Response> {
    require(&ctx, Permission::NotificationRead, "read subscriptions")?;
    let readable = ctx.principal().teams_with(Permission::NotificationRead);
    let subscriptions = state
        .services
        .subscriptions(None)
        .await?
        .iter()
        .filter(|s| readable.allows(&s.team))
        .map(|s| SubscriptionRow {
            team: s.team.clone(),
            events: s
                .events
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            channel: certflow_services::redacted(&s.channel).to_string(),
            created: when(s.created_at),
        })
        .collect();
    Ok(html(&SubscriptionsPage {
        l: ctx.layout("Notification subscriptions", "subscriptions"),
        subscriptions,
    }))
}
