//! `/console/compliance`: the inventory compliance report as a table,
//! filtered by severity, with a link to the CSV export of the API.

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use certflow_core::compliance::{DEFAULT_EXPIRING_WITHIN_DAYS, Severity};

use super::{Ctx, Layout, PageError, PageResult, html};
use crate::extract::now;
use crate::state::AppState;

/// One finding, as a table row.
struct Row {
    /// The certificate's id; empty for a discovered certificate.
    id: String,
    name: String,
    team: String,
    rule: &'static str,
    severity: &'static str,
    message: String,
}

/// A destination not serving the current version, as a table row.
struct DestinationRow {
    certificate_id: String,
    name: String,
    team: String,
    kind: &'static str,
    place: String,
    status: &'static str,
    serves: String,
    current: u32,
    error: String,
}

#[derive(Template)]
#[template(path = "compliance.html")]
struct CompliancePage {
    l: Layout,
    /// Selected severity (`""`: all).
    severity: String,
    days: u32,
    certificates: u64,
    non_compliant: u64,
    /// Of `certificates`, unmanaged ones agents discovered.
    discovered: u64,
    /// (severity, count), most serious first.
    by_severity: Vec<(&'static str, u64)>,
    /// (rule, count) of rules with findings.
    by_rule: Vec<(String, u64)>,
    rows: Vec<Row>,
    /// Destinations not serving the current version (all severities).
    undelivered: Vec<DestinationRow>,
    csv_url: String,
}

/// A destination not serving its certificate's current version, as a row.
fn destination_row(d: &certflow_services::compliance::UndeliveredDestination) -> DestinationRow {
    DestinationRow {
        certificate_id: d.certificate_id.to_string(),
        name: d.name.clone(),
        team: d.team.clone(),
        kind: d.kind,
        place: match &d.listener_arn {
            Some(l) => format!("{l} in {}", d.region),
            None => d.region.clone(),
        },
        status: d.status,
        serves: d
            .delivered_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
        current: d.current_version,
        error: d.last_error.clone().unwrap_or_default(),
    }
}

fn bad(msg: String) -> PageError {
    PageError::Status(StatusCode::BAD_REQUEST, msg)
}

/// The page: every certificate of the reader's teams (all for admins).
pub(super) async fn page(
    ctx: Ctx,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).map_err(|e| bad(e.to_string()))?;
    let mut severity = None;
    let mut days = DEFAULT_EXPIRING_WITHIN_DAYS;
    for (k, v) in pairs {
        match k.as_str() {
            "severity" if v.is_empty() => {}
            "severity" => {
                severity = Some(Severity::parse(&v).ok_or_else(|| {
                    bad(format!(
                        "severity '{v}' is not one of critical, warning, info"
                    ))
                })?)
            }
            "expiring_within_days" => {
                days = v.parse().ok().filter(|d| *d <= 3650).ok_or_else(|| {
                    bad(format!(
                        "expiring_within_days '{v}' is not an integer from 0 to 3650"
                    ))
                })?
            }
            other => return Err(bad(format!("unknown query parameter '{other}'"))),
        }
    }
    let teams = ctx.principal().readable_teams().into_teams();
    let fleet = Some((&state.deploy.deployments, &state.agents));
    let report = state
        .services
        .compliance_report(fleet, teams.as_deref(), days, now())
        .await?;
    if teams.is_none() {
        crate::telemetry::compliance::record(&report);
    }
    let mut rows = Vec::new();
    for item in &report.items {
        for f in item
            .findings
            .iter()
            .filter(|f| severity.is_none_or(|s| s == f.severity))
        {
            rows.push(Row {
                id: item.certificate_id.to_string(),
                name: item.name.clone(),
                team: item.team.clone(),
                rule: f.rule,
                severity: f.severity.as_str(),
                message: f.message.clone(),
            });
        }
    }
    // Certificates agents found that certflow does not manage: rated too,
    // listed under their source, linked to the discovery page.
    for item in &report.discovered {
        for f in item
            .findings
            .iter()
            .filter(|f| severity.is_none_or(|s| s == f.severity))
        {
            rows.push(Row {
                id: String::new(),
                name: item.source.clone(),
                team: format!("found by {}", item.agent_name),
                rule: f.rule,
                severity: f.severity.as_str(),
                message: f.message.clone(),
            });
        }
    }
    let undelivered = report
        .undelivered_destinations
        .iter()
        .map(destination_row)
        .collect();
    let s = &report.summary;
    Ok(html(&CompliancePage {
        l: ctx.layout("Compliance", "compliance"),
        severity: severity.map_or("", Severity::as_str).to_owned(),
        days,
        certificates: s.certificates,
        non_compliant: s.non_compliant,
        discovered: s.discovered,
        by_severity: Severity::ALL
            .iter()
            .map(|v| {
                (
                    v.as_str(),
                    s.by_severity.get(v.as_str()).copied().unwrap_or(0),
                )
            })
            .collect(),
        by_rule: s
            .by_rule
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (r.clone(), *n))
            .collect(),
        rows,
        undelivered,
        csv_url: format!("/console/api/v1/compliance?format=csv&expiring_within_days={days}"),
    }))
}
