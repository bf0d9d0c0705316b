//! `GET /console/api/v1/compliance`: the inventory compliance report, as JSON
//! or CSV (one row per finding), over the certificates of the caller's teams.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use certflow_api::Problem;
use certflow_core::access::{Permission, Principal};
use certflow_core::compliance::DEFAULT_EXPIRING_WITHIN_DAYS;
use certflow_services::compliance::ComplianceReport;

use super::AppState;
use crate::errors::{ApiError, ApiResult};
use crate::extract::{Json, now};

/// Largest `expiring_within_days` accepted (ten years).
const MAX_WINDOW_DAYS: u32 = 3650;

/// Output format of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The report document.
    Json,
    /// One row per finding.
    Csv,
}

/// Parsed query of the report routes (the console page shares it).
#[derive(Debug, Clone)]
pub struct ReportQuery {
    /// Window of the `expiring` rule.
    pub expiring_within_days: u32,
    /// JSON or CSV.
    pub format: Format,
    /// One team only, if given.
    pub team: Option<String>,
}

/// Parses `expiring_within_days`, `format` and `team`; unknown parameters are refused.
pub fn parse_query(raw: Option<&str>) -> ApiResult<ReportQuery> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::invalid_field("query", e.to_string()))?;
    let mut q = ReportQuery {
        expiring_within_days: DEFAULT_EXPIRING_WITHIN_DAYS,
        format: Format::Json,
        team: None,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "expiring_within_days" => {
                q.expiring_within_days = v
                    .parse()
                    .ok()
                    .filter(|d| *d <= MAX_WINDOW_DAYS)
                    .ok_or_else(|| {
                        ApiError::invalid_field(
                            "expiring_within_days",
                            format!("'{v}' is not an integer from 0 to {MAX_WINDOW_DAYS}"),
                        )
                    })?;
            }
            "format" => {
                q.format = match v.as_str() {
                    "json" => Format::Json,
                    "csv" => Format::Csv,
                    _ => {
                        return Err(ApiError::invalid_field(
                            "format",
                            format!("'{v}' is not one of json, csv"),
                        ));
                    }
                }
            }
            "team" => q.team = Some(v).filter(|s| !s.is_empty()),
            other => return Err(ApiError::invalid_field(other, "unknown query parameter")),
        }
    }
    Ok(q)
}

/// The report for `principal`: one team if asked (and allowed), otherwise
/// every team for admins and the principal's teams for the others.
pub async fn report_for(
    app: &AppState,
    principal: &Principal,
    q: &ReportQuery,
) -> ApiResult<ComplianceReport> {
    let teams = principal
        .scope(Permission::CertificateRead, q.team.as_deref())?
        .into_teams();
    let fleet = Some((&app.deploy.deployments, &app.agents));
    let report = app
        .services
        .compliance_report(fleet, teams.as_deref(), q.expiring_within_days, now())
        .await?;
    if teams.is_none() {
        crate::telemetry::compliance::record(&report);
    }
    Ok(report)
}

/// Quotes a CSV field as RFC 4180 requires (double quotes around fields with
/// a comma, quote or line break; quotes doubled). A dozen lines do not
/// justify a dependency. Fields starting with `=`, `+`, `-` or `@` get a
/// leading `'` so that spreadsheets do not evaluate certificate names.
fn csv_field(out: &mut String, s: &str) {
    let guarded;
    let s = if s.starts_with(['=', '+', '-', '@']) {
        guarded = format!("'{s}");
        guarded.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

fn csv_row(out: &mut String, fields: &[&str]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, field);
    }
    out.push_str("\r\n");
}

/// The report as CSV: a header row, then one row per finding, CRLF line
/// ends. Findings of unmanaged discovered certificates follow in the same
/// columns: no certificate id or team (certflow has neither), the source as
/// the name, and the discovering agent named in the message.
pub fn to_csv(report: &ComplianceReport) -> String {
    let mut out = String::from("certificate_id,name,team,rule,severity,message\r\n");
    for item in &report.items {
        for f in &item.findings {
            let id = item.certificate_id.to_string();
            csv_row(
                &mut out,
                &[
                    &id,
                    &item.name,
                    &item.team,
                    f.rule,
                    f.severity.as_str(),
                    &f.message,
                ],
            );
        }
    }
    for item in &report.discovered {
        for f in &item.findings {
            let message = format!("{} (found by agent {})", f.message, item.agent_name);
            csv_row(
                &mut out,
                &["", &item.source, "", f.rule, f.severity.as_str(), &message],
            );
        }
    }
    out
}

/// The inventory compliance report: every certificate of the caller's teams
/// (or of `team`) rated against the issuance policies and its deployments.
#[utoipa::path(get, path = "/compliance", tag = "certificates",
    params(
        ("expiring_within_days" = Option<u32>, Query, description = "Window of the expiring rule (default 30)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
        ("team" = Option<String>, Query, description = "One team only"),
    ),
    responses((status = 200, description = "The report, or one CSV row per finding"), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn report(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    let q = parse_query(uri.query())?;
    let report = report_for(&app, &principal, &q).await?;
    Ok(match q.format {
        Format::Json => Json(report).into_response(),
        Format::Csv => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8; header=present"),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"compliance.csv\""),
                ),
            ],
            to_csv(&report),
        )
            .into_response(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_as_rfc_4180_requires() {
        let mut s = String::new();
        for f in ["plain", "a,b", "say \"hi\"", "two\nlines", "=cmd()"] {
            csv_field(&mut s, f);
            s.push('|');
        }
        assert_eq!(
            s,
            "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\nlines\"|'=cmd()|"
        );
    }
}
