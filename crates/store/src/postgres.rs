//! The store on PostgreSQL ([`PgStore`] = `SqlStore<Postgres>`): its
//! [`Dialect`], connecting, pooling and migrating here; the statements, shared
//! with SQLite, in the port modules ([`crate::certificates`] and its siblings).
//!
//! Several replicas may start at once against one database: each migrates
//! under a session advisory lock on a dedicated connection, so one applies
//! the migrations and the others find them applied.

use std::str::FromStr;
use std::time::Duration;

use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Postgres};
use tokio::time::Instant;

use crate::audit::link_unchained;
use crate::migrate::{Embedded, migrator};
use crate::query::Dialect;
use crate::queue::{DbQueueOptions, DbRenewalQueue};
use crate::store::SqlStore;

/// Migrations embedded in the binary, oldest first; a unit test checks the
/// list against `migrations/postgres/`.
const MIGRATIONS: &[Embedded] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "idempotency keys",
        include_str!("../migrations/postgres/0002_idempotency_keys.sql"),
    ),
    (
        3,
        "renewal and notifications",
        include_str!("../migrations/postgres/0003_renewal_and_notifications.sql"),
    ),
    (
        4,
        "audit chain",
        include_str!("../migrations/postgres/0004_audit_chain.sql"),
    ),
    (
        5,
        "agents",
        include_str!("../migrations/postgres/0005_agents.sql"),
    ),
    (
        6,
        "sessions",
        include_str!("../migrations/postgres/0006_sessions.sql"),
    ),
    (
        7,
        "deployments",
        include_str!("../migrations/postgres/0007_deployments.sql"),
    ),
    (
        8,
        "agent subject",
        include_str!("../migrations/postgres/0008_agent_subject.sql"),
    ),
    (
        9,
        "login return to",
        include_str!("../migrations/postgres/0009_login_return_to.sql"),
    ),
    (
        10,
        "discovery",
        include_str!("../migrations/postgres/0010_discovery.sql"),
    ),
    (
        11,
        "managed",
        include_str!("../migrations/postgres/0011_managed.sql"),
    ),
    (
        12,
        "renewal urgency",
        include_str!("../migrations/postgres/0012_renewal_urgency.sql"),
    ),
    (
        13,
        "session secrets",
        include_str!("../migrations/postgres/0013_session_secrets.sql"),
    ),
    (
        14,
        "subscription deliveries",
        include_str!("../migrations/postgres/0014_subscription_deliveries.sql"),
    ),
    (
        15,
        "acme",
        include_str!("../migrations/postgres/0015_acme.sql"),
    ),
    (
        16,
        "destinations",
        include_str!("../migrations/postgres/0016_destinations.sql"),
    ),
    (
        17,
        "audit chains",
        include_str!("../migrations/postgres/0017_audit_chains.sql"),
    ),
    (
        18,
        "blobs",
        include_str!("../migrations/postgres/0018_blobs.sql"),
    ),
    (
        19,
        "audit heads moved by writers",
        include_str!("../migrations/postgres/0019_audit_heads_moved_by_writers.sql"),
    ),
    (
        20,
        "audit heads as checkpoints",
        include_str!("../migrations/postgres/0020_audit_heads_as_checkpoints.sql"),
    ),
];

/// Key of the advisory lock held while migrating ("certflow" in ASCII).
/// Advisory locks are per database, so this only serialises certflow
/// replicas sharing one.
const MIGRATION_LOCK_KEY: i64 = 0x6365_7274_666c_6f77;

/// First pause before retrying a refused connection; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

impl Dialect for Postgres {
    /// Read committed: each statement sees what committed before it, and
    /// [`FOR_UPDATE`](Dialect::FOR_UPDATE) makes a writer wait for, then
    /// re-read, a row another writer holds.
    const BEGIN_WRITE: &'static str = "BEGIN";
    const BEGIN_READ: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    /// Conflicts with itself and with row writers, not with readers or with
    /// the key-share locks that foreign keys to issuers take.
    const LOCK_ISSUERS: Option<&'static str> =
        Some("LOCK TABLE issuers IN SHARE ROW EXCLUSIVE MODE");
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const LABELS_JSON: &'static str = "(SELECT COALESCE(json_object_agg(l.key, l.value), '{}')::text \
         FROM certificate_labels l WHERE l.certificate_id = c.id)";
    /// The extended query protocol prepares one statement a call.
    const SCRIPTS: bool = false;
}

