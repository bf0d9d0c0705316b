//! The operational endpoints of the console listener: `/healthz`, `/readyz`
//! and `/metrics`, and the same gauges as CloudWatch EMF lines on stdout.

pub mod emf;
pub mod gauges;

use std::collections::BTreeMap;

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use certflow_api::Health;
use time::OffsetDateTime;

use crate::state::AppState;
use crate::telemetry::observe::Draining;

/// The probe and metrics routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
    draining: Option<axum::Extension<Draining>>,
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
    let (jwks_ok, jwks_failed) = certflow_auth::jwks_fetches();
    out.push_str("# HELP certflow_jwks_refreshes_total JWKS fetches of this process by outcome.\n# TYPE certflow_jwks_refreshes_total counter\n");
    out.push_str(&format!(
        "certflow_jwks_refreshes_total{{outcome=\"ok\"}} {jwks_ok}\ncertflow_jwks_refreshes_total{{outcome=\"error\"}} {jwks_failed}\n"
    ));
    crate::telemetry::metrics::render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
