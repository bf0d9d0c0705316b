//! Renewal and notification endpoints of the console API: each certificate's
//! renewal state, queue depth, subscriptions and the record of every delivery
//! attempt (so a failing notification channel is visible, never silent), and
//! the Prometheus metrics of the same.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certflow_api::{
    CreateSubscriptionRequest, DeliveryPage, DeliveryView, Problem, QueueStatsView,
    RenewalStatusView, SubscriptionView,
};
use certflow_core::model::{Actor, Certificate};
use certflow_core::notify::{
    Delivery, DeliveryAttempt, DeliveryQuery, DeliveryState, Subscription,
};

use certflow_core::renewal::JobState;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use crate::errors::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query};
use certflow_core::access::{Permission, Principal, TeamScope};

/// The renewal state of `cert`, from its newest job.
pub(super) async fn renewal_status(
    state: &AppState,
    cert: &Certificate,
) -> ApiResult<RenewalStatusView> {
    let job = state.renewal.ledger.latest_renewal_job(cert.id).await?;
    let job = job.filter(|j| j.version == cert.current_version);
    Ok(match job {
        None => idle_renewal(cert),
        Some(j) => {
            let failing = j.state == JobState::Queued && j.last_error.is_some();
            RenewalStatusView {
                next_renewal_at: cert.renew_after,
                state: if failing {
                    "failing".into()
                } else {
                    j.state.as_str().into()
                },
                attempts: j.attempts,
                last_attempt_at: j.last_attempt_at,
                last_error: j.last_error.clone(),
                retry_at: failing.then_some(j.run_at),
            }
        }
    })
}

/// The renewal state of a certificate without a job for its current version.
pub(super) fn idle_renewal(cert: &Certificate) -> RenewalStatusView {
    RenewalStatusView {
        next_renewal_at: cert.renew_after,
        state: "idle".into(),
        attempts: 0,
        last_attempt_at: None,
        last_error: None,
        retry_at: None,
    }
}

/// Renewal queue depth and the age of its oldest unfinished job.
#[utoipa::path(get, path = "/renewal/queue", tag = "renewal",
    responses((status = 200, body = QueueStatsView)))]
pub async fn queue_stats(State(state): State<AppState>) -> ApiResult<Json<QueueStatsView>> {
    let s = state.renewal.queue.stats().await?;
    Ok(Json(QueueStatsView {
        queue: state.renewal.queue.kind().into(),
        queued: s.queued,
        running: s.running,
        dead: s.dead,
        oldest_age_seconds: s.oldest_age_secs,
    }))
}

fn subscription_view(s: &Subscription) -> SubscriptionView {
    SubscriptionView {
        id: s.id,
        team: s.team.clone(),
        events: s.events.iter().map(|e| e.as_str().to_owned()).collect(),
        channel: certflow_services::redacted(&s.channel),
        created_at: s.created_at,
    }
}

/// Subscribe a team to events (issued, renewed, renewal-failing, dead-lettered,
/// expiring, revoked, digest) on a webhook, SNS topic or email addresses.
#[utoipa::path(post, path = "/subscriptions", tag = "notifications",
    request_body = CreateSubscriptionRequest,
    responses((status = 201, body = SubscriptionView), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn create_subscription(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<CreateSubscriptionRequest>,
) -> ApiResult<Response> {
    principal.authorize(Permission::NotificationWrite, Some(&req.team))?;
    let sub = state
        .services
        .create_subscription(&actor, &req, crate::extract::now())
        .await?;
    Ok((StatusCode::CREATED, Json(subscription_view(&sub))).into_response())
}

/// Subscription filter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionParams {
    /// Only this team's.
    pub team: Option<String>,
}

/// Subscriptions.
#[utoipa::path(get, path = "/subscriptions", tag = "notifications", params(SubscriptionParams),
    responses((status = 200, body = Vec<SubscriptionView>)))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<SubscriptionParams>,
) -> ApiResult<Json<Vec<SubscriptionView>>> {
    let teams = principal.scope(Permission::NotificationRead, q.team.as_deref())?;
    let subs = state.services.subscriptions(q.team.as_deref()).await?;
    Ok(Json(
        subs.iter()
            .filter(|s| teams.allows(&s.team))
            .map(subscription_view)
            .collect(),
    ))
}

