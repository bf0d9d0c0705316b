//! `/console/api/v1`: the JSON API people and automation use. Handlers are thin:
//! parse, call a use case, map the result to a view.

use axum::Extension;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use certflow_api::{
    AuditEventView, AuditPage, CertificateDetail, CertificatePage, CertificateSummary,
    CreateCertificateRequest, ImportCaRequest, IssuerView, Pkcs12Request, Problem, RenewRequest,
    RenewalPolicyView, RenewalStatusView, ReplacementView, RevokeRequest, VersionView,
};
use certflow_core::SubjectName;
use certflow_core::model::{
    Actor, AuditEvent, AuditQuery, Certificate, CertificateQuery, CertificateStatus,
    CertificateVersion, Issuer, SortKey,
};
use certflow_services::{CertificateView, DownloadKind, FirstIssue, Replacement};
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use crate::errors::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query, now};
use certflow_core::access::{Permission, Principal, TeamScope};

/// Request header that makes creating and renewing idempotent: a repeat with
/// the same key (per actor, operation and certificate) and the same body
/// returns the first result instead of issuing again.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The `Idempotency-Key` header, if given: once, as text. Its length and
/// characters (1-255 printable ASCII) are checked by the use case.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid_field(
            IDEMPOTENCY_KEY,
            "must be given at most once",
        ));
    }
    value.to_str().map(Some).map_err(|_| {
        ApiError::invalid_field(IDEMPOTENCY_KEY, "must be 1-255 printable ASCII characters")
    })
}

fn names(names: &[SubjectName]) -> Vec<String> {
    names.iter().map(SubjectName::to_text).collect()
}

fn summary(c: &Certificate) -> CertificateSummary {
    CertificateSummary {
        id: c.id,
        name: c.name.clone(),
        team: c.team.clone(),
        labels: c.labels.clone(),
        profile: c.profile.as_str().into(),
        key_type: c.key_type.as_str().into(),
        key_source: c.key_source.as_str().into(),
        names: names(&c.names),
        status: c.status.as_str().into(),
        managed: c.managed,
        current_version: c.current_version,
        not_after: c.not_after,
        renew_after: c.renew_after,
        issuer_id: c.issuer_id,
        created_at: c.created_at,
        updated_at: c.updated_at,
    }
}

fn version_view(v: &CertificateVersion) -> VersionView {
    VersionView {
        version: v.version,
        serial: v.serial.clone(),
        fingerprint_sha256: v.fingerprint_sha256.clone(),
        not_before: v.not_before,
        not_after: v.not_after,
        key_type: v.key_type.as_str().into(),
        names: names(&v.names),
        status: v.status.as_str().into(),
        revoked_at: v.revoked_at,
        revocation_reason: v.revocation_reason.map(|r| r.as_str().into()),
        has_private_key: v.key_blob.is_some(),
    }
}

pub(super) fn audit_view(e: &AuditEvent) -> AuditEventView {
    AuditEventView {
        id: e.id,
        at: e.at,
        subject: e.actor.subject.clone(),
        source: e.actor.source.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        outcome: e.outcome.as_str().into(),
        details: e.details.clone(),
    }
}

fn issuer_view(i: &Issuer) -> IssuerView {
    IssuerView {
        id: i.id,
        name: i.name.clone(),
        kind: match i.kind {
            certflow_core::model::IssuerKind::Internal => "internal".into(),
            certflow_core::model::IssuerKind::Acme => "acme".into(),
            certflow_core::model::IssuerKind::External => "external".into(),
        },
        is_default: i.is_default,
        key_type: i.key_type.as_str().into(),
        key_backend: certflow_services::Services::key_backend(i).map(Into::into),
        subject: i.subject.clone(),
        not_after: i.not_after,
        issuing_cert_pem: i.issuing_cert_pem.clone(),
        chain_pem: i.chain_pem.clone(),
        created_at: i.created_at,
    }
}

/// The detail of a certificate its request has just issued: history the
/// creation's event, no renewal job yet (the scheduler has not seen it).
fn fresh_detail(view: CertificateView, issued: FirstIssue) -> CertificateDetail {
    let renewal = super::operations::idle_renewal(&view.certificate);
    let history = vec![audit_view(&issued.audit)];
    assemble_detail(view, renewal, issued.fullchain_pem, history)
}

