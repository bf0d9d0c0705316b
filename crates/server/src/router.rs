//! The console listener's router: the only module that knows every surface
//! served there (console API, pages and login, public CA endpoints, probes
//! and metrics) and the layers around all of them. The agent listener has its
//! own router (`crate::agent_api`).

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::{Router, middleware};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::errors::ApiError;
use crate::extract::BODY_LIMIT;
use crate::state::AppState;
use crate::{http, ops, pki_api, telemetry, web};

/// The whole application router (no socket: tests drive it with `oneshot`).
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(http::router(&state))
        .merge(ops::router())
        .merge(pki_api::router())
        .merge(web::router())
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
        .layer(middleware::from_fn(telemetry::metrics::track))
        .with_state(state)
}
