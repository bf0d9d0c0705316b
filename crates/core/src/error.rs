//! The error kinds every layer shares. Adapters translate driver errors
//! (SQLite, object_store, AWS) into these at their own boundary; only the web
//! layer turns them into HTTP statuses.

use std::fmt;

/// One rejected input field and why, shown to the caller as-is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// A JSON-pointer-like path to the field, e.g. `names[2]` or `csr`.
    pub field: String,
    /// Human-readable reason.
    pub reason: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// What went wrong, as the domain sees it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// The caller sent something we will not act on; nothing was changed.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with the current state (e.g. renewing a revoked certificate).
    #[error("conflict: {0}")]
    Conflict(String),
    /// An `Idempotency-Key` was reused with a different request; nothing was changed.
    #[error("idempotency key reused: {0}")]
    IdempotencyKeyReused(String),
    /// The caller is not allowed to do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A backend (database, blob store, key provider) is unavailable; retrying may help.
    #[error("{backend} unavailable: {reason}")]
    Unavailable {
        /// Which backend: `database`, `blob store`, `master key`...
        backend: &'static str,
        /// The driver's reason, without secrets.
        reason: String,
    },
    /// Stored data could not be decrypted or parsed: wrong master key or tampering.
    #[error("integrity: {0}")]
    Integrity(String),
    /// A bug or an unexpected state; details are logged, not shown.
    #[error("internal: {0}")]
    Internal(String),
}

impl DomainError {
    /// Shorthand for a single invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, reason)])
    }
}

/// Result alias used across the domain.
pub type DomainResult<T> = Result<T, DomainError>;
