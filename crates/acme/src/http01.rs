//! HTTP-01 responses: the issuer publishes `token → key authorization` here
//! and the server answers the CA's GET from the same map.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Pending HTTP-01 tokens; cheap to clone, all clones share one map.
///
/// It lives in process memory: with several replicas behind one address, the
/// CA's request may reach a replica that did not publish the token (use
/// DNS-01 there, or route `/.well-known/acme-challenge/` to one replica).
#[derive(Clone, Default)]
pub struct Http01Tokens {
    inner: Arc<RwLock<HashMap<String, String>>>,
}

impl std::fmt::Debug for Http01Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Http01Tokens({} pending)", self.len())
    }
}

impl Http01Tokens {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The key authorization for `token`, if published.
    pub fn get(&self, token: &str) -> Option<String> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// Number of published tokens.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no token is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn insert(&self, token: String, key_authorization: String) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, key_authorization);
    }

    pub(crate) fn remove(&self, token: &str) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }
}

/// `GET /.well-known/acme-challenge/{token}`, to mount on the listener that
/// answers port 80 of the certified names.
pub fn http01_router(tokens: Http01Tokens) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(serve_token))
        .with_state(tokens)
}

async fn serve_token(State(tokens): State<Http01Tokens>, Path(token): Path<String>) -> Response {
    match tokens.get(&token) {
        Some(ka) => ([(header::CONTENT_TYPE, "application/octet-stream")], ka).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
