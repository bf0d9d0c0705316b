//! `/console/api/v1/acme`: External Account Binding keys for the ACME server
//! (create, list, revoke; an operator of the team, as for issuing) and
//! "renew now" on an ACME-issued certificate (its RFC 9773 window moves to
//! now). The HMAC key is in the create answer only; it is stored sealed.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certflow_core::DomainError;
use certflow_core::access::{Permission, Principal};
use certflow_core::acme::EabKey;
use certflow_core::model::Actor;
use certflow_services::acme::AcmeService;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::errors::ApiResult;
use crate::extract::{Json, Path, now};
use crate::state::AppState;

/// `POST /acme/eab-keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEabKeyRequest {
    /// The team whose accounts the key binds (the caller must operate it).
    pub team: String,
}

/// A new EAB key: `hmac_key` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEabKeyView {
    /// The EAB `kid`.
    pub key_id: String,
    /// The HMAC key, base64url without padding (RFC 8555 §7.3.4).
    pub hmac_key: String,
    /// The team.
    pub team: String,
    /// After this it binds no account.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// An EAB key as listed (never its HMAC key).
#[derive(Debug, Serialize, ToSchema)]
pub struct EabKeyView {
    /// The EAB `kid`.
    pub key_id: String,
    /// The team.
    pub team: String,
    /// `unused`, `bound`, `expired` or `revoked`.
    pub state: String,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Revocation time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// The ACME account it bound.
    pub account_id: Option<Uuid>,
}

/// `GET /acme/eab-keys` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EabKeyList {
    /// Newest first.
    pub items: Vec<EabKeyView>,
}

/// `POST /acme/certificates/{id}/renew-now` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RenewNowView {
    /// The certificate.
    pub certificate_id: Uuid,
    /// Where its renewal window now ends: clients polling renewalInfo renew.
    #[serde(with = "time::serde::rfc3339")]
    pub renew_now_at: OffsetDateTime,
}

/// The state of a key at `at`, as the console shows it.
pub fn eab_state(k: &EabKey, at: OffsetDateTime) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.account_id.is_some() {
        "bound"
    } else if k.expires_at <= at {
        "expired"
    } else {
        "unused"
    }
}

fn view(k: EabKey, at: OffsetDateTime) -> EabKeyView {
    EabKeyView {
        state: eab_state(&k, at).to_owned(),
        key_id: k.key_id,
        team: k.team,
        created_by: k.created_by,
        created_at: k.created_at,
        expires_at: k.expires_at,
        revoked_at: k.revoked_at,
        account_id: k.account_id,
    }
}

fn acme(state: &AppState) -> ApiResult<&AcmeService> {
    state.acme.as_ref().ok_or_else(|| {
        DomainError::NotFound(
            "the ACME server (enable it with [acme_server] enabled = true)".into(),
        )
        .into()
    })
}

/// Creates an EAB key for a team; its HMAC key is in this answer only.
#[utoipa::path(post, path = "/acme/eab-keys", tag = "acme",
    request_body = CreateEabKeyRequest,
    responses((status = 201, body = CreatedEabKeyView), (status = 400, body = certflow_api::Problem), (status = 403, body = certflow_api::Problem)))]
pub async fn create_eab_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<CreateEabKeyRequest>,
) -> ApiResult<Response> {
    principal.authorize(Permission::CertificateWrite, Some(&req.team))?;
    let created = acme(&state)?
        .create_eab_key(&actor, &req.team, now())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEabKeyView {
            key_id: created.key.key_id,
            hmac_key: created.hmac_key,
            team: created.key.team,
            expires_at: created.key.expires_at,
        }),
    )
        .into_response())
}

/// Lists the EAB keys of the caller's teams, newest first (never their HMAC keys).
#[utoipa::path(get, path = "/acme/eab-keys", tag = "acme",
    responses((status = 200, body = EabKeyList)))]
pub async fn list_eab_keys(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<EabKeyList>> {
    let scope = principal.scope(Permission::CertificateRead, None)?;
    let at = now();
    let items = acme(&state)?
        .list_eab_keys(scope.teams())
        .await?
        .into_iter()
        .map(|k| view(k, at))
        .collect();
    Ok(Json(EabKeyList { items }))
}

/// Revokes an EAB key: it binds no account from now on (a bound account stays).
#[utoipa::path(delete, path = "/acme/eab-keys/{id}", tag = "acme", params(("id" = String, Path)),
    responses((status = 200, body = EabKeyView), (status = 404, body = certflow_api::Problem), (status = 409, body = certflow_api::Problem)))]
pub async fn revoke_eab_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(key_id): Path<String>,
) -> ApiResult<Json<EabKeyView>> {
    let acme = acme(&state)?;
    let key = acme.get_eab_key(&key_id).await?;
    // Another team's key is as unknown as a missing one.
    if principal
        .authorize(Permission::CertificateRead, Some(&key.team))
        .is_err()
    {
        return Err(DomainError::NotFound(format!("EAB key {key_id}")).into());
    }
    principal.authorize(Permission::CertificateWrite, Some(&key.team))?;
    let at = now();
    let key = acme.revoke_eab_key(&actor, &key_id, at).await?;
    Ok(Json(view(key, at)))
}

/// "Renew now" on a certificate issued through ACME: its renewal window
/// (RFC 9773) ends now, so a client polling renewalInfo renews on its next run.
#[utoipa::path(post, path = "/acme/certificates/{id}/renew-now", tag = "acme", params(("id" = Uuid, Path)),
    responses((status = 200, body = RenewNowView), (status = 404, body = certflow_api::Problem), (status = 409, body = certflow_api::Problem)))]
pub async fn renew_now(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<RenewNowView>> {
    // Like renewing: unknown is 404, another team's certificate 403.
    state
        .services
        .certificate_for(&principal, Permission::CertificateWrite, id)
        .await?;
    let at = now();
    if !acme(&state)?.renew_now(&actor, id, at).await? {
        return Err(DomainError::Conflict(format!(
            "certificate {id} was not issued through ACME: renew it instead"
        ))
        .into());
    }
    Ok(Json(RenewNowView {
        certificate_id: id,
        renew_now_at: at,
    }))
}
