//! One handler per ACME resource (RFC 8555 §7, RFC 9773 §4).

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certflow_acme_server::eab::parse_eab;
use certflow_acme_server::{Jwk, KeyRef, Problem, parse_jws};
use certflow_core::acme::{AcmeIdentifier, IdentifierType};
use certflow_services::acme::{NewAccount, RevokeBy};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::AcmeApi;
use super::request::{AcmeProblem, KeyUse, authenticate};
use super::views;

type Answer = Result<Response, AcmeProblem>;

fn json_answer(
    status: StatusCode,
    body: &Value,
    location: Option<&str>,
    up: Option<&str>,
) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, loc);
    }
    if let Some(up) = up.and_then(|u| HeaderValue::from_str(&format!("<{u}>;rel=\"up\"")).ok()) {
        headers.append(header::LINK, up);
    }
    resp
}

fn parse_id(id: &str) -> Result<Uuid, AcmeProblem> {
    Uuid::parse_str(id).map_err(|_| {
        Problem::malformed(format!("{id:?} is not a resource id"))
            .with_status(404)
            .into()
    })
}

/// The issuer must exist (404 otherwise); its base URL.
async fn base(api: &AcmeApi, issuer: &str) -> Result<String, AcmeProblem> {
    api.service().issuer_by_name(issuer).await?;
    Ok(api.issuer_url(issuer))
}

fn b64_member(payload: &Map<String, Value>, name: &str) -> Result<Vec<u8>, AcmeProblem> {
    let s = payload
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Problem::malformed(format!("the payload has no string \"{name}\"")))?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| Problem::malformed(format!("\"{name}\" is not unpadded base64url")).into())
}

/// GET directory.
pub(super) async fn directory(State(api): State<AcmeApi>, Path(issuer): Path<String>) -> Answer {
    let base = base(&api, &issuer).await?;
    Ok(json_answer(
        StatusCode::OK,
        &views::directory(&base, api.inner.eab_required),
        None,
        None,
    ))
}

/// HEAD newNonce: 200 (§7.2); the nonce is added on the way out.
pub(super) async fn new_nonce_head(
    State(api): State<AcmeApi>,
    Path(issuer): Path<String>,
) -> Answer {
    base(&api, &issuer).await?;
    Ok(StatusCode::OK.into_response())
}

/// GET newNonce: 204 (§7.2).
pub(super) async fn new_nonce_get(
    State(api): State<AcmeApi>,
    Path(issuer): Path<String>,
) -> Answer {
    base(&api, &issuer).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn contact_of(payload: &Map<String, Value>) -> Result<Option<Vec<String>>, AcmeProblem> {
    match payload.get("contact") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|c| {
                c.as_str().map(str::to_owned).ok_or_else(|| {
                    Problem::malformed("\"contact\" must be an array of URLs").into()
                })
            })
            .collect::<Result<Vec<_>, AcmeProblem>>()
            .map(Some),
        Some(_) => Err(Problem::malformed("\"contact\" must be an array of URLs").into()),
    }
}

/// POST newAccount (§7.3), with external account binding (§7.3.4).
pub(super) async fn new_account(
    State(api): State<AcmeApi>,
    Path(issuer): Path<String>,
    req: Request,
) -> Answer {
    let base = base(&api, &issuer).await?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Embedded).await?;
    let payload = authed.jws.payload_json()?;
    let now = crate::extract::now();
    let thumbprint = authed.key.thumbprint();
    // An existing key's account is returned as it is (RFC 8555 §7.3.1): its
    // single-use EAB key is spent, so the binding is not checked again.
    match api.service().account_by_thumbprint(&thumbprint).await {
        Ok(account) => {
            let url = format!("{base}/acct/{}", account.id);
            return Ok(json_answer(
                StatusCode::OK,
                &views::account(&account),
                Some(&url),
                None,
            ));
        }
        Err(e) if e.kind == certflow_core::acme::AcmeErrorKind::AccountDoesNotExist => {}
        Err(e) => return Err(super::request::deactivated(e)),
    }
    let eab_key_id = match payload.get("externalAccountBinding") {
        None | Some(Value::Null) => None,
        Some(eab) => {
            let binding = parse_eab(eab, &authed.url, &authed.key)?;
            let (_, hmac) = api.service().eab_key(&binding.key_id, now).await?;
            binding.verify(&hmac)?;
            Some(binding.key_id)
        }
    };
    let request = NewAccount {
        jwk: authed.key.to_json(),
        thumbprint,
        contact: contact_of(&payload)?.unwrap_or_default(),
        only_return_existing: payload.get("onlyReturnExisting").and_then(Value::as_bool)
            == Some(true),
        eab_key_id,
    };
    let (account, created) = api
        .service()
        .new_account(request, authed.source.clone(), now)
        .await?;
    let url = format!("{base}/acct/{}", account.id);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_answer(
        status,
        &views::account(&account),
        Some(&url),
        None,
    ))
}

