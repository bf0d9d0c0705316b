//! The agent API's rate limit and request counting, now shared with the
//! console: the token bucket lives in [`crate::http::limit`] and the request
//! metrics (counter and latency histogram per route group, rendered at
//! `/metrics`) in [`crate::http::metrics`].

pub use crate::http::limit::RateLimiter;
