//! Server-side browser sessions of the console: the `__Host-certflow_session`
//! cookie, its lookup with idle and absolute timeouts, and CSRF protection of
//! cookie-authenticated, state-changing requests.
//!
//! The cookie holds 256 random bits (the session id); the database holds
//! only their SHA-256, the principal mapped at login and the provider's ID
//! token sealed under a key derived from the id. The session's CSRF token is
//! derived from the id as well (HMAC-SHA256 keyed by the id), never stored:
//! a copy of the database gives neither a usable cookie, nor a CSRF token,
//! nor an ID token. A request that changes state with the cookie must echo
//! the CSRF token in `X-CSRF-Token` (a cross-site page cannot read it) and,
//! when it sends `Origin`, come from the console's origin. Bearer-token
//! requests carry no ambient credential and are not subject to either check.
//!
//! `__Host-` cookies are only accepted by browsers over HTTPS (`Secure`), so
//! the console must be served over TLS (at the load balancer or a proxy).
//!
//! The audit trail records logins (in `login`), logouts and the use of an
//! expired session (`console.session.expire`, with `idle` or `absolute`):
//! the record is written before the session row goes, and a request whose
//! record cannot be written fails.

use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{constant_time, digest, hmac, rand};
use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certflow_core::DomainError;
use certflow_core::access::{Principal, Role};
use certflow_core::error::DomainResult;
use certflow_core::model::{Actor, AuditEvent};
use certflow_core::ports::{MetadataStore, SessionStore};
use certflow_core::session::Session;
use serde::Serialize;
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::errors::ApiError;
use crate::rate_limit::ConsoleLimits;

/// Name of the session cookie; `__Host-` pins it to this host, path `/`, `Secure`.
pub const COOKIE: &str = "__Host-certflow_session";

/// Header carrying the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Longest pause between two `last_seen` writes of one session.
const TOUCH_EVERY_MAX: Duration = Duration::seconds(60);

/// 256 random bits, base64url.
pub(crate) fn random_token() -> DomainResult<String> {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw).map_err(|_| DomainError::Internal("random source failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// SHA-256 (hex) of a browser-held secret, the form in which it is stored.
pub(crate) fn sha256_hex(secret: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

/// A key or token of `purpose` derived from the session id: HMAC-SHA256
/// keyed by the id. Whoever lacks the id (the database included: it holds
/// only the id's SHA-256) cannot compute it.
fn derive(id: &str, purpose: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, id.as_bytes()), purpose)
}

/// The CSRF token of the session whose id is `id` (base64url).
pub(crate) fn csrf_token(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(derive(id, b"certflow session csrf v1").as_ref())
}

/// The AES-256-GCM key that seals the session's ID token.
fn id_token_key(id: &str) -> DomainResult<LessSafeKey> {
    let tag = derive(id, b"certflow session id-token v1");
    UnboundKey::new(&AES_256_GCM, tag.as_ref())
        .map(LessSafeKey::new)
        .map_err(|_| DomainError::Internal("session sealing key".into()))
}

/// Seals `id_token` for the session `id` (bound to its stored hash):
/// base64url of nonce ‖ ciphertext ‖ tag.
fn seal_id_token(id: &str, id_hash: &str, id_token: &str) -> DomainResult<String> {
    let key = id_token_key(id)?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce).map_err(|_| DomainError::Internal("random source failed".into()))?;
    let mut sealed = id_token.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(id_hash.as_bytes()),
        &mut sealed,
    )
    .map_err(|_| DomainError::Internal("sealing the ID token".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(URL_SAFE_NO_PAD.encode(out))
}

/// Opens what [`seal_id_token`] sealed; `None` if it does not open (another
/// session's, or altered).
fn open_id_token(id: &str, id_hash: &str, sealed: &str) -> Option<String> {
    let key = id_token_key(id).ok()?;
    let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if raw.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut in_out = ciphertext.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(id_hash.as_bytes()), &mut in_out)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// Audit target of a session: `session/` and 16 hex digits of the SHA-256 of
/// its stored id hash. It ties a login to its logout or expiry without
/// being usable to find, let alone present, the session.
pub fn audit_target(session: &Session) -> String {
    let digest = sha256_hex(&session.id_hash);
    format!("session/{}", &digest[..16])
}

/// Session lifetimes and the console's origin.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// A session with no request for this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after login whatever the activity.
    pub absolute_timeout: Duration,
    /// `scheme://host[:port]` of the console; other `Origin`s may not change state.
    pub console_origin: String,
}