pub(crate) async fn detail(
    state: &AppState,
    view: CertificateView,
) -> ApiResult<CertificateDetail> {
    let id = view.certificate.id;
    let fullchain_pem = state
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
    let renewal = super::operations::renewal_status(state, &view.certificate).await?;
    let history = history.items.iter().map(audit_view).collect();
    Ok(assemble_detail(view, renewal, fullchain_pem, history))
}

/// A certificate's detail from its view and the parts read (or known) beside it.
fn assemble_detail(
    view: CertificateView,
    renewal: RenewalStatusView,
    fullchain_pem: String,
    history: Vec<AuditEventView>,
) -> CertificateDetail {
    let cert = &view.certificate;
    CertificateDetail {
        summary: summary(cert),
        validity_days: cert.validity_days,
        validity_seconds: cert.validity_secs,
        renewal_policy: RenewalPolicyView {
            renew_at_fraction: cert.renewal.renew_at_fraction,
            renew_before_days: cert.renewal.renew_before_days,
            jitter_fraction: cert.renewal.jitter_fraction,
        },
        renewal,
        versions: view.versions.iter().map(version_view).collect(),
        fullchain_pem,
        history,
        replacement: None,
    }
}

/// Request a certificate (CSR or server-generated key).
///
/// With an `Idempotency-Key`, a repeat of the request (same caller, key and
/// body) within 24 hours returns the certificate the first one created.
#[utoipa::path(post, path = "/certificates", tag = "certificates",
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII characters; a repeat with the same key and body returns the first result, a different body gives 422")),
    request_body = CreateCertificateRequest,
    responses((status = 201, body = CertificateDetail), (status = 400, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn create_certificate(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Json(req): Json<CreateCertificateRequest>,
) -> ApiResult<Response> {
    principal.authorize(Permission::CertificateWrite, Some(&req.team))?;
    let key = idempotency_key(&headers)?;
    let created = state
        .services
        .create_certificate_answered(&actor, &req, key, now())
        .await?;
    let location = format!(
        "/console/api/v1/certificates/{}",
        created.view.certificate.id
    );
    let body = match created.issued {
        // Just issued: the answer is what the request knows, not a read back.
        Some(issued) => fresh_detail(created.view, issued),
        None => detail(&state, created.view).await?,
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Filters of the certificate list.
/// Only describes the query for OpenAPI: `label` repeats, so the handler parses the raw query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListParams {
    /// Substring of the name or any SAN.
    pub search: Option<String>,
    /// Owning team; without it, every team the caller may read.
    pub team: Option<String>,
    /// `key=value`; repeat for several (all must match).
    #[param(value_type = Option<Vec<String>>)]
    pub label: Option<String>,
    /// `active`, `revoked` or `archived`.
    pub status: Option<String>,
    /// Only certificates expiring within this many days.
    pub expiring_within_days: Option<u32>,
    /// Only certificates of this issuer (its id, from `GET /issuers`).
    pub issuer_id: Option<Uuid>,
    /// `false`: only inventory-only certificates; `true`: only managed ones.
    pub managed: Option<bool>,
    /// `name` (default), `not_after` or `created_at`.
    pub sort: Option<String>,
    /// `asc` (default) or `desc`.
    pub order: Option<String>,
    /// Page size, 1-500 (default 50).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u64>,
}

/// Parses the raw query: `label` may repeat, which serde's struct form cannot express.
fn parse_list_query(raw: Option<&str>) -> ApiResult<CertificateQuery> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::invalid_field("query", e.to_string()))?;
    let mut q = CertificateQuery {
        limit: 50,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "search" => q.search = Some(v).filter(|s| !s.is_empty()),
            "team" => q.team = Some(v).filter(|s| !s.is_empty()),
            "label" => {
                let (lk, lv) = v
                    .split_once('=')
                    .ok_or_else(|| ApiError::invalid_field("label", "must be key=value"))?;
                q.labels.insert(lk.to_owned(), lv.to_owned());
            }
            "status" => {
                q.status = Some(CertificateStatus::parse(&v).ok_or_else(|| {
                    ApiError::invalid_field(
                        "status",
                        format!("'{v}' is not one of active, revoked, archived"),
                    )
                })?)
            }
            "expiring_within_days" => {
                let days: u32 = v.parse().map_err(|_| {
                    ApiError::invalid_field(
                        "expiring_within_days",
                        "must be a non-negative integer",
                    )
                })?;
                q.expires_before = Some(now() + time::Duration::days(i64::from(days.min(36_500))));
            }
            "issuer_id" => {
                q.issuer_id = Some(Uuid::parse_str(&v).map_err(|_| {
                    ApiError::invalid_field("issuer_id", "must be an issuer id (a UUID)")
                })?)
            }
            "managed" => {
                q.managed = Some(match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(ApiError::invalid_field("managed", "must be true or false")),
                })
            }
            "sort" => {
                q.sort = match v.as_str() {
                    "name" => SortKey::Name,
                    "not_after" => SortKey::NotAfter,
                    "created_at" => SortKey::CreatedAt,
                    _ => {
                        return Err(ApiError::invalid_field(
                            "sort",
                            "must be name, not_after or created_at",
                        ));
                    }
                }
            }
            "order" => {
                q.descending = match v.as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => return Err(ApiError::invalid_field("order", "must be asc or desc")),
                }
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=500).contains(l))
                    .ok_or_else(|| {
                        ApiError::invalid_field("limit", "must be an integer from 1 to 500")
                    })?
            }
            "offset" => {
                q.offset = v.parse().map_err(|_| {
                    ApiError::invalid_field("offset", "must be a non-negative integer")
                })?
            }
            other => return Err(ApiError::invalid_field(other, "unknown query parameter")),
        }
    }
    Ok(q)
}

