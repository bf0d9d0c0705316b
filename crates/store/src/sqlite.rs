//! [`MetadataStore`] over SQLite.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use certflow_core::error::DomainResult;
use certflow_core::model::{
    AuditEvent, AuditQuery, Certificate, CertificateQuery, CertificateStatus, CertificateVersion,
    Issuer, Labels, Page, RevocationReason, SortKey, VersionStatus,
};
use certflow_core::ports::MetadataStore;
use certflow_core::{DomainError, SubjectName};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, SqlSafeStr, Sqlite};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::codec::{
    self, audit_columns, certificate_columns, fold, id, issuer_columns, secs, version_columns,
};
use crate::error::{Violation, conflict, map};

/// Migrations embedded in the binary, oldest first: `(version, description, sql)`.
/// Listed by hand so the store needs no proc-macro build of sqlx; a unit test
/// checks the list against `migrations/sqlite/`.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
)];

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of a file-backed pool: SQLite has one writer, WAL lets readers run alongside.
const MAX_CONNECTIONS: u32 = 4;

/// Largest page a listing returns.
const MAX_PAGE: u32 = 500;

/// Write transactions take the write lock up front: a deferred transaction that
/// reads and then writes can fail with `SQLITE_BUSY` without waiting.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The metadata store on a SQLite database (a file, or memory for tests).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and migrates it.
    pub async fn open(path: &Path) -> DomainResult<Self> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| DomainError::Unavailable {
            backend: "database",
            reason: format!("{what} {}: {e}", path.display()),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Blocking, but only once at startup and before any connection exists.
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable("cannot create the directory of", &e))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|e| unavailable("cannot open", &e))?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| unavailable("cannot migrate", &e))?;
        Ok(Self { pool })
    }

    /// A fresh, migrated in-memory database, for tests.
    pub async fn open_memory() -> DomainResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(":memory:")
            .in_memory(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // Each connection to `:memory:` is its own database, so the pool keeps
        // exactly one connection and never retires it.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(map)?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| DomainError::Unavailable {
                backend: "database",
                reason: format!("cannot migrate the in-memory database: {e}"),
            })?;
        Ok(Self { pool })
    }

    /// Closes every connection (checkpointing the WAL); later calls fail as unavailable.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin_write(&self) -> DomainResult<sqlx::Transaction<'static, Sqlite>> {
        self.pool.begin_with(BEGIN_WRITE).await.map_err(map)
    }

    async fn begin_read(&self) -> DomainResult<sqlx::Transaction<'static, Sqlite>> {
        self.pool.begin().await.map_err(map)
    }
}

async fn insert_audit(conn: &mut SqliteConnection, event: &AuditEvent) -> DomainResult<()> {
    let details = serde_json::to_string(&event.details)
        .map_err(|e| DomainError::Internal(format!("encoding audit details: {e}")))?;
    sqlx::query(concat!(
        "INSERT INTO audit_events (",
        audit_columns!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(id(event.id))
    .bind(secs(event.at))
    .bind(event.actor.subject.as_str())
    .bind(event.actor.source.as_deref())
    .bind(event.action.as_str())
    .bind(event.target.as_str())
    .bind(event.outcome.as_str())
    .bind(details)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        conflict(e, |v| {
            (v == Violation::PrimaryKey).then(|| format!("audit event {} already exists", event.id))
        })
    })?;
    Ok(())
}

/// Whether `sql`, a lookup by one id, finds a row.
async fn exists(conn: &mut SqliteConnection, sql: &'static str, key: Uuid) -> DomainResult<bool> {
    let found = sqlx::query(sql)
        .bind(id(key))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map)?;
    Ok(found.is_some())
}

async fn ensure_issuer(conn: &mut SqliteConnection, issuer_id: Uuid) -> DomainResult<()> {
    if exists(conn, "SELECT 1 FROM issuers WHERE id = ?", issuer_id).await? {
        Ok(())
    } else {
        Err(DomainError::NotFound(format!("issuer {issuer_id}")))
    }
}

