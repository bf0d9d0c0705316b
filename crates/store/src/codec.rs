//! Column lists and conversions between domain values and their column
//! representation, shared by both backends (see the migration headers for the
//! conventions).

use certflow_core::RenewalPolicy;
use certflow_core::error::DomainResult;
use certflow_core::model::{
    Actor, AuditEvent, Certificate, CertificateStatus, CertificateVersion, IdempotencyRecord,
    Issuer, IssuerKind, KeySource, KeyType, Labels, Outcome, RevocationReason, VersionStatus,
};
use certflow_core::notify::{Delivery, DeliveryAttempt, DeliveryState, Subscription};
use certflow_core::renewal::{JobState, RenewalJob};
use certflow_core::{Profile, SubjectName};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::corrupt;
use crate::query::Columns;

// Macros rather than consts so they can be spliced into `concat!` and keep
// every query a `&'static str`.
macro_rules! certificate_columns {
    () => {
        "c.id, c.name, c.team, c.profile, c.key_type, c.key_source, c.names, c.validity_days, \
         c.validity_secs, c.issuer_id, c.renew_at_fraction, c.renew_before_days, c.renew_jitter_fraction, c.status, \
         c.managed, c.current_version, c.not_after, c.renew_after, c.created_at, c.updated_at"
    };
}

macro_rules! version_columns {
    () => {
        "certificate_id, version, serial, fingerprint_sha256, not_before, not_after, key_type, \
         names, issuer_id, status, revoked_at, revocation_reason, cert_blob, key_blob, created_at"
    };
}

macro_rules! issuer_columns {
    () => {
        "id, name, kind, is_default, key_type, issuing_cert_pem, chain_pem, key_blob, \
         root_key_blob, subject, not_after, created_at"
    };
}

macro_rules! audit_columns {
    () => {
        "id, at, subject, source, action, target, outcome, details"
    };
}

macro_rules! idempotency_columns {
    () => {
        "scope, key, request_sha256, certificate_id, version, created_at"
    };
}

macro_rules! job_columns {
    () => {
        "id, certificate_id, version, state, attempts, max_attempts, run_at, lease_until, \
         last_attempt_at, last_error, created_at, updated_at"
    };
}

macro_rules! subscription_columns {
    () => {
        "id, team, events, channel, created_at"
    };
}

/// Of `deliveries d` joined with `notifications n`.
macro_rules! delivery_columns {
    () => {
        "d.id, d.subscription_id, d.channel, d.state, d.attempts, d.next_attempt_at, \
         d.last_error, d.delivered_at, d.created_at, n.payload"
    };
}

pub(crate) use {
    audit_columns, certificate_columns, delivery_columns, idempotency_columns, issuer_columns,
    job_columns, subscription_columns, version_columns,
};

/// JSON text of `value`; `what` names it in the error.
pub(crate) fn to_json(what: &str, value: &impl serde::Serialize) -> DomainResult<String> {
    serde_json::to_string(value)
        .map_err(|e| certflow_core::DomainError::Internal(format!("encoding {what}: {e}")))
}

/// A JSON text column, decoded.
pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
    row: &impl Columns,
    col: &str,
) -> DomainResult<T> {
    serde_json::from_str(&row.text(col)?).map_err(|e| corrupt(col, e))
}

