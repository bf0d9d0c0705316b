//! `/console/api/v1/certificates/{id}/destinations`: where a certificate is
//! pushed besides agents (AWS Certificate Manager, ELBv2 listeners), and how
//! each delivery stands. Attaching and detaching need the same permission
//! as renewing (the certificate's team, `CertificateWrite`); reading follows
//! the certificate's team like the other certificate routes.

use axum::Extension;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use certflow_api::Problem;
use certflow_core::access::{Permission, Principal};
use certflow_core::destinations::{
    AwsTarget, Destination, DestinationAttempt, DestinationKind, DestinationStatus,
};
use certflow_core::model::Actor;
use certflow_services::destinations::AttachDestination;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use crate::errors::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query, now};

/// Attach a destination.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// `aws-acm` or `aws-elbv2-listener`.
    pub kind: String,
    /// AWS region (`eu-west-1`).
    pub region: String,
    /// The listener's ARN (`aws-elbv2-listener`).
    #[serde(default)]
    pub listener_arn: Option<String>,
    /// As the listener's default certificate instead of in its SNI list.
    #[serde(default)]
    pub default: bool,
    /// IAM role to assume for the calls (another account).
    #[serde(default)]
    pub role_arn: Option<String>,
    /// External id sent with AssumeRole.
    #[serde(default)]
    pub role_external_id: Option<String>,
}

/// A destination and where its delivery stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationView {
    /// Identifier.
    pub id: Uuid,
    /// The certificate.
    pub certificate_id: Uuid,
    /// `aws-acm` or `aws-elbv2-listener`.
    pub kind: &'static str,
    /// `pending`, `delivered` or `failed`.
    pub status: &'static str,
    /// AWS region.
    pub region: String,
    /// The listener (`aws-elbv2-listener`).
    pub listener_arn: Option<String>,
    /// Default certificate of the listener rather than SNI.
    pub default: bool,
    /// Assumed role, if any.
    pub role_arn: Option<String>,
    /// The ACM certificate ARN, once imported.
    pub external_id: Option<String>,
    /// Version delivered and read back.
    pub delivered_version: Option<u32>,
    /// Serial read back from ACM.
    pub delivered_serial: Option<String>,
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// Reason of the last failure.
    pub last_error: Option<String>,
    /// Next try while not delivered.
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    /// Last change of state.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it was attached.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A certificate's destinations.
#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationList {
    /// Oldest first.
    pub items: Vec<DestinationView>,
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1-based over the destination's life.
    pub attempt: u32,
    /// Version pushed.
    pub version: u32,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Failure reason, `null` when delivered.
    pub error: Option<String>,
}

/// Options of a detach.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DetachQuery {
    /// Also delete the ACM certificate (`aws-acm` only; refused while a listener uses it).
    #[serde(default)]
    pub delete_certificate: bool,
}

fn status(s: DestinationStatus) -> &'static str {
    s.as_str()
}

/// The JSON view of a destination (no external id of the assumed role).
pub fn view(d: Destination) -> DestinationView {
    DestinationView {
        id: d.id,
        certificate_id: d.certificate_id,
        kind: d.kind.as_str(),
        status: status(d.status),
        region: d.target.region,
        listener_arn: d.listener_arn,
        default: d.default_certificate,
        role_arn: d.target.role_arn,
        external_id: d.external_id,
        delivered_version: d.delivered_version,
        delivered_serial: d.delivered_serial,
        attempts: d.attempts,
        last_error: d.last_error,
        next_attempt_at: d.next_attempt_at,
        updated_at: d.updated_at,
        created_at: d.created_at,
    }
}

fn attempt_view(a: DestinationAttempt) -> AttemptView {
    AttemptView {
        attempt: a.attempt,
        version: a.version,
        at: a.at,
        error: a.error,
    }
}

/// Attaches a destination: 201, delivered by the next worker round.
///
/// Only certificates whose key certflow holds (`key_source: server`) can be
/// pushed: a CSR-keyed certificate is refused with 400.
#[utoipa::path(post, path = "/certificates/{id}/destinations", tag = "certificates",
    params(("id" = Uuid, Path)), request_body = AttachRequest,
    responses((status = 201, body = DestinationView), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn attach(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
    request: Request,
) -> ApiResult<(StatusCode, Json<DestinationView>)> {
    state
        .services
        .certificate_for(&principal, Permission::CertificateWrite, id)
        .await?;
    // Read only now: a caller who may not attach learns nothing about what
    // a valid body looks like (403 whatever it sent, not 400).
    let Json(req) = Json::<AttachRequest>::from_request(request, &state).await?;
    let kind = DestinationKind::parse(&req.kind)
        .ok_or_else(|| ApiError::invalid_field("kind", "must be aws-acm or aws-elbv2-listener"))?;
    let d = state
        .services
        .attach_destination(
            &actor,
            id,
            AttachDestination {
                kind,
                target: AwsTarget {
                    region: req.region,
                    role_arn: req.role_arn,
                    role_external_id: req.role_external_id,
                },
                listener_arn: req.listener_arn,
                default_certificate: req.default,
            },
            now(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(view(d))))
}

/// A certificate's destinations and where each delivery stands.
#[utoipa::path(get, path = "/certificates/{id}/destinations", tag = "certificates",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = DestinationList), (status = 404, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<DestinationList>> {
    state
        .services
        .certificate_for(&principal, Permission::CertificateRead, id)
        .await?;
    let items = state.services.certificate_destinations(id).await?;
    Ok(Json(DestinationList {
        items: items.into_iter().map(view).collect(),
    }))
}

/// A destination's delivery attempts, newest first (at most 100).
#[utoipa::path(get, path = "/certificates/{id}/destinations/{destination_id}/attempts", tag = "certificates",
    params(("id" = Uuid, Path), ("destination_id" = Uuid, Path)),
    responses((status = 200, body = Vec<AttemptView>), (status = 404, body = Problem)))]
pub async fn attempts(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, destination_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<Vec<AttemptView>>> {
    state
        .services
        .certificate_for(&principal, Permission::CertificateRead, id)
        .await?;
    let list = state
        .services
        .destination_attempts(id, destination_id)
        .await?;
    Ok(Json(list.into_iter().map(attempt_view).collect()))
}

/// Detaches a destination (a listener stops serving the certificate in its
/// SNI list); `delete_certificate=true` also deletes an ACM destination's certificate.
#[utoipa::path(delete, path = "/certificates/{id}/destinations/{destination_id}", tag = "certificates",
    params(("id" = Uuid, Path), ("destination_id" = Uuid, Path), DetachQuery),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn detach(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(principal): Extension<Principal>,
    Path((id, destination_id)): Path<(Uuid, Uuid)>,
    Query(q): Query<DetachQuery>,
) -> ApiResult<StatusCode> {
    state
        .services
        .certificate_for(&principal, Permission::CertificateWrite, id)
        .await?;
    state
        .services
        .detach_destination(&actor, id, destination_id, q.delete_certificate, now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
