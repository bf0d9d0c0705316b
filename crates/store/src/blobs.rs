//! [`BlobStore`] in the metadata database itself (`blob.kind = "database"`,
//! the embedded default): a `blobs` table of key, bytes and creation time.
//!
//! Why blobs may live here: certflow's blobs are small (a certificate, its
//! chain, a sealed key: a few KiB a version) and written once. In files each
//! one cost an inode, a write, an fsync and a rename, plus directories: most
//! of an issuance's CPU went to the filesystem (BENCHMARKS.md). In the
//! database a version's blobs are one multi-row `INSERT`, group-committed
//! with the concurrent issuances' ([`crate::group_commit`]), and durable
//! exactly as the rows that point at them are: on SQLite both go through the
//! same write-ahead log, in order, so a row never survives a crash that lost
//! its blobs. Keys stay sealed as before; nothing here is plain text that was
//! not plain text in a file.
//!
//! Prefix listings scan the primary key's range `[prefix, prefix + U+FFFF)`
//! instead of `LIKE`, so no character of a key needs escaping; keys compare
//! bytewise (SQLite's default, `COLLATE "C"` on PostgreSQL) and are ASCII
//! paths, so that range holds exactly the keys under the prefix.

use async_trait::async_trait;
use bytes::Bytes;
use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use certflow_core::ports::BlobStore;
use sqlx::Pool;
use time::OffsetDateTime;

use crate::codec::secs;
use crate::error::map;
use crate::group_commit::together_or_alone;
use crate::query::{Backend, Columns, Param, Sql};
use crate::store::{SqlStore, execute};

/// Upserts of blobs, before their `VALUES`: a rewritten key takes the new bytes.
const UPSERT: &str = "INSERT INTO blobs (key, data, created_at)";
const ON_CONFLICT: &str =
    " ON CONFLICT (key) DO UPDATE SET data = excluded.data, created_at = excluded.created_at";

/// One `put_all` waiting for its group commit.
pub(crate) type BlobBatch = Vec<(String, Bytes)>;

/// Writes several callers' blobs in one transaction; should it fail, each
/// caller's in its own, so that each gets its own answer.
pub(crate) async fn commit_blobs<B: Backend>(
    pool: Pool<B>,
    batch: Vec<BlobBatch>,
) -> Vec<DomainResult<()>> {
    let pool = &pool;
    together_or_alone(
        "blob writes",
        &batch,
        |all| async move {
            let rows: Vec<&(String, Bytes)> = all.iter().flatten().collect();
            put_rows::<B>(pool, &rows).await?;
            Ok(vec![(); all.len()])
        },
        |blobs| async move { put_rows::<B>(pool, &blobs.iter().collect::<Vec<_>>()).await },
    )
    .await
}

async fn put_rows<B: Backend>(pool: &Pool<B>, rows: &[&(String, Bytes)]) -> DomainResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin_with(B::BEGIN_WRITE).await.map_err(map)?;
    insert_blobs::<B>(&mut tx, rows).await?;
    tx.commit().await.map_err(map)
}

/// Upserts `rows` in the write transaction `conn`: one statement.
pub(crate) async fn insert_blobs<B: Backend>(
    conn: &mut B::Connection,
    rows: &[&(String, Bytes)],
) -> DomainResult<()> {
    match upsert_blobs(rows)? {
        Some(sql) => execute::<B>(conn, sql).await,
        None => Ok(()),
    }
}

/// [`insert_blobs`]'s statement, to run with others; none for no rows.
pub(crate) fn upsert_blobs(rows: &[&(String, Bytes)]) -> DomainResult<Option<Sql>> {
    if rows.is_empty() {
        return Ok(None);
    }
    for (key, _) in rows {
        validate(key)?;
    }
    let now = secs(OffsetDateTime::now_utc());
    // The same key twice in one statement is an error on PostgreSQL
    // (`ON CONFLICT` cannot affect a row twice): the last write wins, as it
    // would one statement after another.
    let mut unique: Vec<&(String, Bytes)> = Vec::with_capacity(rows.len());
    for row in rows.iter().rev() {
        if !unique.iter().any(|u| u.0 == row.0) {
            unique.push(row);
        }
    }
    let mut sql = Sql::new(UPSERT);
    sql.push_values(unique.iter().map(|(key, data)| {
        vec![
            Param::from(key.as_str()),
            Param::from(Some(data.as_ref())),
            Param::from(now),
        ]
    }));
    sql.push(ON_CONFLICT);
    Ok(Some(sql))
}

/// The first key after every key that starts with `prefix`.
fn range_end(prefix: &str) -> String {
    format!("{prefix}\u{ffff}")
}

fn validate(key: &str) -> DomainResult<()> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p == ".." || p == ".") {
        return Err(DomainError::Internal(format!("invalid blob key {key:?}")));
    }
    Ok(())
}

#[async_trait]
impl<B: Backend> BlobStore for SqlStore<B> {
    async fn put(&self, key: &str, data: Bytes) -> DomainResult<()> {
        self.put_all(vec![(key.to_owned(), data)]).await
    }

    async fn put_all(&self, blobs: Vec<(String, Bytes)>) -> DomainResult<()> {
        // Checked again where rows are written (blobs attached to a version
        // come that way only); here so a bad key fails before it joins, and
        // fails, a batch of other callers' writes.
        for (key, _) in &blobs {
            validate(key)?;
        }
        self.blob_puts.submit(blobs).await
    }

    fn in_metadata_database(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> DomainResult<Bytes> {
        let row = self
            .fetch_optional(Sql::new("SELECT data FROM blobs WHERE key = $1").bind(key))
            .await?;
        match row {
            Some(row) => Ok(Bytes::from(row.opt_bytes("data")?.unwrap_or_default())),
            None => Err(DomainError::NotFound(format!("blob {key}"))),
        }
    }

    async fn delete(&self, key: &str) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        execute::<B>(
            &mut tx,
            Sql::new("DELETE FROM blobs WHERE key = $1").bind(key),
        )
        .await?;
        tx.commit().await.map_err(map)
    }

    async fn list(&self, prefix: &str) -> DomainResult<Vec<String>> {
        let rows = self
            .fetch_all(
                Sql::new("SELECT key FROM blobs WHERE key >= $1 AND key < $2 ORDER BY key")
                    .bind(prefix)
                    .bind(range_end(prefix)),
            )
            .await?;
        rows.iter().map(|r| r.text("key")).collect()
    }

    async fn list_with_age(&self, prefix: &str) -> DomainResult<Vec<(String, OffsetDateTime)>> {
        let rows = self
            .fetch_all(
                Sql::new(
                    "SELECT key, created_at FROM blobs WHERE key >= $1 AND key < $2 ORDER BY key",
                )
                .bind(prefix)
                .bind(range_end(prefix)),
            )
            .await?;
        rows.iter()
            .map(|r| {
                let at = OffsetDateTime::from_unix_timestamp(r.int("created_at")?)
                    .map_err(|e| DomainError::Internal(format!("blob time: {e}")))?;
                Ok((r.text("key")?, at))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_a_prefix_are_refused() {
        assert!(validate("certificates/a/1/cert.der").is_ok());
        assert!(validate("").is_err());
        assert!(validate("/abs").is_err());
        assert!(validate("a/../b").is_err());
    }

    #[test]
    fn range_end_sorts_after_every_key_under_the_prefix() {
        let end = range_end("certificates/");
        assert!("certificates/zzz/1/cert.der" < end.as_str());
        assert!("certificates0" > end.as_str());
    }
}
