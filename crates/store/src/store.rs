//! [`SqlStore`], the one type every port is implemented on (one module a
//! port), and the statement helpers those implementations share. A leaf: it
//! imports no port implementation, so `audit` and every port build on it
//! without import cycles.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use certflow_core::model::AuditEvent;
use certflow_core::ports::VersionCommitted;
use sqlx::{Database, Pool, Transaction};

use crate::audit::{audit_lanes, commit_audits};
use crate::blobs::{BlobBatch, commit_blobs};
use crate::certificates::{Creation, NewVersion, commit_creations, commit_new_versions};
use crate::error::map;
use crate::group_commit::GroupCommit;
use crate::notify::{Publication, commit_publications};
use crate::query::{Backend, Columns, Sql};

/// Largest page a listing returns.
const MAX_PAGE: u32 = 500;

/// The metadata store over a pool of backend `B`: every port is implemented
/// once, for all backends; [`SqliteStore`](crate::SqliteStore) and
/// [`PgStore`](crate::PgStore) name it per backend and add how to open it.
pub struct SqlStore<B: Database> {
    pool: Pool<B>,
    /// Where write transactions run: the same pool on PostgreSQL; on a
    /// SQLite file, one connection of its own (see [`SqlStore::with_writer`]).
    writer: Pool<B>,
    /// New certificates, committed in groups (see [`crate::group_commit`]).
    pub(crate) creations: Arc<GroupCommit<Creation>>,
    /// New versions of certificates (renewals), committed in groups.
    pub(crate) new_versions: Arc<GroupCommit<NewVersion, VersionCommitted>>,
    /// Blobs (`blob.kind = "database"`), committed in groups.
    pub(crate) blob_puts: Arc<GroupCommit<BlobBatch>>,
    /// Notifications and their deliveries, committed in groups.
    pub(crate) publications: Arc<GroupCommit<Publication, bool>>,
    /// Audit events written on their own (`append_audit`), committed in groups.
    pub(crate) audits: Arc<GroupCommit<AuditEvent>>,
    backend: PhantomData<fn() -> B>,
}

impl<B: Database> Clone for SqlStore<B> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            writer: self.writer.clone(),
            creations: Arc::clone(&self.creations),
            new_versions: Arc::clone(&self.new_versions),
            blob_puts: Arc::clone(&self.blob_puts),
            publications: Arc::clone(&self.publications),
            audits: Arc::clone(&self.audits),
            backend: PhantomData,
        }
    }
}

impl<B: Database> fmt::Debug for SqlStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &B::NAME)
            .field("pool", &self.pool)
            .finish()
    }
}

impl<B: Database> SqlStore<B> {
    /// The pool (for the PostgreSQL change feed).
    pub(crate) fn pool(&self) -> &Pool<B> {
        &self.pool
    }

    /// Closes every connection (on SQLite, checkpointing the WAL); later
    /// calls fail as unavailable.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

impl<B: Backend> SqlStore<B> {
    /// Wraps a pool whose database is migrated, writing through it too.
    pub(crate) fn new(pool: Pool<B>) -> Self {
        Self::with_writer(pool.clone(), pool)
    }

    /// Wraps a pool whose database is migrated, with write transactions
    /// and the writes of single statements on `writer`.
    ///
    /// Why SQLite gets a writer of its own: the database has one write lock,
    /// and a connection that finds it taken waits in SQLite's busy handler,
    /// which sleeps 1, 2, 5, 10 ... ms between tries whatever happens
    /// meanwhile. With every write on one connection, writers queue for it
    /// in the pool instead and each goes on the moment the previous one
    /// lets go (BENCHMARKS.md, goal 4: the renewal worker's writers slept
    /// about a fifth of the time).
    pub(crate) fn with_writer(pool: Pool<B>, writer: Pool<B>) -> Self {
        let (creator, renewer) = (writer.clone(), writer.clone());
        let (putter, publisher) = (writer.clone(), writer.clone());
        let auditor = writer.clone();
        Self {
            creations: GroupCommit::new(Arc::new(move |batch| {
                Box::pin(commit_creations::<B>(creator.clone(), batch))
            })),
            new_versions: GroupCommit::new(Arc::new(move |batch| {
                Box::pin(commit_new_versions::<B>(renewer.clone(), batch))
            })),
            blob_puts: GroupCommit::new(Arc::new(move |batch| {
                Box::pin(commit_blobs::<B>(putter.clone(), batch))
            })),
            publications: GroupCommit::new(Arc::new(move |batch| {
                Box::pin(commit_publications::<B>(publisher.clone(), batch))
            })),
            audits: GroupCommit::with_lanes(
                Arc::new(move |batch| Box::pin(commit_audits::<B>(auditor.clone(), batch))),
                audit_lanes::<B>(),
            ),
            pool,
            writer,
            backend: PhantomData,
        }
    }

