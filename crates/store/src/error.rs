//! Translation of driver errors into [`DomainError`] at the store boundary,
//! for both backends: the driver's own error type tells them apart.
//!
//! Only the statement that failed knows what a constraint violation means to
//! the caller, so statements pass a describer to [`conflict`]; everything else
//! goes through [`map`].

use certflow_core::DomainError;
use sqlx::error::DatabaseError;
use sqlx::postgres::PgDatabaseError;

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

/// What a database error means, whichever backend raised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A unique index refused the row.
    Violation(Violation),
    /// The server or file cannot serve the statement now; retrying may help.
    Unavailable,
    /// The stored data is damaged.
    Corrupt,
    /// Anything else: a bug or an unexpected state.
    Other,
}

fn classify(db: &dyn DatabaseError) -> Class {
    match db.try_downcast_ref::<PgDatabaseError>() {
        Some(pg) => classify_postgres(pg.code(), pg.constraint()),
        None => classify_sqlite(db),
    }
}

fn classify_sqlite(db: &dyn DatabaseError) -> Class {
    let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
    if db.is_unique_violation() {
        return Class::Violation(if code == SQLITE_CONSTRAINT_PRIMARYKEY {
            Violation::PrimaryKey
        } else {
            Violation::Unique
        });
    }
    // Primary result code: the low byte of the extended code.
    match code & 0xff {
        // BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN
        5 | 6 | 7 | 8 | 10 | 13 | 14 => Class::Unavailable,
        // CORRUPT, NOTADB: retrying will not help, but it is the file, not a bug.
        11 | 26 => Class::Corrupt,
        _ => Class::Other,
    }
}

/// PostgreSQL by SQLSTATE (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
fn classify_postgres(sqlstate: &str, constraint: Option<&str>) -> Class {
    match sqlstate {
        // unique_violation; PostgreSQL names primary keys `<table>_pkey`.
        "23505" => Class::Violation(if constraint.is_some_and(|c| c.ends_with("_pkey")) {
            Violation::PrimaryKey
        } else {
            Violation::Unique
        }),
        // data_corrupted, index_corrupted
        "XX001" | "XX002" => Class::Corrupt,
        // serialization_failure, deadlock_detected, read_only_sql_transaction
        // (a standby), lock_not_available, query_canceled (statement_timeout),
        // admin/crash shutdown, cannot_connect_now.
        "40001" | "40P01" | "25006" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" => {
            Class::Unavailable
        }
        // connection_exception (08), insufficient_resources (53: disk full,
        // out of memory, too many connections), invalid authorization (28).
        s if s.starts_with("08") || s.starts_with("53") || s.starts_with("28") => {
            Class::Unavailable
        }
        _ => Class::Other,
    }
}

fn violation(err: &sqlx::Error) -> Option<Violation> {
    match classify(err.as_database_error()?) {
        Class::Violation(v) => Some(v),
        _ => None,
    }
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
    let class = match &err {
        sqlx::Error::Database(db) => classify(db.as_ref()),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Configuration(_)
        | sqlx::Error::Tls(_) => Class::Unavailable,
        _ => Class::Other,
    };
    match class {
        Class::Violation(_) => {
            DomainError::Conflict("the change conflicts with an existing record".into())
        }
        Class::Unavailable => {
            tracing::warn!(error = %err, "database unavailable");
            DomainError::Unavailable {
                backend: "database",
                reason: err.to_string(),
            }
        }
        Class::Corrupt => {
            tracing::error!(error = %err, "database is damaged");
            DomainError::Integrity("the database is corrupt or not a database".into())
        }
        Class::Other => {
            tracing::error!(error = %err, "unexpected database error");
            DomainError::Internal(format!("database: {err}"))
        }
    }
}

/// An `Internal` error for stored data that does not decode.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> DomainError {
    tracing::error!(column = what, error = %detail, "stored value does not decode");
    DomainError::Internal(format!("stored {what} does not decode: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_sqlstates_classify() {
        assert_eq!(
            classify_postgres("23505", Some("issuers_pkey")),
            Class::Violation(Violation::PrimaryKey)
        );
        assert_eq!(
            classify_postgres("23505", Some("certificates_team_name")),
            Class::Violation(Violation::Unique)
        );
        assert_eq!(
            classify_postgres("23505", None),
            Class::Violation(Violation::Unique)
        );
        for unavailable in ["08006", "53300", "57014", "57P01", "40001", "28P01"] {
            assert_eq!(
                classify_postgres(unavailable, None),
                Class::Unavailable,
                "{unavailable}"
            );
        }
        assert_eq!(classify_postgres("XX001", None), Class::Corrupt);
        // Foreign key, check and syntax errors are bugs here, not conflicts.
        for other in ["23503", "23514", "42601"] {
            assert_eq!(classify_postgres(other, None), Class::Other, "{other}");
        }
    }
}
