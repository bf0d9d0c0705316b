//! Certificate pages: the inventory (search, filter, sort, paginate on the
//! server through [`CertificateQuery`]), a certificate's detail with its
//! actions (renew, revoke after a confirmation page, downloads), and the
//! request form with validation messages next to the fields.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use certflow_api::CreateCertificateRequest;
use certflow_core::DomainError;
use certflow_core::SubjectName;
use certflow_core::access::{Permission, Principal, TeamScope};
use certflow_core::agents::AgentStatus;
use certflow_core::error::FieldError;
use certflow_core::model::{
    AuditQuery, Certificate, CertificateQuery, CertificateStatus, IssuerKind, KeySource, KeyType,
    RevocationReason, SortKey,
};
use certflow_core::renewal::{JobState, RenewalJob};
use certflow_services::{CertificateView, DownloadKind, ImportError, Replacement};
use time::OffsetDateTime;
use uuid::Uuid;

use super::deployments::{self, DeployRow};
use super::{Ctx, Layout, PageError, PageResult, html, redirect, relative, when};
use crate::extract::now;
use crate::state::AppState;

/// Rows per inventory page.
pub(crate) const PAGE: u32 = 50;

fn names(names: &[SubjectName]) -> Vec<String> {
    names.iter().map(SubjectName::to_text).collect()
}

/// Field errors of a form, by field.
#[derive(Default)]
pub(crate) struct Errors(BTreeMap<String, String>);

impl Errors {
    fn add(&mut self, field: &str, reason: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_insert_with(|| reason.into());
    }

    /// The message for `field`, or "".
    pub fn get(&self, field: &str) -> &str {
        self.0.get(field).map(String::as_str).unwrap_or("")
    }

    /// Whether any field has an error.
    pub fn any(&self) -> bool {
        !self.0.is_empty()
    }
}

// ---------------------------------------------------------------- inventory

/// What the inventory filter form sent (echoed back into the form).
#[derive(Default, Clone)]
pub(crate) struct Filters {
    search: String,
    team: String,
    label: String,
    status: String,
    expiring: String,
    issuer: String,
    sort: String,
    order: String,
    page: u64,
}

impl Filters {
    fn parse(raw: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(raw.unwrap_or("")).unwrap_or_default();
        let mut f = Filters::default();
        for (k, v) in pairs {
            let v = v.trim().to_owned();
            match k.as_str() {
                "search" => f.search = v,
                "team" => f.team = v,
                "label" => f.label = v,
                "status" => f.status = v,
                "expiring" => f.expiring = v,
                "issuer" => f.issuer = v,
                "sort" => f.sort = v,
                "order" => f.order = v,
                "page" => f.page = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        f
    }

    /// The query string of these filters at page `page`.
    fn query(&self, page: u64) -> String {
        let mut pairs: Vec<(&str, String)> = [
            ("search", &self.search),
            ("team", &self.team),
            ("label", &self.label),
            ("status", &self.status),
            ("expiring", &self.expiring),
            ("issuer", &self.issuer),
            ("sort", &self.sort),
            ("order", &self.order),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.clone()))
        .collect();
        if page > 0 {
            pairs.push(("page", page.to_string()));
        }
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }

    /// The store query, or the field errors.
    fn to_query(&self, p: &Principal, now: OffsetDateTime) -> Result<CertificateQuery, Errors> {
        let mut e = Errors::default();
        let mut q = CertificateQuery {
            limit: PAGE,
            offset: self.page * u64::from(PAGE),
            search: Some(self.search.clone()).filter(|s| !s.is_empty()),
            ..Default::default()
        };
        let team = Some(self.team.as_str()).filter(|t| !t.is_empty());
        match p.scope(Permission::CertificateRead, team) {
            Err(_) => e.add("team", format!("you may not read team '{}'", self.team)),
            // No team chosen: all of the person's teams at once.
            Ok(TeamScope::Only(teams)) => {
                if teams.is_empty() {
                    e.add("team", "you belong to no team");
                }
                q.teams = Some(teams);
            }
            Ok(TeamScope::All) => {}
        }
        if !self.label.is_empty() {
            match self.label.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    q.labels.insert(k.trim().to_owned(), v.trim().to_owned());
                }
                _ => e.add("label", "write it as key=value, e.g. env=prod"),
            }
        }
        if !self.status.is_empty() {
            match CertificateStatus::parse(&self.status) {
                Some(s) => q.status = Some(s),
                None => e.add("status", "choose active, revoked or archived"),
            }
        }
        if !self.expiring.is_empty() {
            match self.expiring.parse::<u32>() {
                Ok(days) if days <= 36_500 => {
                    q.expires_before = Some(now + time::Duration::days(i64::from(days)))
                }
                _ => e.add("expiring", "a number of days, 0 to 36500"),
            }
        }
        if !self.issuer.is_empty() {
            match Uuid::parse_str(&self.issuer) {
                Ok(id) => q.issuer_id = Some(id),
                Err(_) => e.add("issuer", "choose an issuer from the list"),
            }
        }
        q.sort = match self.sort.as_str() {
            "" | "name" => SortKey::Name,
            "not_after" => SortKey::NotAfter,
            "created_at" => SortKey::CreatedAt,
            _ => {
                e.add("sort", "choose name, expiry or creation");
                SortKey::Name
            }
        };
        q.descending = self.order == "desc";
        if e.any() { Err(e) } else { Ok(q) }
    }
}