/// POST to an account URL: read, update contacts, or deactivate (§7.3.2, §7.3.6).
pub(super) async fn account(
    State(api): State<AcmeApi>,
    Path((issuer, id)): Path<(String, String)>,
    req: Request,
) -> Answer {
    let base = base(&api, &issuer).await?;
    let id = parse_id(&id)?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Account).await?;
    let account = authed.account()?;
    if account.id != id {
        return Err(Problem::unauthorized("the account URL is not the signing account's").into());
    }
    let url = format!("{base}/acct/{id}");
    if authed.jws.is_post_as_get() {
        return Ok(json_answer(
            StatusCode::OK,
            &views::account(account),
            Some(&url),
            None,
        ));
    }
    let payload = authed.jws.payload_json()?;
    let deactivate = match payload.get("status").and_then(Value::as_str) {
        None => false,
        Some("deactivated") => true,
        Some(other) => {
            return Err(Problem::malformed(format!(
                "an account cannot be set to status {other:?}"
            ))
            .into());
        }
    };
    let updated = api
        .service()
        .update_account(
            account,
            contact_of(&payload)?,
            deactivate,
            authed.source.clone(),
            crate::extract::now(),
        )
        .await?;
    Ok(json_answer(
        StatusCode::OK,
        &views::account(&updated),
        Some(&url),
        None,
    ))
}

fn identifiers_of(payload: &Map<String, Value>) -> Result<Vec<AcmeIdentifier>, AcmeProblem> {
    let list = payload
        .get("identifiers")
        .and_then(Value::as_array)
        .ok_or_else(|| Problem::malformed("the payload has no \"identifiers\" array"))?;
    list.iter()
        .map(|i| {
            let kind = match i.get("type").and_then(Value::as_str) {
                Some("dns") => IdentifierType::Dns,
                Some("ip") => IdentifierType::Ip,
                other => {
                    return Err(Problem::new(
                        certflow_acme_server::ProblemType::UnsupportedIdentifier,
                        format!("identifier type {other:?} is not supported (dns, ip)"),
                    )
                    .into());
                }
            };
            let value = i
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| Problem::malformed("an identifier has no string \"value\""))?;
            Ok(AcmeIdentifier {
                kind,
                value: value.to_owned(),
            })
        })
        .collect()
}

/// POST newOrder (§7.4), `replaces` per RFC 9773 §5.
pub(super) async fn new_order(
    State(api): State<AcmeApi>,
    Path(issuer): Path<String>,
    req: Request,
) -> Answer {
    let base = base(&api, &issuer).await?;
    let issuer_row = api.service().issuer_by_name(&issuer).await?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Account).await?;
    let payload = authed.jws.payload_json()?;
    if payload.contains_key("notBefore") || payload.contains_key("notAfter") {
        return Err(Problem::malformed(
            "notBefore/notAfter are not supported: the issuer's profile sets validity",
        )
        .into());
    }
    let identifiers = identifiers_of(&payload)?;
    let replaces = payload
        .get("replaces")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let order = api
        .service()
        .new_order(
            authed.account()?,
            &issuer_row,
            identifiers,
            replaces,
            authed.source.clone(),
            crate::extract::now(),
        )
        .await?;
    let url = format!("{base}/order/{}", order.id);
    Ok(json_answer(
        StatusCode::CREATED,
        &views::order(&base, &order),
        Some(&url),
        None,
    ))
}

