//! Browser login to the console through an OpenID provider: authorization
//! code flow with PKCE (RFC 7636, S256), `state` and `nonce`, a confidential
//! client (`client_secret_basic`), and RP-initiated logout.
//!
//! `GET /console/login` stores a pending login (state, nonce, PKCE verifier;
//! keyed by the state's hash, ten minutes) and sends the browser to the
//! provider. `GET /console/callback` consumes that state in one statement (a
//! replay finds nothing), exchanges the code with the verifier, has
//! certflow-auth validate the ID token (signature, `iss`, `aud` = client id,
//! `exp`, `nonce`), maps its groups to a principal and opens a session under
//! a NEW id. `POST /console/logout` ends it and returns the provider's
//! end-session URL.
//!
//! Every callback is audited: `console.login` with the subject, the client's
//! address and the outcome; a refusal names its reason (a fixed code such as
//! `unknown_state` or `id_token_invalid`, never a token or code). Login and
//! callback share a tight per-IP rate limit, as each costs an audit record
//! and possibly a provider round trip.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use axum::extract::{ConnectInfo, FromRef, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router, middleware};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use certflow_auth::{AuthError, DiscoveryDocument, TokenValidator};
use certflow_core::model::{Actor, AuditEvent, Outcome};
use certflow_core::ports::MetadataStore;
use certflow_core::session::PendingLogin;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use crate::config::OidcConfig;
use crate::errors::{ApiError, ApiResult};
use crate::rate_limit::ConsoleLimits;
use crate::session::{self, SessionSettings, Sessions, random_token, sha256_hex};

/// How long a started login may take at the provider.
const LOGIN_TTL: time::Duration = time::Duration::minutes(10);

/// Timeout of each call to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest provider error text echoed back to the browser.
const MAX_PROVIDER_TEXT: usize = 200;

/// The console's OpenID relying party and its sessions.
#[derive(Clone)]
pub struct ConsoleAuth {
    inner: Arc<Inner>,
    sessions: Sessions,
    limits: Arc<ConsoleLimits>,
}

struct Inner {
    validator: TokenValidator,
    issuer: String,
    client_id: String,
    client_secret: SecretString,
    redirect_uri: String,
    scopes: Vec<String>,
    post_logout_redirect_uri: Option<String>,
    http: reqwest::Client,
}

impl FromRef<ConsoleAuth> for Sessions {
    fn from_ref(console: &ConsoleAuth) -> Sessions {
        console.sessions.clone()
    }
}

impl FromRef<ConsoleAuth> for Arc<ConsoleLimits> {
    fn from_ref(console: &ConsoleAuth) -> Arc<ConsoleLimits> {
        console.limits.clone()
    }
}

impl ConsoleAuth {
    /// The relying party of `[auth.oidc]`, keeping sessions in `sessions`
    /// and limiting requests with `limits` (shared with the console API).
    pub fn new(
        oidc: &OidcConfig,
        sessions: Sessions,
        limits: Arc<ConsoleLimits>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut provider = oidc.provider.clone();
        // Access tokens are not used here; ID tokens are checked against the client id.
        provider
            .audience
            .get_or_insert_with(|| oidc.client_id.clone());
        let validator = TokenValidator::new(vec![provider], http.clone())?;
        if oidc.redirect_uri.starts_with("http://") {
            tracing::warn!(
                redirect_uri = %oidc.redirect_uri,
                "the console is configured over plain HTTP: browsers drop the Secure \
                 __Host- session cookie there (except on localhost); serve it over HTTPS"
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                validator,
                issuer: oidc.provider.issuer.clone(),
                client_id: oidc.client_id.clone(),
                client_secret: oidc.client_secret.clone(),
                redirect_uri: oidc.redirect_uri.clone(),
                scopes: oidc.scopes.clone(),
                post_logout_redirect_uri: oidc.post_logout_redirect_uri.clone(),
                http,
            }),
            sessions,
            limits,
        })
    }

    /// The console login of `config`, or `None` without `[auth.oidc]`:
    /// sessions in `store`, audited in `audit`, rate-limited by `limits`.
    pub fn from_config(
        config: &crate::config::Config,
        store: Arc<dyn certflow_core::ports::SessionStore>,
        audit: Arc<dyn MetadataStore>,
        limits: Arc<ConsoleLimits>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(oidc) = &config.auth.oidc else {
            return Ok(None);
        };
        let settings = SessionSettings {
            idle_timeout: config.auth.session.idle_timeout(),
            absolute_timeout: config.auth.session.absolute_timeout(),
            console_origin: config.auth.console_origin().unwrap_or_default(),
        };
        Self::new(oidc, Sessions::new(store, audit, settings), limits).map(Some)
    }

    /// The sessions, for the auth middleware ([`Sessions::authenticate`]).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    async fn discovery(&self) -> ApiResult<Arc<DiscoveryDocument>> {
        self.inner
            .validator
            .discovery(&self.inner.issuer)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "identity provider discovery failed");
                provider_unavailable()
            })
    }
}