/// One inventory row.
pub(crate) struct Row {
    id: String,
    name: String,
    team: String,
    status: &'static str,
    names: String,
    key_type: &'static str,
    issuer: String,
    not_after: String,
    expires_in: String,
    soon: bool,
}

#[derive(Template)]
#[template(path = "inventory.html")]
struct Inventory {
    l: Layout,
    f: Filters,
    e: Errors,
    /// Teams to choose from (empty: free text, for admins).
    teams: Vec<String>,
    /// Issuers to filter by.
    issuers: Vec<IssuerOption>,
    rows: Vec<Row>,
    total: u64,
    first: u64,
    last: u64,
    prev: String,
    next: String,
    can_request: bool,
}

/// `GET /console/certificates`.
pub(super) async fn inventory(
    ctx: Ctx,
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let p = ctx.principal();
    let now = now();
    let f = Filters::parse(raw.as_deref());
    let issuers: BTreeMap<Uuid, String> = state
        .services
        .issuers()
        .await?
        .into_iter()
        .map(|i| (i.id, i.name))
        .collect();
    let mut page = Inventory {
        l: ctx.layout("Certificates", "certificates"),
        f: f.clone(),
        e: Errors::default(),
        teams: p.readable_teams().into_teams().unwrap_or_default(),
        issuers: issuers
            .iter()
            .map(|(id, name)| IssuerOption {
                id: id.to_string(),
                label: name.clone(),
            })
            .collect(),
        rows: Vec::new(),
        total: 0,
        first: 0,
        last: 0,
        prev: String::new(),
        next: String::new(),
        can_request: p.can(Permission::CertificateWrite, None),
    };
    let q = match f.to_query(p, now) {
        Ok(q) => q,
        Err(e) => {
            page.e = e;
            let mut resp = html(&page);
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(resp);
        }
    };
    let result = state.services.list(&q).await?;
    page.total = result.total;
    page.rows = result
        .items
        .iter()
        .map(|c| {
            let n = names(&c.names);
            let mut shown = n.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            if n.len() > 3 {
                shown.push_str(&format!(" and {} more", n.len() - 3));
            }
            Row {
                id: c.id.to_string(),
                name: c.name.clone(),
                team: c.team.clone(),
                status: c.status.as_str(),
                names: shown,
                key_type: c.key_type.as_str(),
                issuer: issuers.get(&c.issuer_id).cloned().unwrap_or_default(),
                not_after: when(c.not_after),
                expires_in: relative(c.not_after, now),
                soon: c.status == CertificateStatus::Active
                    && c.not_after - now < time::Duration::days(14),
            }
        })
        .collect();
    let shown = page.rows.len() as u64;
    page.first = if shown == 0 { 0 } else { q.offset + 1 };
    page.last = q.offset + shown;
    if f.page > 0 {
        page.prev = f.query(f.page - 1);
        if page.prev.is_empty() {
            page.prev = "page=0".into();
        }
    }
    if page.last < page.total {
        page.next = f.query(f.page + 1);
    }
    Ok(html(&page))
}

// ------------------------------------------------------------------- detail

