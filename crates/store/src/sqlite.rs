//! The store on SQLite ([`SqliteStore`] = `SqlStore<Sqlite>`): its [`Dialect`],
//! opening and migrating here; the statements, shared with PostgreSQL, in the
//! port modules ([`crate::certificates`] and its siblings).

use std::path::Path;
use std::time::Duration;

use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::audit::link_unchained;
use crate::error::map;
use crate::migrate::{Embedded, migrator};
use crate::query::Dialect;
use crate::queue::{DbQueueOptions, DbRenewalQueue};
use crate::store::SqlStore;

/// Migrations embedded in the binary, oldest first. Listed by hand so the
/// store needs no proc-macro build of sqlx; a unit test checks the list
/// against `migrations/sqlite/`.
const MIGRATIONS: &[Embedded] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "idempotency keys",
        include_str!("../migrations/sqlite/0002_idempotency_keys.sql"),
    ),
    (
        3,
        "renewal and notifications",
        include_str!("../migrations/sqlite/0003_renewal_and_notifications.sql"),
    ),
    (
        4,
        "audit chain",
        include_str!("../migrations/sqlite/0004_audit_chain.sql"),
    ),
    (
        5,
        "agents",
        include_str!("../migrations/sqlite/0005_agents.sql"),
    ),
    (
        6,
        "sessions",
        include_str!("../migrations/sqlite/0006_sessions.sql"),
    ),
    (
        7,
        "deployments",
        include_str!("../migrations/sqlite/0007_deployments.sql"),
    ),
    (
        8,
        "agent subject",
        include_str!("../migrations/sqlite/0008_agent_subject.sql"),
    ),
    (
        9,
        "login return to",
        include_str!("../migrations/sqlite/0009_login_return_to.sql"),
    ),
    (
        10,
        "discovery",
        include_str!("../migrations/sqlite/0010_discovery.sql"),
    ),
    (
        11,
        "managed",
        include_str!("../migrations/sqlite/0011_managed.sql"),
    ),
    (
        12,
        "renewal urgency",
        include_str!("../migrations/sqlite/0012_renewal_urgency.sql"),
    ),
    (
        13,
        "session secrets",
        include_str!("../migrations/sqlite/0013_session_secrets.sql"),
    ),
    (
        14,
        "subscription deliveries",
        include_str!("../migrations/sqlite/0014_subscription_deliveries.sql"),
    ),
    (
        15,
        "acme",
        include_str!("../migrations/sqlite/0015_acme.sql"),
    ),
    (
        16,
        "destinations",
        include_str!("../migrations/sqlite/0016_destinations.sql"),
    ),
    (
        17,
        "audit chains",
        include_str!("../migrations/sqlite/0017_audit_chains.sql"),
    ),
    (
        18,
        "blobs",
        include_str!("../migrations/sqlite/0018_blobs.sql"),
    ),
    (
        19,
        "audit heads moved by writers",
        include_str!("../migrations/sqlite/0019_audit_heads_moved_by_writers.sql"),
    ),
];

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of a file-backed pool: SQLite has one writer, WAL lets readers run alongside.
const MAX_CONNECTIONS: u32 = 4;
/// Page cache of each reading connection, in KiB when negative (SQLite's
/// default is 2,000 KiB). Each connection fills its own, and with a million
/// certificates the four readers' were 10–17 MB of the server's heap
/// (BENCHMARKS.md, goal 6), caching pages the kernel's page cache holds
/// anyway; the B-tree's interior pages, which every lookup reads, fit in a
/// quarter. The writer keeps the default: the pages an insert changes are
/// the ones it reads next.
const READER_CACHE: &str = "-512";

impl Dialect for Sqlite {
    /// Takes the write lock up front: a deferred transaction that reads and
    /// then writes can fail with `SQLITE_BUSY` without waiting. Holding the
    /// database's only write lock, a writer needs no row locks.
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    /// A deferred transaction reads one snapshot (WAL) from its first read on.
    const BEGIN_READ: &'static str = "BEGIN";
    const FOR_UPDATE: &'static str = "";
    const LOCK_ISSUERS: Option<&'static str> = None;
    /// Claims run under the database write lock, so nobody else is claiming.
    const SKIP_LOCKED: &'static str = "";
    const LABELS_JSON: &'static str = "(SELECT json_group_object(l.key, l.value) \
         FROM certificate_labels l WHERE l.certificate_id = c.id)";
    /// sqlx runs a text's statements one after the other on the
    /// connection's thread, binding each its own parameters: one hand-off to
    /// that thread instead of one a statement, which is what a write
    /// transaction holding the database's one write lock mostly waits on.
    const SCRIPTS: bool = true;
}