/// POST-as-GET an order (§7.4).
pub(super) async fn order(
    State(api): State<AcmeApi>,
    Path((issuer, id)): Path<(String, String)>,
    req: Request,
) -> Answer {
    let base = base(&api, &issuer).await?;
    let id = parse_id(&id)?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Account).await?;
    authed.post_as_get()?;
    let order = api
        .service()
        .order(authed.account()?, id, crate::extract::now())
        .await?;
    Ok(json_answer(
        StatusCode::OK,
        &views::order(&base, &order),
        None,
        None,
    ))
}

/// POST-as-GET an authorization, or deactivate it (§7.5, §7.5.2).
pub(super) async fn authorization(
    State(api): State<AcmeApi>,
    Path((issuer, id)): Path<(String, String)>,
    req: Request,
) -> Answer {
    let base = base(&api, &issuer).await?;
    let id = parse_id(&id)?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Account).await?;
    let now = crate::extract::now();
    let account = authed.account()?;
    let authz = if authed.jws.is_post_as_get() {
        api.service().authorization(account, id, now).await?
    } else {
        let payload = authed.jws.payload_json()?;
        if payload.get("status").and_then(Value::as_str) != Some("deactivated") {
            return Err(
                Problem::malformed("an authorization may only be set to \"deactivated\"").into(),
            );
        }
        api.service()
            .deactivate_authorization(account, id, authed.source.clone(), now)
            .await?
    };
    Ok(json_answer(
        StatusCode::OK,
        &views::authorization(&base, &authz, now),
        None,
        None,
    ))
}

/// POST to a challenge: `{}` answers it (validation happens in the worker
/// task), an empty payload reads it (§7.5.1).
pub(super) async fn challenge(
    State(api): State<AcmeApi>,
    Path((issuer, id)): Path<(String, String)>,
    req: Request,
) -> Answer {
    let base = base(&api, &issuer).await?;
    let id = parse_id(&id)?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Account).await?;
    let now = crate::extract::now();
    let account = authed.account()?;
    let (chall, authz) = if authed.jws.is_post_as_get() {
        api.service().challenge(account, id, now).await?
    } else {
        authed.jws.payload_json()?;
        api.service()
            .respond_challenge(account, id, authed.source.clone(), now)
            .await?
    };
    let up = format!("{base}/authz/{}", authz.id);
    Ok(json_answer(
        StatusCode::OK,
        &views::challenge(&base, &chall),
        None,
        Some(&up),
    ))
}

/// POST finalize with the CSR (§7.4).
pub(super) async fn finalize(
    State(api): State<AcmeApi>,
    Path((issuer, id)): Path<(String, String)>,
    req: Request,
) -> Answer {
    let base = base(&api, &issuer).await?;
    let id = parse_id(&id)?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Account).await?;
    let csr = b64_member(&authed.jws.payload_json()?, "csr")?;
    let order = api
        .service()
        .finalize(
            authed.account()?,
            id,
            &csr,
            authed.source.clone(),
            crate::extract::now(),
        )
        .await?;
    let url = format!("{base}/order/{}", order.id);
    Ok(json_answer(
        StatusCode::OK,
        &views::order(&base, &order),
        Some(&url),
        None,
    ))
}

/// POST-as-GET the certificate chain, `application/pem-certificate-chain` (§7.4.2).
pub(super) async fn certificate(
    State(api): State<AcmeApi>,
    Path((issuer, id)): Path<(String, String)>,
    req: Request,
) -> Answer {
    base(&api, &issuer).await?;
    let id = parse_id(&id)?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Account).await?;
    authed.post_as_get()?;
    let pem = api
        .service()
        .certificate_chain(authed.account()?, id)
        .await?;
    let mut resp = (StatusCode::OK, pem).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pem-certificate-chain"),
    );
    Ok(resp)
}