/// A version row.
pub(crate) struct VersionRow {
    version: u32,
    serial: String,
    fingerprint: String,
    not_before: String,
    not_after: String,
    status: &'static str,
    revoked: String,
    current: bool,
}

/// The certificate's renewal state, as the API computes it.
pub(crate) struct RenewalRow {
    policy: String,
    next: String,
    state: String,
    attempts: u32,
    last_error: String,
    retry_at: String,
}

#[derive(Template)]
#[template(path = "certificate.html")]
struct Detail {
    l: Layout,
    notice: &'static str,
    id: String,
    name: String,
    team: String,
    status: &'static str,
    /// `false`: inventory only, never renewed until taken over.
    managed: bool,
    /// Names of the certflow issuers a take-over may choose.
    renewing_issuers: Vec<String>,
    /// Whether its issuer so far is an external CA (a take-over must name one).
    external: bool,
    labels: Vec<(String, String)>,
    profile: &'static str,
    key_type: &'static str,
    key_source: &'static str,
    names: Vec<String>,
    issuer: String,
    validity: String,
    not_after: String,
    expires_in: String,
    created: String,
    versions: Vec<VersionRow>,
    renewal: RenewalRow,
    chain_pem: String,
    rows: Vec<super::audit::AuditRow>,
    can_write: bool,
    can_key: bool,
    has_key: bool,
    revocable: bool,
    deployments: Vec<DeployRow>,
    /// Administrators assign and unassign agents.
    can_assign: bool,
    /// Active agents of the certificate's team not yet assigned.
    assignable: Vec<AgentOption>,
    /// Its AWS destinations (ACM, listeners) and their delivery.
    destinations: Vec<DestinationRow>,
    /// Whether destinations can be attached: active, key held by certflow.
    can_push: bool,
    /// The attach form (echoed after a refusal) and the last refusal.
    dest: super::destinations::DestinationForm,
}

/// A destination as the certificate page shows it.
pub(crate) struct DestinationRow {
    pub id: String,
    /// An ACM destination with an ARN: detaching may delete the certificate.
    pub deletable: bool,
    pub kind: &'static str,
    pub place: String,
    pub status: &'static str,
    pub version: String,
    pub arn: String,
    pub error: String,
    pub updated: String,
}

fn destination_rows(list: Vec<certflow_core::destinations::Destination>) -> Vec<DestinationRow> {
    list.into_iter()
        .map(|d| DestinationRow {
            id: d.id.to_string(),
            deletable: !d.is_listener() && d.external_id.is_some(),
            kind: d.kind.as_str(),
            place: match &d.listener_arn {
                Some(l) if d.default_certificate => {
                    format!("{} (default) in {}", l, d.target.region)
                }
                Some(l) => format!("{l} (SNI) in {}", d.target.region),
                None => d.target.region.clone(),
            },
            status: d.status.as_str(),
            version: d
                .delivered_version
                .map_or_else(|| "-".to_owned(), |v| v.to_string()),
            arn: d.external_id.unwrap_or_default(),
            error: match (d.last_error, d.attempts) {
                (Some(e), n) if n > 0 => {
                    format!("{e} ({n} attempts; next {})", when(d.next_attempt_at))
                }
                (Some(e), _) => e,
                (None, _) => String::new(),
            },
            updated: when(d.updated_at),
        })
        .collect()
}

/// An agent to choose.
pub(crate) struct AgentOption {
    pub id: String,
    pub label: String,
}

/// `GET /console/certificates/{id}`.
pub(super) async fn detail(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    detail_page(
        &ctx,
        &state,
        id,
        notice(raw.as_deref()),
        super::destinations::DestinationForm::default(),
    )
    .await
}