/// The session service: creates, finds, refreshes and ends sessions.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    audit: Arc<dyn MetadataStore>,
    settings: Arc<SessionSettings>,
}

/// A live session found from a request's cookie (or just created), with
/// what only the id can give: its CSRF token and its ID token.
#[derive(Clone)]
pub struct CurrentSession {
    /// The stored session.
    pub session: Session,
    /// The token state-changing requests must echo (derived from the id).
    pub csrf_token: String,
    /// The session id (the cookie's value), to open the sealed ID token.
    id: String,
}

impl std::fmt::Debug for CurrentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The id and the CSRF token are secrets: never printed.
        f.debug_struct("CurrentSession")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl CurrentSession {
    fn new(id: String, session: Session) -> Self {
        Self {
            csrf_token: csrf_token(&id),
            session,
            id,
        }
    }

    /// The provider's ID token, for `id_token_hint` at logout, if the login
    /// kept one and it opens.
    pub fn id_token(&self) -> Option<String> {
        let sealed = self.session.sealed_id_token.as_deref()?;
        let opened = open_id_token(&self.id, &self.session.id_hash, sealed);
        if opened.is_none() {
            tracing::warn!("a session's sealed ID token does not open; logging out without a hint");
        }
        opened
    }
}

impl Sessions {
    /// Sessions kept in `store`, audited in `audit`'s trail.
    pub fn new(
        store: Arc<dyn SessionStore>,
        audit: Arc<dyn MetadataStore>,
        settings: SessionSettings,
    ) -> Self {
        Self {
            store,
            audit,
            settings: Arc::new(settings),
        }
    }

    /// The store (for pending logins).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Appends `event` to the audit trail.
    pub async fn audit(&self, event: &AuditEvent) -> DomainResult<()> {
        self.audit.append_audit(event).await
    }

    /// Creates a session with a fresh id for `principal`, keeping `id_token`
    /// sealed; returns the cookie value (the id) and the session. Never
    /// reuses an id the browser brought: that would let a planted cookie
    /// ride the login (fixation).
    pub async fn create(
        &self,
        principal: Principal,
        id_token: Option<String>,
        now: OffsetDateTime,
    ) -> DomainResult<(String, CurrentSession)> {
        let id = random_token()?;
        let id_hash = sha256_hex(&id);
        let sealed_id_token = id_token
            .map(|t| seal_id_token(&id, &id_hash, &t))
            .transpose()?;
        let session = Session {
            id_hash,
            principal,
            sealed_id_token,
            created_at: now,
            last_seen: now,
            idle_expires_at: now + self.settings.idle_timeout,
            absolute_expires_at: now + self.settings.absolute_timeout,
        };
        self.store.insert_session(&session).await?;
        Ok((id.clone(), CurrentSession::new(id, session)))
    }

    /// [`current_from`](Self::current_from) for a caller whose address is unknown.
    pub async fn current(
        &self,
        headers: &HeaderMap,
        now: OffsetDateTime,
    ) -> DomainResult<Option<CurrentSession>> {
        self.current_from(headers, now, None).await
    }

    /// The live session named by the request's cookie, if any; records the
    /// activity (at most every `min(60 s, idle/4)`, to spare the database a
    /// write per request). An expired session is audited (who, from
    /// `source`, idle or absolute), deleted, and reads as none.
    pub async fn current_from(
        &self,
        headers: &HeaderMap,
        now: OffsetDateTime,
        source: Option<&str>,
    ) -> DomainResult<Option<CurrentSession>> {
        let Some(id) = cookie_value(headers, COOKIE) else {
            return Ok(None);
        };
        let id_hash = sha256_hex(&id);
        let Some(mut session) = self.store.get_session(&id_hash).await? else {
            return Ok(None);
        };
        if !session.is_live(now) {
            // Whichever timeout ended it first.
            let reason = if session.absolute_expires_at <= session.idle_expires_at {
                "absolute"
            } else {
                "idle"
            };
            // Recorded first: no session disappears without its record. Two
            // requests racing on one expired cookie may both record it.
            self.audit(&AuditEvent::success(
                now,
                &actor(&session, source),
                "console.session.expire",
                audit_target(&session),
                json!({
                    "reason": reason,
                    "created_at": session.created_at.unix_timestamp(),
                    "last_seen": session.last_seen.unix_timestamp(),
                }),
            ))
            .await?;
            self.store.delete_session(&id_hash).await?;
            tracing::info!(subject = %session.principal.subject, reason, "console session expired");
            return Ok(None);
        }
        let every = TOUCH_EVERY_MAX.min(self.settings.idle_timeout / 4);
        if now - session.last_seen >= every {
            let idle = now + self.settings.idle_timeout;
            self.store.touch_session(&id_hash, now, idle).await?;
            session.last_seen = now;
            session.idle_expires_at = idle;
        }
        Ok(Some(CurrentSession::new(id, session)))
    }

