//! What every ACME request goes through: the per-address limit and the
//! protocol headers ([`protocol_headers`]), and the JWS authentication of
//! POSTs ([`authenticate`]): media type, bounded body, JWS rules, URL, a
//! nonce consumed once, the key (embedded or the account's), the signature,
//! and the per-account limit.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use certflow_acme_server::{Jwk, Jws, KeyRef, Problem, ProblemType, check_header, parse_jws};
use certflow_core::acme::AcmeAccount;
use uuid::Uuid;

use super::AcmeApi;

/// The media type of ACME request bodies (RFC 8555 §6.2).
const JOSE_JSON: &str = "application/jose+json";

/// A problem as an HTTP response (RFC 8555 §6.7), with `Retry-After` when rate limited.
pub(super) struct AcmeProblem(pub Problem, pub Option<u64>);

impl From<Problem> for AcmeProblem {
    fn from(p: Problem) -> Self {
        AcmeProblem(p, None)
    }
}

impl From<certflow_core::acme::AcmeError> for AcmeProblem {
    fn from(e: certflow_core::acme::AcmeError) -> Self {
        AcmeProblem(Problem::from(e), None)
    }
}

impl From<certflow_core::error::DomainError> for AcmeProblem {
    fn from(e: certflow_core::error::DomainError) -> Self {
        certflow_core::acme::AcmeError::from(e).into()
    }
}

impl IntoResponse for AcmeProblem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST);
        if status.is_server_error() {
            tracing::error!(problem = %self.0, "ACME request failed");
        }
        let mut resp = (status, self.0.to_json().to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(certflow_acme_server::problem::PROBLEM_CONTENT_TYPE),
        );
        if let Some(secs) = self.1
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

fn rate_limited(what: &str, retry_after: u64) -> AcmeProblem {
    AcmeProblem(
        Problem::new(
            ProblemType::RateLimited,
            format!("too many requests {what}; retry in {retry_after} s"),
        ),
        Some(retry_after),
    )
}

/// The issuer segment of `/acme/<issuer>/...`.
fn issuer_of(path: &str) -> Option<&str> {
    let mut segments = path.trim_start_matches('/').split('/');
    (segments.next() == Some("acme"))
        .then(|| segments.next())
        .flatten()
}

/// The client address (the TCP peer).
pub(super) fn peer(req_extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    req_extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// Around every ACME route: the per-address limit first, then on the way
/// out a fresh `Replay-Nonce` (RFC 8555 §6.5: on every response, errors
/// included, so a `badNonce` carries the nonce to retry with), the index
/// link, and no caching.
pub(super) async fn protocol_headers(
    State(api): State<AcmeApi>,
    req: Request,
    next: Next,
) -> Response {
    let issuer = issuer_of(req.uri().path()).unwrap_or_default().to_owned();
    let address = peer(req.extensions()).map(|p| p.ip().to_string());
    let limited = address.as_ref().and_then(|a| {
        api.inner
            .per_address
            .check(a, Instant::now())
            .err()
            .map(|wait| rate_limited("from this address", wait))
    });
    let mut resp = match limited {
        Some(p) => p.into_response(),
        None => next.run(req).await,
    };
    let now = crate::extract::now();
    match api.service().new_nonce(now).await {
        Ok(nonce) => {
            if let Ok(v) = HeaderValue::from_str(&nonce) {
                resp.headers_mut().insert("replay-nonce", v);
            }
        }
        Err(e) => tracing::warn!(error = %e.detail, "cannot store a replay nonce"),
    }
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "<{}/directory>;rel=\"index\"",
        api.issuer_url(&issuer)
    )) {
        headers.append(header::LINK, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// How a resource wants the request's key named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyUse {
    /// `kid`: an existing account (most resources).
    Account,
    /// `jwk`: newAccount.
    Embedded,
    /// Either: revokeCert (by account, or by the certificate's key).
    Either,
}

/// An authenticated request.
pub(super) struct Authed {
    /// The JWS (payload included).
    pub jws: Jws,
    /// The key that signed it.
    pub key: Jwk,
    /// The account, for `kid` requests.
    pub account: Option<AcmeAccount>,
    /// The request URL (as signed).
    pub url: String,
    /// The client address, for audit.
    pub source: Option<String>,
}

impl Authed {
    /// The account (`kid` requests always have one).
    pub fn account(&self) -> Result<&AcmeAccount, AcmeProblem> {
        self.account.as_ref().ok_or_else(|| {
            Problem::malformed("this request must name its account as \"kid\"").into()
        })
    }

    /// Refuses a payload on a POST-as-GET resource (RFC 8555 §6.3).
    pub fn post_as_get(&self) -> Result<(), AcmeProblem> {
        if self.jws.is_post_as_get() {
            Ok(())
        } else {
            Err(Problem::malformed(
                "this resource is read with POST-as-GET: the payload must be empty",
            )
            .into())
        }
    }
}

fn check_media_type(headers: &HeaderMap) -> Result<(), AcmeProblem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().map(str::trim) == Some(JOSE_JSON) {
        Ok(())
    } else {
        Err(Problem::malformed(format!(
            "the Content-Type must be {JOSE_JSON} (RFC 8555 §6.2), not {ct:?}"
        ))
        .with_status(415)
        .into())
    }
}