/// The certificate page, with `notice` above it and the destination form
/// as given (a refused attach shows its values and reason).
pub(super) async fn detail_page(
    ctx: &Ctx,
    state: &AppState,
    id: Uuid,
    notice: &'static str,
    dest: super::destinations::DestinationForm,
) -> PageResult<Response> {
    let p = ctx.principal();
    state
        .services
        .certificate_for(p, Permission::CertificateRead, id)
        .await?;
    let now = now();
    let view = state.services.certificate(id).await?;
    let c = &view.certificate;
    let issuers = state.services.issuers().await?;
    let own = issuers.iter().find(|i| i.id == c.issuer_id);
    let issuer = own
        .map(|i| format!("{} ({})", i.name, i.subject))
        .unwrap_or_else(|| c.issuer_id.to_string());
    let external = own.is_some_and(|i| i.kind == IssuerKind::External);
    let renewing_issuers = if c.managed {
        Vec::new()
    } else {
        issuers
            .iter()
            .filter(|i| i.kind != IssuerKind::External)
            .map(|i| i.name.clone())
            .collect()
    };
    let chain_pem = state
        .services
        .download(id, None, DownloadKind::FullChain)
        .await?;
    let history = state
        .services
        .audit(&AuditQuery {
            target: Some(format!("certificate/{id}")),
            limit: 100,
            ..Default::default()
        })
        .await?;
    let job = state
        .renewal
        .ledger
        .latest_renewal_job(id)
        .await?
        .filter(|j| j.version == c.current_version);
    let renewal = renewal_row(c, job, now);
    let rows = deployments::certificate_rows(&state.deploy, id).await?;
    let can_assign = p.can(Permission::AgentAdmin, None) && c.status != CertificateStatus::Archived;
    let assignable = if can_assign {
        assignable_agents(state, c, &rows).await?
    } else {
        Vec::new()
    };
    let current = view
        .versions
        .iter()
        .find(|v| v.version == c.current_version);
    // A server without destinations wired shows none rather than failing the page.
    let destinations = destination_rows(
        state
            .services
            .certificate_destinations(id)
            .await
            .unwrap_or_default(),
    );
    let page = Detail {
        l: ctx.layout(c.name.clone(), "certificates"),
        notice,
        id: id.to_string(),
        name: c.name.clone(),
        team: c.team.clone(),
        status: c.status.as_str(),
        managed: c.managed,
        renewing_issuers,
        external,
        labels: c
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        profile: c.profile.as_str(),
        key_type: c.key_type.as_str(),
        key_source: c.key_source.as_str(),
        names: names(&c.names),
        issuer,
        validity: match c.validity_secs {
            Some(s) => format!("{s} seconds"),
            None => format!("{} days", c.validity_days),
        },
        not_after: when(c.not_after),
        expires_in: relative(c.not_after, now),
        created: when(c.created_at),
        versions: version_rows(&view),
        renewal,
        chain_pem,
        rows: super::audit::rows(state, p, &history.items).await?,
        can_write: p.may(Permission::CertificateWrite, c),
        can_key: p.may(Permission::KeyDownload, c),
        has_key: current.is_some_and(|v| v.key_blob.is_some()),
        revocable: c.status == CertificateStatus::Active,
        deployments: rows,
        can_assign,
        assignable,
        destinations,
        can_push: c.status == CertificateStatus::Active && c.key_source == KeySource::Server,
        dest,
    };
    Ok(html(&page))
}

/// How the certificate is renewed (its policy, the next renewal) and how its
/// latest renewal job for the current version, if any, went.
fn renewal_row(c: &Certificate, job: Option<RenewalJob>, now: OffsetDateTime) -> RenewalRow {
    let pol = &c.renewal;
    let mut policy = format!(
        "renew at {:.0} % of the lifetime",
        pol.renew_at_fraction * 100.0
    );
    if let Some(days) = pol.renew_before_days {
        policy.push_str(&format!(
            " or {days} days before expiry, whichever is earlier"
        ));
    }
    policy.push_str(&format!(", jitter {:.0} %", pol.jitter_fraction * 100.0));
    match job {
        None => RenewalRow {
            policy,
            next: if c.managed {
                format!("{} ({})", when(c.renew_after), relative(c.renew_after, now))
            } else {
                "never: inventory only".into()
            },
            state: "idle".into(),
            attempts: 0,
            last_error: String::new(),
            retry_at: String::new(),
        },
        Some(j) => {
            let failing = j.state == JobState::Queued && j.last_error.is_some();
            RenewalRow {
                policy,
                next: format!("{} ({})", when(c.renew_after), relative(c.renew_after, now)),
                state: if failing {
                    "failing".into()
                } else {
                    j.state.as_str().into()
                },
                attempts: j.attempts,
                last_error: j.last_error.clone().unwrap_or_default(),
                retry_at: if failing {
                    when(j.run_at)
                } else {
                    String::new()
                },
            }
        }
    }
}

