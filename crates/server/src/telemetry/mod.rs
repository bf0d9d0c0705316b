//! What both listeners record about every request: request metrics for
//! `/metrics` and the access log with request ids. Middleware only; the
//! endpoints that show them live in `crate::ops`.

pub mod compliance;
pub mod metrics;
pub mod observe;