/// Routes of the login flow and the session: `/console/login`,
/// `/console/callback`, `/console/logout` (JSON, for scripts),
/// `/console/sign-out` (the pages' form) and `/console/session`.
pub fn router(console: ConsoleAuth) -> Router {
    Router::new()
        .route("/console/login", get(login))
        .route("/console/callback", get(callback))
        .route("/console/logout", post(logout))
        .route("/console/sign-out", post(sign_out))
        .route("/console/session", get(session::get_session))
        .with_state(console)
        .method_not_allowed_fallback(crate::errors::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            crate::extract::BODY_LIMIT,
            crate::errors::limit_body,
        ))
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(middleware::from_fn(crate::telemetry::metrics::track))
}

/// The peer address of a request, when it came over a socket.
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

impl ConsoleAuth {
    /// The client's address (behind trusted proxies, the forwarded one).
    fn client(&self, peer: Peer, headers: &HeaderMap) -> Option<IpAddr> {
        self.limits.client_ip(peer.map(|p| p.0.0.ip()), headers)
    }
}

/// Why a callback was refused, for the audit trail: a fixed code, plus the
/// provider's or validator's own short code where there is one.
struct Refusal {
    error: ApiError,
    reason: &'static str,
    code: Option<String>,
}

impl Refusal {
    fn new(error: ApiError, reason: &'static str) -> Self {
        Self {
            error,
            reason,
            code: None,
        }
    }

    fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
}

/// Longest provider or validator code kept in the audit trail.
const MAX_AUDIT_CODE: usize = 64;

fn login_failed(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "login-failed",
        "The login could not be completed",
        detail,
    )
}

fn provider_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "identity-provider-unavailable",
        "The identity provider is unavailable",
        "the identity provider could not be reached or answered unexpectedly; retry later",
    )
}

/// Printable ASCII excerpt of provider-supplied text.
fn excerpt(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_PROVIDER_TEXT)
        .collect()
}

