//! Authentication of the console API: the bootstrap admin token (generated
//! at first start, shown once, stored as a SHA-256 hash: the token has 256
//! bits of entropy, so a slow hash adds nothing), OIDC access tokens from the
//! configured issuers, or the console session cookie; then the console rate
//! limit ([`crate::rate_limit::ConsoleLimits`]). What a caller may do is
//! decided in the domain ([`certflow_core::access`]).

use std::net::SocketAddr;

use aws_lc_rs::{constant_time, digest, rand};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certflow_core::access::Principal;
use certflow_core::model::Actor;
use certflow_core::ports::MetadataStore;
use certflow_core::{DomainError, error::DomainResult};

use crate::errors::ApiError;
use crate::state::AppState;

/// Settings key of the bootstrap token hash.
const BOOTSTRAP_HASH: &str = "auth.bootstrap_token_sha256";

/// Prefix that makes the token recognisable to secret scanners.
const TOKEN_PREFIX: &str = "cfb_";

fn hash(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// Creates a new bootstrap token, replacing any earlier one; returns it for
/// printing once. Only its hash is stored.
pub async fn rotate_bootstrap_token(store: &dyn MetadataStore) -> DomainResult<String> {
    let mut raw = [0u8; 32];
    rand::fill(&mut raw).map_err(|_| DomainError::Internal("random source failed".into()))?;
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    store.put_setting(BOOTSTRAP_HASH, &hash(&token)).await?;
    Ok(token)
}

/// On first start, creates the bootstrap token and returns it; afterwards `None`.
pub async fn ensure_bootstrap_token(store: &dyn MetadataStore) -> DomainResult<Option<String>> {
    if store.get_setting(BOOTSTRAP_HASH).await?.is_some() {
        return Ok(None);
    }
    rotate_bootstrap_token(store).await.map(Some)
}

/// Re-reads the stored hash into the in-memory copy the middleware checks.
pub async fn refresh_bootstrap_hash(
    store: &dyn MetadataStore,
    cache: &std::sync::RwLock<Option<String>>,
) -> DomainResult<()> {
    let current = store.get_setting(BOOTSTRAP_HASH).await?;
    if let Ok(mut slot) = cache.write() {
        *slot = current;
    }
    Ok(())
}

/// Turns a bearer token into a principal: OIDC access tokens (certflow-auth)
/// and, in tests, fixed principals. `Ok(None)` means "not a token of mine".
#[async_trait::async_trait]
pub trait BearerAuthenticator: Send + Sync {
    /// Validates `token`; the error says why (for logs, never the token).
    async fn authenticate(&self, token: &str) -> Result<Option<Principal>, String>;
}

/// OIDC access tokens from the configured issuers (`[[auth.issuers]]`).
pub struct OidcBearer(pub certflow_auth::TokenValidator);

#[async_trait::async_trait]
impl BearerAuthenticator for OidcBearer {
    async fn authenticate(&self, token: &str) -> Result<Option<Principal>, String> {
        // Only JWTs are ours; the bootstrap token and join tokens are not.
        if token.split('.').count() != 3 {
            return Ok(None);
        }
        match self.0.validate_access_token(token).await {
            Ok(claims) => Ok(Some(self.0.principal(&claims))),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Middleware: requires a valid bearer token (the bootstrap token or one a
/// configured authenticator accepts) or console session, attaches the
/// [`Principal`] and the audit [`Actor`], and applies the console rate
/// limit: per subject once authenticated; per client IP for requests that
/// fail (so guessing tokens is throttled by address, and a 429 replaces the
/// 401 once that address's bucket is empty).
pub async fn require_auth(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip());
    let client = state.limits.client_ip(peer, req.headers());
    let source = client.map(|ip| ip.to_string());
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        // A browser: its session cookie (CSRF-checked for state changes).
        if let Some(sessions) = &state.sessions
            && let Some(principal) = sessions
                .authenticate(req.method(), req.headers(), source.as_deref())
                .await?
        {
            if let Err(limited) = state.limits.subject(&principal.subject) {
                return Ok(limited.into_response());
            }
            req.extensions_mut().insert(Actor {
                subject: principal.subject.clone(),
                source,
            });
            req.extensions_mut().insert(principal);
            return Ok(next.run(req).await);
        }
        if let Err(limited) = state.limits.anonymous(client) {
            return Ok(limited.into_response());
        }
        return Err(ApiError::unauthorized(
            "send Authorization: Bearer <token> or sign in at /console/login",
        ));
    };
    let bootstrap = match state.bootstrap_hash.read().ok().and_then(|h| h.clone()) {
        Some(stored) => {
            constant_time::verify_slices_are_equal(hash(token).as_bytes(), stored.as_bytes())
                .is_ok()
        }
        None => false,
    };
    let mut principal = bootstrap.then(Principal::bootstrap);
    let mut reason = String::from("the bearer token is not valid");
    if principal.is_none() {
        for authenticator in state.authenticators.iter() {
            match authenticator.authenticate(token).await {
                Ok(Some(p)) => {
                    principal = Some(p);
                    break;
                }
                Ok(None) => {}
                Err(why) => reason = why,
            }
        }
    }
    let Some(principal) = principal else {
        tracing::warn!(
            source = source.as_deref().unwrap_or("-"),
            reason,
            "rejected bearer token"
        );
        if let Err(limited) = state.limits.anonymous(client) {
            return Ok(limited.into_response());
        }
        return Err(ApiError::unauthorized("the bearer token is not valid"));
    };
    if let Err(limited) = state.limits.subject(&principal.subject) {
        return Ok(limited.into_response());
    }
    req.extensions_mut().insert(Actor {
        subject: principal.subject.clone(),
        source,
    });
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}
