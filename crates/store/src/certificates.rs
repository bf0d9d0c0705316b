//! [`MetadataStore`] written once for every [`Backend`] (see [`crate::query`]
//! for why and how): certificates with their versions, names and labels, and
//! what the port carries alongside them (issuers, idempotency keys, the audit
//! listing, settings). The other ports have a module each; the audit chain
//! itself is [`crate::audit`].
//!
//! Concurrency: every write runs in one transaction that starts with
//! `BEGIN_WRITE` and locks what it reads before deciding (`FOR_UPDATE`,
//! `LOCK_ISSUERS`; see [`Dialect`](crate::query::Dialect)). On SQLite the
//! transaction already holds the database's write lock, so the locks are
//! empty; on PostgreSQL (read committed) they make concurrent writers of the
//! same certificate queue up and re-read, so both backends decide alike.
//! Writers lock a certificate's row before its versions, never the reverse.
//! Listings read in one snapshot (`BEGIN_READ`) so the total and the page
//! agree.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use bytes::Bytes;
use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use certflow_core::model::{
    AuditChainReport, AuditEvent, AuditQuery, Certificate, CertificateQuery, CertificateStats,
    CertificateStatus, CertificateVersion, IdempotencyRecord, Issuer, Labels, Page,
    RevocationReason, SortKey, VersionStatus,
};
use certflow_core::notify::Notification;
use certflow_core::ports::{MetadataStore, VersionCommit, VersionCommitted};
use certflow_core::renewal::JobDelivery;
use sqlx::Pool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{audit_script, insert_audit, insert_audits};
use crate::blobs::{insert_blobs, upsert_blobs};
use crate::codec::{
    self, audit_columns, certificate_columns, fold, id, idempotency_columns, issuer_columns, secs,
    version_columns,
};
use crate::error::{Violation, conflict, map};
use crate::group_commit::together_or_alone;
use crate::notify::announcement_writes;
use crate::query::{Backend, Columns, Param, Sql};
use crate::renewal::{complete_jobs_sql, completed};
use crate::store::{SqlStore, execute, execute_all, fetch_all, fetch_optional, page_bounds, total};

/// Most certificates one `due_for_renewal` batch returns.
const MAX_DUE: u32 = 1000;

/// `INSERT` of `certificates` rows, before their `VALUES`.
const CERTIFICATE_INSERT: &str = concat!(
    "INSERT INTO certificates (",
    "id, name, name_folded, team, profile, key_type, key_source, names, validity_days, ",
    "validity_secs, issuer_id, renew_at_fraction, renew_before_days, renew_jitter_fraction, ",
    "status, current_version, not_after, renew_after, created_at, updated_at, managed)"
);

/// The head of a multi-row `INSERT` of idempotency records.
const IDEMPOTENCY_INSERT: &str = concat!(
    "INSERT INTO idempotency_keys (",
    idempotency_columns!(),
    ")"
);
/// The head of a multi-row `INSERT` of versions.
const VERSION_INSERT: &str = concat!(
    "INSERT INTO certificate_versions (",
    version_columns!(),
    ")"
);
/// The head of a multi-row `INSERT` of searchable names.
const NAMES_INSERT: &str = "INSERT INTO certificate_names (certificate_id, name)";
/// The head of a multi-row `INSERT` of labels.
const LABELS_INSERT: &str = "INSERT INTO certificate_labels (certificate_id, key, value)";

/// The values of `cert`'s row, in [`CERTIFICATE_INSERT`]'s column order.
fn certificate_row(cert: &Certificate) -> DomainResult<Vec<Param>> {
    Ok(vec![
        id(cert.id).into(),
        cert.name.as_str().into(),
        fold(&cert.name).into(),
        cert.team.as_str().into(),
        cert.profile.as_str().into(),
        cert.key_type.as_str().into(),
        cert.key_source.as_str().into(),
        codec::names_json(&cert.names)?.into(),
        i64::from(cert.validity_days).into(),
        cert.validity_secs.map(i64::from).into(),
        id(cert.issuer_id).into(),
        cert.renewal.renew_at_fraction.into(),
        cert.renewal.renew_before_days.map(i64::from).into(),
        cert.renewal.jitter_fraction.into(),
        cert.status.as_str().into(),
        i64::from(cert.current_version).into(),
        secs(cert.not_after).into(),
        secs(cert.renew_after).into(),
        secs(cert.created_at).into(),
        secs(cert.updated_at).into(),
        cert.managed.into(),
    ])
}

/// The values of `v`'s row, in `version_columns` order.
fn version_row(v: &CertificateVersion) -> DomainResult<Vec<Param>> {
    Ok(vec![
        id(v.certificate_id).into(),
        i64::from(v.version).into(),
        v.serial.as_str().into(),
        v.fingerprint_sha256.as_str().into(),
        secs(v.not_before).into(),
        secs(v.not_after).into(),
        v.key_type.as_str().into(),
        codec::names_json(&v.names)?.into(),
        id(v.issuer_id).into(),
        v.status.as_str().into(),
        v.revoked_at.map(secs).into(),
        v.revocation_reason.map(RevocationReason::as_str).into(),
        v.cert_blob.as_str().into(),
        v.key_blob.as_deref().into(),
        secs(v.created_at).into(),
    ])
}

/// The values of `record`'s row, in `idempotency_columns` order.
fn idempotency_row(record: &IdempotencyRecord) -> Vec<Param> {
    vec![
        record.scope.as_str().into(),
        record.key.as_str().into(),
        record.request_sha256.as_str().into(),
        id(record.certificate_id).into(),
        i64::from(record.version).into(),
        secs(record.created_at).into(),
    ]
}

/// Stores an idempotency record for the version `v` the transaction commits.
/// Run first in the transaction: a concurrent request with the same key then
/// waits here (PostgreSQL) or behind the write lock (SQLite) and fails on the
/// primary key once the first commits, before it touches anything else.
async fn insert_idempotency<B: Backend>(
    conn: &mut B::Connection,
    record: &IdempotencyRecord,
    v: &CertificateVersion,
) -> DomainResult<()> {
    if record.certificate_id != v.certificate_id || record.version != v.version {
        return Err(DomainError::Internal(format!(
            "idempotency record for version {} of certificate {} given with version {} of \
             certificate {}",
            record.version, record.certificate_id, v.version, v.certificate_id
        )));
    }
    let mut sql = Sql::new(IDEMPOTENCY_INSERT);
    sql.push_values([idempotency_row(record)]);
    B::execute(conn, sql).await.map_err(|e| {
        conflict(e, |violation| {
            (violation == Violation::PrimaryKey).then(|| {
                format!(
                    "idempotency key '{}' was already used in this scope",
                    record.key
                )
            })
        })
    })
}

/// Whether `sql`, a lookup by one id, finds a row.
async fn exists<B: Backend>(
    conn: &mut B::Connection,
    sql: &'static str,
    key: Uuid,
) -> DomainResult<bool> {
    let found = fetch_optional::<B>(conn, Sql::new(sql).bind(id(key))).await?;
    Ok(found.is_some())
}