/// Pool settings of a [`PgStore`]; TLS (`sslmode`) and credentials come from the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgOptions {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// Server-side limit on each statement (`statement_timeout`); `None` keeps the server's.
    pub statement_timeout: Option<Duration>,
    /// How long to wait for the server when connecting, and for a free pooled connection.
    pub connect_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            statement_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The metadata store on a PostgreSQL database.
pub type PgStore = SqlStore<Postgres>;

/// Connecting to a PostgreSQL store; the ports are implemented for every [`SqlStore`].
impl SqlStore<Postgres> {
    /// The renewal queue on this database's `renewal_jobs` table.
    pub fn renewal_queue(&self, options: DbQueueOptions) -> DbRenewalQueue {
        DbRenewalQueue::postgres(self.clone(), options)
    }

    /// A change feed over this database's LISTEN/NOTIFY.
    pub async fn change_feed(&self) -> DomainResult<crate::ChangeFeed> {
        crate::ChangeFeed::postgres(self.pool().clone()).await
    }

    /// Connects to `url` (`postgres://user:pw@host:port/db?sslmode=...`), migrates, opens a pool.
    pub async fn connect(url: &str, options: PgOptions) -> DomainResult<Self> {
        if options.max_connections == 0 {
            return Err(DomainError::invalid(
                "max_connections",
                "must be at least 1",
            ));
        }
        // sqlx's messages about a malformed URL never quote the URL itself.
        let mut connect =
            PgConnectOptions::from_str(url).map_err(|e| DomainError::Unavailable {
                backend: "database",
                reason: format!("invalid PostgreSQL URL: {e}"),
            })?;
        if connect.get_application_name().is_none() {
            connect = connect.application_name("certflow");
        }
        let server = describe(&connect);
        let unavailable = |what: &str, reason: String| DomainError::Unavailable {
            backend: "database",
            reason: format!("{what} PostgreSQL at {server}: {reason}"),
        };

        let mut conn = connect_one(&connect, options.connect_timeout)
            .await
            .map_err(|reason| unavailable("cannot connect to", reason))?;
        let migrated = migrate(&mut conn).await;
        // Closing also releases the advisory lock if unlocking failed.
        let _ = conn.close().await;
        migrated.map_err(|reason| unavailable("cannot migrate", reason))?;

        let statement_timeout = options.statement_timeout.map(|t| {
            // 0 would mean "no limit" to PostgreSQL.
            format!("{}ms", t.as_millis().max(1))
        });
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.connect_timeout)
            .after_connect(move |conn, _| {
                let statement_timeout = statement_timeout.clone();
                Box::pin(async move {
                    if let Some(timeout) = statement_timeout {
                        // The function form of `SET statement_timeout`, which takes a parameter.
                        sqlx::query("SELECT set_config('statement_timeout', $1, false)")
                            .bind(timeout)
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect)
            .await
            .map_err(|e| unavailable("cannot connect to", e.to_string()))?;
        let store = Self::new(pool);
        link_unchained(&store).await?;
        Ok(store)
    }
}

/// `host:port/database` (or the socket path), for messages: never the password.
fn describe(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        // An IPv6 literal, unless the URL's brackets are still around it.
        None if options.get_host().contains(':') && !options.get_host().starts_with('[') => {
            format!("[{}]:{}", options.get_host(), options.get_port())
        }
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    match options.get_database() {
        Some(database) => format!("{place}/{database}"),
        None => place,
    }
}

/// Opens one connection, retrying while the server refuses (it may be
/// starting up) until `timeout` has passed; the error is the reason.
async fn connect_one(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, String> {
    let deadline = Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let error = match tokio::time::timeout_at(deadline, options.connect()).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => e,
            Err(_) => return Err(format!("no answer within {timeout:?}")),
        };
        let starting_up = match &error {
            sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
            sqlx::Error::Database(db) => db.is_transient_in_connect_phase(),
            _ => false,
        };
        if !starting_up {
            return Err(error.to_string());
        }
        if Instant::now() + backoff >= deadline {
            return Err(format!("{error} (still failing after {timeout:?})"));
        }
        tracing::debug!(%error, "PostgreSQL not accepting connections yet; retrying");
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2);
    }
}

/// Applies pending migrations while holding [`MIGRATION_LOCK_KEY`].
async fn migrate(conn: &mut PgConnection) -> Result<(), String> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(|e| format!("cannot take the migration lock: {e}"))?;
    let mut migrator = migrator(MIGRATIONS);
    // Ours is the lock; sqlx's would be a second one on another key.
    migrator.set_locking(false);
    let applied = migrator
        .run_direct(None, &mut *conn, false)
        .await
        .map_err(|e| e.to_string());
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(|e| format!("cannot release the migration lock: {e}"));
    applied.and(unlocked).map(drop)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sqlx::{AssertSqlSafe, Executor};
    use time::OffsetDateTime;