/// Decodes a row selected with [`job_columns`].
pub(crate) fn renewal_job(row: &impl Columns) -> DomainResult<RenewalJob> {
    Ok(RenewalJob {
        id: get_uuid(row, "id")?,
        certificate_id: get_uuid(row, "certificate_id")?,
        version: get_u32(row, "version")?,
        state: get_enum(row, "state", JobState::parse)?,
        attempts: get_u32(row, "attempts")?,
        max_attempts: get_u32(row, "max_attempts")?,
        run_at: get_time(row, "run_at")?,
        lease_until: get_opt_time(row, "lease_until")?,
        last_attempt_at: get_opt_time(row, "last_attempt_at")?,
        last_error: row.opt_text("last_error")?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

/// Decodes a row selected with [`subscription_columns`].
pub(crate) fn subscription(row: &impl Columns) -> DomainResult<Subscription> {
    Ok(Subscription {
        id: get_uuid(row, "id")?,
        team: row.text("team")?,
        events: get_json(row, "events")?,
        channel: get_json(row, "channel")?,
        created_at: get_time(row, "created_at")?,
    })
}

/// Decodes a row selected with [`delivery_columns`].
pub(crate) fn delivery(row: &impl Columns) -> DomainResult<Delivery> {
    Ok(Delivery {
        id: get_uuid(row, "id")?,
        notification: get_json(row, "payload")?,
        subscription_id: get_uuid(row, "subscription_id")?,
        channel: get_json(row, "channel")?,
        state: get_enum(row, "state", DeliveryState::parse)?,
        attempts: get_u32(row, "attempts")?,
        next_attempt_at: get_time(row, "next_attempt_at")?,
        last_error: row.opt_text("last_error")?,
        delivered_at: get_opt_time(row, "delivered_at")?,
        created_at: get_time(row, "created_at")?,
    })
}

/// Decodes a row of `delivery_attempts`.
pub(crate) fn delivery_attempt(row: &impl Columns) -> DomainResult<DeliveryAttempt> {
    Ok(DeliveryAttempt {
        delivery_id: get_uuid(row, "delivery_id")?,
        attempt: get_u32(row, "attempt")?,
        at: get_time(row, "at")?,
        error: row.opt_text("error")?,
    })
}

/// Column text of a UUID: lower-case hyphenated, whose text order is UUIDv7 time order.
pub(crate) fn id(id: Uuid) -> String {
    id.hyphenated().to_string()
}

/// Column value of an instant: whole unix seconds (sub-second precision is dropped).
pub(crate) fn secs(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// Smallest whole second not before `t`, so that `col < ceil_secs(t)` equals
/// `col < t` for whole-second columns.
pub(crate) fn ceil_secs(t: OffsetDateTime) -> i64 {
    let s = t.unix_timestamp();
    if t.nanosecond() > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

/// Search form of a name: Unicode lower case, computed here rather than by
/// the database so every backend folds the same way.
pub(crate) fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// `%term%` with LIKE wildcards in `term` escaped for `ESCAPE '\'`.
pub(crate) fn contains_pattern(term: &str) -> String {
    let mut out = String::with_capacity(term.len() + 2);
    out.push('%');
    for ch in term.chars() {
        if matches!(ch, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

pub(crate) fn names_json(names: &[SubjectName]) -> DomainResult<String> {
    serde_json::to_string(names)
        .map_err(|e| certflow_core::DomainError::Internal(format!("encoding names: {e}")))
}

pub(crate) fn issuer_kind(kind: IssuerKind) -> &'static str {
    match kind {
        IssuerKind::Internal => "internal",
        IssuerKind::Acme => "acme",
        IssuerKind::External => "external",
    }
}

fn parse_issuer_kind(s: &str) -> Option<IssuerKind> {
    match s {
        "internal" => Some(IssuerKind::Internal),
        "acme" => Some(IssuerKind::Acme),
        "external" => Some(IssuerKind::External),
        _ => None,
    }
}

fn parse_outcome(s: &str) -> Option<Outcome> {
    [Outcome::Success, Outcome::Failure]
        .into_iter()
        .find(|o| o.as_str() == s)
}

/// A text column holding one of an enum's stable identifiers.
pub(crate) fn get_enum<T>(
    row: &impl Columns,
    col: &str,
    parse: fn(&str) -> Option<T>,
) -> DomainResult<T> {
    let text = row.text(col)?;
    parse(&text).ok_or_else(|| corrupt(col, format!("unknown value '{text}'")))
}

/// A non-NULL id column.
pub(crate) fn get_uuid(row: &impl Columns, col: &str) -> DomainResult<Uuid> {
    Uuid::parse_str(&row.text(col)?).map_err(|e| corrupt(col, e))
}

/// A non-NULL instant column (unix seconds).
pub(crate) fn get_time(row: &impl Columns, col: &str) -> DomainResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(row.int(col)?).map_err(|e| corrupt(col, e))
}

/// An instant column (unix seconds) that may be NULL.
pub(crate) fn get_opt_time(row: &impl Columns, col: &str) -> DomainResult<Option<OffsetDateTime>> {
    row.opt_int(col)?
        .map(|s| OffsetDateTime::from_unix_timestamp(s).map_err(|e| corrupt(col, e)))
        .transpose()
}

/// A non-negative integer column that fits a `u32`.
pub(crate) fn get_u32(row: &impl Columns, col: &str) -> DomainResult<u32> {
    u32::try_from(row.int(col)?).map_err(|e| corrupt(col, e))
}

/// Decodes a row selected with [`certificate_columns`]; labels live in their own table.
pub(crate) fn certificate(row: &impl Columns, labels: Labels) -> DomainResult<Certificate> {
    let renew_before_days = row.opt_int("renew_before_days")?;
    Ok(Certificate {
        id: get_uuid(row, "id")?,
        name: row.text("name")?,
        team: row.text("team")?,
        labels,
        profile: get_enum(row, "profile", Profile::parse)?,
        key_type: get_enum(row, "key_type", KeyType::parse)?,
        key_source: get_enum(row, "key_source", KeySource::parse)?,
        names: get_json(row, "names")?,
        validity_days: get_u32(row, "validity_days")?,
        validity_secs: row
            .opt_int("validity_secs")?
            .map(|s| u32::try_from(s).map_err(|e| corrupt("validity_secs", e)))
            .transpose()?,
        issuer_id: get_uuid(row, "issuer_id")?,
        renewal: RenewalPolicy {
            renew_at_fraction: row.real("renew_at_fraction")?,
            renew_before_days: renew_before_days
                .map(|d| u32::try_from(d).map_err(|e| corrupt("renew_before_days", e)))
                .transpose()?,
            jitter_fraction: row.real("renew_jitter_fraction")?,
        },
        status: get_enum(row, "status", CertificateStatus::parse)?,
        managed: row.boolean("managed")?,
        current_version: get_u32(row, "current_version")?,
        not_after: get_time(row, "not_after")?,
        renew_after: get_time(row, "renew_after")?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

/// Decodes a row selected with [`version_columns`].
pub(crate) fn version(row: &impl Columns) -> DomainResult<CertificateVersion> {
    let reason = row.opt_text("revocation_reason")?;
    Ok(CertificateVersion {
        certificate_id: get_uuid(row, "certificate_id")?,
        version: get_u32(row, "version")?,
        serial: row.text("serial")?,
        fingerprint_sha256: row.text("fingerprint_sha256")?,
        not_before: get_time(row, "not_before")?,
        not_after: get_time(row, "not_after")?,
        key_type: get_enum(row, "key_type", KeyType::parse)?,
        names: get_json(row, "names")?,
        issuer_id: get_uuid(row, "issuer_id")?,
        status: get_enum(row, "status", VersionStatus::parse)?,
        revoked_at: get_opt_time(row, "revoked_at")?,
        revocation_reason: reason
            .map(|r| {
                RevocationReason::parse(&r)
                    .ok_or_else(|| corrupt("revocation_reason", format!("unknown value '{r}'")))
            })
            .transpose()?,
        cert_blob: row.text("cert_blob")?,
        key_blob: row.opt_text("key_blob")?,
        created_at: get_time(row, "created_at")?,
    })
}

/// Decodes a row selected with [`issuer_columns`].
pub(crate) fn issuer(row: &impl Columns) -> DomainResult<Issuer> {
    Ok(Issuer {
        id: get_uuid(row, "id")?,
        name: row.text("name")?,
        kind: get_enum(row, "kind", parse_issuer_kind)?,
        is_default: row.boolean("is_default")?,
        key_type: get_enum(row, "key_type", KeyType::parse)?,
        issuing_cert_pem: row.text("issuing_cert_pem")?,
        chain_pem: row.text("chain_pem")?,
        key_blob: row.text("key_blob")?,
        root_key_blob: row.opt_text("root_key_blob")?,
        subject: row.text("subject")?,
        not_after: get_time(row, "not_after")?,
        created_at: get_time(row, "created_at")?,
    })
}

/// Decodes a row selected with [`audit_columns`].
pub(crate) fn audit(row: &impl Columns) -> DomainResult<AuditEvent> {
    let details = row.text("details")?;
    Ok(AuditEvent {
        id: get_uuid(row, "id")?,
        at: get_time(row, "at")?,
        actor: Actor {
            subject: row.text("subject")?,
            source: row.opt_text("source")?,
        },
        action: row.text("action")?,
        target: row.text("target")?,
        outcome: get_enum(row, "outcome", parse_outcome)?,
        details: serde_json::from_str(&details).map_err(|e| corrupt("details", e))?,
    })
}

/// Decodes a row selected with [`idempotency_columns`].
pub(crate) fn idempotency(row: &impl Columns) -> DomainResult<IdempotencyRecord> {
    Ok(IdempotencyRecord {
        scope: row.text("scope")?,
        key: row.text("key")?,
        request_sha256: row.text("request_sha256")?,
        certificate_id: get_uuid(row, "certificate_id")?,
        version: get_u32(row, "version")?,
        created_at: get_time(row, "created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_pattern_escapes_wildcards_and_the_escape() {
        assert_eq!(contains_pattern("a%b_c\\d"), "%a\\%b\\_c\\\\d%");
        assert_eq!(contains_pattern(""), "%%");
    }

    #[test]
    fn ceil_secs_rounds_up_only_fractions() {
        let t = OffsetDateTime::from_unix_timestamp(100).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        assert_eq!(ceil_secs(t), 100);
        assert_eq!(ceil_secs(t + time::Duration::milliseconds(1)), 101);
        assert_eq!(ceil_secs(t - time::Duration::milliseconds(1)), 100);
        assert_eq!(secs(t - time::Duration::milliseconds(1)), 99);
    }

    #[test]
    fn issuer_kind_round_trips() {
        for kind in [IssuerKind::Internal, IssuerKind::Acme, IssuerKind::External] {
            assert_eq!(parse_issuer_kind(issuer_kind(kind)), Some(kind));
        }
    }
}
