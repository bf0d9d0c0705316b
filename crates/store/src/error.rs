//! Translation of driver errors into [`DomainError`] at the store boundary.
//!
//! Only the statement that failed knows what a constraint violation means to
//! the caller, so statements pass a describer to [`conflict`]; everything else
//! goes through [`map`].

use certflow_core::DomainError;

/// `SQLITE_CONSTRAINT_PRIMARYKEY`: SQLite reports it instead of
/// `SQLITE_CONSTRAINT_UNIQUE` when the violated index is the primary key, which
/// lets a statement tell "this id exists" from "this natural key is taken".
const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;

/// Which kind of constraint a failed statement violated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// The row's primary key already exists.
    PrimaryKey,
    /// Another unique index (natural key) already holds the value.
    Unique,
}

fn violation(err: &sqlx::Error) -> Option<Violation> {
    let db = err.as_database_error()?;
    if !db.is_unique_violation() {
        return None;
    }
    let primary = db
        .code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| c == SQLITE_CONSTRAINT_PRIMARYKEY);
    Some(if primary {
        Violation::PrimaryKey
    } else {
        Violation::Unique
    })
}

/// Maps a statement's error, turning the unique violations `describe` knows
/// about into a `Conflict` with its message.
pub(crate) fn conflict(
    err: sqlx::Error,
    describe: impl FnOnce(Violation) -> Option<String>,
) -> DomainError {
    if let Some(message) = violation(&err).and_then(describe) {
        return DomainError::Conflict(message);
    }
    map(err)
}

/// Maps any driver error: unique violations become a generic `Conflict`,
/// connectivity and I/O problems `Unavailable`, everything else `Internal`.
pub(crate) fn map(err: sqlx::Error) -> DomainError {
    if violation(&err).is_some() {
        return DomainError::Conflict("the change conflicts with an existing record".into());
    }
    let unavailable = match &err {
        sqlx::Error::Database(db) => {
            // Primary result code: the low byte of the extended code.
            let primary = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff;
            match primary {
                // BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN
                5 | 6 | 7 | 8 | 10 | 13 | 14 => true,
                // CORRUPT, NOTADB: retrying will not help, but it is the file, not a bug.
                11 | 26 => {
                    tracing::error!(error = %err, "database file is damaged");
                    return DomainError::Integrity(
                        "the database file is corrupt or not a database".into(),
                    );
                }
                _ => false,
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Configuration(_)
        | sqlx::Error::Tls(_) => true,
        _ => false,
    };
    if unavailable {
        tracing::warn!(error = %err, "database unavailable");
        DomainError::Unavailable {
            backend: "database",
            reason: err.to_string(),
        }
    } else {
        tracing::error!(error = %err, "unexpected database error");
        DomainError::Internal(format!("database: {err}"))
    }
}

/// An `Internal` error for stored data that does not decode.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> DomainError {
    tracing::error!(column = what, error = %detail, "stored value does not decode");
    DomainError::Internal(format!("stored {what} does not decode: {detail}"))
}