async fn ensure_issuer<B: Backend>(conn: &mut B::Connection, issuer_id: Uuid) -> DomainResult<()> {
    if exists::<B>(conn, "SELECT 1 FROM issuers WHERE id = $1", issuer_id).await? {
        Ok(())
    } else {
        Err(DomainError::NotFound(format!("issuer {issuer_id}")))
    }
}

/// Locks the certificate's row for the rest of the write transaction and
/// returns its `status` and `current_version`, or `None` if it does not exist.
async fn lock_certificate<B: Backend>(
    conn: &mut B::Connection,
    certificate_id: Uuid,
) -> DomainResult<Option<(String, i64)>> {
    let mut sql = Sql::new("SELECT status, current_version FROM certificates WHERE id = $1")
        .bind(id(certificate_id));
    sql.push(B::FOR_UPDATE);
    let Some(row) = fetch_optional::<B>(conn, sql).await? else {
        return Ok(None);
    };
    Ok(Some((row.text("status")?, row.int("current_version")?)))
}

async fn insert_version<B: Backend>(
    conn: &mut B::Connection,
    v: &CertificateVersion,
) -> DomainResult<()> {
    let mut sql = Sql::new(VERSION_INSERT);
    sql.push_values([version_row(v)?]);
    B::execute(conn, sql).await.map_err(|e| {
        conflict(e, |violation| {
            Some(match violation {
                Violation::PrimaryKey => format!(
                    "version {} of certificate {} already exists",
                    v.version, v.certificate_id
                ),
                Violation::Unique => format!(
                    "serial {} was already issued by issuer {}",
                    v.serial, v.issuer_id
                ),
            })
        })
    })
}

/// Rewrites the searchable copy of a certificate's names.
async fn replace_names<B: Backend>(
    conn: &mut B::Connection,
    cert: &Certificate,
) -> DomainResult<()> {
    execute::<B>(
        conn,
        Sql::new("DELETE FROM certificate_names WHERE certificate_id = $1").bind(id(cert.id)),
    )
    .await?;
    match Sql::insert(NAMES_INSERT, name_rows(cert)) {
        Some(sql) => execute::<B>(conn, sql).await,
        None => Ok(()),
    }
}

/// The `certificate_names` rows of `cert`: its names folded for search, each
/// once (two names may fold to the same text).
fn name_rows(cert: &Certificate) -> Vec<Vec<Param>> {
    let mut folded: Vec<String> = cert.names.iter().map(|n| fold(&n.to_text())).collect();
    folded.sort_unstable();
    folded.dedup();
    folded
        .into_iter()
        .map(|n| vec![id(cert.id).into(), n.into()])
        .collect()
}

/// Labels of the given certificates, keyed by their id column text.
async fn load_labels<B: Backend>(
    conn: &mut B::Connection,
    ids: &[String],
) -> DomainResult<HashMap<String, Labels>> {
    let mut out: HashMap<String, Labels> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let mut sql = Sql::new(
        "SELECT certificate_id, key, value FROM certificate_labels WHERE certificate_id IN (",
    );
    for (i, certificate_id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push_bind(certificate_id.as_str());
    }
    sql.push(")");
    for row in fetch_all::<B>(conn, sql).await? {
        out.entry(row.text("certificate_id")?)
            .or_default()
            .insert(row.text("key")?, row.text("value")?);
    }
    Ok(out)
}

/// Appends the `WHERE` conditions of a certificate listing; user input only
/// ever goes into bind parameters.
fn push_certificate_filters(sql: &mut Sql, q: &CertificateQuery) {
    sql.push(" WHERE 1 = 1");
    if let Some(term) = q.search.as_deref() {
        // Both sides are folded by `codec::fold`, so LIKE's own case rules
        // (ASCII-insensitive in SQLite, sensitive in PostgreSQL) never matter.
        let pattern = codec::contains_pattern(&fold(term));
        sql.push(" AND (c.name_folded LIKE ")
            .push_bind(pattern.clone())
            .push(
                " ESCAPE '\\' OR EXISTS (SELECT 1 FROM certificate_names n \
                 WHERE n.certificate_id = c.id AND n.name LIKE ",
            )
            .push_bind(pattern)
            .push(" ESCAPE '\\'))");
    }
    if let Some(team) = q.team.as_deref() {
        sql.push(" AND c.team = ").push_bind(team);
    }
    if let Some(teams) = q.teams.as_deref() {
        if teams.is_empty() {
            sql.push(" AND 1 = 0");
        } else {
            sql.push(" AND c.team IN (");
            for (i, team) in teams.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push_bind(team.as_str());
            }
            sql.push(")");
        }
    }
    for (key, value) in &q.labels {
        sql.push(
            " AND EXISTS (SELECT 1 FROM certificate_labels l \
             WHERE l.certificate_id = c.id AND l.key = ",
        )
        .push_bind(key.as_str())
        .push(" AND l.value = ")
        .push_bind(value.as_str())
        .push(")");
    }
    if let Some(status) = q.status {
        sql.push(" AND c.status = ").push_bind(status.as_str());
    }
    if let Some(before) = q.expires_before {
        sql.push(" AND c.not_after < ")
            .push_bind(codec::ceil_secs(before));
    }
    if let Some(issuer) = q.issuer_id {
        sql.push(" AND c.issuer_id = ").push_bind(id(issuer));
    }
    if let Some(managed) = q.managed {
        sql.push(" AND c.managed = ").push_bind(managed);
    }
}

fn push_audit_filters(sql: &mut Sql, q: &AuditQuery) {
    sql.push(" WHERE 1 = 1");
    if let Some(target) = q.target.as_deref() {
        sql.push(" AND target = ").push_bind(target);
    }
    if let Some(prefix) = q.action_prefix.as_deref() {
        // substr, not LIKE: LIKE folds ASCII case in SQLite but not in
        // PostgreSQL. Both count characters in substr and length.
        sql.push(" AND substr(action, 1, length(")
            .push_bind(prefix)
            .push(")) = ")
            .push_bind(prefix);
    }
    if let Some(subject) = q.subject.as_deref() {
        sql.push(" AND subject = ").push_bind(subject);
    }
    if let Some(outcome) = q.outcome {
        sql.push(" AND outcome = ").push_bind(outcome.as_str());
    }
    // `at` holds whole seconds, so rounding the bounds up keeps both exact.
    if let Some(since) = q.since {
        sql.push(" AND at >= ").push_bind(codec::ceil_secs(since));
    }
    if let Some(until) = q.until {
        sql.push(" AND at < ").push_bind(codec::ceil_secs(until));
    }
}