    /// The pool writes go through (see [`SqlStore::with_writer`]).
    pub(crate) fn writer(&self) -> &Pool<B> {
        &self.writer
    }

    pub(crate) async fn begin_write(&self) -> DomainResult<Transaction<'static, B>> {
        self.writer.begin_with(B::BEGIN_WRITE).await.map_err(map)
    }

    pub(crate) async fn begin_read(&self) -> DomainResult<Transaction<'static, B>> {
        self.pool.begin_with(B::BEGIN_READ).await.map_err(map)
    }

    pub(crate) async fn fetch_all(&self, sql: Sql) -> DomainResult<Vec<B::Record>> {
        let mut conn = self.pool.acquire().await.map_err(map)?;
        B::fetch_all(&mut conn, sql).await.map_err(map)
    }

    pub(crate) async fn fetch_optional(&self, sql: Sql) -> DomainResult<Option<B::Record>> {
        let mut conn = self.pool.acquire().await.map_err(map)?;
        B::fetch_optional(&mut conn, sql).await.map_err(map)
    }

    /// The rows a write of one statement returns (`RETURNING`), run where
    /// writes run ([`SqlStore::with_writer`]).
    pub(crate) async fn write_returning(&self, sql: Sql) -> DomainResult<Vec<B::Record>> {
        let mut conn = self.writer.acquire().await.map_err(map)?;
        B::fetch_all(&mut conn, sql).await.map_err(map)
    }
}

// The free functions run a statement on a connection or transaction the
// caller holds; the methods above take a pooled connection for one statement.

pub(crate) async fn execute<B: Backend>(conn: &mut B::Connection, sql: Sql) -> DomainResult<()> {
    B::execute(conn, sql).await.map_err(map)
}

/// Runs `statements` in order in the transaction `conn`: in one call where
/// the backend takes a script ([`crate::query::Dialect::SCRIPTS`]), else one
/// by one. For the writes of a batch whose errors all mean the same (the
/// batch goes alone, statement by statement, for its precise answers).
pub(crate) async fn execute_all<B: Backend>(
    conn: &mut B::Connection,
    statements: Vec<Sql>,
) -> DomainResult<()> {
    if B::SCRIPTS {
        match statements.into_iter().reduce(Sql::then) {
            Some(script) => execute::<B>(conn, script).await,
            None => Ok(()),
        }
    } else {
        for sql in statements {
            execute::<B>(conn, sql).await?;
        }
        Ok(())
    }
}

pub(crate) async fn fetch_all<B: Backend>(
    conn: &mut B::Connection,
    sql: Sql,
) -> DomainResult<Vec<B::Record>> {
    B::fetch_all(conn, sql).await.map_err(map)
}

pub(crate) async fn fetch_optional<B: Backend>(
    conn: &mut B::Connection,
    sql: Sql,
) -> DomainResult<Option<B::Record>> {
    B::fetch_optional(conn, sql).await.map_err(map)
}

/// `LIMIT` and `OFFSET` of a listing page: at least one, at most [`MAX_PAGE`] rows.
pub(crate) fn page_bounds(limit: u32, offset: u64) -> (i64, i64) {
    (
        i64::from(limit.clamp(1, MAX_PAGE)),
        i64::try_from(offset).unwrap_or(i64::MAX),
    )
}

/// The count of a `SELECT COUNT(*) AS n` (no row counts as 0).
pub(crate) fn total(row: Option<impl Columns>) -> DomainResult<u64> {
    let count = match row {
        Some(row) => row.int("n")?,
        None => 0,
    };
    u64::try_from(count).map_err(|e| DomainError::Internal(format!("negative row count: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_bounds_clamp() {
        assert_eq!(page_bounds(0, 0), (1, 0));
        assert_eq!(page_bounds(50, 7), (50, 7));
        assert_eq!(page_bounds(10_000, u64::MAX), (500, i64::MAX));
    }
}