/// Search, filter, sort and paginate certificates.
#[utoipa::path(get, path = "/certificates", tag = "certificates", params(ListParams),
    responses((status = 200, body = CertificatePage), (status = 400, body = Problem)))]
pub async fn list_certificates(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    uri: axum::http::Uri,
) -> ApiResult<Json<CertificatePage>> {
    let mut q = parse_list_query(uri.query())?;
    // Non-admins see their teams only: the one asked for, else all of them.
    if let TeamScope::Only(teams) =
        principal.scope(Permission::CertificateRead, q.team.as_deref())?
    {
        q.teams = Some(teams);
    }
    let page = state.services.list(&q).await?;
    Ok(Json(CertificatePage {
        items: page.items.iter().map(summary).collect(),
        total: page.total,
        limit: q.limit,
        offset: q.offset,
    }))
}

/// A certificate with versions, chain and history.
#[utoipa::path(get, path = "/certificates/{id}", tag = "certificates", params(("id" = Uuid, Path)),
    responses((status = 200, body = CertificateDetail), (status = 404, body = Problem)))]
pub async fn get_certificate(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<CertificateDetail>> {
    state
        .services
        .certificate_for(&principal, Permission::CertificateRead, id)
        .await?;
    let view = state.services.certificate(id).await?;
    Ok(Json(detail(&state, view).await?))
}

/// Download parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    /// `certificate` (default), `chain`, `fullchain` or `key` (audited).
    pub format: Option<String>,
    /// Version; the current one by default.
    pub version: Option<u32>,
}

/// Download a version as PEM: certificate, chain, fullchain, or the private key (audited).
#[utoipa::path(get, path = "/certificates/{id}/download", tag = "certificates",
    params(("id" = Uuid, Path), DownloadParams),
    responses((status = 200, content_type = "application/x-pem-file", body = String), (status = 404, body = Problem)))]
