//! `POST /certificates/import`: bring an existing certificate (PEM bundle or
//! PKCS#12, with or without its key) under certflow's inventory, optionally
//! taking over its renewal.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use certflow_api::{CertificateDetail, Problem};
use certflow_core::DomainError;
use certflow_core::access::{Permission, Principal};
use certflow_core::model::{Actor, Labels};
use certflow_services::{ImportError, ImportRequest};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::console::detail;
use crate::errors::{ApiError, ApiResult};
use crate::extract::{Json, now};

/// An existing certificate to import. Give exactly one of `pem` and `pkcs12_base64`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportCertificateRequest {
    /// Owning team.
    pub team: String,
    /// Display name; the certificate's first SAN when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels for grouping and search.
    #[serde(default)]
    pub labels: Labels,
    /// PEM: the certificate first, then optionally its chain and its private
    /// key (PKCS#8, SEC 1 or PKCS#1, unencrypted).
    #[serde(default)]
    pub pem: Option<String>,
    /// A PKCS#12 file, base64-encoded.
    #[serde(default)]
    pub pkcs12_base64: Option<String>,
    /// Password of the PKCS#12 file.
    #[serde(default)]
    pub password: Option<String>,
    /// Take over management: renew through certflow from now on (the names
    /// must pass the issuance policy). Otherwise inventory only, never renewed.
    #[serde(default)]
    pub manage: bool,
    /// With `manage`: name of the certflow issuer that renews it. By default
    /// the issuer that signed it, which must then be one of certflow's
    /// (required for a certificate of another CA).
    #[serde(default)]
    pub issuer: Option<String>,
}

/// Import an existing certificate (PEM bundle or PKCS#12, with or without its key).
///
/// The key, if given, is stored sealed like every certflow key. A
/// certificate of a CA outside certflow is recorded under an `external`
/// issuer (one per CA). 400: the bundle is unreadable, or `manage` names no
/// certflow `issuer` for a certificate of another CA; 422: it was read but
/// refused (key does not match, policy); 409: already imported (same serial
/// and issuer).
#[utoipa::path(post, path = "/certificates/import", tag = "certificates",
    request_body = ImportCertificateRequest,
    responses((status = 201, body = CertificateDetail), (status = 400, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn import_certificate(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<ImportCertificateRequest>,
) -> ApiResult<Response> {
    principal.authorize(Permission::CertificateWrite, Some(&req.team))?;
    let req = ImportRequest {
        team: req.team,
        name: req.name,
        labels: req.labels,
        pem: req.pem,
        pkcs12_base64: req.pkcs12_base64,
        password: req.password,
        manage: req.manage,
        issuer: req.issuer,
    };
    let view = match state.services.import_certificate(&actor, &req, now()).await {
        Ok(view) => view,
        Err(ImportError::Unprocessable(fields)) => {
            return Err(ApiError::from(DomainError::Invalid(fields))
                .with_status(StatusCode::UNPROCESSABLE_ENTITY));
        }
        Err(ImportError::Domain(e)) => return Err(e.into()),
    };
    let location = format!("/console/api/v1/certificates/{}", view.certificate.id);
    let body = detail(&state, view).await?;
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Taking over an inventory-only certificate.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManageRequest {
    /// Name of the certflow issuer that will renew it; by default the issuer
    /// that signed it, which must then be one of certflow's (required for a
    /// certificate of an external CA).
    #[serde(default)]
    pub issuer: Option<String>,
}

/// Take over management of an inventory-only certificate: certflow renews it
/// from now on. The body is optional.
///
/// 400: the issuer is unknown, external, or missing for a certificate of an
/// external CA; 422: its names break the issuance policy (nothing changes);
/// 409: already managed, or archived.
#[utoipa::path(post, path = "/certificates/{id}/manage", tag = "certificates",
    params(("id" = Uuid, Path)),
    request_body(content = ManageRequest, description = "Optional."),
    responses((status = 200, body = CertificateDetail), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn manage_certificate(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> ApiResult<Json<CertificateDetail>> {
    state
        .services
        .certificate_for(&principal, Permission::CertificateWrite, id)
        .await?;
    let req: ManageRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ManageRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid_field("body", e.to_string()))?
    };
    match state
        .services
        .manage_certificate(&actor, id, req.issuer.as_deref(), now())
        .await
    {
        Ok(view) => Ok(Json(detail(&state, view).await?)),
        Err(ImportError::Unprocessable(fields)) => {
            Err(ApiError::from(DomainError::Invalid(fields))
                .with_status(StatusCode::UNPROCESSABLE_ENTITY))
        }
        Err(ImportError::Domain(e)) => Err(e.into()),
    }
}
