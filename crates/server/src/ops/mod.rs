//! The operational endpoints: `/healthz` and `/readyz` on the console
//! listener; `/metrics` on the metrics listener (`[metrics] listen`) and,
//! when `[metrics]` has a bearer token, on the console listener too, behind
//! that token; the same gauges as CloudWatch EMF lines on stdout.

pub mod emf;
pub mod gauges;

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::constant_time;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use certflow_api::Health;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use crate::errors::ApiError;
use crate::state::AppState;
use crate::telemetry::observe::Draining;

/// The probe routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The bearer token `/metrics` requires, when `[metrics]` configures one.
#[derive(Clone)]
pub struct MetricsToken(Arc<SecretString>);

impl MetricsToken {
    /// Wraps the configured token.
    pub fn new(token: SecretString) -> Self {
        Self(Arc::new(token))
    }
}

/// `/metrics`, behind `token` when there is one.
pub fn metrics_router(token: Option<MetricsToken>) -> Router<AppState> {
    let router = Router::new().route("/metrics", get(metrics));
    match token {
        Some(token) => router.route_layer(middleware::from_fn_with_state(token, require_token)),
        None => router,
    }
}

/// Refuses a `/metrics` request without `Authorization: Bearer <token>`
/// (compared in constant time): 401 with a problem document.
async fn require_token(State(token): State<MetricsToken>, req: Request, next: Next) -> Response {
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(certflow_auth::bearer_token)
        .unwrap_or("");
    let expected = token.0.expose_secret().as_bytes();
    if sent.is_empty() || constant_time::verify_slices_are_equal(sent.as_bytes(), expected).is_err()
    {
        let mut resp = ApiError::unauthorized(
            "/metrics needs the metrics bearer token ([metrics] bearer_token) in Authorization: Bearer",
        )
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"certflow-metrics\""),
        );
        return resp;
    }
    next.run(req).await
}

async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        checks: BTreeMap::new(),
    })
}

/// Ready when the metadata store answers and the process is not draining
/// (shutting down: in-flight requests finish, new ones should go elsewhere).
/// Not ready is a 503 problem document whose `errors` name the failed check.
async fn readyz(
    State(state): State<AppState>,
    draining: Option<axum::Extension<Draining>>,
) -> Response {
    let not_ready = |detail: &str, check: &str, outcome: &str| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            detail,
        )
        .with_errors([(check, outcome)])
        .into_response()
    };
    if draining.is_some_and(|d| d.is_draining()) {
        return not_ready(
            "the process is draining (shutting down)",
            "process",
            "draining",
        );
    }
    if let Err(e) = state.services.store().ping().await {
        // The cause is for the operator's log, not for whoever probes.
        tracing::warn!(error = %e, "readiness: the database does not answer");
        return not_ready("the database does not answer", "database", "unavailable");
    }
    axum::Json(Health {
        status: "ok".into(),
        checks: BTreeMap::from([("database".to_owned(), "ok".to_owned())]),
    })
    .into_response()
}

/// `/metrics`: Prometheus text of the certificates, renewal queue, agents,
/// deployments and notification deliveries, read from the shared database so
/// any replica reports the whole system; this replica's last issuer probe;
/// then this process's HTTP requests (console and agent listeners) by route
/// group, route and status. A family whose query fails is left out (and
/// logged), so one slow table never hides the rest.
pub async fn metrics(
    State(state): State<AppState>,
    domain: Option<Extension<gauges::DomainMetrics>>,
) -> Response {
    let mut out = String::new();
    let now = OffsetDateTime::now_utc();
    let domain = domain.map(|Extension(d)| d);
    let g = emf::gather(&state, domain.as_ref(), now).await;
    if let Some(stats) = &g.certificates {
        gauges::render_certificates(&mut out, stats, now);
    }
    if let Some(fleet) = &g.fleet {
        gauges::render_fleet(&mut out, fleet);
    }
    if let Some(issuers) = &g.issuers {
        gauges::render_issuers(&mut out, issuers);
    }
    if let Some((n, within)) = g.renewal_at_risk {
        gauges::render_at_risk(&mut out, n, within);
    }
    crate::telemetry::compliance::render_metrics(&mut out);
    let kind = state.renewal.queue.kind();
    if let Some(s) = &g.queue {
        out.push_str("# HELP certflow_renewal_jobs Renewal jobs by state (failing: queued for a retry after a failed attempt, a subset of queued).\n# TYPE certflow_renewal_jobs gauge\n");
        for (label, n) in [
            ("queued", s.queued),
            ("running", s.running),
            ("dead", s.dead),
            ("failing", s.failing),
        ] {
            out.push_str(&format!(
                "certflow_renewal_jobs{{queue=\"{kind}\",state=\"{label}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP certflow_renewal_oldest_job_age_seconds Age of the oldest unfinished renewal job.\n# TYPE certflow_renewal_oldest_job_age_seconds gauge\n");
        out.push_str(&format!(
            "certflow_renewal_oldest_job_age_seconds{{queue=\"{kind}\"}} {}\n",
            s.oldest_age_secs
        ));
    }
    out.push_str("# HELP certflow_notification_deliveries Notification deliveries by state.\n# TYPE certflow_notification_deliveries gauge\n");
    for (st, total) in &g.deliveries {
        out.push_str(&format!(
            "certflow_notification_deliveries{{state=\"{}\"}} {total}\n",
            st.as_str()
        ));
    }
    if let Ok(stats) = state.services.destination_stats().await {
        out.push_str("# HELP certflow_destinations Certificate destinations (ACM, ELBv2 listeners) by kind and delivery status.\n# TYPE certflow_destinations gauge\n");
        for (kind, status, n) in &stats.by_status {
            out.push_str(&format!(
                "certflow_destinations{{kind=\"{}\",status=\"{}\"}} {n}\n",
                kind.as_str(),
                status.as_str()
            ));
        }
    }
    let (jwks_ok, jwks_failed) = certflow_auth::jwks_fetches();
    out.push_str("# HELP certflow_jwks_refreshes_total JWKS fetches of this process by outcome.\n# TYPE certflow_jwks_refreshes_total counter\n");
    out.push_str(&format!(
        "certflow_jwks_refreshes_total{{outcome=\"ok\"}} {jwks_ok}\ncertflow_jwks_refreshes_total{{outcome=\"error\"}} {jwks_failed}\n"
    ));
    crate::telemetry::metrics::render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
