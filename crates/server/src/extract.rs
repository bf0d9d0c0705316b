//! What every delivery surface (console API, pages, agent listener) takes from
//! a request: body, path and query extractors whose rejections are problem
//! documents, and the clock read once at the edge.

use axum::extract::{FromRequest, FromRequestParts};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use crate::errors::ApiError;

/// Largest request body accepted (64 KiB): CSRs and CA imports fit with room to spare.
pub const BODY_LIMIT: usize = 64 * 1024;

/// JSON body whose rejections are problem documents.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameters whose rejections are problem documents.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query parameters whose rejections are problem documents.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The clock, read once per request at the edge; whole seconds, as stored.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}