async fn insert_version(conn: &mut SqliteConnection, v: &CertificateVersion) -> DomainResult<()> {
    sqlx::query(concat!(
        "INSERT INTO certificate_versions (",
        version_columns!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(id(v.certificate_id))
    .bind(i64::from(v.version))
    .bind(v.serial.as_str())
    .bind(v.fingerprint_sha256.as_str())
    .bind(secs(v.not_before))
    .bind(secs(v.not_after))
    .bind(v.key_type.as_str())
    .bind(codec::names_json(&v.names)?)
    .bind(id(v.issuer_id))
    .bind(v.status.as_str())
    .bind(v.revoked_at.map(secs))
    .bind(v.revocation_reason.map(RevocationReason::as_str))
    .bind(v.cert_blob.as_str())
    .bind(v.key_blob.as_deref())
    .bind(secs(v.created_at))
    .execute(&mut *conn)
    .await
    .map_err(|e| {
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
    })?;
    Ok(())
}

/// Rewrites the searchable copy of a certificate's names.
async fn replace_names(
    conn: &mut SqliteConnection,
    certificate_id: Uuid,
    names: &[SubjectName],
) -> DomainResult<()> {
    sqlx::query("DELETE FROM certificate_names WHERE certificate_id = ?")
        .bind(id(certificate_id))
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    for name in names {
        // Two names may fold to the same text; one search row is enough.
        sqlx::query(
            "INSERT INTO certificate_names (certificate_id, name) VALUES (?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id(certificate_id))
        .bind(fold(&name.to_text()))
        .execute(&mut *conn)
        .await
        .map_err(map)?;
    }
    Ok(())
}

/// Labels of the given certificates, keyed by their id column text.
async fn load_labels(
    conn: &mut SqliteConnection,
    ids: &[String],
) -> DomainResult<HashMap<String, Labels>> {
    let mut out: HashMap<String, Labels> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT certificate_id, key, value FROM certificate_labels WHERE certificate_id IN (",
    );
    let mut list = qb.separated(", ");
    for certificate_id in ids {
        list.push_bind(certificate_id.as_str());
    }
    qb.push(")");
    let rows = qb.build().fetch_all(&mut *conn).await.map_err(map)?;
    for row in rows {
        let certificate_id: String = row.try_get("certificate_id").map_err(map)?;
        let key: String = row.try_get("key").map_err(map)?;
        let value: String = row.try_get("value").map_err(map)?;
        out.entry(certificate_id).or_default().insert(key, value);
    }
    Ok(out)
}

/// Appends the `WHERE` conditions of a certificate listing; user input only
/// ever goes into bind parameters.
fn push_certificate_filters(qb: &mut QueryBuilder<Sqlite>, q: &CertificateQuery) {
    qb.push(" WHERE 1 = 1");
    if let Some(term) = q.search.as_deref() {
        let pattern = codec::contains_pattern(&fold(term));
        qb.push(" AND (c.name_folded LIKE ")
            .push_bind(pattern.clone())
            .push(" ESCAPE '\\' OR EXISTS (SELECT 1 FROM certificate_names n WHERE n.certificate_id = c.id AND n.name LIKE ")
            .push_bind(pattern)
            .push(" ESCAPE '\\'))");
    }
    if let Some(team) = q.team.as_deref() {
        qb.push(" AND c.team = ").push_bind(team.to_owned());
    }
    for (key, value) in &q.labels {
        qb.push(
            " AND EXISTS (SELECT 1 FROM certificate_labels l WHERE l.certificate_id = c.id AND l.key = ",
        )
        .push_bind(key.clone())
        .push(" AND l.value = ")
        .push_bind(value.clone())
        .push(")");
    }
    if let Some(status) = q.status {
        qb.push(" AND c.status = ").push_bind(status.as_str());
    }
    if let Some(before) = q.expires_before {
        qb.push(" AND c.not_after < ")
            .push_bind(codec::ceil_secs(before));
    }
}

fn push_audit_filters(qb: &mut QueryBuilder<Sqlite>, q: &AuditQuery) {
    qb.push(" WHERE 1 = 1");
    if let Some(target) = q.target.as_deref() {
        qb.push(" AND target = ").push_bind(target.to_owned());
    }
    if let Some(prefix) = q.action_prefix.as_deref() {
        // substr, not LIKE: LIKE folds ASCII case in SQLite but not in PostgreSQL.
        let chars = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
        qb.push(" AND substr(action, 1, ")
            .push_bind(chars)
            .push(") = ")
            .push_bind(prefix.to_owned());
    }
    if let Some(subject) = q.subject.as_deref() {
        qb.push(" AND subject = ").push_bind(subject.to_owned());
    }
}

fn page_bounds(limit: u32, offset: u64) -> (i64, i64) {
    (
        i64::from(limit.clamp(1, MAX_PAGE)),
        i64::try_from(offset).unwrap_or(i64::MAX),
    )
}

fn total(count: i64) -> DomainResult<u64> {
    u64::try_from(count).map_err(|e| DomainError::Internal(format!("negative row count: {e}")))
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn ping(&self) -> DomainResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map)?;
        Ok(())
    }

    async fn insert_issuer(&self, issuer: &Issuer, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        // Checked first because SQLite may report another unique index when a
        // duplicate row violates several.
        if exists(&mut tx, "SELECT 1 FROM issuers WHERE id = ?", issuer.id).await? {
            return Err(DomainError::Conflict(format!(
                "issuer {} already exists",
                issuer.id
            )));
        }
        sqlx::query(concat!(
            "INSERT INTO issuers (",
            issuer_columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        .bind(secs(issuer.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
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
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn list_issuers(&self) -> DomainResult<Vec<Issuer>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            issuer_columns!(),
            " FROM issuers ORDER BY is_default DESC, created_at, name, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(map)?;
        rows.iter().map(codec::issuer).collect()
    }

    async fn get_issuer(&self, issuer_id: Uuid) -> DomainResult<Option<Issuer>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            issuer_columns!(),
            " FROM issuers WHERE id = ?"
        ))
        .bind(id(issuer_id))
        .fetch_optional(&self.pool)
        .await
        .map_err(map)?;
        row.as_ref().map(codec::issuer).transpose()
    }

    async fn set_default_issuer(&self, issuer_id: Uuid, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE issuers SET is_default = 0 WHERE is_default = 1 AND id <> ?")
            .bind(id(issuer_id))
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        let done = sqlx::query("UPDATE issuers SET is_default = 1 WHERE id = ?")
            .bind(id(issuer_id))
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        if done.rows_affected() == 0 {
            return Err(DomainError::NotFound(format!("issuer {issuer_id}")));
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn create_certificate(
        &self,
        cert: &Certificate,
        first: &CertificateVersion,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
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
        let mut tx = self.begin_write().await?;
        // Checked first because SQLite may report the name index instead when
        // a duplicate row violates both.
        if exists(&mut tx, "SELECT 1 FROM certificates WHERE id = ?", cert.id).await? {
            return Err(DomainError::Conflict(format!(
                "certificate {} already exists",
                cert.id
            )));
        }
        ensure_issuer(&mut tx, cert.issuer_id).await?;
        if first.issuer_id != cert.issuer_id {
            ensure_issuer(&mut tx, first.issuer_id).await?;
        }
        sqlx::query(concat!(
            "INSERT INTO certificates (",
            "id, name, name_folded, team, profile, key_type, key_source, names, validity_days, ",
            "issuer_id, renew_at_fraction, renew_before_days, status, current_version, ",
            "not_after, renew_after, created_at, updated_at",
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(id(cert.id))
        .bind(cert.name.as_str())
        .bind(fold(&cert.name))
        .bind(cert.team.as_str())
        .bind(cert.profile.as_str())
        .bind(cert.key_type.as_str())
        .bind(cert.key_source.as_str())
        .bind(codec::names_json(&cert.names)?)
        .bind(i64::from(cert.validity_days))
        .bind(id(cert.issuer_id))
        .bind(cert.renewal.renew_at_fraction)
        .bind(cert.renewal.renew_before_days.map(i64::from))
        .bind(cert.status.as_str())
        .bind(i64::from(cert.current_version))
        .bind(secs(cert.not_after))
        .bind(secs(cert.renew_after))
        .bind(secs(cert.created_at))
        .bind(secs(cert.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
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
        insert_version(&mut tx, first).await?;
        replace_names(&mut tx, cert.id, &cert.names).await?;
        for (key, value) in &cert.labels {
            sqlx::query(
                "INSERT INTO certificate_labels (certificate_id, key, value) VALUES (?, ?, ?)",
            )
            .bind(id(cert.id))
            .bind(key.as_str())
            .bind(value.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn add_version(
        &self,
        cert: &Certificate,
        new: &CertificateVersion,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        if new.certificate_id != cert.id {
            return Err(DomainError::Internal(format!(
                "version of certificate {} given as a new version of certificate {}",
                new.certificate_id, cert.id
            )));
        }
        let mut tx = self.begin_write().await?;
        if !exists(&mut tx, "SELECT 1 FROM certificates WHERE id = ?", cert.id).await? {
            return Err(DomainError::NotFound(format!("certificate {}", cert.id)));
        }
        let latest: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(version) FROM certificate_versions WHERE certificate_id = ?",
        )
        .bind(id(cert.id))
        .fetch_one(&mut *tx)
        .await
        .map_err(map)?;
        let latest = latest.unwrap_or(0);
        if i64::from(new.version) != latest + 1 {
            return Err(DomainError::Conflict(format!(
                "certificate {} is at version {latest}; the next version must be {}, not {}",
                cert.id,
                latest + 1,
                new.version
            )));
        }
        ensure_issuer(&mut tx, new.issuer_id).await?;
        sqlx::query(
            "UPDATE certificate_versions SET status = ? WHERE certificate_id = ? AND status = ?",
        )
        .bind(VersionStatus::Superseded.as_str())
        .bind(id(cert.id))
        .bind(VersionStatus::Current.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map)?;
        insert_version(&mut tx, new).await?;
        sqlx::query(
            "UPDATE certificates SET current_version = ?, not_after = ?, renew_after = ?, \
             status = ?, updated_at = ?, names = ? WHERE id = ?",
        )
        .bind(i64::from(cert.current_version))
        .bind(secs(cert.not_after))
        .bind(secs(cert.renew_after))
        .bind(cert.status.as_str())
        .bind(secs(cert.updated_at))
        .bind(codec::names_json(&cert.names)?)
        .bind(id(cert.id))
        .execute(&mut *tx)
        .await
        .map_err(|e| {
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
        replace_names(&mut tx, cert.id, &cert.names).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn revoke_version(
        &self,
        certificate_id: Uuid,
        version: u32,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT v.status AS version_status, c.current_version, c.status AS certificate_status \
             FROM certificate_versions v JOIN certificates c ON c.id = v.certificate_id \
             WHERE v.certificate_id = ? AND v.version = ?",
        )
        .bind(id(certificate_id))
        .bind(i64::from(version))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map)?
        .ok_or_else(|| {
            DomainError::NotFound(format!("version {version} of certificate {certificate_id}"))
        })?;
        let version_status: String = row.try_get("version_status").map_err(map)?;
        let current_version: i64 = row.try_get("current_version").map_err(map)?;
        let certificate_status: String = row.try_get("certificate_status").map_err(map)?;
        if version_status == VersionStatus::Revoked.as_str() {
            return Err(DomainError::Conflict(format!(
                "version {version} of certificate {certificate_id} is already revoked"
            )));
        }
        sqlx::query(
            "UPDATE certificate_versions SET status = ?, revoked_at = ?, revocation_reason = ? \
             WHERE certificate_id = ? AND version = ?",
        )
        .bind(VersionStatus::Revoked.as_str())
        .bind(secs(at))
        .bind(reason.as_str())
        .bind(id(certificate_id))
        .bind(i64::from(version))
        .execute(&mut *tx)
        .await
        .map_err(map)?;
        // An archived certificate stays archived: it is retired whatever happens
        // to its versions, and reviving it would re-claim its name.
        let becomes_revoked = current_version == i64::from(version)
            && certificate_status != CertificateStatus::Archived.as_str();
        let status = if becomes_revoked {
            CertificateStatus::Revoked.as_str()
        } else {
            certificate_status.as_str()
        };
        sqlx::query("UPDATE certificates SET status = ?, updated_at = ? WHERE id = ?")
            .bind(status.to_owned())
            .bind(secs(at))
            .bind(id(certificate_id))
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn archive_certificate(
        &self,
        certificate_id: Uuid,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM certificates WHERE id = ?")
                .bind(id(certificate_id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(map)?;
        match status.as_deref() {
            None => {
                return Err(DomainError::NotFound(format!(
                    "certificate {certificate_id}"
                )));
            }
            Some(s) if s == CertificateStatus::Archived.as_str() => {
                return Err(DomainError::Conflict(format!(
                    "certificate {certificate_id} is already archived"
                )));
            }
            Some(_) => {}
        }
        sqlx::query("UPDATE certificates SET status = ?, updated_at = ? WHERE id = ?")
            .bind(CertificateStatus::Archived.as_str())
            .bind(secs(at))
            .bind(id(certificate_id))
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn get_certificate(&self, certificate_id: Uuid) -> DomainResult<Option<Certificate>> {
        let mut tx = self.begin_read().await?;
        let key = id(certificate_id);
        let Some(row) = sqlx::query(concat!(
            "SELECT ",
            certificate_columns!(),
            " FROM certificates c WHERE c.id = ?"
        ))
        .bind(key.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map)?
        else {
            return Ok(None);
        };
        let mut labels = load_labels(&mut tx, std::slice::from_ref(&key)).await?;
        tx.commit().await.map_err(map)?;
        codec::certificate(&row, labels.remove(&key).unwrap_or_default()).map(Some)
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
        let mut count: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT COUNT(*) FROM certificates c");
        push_certificate_filters(&mut count, q);
        let matching: i64 = count
            .build_query_scalar()
            .fetch_one(&mut *tx)
            .await
            .map_err(map)?;

        let mut select: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
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
        let rows = select.build().fetch_all(&mut *tx).await.map_err(map)?;
        let ids = rows
            .iter()
            .map(|r| r.try_get::<String, _>("id").map_err(map))
            .collect::<DomainResult<Vec<_>>>()?;
        let mut labels = load_labels(&mut tx, &ids).await?;
        tx.commit().await.map_err(map)?;

        let items = rows
            .iter()
            .zip(&ids)
            .map(|(row, key)| codec::certificate(row, labels.remove(key).unwrap_or_default()))
            .collect::<DomainResult<Vec<_>>>()?;
        Ok(Page {
            items,
            total: total(matching)?,
        })
    }

    async fn list_versions(&self, certificate_id: Uuid) -> DomainResult<Vec<CertificateVersion>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            version_columns!(),
            " FROM certificate_versions WHERE certificate_id = ? ORDER BY version DESC"
        ))
        .bind(id(certificate_id))
        .fetch_all(&self.pool)
        .await
        .map_err(map)?;
        rows.iter().map(codec::version).collect()
    }

    async fn list_revoked(&self, issuer_id: Uuid) -> DomainResult<Vec<CertificateVersion>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            version_columns!(),
            " FROM certificate_versions WHERE issuer_id = ? AND status = ? \
             ORDER BY revoked_at, certificate_id, version"
        ))
        .bind(id(issuer_id))
        .bind(VersionStatus::Revoked.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(map)?;
        rows.iter().map(codec::version).collect()
    }

    async fn append_audit(&self, event: &AuditEvent) -> DomainResult<()> {
        let mut conn = self.pool.acquire().await.map_err(map)?;
        insert_audit(&mut conn, event).await
    }

    async fn list_audit(&self, q: &AuditQuery) -> DomainResult<Page<AuditEvent>> {
        let (limit, offset) = page_bounds(q.limit, q.offset);
        let mut tx = self.begin_read().await?;
        let mut count: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT COUNT(*) FROM audit_events");
        push_audit_filters(&mut count, q);
        let matching: i64 = count
            .build_query_scalar()
            .fetch_one(&mut *tx)
            .await
            .map_err(map)?;
        let mut select: QueryBuilder<Sqlite> =
            QueryBuilder::new(concat!("SELECT ", audit_columns!(), " FROM audit_events"));
        push_audit_filters(&mut select, q);
        // UUIDv7 text order is creation order.
        select
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = select.build().fetch_all(&mut *tx).await.map_err(map)?;
        tx.commit().await.map_err(map)?;
        Ok(Page {
            items: rows.iter().map(codec::audit).collect::<DomainResult<_>>()?,
            total: total(matching)?,
        })
    }

    async fn get_setting(&self, key: &str) -> DomainResult<Option<String>> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(map)
    }

    async fn put_setting(&self, key: &str, value: &str) -> DomainResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key.to_owned())
        .bind(value.to_owned())
        .execute(&self.pool)
        .await
        .map_err(map)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A migration file that is not registered in [`MIGRATIONS`] would silently never run.
    #[test]
    fn every_migration_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| {
                let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
                let (version, description) = stem.split_once('_').unwrap();
                (
                    version.parse().unwrap(),
                    description.replace('_', " "),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        let embedded: Vec<(i64, String, String)> = MIGRATIONS
            .iter()
            .map(|&(v, d, s)| (v, d.to_owned(), s.to_owned()))
            .collect();
        assert_eq!(embedded, files);
    }

    #[test]
    fn page_bounds_clamp() {
        assert_eq!(page_bounds(0, 0), (1, 0));
        assert_eq!(page_bounds(50, 7), (50, 7));
        assert_eq!(page_bounds(10_000, u64::MAX), (500, i64::MAX));
    }
}
