//! `GET /console/`: counts by status, the expiry timeline of the next 90
//! days (an SVG drawn here, with the same numbers in a table), failing
//! renewals and agents not seen recently.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use certflow_core::access::{Permission, Principal};
use certflow_core::agents::AgentStatus;
use certflow_core::model::{AuditQuery, CertificateStatus};
use time::{Duration, OffsetDateTime};

use super::deployments::{DeployRow, undeployed};
use super::{Ctx, Layout, PageError, PageResult, html, relative, sign_in_page, when};
use crate::state::AppState;

/// Weeks on the timeline: 13 weeks, the next 91 days.
const WEEKS: i64 = 13;

/// An agent is "not seen recently" after this long without a request.
const AGENT_QUIET: Duration = Duration::hours(1);

/// Geometry of the SVG chart (user units of its viewBox).
const CHART_W: u64 = 720;
const CHART_H: u64 = 220;
const PLOT_TOP: u64 = 20;
const PLOT_BOTTOM: u64 = 180;
const PLOT_LEFT: u64 = 40;

/// One week's bar.
pub(crate) struct Bar {
    /// Left edge.
    pub x: u64,
    /// Top edge.
    pub y: u64,
    /// Width.
    pub w: u64,
    /// Height.
    pub h: u64,
    /// Certificates expiring that week.
    pub count: u64,
    /// Centre of the bar (for its labels).
    pub mid: u64,
    /// First day of the week, `Mar 03`.
    pub label: String,
    /// The week's span, for the tooltip and the table.
    pub range: String,
}

/// Lays out `counts` (one per week starting at `start`) as bars.
pub(crate) fn bars(counts: &[u64], start: OffsetDateTime) -> Vec<Bar> {
    let n = counts.len().max(1) as u64;
    let slot = (CHART_W - PLOT_LEFT) / n;
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let plot_h = PLOT_BOTTOM - PLOT_TOP;
    counts
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let i = i as u64;
            // At least 2 units high when not zero, so a lone certificate shows.
            let h = if count == 0 {
                0
            } else {
                (count * plot_h / max).max(2)
            };
            let from = start + Duration::days(7 * i as i64);
            let to = from + Duration::days(6);
            Bar {
                x: PLOT_LEFT + i * slot + 4,
                y: PLOT_BOTTOM - h,
                w: slot - 8,
                h,
                count,
                mid: PLOT_LEFT + i * slot + slot / 2,
                label: day(from),
                range: format!("{} – {}", day(from), day(to)),
            }
        })
        .collect()
}

fn day(t: OffsetDateTime) -> String {
    let m = t.month().to_string();
    format!("{} {:02}", &m[..3.min(m.len())], t.day())
}

/// A failing renewal for the dashboard.
pub(crate) struct Failing {
    id: String,
    name: String,
    team: String,
    at: String,
    error: String,
    dead: bool,
}

/// An agent not heard from recently.
pub(crate) struct QuietAgent {
    name: String,
    last_seen: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    l: Layout,
    teams: String,
    active: u64,
    revoked: u64,
    archived: u64,
    expired_active: u64,
    expiring_30: u64,
    bars: Vec<Bar>,
    max: u64,
    chart_w: u64,
    chart_h: u64,
    plot_bottom: u64,
    plot_left: u64,
    failing: Vec<Failing>,
    agents_shown: bool,
    quiet: Vec<QuietAgent>,
    /// Current versions failed or late on an agent (at most [`UNDEPLOYED_SHOWN`]).
    undeployed: Vec<DeployRow>,
    undeployed_total: usize,
}

/// Undeployed versions listed on the dashboard.
const UNDEPLOYED_SHOWN: usize = 20;

/// `GET /console/`: the dashboard, or the sign-in start page without a
/// session (the console's front door says what it is before sending anyone
/// to a provider).
pub(super) async fn page(
    ctx: Result<Ctx, PageError>,
    State(state): State<AppState>,
) -> PageResult<Response> {
    match ctx {
        Ok(ctx) => dashboard(ctx, state).await,
        Err(PageError::SignIn(return_to)) => match state.sign_in_provider.as_deref() {
            Some(provider) => Ok(sign_in_page(provider, &return_to)),
            None => Err(PageError::SignIn(return_to)),
        },
        Err(e) => Err(e),
    }
}