/// Remove a subscription: its pending deliveries are cancelled, its past ones stay visible.
#[utoipa::path(delete, path = "/subscriptions/{id}", tag = "notifications", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete_subscription(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    if principal.teams_with(Permission::NotificationWrite) != TeamScope::All {
        let subs = state.services.subscriptions(None).await?;
        match subs.iter().find(|s| s.id == id) {
            Some(sub) => principal.authorize(Permission::NotificationWrite, Some(&sub.team))?,
            None => {
                return Err(
                    certflow_core::DomainError::NotFound(format!("subscription {id}")).into(),
                );
            }
        }
    }
    state
        .services
        .delete_subscription(&actor, id, crate::extract::now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delivery filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// Only this team's.
    pub team: Option<String>,
    /// Only about this certificate.
    pub certificate_id: Option<Uuid>,
    /// `pending`, `delivered`, `failed` or `cancelled`.
    pub state: Option<String>,
    /// Page size (1-500, default 50).
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// Rows to skip.
    #[serde(default)]
    pub offset: u64,
}

fn default_limit() -> u32 {
    50
}

fn delivery_view(d: &Delivery) -> DeliveryView {
    DeliveryView {
        id: d.id,
        notification_id: d.notification.id,
        event: d.notification.kind.as_str().into(),
        team: d.notification.team.clone(),
        certificate_id: d.notification.certificate_id,
        summary: d.notification.summary.clone(),
        subscription_id: d.subscription_id,
        channel: d.channel.kind().into(),
        state: d.state.as_str().into(),
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        next_attempt_at: d.next_attempt_at,
        delivered_at: d.delivered_at,
        created_at: d.created_at,
    }
}

/// Notification deliveries with their state and last failure reason, newest first.
#[utoipa::path(get, path = "/deliveries", tag = "notifications", params(DeliveryParams),
    responses((status = 200, body = DeliveryPage), (status = 400, body = Problem)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(mut q): Query<DeliveryParams>,
) -> ApiResult<Json<DeliveryPage>> {
    if let TeamScope::Only(teams) =
        principal.scope(Permission::NotificationRead, q.team.as_deref())?
    {
        match teams.as_slice() {
            [only] => q.team = Some(only.clone()),
            _ => {
                return Err(ApiError::invalid_field(
                    "team",
                    "is required unless you belong to exactly one team",
                ));
            }
        }
    }
    let delivery_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(DeliveryState::parse(s).ok_or_else(|| {
            ApiError::invalid_field("state", "must be pending, delivered, failed or cancelled")
        })?),
    };
    if q.limit == 0 || q.limit > 500 {
        return Err(ApiError::invalid_field("limit", "must be 1-500"));
    }
    let page = state
        .services
        .deliveries(&DeliveryQuery {
            team: q.team,
            certificate_id: q.certificate_id,
            state: delivery_state,
            limit: q.limit,
            offset: q.offset,
        })
        .await?;
    Ok(Json(DeliveryPage {
        items: page.items.iter().map(delivery_view).collect(),
        total: page.total,
    }))
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1-based attempt number.
    pub attempt: u32,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Failure reason, absent on success.
    pub error: Option<String>,
}

fn attempt_view(a: &DeliveryAttempt) -> AttemptView {
    AttemptView {
        attempt: a.attempt,
        at: a.at,
        error: a.error.clone(),
    }
}

/// Every attempt of one delivery, oldest first.
#[utoipa::path(get, path = "/deliveries/{id}/attempts", tag = "notifications", params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<AttemptView>)))]
pub async fn delivery_attempts(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<AttemptView>>> {
    if let TeamScope::Only(teams) = principal.teams_with(Permission::NotificationRead) {
        // The delivery must belong to one of the caller's teams (recent ones:
        // the newest 500 per team are searched).
        let mut found = false;
        for team in &teams {
            let page = state
                .services
                .deliveries(&DeliveryQuery {
                    team: Some(team.clone()),
                    limit: 500,
                    ..Default::default()
                })
                .await?;
            if page.items.iter().any(|d| d.id == id) {
                found = true;
                break;
            }
        }
        if !found {
            return Err(certflow_core::DomainError::Forbidden(format!(
                "delivery {id} is not among your teams' recent deliveries"
            ))
            .into());
        }
    }
    let attempts = state.services.delivery_attempts(id).await?;
    Ok(Json(attempts.iter().map(attempt_view).collect()))
}
