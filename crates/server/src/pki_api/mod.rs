//! Public CA endpoints for relying parties (no authentication):
//! `/pki/{issuer}/ca.crt` serves the issuing CA certificate (DER, the AIA
//! caIssuers URL of what it signs), `/pki/{issuer}/root.crt` the root, the
//! trust anchor to configure (DER), `/pki/{issuer}/ca-bundle.pem` both and
//! anything between (PEM, issuing CA first),
//! `/pki/{issuer}/crl` serves the stored CRL, `/pki/{issuer}/ocsp` answers
//! OCSP requests (RFC 6960) by POST and by GET (appendix A.1: the DER
//! request, base64, URL-encoded, in the path).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use certflow_services::OcspReply;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use uuid::Uuid;

use crate::errors::ApiResult;
use crate::extract::Path;
use crate::state::AppState;

/// The public CA routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/pki/{issuer}/ca.crt", get(issuer_cert))
        .route("/pki/{issuer}/root.crt", get(root_cert))
        .route("/pki/{issuer}/ca-bundle.pem", get(ca_bundle))
        .route("/pki/{issuer}/crl", get(crl))
        .route("/pki/{issuer}/ocsp", post(ocsp_post))
        .route("/pki/{issuer}/ocsp/{*request}", get(ocsp_get))
}

/// `GET /pki/{issuer}/ca.crt`: the issuer's certificate (DER).
async fn issuer_cert(State(state): State<AppState>, Path(id): Path<Uuid>) -> ApiResult<Response> {
    let der = state.services.issuer_certificate_der(id).await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response())
}

/// `GET /pki/{issuer}/root.crt`: the issuer's root certificate (DER, RFC
/// 2585's `application/pkix-cert`, like `ca.crt`).
async fn root_cert(State(state): State<AppState>, Path(id): Path<Uuid>) -> ApiResult<Response> {
    let der = state.services.issuer_root_der(id).await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response())
}

/// `GET /pki/{issuer}/ca-bundle.pem`: the issuing certificate and the chain
/// above it up to the root, PEM, as RFC 8555 §9.1's
/// `application/pem-certificate-chain`.
async fn ca_bundle(State(state): State<AppState>, Path(id): Path<Uuid>) -> ApiResult<Response> {
    let pem = state.services.issuer_ca_bundle_pem(id).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        pem,
    )
        .into_response())
}

/// HTTP caches may keep a CRL this long at most, however far its
/// nextUpdate is, so a revocation reaches CRL fetchers behind caches within
/// the hour (OCSP answers are fresher still).
const CRL_MAX_AGE_SECS: i64 = 3600;
/// ... and a GET OCSP answer this long (the responder's own status cache).
const OCSP_MAX_AGE_SECS: i64 = 60;

fn http_date(t: OffsetDateTime) -> Option<HeaderValue> {
    // RFC 9110 IMF-fixdate is RFC 2822 with "GMT".
    let text = t.to_offset(time::UtcOffset::UTC).format(&Rfc2822).ok()?;
    HeaderValue::from_str(&text.replace("+0000", "GMT")).ok()
}

fn max_age(until: OffsetDateTime, now: OffsetDateTime, cap: i64) -> HeaderValue {
    let secs = (until - now).whole_seconds().clamp(0, cap);
    HeaderValue::from_str(&format!("public, max-age={secs}, no-transform"))
        .unwrap_or(HeaderValue::from_static("no-cache"))
}

/// `GET /pki/{issuer}/crl`: the published CRL (DER) with `ETag` (its CRL
/// number), `Last-Modified` (thisUpdate) and `Cache-Control` bounded by
/// nextUpdate; `If-None-Match` gives 304.
async fn crl(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let now = OffsetDateTime::now_utc();
    let crl = state.services.current_crl(id, now).await?;
    let etag = format!("\"crl-{}\"", crl.number);
    let mut out = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, v);
    }
    if let Some(v) = http_date(crl.this_update) {
        out.insert(header::LAST_MODIFIED, v);
    }
    if let Some(v) = http_date(crl.next_update) {
        out.insert(header::EXPIRES, v);
    }
    out.insert(
        header::CACHE_CONTROL,
        max_age(crl.next_update, now, CRL_MAX_AGE_SECS),
    );
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-crl"),
    );
    Ok((out, crl.der).into_response())
}

fn ocsp_response(reply: OcspReply, cacheable: bool, now: OffsetDateTime) -> Response {
    let mut out = HeaderMap::new();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ocsp-response"),
    );
    match reply.validity {
        // RFC 5019 §6.2: a GET answer without a nonce may be cached until nextUpdate.
        Some((this_update, next_update)) if cacheable => {
            out.insert(
                header::CACHE_CONTROL,
                max_age(next_update, now, OCSP_MAX_AGE_SECS),
            );
            if let Some(v) = http_date(this_update) {
                out.insert(header::LAST_MODIFIED, v);
            }
            if let Some(v) = http_date(next_update) {
                out.insert(header::EXPIRES, v);
            }
        }
        _ => {
            out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
    }
    // OCSP errors travel inside a 200 (RFC 6960 appendix A.1): clients read
    // responseStatus, not the HTTP status.
    (out, reply.der).into_response()
}

/// `POST /pki/{issuer}/ocsp` with an `application/ocsp-request` body.
async fn ocsp_post(
    State(state): State<AppState>,
    Path(issuer): Path<String>,
    body: Bytes,
) -> Response {
    let now = OffsetDateTime::now_utc();
    let reply = answer(&state, &issuer, &body, now).await;
    ocsp_response(reply, false, now)
}

/// `GET /pki/{issuer}/ocsp/{request}`: the request DER, base64 (standard
/// or URL-safe alphabet), URL-encoded.
async fn ocsp_get(
    State(state): State<AppState>,
    Path((issuer, encoded)): Path<(String, String)>,
) -> Response {
    let now = OffsetDateTime::now_utc();
    let text: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD
        .decode(&text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')));
    let reply = match der {
        Ok(der) => answer(&state, &issuer, &der, now).await,
        Err(_) => OcspReply {
            der: certflow_pki::ocsp_error_response(
                certflow_pki::OcspResponseStatus::MalformedRequest,
            ),
            validity: None,
            nonce: false,
        },
    };
    let cacheable = reply.validity.is_some() && !reply.nonce;
    ocsp_response(reply, cacheable, now)
}

async fn answer(state: &AppState, issuer: &str, der: &[u8], now: OffsetDateTime) -> OcspReply {
    match Uuid::parse_str(issuer) {
        Ok(id) => state.services.ocsp(id, der, now).await,
        Err(_) => OcspReply {
            der: certflow_pki::ocsp_error_response(certflow_pki::OcspResponseStatus::Unauthorized),
            validity: None,
            nonce: false,
        },
    }
}