async fn dashboard(ctx: Ctx, state: AppState) -> PageResult<Response> {
    let now = crate::extract::now();
    let p = ctx.principal();
    let teams = p.readable_teams().into_teams();
    // One grouped statement for every number below (by status, and active
    // certificates expiring before now, each week's end and 30 days out):
    // cumulative counts whose differences give each week.
    let mut edges = vec![now];
    edges.extend((1..=WEEKS).map(|w| now + Duration::days(7 * w)));
    edges.push(now + Duration::days(30));
    let counts = state
        .services
        .store()
        .certificate_counts(teams.as_deref(), &edges)
        .await?;
    let of = |st: CertificateStatus| {
        counts
            .by_status
            .iter()
            .find(|(s, _)| *s == st)
            .map_or(0, |(_, n)| *n)
    };
    let (active, revoked, archived) = (
        of(CertificateStatus::Active),
        of(CertificateStatus::Revoked),
        of(CertificateStatus::Archived),
    );
    let before = &counts.active_expiring_before;
    let expired_active = before.first().copied().unwrap_or(0);
    let cumulative = &before[..before.len().saturating_sub(1)];
    let weekly: Vec<u64> = cumulative
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    let expiring_30 = before
        .last()
        .copied()
        .unwrap_or(0)
        .saturating_sub(expired_active);

    let failing = failing_renewals(&state, p, now).await?;

    let (undeployed, undeployed_total) =
        undeployed(&state.deploy, &state.agents, &teams, UNDEPLOYED_SHOWN).await?;

    let agents_shown = p.can(Permission::AgentAdmin, None);
    let quiet = if agents_shown {
        quiet_agents(&state, now).await?
    } else {
        Vec::new()
    };

    let bars = bars(&weekly, now);
    Ok(html(&Dashboard {
        l: ctx.layout("Dashboard", "dashboard"),
        teams: match &teams {
            None => "all teams".into(),
            Some(t) if t.is_empty() => "no team".into(),
            Some(t) => t.join(", "),
        },
        active,
        revoked,
        archived,
        expired_active,
        expiring_30,
        max: weekly.iter().copied().max().unwrap_or(0),
        bars,
        chart_w: CHART_W,
        chart_h: CHART_H,
        plot_bottom: PLOT_BOTTOM,
        plot_left: PLOT_LEFT,
        failing,
        agents_shown,
        quiet,
        undeployed,
        undeployed_total,
    }))
}

/// Renewals that failed in the last week, newest first, one per certificate
/// `p` may read (at most 10), unless a newer renewal superseded the failure.
async fn failing_renewals(
    state: &AppState,
    p: &Principal,
    now: OffsetDateTime,
) -> PageResult<Vec<Failing>> {
    let events = state
        .services
        .audit(&AuditQuery {
            action_prefix: Some("certificate.renewal.".into()),
            since: Some(now - Duration::days(7)),
            limit: 50,
            ..Default::default()
        })
        .await?;
    let mut failing: Vec<Failing> = Vec::new();
    for e in events.items {
        let Some(id) = e
            .target
            .strip_prefix("certificate/")
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
        else {
            continue;
        };
        if failing.iter().any(|f| f.id == id.to_string()) || failing.len() >= 10 {
            continue;
        }
        let Some(cert) = state.services.store().get_certificate(id).await? else {
            continue;
        };
        if !p.may(Permission::CertificateRead, &cert) {
            continue;
        }
        // A newer renewal supersedes the failure.
        if cert.updated_at > e.at && e.action.ends_with(".failed") {
            continue;
        }
        failing.push(Failing {
            id: id.to_string(),
            name: cert.name,
            team: cert.team,
            at: when(e.at),
            error: e
                .details
                .get("error")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
            dead: e.action.ends_with("dead-lettered"),
        });
    }
    Ok(failing)
}

/// Active agents not seen within [`AGENT_QUIET`], or never.
async fn quiet_agents(state: &AppState, now: OffsetDateTime) -> PageResult<Vec<QuietAgent>> {
    let mut quiet = Vec::new();
    for a in state.agents.list().await? {
        if a.status != AgentStatus::Active {
            continue;
        }
        match a.last_seen {
            Some(t) if now - t < AGENT_QUIET => {}
            Some(t) => quiet.push(QuietAgent {
                name: a.name,
                last_seen: format!("{} ({})", when(t), relative(t, now)),
            }),
            None => quiet.push(QuietAgent {
                name: a.name,
                last_seen: "never".into(),
            }),
        }
    }
    Ok(quiet)
}
