//! The ACME server (RFC 8555, RFC 9773 renewal information) on the console
//! listener: `/acme/<issuer name>/...`, one directory per issuer, when
//! `[acme_server] enabled = true`.
//!
//! Every POST is a JWS checked by `certflow-acme-server` (flattened JSON,
//! algorithm, `jwk`/`kid`, `url` equal to this request's URL under the
//! public URL, a nonce consumed once in the database so replicas share
//! them); the use cases are `certflow_services::acme::AcmeService`. Every
//! answer carries a fresh `Replay-Nonce` and `Link: <directory>;rel="index"`;
//! errors are ACME problem documents. Bodies are bounded by
//! `body_limit_bytes`; requests are rate limited per client address before
//! anything is parsed and per account once it is known (`rateLimited` with
//! `Retry-After`). Challenge validation never runs here: answering a
//! challenge marks it processing and the worker role's task validates it.

mod handlers;
mod request;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use certflow_services::acme::AcmeService;

use crate::rate_limit::RateLimiter;

/// What the ACME routes share.
#[derive(Clone)]
pub struct AcmeApi {
    inner: Arc<Inner>,
}

struct Inner {
    service: AcmeService,
    /// The public base URL (no trailing slash): request URLs are compared
    /// under it, resource URLs are built from it.
    base_url: String,
    eab_required: bool,
    body_limit: usize,
    per_account: RateLimiter,
    per_address: RateLimiter,
}

/// The ACME server's settings the routes need.
pub struct AcmeApiSettings {
    /// The console listener's public URL.
    pub base_url: String,
    /// `[acme_server] eab = "required"`.
    pub eab_required: bool,
    /// Largest request body.
    pub body_limit: usize,
    /// Requests a minute per account.
    pub per_account_per_minute: u32,
    /// Requests a minute per client address.
    pub per_address_per_minute: u32,
}

impl AcmeApi {
    /// The routes' state.
    pub fn new(service: AcmeService, settings: AcmeApiSettings) -> Self {
        let bucket = |per_minute: u32| {
            let per_sec = f64::from(per_minute) / 60.0;
            RateLimiter::new(per_sec, f64::from(per_minute).max(1.0))
        };
        Self {
            inner: Arc::new(Inner {
                service,
                base_url: settings.base_url.trim_end_matches('/').to_owned(),
                eab_required: settings.eab_required,
                body_limit: settings.body_limit,
                per_account: bucket(settings.per_account_per_minute),
                per_address: bucket(settings.per_address_per_minute),
            }),
        }
    }

    fn service(&self) -> &AcmeService {
        &self.inner.service
    }

    /// `<base>/acme/<issuer>`.
    fn issuer_url(&self, issuer: &str) -> String {
        format!("{}/acme/{issuer}", self.inner.base_url)
    }
}

/// The `/acme/{issuer}/...` routes.
pub fn router(api: AcmeApi) -> Router {
    Router::new()
        .route("/acme/{issuer}/directory", get(handlers::directory))
        .route(
            "/acme/{issuer}/new-nonce",
            get(handlers::new_nonce_get).head(handlers::new_nonce_head),
        )
        .route("/acme/{issuer}/new-account", post(handlers::new_account))
        .route("/acme/{issuer}/acct/{id}", post(handlers::account))
        .route("/acme/{issuer}/new-order", post(handlers::new_order))
        .route("/acme/{issuer}/order/{id}", post(handlers::order))
        .route("/acme/{issuer}/authz/{id}", post(handlers::authorization))
        .route("/acme/{issuer}/chall/{id}", post(handlers::challenge))
        .route("/acme/{issuer}/finalize/{id}", post(handlers::finalize))
        .route("/acme/{issuer}/cert/{id}", post(handlers::certificate))
        .route("/acme/{issuer}/revoke-cert", post(handlers::revoke))
        .route("/acme/{issuer}/key-change", post(handlers::key_change))
        .route(
            "/acme/{issuer}/renewal-info/{id}",
            get(handlers::renewal_info),
        )
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            request::protocol_headers,
        ))
        .layer(axum::middleware::from_fn(crate::telemetry::metrics::track))
        .with_state(api)
}