/// The line shown after an action redirected back to the page (`?done=...`).
fn notice(raw: Option<&str>) -> &'static str {
    match raw.unwrap_or("") {
        "done=created" => "The certificate was issued.",
        "done=renewed" => "The certificate was renewed: a new version is current.",
        "done=managed" => "certflow manages the certificate now: it is renewed on schedule.",
        "done=revoked" => "The certificate was revoked.",
        "done=replaced" => {
            "The version was revoked and a replacement issued: agents install it on their next poll."
        }
        "done=replacement-failed" => {
            "The version was revoked, but its replacement could not be issued (see the history; the team was told). Renew the certificate now."
        }
        "done=assigned" => "The certificate was assigned: the agent installs it on its next poll.",
        "done=unassigned" => "The agent no longer installs this certificate.",
        "done=destination-attached" => {
            "The destination was attached: the next delivery round pushes the current version."
        }
        "done=destination-detached" => "The destination was detached.",
        _ => "",
    }
}

/// Active agents of the certificate's team it is not assigned to yet
/// (`rows`: its deployments).
async fn assignable_agents(
    state: &AppState,
    c: &Certificate,
    rows: &[DeployRow],
) -> PageResult<Vec<AgentOption>> {
    let mut assignable = Vec::new();
    for a in state.agents.list().await? {
        let assigned = rows.iter().any(|r| r.agent_id == a.id.to_string());
        if a.status == AgentStatus::Active && a.teams.contains(&c.team) && !assigned {
            assignable.push(AgentOption {
                id: a.id.to_string(),
                label: format!("{} ({})", a.name, a.teams.join(", ")),
            });
        }
    }
    Ok(assignable)
}

/// One row per version of the certificate.
fn version_rows(view: &CertificateView) -> Vec<VersionRow> {
    let c = &view.certificate;
    view.versions
        .iter()
        .map(|v| VersionRow {
            version: v.version,
            serial: v.serial.clone(),
            fingerprint: v.fingerprint_sha256.clone(),
            not_before: when(v.not_before),
            not_after: when(v.not_after),
            status: v.status.as_str(),
            revoked: match (v.revoked_at, v.revocation_reason) {
                (Some(at), Some(r)) => format!("{} ({})", when(at), r.as_str()),
                (Some(at), None) => when(at),
                _ => String::new(),
            },
            current: v.version == c.current_version,
        })
        .collect()
}

// ------------------------------------------------------------------ actions

/// `POST /console/certificates/{id}/renew`: renew now.
pub(super) async fn renew(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    ctx.form(&headers, &body)?;
    state
        .services
        .certificate_for(ctx.principal(), Permission::CertificateWrite, id)
        .await?;
    state.services.renew(&ctx.actor, id, None, now()).await?;
    Ok(redirect(&format!(
        "/console/certificates/{id}?done=renewed"
    )))
}

/// `POST /console/certificates/{id}/manage`: take over an inventory-only
/// certificate, renewed through the chosen certflow issuer (empty: its own).
pub(super) async fn manage(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    state
        .services
        .certificate_for(ctx.principal(), Permission::CertificateWrite, id)
        .await?;
    let issuer = Some(form.get("issuer")).filter(|i| !i.is_empty());
    match state
        .services
        .manage_certificate(&ctx.actor, id, issuer, now())
        .await
    {
        Ok(_) => Ok(redirect(&format!(
            "/console/certificates/{id}?done=managed"
        ))),
        Err(ImportError::Unprocessable(fields)) => Err(PageError::Status(
            StatusCode::UNPROCESSABLE_ENTITY,
            fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )),
        Err(ImportError::Domain(e)) => Err(e.into()),
    }
}

/// A revocation reason to choose.
pub(crate) struct Reason {
    value: &'static str,
    label: String,
}

#[derive(Template)]
#[template(path = "revoke.html")]
struct RevokeConfirm {
    l: Layout,
    id: String,
    name: String,
    team: String,
    version: u32,
    serial: String,
    reasons: Vec<Reason>,
    error: String,
}

