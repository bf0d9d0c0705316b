//! The audit trail's hash chain (migration 0004): linking each event as it is
//! inserted, linking events from before the migration, and verifying.
//!
//! Each event has a gapless `seq` (1, 2, 3...), the `hash` of the event before
//! it as `prev_hash` ([`GENESIS`] for the first) and its own `hash`: lower-case
//! hex SHA-256 of [`link_bytes`]. The hash covers every stored column as the
//! database holds it (details as its JSON text), so verifying needs nothing but
//! the rows. Triggers refuse updates and deletes and keep `audit_chain_head`
//! (the newest link) in step; a writer reads that row under its transaction's
//! lock to link its event, so concurrent writers form one chain.
//!
//! The chain makes tampering evident, not impossible: someone who can disable
//! the triggers can also rewrite every later link. Recording
//! [`AuditChainReport::last_hash`] outside the database closes that gap.

use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use certflow_core::model::{AuditChainBreak, AuditChainFault, AuditChainReport, AuditEvent};
use uuid::Uuid;

use crate::codec::{audit_columns, id, secs};
use crate::error::{Violation, conflict, map};
use crate::query::{Backend, Columns, Sql};
use crate::store::{SqlStore, execute, fetch_all, fetch_optional};

/// `prev_hash` of the first event.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows read per query when verifying or linking old events.
const PAGE: i64 = 1000;

/// Domain separation of the hash input, versioned with the encoding.
const TAG: &[u8] = b"certflow.audit-chain.v1\0";

/// An audit row's columns exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEvent {
    pub(crate) id: String,
    pub(crate) at: i64,
    pub(crate) subject: String,
    pub(crate) source: Option<String>,
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) outcome: String,
    pub(crate) details: String,
}

impl StoredEvent {
    /// The columns `event` is stored as.
    pub(crate) fn of(event: &AuditEvent) -> DomainResult<Self> {
        Ok(Self {
            id: id(event.id),
            at: secs(event.at),
            subject: event.actor.subject.clone(),
            source: event.actor.source.clone(),
            action: event.action.clone(),
            target: event.target.clone(),
            outcome: event.outcome.as_str().to_owned(),
            details: serde_json::to_string(&event.details)
                .map_err(|e| DomainError::Internal(format!("encoding audit details: {e}")))?,
        })
    }

    /// Reads a row selected with `audit_columns`.
    fn read(row: &impl Columns) -> DomainResult<Self> {
        Ok(Self {
            id: row.text("id")?,
            at: row.int("at")?,
            subject: row.text("subject")?,
            source: row.opt_text("source")?,
            action: row.text("action")?,
            target: row.text("target")?,
            outcome: row.text("outcome")?,
            details: row.text("details")?,
        })
    }
}

/// The hashed bytes of one link: a tag, then `prev_hash`, `seq` and every
/// column in `audit_columns` order. Texts are length-prefixed (u64 big-endian)
/// so no two different rows encode alike; integers are 8 bytes big-endian;
/// the nullable `source` is a 0 byte when NULL, else a 1 byte and the text.
pub(crate) fn link_bytes(prev_hash: &str, seq: i64, e: &StoredEvent) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = Vec::with_capacity(256 + e.details.len());
    out.extend_from_slice(TAG);
    text(&mut out, prev_hash);
    out.extend_from_slice(&seq.to_be_bytes());
    text(&mut out, &e.id);
    out.extend_from_slice(&e.at.to_be_bytes());
    text(&mut out, &e.subject);
    match &e.source {
        None => out.push(0),
        Some(source) => {
            out.push(1);
            text(&mut out, source);
        }
    }
    text(&mut out, &e.action);
    text(&mut out, &e.target);
    text(&mut out, &e.outcome);
    text(&mut out, &e.details);
    out
}

/// Lower-case hex SHA-256 of [`link_bytes`].
pub(crate) fn link_hash(prev_hash: &str, seq: i64, e: &StoredEvent) -> String {
    let bytes = link_bytes(prev_hash, seq, e);
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref())
}

/// The newest link: `(seq, hash)`, `(0, GENESIS)` while the chain is empty.
/// Inside a write transaction this also locks it until the commit
/// (`FOR UPDATE` on PostgreSQL; SQLite's writer already holds the database).
pub(crate) async fn lock_head<B: Backend>(conn: &mut B::Connection) -> DomainResult<(i64, String)> {
    let mut sql = Sql::new("SELECT seq, hash FROM audit_chain_head WHERE id = 1");
    sql.push(B::FOR_UPDATE);
    read_head(fetch_optional::<B>(conn, sql).await?)
}