pub async fn download(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
    Query(p): Query<DownloadParams>,
) -> ApiResult<Response> {
    let permission = if p.format.as_deref() == Some("key") {
        Permission::KeyDownload
    } else {
        Permission::CertificateRead
    };
    if !principal.can(permission, None) {
        return Err(ApiError::from(certflow_core::DomainError::Forbidden(
            format!("{} may not download private keys", principal.subject),
        )));
    }
    state
        .services
        .certificate_for(&principal, permission, id)
        .await?;
    let pem: String = match p.format.as_deref().unwrap_or("certificate") {
        "certificate" => {
            state
                .services
                .download(id, p.version, DownloadKind::Certificate)
                .await?
        }
        "chain" => {
            state
                .services
                .download(id, p.version, DownloadKind::Chain)
                .await?
        }
        "fullchain" => {
            state
                .services
                .download(id, p.version, DownloadKind::FullChain)
                .await?
        }
        "key" => {
            let key = state
                .services
                .download_key(&actor, id, p.version, now())
                .await?;
            key.as_str().to_owned()
        }
        other => {
            return Err(ApiError::invalid_field(
                "format",
                format!("'{other}' is not one of certificate, chain, fullchain, key"),
            ));
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pem-file"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        pem,
    )
        .into_response())
}

/// Download certificate, chain and private key as PKCS#12 (audited).
#[utoipa::path(post, path = "/certificates/{id}/pkcs12", tag = "certificates",
    params(("id" = Uuid, Path)), request_body = Pkcs12Request,
    responses((status = 200, content_type = "application/x-pkcs12", body = Vec<u8>), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn download_pkcs12(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
    request: Request,
) -> ApiResult<Response> {
    state
        .services
        .certificate_for(&principal, Permission::KeyDownload, id)
        .await?;
    // Read after the permission check: 403 whatever a caller without it sent.
    let Json(req) = Json::<Pkcs12Request>::from_request(request, &state).await?;
    let p12 = state
        .services
        .download_pkcs12(&actor, id, req.version, &req.password, now())
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pkcs12"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        p12,
    )
        .into_response())
}

/// Renew now, whatever the schedule says.
///
/// With an `Idempotency-Key`, a repeat of the request (same caller,
/// certificate, key and body) within 24 hours issues no further version.
#[utoipa::path(post, path = "/certificates/{id}/renew", tag = "certificates",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "1-255 printable ASCII characters; a repeat with the same key and body returns the first result, a different body gives 422")),
    request_body(content = RenewRequest, description = "Optional; an empty body renews with the current key source."),
    responses((status = 200, body = CertificateDetail), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn renew(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<CertificateDetail>> {
    state
        .services
        .certificate_for(&principal, Permission::CertificateWrite, id)
        .await?;
    let key = idempotency_key(&headers)?;
    // An empty body is allowed: "renew now" needs no parameters.
    let req: RenewRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RenewRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid_field("body", e.to_string()))?
    };
    let view = state
        .services
        .renew_idempotent(&actor, id, req.csr.as_deref(), key, now())
        .await?;
    Ok(Json(detail(&state, view).await?))
}

/// Revoke a version with an RFC 5280 reason.
///
/// With `replace`, a new version is issued once the revocation committed and
/// the answer's `replacement` says whether it was: `failed` means the
/// revocation stands without one (audited, the team told; renew it). A
/// replacement that cannot be issued (`keyCompromise` of a requester-held
/// key, an archived certificate) is refused with 409 before anything is revoked.
#[utoipa::path(post, path = "/certificates/{id}/revoke", tag = "certificates",
    params(("id" = Uuid, Path)), request_body = RevokeRequest,
    responses((status = 200, body = CertificateDetail), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
    request: Request,
) -> ApiResult<Json<CertificateDetail>> {
    state
        .services
        .certificate_for(&principal, Permission::CertificateWrite, id)
        .await?;
    // Read after the permission check: 403 whatever a caller without it sent.
    let Json(req) = Json::<RevokeRequest>::from_request(request, &state).await?;
    let r = state
        .services
        .revoke_with(&actor, id, req.version, &req.reason, req.replace, now())
        .await?;
    let replacement = r
        .replacement
        .map(|rep| replacement_view(rep, r.revoked_version));
    let mut d = detail(&state, r.view).await?;
    d.replacement = replacement;
    Ok(Json(d))
}