/// POST revokeCert (§7.6): by the ordering account (`kid`) or by the
/// certificate's own key (`jwk`).
pub(super) async fn revoke(
    State(api): State<AcmeApi>,
    Path(issuer): Path<String>,
    req: Request,
) -> Answer {
    base(&api, &issuer).await?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Either).await?;
    let payload = authed.jws.payload_json()?;
    let cert = b64_member(&payload, "certificate")?;
    let reason = match payload.get("reason") {
        None | Some(Value::Null) => None,
        Some(r) => Some(
            r.as_u64()
                .and_then(|r| u8::try_from(r).ok())
                .ok_or_else(|| {
                    Problem::new(
                        certflow_acme_server::ProblemType::BadRevocationReason,
                        "\"reason\" must be an RFC 5280 reason code",
                    )
                })?,
        ),
    };
    let by = match &authed.jws.header.key {
        KeyRef::Kid(_) => RevokeBy::Account(authed.account()?),
        KeyRef::Jwk(jwk) => {
            if certflow_acme_server::certificate_spki(&cert)? != jwk.spki_der() {
                return Err(
                    Problem::unauthorized("the JWS key is not the certificate's key").into(),
                );
            }
            RevokeBy::CertificateKey
        }
    };
    api.service()
        .revoke(
            by,
            &cert,
            reason,
            authed.source.clone(),
            crate::extract::now(),
        )
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// POST keyChange (§7.3.5): the inner JWS, signed by the new key, names
/// the account and its old key.
pub(super) async fn key_change(
    State(api): State<AcmeApi>,
    Path(issuer): Path<String>,
    req: Request,
) -> Answer {
    let base = base(&api, &issuer).await?;
    let authed = authenticate(&api, &issuer, req, KeyUse::Account).await?;
    let account = authed.account()?;
    let inner = parse_jws(&authed.jws.payload)?;
    let KeyRef::Jwk(new_key) = &inner.header.key else {
        return Err(Problem::malformed("the inner JWS must carry the new key as \"jwk\"").into());
    };
    if inner.header.url != authed.url {
        return Err(Problem::malformed("the inner JWS \"url\" must be the outer one").into());
    }
    if inner.header.nonce.is_some() {
        return Err(Problem::malformed("the inner JWS must not have a \"nonce\"").into());
    }
    inner.verify(new_key)?;
    let payload = inner.payload_json()?;
    let account_url = format!("{base}/acct/{}", account.id);
    if payload.get("account").and_then(Value::as_str) != Some(account_url.as_str()) {
        return Err(Problem::malformed(
            "the inner payload's \"account\" is not the signing account",
        )
        .into());
    }
    let old = payload
        .get("oldKey")
        .ok_or_else(|| Problem::malformed("the inner payload has no \"oldKey\""))?;
    if Jwk::from_json(old)? != authed.key {
        return Err(Problem::malformed("\"oldKey\" is not the account's current key").into());
    }
    let updated = api
        .service()
        .key_change(
            account,
            new_key.to_json(),
            new_key.thumbprint(),
            authed.source.clone(),
            crate::extract::now(),
        )
        .await?;
    Ok(json_answer(
        StatusCode::OK,
        &views::account(&updated),
        Some(&account_url),
        None,
    ))
}

/// GET renewalInfo (RFC 9773 §4.2), with `Retry-After`.
pub(super) async fn renewal_info(
    State(api): State<AcmeApi>,
    Path((issuer, id)): Path<(String, String)>,
) -> Answer {
    base(&api, &issuer).await?;
    let info = api
        .service()
        .renewal_info(&id, crate::extract::now())
        .await?;
    let body = json!({ "suggestedWindow": info.window });
    let mut resp = json_answer(StatusCode::OK, &body, None, None);
    if let Ok(v) = HeaderValue::from_str(&info.retry_after_secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Ok(resp)
}
