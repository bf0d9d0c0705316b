//! The one place where domain errors become HTTP statuses: RFC 9457 problem
//! documents with stable `type` URIs. Causes of 5xx are logged, not shown.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use certflow_api::{PROBLEM_BASE, PROBLEM_JSON, Problem, ProblemField};
use certflow_core::DomainError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<ProblemField>,
}

impl ApiError {
    /// A problem with a given status, stable code and detail.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// The same problem with another status (e.g. 422 for a request that was
    /// read but refused).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// 400 naming one field.
    pub fn invalid_field(field: &str, reason: impl Into<String>) -> Self {
        DomainError::invalid(field, reason).into()
    }

    /// 401: no or bad credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail,
        )
    }

    /// 404 for unknown routes.
    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "no such resource",
        )
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(fields) => {
                let detail = fields
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                Self {
                    status: StatusCode::BAD_REQUEST,
                    code: "invalid-request",
                    title: "The request is invalid",
                    detail,
                    errors: fields
                        .into_iter()
                        .map(|f| ProblemField {
                            field: f.field,
                            reason: f.reason,
                        })
                        .collect(),
                }
            }
            DomainError::NotFound(what) => Self::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("{what} not found"),
            ),
            DomainError::Conflict(why) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                "Conflict with the current state",
                why,
            ),
            DomainError::IdempotencyKeyReused(why) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "The Idempotency-Key was used with a different request",
                why,
            ),
            DomainError::Forbidden(why) => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", why)
            }
            DomainError::Unavailable { backend, reason } => {
                tracing::error!(backend, %reason, "backend unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backend-unavailable",
                    "A backend is unavailable",
                    format!("the {backend} is unavailable; retry later"),
                )
            }
            DomainError::Integrity(why) => {
                tracing::error!(%why, "integrity failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "integrity",
                    "Stored data failed an integrity check",
                    "stored data could not be decrypted or verified; an operator has been told in the logs",
                )
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "internal error",
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let (code, title) = match status {
            StatusCode::PAYLOAD_TOO_LARGE => ("body-too-large", "The request body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported-media-type", "Expected application/json")
            }
            _ => (
                "malformed-body",
                "The request body is not valid JSON for this operation",
            ),
        };
        let detail = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the body exceeds {} bytes", crate::extract::BODY_LIMIT)
            }
            _ => r.body_text(),
        };
        // Serde data errors (unknown field, wrong type) are the caller's fault: 400, not 422.
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        Self::new(status, code, title, detail)
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-path",
            "Invalid path parameter",
            r.body_text(),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query parameter",
            r.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Problem {
            type_uri: format!("{PROBLEM_BASE}{}", self.code),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            errors: self.errors,
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"certflow\""),
            );
        }
        resp
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
