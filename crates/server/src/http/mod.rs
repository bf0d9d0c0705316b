//! The console JSON API (`/console/api/v1`, bearer- or session-authenticated):
//! one module per resource, every route declaring its permission
//! ([`access`]), and the OpenAPI document generated from the same code.

pub mod access;
pub mod acme_eab;
pub mod agents;
pub mod compliance;
pub mod console;
pub mod deployments;
pub mod destinations;
pub mod discovery;
pub mod import;
pub mod operations;

use axum::http::header;
use axum::routing::get;
use axum::{Router, middleware};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

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
        .routes(routes!(destinations::attach, destinations::list))
        .routes(routes!(destinations::detach))
        .routes(routes!(destinations::attempts))
        .routes(routes!(compliance::report))
        .routes(routes!(discovery::list))
        .routes(routes!(discovery::take_over))
        .routes(routes!(acme_eab::create_eab_key, acme_eab::list_eab_keys))
        .routes(routes!(acme_eab::revoke_eab_key))
        .routes(routes!(acme_eab::renew_now))
        .split_for_parts()
}

/// The OpenAPI document as served (for tests and `certflow openapi`).
pub fn openapi_json() -> String {
    console_api().1.to_pretty_json().unwrap_or_default()
}

/// `/console/api/v1` behind authentication and the routes' permission
/// declarations, and `/console/api/openapi.json`.
pub fn router(state: &AppState) -> Router<AppState> {
    let (api, openapi) = console_api();
    let openapi_doc = openapi.to_pretty_json().unwrap_or_default();
    // Layers run outside in: authenticate, then authorise against the route's declaration.
    let api = api
        .route_layer(middleware::from_fn(access::authorize))
        .route_layer(middleware::from_fn(crate::telemetry::observe::note_actor))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_auth,
        ))
        .fallback(crate::errors::not_found);
    Router::new().nest("/console/api/v1", api).route(
        "/console/api/openapi.json",
        get(move || {
            let doc = openapi_doc.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
        }),
    )
}

#[cfg(test)]
mod tests;