fn redirect(location: &str) -> ApiResult<Response> {
    let location = HeaderValue::from_str(location)
        .map_err(|_| ApiError::from(certflow_core::DomainError::Internal("location".into())))?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

/// Appends `params` to `endpoint`'s query.
fn with_query(endpoint: &str, params: &[(&str, &str)]) -> ApiResult<String> {
    let query = serde_urlencoded::to_string(params)
        .map_err(|e| ApiError::from(certflow_core::DomainError::Internal(e.to_string())))?;
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    Ok(format!("{endpoint}{sep}{query}"))
}

/// Query of `GET /console/login`.
#[derive(Debug, Deserialize)]
struct LoginQuery {
    /// The console page to come back to (see [`safe_return_to`]).
    return_to: Option<String>,
}

/// Longest `return_to` kept.
const MAX_RETURN_TO: usize = 2000;

/// `return_to` if it is a path of this console to come back to after the
/// login, else `None` (the dashboard). Only same-origin relative paths under
/// `/console/` pass: not `//host` or `/\host` (browsers read both as another
/// host), no scheme, no control characters or spaces, no `..` segment, and
/// not the login routes themselves (a loop). Anything else would make the
/// login an open redirect.
pub fn safe_return_to(return_to: &str) -> Option<String> {
    let path = return_to.split(['?', '#']).next().unwrap_or("");
    let ok = return_to.len() <= MAX_RETURN_TO
        && return_to.starts_with("/console/")
        && return_to
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\')
        && !path.split('/').any(|seg| seg == ".." || seg == ".")
        && ![
            "/console/login",
            "/console/callback",
            "/console/logout",
            "/console/sign-out",
        ]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    ok.then(|| return_to.to_owned())
}

/// `GET /console/login`: start a login at the provider; `?return_to=` names
/// the console page to show afterwards.
async fn login(
    State(console): State<ConsoleAuth>,
    peer: Peer,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    if let Err(limited) = console.limits.login(console.client(peer, &headers)) {
        return Ok(limited.into_response());
    }
    let doc = console.discovery().await?;
    let now = OffsetDateTime::now_utc();
    if let Err(e) = console.sessions.store().purge_expired_sessions(now).await {
        tracing::warn!(error = %e, "purging expired sessions failed");
    }
    let state = random_token()?;
    let nonce = random_token()?;
    let verifier = random_token()?;
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    console
        .sessions
        .store()
        .insert_pending_login(&PendingLogin {
            state_hash: sha256_hex(&state),
            nonce: nonce.clone(),
            pkce_verifier: verifier,
            created_at: now,
            expires_at: now + LOGIN_TTL,
            return_to: query
                .ok()
                .and_then(|Query(q)| q.return_to)
                .and_then(|r| safe_return_to(&r)),
        })
        .await?;
    let inner = &console.inner;
    let scope = std::iter::once("openid")
        .chain(
            inner
                .scopes
                .iter()
                .map(String::as_str)
                .filter(|s| *s != "openid"),
        )
        .collect::<Vec<_>>()
        .join(" ");
    let url = with_query(
        &doc.authorization_endpoint,
        &[
            ("response_type", "code"),
            ("client_id", &inner.client_id),
            ("redirect_uri", &inner.redirect_uri),
            ("scope", &scope),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    redirect(&url)
}

/// Query of the provider's redirect back to the console.
#[derive(Debug, Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /console/callback`: finish the login and open a session; audited
/// whatever the outcome.
async fn callback(
    State(console): State<ConsoleAuth>,
    peer: Peer,
    headers: HeaderMap,
    query: Result<Query<Callback>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let client = console.client(peer, &headers);
    if let Err(limited) = console.limits.login(client) {
        return Ok(limited.into_response());
    }
    let source = client.map(|ip| ip.to_string());
    let now = OffsetDateTime::now_utc();
    match finish_login(&console, &headers, query, now).await {
        Ok((id, created, return_to)) => {
            let actor = Actor {
                subject: created.principal.subject.clone(),
                source,
            };
            let event = AuditEvent::success(
                now,
                &actor,
                "console.login",
                session::audit_target(&created),
                json!({
                    "roles": created.principal.roles,
                    "teams": created.principal.teams,
                    "absolute_expires_at": created.absolute_expires_at.unix_timestamp(),
                }),
            );
            // No record, no session.
            if let Err(e) = console.sessions.audit(&event).await {
                if let Err(d) = console.sessions.discard(&created).await {
                    tracing::error!(error = %d, "removing an unaudited session failed");
                }
                return Err(e.into());
            }
            tracing::info!(
                subject = %created.principal.subject,
                roles = ?created.principal.roles,
                "console login"
            );
            // Checked again: a row written by an older version was not.
            let to = return_to
                .as_deref()
                .and_then(safe_return_to)
                .unwrap_or_else(|| "/console/".to_owned());
            let mut response = redirect(&to)?;
            response
                .headers_mut()
                .insert(header::SET_COOKIE, session::set_cookie(&id)?);
            Ok(response)
        }
        Err(refusal) => {
            let mut details = json!({ "reason": refusal.reason });
            if let Some(code) = &refusal.code {
                details["code"] = json!(
                    excerpt(code)
                        .chars()
                        .take(MAX_AUDIT_CODE)
                        .collect::<String>()
                );
            }
            let event = AuditEvent {
                outcome: Outcome::Failure,
                ..AuditEvent::success(
                    now,
                    &Actor {
                        subject: "anonymous".into(),
                        source: source.clone(),
                    },
                    "console.login",
                    "session/none",
                    details,
                )
            };
            tracing::warn!(
                reason = refusal.reason,
                source = source.as_deref().unwrap_or("-"),
                "console login refused"
            );
            if let Err(e) = console.sessions.audit(&event).await {
                // The login fails either way; the refusal is still in the log.
                tracing::error!(error = %e, reason = refusal.reason, "auditing a refused login failed");
            }
            Err(refusal.error)
        }
    }
}

/// The callback's checks and the code exchange; on success a new session
/// (cookie value and record), not yet audited.
async fn finish_login(
    console: &ConsoleAuth,
    headers: &HeaderMap,
    query: Result<Query<Callback>, axum::extract::rejection::QueryRejection>,
    now: OffsetDateTime,
) -> Result<(String, certflow_core::session::Session, Option<String>), Refusal> {
    let Query(q) = query.map_err(|e| Refusal::new(e.into(), "malformed_callback"))?;
    let Some(state) = q.state.as_deref().filter(|s| !s.is_empty()) else {
        return Err(Refusal::new(
            login_failed("the callback has no state"),
            "missing_state",
        ));
    };
    // Consumed before anything else, so a state works once whatever happens next.
    let pending = console
        .sessions
        .store()
        .take_pending_login(&sha256_hex(state))
        .await
        .map_err(|e| Refusal::new(e.into(), "store_unavailable"))?;
    let Some(pending) = pending else {
        return Err(Refusal::new(
            login_failed("unknown or already used login state; start again at /console/login"),
            "unknown_state",
        ));
    };
    if now >= pending.expires_at {
        return Err(Refusal::new(
            login_failed("the login took too long; start again at /console/login"),
            "expired_state",
        ));
    }
    if let Some(error) = q.error.as_deref() {
        let description = q.error_description.as_deref().unwrap_or("");
        return Err(Refusal::new(
            login_failed(format!(
                "the identity provider refused the login: {} {}",
                excerpt(error),
                excerpt(description)
            )),
            "provider_refused",
        )
        .with_code(error));
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        return Err(Refusal::new(
            login_failed("the callback has no code"),
            "missing_code",
        ));
    };
    let unavailable = |e: ApiError| Refusal::new(e, "provider_unavailable");
    let doc = console.discovery().await.map_err(unavailable)?;
    let inner = &console.inner;
    let id_token = exchange(inner, &doc.token_endpoint, code, &pending.pkce_verifier).await?;
    let claims = inner
        .validator
        .validate_id_token(&id_token, &pending.nonce, &inner.client_id)
        .await
        .map_err(|e: AuthError| {
            tracing::warn!(reason = e.reason(), error = %e, "console login: ID token refused");
            if e.is_unavailable() {
                unavailable(provider_unavailable())
            } else {
                Refusal::new(
                    login_failed(format!("the ID token is not valid ({})", e.reason())),
                    "id_token_invalid",
                )
                .with_code(e.reason())
            }
        })?;
    if claims.subject.as_deref().is_none_or(str::is_empty) {
        return Err(Refusal::new(
            login_failed("the ID token has no subject"),
            "no_subject",
        ));
    }
    let principal = inner.validator.principal(&claims);
    let store_error = |e: certflow_core::DomainError| Refusal::new(e.into(), "store_unavailable");
    // Whatever session the browser brought is ended, never upgraded.
    console
        .sessions
        .end_cookie_session(headers)
        .await
        .map_err(store_error)?;
    // Kept sealed for RP-initiated logout (`id_token_hint`), openable only
    // with the session id the browser holds.
    let (id, created) = console
        .sessions
        .create(principal, Some(id_token), now)
        .await
        .map_err(store_error)?;
    Ok((id, created.session, pending.return_to))
}

/// Exchanges `code` at the token endpoint; returns the ID token.
async fn exchange(
    inner: &Inner,
    token_endpoint: &str,
    code: &str,
    verifier: &str,
) -> Result<String, Refusal> {
    let unavailable = || Refusal::new(provider_unavailable(), "provider_unavailable");
    let form = serde_urlencoded::to_string([
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", &inner.redirect_uri),
        ("code_verifier", verifier),
    ])
    .map_err(|e| {
        Refusal::new(
            certflow_core::DomainError::Internal(e.to_string()).into(),
            "internal",
        )
    })?;
    // RFC 6749 §2.3.1: both halves form-encoded before Basic.
    let basic = format!(
        "{}:{}",
        form_encode(&inner.client_id),
        form_encode(inner.client_secret.expose_secret())
    );
    let response = inner
        .http
        .post(token_endpoint)
        .header(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(basic)),
        )
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(form)
        .send()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "token endpoint unreachable");
            unavailable()
        })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| {
        tracing::warn!(error = %e, "token endpoint response unreadable");
        unavailable()
    })?;
    if status.is_client_error() {
        let err: TokenError = serde_json::from_slice(&body).unwrap_or(TokenError {
            error: None,
            error_description: None,
        });
        let error = excerpt(err.error.as_deref().unwrap_or("error"));
        let description = excerpt(err.error_description.as_deref().unwrap_or(""));
        tracing::warn!(%status, %error, %description, "token endpoint refused the code");
        return Err(Refusal::new(
            login_failed(format!(
                "the identity provider refused the code: {error} {description}"
            )),
            "code_refused",
        )
        .with_code(error));
    }
    if !status.is_success() {
        tracing::warn!(%status, "token endpoint failed");
        return Err(unavailable());
    }
    let tokens: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        tracing::warn!(error = %e, "token endpoint answered no JSON");
        unavailable()
    })?;
    tokens.id_token.ok_or_else(|| {
        Refusal::new(
            login_failed("the identity provider returned no ID token"),
            "no_id_token",
        )
    })
}