fn reasons() -> Vec<Reason> {
    RevocationReason::ALL
        .iter()
        // removeFromCRL is for delta CRLs, never a reason a person gives.
        .filter(|r| r.as_str() != "removeFromCRL")
        .map(|r| {
            let value = r.as_str();
            let label = match value {
                "unspecified" => "Unspecified",
                "keyCompromise" => "Key compromise",
                "cACompromise" => "CA compromise",
                "affiliationChanged" => "Affiliation changed",
                "superseded" => "Superseded",
                "cessationOfOperation" => "Cessation of operation",
                "certificateHold" => "Certificate hold",
                "privilegeWithdrawn" => "Privilege withdrawn",
                "aACompromise" => "AA compromise",
                other => other,
            };
            Reason {
                value,
                label: label.to_owned(),
            }
        })
        .collect()
}

async fn revoke_page(ctx: &Ctx, state: &AppState, id: Uuid, error: String) -> PageResult<Response> {
    let cert = state
        .services
        .certificate_for(ctx.principal(), Permission::CertificateWrite, id)
        .await?;
    let view = state.services.certificate(id).await?;
    let serial = view
        .versions
        .iter()
        .find(|v| v.version == cert.current_version)
        .map(|v| v.serial.clone())
        .unwrap_or_default();
    let status = if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut resp = html(&RevokeConfirm {
        l: ctx.layout(format!("Revoke {}", cert.name), "certificates"),
        id: id.to_string(),
        name: cert.name,
        team: cert.team,
        version: cert.current_version,
        serial,
        reasons: reasons(),
        error,
    });
    *resp.status_mut() = status;
    Ok(resp)
}

