//! The console listener's router: the only module that knows every surface
//! served there (console API, pages and login, public CA endpoints, probes)
//! and the layers around all of them; and the metrics listener's router
//! ([`metrics_app`]). The agent listener has its own router
//! (`crate::agent_api`).

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Router, middleware};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::errors;
use crate::extract::BODY_LIMIT;
use crate::state::AppState;
use crate::{http, ops, pki_api, telemetry, web};

/// The whole application router (no socket: tests drive it with `oneshot`).
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .merge(http::router(&state))
        .merge(ops::router())
        .merge(pki_api::router())
        .merge(web::router());
    with_layers(routes, state)
}

/// The plain-HTTP listener beside an HTTPS console (`[server.tls]
/// http_listen`): only the public CA endpoints, which relying parties fetch
/// without TLS, and the probes.
pub fn plain_http_app(state: AppState) -> Router {
    let routes = Router::new().merge(ops::router()).merge(pki_api::router());
    with_layers(routes, state)
}

/// What every route of the console listeners shares: the fallbacks, the
/// body limit, headers, tracing, metrics and problem documents.
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(fallback)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            BODY_LIMIT,
            errors::limit_body,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TraceLayer::new_for_http())
        // Applied per route (so it sees the matched template), around the other layers.
        .layer(middleware::from_fn(telemetry::metrics::track))
        // Outermost: whatever answers with an error answers with a problem document.
        .layer(middleware::from_fn(errors::problem_responses))
        .with_state(state)
}

/// `app` with the ACME server's routes (`/acme/<issuer>/...`, outside
/// `/console` and `/agent`), which carry their own body limit, rate limits
/// and protocol headers.
pub fn with_acme_server(app: Router, api: crate::acme_api::AcmeApi) -> Router {
    app.merge(crate::acme_api::router(api))
}

/// Unknown routes: a problem document, except a browser asking for a page
/// under `/console/`, which gets the console's HTML "not found" page.
async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html && errors::is_page_path(uri.path()) {
        return web::error_page(StatusCode::NOT_FOUND, "there is no such page");
    }
    errors::ApiError::no_route(&method, &uri).into_response()
}

/// The metrics listener's router (`[metrics] listen`): `/metrics` only,
/// behind the bearer token when one is configured; every other request is a
/// problem document.
pub fn metrics_app(
    state: AppState,
    domain: ops::gauges::DomainMetrics,
    token: Option<ops::MetricsToken>,
) -> Router {
    ops::metrics_router(token)
        .fallback(errors::not_found)
        .method_not_allowed_fallback(errors::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            BODY_LIMIT,
            errors::limit_body,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(axum::Extension(domain))
        .layer(middleware::from_fn(errors::problem_responses))
        .with_state(state)
}