/// The renewal scheduler's query: due certificates whose current version has
/// no renewal job yet, so a scheduler that enqueues every row it gets moves on
/// to the next batch instead of reading the same one again (the port takes no
/// cursor). The `NOT EXISTS` probes the `(certificate_id, version)` unique key
/// of `renewal_jobs`, one index lookup per due row. `certificates_due (status, renew_after)
/// WHERE managed = TRUE` (partial: inventory-only certificates are never due,
/// and the query repeats the predicate so both backends can use it) serves it
/// on both backends: an equality on `status` and a range on
/// `renew_after`. Walking the index yields `renew_after` order, so only rows
/// due in the same second are sorted by id (SQLite: "USE TEMP B-TREE FOR LAST
/// TERM OF ORDER BY"; PostgreSQL: "Incremental Sort", or a bitmap scan and a
/// sort when few rows match) and the walk stops after `limit` rows. Each
/// backend's unit tests check the plan.
pub(crate) fn due_query(now: OffsetDateTime, limit: u32) -> Sql {
    Sql::new(concat!(
        "SELECT ",
        certificate_columns!(),
        " FROM certificates c WHERE c.status = $1 AND c.renew_after <= $2 AND c.managed = TRUE \
         AND NOT EXISTS (SELECT 1 FROM renewal_jobs j \
         WHERE j.certificate_id = c.id AND j.version = c.current_version) \
         ORDER BY c.renew_after, c.id LIMIT $3"
    ))
    .bind(CertificateStatus::Active.as_str())
    // Whole seconds, rounded down: `renew_after <= secs(now)` equals
    // `renew_after <= now` for whole-second columns.
    .bind(secs(now))
    .bind(i64::from(due_limit(limit)))
}

fn due_limit(limit: u32) -> u32 {
    limit.clamp(1, MAX_DUE)
}

/// Decodes certificate rows with their labels, read in the same transaction.
async fn certificates_with_labels<B: Backend>(
    conn: &mut B::Connection,
    rows: &[B::Record],
) -> DomainResult<Vec<Certificate>> {
    let ids = rows
        .iter()
        .map(|r| r.text("id"))
        .collect::<DomainResult<Vec<_>>>()?;
    let mut labels = load_labels::<B>(conn, &ids).await?;
    rows.iter()
        .zip(&ids)
        .map(|(row, key)| codec::certificate(row, labels.remove(key).unwrap_or_default()))
        .collect()
}