fn read_head(row: Option<impl Columns>) -> DomainResult<(i64, String)> {
    let row = row.ok_or_else(|| {
        DomainError::Integrity("the audit chain head (audit_chain_head) is missing".into())
    })?;
    Ok((row.int("seq")?, row.text("hash")?))
}

/// Appends `event` to the audit chain as the next link. Call it last in a
/// write transaction: on PostgreSQL it holds the chain head's row lock until
/// the commit, so audited writes commit one at a time.
pub(crate) async fn insert_audit<B: Backend>(
    conn: &mut B::Connection,
    audit: &AuditEvent,
) -> DomainResult<()> {
    let event = &StoredEvent::of(audit)?;
    let (head_seq, head_hash) = lock_head::<B>(conn).await?;
    let seq = head_seq + 1;
    let hash = link_hash(&head_hash, seq, event);
    let sql = Sql::new(concat!(
        "INSERT INTO audit_events (",
        audit_columns!(),
        ", seq, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(event.id.as_str())
    .bind(event.at)
    .bind(event.subject.as_str())
    .bind(event.source.as_deref())
    .bind(event.action.as_str())
    .bind(event.target.as_str())
    .bind(event.outcome.as_str())
    .bind(event.details.as_str())
    .bind(seq)
    .bind(head_hash)
    .bind(hash);
    B::execute(conn, sql).await.map_err(|e| {
        conflict(e, |v| {
            (v == Violation::PrimaryKey).then(|| format!("audit event {} already exists", audit.id))
        })
    })
}

/// Links audit events from before migration 0004 when a store opens.
pub(crate) async fn link_unchained<B: Backend>(store: &SqlStore<B>) -> DomainResult<()> {
    let linked = store.link_unchained().await?;
    if linked > 0 {
        tracing::info!(linked, "linked audit events from before the audit chain");
    }
    Ok(())
}

impl<B: Backend> SqlStore<B> {
    /// Links the events written before migration 0004 (seq still NULL), in id
    /// order, a page per transaction; does nothing once all are linked. Runs
    /// when the store opens. Several replicas may run it at once: each page
    /// locks the chain head first, so they take turns.
    pub(crate) async fn link_unchained(&self) -> DomainResult<u64> {
        let mut linked = 0_u64;
        loop {
            let mut tx = self.begin_write().await?;
            let (mut seq, mut prev) = lock_head::<B>(&mut tx).await?;
            let rows = fetch_all::<B>(
                &mut tx,
                Sql::new(concat!(
                    "SELECT ",
                    audit_columns!(),
                    " FROM audit_events WHERE seq IS NULL ORDER BY id LIMIT $1"
                ))
                .bind(PAGE),
            )
            .await?;
            if rows.is_empty() {
                tx.commit().await.map_err(map)?;
                return Ok(linked);
            }
            for row in &rows {
                let event = StoredEvent::read(row)?;
                seq += 1;
                let hash = link_hash(&prev, seq, &event);
                execute::<B>(
                    &mut tx,
                    Sql::new(
                        "UPDATE audit_events SET seq = $1, prev_hash = $2, hash = $3 \
                         WHERE id = $4 AND seq IS NULL",
                    )
                    .bind(seq)
                    .bind(prev.as_str())
                    .bind(hash.as_str())
                    .bind(event.id.as_str()),
                )
                .await?;
                prev = hash;
                linked += 1;
            }
            tx.commit().await.map_err(map)?;
        }
    }

    /// Walks the chain in `seq` order, [`PAGE`] rows a query (no long
    /// transaction: linked rows never change, and a row commits with the head
    /// that names it), then checks the head and looks for unlinked rows.
    pub(crate) async fn verify_chain(&self) -> DomainResult<AuditChainReport> {
        let mut report = AuditChainReport {
            checked: 0,
            last_seq: 0,
            last_hash: GENESIS.to_owned(),
            first_break: None,
        };
        let mut last_seq = 0_i64;
        let mut last_id: Option<Uuid> = None;
        // Set when the head named rows the last query had not seen: the next
        // query must find them, or they are missing.
        let mut head_ahead = false;
        let fault = |seq: i64, id: Option<Uuid>, reason| {
            Some(AuditChainBreak {
                seq: u64::try_from(seq).unwrap_or(0),
                id,
                reason,
            })
        };
        let first_break = 'walk: loop {
            let rows = self
                .fetch_all(
                    Sql::new(concat!(
                        "SELECT ",
                        audit_columns!(),
                        ", seq, prev_hash, hash FROM audit_events WHERE seq > $1 \
                         ORDER BY seq LIMIT $2"
                    ))
                    .bind(last_seq)
                    .bind(PAGE),
                )
                .await?;
            if rows.is_empty() && head_ahead {
                break fault(last_seq + 1, None, AuditChainFault::SeqGap);
            }
            let full = rows.len() as i64 == PAGE;
            for row in &rows {
                let event = StoredEvent::read(row)?;
                let row_id = Uuid::parse_str(&event.id).ok();
                let seq = row.int("seq")?;
                if seq != last_seq + 1 {
                    break 'walk fault(last_seq + 1, row_id, AuditChainFault::SeqGap);
                }
                let prev = row.opt_text("prev_hash")?;
                if prev.as_deref() != Some(report.last_hash.as_str()) {
                    break 'walk fault(seq, row_id, AuditChainFault::PrevHashMismatch);
                }
                let hash = row.opt_text("hash")?.unwrap_or_default();
                if link_hash(&report.last_hash, seq, &event) != hash {
                    break 'walk fault(seq, row_id, AuditChainFault::HashMismatch);
                }
                report.checked += 1;
                report.last_hash = hash;
                last_seq = seq;
                last_id = row_id;
            }
            if full {
                head_ahead = false;
                continue;
            }
            let (head_seq, head_hash) = read_head(
                self.fetch_optional(Sql::new(
                    "SELECT seq, hash FROM audit_chain_head WHERE id = 1",
                ))
                .await?,
            )?;
            if head_seq > last_seq {
                // Committed since the query above, or deleted from the tail.
                head_ahead = true;
                continue;
            }
            if head_seq < last_seq || head_hash != report.last_hash {
                break fault(last_seq, last_id, AuditChainFault::HeadMismatch);
            }
            let unlinked = self
                .fetch_optional(Sql::new(
                    "SELECT id FROM audit_events WHERE seq IS NULL ORDER BY id LIMIT 1",
                ))
                .await?;
            break match unlinked {
                Some(row) => fault(
                    0,
                    Uuid::parse_str(&row.text("id")?).ok(),
                    AuditChainFault::Unchained,
                ),
                None => None,
            };
        };
        report.last_seq = u64::try_from(last_seq).unwrap_or(0);
        report.first_break = first_break;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> StoredEvent {
        StoredEvent {
            id: "0190f2a4-0000-7000-8000-000000000001".into(),
            at: 1_767_225_600,
            subject: "alice".into(),
            source: Some("192.0.2.7".into()),
            action: "certificate.create".into(),
            target: "certificate/x".into(),
            outcome: "success".into(),
            details: r#"{"why":"test"}"#.into(),
        }
    }

    /// Pins the encoding: changing it would break every stored chain.
    #[test]
    fn link_hash_is_stable() {
        // Computed independently from the encoding documented on `link_bytes`.
        assert_eq!(
            link_hash(GENESIS, 1, &event()),
            "b08cbe8ea7b9b0701399db8b0defabd1e5b8e06e8000c231afa8088ebc74b9d7"
        );
    }

    /// Every field, the link and the position change the hash; moving text
    /// between adjacent fields or NULL to empty does too.
    #[test]
    fn every_field_counts() {
        let base = link_hash(GENESIS, 1, &event());
        let mut variants = vec![
            link_hash(GENESIS, 2, &event()),
            link_hash(&"1".repeat(64), 1, &event()),
        ];
        let edits: Vec<fn(&mut StoredEvent)> = vec![
            |e| e.id.push('0'),
            |e| e.at += 1,
            |e| e.subject.push('x'),
            |e| e.source = None,
            |e| e.source = Some(String::new()),
            |e| e.action.push('x'),
            |e| e.target.push('x'),
            |e| e.outcome = "failure".into(),
            |e| e.details = r#"{"why":"test2"}"#.into(),
            |e| {
                // "certificate.create" + "certificate/x" split differently.
                e.action = "certificate.createc".into();
                e.target = "ertificate/x".into();
            },
        ];
        for edit in edits {
            let mut e = event();
            edit(&mut e);
            variants.push(link_hash(GENESIS, 1, &e));
        }
        for v in &variants {
            assert_ne!(v, &base);
        }
        let mut unique = variants.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), variants.len());
    }
}