/// The API's view of a revocation's replacement.
pub(crate) fn replacement_view(r: Replacement, revoked_version: u32) -> ReplacementView {
    match r {
        Replacement::Issued { version } => ReplacementView {
            status: "issued".into(),
            revoked_version,
            version: Some(version),
            error: None,
        },
        Replacement::Failed { error } => ReplacementView {
            status: "failed".into(),
            revoked_version,
            version: None,
            error: Some(error),
        },
    }
}

/// Archive: stop renewing and delivering, keep for history.
#[utoipa::path(post, path = "/certificates/{id}/archive", tag = "certificates",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = CertificateDetail), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn archive(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<CertificateDetail>> {
    state
        .services
        .certificate_for(&principal, Permission::CertificateWrite, id)
        .await?;
    let view = state.services.archive(&actor, id, now()).await?;
    Ok(Json(detail(&state, view).await?))
}

/// All issuers.
#[utoipa::path(get, path = "/issuers", tag = "issuers", responses((status = 200, body = Vec<IssuerView>)))]
pub async fn list_issuers(State(state): State<AppState>) -> ApiResult<Json<Vec<IssuerView>>> {
    Ok(Json(
        state
            .services
            .issuers()
            .await?
            .iter()
            .map(issuer_view)
            .collect(),
    ))
}

/// Import an existing CA (certificate and key) as an issuer.
#[utoipa::path(post, path = "/issuers/import", tag = "issuers", request_body = ImportCaRequest,
    responses((status = 201, body = IssuerView), (status = 400, body = Problem)))]
pub async fn import_issuer(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<ImportCaRequest>,
) -> ApiResult<(StatusCode, Json<IssuerView>)> {
    let issuer = state.services.import_ca(&actor, &req, now()).await?;
    Ok((StatusCode::CREATED, Json(issuer_view(&issuer))))
}

/// Audit filters.
#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Exact target, e.g. `certificate/<id>`.
    pub target: Option<String>,
    /// Action prefix, e.g. `certificate.`.
    pub action: Option<String>,
    /// Actor subject.
    pub subject: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
    /// Events at or after this instant (RFC 3339).
    pub since: Option<String>,
    /// Events before this instant (RFC 3339).
    pub until: Option<String>,
    /// Page size, 1-500 (default 100).
    pub limit: Option<u32>,
    /// Rows to skip.
    pub offset: Option<u64>,
}

/// An optional RFC 3339 query parameter.
fn instant_param(field: &str, value: Option<&str>) -> ApiResult<Option<OffsetDateTime>> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).map_err(|_| {
                ApiError::invalid_field(
                    field,
                    "must be an RFC 3339 instant, e.g. 2026-01-31T00:00:00Z",
                )
            })
        })
        .transpose()
}

/// Query the audit trail, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem)))]
pub async fn audit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(p): Query<AuditParams>,
) -> ApiResult<Json<AuditPage>> {
    if principal.teams_with(Permission::AuditRead) != TeamScope::All {
        // Others read the history of their teams' certificates, one at a time.
        let id = p
            .target
            .as_deref()
            .and_then(|t| t.strip_prefix("certificate/"))
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| {
                ApiError::from(certflow_core::DomainError::Forbidden(
                    "only administrators read the whole audit trail; pass target=certificate/<id>"
                        .into(),
                ))
            })?;
        state
            .services
            .certificate_for(&principal, Permission::AuditRead, id)
            .await?;
    }
    let limit = p.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "must be an integer from 1 to 500",
        ));
    }
    let outcome = match p.outcome.as_deref() {
        None => None,
        Some("success") => Some(certflow_core::model::Outcome::Success),
        Some("failure") => Some(certflow_core::model::Outcome::Failure),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "outcome",
                "must be success or failure",
            ));
        }
    };
    let since = instant_param("since", p.since.as_deref())?;
    let until = instant_param("until", p.until.as_deref())?;
    let page = state
        .services
        .audit(&AuditQuery {
            target: p.target,
            action_prefix: p.action,
            subject: p.subject,
            outcome,
            since,
            until,
            limit,
            offset: p.offset.unwrap_or(0),
        })
        .await?;
    Ok(Json(AuditPage {
        items: page.items.iter().map(audit_view).collect(),
        total: page.total,
    }))
}