    /// Authenticates a request by its session cookie, for the auth middleware.
    ///
    /// `Ok(None)`: no session (no or unknown cookie, expired session) or a
    /// bearer-token request, which this does not judge. `Ok(Some)`: the
    /// session's principal. `Err` (403): a state-changing request with the
    /// cookie but without the session's CSRF token or from a foreign origin.
    pub async fn authenticate(
        &self,
        method: &Method,
        headers: &HeaderMap,
        source: Option<&str>,
    ) -> Result<Option<Principal>, ApiError> {
        Ok(self
            .authenticate_session(method, headers, source)
            .await?
            .map(|s| s.session.principal))
    }

    /// [`authenticate`](Self::authenticate), returning the whole session.
    pub async fn authenticate_session(
        &self,
        method: &Method,
        headers: &HeaderMap,
        source: Option<&str>,
    ) -> Result<Option<CurrentSession>, ApiError> {
        if has_bearer(headers) {
            return Ok(None);
        }
        let Some(current) = self
            .current_from(headers, OffsetDateTime::now_utc(), source)
            .await?
        else {
            return Ok(None);
        };
        if changes_state(method) {
            self.check_csrf(&current.csrf_token, headers)?;
        }
        Ok(Some(current))
    }

    /// Refuses a state-changing request that lacks the session's CSRF token
    /// (`csrf_token`, [`CurrentSession::csrf_token`]) or comes from another origin.
    pub fn check_csrf(&self, csrf_token: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            // `null` (sandboxed frames, some redirects) is as foreign as any other site.
            if origin.as_bytes() != self.settings.console_origin.as_bytes() {
                tracing::warn!(origin = ?origin, "refused cross-origin session request");
                return Err(csrf_refused("the request comes from another origin"));
            }
        }
        let sent = headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if sent.is_empty()
            || constant_time::verify_slices_are_equal(sent, csrf_token.as_bytes()).is_err()
        {
            return Err(csrf_refused(
                "send the session's CSRF token (GET /console/session) in X-CSRF-Token",
            ));
        }
        Ok(())
    }

    /// [`end_from`](Self::end_from) for a caller whose address is unknown.
    pub async fn end(&self, session: &Session) -> DomainResult<bool> {
        self.end_from(session, None).await
    }

    /// Logs `session` out: records `console.logout` (by its subject, from
    /// `source`), then deletes it. Fails, leaving the session, if the record
    /// cannot be written.
    pub async fn end_from(&self, session: &Session, source: Option<&str>) -> DomainResult<bool> {
        self.audit(&AuditEvent::success(
            OffsetDateTime::now_utc(),
            &actor(session, source),
            "console.logout",
            audit_target(session),
            json!({ "created_at": session.created_at.unix_timestamp() }),
        ))
        .await?;
        self.store.delete_session(&session.id_hash).await
    }

    /// Deletes a session that was just created, when its login cannot be
    /// recorded (no audit: the session never served a request).
    pub(crate) async fn discard(&self, session: &Session) -> DomainResult<bool> {
        self.store.delete_session(&session.id_hash).await
    }

    /// Deletes the session named by the request's cookie, if any (a login
    /// replaces whatever session the browser had).
    pub async fn end_cookie_session(&self, headers: &HeaderMap) -> DomainResult<()> {
        if let Some(id) = cookie_value(headers, COOKIE) {
            self.store.delete_session(&sha256_hex(&id)).await?;
        }
        Ok(())
    }
}

/// The audit actor of a session's person, from `source`.
fn actor(session: &Session, source: Option<&str>) -> Actor {
    Actor {
        subject: session.principal.subject.clone(),
        source: source.map(str::to_owned),
    }
}