/// The metadata store on a SQLite database (a file, or memory for tests).
pub type SqliteStore = SqlStore<Sqlite>;

/// Opening a SQLite store; the ports are implemented for every [`SqlStore`].
impl SqlStore<Sqlite> {
    /// The renewal queue on this database's `renewal_jobs` table.
    pub fn renewal_queue(&self, options: DbQueueOptions) -> DbRenewalQueue {
        DbRenewalQueue::sqlite(self.clone(), options)
    }

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
        // A file connection does not go stale the way a network one can;
        // the ping sqlx would send first is one more round trip to the
        // connection's worker thread on every acquire.
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options.clone().pragma("cache_size", READER_CACHE))
            .await
            .map_err(|e| unavailable("cannot open", &e))?;
        // Every write on one connection: see `SqlStore::with_writer`. Its
        // statement journals (a multi-row insert inside a transaction keeps
        // the pages it changes, to undo that statement alone) stay in memory:
        // by default one past 64 KiB spills to a temporary file, and a batch
        // of certificates with their blobs does, at a write syscall per page
        // (5 % of an issuance's CPU in a profile: BENCHMARKS.md).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.pragma("temp_store", "memory"))
            .await
            .map_err(|e| unavailable("cannot open", &e))?;
        // A file has one writer at a time, so sqlx's own locking suffices.
        migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(|e| unavailable("cannot migrate", &e))?;
        let store = Self::with_writer(pool, writer);
        link_unchained(&store).await?;
        Ok(store)
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
        migrator(MIGRATIONS)
            .run(&pool)
            .await
            .map_err(|e| DomainError::Unavailable {
                backend: "database",
                reason: format!("cannot migrate the in-memory database: {e}"),
            })?;
        let store = Self::new(pool);
        link_unchained(&store).await?;
        Ok(store)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sqlx::{Connection, SqliteConnection};
    use time::OffsetDateTime;

    use super::*;
    use crate::certificates::due_query;
    use crate::query::{Columns, Exec, Sql};

    #[test]
    fn every_migration_file_is_embedded() {
        crate::migrate::assert_embedded("sqlite", MIGRATIONS);
    }

    /// `EXPLAIN QUERY PLAN` of the renewal query, one step a line.
    async fn due_plan(conn: &mut SqliteConnection, now: OffsetDateTime) -> Vec<String> {
        let sql = due_query(now, 1000).prefixed("EXPLAIN QUERY PLAN ");
        Sqlite::fetch_all(conn, sql)
            .await
            .unwrap()
            .iter()
            .map(|row| row.text("detail").unwrap())
            .collect()
    }

    /// The renewal query searches `certificates_due` on both its columns and
    /// takes its `renew_after` order (only ties are sorted by id): on a fresh
    /// database, as deployed, and with statistics over 20k rows, 1% due (the
    /// rows the `due` benchmark seeds).
    #[tokio::test]
    async fn due_query_searches_the_due_index() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        migrator(MIGRATIONS).run(&mut conn).await.unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        let fresh = due_plan(&mut conn, now).await;

        let seed = [
            Sql::new(include_str!("../benches/seed/issuer.sql")),
            Sql::new(include_str!("../benches/seed/certificates.sqlite.sql"))
                .bind(20_000_i64)
                .bind(now.unix_timestamp()),
            Sql::new("ANALYZE"),
        ];
        for sql in seed {
            Sqlite::execute(&mut conn, sql).await.unwrap();
        }
        let analysed = due_plan(&mut conn, now).await;

        for plan in [fresh, analysed] {
            assert!(
                plan.iter().any(|step| step
                    == "SEARCH c USING INDEX certificates_due (status=? AND renew_after<?)"),
                "{plan:?}"
            );
            assert!(
                plan.iter()
                    .all(|step| !step.starts_with("SCAN") && step != "USE TEMP B-TREE FOR ORDER BY"),
                "{plan:?}"
            );
        }
    }

    /// Migration 0011 turns the inventory-only stand-in (due 9999-12-31)
    /// into `managed = false`, due at notAfter, and leaves the rest managed.
    #[tokio::test]
    async fn migration_0011_backfills_inventory_as_unmanaged() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let before: Vec<Embedded> = MIGRATIONS.iter().filter(|m| m.0 < 11).copied().collect();
        migrator(&before).run(&mut conn).await.unwrap();
        Sqlite::execute(
            &mut conn,
            Sql::new(include_str!("../benches/seed/issuer.sql")),
        )
        .await
        .unwrap();
        let insert = "INSERT INTO certificates (id, name, name_folded, team, profile, key_type, \
            key_source, names, validity_days, issuer_id, renew_at_fraction, status, \
            current_version, not_after, renew_after, created_at, updated_at) \
            SELECT $1, $1, $1, 't', 'tls-server', 'ecdsa-p256', 'csr', '[]', 90, id, 0.66, \
            'active', 1, 1000, $2, 0, 0 FROM issuers";
        for (name, renew_after) in [("inventory", 253_402_300_799_i64), ("issued", 600)] {
            Sqlite::execute(&mut conn, Sql::new(insert).bind(name).bind(renew_after))
                .await
                .unwrap();
        }
        migrator(MIGRATIONS).run(&mut conn).await.unwrap();
        let rows = Sqlite::fetch_all(
            &mut conn,
            Sql::new("SELECT id, managed, renew_after FROM certificates ORDER BY id"),
        )
        .await
        .unwrap();
        let got: Vec<(String, bool, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.text("id").unwrap(),
                    r.boolean("managed").unwrap(),
                    r.int("renew_after").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("inventory".to_owned(), false, 1000),
                ("issued".to_owned(), true, 600)
            ]
        );
    }

    /// Migration 0012 gives the jobs already queued their certificate's
    /// notAfter, so an upgrade keeps the queue's urgency order.
    #[tokio::test]
    async fn migration_0012_backfills_job_expiry() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let before: Vec<Embedded> = MIGRATIONS.iter().filter(|m| m.0 < 12).copied().collect();
        migrator(&before).run(&mut conn).await.unwrap();
        let seed = [
            Sql::new(include_str!("../benches/seed/issuer.sql")),
            Sql::new(
                "INSERT INTO certificates (id, name, name_folded, team, profile, key_type, \
                 key_source, names, validity_days, issuer_id, renew_at_fraction, status, \
                 current_version, not_after, renew_after, created_at, updated_at) \
                 SELECT 'c', 'c', 'c', 't', 'tls-server', 'ecdsa-p256', 'csr', '[]', 90, id, \
                 0.66, 'active', 1, 1000, 600, 0, 0 FROM issuers",
            ),
            Sql::new(
                "INSERT INTO renewal_jobs (id, certificate_id, version, state, attempts, \
                 max_attempts, run_at, created_at, updated_at) \
                 VALUES ('j', 'c', 1, 'queued', 0, 5, 600, 600, 600)",
            ),
        ];
        for sql in seed {
            Sqlite::execute(&mut conn, sql).await.unwrap();
        }
        migrator(MIGRATIONS).run(&mut conn).await.unwrap();
        let row = Sqlite::fetch_optional(
            &mut conn,
            Sql::new("SELECT expires_at FROM renewal_jobs WHERE id = 'j'"),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(row.int("expires_at").unwrap(), 1000);
    }

    /// Migration 0013 takes the session secrets an older version stored in
    /// the clear out of the table: the CSRF token and ID token columns go
    /// (the values blanked first), the session itself stays.
    #[tokio::test]
    async fn migration_0013_drops_session_secrets_and_keeps_sessions() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let before: Vec<Embedded> = MIGRATIONS.iter().filter(|m| m.0 < 13).copied().collect();
        migrator(&before).run(&mut conn).await.unwrap();
        Sqlite::execute(
            &mut conn,
            Sql::new(
                "INSERT INTO sessions (id_hash, subject, principal, csrf_token, id_token,                  created_ms, last_seen_ms, idle_expires_ms, absolute_expires_ms)                  VALUES ('h', 'alice', '{}', 'csrf-in-clear', 'eyJ.id-token.in-clear', 1, 1, 2, 3)",
            ),
        )
        .await
        .unwrap();
        let after: Vec<Embedded> = MIGRATIONS.iter().filter(|m| m.0 <= 13).copied().collect();
        migrator(&after).run(&mut conn).await.unwrap();
        let columns = Sqlite::fetch_all(
            &mut conn,
            Sql::new("SELECT name FROM pragma_table_info('sessions') ORDER BY cid"),
        )
        .await
        .unwrap();
        let columns: Vec<String> = columns.iter().map(|r| r.text("name").unwrap()).collect();
        assert!(
            !columns.iter().any(|c| c == "csrf_token" || c == "id_token"),
            "{columns:?}"
        );
        let row = Sqlite::fetch_optional(
            &mut conn,
            Sql::new("SELECT subject, sealed_id_token FROM sessions WHERE id_hash = 'h'"),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(row.text("subject").unwrap(), "alice");
        assert_eq!(row.opt_text("sealed_id_token").unwrap(), None);
    }
}