/// Authenticates a POST to `issuer`'s resource at the request's path.
pub(super) async fn authenticate(
    api: &AcmeApi,
    issuer: &str,
    req: Request,
    key_use: KeyUse,
) -> Result<Authed, AcmeProblem> {
    check_media_type(req.headers())?;
    let source = peer(req.extensions()).map(|p| p.ip().to_string());
    let url = format!("{}{}", api.inner.base_url, req.uri().path());
    let limit = api.inner.body_limit;
    let body = axum::body::to_bytes(Body::new(req.into_body()), limit)
        .await
        .map_err(|_| {
            Problem::malformed(format!("the body is larger than {limit} bytes")).with_status(413)
        })?;
    let jws = parse_jws(&body)?;
    let wants_jwk = match key_use {
        KeyUse::Account => Some(false),
        KeyUse::Embedded => Some(true),
        KeyUse::Either => None,
    };
    let nonce = check_header(&jws.header, &url, wants_jwk)?;
    let now = crate::extract::now();
    api.service().consume_nonce(nonce, now).await?;
    let (key, account) = match &jws.header.key {
        KeyRef::Jwk(jwk) => (jwk.clone(), None),
        KeyRef::Kid(kid) => {
            let id = account_id(api, issuer, kid)?;
            let account = api.service().account(id).await.map_err(deactivated)?;
            let key = Jwk::from_json(&account.jwk).map_err(|_| Problem::internal())?;
            (key, Some(account))
        }
    };
    jws.verify(&key)?;
    if let Some(a) = &account
        && let Err(wait) = api
            .inner
            .per_account
            .check(&a.id.to_string(), Instant::now())
    {
        return Err(rate_limited("for this account", wait));
    }
    Ok(Authed {
        jws,
        key,
        account,
        url,
        source,
    })
}

/// A deactivated or revoked account's requests are 401 (RFC 8555 §7.3.6).
pub(super) fn deactivated(e: certflow_core::acme::AcmeError) -> AcmeProblem {
    if e.kind == certflow_core::acme::AcmeErrorKind::Unauthorized {
        AcmeProblem(Problem::from(e).with_status(401), None)
    } else {
        e.into()
    }
}

/// The account id of a `kid` (this issuer's account URL).
fn account_id(api: &AcmeApi, issuer: &str, kid: &str) -> Result<Uuid, AcmeProblem> {
    let prefix = format!("{}/acct/", api.issuer_url(issuer));
    kid.strip_prefix(&prefix)
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| {
            Problem::new(
                ProblemType::AccountDoesNotExist,
                format!("\"kid\" {kid:?} is not an account URL of this server"),
            )
            .into()
        })
}
