//! `/console/discovered`: the certificates agents found on their hosts
//! (files and TLS endpoints), unmanaged ones first, and "take over
//! management": certflow issues a certificate for the same names, assigned
//! to the agent that found it, and renews it from then on.
//!
//! Same use cases as `/console/api/v1/discovered`, so the page and the API
//! never disagree; the take-over form offers only the teams the reader may
//! request for and the discovering agent belongs to (the use case checks
//! both again).

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use certflow_api::agent::TakeOverRequest;
use certflow_core::access::{Permission, TeamScope};
use certflow_core::discovery::{Discovered, DiscoveryStatus};
use uuid::Uuid;

use super::{Ctx, Layout, PageError, PageResult, html, redirect, relative, when};
use crate::extract::now;
use crate::state::{AppShared, AppState};

/// One discovered certificate, as a table row.
struct Row {
    id: String,
    source: String,
    agent_id: String,
    agent: String,
    names: String,
    issuer: String,
    expires: String,
    expired: bool,
    last_seen: String,
    /// The certflow certificate it is a version of, or that took it over.
    certificate_id: String,
    /// `managed`, `taken over` or `unmanaged`.
    state: &'static str,
    /// Teams the reader may take it over for (empty: no form).
    teams: Vec<String>,
}

#[derive(Template)]
#[template(path = "discovered.html")]
struct DiscoveredPage {
    l: Layout,
    status: &'static str,
    rows: Vec<Row>,
    issuers: Vec<String>,
}

fn bad(msg: String) -> PageError {
    PageError::Status(StatusCode::BAD_REQUEST, msg)
}

/// `writable`: the teams the reader may request certificates for.
fn row(writable: &TeamScope, d: Discovered, now: time::OffsetDateTime) -> Row {
    let (certificate_id, state) = match (d.managed, d.taken_over_certificate_id) {
        (Some((c, _)), _) => (c.to_string(), "managed"),
        (None, Some(c)) => (c.to_string(), "taken over"),
        (None, None) => (String::new(), "unmanaged"),
    };
    let teams = if state == "unmanaged" {
        d.agent_teams
            .iter()
            .filter(|t| writable.allows(t))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    Row {
        id: d.id.to_string(),
        source: d.item.source,
        agent_id: d.agent_id.to_string(),
        agent: d.agent_name,
        names: d.item.names.join(", "),
        issuer: d.item.issuer,
        expires: when(d.item.not_after),
        expired: d.item.not_after <= now,
        last_seen: relative(d.last_seen, now),
        certificate_id,
        state,
        teams,
    }
}

/// `GET /console/discovered[?status=unmanaged|managed|all]`.
pub(super) async fn page(
    ctx: Ctx,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let deploy = &state.deploy;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).map_err(|e| bad(e.to_string()))?;
    let mut status = DiscoveryStatus::Unmanaged;
    for (k, v) in pairs {
        match k.as_str() {
            "status" => {
                status = DiscoveryStatus::parse(&v).ok_or_else(|| {
                    bad(format!(
                        "status '{v}' is not one of unmanaged, managed, all"
                    ))
                })?;
            }
            other => return Err(bad(format!("unknown query parameter '{other}'"))),
        }
    }
    let now = now();
    let writable = ctx.principal().teams_with(Permission::CertificateWrite);
    let rows = deploy
        .discovery
        .list(&ctx.principal().readable_teams(), status, None)
        .await?
        .into_iter()
        .map(|d| row(&writable, d, now))
        .collect();
    let issuers = state
        .services
        .issuers()
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect();
    Ok(html(&DiscoveredPage {
        l: ctx.layout("Discovered certificates", "discovered"),
        status: status.as_str(),
        rows,
        issuers,
    }))
}

/// `POST /console/discovered/{id}/take-over`: the certificate page of the
/// new certificate on success.
pub(super) async fn take_over(
    ctx: Ctx,
    State(app): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let AppShared { deploy, .. } = &*app;
    let form = ctx.form(&headers, &body)?;
    let optional = |name: &str| {
        let v = form.get(name).trim();
        (!v.is_empty()).then(|| v.to_owned())
    };
    let req = TakeOverRequest {
        team: form.get("team").trim().to_owned(),
        issuer: optional("issuer"),
        name: optional("name"),
    };
    // Not found outside the reader's teams, then refused outside the ones
    // it may request for (the use case checks the agent's teams).
    let teams = ctx.principal().readable_teams();
    let found = deploy.discovery.get(&teams, id).await?;
    ctx.principal()
        .authorize(Permission::CertificateWrite, Some(&req.team))?;
    let view = deploy
        .discovery
        .take_over(&ctx.actor, &teams, id, &req, now())
        .await?;
    // The agent's cached assignment answer is stale now, here and elsewhere.
    deploy.assignments_changed(found.agent_id).await;
    Ok(redirect(&format!(
        "/console/certificates/{}",
        view.certificate.id
    )))
}