fn form_encode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

/// Answer of `POST /console/logout`.
#[derive(Debug, Serialize)]
pub struct LogoutView {
    /// Where to send the browser to end the provider's session too, if it supports that.
    pub end_session_url: Option<String>,
}

/// `POST /console/logout`: ends the session (CSRF-protected, audited).
async fn logout(
    State(console): State<ConsoleAuth>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let client = console.client(peer, &headers);
    let source = client.map(|ip| ip.to_string());
    let session = console
        .sessions
        .authenticate_session(&axum::http::Method::POST, &headers, source.as_deref())
        .await?;
    let limited = match &session {
        Some(s) => console.limits.subject(&s.session.principal.subject),
        None => console.limits.anonymous(client),
    };
    if let Err(limited) = limited {
        return Ok(limited.into_response());
    }
    let current = session.ok_or_else(|| ApiError::unauthorized("no console session"))?;
    console
        .sessions
        .end_from(&current.session, source.as_deref())
        .await?;
    tracing::info!(subject = %current.session.principal.subject, "console logout");
    let end_session_url = end_session_url(&console, current.id_token()).await?;
    Ok((
        [
            (header::SET_COOKIE, session::clear_cookie()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        axum::Json(LogoutView { end_session_url }),
    )
        .into_response())
}

/// The provider's end-session URL (RP-initiated logout, with the session's
/// ID token as hint when it has one), when the provider offers one: the
/// provider session outlives ours unless the browser goes there too.
async fn end_session_url(
    console: &ConsoleAuth,
    id_token: Option<String>,
) -> ApiResult<Option<String>> {
    let inner = &console.inner;
    let Ok(doc) = console.discovery().await else {
        return Ok(None);
    };
    let Some(endpoint) = &doc.end_session_endpoint else {
        return Ok(None);
    };
    let mut params = vec![("client_id", inner.client_id.as_str())];
    if let Some(hint) = id_token.as_deref() {
        params.push(("id_token_hint", hint));
    }
    if let Some(uri) = inner.post_logout_redirect_uri.as_deref() {
        params.push(("post_logout_redirect_uri", uri));
    }
    with_query(endpoint, &params).map(Some)
}

/// `POST /console/sign-out`: the pages' sign-out form (its `csrf` field and
/// `Origin` checked like the API's header). Ends the session (audited) and
/// answers the signed-out page; when the provider has an end-session
/// endpoint, that page goes on there at once, so the next sign-in asks for
/// credentials again.
async fn sign_out(
    State(console): State<ConsoleAuth>,
    peer: Peer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let client = console.client(peer, &headers);
    let source = client.map(|ip| ip.to_string());
    let current = match console
        .sessions
        .current_from(&headers, OffsetDateTime::now_utc(), source.as_deref())
        .await
    {
        Ok(c) => c,
        Err(e) => return super::domain_error_page(e),
    };
    let limited = match &current {
        Some(c) => console.limits.subject(&c.session.principal.subject),
        None => console.limits.anonymous(client),
    };
    if let Err(limited) = limited {
        return limited.into_response();
    }
    let Some(current) = current else {
        // Already signed out (another tab, or expired).
        return super::signed_out_page();
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let mut h = HeaderMap::new();
    if let Some(origin) = headers.get(header::ORIGIN) {
        h.insert(header::ORIGIN, origin.clone());
    }
    if let Some(token) = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .and_then(|(_, v)| HeaderValue::from_str(v).ok())
    {
        h.insert(session::CSRF_HEADER, token);
    }
    if console
        .sessions
        .check_csrf(&current.csrf_token, &h)
        .is_err()
    {
        return super::error_page(
            StatusCode::FORBIDDEN,
            "the form is stale or comes from another site; reload the page and try again",
        );
    }
    if let Err(e) = console
        .sessions
        .end_from(&current.session, source.as_deref())
        .await
    {
        return super::domain_error_page(e);
    }
    tracing::info!(subject = %current.session.principal.subject, "console sign-out");
    let mut response = match end_session_url(&console, current.id_token()).await {
        Ok(Some(url)) => super::leaving_page(&url),
        _ => super::signed_out_page(),
    };
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_is_appended_and_encoded() {
        assert_eq!(
            with_query("https://op/auth", &[("a", "x y"), ("b", "/&")]).unwrap(),
            "https://op/auth?a=x+y&b=%2F%26"
        );
        assert_eq!(
            with_query("https://op/auth?p=1", &[("a", "1")]).unwrap(),
            "https://op/auth?p=1&a=1"
        );
    }

    #[test]
    fn return_to_is_only_a_path_of_this_console() {
        for ok in [
            "/console/",
            "/console/certificates/0195a3c4-0000-7000-8000-000000000001",
            "/console/certificates?team=a&label=env%3Dprod",
            "/console/audit?target=certificate/x#top",
        ] {
            assert_eq!(safe_return_to(ok).as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/console/",
            "//evil.example/console/",
            "/\\evil.example/console/",
            "/console\\@evil.example",
            "/console/\\evil.example",
            "/consolex/",
            "/console",
            "console/",
            "/console/../pki/x/ca.crt",
            "/console/./x",
            "/console/ x",
            "/console/\tx",
            "/console/\r\nSet-Cookie:x=y",
            "javascript:alert(1)",
            "/console/login?return_to=/console/",
            "/console/callback?code=x",
            "/console/sign-out",
            "",
        ] {
            assert_eq!(safe_return_to(bad), None, "{bad:?}");
        }
        assert_eq!(
            safe_return_to(&format!("/console/{}", "a".repeat(3000))),
            None
        );
    }

    #[test]
    fn basic_credentials_are_form_encoded() {
        assert_eq!(form_encode("a b:c"), "a+b%3Ac");
    }

    #[test]
    fn provider_text_is_reduced_to_printable_ascii() {
        assert_eq!(excerpt("bad\n\u{1b}[31mcode"), "bad[31mcode");
        assert_eq!(excerpt(&"x".repeat(500)).len(), MAX_PROVIDER_TEXT);
    }
}
