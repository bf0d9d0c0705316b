//! The one place where domain errors become HTTP statuses: RFC 9457 problem
//! documents with stable `type` URIs. Causes of 5xx are logged, not shown.
//!
//! Every error response of every listener is a problem document: handlers
//! return [`ApiError`], and [`problem_responses`], a middleware on each
//! listener, turns whatever else answers with an error (axum's own 404, 405,
//! 413, 415 and extractor rejections, in `text/plain` or empty) into one. The
//! console's HTML pages are the one exception: their error pages are for
//! browsers ([`is_page_path`]).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, OriginalUri, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use certflow_api::{PROBLEM_BASE, PROBLEM_JSON, Problem, ProblemField};
use certflow_core::DomainError;
use tower::{Layer as _, ServiceExt as _};

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

    /// The same problem listing `fields` (name, reason) in its `errors`.
    pub fn with_errors<'a>(mut self, fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.errors
            .extend(fields.into_iter().map(|(field, reason)| ProblemField {
                field: field.to_owned(),
                reason: reason.to_owned(),
            }));
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

    /// 404 for an unknown route, naming the request.
    pub fn no_route(method: &Method, uri: &Uri) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no resource at {method} {}", shown_path(uri)),
        )
    }

    /// 405 for a known route and a method it does not serve.
    pub fn method_not_allowed(method: &Method, uri: &Uri) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{} does not support {method}", shown_path(uri)),
        )
    }

    /// 413 for a body over `limit` bytes.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "The request body is too large",
            format!("the request body exceeds this endpoint's limit of {limit} bytes"),
        )
    }
}

/// The request path as shown in a detail: at most 200 characters (hyper has
/// already refused control characters in it).
fn shown_path(uri: &Uri) -> String {
    uri.path().chars().take(200).collect()
}

/// Fallback handler of every router: 404 naming the request (its path as
/// sent, also under a nested router).
pub async fn not_found(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::no_route(&method, &uri)
}

/// Method fallback of every router: 405 naming the method (axum adds `Allow`).
pub async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::method_not_allowed(&method, &uri)
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
        // A 413 is renamed with the route's own limit by [`limit_body`].
        let detail = r.body_text();
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

/// Marks a 413 that [`limit_body`] has already named, so an outer limit
/// (the router's) leaves an inner one's (a route's own) alone.
#[derive(Clone, Copy)]
struct LimitNamed;

/// Middleware (`from_fn_with_state(max, limit_body)`): bodies of the routes
/// it wraps may hold `max` bytes (axum's `DefaultBodyLimit`, read by every
/// body extractor), and a larger one is answered with a 413 problem naming
/// that limit, whichever extractor (`Json`, `Bytes`, a form) refused it.
pub async fn limit_body(State(max): State<usize>, req: Request, next: Next) -> Response {
    let Ok(resp) = DefaultBodyLimit::max(max).layer(next).oneshot(req).await;
    if resp.status() != StatusCode::PAYLOAD_TOO_LARGE
        || resp.extensions().get::<LimitNamed>().is_some()
    {
        return resp;
    }
    let mut named = replace_body(resp, ApiError::body_too_large(max));
    named.extensions_mut().insert(LimitNamed);
    named
}

/// Whether `path` is one of the console's HTML pages (under `/console/`,
/// outside the JSON API), whose error pages are meant for browsers.
pub fn is_page_path(path: &str) -> bool {
    (path == "/console" || path.starts_with("/console/")) && !path.starts_with("/console/api/")
}

/// Longest error text of a non-problem response kept as the detail.
const MAX_DETAIL: usize = 300;

/// Middleware of every listener, outermost: an error response (4xx, 5xx)
/// that is not a problem document becomes one, keeping the status and the
/// headers that matter to the client (`Allow`, `Retry-After`,
/// `WWW-Authenticate`); the original text (axum's rejection message, about
/// the caller's own input) becomes the detail of a 4xx, never of a 5xx. HTML
/// error pages of the console's pages pass as they are.
pub async fn problem_responses(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    // A copy, not a clone: a clone shares the connection's read buffer and
    // would keep it alive for as long as the request runs (a long poll: up
    // to a minute, while hyper reserves another buffer for the connection).
    let uri =
        Uri::from_maybe_shared(axum::body::Bytes::from(req.uri().to_string())).unwrap_or_default();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with(PROBLEM_JSON)
        || (content_type.starts_with("text/html") && is_page_path(uri.path()))
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) if content_type.starts_with("text/plain") => String::from_utf8_lossy(&bytes)
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_DETAIL)
            .collect::<String>(),
        _ => String::new(),
    };
    let problem = problem_for(status, &method, &uri, text);
    replace_body(Response::from_parts(parts, Body::empty()), problem)
}

/// The problem of a bare `status` (with the original `text`, if any).
fn problem_for(status: StatusCode, method: &Method, uri: &Uri, text: String) -> ApiError {
    let generic = || {
        if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("request refused")
                .to_lowercase()
        } else {
            text.clone()
        }
    };
    let (code, title, detail) = match status {
        StatusCode::NOT_FOUND if text.is_empty() => return ApiError::no_route(method, uri),
        StatusCode::METHOD_NOT_ALLOWED => return ApiError::method_not_allowed(method, uri),
        StatusCode::BAD_REQUEST => ("bad-request", "The request is malformed", generic()),
        StatusCode::UNAUTHORIZED => ("unauthorized", "Authentication required", generic()),
        StatusCode::FORBIDDEN => ("forbidden", "Forbidden", generic()),
        StatusCode::NOT_FOUND => ("not-found", "Not found", generic()),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("body-too-large", "The request body is too large", generic())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "Unsupported content type",
            generic(),
        ),
        StatusCode::UNPROCESSABLE_ENTITY => (
            "malformed-body",
            "The request body is not valid for this operation",
            generic(),
        ),
        StatusCode::TOO_MANY_REQUESTS => ("rate-limited", "Too many requests", generic()),
        s if s.is_client_error() => ("bad-request", "The request was refused", generic()),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => (
            "unavailable",
            "Temporarily unavailable",
            "the service is unavailable; retry later".to_owned(),
        ),
        _ => {
            if !text.is_empty() {
                tracing::error!(%status, %text, "a non-problem server error was replaced");
            }
            ("internal", "Internal error", "internal error".to_owned())
        }
    };
    ApiError::new(status, code, title, detail)
}

/// `resp` with `problem` as its body (status and other headers kept).
fn replace_body(resp: Response, problem: ApiError) -> Response {
    let (mut parts, _) = resp.into_parts();
    let fresh = problem.with_status(parts.status).into_response();
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &fresh_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}