/// Inserts the issuer row (not its audit event) in the write transaction `conn`.
async fn insert_issuer_row<B: Backend>(
    conn: &mut B::Connection,
    issuer: &Issuer,
) -> DomainResult<()> {
    // Checked first because a duplicate row may violate several indexes
    // and the database reports just one of them.
    if exists::<B>(conn, "SELECT 1 FROM issuers WHERE id = $1", issuer.id).await? {
        return Err(DomainError::Conflict(format!(
            "issuer {} already exists",
            issuer.id
        )));
    }
    let sql = Sql::new(concat!(
        "INSERT INTO issuers (",
        issuer_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(id(issuer.id))
    .bind(issuer.name.as_str())
    .bind(codec::issuer_kind(issuer.kind))
    .bind(issuer.is_default)
    .bind(issuer.key_type.as_str())
    .bind(issuer.issuing_cert_pem.as_str())
    .bind(issuer.chain_pem.as_str())
    .bind(issuer.key_blob.as_str())
    .bind(issuer.root_key_blob.as_deref())
    .bind(issuer.subject.as_str())
    .bind(secs(issuer.not_after))
    .bind(secs(issuer.created_at));
    B::execute(conn, sql).await.map_err(|e| {
        conflict(e, |v| {
            Some(match v {
                Violation::PrimaryKey => format!("issuer {} already exists", issuer.id),
                Violation::Unique => {
                    "another issuer is already the default; store this one as non-default \
                     and make it the default afterwards"
                        .to_owned()
                }
            })
        })
    })?;
    Ok(())
}

/// Refuses a first version that is not version 1 of `cert`.
fn check_first_version(cert: &Certificate, first: &CertificateVersion) -> DomainResult<()> {
    if first.certificate_id != cert.id {
        return Err(DomainError::Internal(format!(
            "version of certificate {} given as the first version of certificate {}",
            first.certificate_id, cert.id
        )));
    }
    if first.version != 1 {
        return Err(DomainError::Conflict(format!(
            "the first version of certificate {} must be 1, not {}",
            cert.id, first.version
        )));
    }
    Ok(())
}

/// A new certificate waiting for its group commit: what
/// [`MetadataStore::create_certificate`] was given.
pub(crate) struct Creation {
    cert: Certificate,
    first: CertificateVersion,
    audit: AuditEvent,
    idempotency: Option<IdempotencyRecord>,
    /// The version's blobs, when they are rows of this database.
    blobs: Vec<(String, Bytes)>,
    /// The notification announcing it ([`VersionCommit::announce`]).
    announce: Option<Notification>,
}

/// Commits a batch of new certificates: together, in one transaction of
/// multi-row statements; should that fail (a name taken, a key reused, an
/// issuer gone...), each in a transaction of its own, so that each gets the
/// answer it would have had alone and the others still commit.
pub(crate) async fn commit_creations<B: Backend>(
    pool: Pool<B>,
    batch: Vec<Creation>,
) -> Vec<DomainResult<()>> {
    let pool = &pool;
    together_or_alone(
        "new certificates",
        &batch,
        |all| async move {
            create_together::<B>(pool, all).await?;
            Ok(vec![(); all.len()])
        },
        |c| create_one::<B>(pool, c),
    )
    .await
}

/// One new certificate in a transaction of its own.
async fn create_one<B: Backend>(pool: &Pool<B>, c: &Creation) -> DomainResult<()> {
    let mut tx = pool.begin_with(B::BEGIN_WRITE).await.map_err(map)?;
    insert_certificate::<B>(&mut tx, &c.cert, &c.first, c.idempotency.as_ref()).await?;
    insert_audit::<B>(&mut tx, &c.audit).await?;
    write_blobs_and_announcement::<B>(&mut tx, &c.blobs, c.announce.as_ref()).await?;
    tx.commit().await.map_err(map)
}

/// Writes, in the transaction `tx` of one version committing alone, the
/// version's blobs and the notification announcing it.
async fn write_blobs_and_announcement<B: Backend>(
    tx: &mut B::Connection,
    blobs: &[(String, Bytes)],
    announce: Option<&Notification>,
) -> DomainResult<()> {
    insert_blobs::<B>(&mut *tx, &blobs.iter().collect::<Vec<_>>()).await?;
    let writes = announcement_writes::<B>(&mut *tx, announce).await?;
    execute_all::<B>(tx, writes).await
}

/// Every certificate of `batch` in one transaction: a statement a table
/// (the per-certificate checks of [`insert_certificate`] are left to the
/// constraints, whose violation sends the batch through [`create_one`]).
async fn create_together<B: Backend>(pool: &Pool<B>, batch: &[Creation]) -> DomainResult<()> {
    let mut idempotency = Vec::new();
    let mut certificates = Vec::with_capacity(batch.len());
    let mut versions = Vec::with_capacity(batch.len());
    let mut names = Vec::new();
    let mut labels = Vec::new();
    for c in batch {
        check_first_version(&c.cert, &c.first)?;
        check_new_version(&c.cert, &c.first, c.idempotency.as_ref())?;
        idempotency.extend(c.idempotency.as_ref().map(idempotency_row));
        certificates.push(certificate_row(&c.cert)?);
        versions.push(version_row(&c.first)?);
        names.extend(name_rows(&c.cert));
        labels.extend(c.cert.labels.iter().map(|(key, value)| {
            vec![
                id(c.cert.id).into(),
                key.as_str().into(),
                value.as_str().into(),
            ]
        }));
    }
    // The rows go in as one script where the backend runs one (a failure
    // of any sends the batch through `create_one` all the same).
    let mut writes: Vec<Sql> = [
        Sql::insert(IDEMPOTENCY_INSERT, idempotency),
        Sql::insert(CERTIFICATE_INSERT, certificates),
        Sql::insert(VERSION_INSERT, versions),
        Sql::insert(NAMES_INSERT, names),
        Sql::insert(LABELS_INSERT, labels),
    ]
    .into_iter()
    .flatten()
    .collect();
    let blobs: Vec<&(String, Bytes)> = batch.iter().flat_map(|c| &c.blobs).collect();
    writes.extend(upsert_blobs(&blobs)?);
    let audits: Vec<&AuditEvent> = batch.iter().map(|c| &c.audit).collect();
    let announcements = batch.iter().filter_map(|c| c.announce.as_ref());
    let mut tx = pool.begin_with(B::BEGIN_WRITE).await.map_err(map)?;
    writes.extend(announcement_writes::<B>(&mut tx, announcements).await?);
    if !B::SCRIPTS {
        // Inserts into distinct tables, none reading another's rows: one
        // statement instead of a round trip each (five to eight a batch).
        writes = Sql::together(writes).into_iter().collect();
    }
    write_audited::<B>(&mut tx, writes, &audits).await?;
    tx.commit().await.map_err(map)
}

/// Runs `writes` and links `audits` in the transaction `tx`: the links in
/// the same script where the backend allows ([`audit_script`]).
async fn write_audited<B: Backend>(
    tx: &mut B::Connection,
    mut writes: Vec<Sql>,
    audits: &[&AuditEvent],
) -> DomainResult<()> {
    match audit_script::<B>(&mut *tx, audits).await? {
        Some(links) => {
            writes.extend(links);
            execute_all::<B>(tx, writes).await
        }
        None => {
            execute_all::<B>(&mut *tx, writes).await?;
            insert_audits::<B>(tx, audits).await
        }
    }
}

/// A new version waiting for its group commit: what
/// [`MetadataStore::add_version`] was given.
pub(crate) struct NewVersion {
    cert: Certificate,
    new: CertificateVersion,
    audit: AuditEvent,
    idempotency: Option<IdempotencyRecord>,
    /// The version's blobs, when they are rows of this database.
    blobs: Vec<(String, Bytes)>,
    /// The notification announcing it ([`VersionCommit::announce`]).
    announce: Option<Notification>,
    /// The job delivery it completes ([`VersionCommit::completes`]).
    completes: Option<JobDelivery>,
}

impl NewVersion {
    fn of(commit: VersionCommit<'_>) -> Self {
        Self {
            cert: commit.cert.clone(),
            new: commit.new.clone(),
            audit: commit.audit.clone(),
            idempotency: commit.idempotency.cloned(),
            blobs: commit.blobs,
            announce: commit.announce.cloned(),
            completes: commit.completes.cloned(),
        }
    }
}

/// Commits a batch of new versions (renewals): each one's statements in one
/// shared transaction; should any fail, each in a transaction of its own, so
/// each gets the answer it would have had alone. Two versions of one
/// certificate in a batch see each other as they would one after the other.
pub(crate) async fn commit_new_versions<B: Backend>(
    pool: Pool<B>,
    batch: Vec<NewVersion>,
) -> Vec<DomainResult<VersionCommitted>> {
    let pool = &pool;
    together_or_alone(
        "new versions",
        &batch,
        |all| add_versions_together::<B>(pool, all),
        |v| async move {
            let mut tx = pool.begin_with(B::BEGIN_WRITE).await.map_err(map)?;
            add_version_in::<B>(&mut *tx, &v.cert, &v.new, &v.audit, v.idempotency.as_ref())
                .await?;
            write_blobs_and_announcement::<B>(&mut tx, &v.blobs, v.announce.as_ref()).await?;
            let committed = complete_jobs_in::<B>(&mut tx, std::slice::from_ref(v)).await?;
            tx.commit().await.map_err(map)?;
            Ok(committed.into_iter().next().unwrap_or_default())
        },
    )
    .await
}

/// Acknowledges, in the write transaction `tx`, the job deliveries that
/// `batch`'s versions complete (of distinct jobs: a batch holds one version
/// a certificate), each only if its lease is still its own.
async fn complete_jobs_in<B: Backend>(
    tx: &mut B::Connection,
    batch: &[NewVersion],
) -> DomainResult<Vec<VersionCommitted>> {
    let deliveries = batch.iter().filter_map(|v| v.completes.as_ref());
    let Some(now) = batch.iter().map(|v| v.cert.updated_at).max() else {
        return Ok(Vec::new());
    };
    let done = if deliveries.clone().next().is_some() {
        completed(&fetch_all::<B>(tx, complete_jobs_sql(deliveries, now)).await?)?
    } else {
        HashSet::new()
    };
    Ok(batch
        .iter()
        .map(|v| VersionCommitted {
            completed: v
                .completes
                .as_ref()
                .is_some_and(|d| done.contains(&id(d.job.id))),
        })
        .collect())
}

/// Every new version of `batch` in one transaction: a statement a table
/// whatever the batch's size, where [`add_version_in`] takes about ten a
/// version. A batch this cannot take as a whole (two versions of one
/// certificate, a version that is not its certificate's next, a certificate
/// or issuer gone, a key or name taken) is refused, and goes through
/// [`add_version_in`] one version at a time for each version's own answer.
async fn add_versions_together<B: Backend>(
    pool: &Pool<B>,
    batch: &[NewVersion],
) -> DomainResult<Vec<VersionCommitted>> {
    let rows = VersionRows::of(batch)?;
    let ids = || rows.ids.iter().map(|i| Param::from(i.clone()));
    let mut tx = pool.begin_with(B::BEGIN_WRITE).await.map_err(map)?;
    // Locked in one order, so two writers' batches cannot deadlock.
    let mut sql = Sql::new("SELECT id FROM certificates WHERE id IN ");
    sql.push_list(ids()).push(" ORDER BY id");
    sql.push(B::FOR_UPDATE);
    if fetch_all::<B>(&mut tx, sql).await?.len() != rows.ids.len() {
        return Err(DomainError::NotFound("a certificate of the batch".into()));
    }
    let mut sql = Sql::new(
        "SELECT certificate_id, MAX(version) AS latest FROM certificate_versions \
         WHERE certificate_id IN ",
    );
    sql.push_list(ids()).push(" GROUP BY certificate_id");
    let mut latest = HashMap::new();
    for row in fetch_all::<B>(&mut tx, sql).await? {
        latest.insert(row.text("certificate_id")?, row.int("latest")?);
    }
    for v in batch {
        if latest.get(&id(v.cert.id)).copied().unwrap_or(0) + 1 != i64::from(v.new.version) {
            return Err(DomainError::Conflict(format!(
                "version {} is not the next of certificate {}",
                v.new.version, v.cert.id
            )));
        }
    }
    let mut sql = Sql::new("SELECT id FROM issuers WHERE id IN ");
    sql.push_list(rows.issuers.iter().map(|i| Param::from(i.clone())));
    if fetch_all::<B>(&mut tx, sql).await?.len() != rows.issuers.len() {
        return Err(DomainError::NotFound("an issuer of the batch".into()));
    }
    // The writes go in as one script where the backend runs one (a failure
    // of any sends the batch through `add_version_in` all the same).
    let mut writes: Vec<Sql> = Sql::insert(IDEMPOTENCY_INSERT, rows.idempotency)
        .into_iter()
        .collect();
    let mut sql = Sql::new("UPDATE certificate_versions SET status = $1 WHERE status = $2");
    sql = sql
        .bind(VersionStatus::Superseded.as_str())
        .bind(VersionStatus::Current.as_str());
    sql.push(" AND certificate_id IN ").push_list(ids());
    writes.push(sql);
    writes.extend(Sql::insert(VERSION_INSERT, rows.versions));
    let mut sql = Sql::new(
        "WITH v (id, current_version, not_after, renew_after, status, updated_at, names) AS (",
    );
    sql.push_values(rows.certificates);
    sql.push(
        ") UPDATE certificates SET current_version = v.current_version, \
         not_after = v.not_after, renew_after = v.renew_after, status = v.status, \
         updated_at = v.updated_at, names = v.names FROM v WHERE certificates.id = v.id",
    );
    writes.push(sql);
    let mut sql = Sql::new("DELETE FROM certificate_names WHERE certificate_id IN ");
    sql.push_list(ids());
    writes.push(sql);
    writes.extend(Sql::insert(NAMES_INSERT, rows.names));
    let blobs: Vec<&(String, Bytes)> = batch.iter().flat_map(|v| &v.blobs).collect();
    writes.extend(upsert_blobs(&blobs)?);
    let announcements = batch.iter().filter_map(|v| v.announce.as_ref());
    writes.extend(announcement_writes::<B>(&mut tx, announcements).await?);
    let audits: Vec<&AuditEvent> = batch.iter().map(|v| &v.audit).collect();
    write_audited::<B>(&mut tx, writes, &audits).await?;
    let committed = complete_jobs_in::<B>(&mut tx, batch).await?;
    tx.commit().await.map_err(map)?;
    Ok(committed)
}

/// A batch of new versions as the rows [`add_versions_together`] writes.
struct VersionRows {
    /// The certificates' ids, one each.
    ids: Vec<String>,
    /// The versions' issuers, one each.
    issuers: Vec<String>,
    idempotency: Vec<Vec<Param>>,
    versions: Vec<Vec<Param>>,
    /// Each certificate's new state: id, then the columns a version changes.
    certificates: Vec<Vec<Param>>,
    names: Vec<Vec<Param>>,
}

impl VersionRows {
    fn of(batch: &[NewVersion]) -> DomainResult<Self> {
        let mut rows = Self {
            ids: Vec::with_capacity(batch.len()),
            issuers: Vec::new(),
            idempotency: Vec::new(),
            versions: Vec::with_capacity(batch.len()),
            certificates: Vec::with_capacity(batch.len()),
            names: Vec::new(),
        };
        for v in batch {
            let (cert, new) = (&v.cert, &v.new);
            check_new_version(cert, new, v.idempotency.as_ref())?;
            if rows.ids.contains(&id(cert.id)) {
                return Err(DomainError::Conflict(format!(
                    "two versions of certificate {} in one batch",
                    cert.id
                )));
            }
            rows.ids.push(id(cert.id));
            if !rows.issuers.contains(&id(new.issuer_id)) {
                rows.issuers.push(id(new.issuer_id));
            }
            rows.idempotency
                .extend(v.idempotency.as_ref().map(idempotency_row));
            rows.versions.push(version_row(new)?);
            rows.certificates.push(vec![
                id(cert.id).into(),
                i64::from(cert.current_version).into(),
                secs(cert.not_after).into(),
                secs(cert.renew_after).into(),
                cert.status.as_str().into(),
                secs(cert.updated_at).into(),
                codec::names_json(&cert.names)?.into(),
            ]);
            rows.names.extend(name_rows(cert));
        }
        Ok(rows)
    }
}

/// Refuses a version given for another certificate, or an idempotency
/// record given for another version.
fn check_new_version(
    cert: &Certificate,
    new: &CertificateVersion,
    idempotency: Option<&IdempotencyRecord>,
) -> DomainResult<()> {
    if new.certificate_id != cert.id {
        return Err(DomainError::Internal(format!(
            "version of certificate {} given as a new version of certificate {}",
            new.certificate_id, cert.id
        )));
    }
    match idempotency {
        Some(r) if r.certificate_id != new.certificate_id || r.version != new.version => {
            Err(DomainError::Internal(format!(
                "idempotency record for version {} of certificate {} given with version {} of \
                 certificate {}",
                r.version, r.certificate_id, new.version, new.certificate_id
            )))
        }
        _ => Ok(()),
    }
}

/// Adds version `new` of `cert` in the write transaction `tx`: after the
/// current latest, superseding the current version, with the certificate's
/// new state, names and `audit`.
async fn add_version_in<B: Backend>(
    tx: &mut B::Connection,
    cert: &Certificate,
    new: &CertificateVersion,
    audit: &AuditEvent,
    idempotency: Option<&IdempotencyRecord>,
) -> DomainResult<()> {
    check_new_version(cert, new, idempotency)?;
    if let Some(record) = idempotency {
        insert_idempotency::<B>(&mut *tx, record, new).await?;
    }
    // Racing renewals queue up here, so the latest version read below is
    // the one the previous winner committed.
    if lock_certificate::<B>(&mut *tx, cert.id).await?.is_none() {
        return Err(DomainError::NotFound(format!("certificate {}", cert.id)));
    }
    let latest = fetch_optional::<B>(
        &mut *tx,
        Sql::new(
            "SELECT MAX(version) AS latest FROM certificate_versions WHERE certificate_id = $1",
        )
        .bind(id(cert.id)),
    )
    .await?
    .map(|row| row.opt_int("latest"))
    .transpose()?
    .flatten()
    .unwrap_or(0);
    if i64::from(new.version) != latest + 1 {
        return Err(DomainError::Conflict(format!(
            "certificate {} is at version {latest}; the next version must be {}, not {}",
            cert.id,
            latest + 1,
            new.version
        )));
    }
    ensure_issuer::<B>(&mut *tx, new.issuer_id).await?;
    execute::<B>(
        &mut *tx,
        Sql::new(
            "UPDATE certificate_versions SET status = $1 \
             WHERE certificate_id = $2 AND status = $3",
        )
        .bind(VersionStatus::Superseded.as_str())
        .bind(id(cert.id))
        .bind(VersionStatus::Current.as_str()),
    )
    .await?;
    insert_version::<B>(&mut *tx, new).await?;
    let sql = Sql::new(
        "UPDATE certificates SET current_version = $1, not_after = $2, renew_after = $3, \
         status = $4, updated_at = $5, names = $6 WHERE id = $7",
    )
    .bind(i64::from(cert.current_version))
    .bind(secs(cert.not_after))
    .bind(secs(cert.renew_after))
    .bind(cert.status.as_str())
    .bind(secs(cert.updated_at))
    .bind(codec::names_json(&cert.names)?)
    .bind(id(cert.id));
    B::execute(&mut *tx, sql).await.map_err(|e| {
        conflict(e, |v| {
            // Un-archiving through a new version can collide with a newer namesake.
            (v == Violation::Unique).then(|| {
                format!(
                    "a certificate named {} already exists in team {}",
                    cert.name, cert.team
                )
            })
        })
    })?;
    replace_names::<B>(&mut *tx, cert).await?;
    insert_audit::<B>(&mut *tx, audit).await
}

/// Inserts a new certificate with its first version, names, labels and
/// `idempotency` record (not its audit event) in the write transaction `conn`.
async fn insert_certificate<B: Backend>(
    conn: &mut B::Connection,
    cert: &Certificate,
    first: &CertificateVersion,
    idempotency: Option<&IdempotencyRecord>,
) -> DomainResult<()> {
    check_first_version(cert, first)?;
    if let Some(record) = idempotency {
        insert_idempotency::<B>(conn, record, first).await?;
    }
    // Checked first because the database may report the name index
    // instead when a duplicate row violates both.
    if exists::<B>(conn, "SELECT 1 FROM certificates WHERE id = $1", cert.id).await? {
        return Err(DomainError::Conflict(format!(
            "certificate {} already exists",
            cert.id
        )));
    }
    ensure_issuer::<B>(conn, cert.issuer_id).await?;
    if first.issuer_id != cert.issuer_id {
        ensure_issuer::<B>(conn, first.issuer_id).await?;
    }
    let mut sql = Sql::new(CERTIFICATE_INSERT);
    sql.push_values([certificate_row(cert)?]);
    B::execute(conn, sql).await.map_err(|e| {
        conflict(e, |v| {
            Some(match v {
                Violation::PrimaryKey => format!("certificate {} already exists", cert.id),
                Violation::Unique => format!(
                    "a certificate named {} already exists in team {}",
                    cert.name, cert.team
                ),
            })
        })
    })?;
    insert_version::<B>(conn, first).await?;
    replace_names::<B>(conn, cert).await?;
    for (key, value) in &cert.labels {
        let sql = Sql::new(
            "INSERT INTO certificate_labels (certificate_id, key, value) VALUES ($1, $2, $3)",
        )
        .bind(id(cert.id))
        .bind(key.as_str())
        .bind(value.as_str());
        execute::<B>(conn, sql).await?;
    }
    Ok(())
}

#[async_trait]
impl<B: Backend> MetadataStore for SqlStore<B> {
    async fn ping(&self) -> DomainResult<()> {
        self.fetch_optional(Sql::new("SELECT 1 AS one")).await?;
        Ok(())
    }

    async fn insert_issuer(&self, issuer: &Issuer, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        insert_issuer_row::<B>(&mut tx, issuer).await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn list_issuers(&self) -> DomainResult<Vec<Issuer>> {
        let rows = self
            .fetch_all(Sql::new(concat!(
                "SELECT ",
                issuer_columns!(),
                " FROM issuers ORDER BY is_default DESC, created_at, name, id"
            )))
            .await?;
        rows.iter().map(codec::issuer).collect()
    }

    async fn get_issuer(&self, issuer_id: Uuid) -> DomainResult<Option<Issuer>> {
        let row = self
            .fetch_optional(
                Sql::new(concat!(
                    "SELECT ",
                    issuer_columns!(),
                    " FROM issuers WHERE id = $1"
                ))
                .bind(id(issuer_id)),
            )
            .await?;
        row.as_ref().map(codec::issuer).transpose()
    }

    async fn set_default_issuer(&self, issuer_id: Uuid, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        if let Some(lock) = B::LOCK_ISSUERS {
            execute::<B>(&mut tx, Sql::new(lock)).await?;
        }
        execute::<B>(
            &mut tx,
            Sql::new("UPDATE issuers SET is_default = FALSE WHERE is_default = TRUE AND id <> $1")
                .bind(id(issuer_id)),
        )
        .await?;
        let updated = fetch_optional::<B>(
            &mut tx,
            Sql::new("UPDATE issuers SET is_default = TRUE WHERE id = $1 RETURNING id")
                .bind(id(issuer_id)),
        )
        .await?;
        if updated.is_none() {
            return Err(DomainError::NotFound(format!("issuer {issuer_id}")));
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn create_certificate(
        &self,
        cert: &Certificate,
        first: &CertificateVersion,
        audit: &AuditEvent,
        idempotency: Option<&IdempotencyRecord>,
    ) -> DomainResult<()> {
        self.create_first_version(VersionCommit::new(cert, first, audit, idempotency))
            .await
    }

    async fn create_first_version(&self, commit: VersionCommit<'_>) -> DomainResult<()> {
        if commit.completes.is_some() {
            return Err(DomainError::Internal(
                "a first version completes no renewal job".into(),
            ));
        }
        self.creations
            .submit(Creation {
                cert: commit.cert.clone(),
                first: commit.new.clone(),
                audit: commit.audit.clone(),
                idempotency: commit.idempotency.cloned(),
                blobs: commit.blobs,
                announce: commit.announce.cloned(),
            })
            .await
    }

    async fn create_certificate_with_issuer(
        &self,
        issuer: &Issuer,
        issuer_audit: &AuditEvent,
        cert: &Certificate,
        first: &CertificateVersion,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        insert_issuer_row::<B>(&mut tx, issuer).await?;
        insert_audit::<B>(&mut tx, issuer_audit).await?;
        insert_certificate::<B>(&mut tx, cert, first, None).await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn commit_version(&self, commit: VersionCommit<'_>) -> DomainResult<VersionCommitted> {
        self.new_versions.submit(NewVersion::of(commit)).await
    }

    async fn revoke_version(
        &self,
        certificate_id: Uuid,
        version: u32,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let not_found =
            || DomainError::NotFound(format!("version {version} of certificate {certificate_id}"));
        let mut tx = self.begin_write().await?;
        let (certificate_status, current_version) = lock_certificate::<B>(&mut tx, certificate_id)
            .await?
            .ok_or_else(not_found)?;
        let version_status = fetch_optional::<B>(
            &mut tx,
            Sql::new(
                "SELECT status FROM certificate_versions WHERE certificate_id = $1 AND version = $2",
            )
            .bind(id(certificate_id))
            .bind(i64::from(version)),
        )
        .await?
        .ok_or_else(not_found)?
        .text("status")?;
        if version_status == VersionStatus::Revoked.as_str() {
            return Err(DomainError::Conflict(format!(
                "version {version} of certificate {certificate_id} is already revoked"
            )));
        }
        execute::<B>(
            &mut tx,
            Sql::new(
                "UPDATE certificate_versions SET status = $1, revoked_at = $2, \
                 revocation_reason = $3 WHERE certificate_id = $4 AND version = $5",
            )
            .bind(VersionStatus::Revoked.as_str())
            .bind(secs(at))
            .bind(reason.as_str())
            .bind(id(certificate_id))
            .bind(i64::from(version)),
        )
        .await?;
        // An archived certificate stays archived: it is retired whatever happens
        // to its versions, and reviving it would re-claim its name.
        let becomes_revoked = current_version == i64::from(version)
            && certificate_status != CertificateStatus::Archived.as_str();
        let status = if becomes_revoked {
            CertificateStatus::Revoked.as_str()
        } else {
            certificate_status.as_str()
        };
        execute::<B>(
            &mut tx,
            Sql::new("UPDATE certificates SET status = $1, updated_at = $2 WHERE id = $3")
                .bind(status)
                .bind(secs(at))
                .bind(id(certificate_id)),
        )
        .await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn manage_certificate(&self, cert: &Certificate, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        if lock_certificate::<B>(&mut tx, cert.id).await?.is_none() {
            return Err(DomainError::NotFound(format!("certificate {}", cert.id)));
        }
        ensure_issuer::<B>(&mut tx, cert.issuer_id).await?;
        // The `managed = FALSE` guard makes a second take-over (or a racing
        // one, queued behind the row lock) change nothing.
        let updated = fetch_optional::<B>(
            &mut tx,
            Sql::new(
                "UPDATE certificates SET managed = TRUE, issuer_id = $1, renew_after = $2, \
                 updated_at = $3 WHERE id = $4 AND managed = FALSE RETURNING id",
            )
            .bind(id(cert.issuer_id))
            .bind(secs(cert.renew_after))
            .bind(secs(cert.updated_at))
            .bind(id(cert.id)),
        )
        .await?;
        if updated.is_none() {
            return Err(DomainError::Conflict(format!(
                "certificate {} is already managed by certflow",
                cert.id
            )));
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn archive_certificate(
        &self,
        certificate_id: Uuid,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        match lock_certificate::<B>(&mut tx, certificate_id).await? {
            None => {
                return Err(DomainError::NotFound(format!(
                    "certificate {certificate_id}"
                )));
            }
            Some((status, _)) if status == CertificateStatus::Archived.as_str() => {
                return Err(DomainError::Conflict(format!(
                    "certificate {certificate_id} is already archived"
                )));
            }
            Some(_) => {}
        }
        execute::<B>(
            &mut tx,
            Sql::new("UPDATE certificates SET status = $1, updated_at = $2 WHERE id = $3")
                .bind(CertificateStatus::Archived.as_str())
                .bind(secs(at))
                .bind(id(certificate_id)),
        )
        .await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn get_certificate(&self, certificate_id: Uuid) -> DomainResult<Option<Certificate>> {
        // One statement, so one snapshot without a transaction around it.
        let mut sql = Sql::new(concat!("SELECT ", certificate_columns!(), ", "));
        sql.push(B::LABELS_JSON)
            .push(" AS labels FROM certificates c WHERE c.id = ")
            .push_bind(id(certificate_id));
        let Some(row) = self.fetch_optional(sql).await? else {
            return Ok(None);
        };
        let labels = codec::get_json(&row, "labels")?;
        codec::certificate(&row, labels).map(Some)
    }

    async fn list_certificates(&self, q: &CertificateQuery) -> DomainResult<Page<Certificate>> {
        let (limit, offset) = page_bounds(q.limit, q.offset);
        let column = match q.sort {
            SortKey::Name => "c.name",
            SortKey::NotAfter => "c.not_after",
            SortKey::CreatedAt => "c.created_at",
        };
        let direction = if q.descending { " DESC" } else { " ASC" };

        // One snapshot for the count, the page and its labels.
        let mut tx = self.begin_read().await?;
        let mut count = Sql::new("SELECT COUNT(*) AS n FROM certificates c");
        push_certificate_filters(&mut count, q);
        let matching = total(fetch_optional::<B>(&mut tx, count).await?)?;

        let mut select = Sql::new(concat!(
            "SELECT ",
            certificate_columns!(),
            " FROM certificates c"
        ));
        push_certificate_filters(&mut select, q);
        // id breaks ties so that pages neither repeat nor skip rows.
        select
            .push(" ORDER BY ")
            .push(column)
            .push(direction)
            .push(", c.id")
            .push(direction)
            .push(" LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = fetch_all::<B>(&mut tx, select).await?;
        let items = certificates_with_labels::<B>(&mut tx, &rows).await?;
        tx.commit().await.map_err(map)?;
        Ok(Page {
            items,
            total: matching,
        })
    }

    async fn list_versions(&self, certificate_id: Uuid) -> DomainResult<Vec<CertificateVersion>> {
        let rows = self
            .fetch_all(
                Sql::new(concat!(
                    "SELECT ",
                    version_columns!(),
                    " FROM certificate_versions WHERE certificate_id = $1 ORDER BY version DESC"
                ))
                .bind(id(certificate_id)),
            )
            .await?;
        rows.iter().map(codec::version).collect()
    }

    async fn renewal_versions(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<CertificateVersion>> {
        let rows = self
            .fetch_all(
                Sql::new(concat!(
                    "SELECT ",
                    version_columns!(),
                    " FROM certificate_versions WHERE certificate_id = $1 AND (version = \
                     (SELECT MAX(version) FROM certificate_versions WHERE certificate_id = $1) \
                     OR revocation_reason = $2) ORDER BY version DESC"
                ))
                .bind(id(certificate_id))
                .bind(RevocationReason::KeyCompromise.as_str()),
            )
            .await?;
        rows.iter().map(codec::version).collect()
    }

    async fn list_revoked(&self, issuer_id: Uuid) -> DomainResult<Vec<CertificateVersion>> {
        let rows = self
            .fetch_all(
                Sql::new(concat!(
                    "SELECT ",
                    version_columns!(),
                    " FROM certificate_versions WHERE issuer_id = $1 AND status = $2 \
                     ORDER BY revoked_at, certificate_id, version"
                ))
                .bind(id(issuer_id))
                .bind(VersionStatus::Revoked.as_str()),
            )
            .await?;
        rows.iter().map(codec::version).collect()
    }

    async fn due_for_renewal(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<Certificate>> {
        // One snapshot for the rows and their labels.
        let mut tx = self.begin_read().await?;
        let rows = fetch_all::<B>(&mut tx, due_query(now, limit)).await?;
        let due = certificates_with_labels::<B>(&mut tx, &rows).await?;
        tx.commit().await.map_err(map)?;
        Ok(due)
    }

    async fn get_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> DomainResult<Option<IdempotencyRecord>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                idempotency_columns!(),
                " FROM idempotency_keys WHERE scope = $1 AND key = $2"
            ))
            .bind(scope)
            .bind(key),
        )
        .await?
        .as_ref()
        .map(codec::idempotency)
        .transpose()
    }

    async fn purge_idempotency_keys(&self, before: OffsetDateTime) -> DomainResult<u64> {
        // RETURNING rather than a row count, which `Exec` does not expose.
        let purged = self
            .fetch_all(
                Sql::new("DELETE FROM idempotency_keys WHERE created_at < $1 RETURNING 1 AS one")
                    .bind(codec::ceil_secs(before)),
            )
            .await?;
        Ok(u64::try_from(purged.len()).unwrap_or(u64::MAX))
    }

    async fn append_audit(&self, event: &AuditEvent) -> DomainResult<()> {
        // Linking holds its chain to the commit (an advisory lock on PostgreSQL,
        // the write lock on SQLite), so even a lone event needs a transaction:
        // concurrent ones share it, one chain and one INSERT for the lot.
        self.audits.submit(event.clone()).await
    }

    async fn list_audit(&self, q: &AuditQuery) -> DomainResult<Page<AuditEvent>> {
        let (limit, offset) = page_bounds(q.limit, q.offset);
        let mut tx = self.begin_read().await?;
        let mut count = Sql::new("SELECT COUNT(*) AS n FROM audit_events");
        push_audit_filters(&mut count, q);
        let matching = total(fetch_optional::<B>(&mut tx, count).await?)?;
        let mut select = Sql::new(concat!("SELECT ", audit_columns!(), " FROM audit_events"));
        push_audit_filters(&mut select, q);
        // UUIDv7 text order is creation order.
        select
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = fetch_all::<B>(&mut tx, select).await?;
        tx.commit().await.map_err(map)?;
        Ok(Page {
            items: rows.iter().map(codec::audit).collect::<DomainResult<_>>()?,
            total: matching,
        })
    }

    async fn verify_audit_chain(&self) -> DomainResult<AuditChainReport> {
        self.verify_chain().await
    }

    async fn certificate_counts(
        &self,
        teams: Option<&[String]>,
        edges: &[OffsetDateTime],
    ) -> DomainResult<certflow_core::model::CertificateCounts> {
        let mut out = certflow_core::model::CertificateCounts {
            by_status: CertificateStatus::ALL
                .into_iter()
                .map(|st| (st, 0))
                .collect(),
            active_expiring_before: vec![0; edges.len()],
        };
        if teams.is_some_and(<[String]>::is_empty) {
            return Ok(out);
        }
        // One row per status; the CASE sums are read from the active row only.
        let mut sql = Sql::new("SELECT c.status AS status, COUNT(*) AS n");
        for (i, edge) in edges.iter().enumerate() {
            sql.push(" , SUM(CASE WHEN c.not_after < ")
                .push_bind(codec::ceil_secs(*edge))
                .push(&format!(" THEN 1 ELSE 0 END) AS e{i}"));
        }
        sql.push(" FROM certificates c");
        if let Some(teams) = teams {
            sql.push(" WHERE c.team IN (");
            for (i, team) in teams.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push_bind(team.as_str());
            }
            sql.push(")");
        }
        sql.push(" GROUP BY c.status");
        for row in self.fetch_all(sql).await? {
            let status = row.text("status")?;
            let Some(slot) = out
                .by_status
                .iter_mut()
                .find(|(st, _)| st.as_str() == status)
            else {
                continue;
            };
            slot.1 = u64::try_from(row.int("n")?).unwrap_or(0);
            if slot.0 == CertificateStatus::Active {
                for (i, n) in out.active_expiring_before.iter_mut().enumerate() {
                    *n = u64::try_from(row.int(&format!("e{i}"))?).unwrap_or(0);
                }
            }
        }
        Ok(out)
    }

    async fn certificate_stats(
        &self,
        expiring_before: OffsetDateTime,
    ) -> DomainResult<CertificateStats> {
        // One snapshot for the three numbers; each is one grouped statement
        // (three rows, one row per team, one count), never a row per certificate.
        let mut tx = self.begin_read().await?;
        let by_status = fetch_all::<B>(
            &mut tx,
            Sql::new("SELECT status, COUNT(*) AS n FROM certificates GROUP BY status"),
        )
        .await?;
        let by_team = fetch_all::<B>(
            &mut tx,
            Sql::new(
                "SELECT team, MIN(not_after) AS earliest FROM certificates \
                 WHERE status = $1 GROUP BY team ORDER BY team",
            )
            .bind(CertificateStatus::Active.as_str()),
        )
        .await?;
        // `not_after` is the current version's; the NOT EXISTS probes the
        // (certificate_id, version) unique key of renewal_jobs per row.
        let unrenewed = fetch_optional::<B>(
            &mut tx,
            Sql::new(
                "SELECT COUNT(*) AS n FROM certificates c \
                 WHERE c.status = $1 AND c.not_after < $2 \
                 AND NOT EXISTS (SELECT 1 FROM renewal_jobs j \
                 WHERE j.certificate_id = c.id AND j.version = c.current_version \
                 AND j.state IN ('queued', 'running'))",
            )
            .bind(CertificateStatus::Active.as_str())
            .bind(codec::ceil_secs(expiring_before)),
        )
        .await?;
        tx.commit().await.map_err(map)?;
        let mut counts = HashMap::new();
        for row in by_status {
            counts.insert(row.text("status")?, row.int("n")?);
        }
        let mut stats = CertificateStats {
            by_status: CertificateStatus::ALL
                .into_iter()
                .map(|st| {
                    let n = counts.get(st.as_str()).copied().unwrap_or(0);
                    (st, u64::try_from(n).unwrap_or(0))
                })
                .collect(),
            expiring_without_renewal: total(unrenewed)?,
            ..Default::default()
        };
        for row in by_team {
            let earliest = row.int("earliest")?;
            let at = OffsetDateTime::from_unix_timestamp(earliest)
                .map_err(|e| crate::error::corrupt("not_after", e))?;
            stats.earliest_expiry_by_team.push((row.text("team")?, at));
        }
        Ok(stats)
    }

    async fn get_setting(&self, key: &str) -> DomainResult<Option<String>> {
        self.fetch_optional(Sql::new("SELECT value FROM settings WHERE key = $1").bind(key))
            .await?
            .map(|row| row.text("value"))
            .transpose()
    }

    async fn put_setting(&self, key: &str, value: &str) -> DomainResult<()> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        execute::<B>(
            &mut conn,
            Sql::new(
                "INSERT INTO settings (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(key)
            .bind(value),
        )
        .await
    }

    async fn version_by_serial(
        &self,
        issuer_id: Uuid,
        serial_hex: &str,
    ) -> DomainResult<Option<CertificateVersion>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                version_columns!(),
                " FROM certificate_versions WHERE issuer_id = $1 AND serial = $2"
            ))
            .bind(id(issuer_id))
            .bind(serial_hex),
        )
        .await?
        .map(|row| codec::version(&row))
        .transpose()
    }

    async fn increment_setting(&self, key: &str, initial: u64) -> DomainResult<u64> {
        // One statement: concurrent callers (other replicas) each get their own value.
        let rows = self
            .fetch_all(
                Sql::new(
                    "INSERT INTO settings (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE \
                     SET value = CAST(CAST(settings.value AS BIGINT) + 1 AS TEXT) \
                     RETURNING value",
                )
                .bind(key)
                .bind(initial.to_string()),
            )
            .await?;
        let value = rows
            .first()
            .map(|r| r.text("value"))
            .transpose()?
            .ok_or_else(|| DomainError::Internal(format!("setting {key} not returned")))?;
        value
            .parse()
            .map_err(|e| crate::error::corrupt("settings.value", e))
    }

    async fn raise_setting(&self, key: &str, value: u64) -> DomainResult<bool> {
        let rows = self
            .fetch_all(
                Sql::new(
                    "INSERT INTO settings (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value \
                     WHERE CAST(settings.value AS BIGINT) < CAST(excluded.value AS BIGINT) \
                     RETURNING key",
                )
                .bind(key)
                .bind(value.to_string()),
            )
            .await?;
        Ok(!rows.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_limit_clamps() {
        assert_eq!(due_limit(0), 1);
        assert_eq!(due_limit(250), 250);
        assert_eq!(due_limit(1000), 1000);
        assert_eq!(due_limit(u32::MAX), 1000);
    }
}