    use super::*;
    use crate::certificates::due_query;
    use crate::query::{Exec, Sql};

    #[test]
    fn every_migration_file_is_embedded() {
        crate::migrate::assert_embedded("postgres", MIGRATIONS);
    }

    #[test]
    fn descriptions_never_carry_the_password() {
        let parse = |url: &str| PgConnectOptions::from_str(url).unwrap();
        let with_password = parse("postgres://certflow:hunter2@db.internal:6432/certflow");
        assert_eq!(describe(&with_password), "db.internal:6432/certflow");
        assert_eq!(describe(&parse("postgres://u@[::1]/d")), "[::1]:5432/d");
    }

    #[test]
    fn defaults() {
        let d = PgOptions::default();
        assert_eq!(d.max_connections, 10);
        assert_eq!(d.statement_timeout, Some(Duration::from_secs(30)));
        assert_eq!(d.connect_timeout, Duration::from_secs(5));
    }

    /// The renewal query's plans (custom and generic, as the prepared
    /// statement runs after its first executions) on a fresh database seeded
    /// with 20k certificates, 1% due (the rows the `due` benchmark seeds), and
    /// analysed: what the planner chooses on its own, nothing disabled.
    async fn due_plans(options: &PgConnectOptions) -> Vec<(&'static str, String)> {
        let mut conn = PgConnection::connect_with(options).await.unwrap();
        migrate(&mut conn).await.unwrap();
        let now = 1_767_225_600_i64;
        let seed = [
            Sql::new(include_str!("../benches/seed/issuer.sql")),
            Sql::new(include_str!("../benches/seed/certificates.postgres.sql"))
                .bind(20_000_i64)
                .bind(now),
            Sql::new("ANALYZE"),
        ];
        for sql in seed {
            Postgres::execute(&mut conn, sql).await.unwrap();
        }
        let query = due_query(OffsetDateTime::from_unix_timestamp(now).unwrap(), 1000);
        conn.execute(AssertSqlSafe(format!(
            "PREPARE certflow_due AS {}",
            query.text()
        )))
        .await
        .unwrap();
        let mut plans = Vec::new();
        for mode in ["force_custom_plan", "force_generic_plan"] {
            conn.execute(AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                .await
                .unwrap();
            let lines: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                "EXPLAIN EXECUTE certflow_due('active', {now}, 1000)"
            )))
            .fetch_all(&mut conn)
            .await
            .unwrap();
            plans.push((mode, lines.join("\n")));
        }
        conn.close().await.unwrap();
        plans
    }

    /// Needs the test server of `tests/metadata_store/` (`support/pg.rs`); the database it
    /// creates is dropped unless the test dies on the way.
    #[tokio::test]
    async fn due_query_scans_the_due_index() {
        let admin_url = std::env::var("CERTFLOW_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin_options = PgConnectOptions::from_str(&admin_url).unwrap();
        let mut admin = PgConnection::connect_with(&admin_options).await.unwrap();
        let name = format!("certflow_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let plans = due_plans(&admin_options.clone().database(&name)).await;
        admin
            .execute(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .await
            .unwrap();
        admin.close().await.unwrap();
        for (mode, plan) in plans {
            assert!(
                plan.contains("Index Scan using certificates_due on certificates")
                    || plan.contains("Bitmap Index Scan on certificates_due"),
                "{mode}:\n{plan}"
            );
            // renewal_jobs is empty here, so reading it whole for the
            // NOT EXISTS is the right plan; the certificates never are.
            assert!(
                !plan.contains("Seq Scan on certificates"),
                "{mode}:\n{plan}"
            );
        }
    }
}
