//! The certificate page's destination actions: attach a destination (AWS
//! Certificate Manager, an ELBv2 listener) and detach one. Same permission
//! as renewing (`CertificateWrite` on the certificate's team), authorised
//! before the form's fields are read; refusals of the use case (bad
//! fields, a place attached twice, a listener that still serves the
//! certificate) are shown on the certificate page next to the form.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use certflow_core::DomainError;
use certflow_core::access::Permission;
use certflow_core::destinations::{AwsTarget, DestinationKind};
use certflow_services::destinations::AttachDestination;
use uuid::Uuid;

use super::{Ctx, Form, PageResult, redirect};
use crate::extract::now;
use crate::state::AppState;

/// The attach form as last submitted (echoed after a refusal), and the
/// reason of the last refused attach or detach.
#[derive(Debug, Clone)]
pub(crate) struct DestinationForm {
    pub kind: String,
    pub region: String,
    pub listener_arn: String,
    pub default: bool,
    pub role_arn: String,
    pub role_external_id: String,
    pub error: String,
}

impl Default for DestinationForm {
    fn default() -> Self {
        Self {
            kind: DestinationKind::AwsAcm.as_str().into(),
            region: String::new(),
            listener_arn: String::new(),
            default: false,
            role_arn: String::new(),
            role_external_id: String::new(),
            error: String::new(),
        }
    }
}

impl DestinationForm {
    fn from_form(form: &Form) -> Self {
        Self {
            kind: form.get("kind").trim().to_owned(),
            region: form.get("region").trim().to_owned(),
            listener_arn: form.get("listener_arn").trim().to_owned(),
            default: form.get("default") == "yes",
            role_arn: form.get("role_arn").trim().to_owned(),
            role_external_id: form.get("role_external_id").trim().to_owned(),
            error: String::new(),
        }
    }
}

fn optional(s: &str) -> Option<String> {
    Some(s.to_owned()).filter(|s| !s.is_empty())
}

/// The certificate page again, with `form` and its error, under `status`.
async fn refused(
    ctx: &Ctx,
    state: &AppState,
    id: Uuid,
    form: DestinationForm,
    status: StatusCode,
) -> PageResult<Response> {
    let mut resp = super::certificates::detail_page(ctx, state, id, "", form).await?;
    *resp.status_mut() = status;
    Ok(resp)
}

/// Why the use case refused, as one line, and the status to answer with;
/// `None` for errors that are not about the request (shown as an error page).
fn refusal(e: &DomainError) -> Option<(String, StatusCode)> {
    match e {
        DomainError::Invalid(fields) => Some((
            fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.reason))
                .collect::<Vec<_>>()
                .join("; "),
            StatusCode::BAD_REQUEST,
        )),
        DomainError::Conflict(why) => Some((why.clone(), StatusCode::CONFLICT)),
        _ => None,
    }
}

/// `POST /console/certificates/{id}/destinations`: attach; delivered by
/// the next worker round.
pub(super) async fn attach(
    ctx: Ctx,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    state
        .services
        .certificate_for(ctx.principal(), Permission::CertificateWrite, id)
        .await?;
    let mut echo = DestinationForm::from_form(&form);
    let result = match DestinationKind::parse(&echo.kind) {
        None => Err(DomainError::invalid(
            "kind",
            "must be aws-acm or aws-elbv2-listener",
        )),
        Some(kind) => {
            state
                .services
                .attach_destination(
                    &ctx.actor,
                    id,
                    AttachDestination {
                        kind,
                        target: AwsTarget {
                            region: echo.region.clone(),
                            role_arn: optional(&echo.role_arn),
                            role_external_id: optional(&echo.role_external_id),
                        },
                        // The form keeps the field for either kind: an empty
                        // one is no listener, not an invalid one.
                        listener_arn: optional(&echo.listener_arn),
                        default_certificate: echo.default,
                    },
                    now(),
                )
                .await
        }
    };
    match result {
        Ok(_) => Ok(redirect(&format!(
            "/console/certificates/{id}?done=destination-attached"
        ))),
        Err(e) => match refusal(&e) {
            Some((why, status)) => {
                echo.error = why;
                refused(&ctx, &state, id, echo, status).await
            }
            None => Err(e.into()),
        },
    }
}

/// `POST /console/certificates/{id}/destinations/{destination_id}/detach`;
/// `delete_certificate=yes` also deletes an ACM destination's certificate.
pub(super) async fn detach(
    ctx: Ctx,
    State(state): State<AppState>,
    Path((id, destination_id)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    state
        .services
        .certificate_for(ctx.principal(), Permission::CertificateWrite, id)
        .await?;
    let delete = form.get("delete_certificate") == "yes";
    match state
        .services
        .detach_destination(&ctx.actor, id, destination_id, delete, now())
        .await
    {
        Ok(()) => Ok(redirect(&format!(
            "/console/certificates/{id}?done=destination-detached"
        ))),
        Err(e) => match refusal(&e) {
            Some((why, status)) => {
                let form = DestinationForm {
                    error: why,
                    ..DestinationForm::default()
                };
                refused(&ctx, &state, id, form, status).await
            }
            None => Err(e.into()),
        },
    }
}