/// `Set-Cookie` of a new session.
pub fn set_cookie(id: &str) -> Result<HeaderValue, ApiError> {
    // No Max-Age: a browser session cookie; the server enforces the timeouts.
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Secure; HttpOnly; SameSite=Lax; Path=/"
    ))
    .map_err(|_| ApiError::from(DomainError::Internal("session cookie".into())))
}

/// `Set-Cookie` that makes the browser drop the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-certflow_session=; Secure; HttpOnly; SameSite=Lax; Path=/; Max-Age=0",
    )
}

fn csrf_refused(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf",
        "Cross-site request refused",
        detail,
    )
}

fn changes_state(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

/// What the console UI learns about its session.
#[derive(Debug, Serialize)]
pub struct SessionView {
    /// The person's subject (`sub`).
    pub subject: String,
    /// Roles mapped from the provider's groups.
    pub roles: Vec<Role>,
    /// Teams mapped from the provider's groups.
    pub teams: Vec<String>,
    /// Token to send in `X-CSRF-Token` on state-changing requests.
    pub csrf_token: String,
    /// When the session ends without further activity (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `GET /console/session`: who is signed in, and the CSRF token. Rate-limited
/// per subject (per client IP without a live session).
pub async fn get_session(
    State(sessions): State<Sessions>,
    State(limits): State<Arc<ConsoleLimits>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let client = limits.client_ip(peer.map(|p| p.0.0.ip()), &headers);
    let source = client.map(|ip| ip.to_string());
    let current = sessions
        .current_from(&headers, OffsetDateTime::now_utc(), source.as_deref())
        .await;
    let limited = match &current {
        Ok(Some(c)) => limits.subject(&c.session.principal.subject),
        _ => limits.anonymous(client),
    };
    if let Err(limited) = limited {
        return limited.into_response();
    }
    match current {
        Ok(Some(CurrentSession {
            session,
            csrf_token,
            ..
        })) => {
            let view = SessionView {
                expires_at: session.expires_at(),
                subject: session.principal.subject,
                roles: session.principal.roles,
                teams: session.principal.teams,
                csrf_token,
            };
            (
                [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
                axum::Json(view),
            )
                .into_response()
        }
        Ok(None) => {
            ApiError::unauthorized("no console session; sign in at /console/login").into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others_and_empty_is_none() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-certflow_session=xyz"),
        );
        assert_eq!(cookie_value(&h, COOKIE).as_deref(), Some("xyz"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-certflow_session="),
        );
        assert_eq!(cookie_value(&h, COOKIE), None);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("x__Host-certflow_session=1"),
        );
        assert_eq!(cookie_value(&h, COOKIE), None);
    }

    #[test]
    fn cookie_attributes() {
        let v = set_cookie("abc").unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "__Host-certflow_session=abc; Secure; HttpOnly; SameSite=Lax; Path=/"
        );
        assert!(!clear_cookie().to_str().unwrap().contains("Domain"));
    }

    #[test]
    fn csrf_token_is_derived_from_the_id_and_differs_from_its_hash() {
        let id = random_token().unwrap();
        assert_eq!(csrf_token(&id), csrf_token(&id));
        assert_ne!(csrf_token(&id), csrf_token(&random_token().unwrap()));
        assert!(!sha256_hex(&id).contains(&csrf_token(&id)));
        // 256 bits, base64url without padding.
        assert_eq!(csrf_token(&id).len(), 43);
    }

    #[test]
    fn id_token_opens_only_with_its_session_id_and_hash() {
        let id = random_token().unwrap();
        let hash = sha256_hex(&id);
        let sealed = seal_id_token(&id, &hash, "eyJ.header.sig").unwrap();
        assert!(!sealed.contains("eyJ"));
        assert_eq!(
            open_id_token(&id, &hash, &sealed).as_deref(),
            Some("eyJ.header.sig")
        );
        let other = random_token().unwrap();
        assert_eq!(open_id_token(&other, &hash, &sealed), None);
        assert_eq!(open_id_token(&id, &sha256_hex(&other), &sealed), None);
        let mut altered = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(
            open_id_token(&id, &hash, &URL_SAFE_NO_PAD.encode(altered)),
            None
        );
        assert_eq!(open_id_token(&id, &hash, "x"), None);
    }

    #[test]
    fn safe_methods_do_not_change_state() {
        assert!(!changes_state(&Method::GET));
        assert!(changes_state(&Method::POST));
        assert!(changes_state(&Method::DELETE));
        assert!(changes_state(&Method::PATCH));
        assert!(changes_state(&Method::PUT));
    }
}