/// `GET /console/certificates/{id}/revoke`: the confirmation page.
pub(super) async fn revoke_confirm(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> PageResult<Response> {
    revoke_page(&ctx, &state, id, String::new()).await
}

/// `POST /console/certificates/{id}/revoke`: revoke the current version
/// with the reason chosen, once `confirm` is ticked.
pub(super) async fn revoke(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    state
        .services
        .certificate_for(ctx.principal(), Permission::CertificateWrite, id)
        .await?;
    if form.get("confirm") != "yes" {
        return revoke_page(
            &ctx,
            &state,
            id,
            "tick the box to confirm: a revocation cannot be undone".into(),
        )
        .await;
    }
    let replace = form.get("replace") == "yes";
    match state
        .services
        .revoke_with(&ctx.actor, id, None, form.get("reason"), replace, now())
        .await
    {
        Ok(r) => {
            let done = match r.replacement {
                None => "revoked",
                Some(Replacement::Issued { .. }) => "replaced",
                Some(Replacement::Failed { .. }) => "replacement-failed",
            };
            Ok(redirect(&format!("/console/certificates/{id}?done={done}")))
        }
        // Refused before anything was revoked (a requester-held key
        // reported compromised, an archived certificate).
        Err(DomainError::Conflict(why)) if replace => {
            let mut resp = revoke_page(&ctx, &state, id, why).await?;
            *resp.status_mut() = StatusCode::CONFLICT;
            Ok(resp)
        }
        Err(DomainError::Invalid(fields)) => {
            let why = fields
                .iter()
                .map(|f| f.reason.clone())
                .collect::<Vec<_>>()
                .join("; ");
            revoke_page(&ctx, &state, id, why).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /console/certificates/{id}/download?format=`: certificate, chain or
/// full chain as PEM (no private key: that is a POST).
pub(super) async fn download(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    RawQuery(raw): RawQuery,
) -> PageResult<Response> {
    let cert = state
        .services
        .certificate_for(ctx.principal(), Permission::CertificateRead, id)
        .await?;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let format = pairs
        .iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.as_str())
        .unwrap_or("fullchain");
    let kind = match format {
        "certificate" => DownloadKind::Certificate,
        "chain" => DownloadKind::Chain,
        "fullchain" => DownloadKind::FullChain,
        _ => {
            return Err(PageError::Status(
                StatusCode::BAD_REQUEST,
                "format must be certificate, chain or fullchain".into(),
            ));
        }
    };
    let pem = state.services.download(id, None, kind).await?;
    Ok(attachment(
        pem.into_bytes(),
        "application/x-pem-file",
        &format!("{}-{format}.pem", file_stem(&cert.name)),
    ))
}

/// `POST /console/certificates/{id}/download-key`: the private key, as a PEM
/// bundle (key + full chain) or PKCS#12 with a password. Needs a login
/// within the last ten minutes; audited by the use case.
pub(super) async fn download_key(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    let cert = state
        .services
        .certificate_for(ctx.principal(), Permission::KeyDownload, id)
        .await?;
    let now = now();
    if !ctx.recent_login(now) {
        return Ok(html(&Reauth {
            l: ctx.layout("Sign in again", "certificates"),
            return_to: format!("/console/certificates/{id}"),
        }));
    }
    let stem = file_stem(&cert.name);
    match form.get("format") {
        "pem" => {
            let key = state
                .services
                .download_key(&ctx.actor, id, None, now)
                .await?;
            let chain = state
                .services
                .download(id, None, DownloadKind::FullChain)
                .await?;
            // The key (zeroised when dropped) first, then the chain, in the response body.
            let mut bundle = Vec::with_capacity(key.len() + chain.len());
            bundle.extend_from_slice(key.as_bytes());
            bundle.extend_from_slice(chain.as_bytes());
            Ok(attachment(
                bundle,
                "application/x-pem-file",
                &format!("{stem}-bundle.pem"),
            ))
        }
        "pkcs12" => {
            match state
                .services
                .download_pkcs12(&ctx.actor, id, None, form.get("password"), now)
                .await
            {
                Ok(p12) => Ok(attachment(
                    p12,
                    "application/x-pkcs12",
                    &format!("{stem}.p12"),
                )),
                Err(DomainError::Invalid(fields)) => Err(PageError::Status(
                    StatusCode::BAD_REQUEST,
                    fields
                        .iter()
                        .map(|f| format!("password: {}", f.reason))
                        .collect::<Vec<_>>()
                        .join("; "),
                )),
                Err(e) => Err(e.into()),
            }
        }
        _ => Err(PageError::Status(
            StatusCode::BAD_REQUEST,
            "format must be pem or pkcs12".into(),
        )),
    }
}

#[derive(Template)]
#[template(path = "reauth.html")]
struct Reauth {
    l: Layout,
    return_to: String,
}

/// Letters, digits, `.`, `-` and `_` of `name`, for a download's file name.
fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if s.is_empty() {
        "certificate".into()
    } else {
        s
    }
}

fn attachment(body: Vec<u8>, content_type: &'static str, filename: &str) -> Response {
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

// ------------------------------------------------------------------ request

/// An issuer to choose.
pub(crate) struct IssuerOption {
    id: String,
    label: String,
}

#[derive(Template)]
#[template(path = "request.html")]
struct RequestForm {
    l: Layout,
    e: Errors,
    teams: Vec<String>,
    issuers: Vec<IssuerOption>,
    key_types: Vec<&'static str>,
    // Echoed values.
    name: String,
    names: String,
    team: String,
    key_type: String,
    profile: String,
    issuer_id: String,
    validity_days: String,
    labels: String,
    csr: String,
}

async fn request_page(
    ctx: &Ctx,
    state: &AppState,
    mut form: RequestForm,
) -> PageResult<RequestForm> {
    form.issuers = state
        .services
        .issuers()
        .await?
        .into_iter()
        .map(|i| IssuerOption {
            id: i.id.to_string(),
            label: if i.is_default {
                format!("{} (default)", i.name)
            } else {
                i.name
            },
        })
        .collect();
    let p = ctx.principal();
    form.teams = p
        .teams_with(Permission::CertificateWrite)
        .into_teams()
        .unwrap_or_default();
    Ok(form)
}

fn empty_form(l: Layout) -> RequestForm {
    RequestForm {
        l,
        e: Errors::default(),
        teams: Vec::new(),
        issuers: Vec::new(),
        key_types: KeyType::ALL.iter().map(|k| k.as_str()).collect(),
        name: String::new(),
        names: String::new(),
        team: String::new(),
        key_type: KeyType::default().as_str().into(),
        profile: "tls-server".into(),
        issuer_id: String::new(),
        validity_days: String::new(),
        labels: String::new(),
        csr: String::new(),
    }
}

/// `GET /console/certificates/new`.
pub(super) async fn request_form(ctx: Ctx, State(state): State<AppState>) -> PageResult<Response> {
    if !ctx.principal().can(Permission::CertificateWrite, None) {
        return Err(DomainError::Forbidden(format!(
            "{} may not request certificates",
            ctx.principal().subject
        ))
        .into());
    }
    let form = empty_form(ctx.layout("Request a certificate", "request"));
    Ok(html(&request_page(&ctx, &state, form).await?))
}

/// Where a use-case field error belongs on the form (`names[2]` → `names`).
fn form_field(field: &str) -> &'static str {
    let base = field.split(['[', '.']).next().unwrap_or(field);
    match base {
        "name" => "name",
        "names" => "names",
        "team" => "team",
        "labels" => "labels",
        "profile" => "profile",
        "key_type" => "key_type",
        "issuer_id" => "issuer_id",
        "validity_days" | "validity_seconds" => "validity_days",
        "csr" => "csr",
        _ => "form",
    }
}

/// `POST /console/certificates/new`: request it; on invalid input the form
/// again with each message next to its field.
pub(super) async fn request_submit(
    ctx: Ctx,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    // Authorised before anything is validated: a person who may not request
    // for the team gets 403, not a form telling them what would pass.
    let p = ctx.principal();
    let team = form.get("team").trim();
    if !p.can(Permission::CertificateWrite, None)
        || (!team.is_empty() && !p.can(Permission::CertificateWrite, Some(team)))
    {
        return Err(DomainError::Forbidden(if team.is_empty() {
            format!("{} may not request certificates", p.subject)
        } else {
            format!(
                "{} may not request certificates for team '{team}'",
                p.subject
            )
        })
        .into());
    }
    let mut page = empty_form(ctx.layout("Request a certificate", "request"));
    page.name = form.get("name").trim().to_owned();
    page.names = form.get("names").to_owned();
    page.team = form.get("team").trim().to_owned();
    page.key_type = form.get("key_type").to_owned();
    page.profile = form.get("profile").to_owned();
    page.issuer_id = form.get("issuer_id").to_owned();
    page.validity_days = form.get("validity_days").trim().to_owned();
    page.labels = form.get("labels").to_owned();
    page.csr = form.get("csr").trim().to_owned();

    let mut e = Errors::default();
    let mut req = CreateCertificateRequest {
        name: Some(page.name.clone()).filter(|s| !s.is_empty()),
        names: page
            .names
            .split(['\n', ',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        team: page.team.clone(),
        profile: Some(page.profile.clone()).filter(|s| !s.is_empty()),
        key_type: Some(page.key_type.clone()).filter(|s| !s.is_empty()),
        csr: Some(page.csr.clone()).filter(|s| !s.is_empty()),
        ..Default::default()
    };
    if page.team.is_empty() {
        e.add("team", "choose the team that owns the certificate");
    }
    if req.names.is_empty() && req.csr.is_none() {
        e.add("names", "give at least one DNS name or IP address");
    }
    if !page.issuer_id.is_empty() {
        match Uuid::parse_str(&page.issuer_id) {
            Ok(id) => req.issuer_id = Some(id),
            Err(_) => e.add("issuer_id", "choose an issuer from the list"),
        }
    }
    if !page.validity_days.is_empty() {
        match page.validity_days.parse::<u32>() {
            Ok(d) => req.validity_days = Some(d),
            Err(_) => e.add("validity_days", "a whole number of days"),
        }
    }
    for (i, line) in page.labels.lines().map(str::trim).enumerate() {
        if line.is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => {
                req.labels.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            None => e.add("labels", format!("line {}: write key=value", i + 1)),
        }
    }
    if !e.any() {
        match state
            .services
            .create_certificate(&ctx.actor, &req, now())
            .await
        {
            Ok(view) => {
                return Ok(redirect(&format!(
                    "/console/certificates/{}?done=created",
                    view.certificate.id
                )));
            }
            Err(DomainError::Invalid(fields)) => {
                for FieldError { field, reason } in fields {
                    let at = form_field(&field);
                    let reason = if at == field {
                        reason
                    } else {
                        format!("{field}: {reason}")
                    };
                    e.add(at, reason);
                }
            }
            Err(DomainError::Conflict(why)) => e.add("name", why),
            Err(other) => return Err(other.into()),
        }
    }
    page.e = e;
    let page = request_page(&ctx, &state, page).await?;
    let mut resp = html(&page);
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    Ok(resp)
}
