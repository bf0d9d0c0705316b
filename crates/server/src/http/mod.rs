//! HTTP surface: the router for `/console/api/v1` (bearer-authenticated), the
//! public PKI endpoints (`/pki/<issuer>/ca.crt`, `/pki/<issuer>/crl`,
//! `/pki/<issuer>/ocsp`, fetched by relying parties), health probes and the
//! generated OpenAPI document.

pub mod access;
pub mod agents;
pub mod auth;
pub mod compliance;
pub mod console;
pub mod deployments;
pub mod discovery;
pub mod errors;
pub mod import;
pub mod limit;
pub mod login;
pub mod metrics;
pub mod observe;
pub mod operations;
mod pki;
pub mod session;

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};
use certflow_api::Health;
use certflow_services::Services;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use errors::{ApiError, ApiResult};
pub use operations::RenewalView;

/// Largest request body accepted (64 KiB): CSRs and CA imports fit with room to spare.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    /// The use cases.
    pub services: Services,
    /// SHA-256 (hex) of the bootstrap admin token, when that token is enabled;
    /// refreshed when a replica announces a settings change.
    pub bootstrap_hash: std::sync::Arc<std::sync::RwLock<Option<String>>>,
    /// Renewal queue, ledger and deliveries, for status and metrics.
    pub renewal: std::sync::Arc<RenewalView>,
    /// Bearer-token authenticators tried after the bootstrap token.
    pub authenticators: std::sync::Arc<Vec<std::sync::Arc<dyn auth::BearerAuthenticator>>>,
    /// Browser sessions (console SSO), when `[auth.oidc]` is configured.
    pub sessions: Option<session::Sessions>,
    /// Console rate limits and client addresses (`[console]`).
    pub limits: std::sync::Arc<limit::ConsoleLimits>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "certflow console API", description = "Certificate lifecycle management: request, inspect, renew, revoke and download certificates."),
    servers((url = "/console/api/v1")),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The console API routes and their OpenAPI description, from the same code.
pub fn console_api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(
            console::create_certificate,
            console::list_certificates
        ))
        .routes(routes!(console::get_certificate))
        .routes(routes!(import::import_certificate))
        .routes(routes!(import::manage_certificate))
        .routes(routes!(console::download))
        .routes(routes!(console::download_pkcs12))
        .routes(routes!(console::renew))
        .routes(routes!(console::revoke))
        .routes(routes!(console::archive))
        .routes(routes!(console::list_issuers))
        .routes(routes!(console::import_issuer))
        .routes(routes!(console::audit))
        .routes(routes!(operations::queue_stats))
        .routes(routes!(
            operations::create_subscription,
            operations::list_subscriptions
        ))
        .routes(routes!(operations::delete_subscription))
        .routes(routes!(operations::list_deliveries))
        .routes(routes!(operations::delivery_attempts))
        .routes(routes!(agents::list_agents))
        .routes(routes!(agents::create_join_token, agents::list_join_tokens))
        .routes(routes!(agents::revoke_join_token))
        .routes(routes!(agents::disable_agent))
        .routes(routes!(agents::enable_agent))
        .routes(routes!(agents::revoke_agent))
        .routes(routes!(deployments::list_assignments, deployments::assign))
        .routes(routes!(deployments::unassign))
        .routes(routes!(deployments::certificate_deployments))
        .routes(routes!(compliance::report))
        .routes(routes!(discovery::list))
        .routes(routes!(discovery::take_over))
        .split_for_parts()
}

/// The OpenAPI document as served (for tests and `certflow openapi`).
pub fn openapi_json() -> String {
    console_api().1.to_pretty_json().unwrap_or_default()
}

/// The whole application router (no socket: tests drive it with `oneshot`).
pub fn app(state: AppState) -> Router {
    let (api, openapi) = console_api();
    let openapi_doc = openapi.to_pretty_json().unwrap_or_default();
    // Layers run outside in: authenticate, then authorise against the route's declaration.
    let api = api
        .route_layer(middleware::from_fn(access::authorize))
        .route_layer(middleware::from_fn(observe::note_actor))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ))
        .fallback(|| async { ApiError::no_route() });
    Router::new()
        .nest("/console/api/v1", api)
        .route(
            "/console/api/openapi.json",
            get(move || {
                let doc = openapi_doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(operations::metrics))
        .route("/pki/{issuer}/ca.crt", get(issuer_cert))
        .route("/pki/{issuer}/crl", get(pki::crl))
        .route("/pki/{issuer}/ocsp", axum::routing::post(pki::ocsp_post))
        .route("/pki/{issuer}/ocsp/{*request}", get(pki::ocsp_get))
        .merge(crate::web::router())
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this resource does not support the method",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TraceLayer::new_for_http())
        // Applied per route (so it sees the matched template), around the other layers.
        .layer(middleware::from_fn(metrics::track))
        .with_state(state)
}

async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        checks: BTreeMap::new(),
    })
}

/// Ready when the metadata store answers and the process is not draining
/// (shutting down: in-flight requests finish, new ones should go elsewhere).
async fn readyz(
    State(state): State<AppState>,
    draining: Option<axum::Extension<observe::Draining>>,
) -> Response {
    let mut checks = BTreeMap::new();
    if draining.is_some_and(|d| d.is_draining()) {
        checks.insert("process".to_owned(), "draining".to_owned());
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health {
                status: "draining".into(),
                checks,
            }),
        )
            .into_response();
    }
    let db = state.services.store().ping().await;
    checks.insert(
        "database".to_owned(),
        match &db {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        },
    );
    let (status, word) = if db.is_ok() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (
        status,
        axum::Json(Health {
            status: word.into(),
            checks,
        }),
    )
        .into_response()
}

async fn issuer_cert(
    State(state): State<AppState>,
    console::Path(id): console::Path<Uuid>,
) -> ApiResult<Response> {
    let der = state.services.issuer_certificate_der(id).await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-cert")], der).into_response())
}

#[cfg(test)]
mod tests;
