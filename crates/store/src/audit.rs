//! The audit trail's hash chains (migrations 0004 and 0017): linking each
//! event as it is inserted, linking events from before 0004, and verifying.
//!
//! There are [`CHAINS`] independent chains, one row each in
//! `audit_chain_head` (the chain's newest link). Each event has its `chain`, a
//! gapless `seq` within it (1, 2, 3...), the `hash` of the chain's event
//! before it as `prev_hash` ([`GENESIS`] for the first) and its own `hash`:
//! lower-case hex SHA-256 of [`link_bytes`]. The hash covers the chain number
//! and every stored column as the database holds it (details as its JSON
//! text), so verifying needs nothing but the rows. Triggers refuse updates and
//! deletes of events and moving a head back; the writer moves the head onto
//! its events in the same transaction (migration 0019), on PostgreSQL in the
//! same statement.
//!
//! A writer links its event under a lock on one head, held to its commit. On
//! PostgreSQL it takes the lowest-numbered head no other transaction holds
//! (`FOR UPDATE SKIP LOCKED`), so concurrent audited writes commit side by
//! side instead of one at a time; a transaction already holding a head can
//! always take it again, so it never waits while holding one, and head locks
//! cannot deadlock. SQLite's single writer always finds chain 0 first.
//!
//! A lone event on PostgreSQL is linked by one statement: it locks a free
//! head, hashes the head's part of the link in the database (`sha256()`)
//! followed by the event's part encoded here, inserts the event and moves the
//! head, in one round trip. Otherwise (a batch, every head held, SQLite) the
//! writer reads the head, hashes the whole links here, inserts them and moves
//! the head. The bytes hashed are the same either way.
//!
//! Links made before migration 0017 are chain 0's prefix, hashed without the
//! chain number ([`legacy_link_bytes`]); verification accepts that encoding in
//! chain 0 only until the first link in the current one.
//!
//! The chains make tampering evident, not impossible: someone who can disable
//! the triggers can also rewrite every later link of a chain. Recording every
//! chain's [`AuditChainTip`] (seq and hash) outside the database closes that
//! gap. Order across chains is not protected, only within each: the trail is
//! listed by time and id, as before.

use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use certflow_core::model::{
    AuditChainBreak, AuditChainFault, AuditChainReport, AuditChainTip, AuditEvent,
};
use uuid::Uuid;

use crate::codec::{audit_columns, id, secs};
use crate::error::{Violation, conflict, map};
use crate::query::{Backend, Columns, Param, Sql};
use crate::store::{SqlStore, execute, fetch_all, fetch_optional};

/// `prev_hash` of each chain's first event.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Number of chains: `audit_chain_head` has one row for each of 0..CHAINS
/// (migration 0017), so at most this many audited writes commit at once.
pub(crate) const CHAINS: i64 = 16;

/// Chain events from before migration 0004 are linked into.
const LEGACY_CHAIN: i64 = 0;

/// Rows read per query when verifying or linking old events.
const PAGE: i64 = 1000;

/// Domain separation of the hash input, versioned with the encoding.
const TAG: &[u8] = b"certflow.audit-chain.v2\0";

/// The tag of links made before migration 0017, which have no chain number.
const LEGACY_TAG: &[u8] = b"certflow.audit-chain.v1\0";

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

/// The hashed bytes of one link (encoding v2): [`TAG`], the chain number,
/// then `prev_hash`, `seq` and every column in `audit_columns` order. Texts
/// are length-prefixed (u64 big-endian) so no two different rows encode
/// alike; integers are 8 bytes big-endian; the nullable `source` is a 0 byte
/// when NULL, else a 1 byte and the text.
pub(crate) fn link_bytes(chain: i64, prev_hash: &str, seq: i64, e: &StoredEvent) -> Vec<u8> {
    encode(TAG, Some(chain), prev_hash, seq, e)
}

/// The hashed bytes of a link made before migration 0017 (encoding v1): as
/// [`link_bytes`] with [`LEGACY_TAG`] and no chain number.
pub(crate) fn legacy_link_bytes(prev_hash: &str, seq: i64, e: &StoredEvent) -> Vec<u8> {
    encode(LEGACY_TAG, None, prev_hash, seq, e)
}

fn encode(tag: &[u8], chain: Option<i64>, prev_hash: &str, seq: i64, e: &StoredEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + e.details.len());
    out.extend_from_slice(tag);
    if let Some(chain) = chain {
        out.extend_from_slice(&chain.to_be_bytes());
    }
    text(&mut out, prev_hash);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&event_bytes(e));
    out
}

/// A length-prefixed text of the encoding.
fn text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The end of [`link_bytes`] after `seq`: the event's own columns, which do
/// not depend on the chain. [`LINK_ON_A_FREE_HEAD`] hashes the head's part
/// in the database and appends these.
fn event_bytes(e: &StoredEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + e.details.len());
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

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// Lower-case hex SHA-256 of [`link_bytes`].
pub(crate) fn link_hash(chain: i64, prev_hash: &str, seq: i64, e: &StoredEvent) -> String {
    sha256_hex(&link_bytes(chain, prev_hash, seq, e))
}

/// Lower-case hex SHA-256 of [`legacy_link_bytes`].
pub(crate) fn legacy_link_hash(prev_hash: &str, seq: i64, e: &StoredEvent) -> String {
    sha256_hex(&legacy_link_bytes(prev_hash, seq, e))
}

/// A chain's newest link: `seq` 0 and [`GENESIS`] while the chain is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) chain: i64,
    pub(crate) seq: i64,
    pub(crate) hash: String,
}

fn read_head(row: &impl Columns) -> DomainResult<Head> {
    Ok(Head {
        chain: row.int("chain")?,
        seq: row.int("seq")?,
        hash: row.text("hash")?,
    })
}

fn missing_head(chain: i64) -> DomainError {
    DomainError::Integrity(format!(
        "the head of audit chain {chain} (audit_chain_head) is missing"
    ))
}

/// Locks and reads a head for the caller's write transaction, held until
/// its commit: the lowest-numbered one no other transaction holds, or, when
/// all are held, the one `spread` picks, waiting for it. SQLite's writer
/// holds the whole database, so it always gets chain 0 at once.
pub(crate) async fn take_head<B: Backend>(
    conn: &mut B::Connection,
    spread: u128,
) -> DomainResult<Head> {
    let mut free = Sql::new("SELECT chain, seq, hash FROM audit_chain_head ORDER BY chain LIMIT 1");
    free.push(B::SKIP_LOCKED);
    if let Some(row) = fetch_optional::<B>(conn, free).await? {
        return read_head(&row);
    }
    // Every head is in a commit under way: queue behind one, spreading the
    // waiters so that each commit releases one of them.
    let chain = i64::try_from(spread % CHAINS.unsigned_abs() as u128).unwrap_or(LEGACY_CHAIN);
    lock_head::<B>(conn, chain).await
}

/// Locks and reads the head of `chain` until the commit, waiting for it if
/// another transaction holds it.
async fn lock_head<B: Backend>(conn: &mut B::Connection, chain: i64) -> DomainResult<Head> {
    let mut sql = Sql::new("SELECT chain, seq, hash FROM audit_chain_head WHERE chain = $1");
    sql.push(B::FOR_UPDATE);
    match fetch_optional::<B>(conn, sql.bind(chain)).await? {
        Some(row) => read_head(&row),
        None => Err(missing_head(chain)),
    }
}

/// [`insert_audit`]'s statement on PostgreSQL: takes the lowest free head,
/// links the event to it, inserts it and moves the head onto it, in one
/// round trip instead of two (reading the head, then writing). The database
/// hashes [`link_bytes`]'s part that depends on the head ($9 the tag, then
/// the chain number, `prev_hash` and `seq` as [`encode`] writes them)
/// followed by [`event_bytes`] ($10). No row when every head is held.
const LINK_ON_A_FREE_HEAD: &str = concat!(
    "WITH h AS (SELECT chain, seq + 1 AS seq, hash AS prev FROM audit_chain_head ",
    "ORDER BY chain LIMIT 1 FOR UPDATE SKIP LOCKED), ",
    "n AS (SELECT chain, seq, prev, encode(sha256($9 || int8send(chain) ",
    "|| int8send(octet_length(convert_to(prev, 'UTF8'))::bigint) ",
    "|| convert_to(prev, 'UTF8') || int8send(seq) || $10), 'hex') AS hash FROM h), ",
    "u AS (UPDATE audit_chain_head a SET seq = n.seq, hash = n.hash FROM n ",
    "WHERE a.chain = n.chain) ",
    "INSERT INTO audit_events (",
    audit_columns!(),
    ", chain, seq, prev_hash, hash) ",
    "SELECT $1, $2, $3, $4, $5, $6, $7, $8, n.chain, n.seq, n.prev, n.hash FROM n ",
    "RETURNING chain"
);

/// Whether the backend runs a write's statements over the network: then a
/// lone event is linked by one statement that also takes the head, and the
/// head moves in the insert's statement. SQLite runs in process, has no
/// `sha256()` or data-modifying `WITH`, and its one writer always finds
/// chain 0 free.
fn over_the_network<B: Backend>() -> bool {
    B::NAME == "PostgreSQL"
}

/// Links and inserts `event` with [`LINK_ON_A_FREE_HEAD`]; false, having
/// written nothing, when every head is held by another transaction.
async fn link_on_a_free_head<B: Backend>(
    conn: &mut B::Connection,
    audit: &AuditEvent,
    event: &StoredEvent,
) -> DomainResult<bool> {
    let sql = Sql::new(LINK_ON_A_FREE_HEAD)
        .bind(event.id.as_str())
        .bind(event.at)
        .bind(event.subject.as_str())
        .bind(event.source.as_deref())
        .bind(event.action.as_str())
        .bind(event.target.as_str())
        .bind(event.outcome.as_str())
        .bind(event.details.as_str())
        .bind(Some(TAG))
        .bind(Some(event_bytes(event).as_slice()));
    let linked = B::fetch_optional(conn, sql)
        .await
        .map_err(|e| duplicate(e, &[audit]))?;
    Ok(linked.is_some())
}

/// A duplicate event id as a conflict naming the events, any other error as
/// it is.
fn duplicate(e: sqlx::Error, audits: &[&AuditEvent]) -> DomainError {
    conflict(e, |v| {
        (v == Violation::PrimaryKey).then(|| {
            let ids: Vec<String> = audits.iter().map(|a| a.id.to_string()).collect();
            format!("audit event {} already exists", ids.join(" or "))
        })
    })
}

/// Appends `event` to one of the audit chains as its next link. Call it last
/// in a write transaction: on PostgreSQL it holds that chain's head until the
/// commit, and only [`CHAINS`] audited writes can hold one at a time.
pub(crate) async fn insert_audit<B: Backend>(
    conn: &mut B::Connection,
    audit: &AuditEvent,
) -> DomainResult<()> {
    if over_the_network::<B>() {
        let event = StoredEvent::of(audit)?;
        if link_on_a_free_head::<B>(conn, audit, &event).await? {
            return Ok(());
        }
    }
    insert_audits::<B>(conn, &[audit]).await
}

/// Appends `events`, in order, to one audit chain as its next links: one
/// head taken, the links hashed here, one multi-row `INSERT` and the head
/// moved onto the last, for a group commit's batch (or a lone event whose
/// writer found every head held, or on SQLite).
pub(crate) async fn insert_audits<B: Backend>(
    conn: &mut B::Connection,
    audits: &[&AuditEvent],
) -> DomainResult<()> {
    let Some(first) = audits.first() else {
        return Ok(());
    };
    // A UUIDv7 ends in random bits: a free spread of the waiters.
    let before = take_head::<B>(conn, first.id.as_u128()).await?;
    let mut head = before.clone();
    let mut rows = Vec::with_capacity(audits.len());
    for audit in audits {
        let event = StoredEvent::of(audit)?;
        let seq = head.seq + 1;
        let hash = link_hash(head.chain, &head.hash, seq, &event);
        rows.push(vec![
            Param::from(event.id),
            Param::from(event.at),
            Param::from(event.subject),
            Param::from(event.source.as_deref()),
            Param::from(event.action),
            Param::from(event.target),
            Param::from(event.outcome),
            Param::from(event.details),
            Param::from(head.chain),
            Param::from(seq),
            Param::from(std::mem::replace(&mut head.hash, hash.clone())),
            Param::from(hash),
        ]);
        head.seq = seq;
    }
    let moved = append_links::<B>(conn, &before, &head, rows)
        .await
        .map_err(|e| duplicate(e, audits))?;
    if moved {
        Ok(())
    } else {
        Err(DomainError::Integrity(format!(
            "the head of audit chain {} moved while locked",
            before.chain
        )))
    }
}

/// Inserts linked `rows` and moves the head from `before` to `after` (its
/// last row): in one statement on PostgreSQL, insert then move on SQLite.
/// The head move names the head it read; false if that head moved under its
/// lock (then the caller's transaction must not commit).
async fn append_links<B: Backend>(
    conn: &mut B::Connection,
    before: &Head,
    after: &Head,
    rows: Vec<Vec<Param>>,
) -> Result<bool, sqlx::Error> {
    let count = rows.len();
    let moved = if over_the_network::<B>() {
        let mut sql = Sql::new(
            "WITH u AS (UPDATE audit_chain_head SET seq = $1, hash = $2 \
             WHERE chain = $3 AND seq = $4 AND hash = $5 RETURNING chain) \
             INSERT INTO audit_events (",
        );
        sql.push(concat!(
            audit_columns!(),
            ", chain, seq, prev_hash, hash) SELECT v.* FROM ("
        ));
        let mut sql = move_head(sql, before, after);
        sql.push_values(rows);
        sql.push(concat!(
            ") AS v (",
            audit_columns!(),
            ", chain, seq, prev_hash, hash) WHERE EXISTS (SELECT 1 FROM u) RETURNING 1"
        ));
        B::fetch_all(conn, sql).await?.len() == count
    } else {
        let mut insert = Sql::new(concat!(
            "INSERT INTO audit_events (",
            audit_columns!(),
            ", chain, seq, prev_hash, hash)"
        ));
        insert.push_values(rows);
        B::execute(conn, insert).await?;
        let sql = Sql::new(
            "UPDATE audit_chain_head SET seq = $1, hash = $2 \
             WHERE chain = $3 AND seq = $4 AND hash = $5 RETURNING chain",
        );
        B::fetch_optional(conn, move_head(sql, before, after))
            .await?
            .is_some()
    };
    Ok(moved)
}

/// Binds $1 to $5 of a head move from `before` to `after`.
fn move_head(sql: Sql, before: &Head, after: &Head) -> Sql {
    sql.bind(after.seq)
        .bind(after.hash.as_str())
        .bind(before.chain)
        .bind(before.seq)
        .bind(before.hash.as_str())
}

/// Links audit events from before migration 0004 when a store opens.
pub(crate) async fn link_unchained<B: Backend>(store: &SqlStore<B>) -> DomainResult<()> {
    let linked = store.link_unchained().await?;
    if linked > 0 {
        tracing::info!(linked, "linked audit events from before the audit chain");
    }
    Ok(())
}

/// One chain's walk: the last link checked and how to check the next.
struct Walk {
    chain: i64,
    /// Seq of the last row checked (0 before the first).
    seq: i64,
    hash: String,
    id: Option<Uuid>,
    /// Still in chain 0's prefix of links made before migration 0017.
    legacy: bool,
}

impl Walk {
    fn new(chain: i64) -> Self {
        Self {
            chain,
            seq: 0,
            hash: GENESIS.to_owned(),
            id: None,
            legacy: chain == LEGACY_CHAIN,
        }
    }

    fn fault(&self, seq: i64, id: Option<Uuid>, reason: AuditChainFault) -> AuditChainBreak {
        AuditChainBreak {
            chain: u32::try_from(self.chain).unwrap_or(0),
            seq: u64::try_from(seq).unwrap_or(0),
            id,
            reason,
        }
    }

    /// Checks the next row of the chain and moves past it, or says why not.
    fn step(&mut self, row: &impl Columns) -> DomainResult<Option<AuditChainBreak>> {
        let event = StoredEvent::read(row)?;
        let row_id = Uuid::parse_str(&event.id).ok();
        let seq = row.int("seq")?;
        if seq != self.seq + 1 {
            return Ok(Some(self.fault(
                self.seq + 1,
                row_id,
                AuditChainFault::SeqGap,
            )));
        }
        if row.opt_text("prev_hash")?.as_deref() != Some(self.hash.as_str()) {
            return Ok(Some(self.fault(
                seq,
                row_id,
                AuditChainFault::PrevHashMismatch,
            )));
        }
        let hash = row.opt_text("hash")?.unwrap_or_default();
        if !(self.legacy && legacy_link_hash(&self.hash, seq, &event) == hash) {
            if link_hash(self.chain, &self.hash, seq, &event) != hash {
                return Ok(Some(self.fault(seq, row_id, AuditChainFault::HashMismatch)));
            }
            self.legacy = false;
        }
        self.seq = seq;
        self.hash = hash;
        self.id = row_id;
        Ok(None)
    }

    fn tip(self, first_break: Option<AuditChainBreak>) -> AuditChainTip {
        AuditChainTip {
            chain: u32::try_from(self.chain).unwrap_or(0),
            last_seq: u64::try_from(self.seq).unwrap_or(0),
            last_hash: self.hash,
            first_break,
        }
    }
}

impl<B: Backend> SqlStore<B> {
    /// Links the events written before migration 0004 (seq still NULL) into
    /// chain 0, in id order, a page per transaction; does nothing once all
    /// are linked. Runs when the store opens. Several replicas may run it at
    /// once: each page locks chain 0's head first, so they take turns.
    pub(crate) async fn link_unchained(&self) -> DomainResult<u64> {
        let mut linked = 0_u64;
        loop {
            let mut tx = self.begin_write().await?;
            let Head {
                chain,
                mut seq,
                hash: mut prev,
            } = lock_head::<B>(&mut tx, LEGACY_CHAIN).await?;
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
                let hash = link_hash(chain, &prev, seq, &event);
                execute::<B>(
                    &mut tx,
                    Sql::new(
                        "UPDATE audit_events SET chain = $1, seq = $2, prev_hash = $3, hash = $4 \
                         WHERE id = $5 AND seq IS NULL",
                    )
                    .bind(chain)
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

    /// Walks every chain, then looks for rows outside all of them.
    pub(crate) async fn verify_chain(&self) -> DomainResult<AuditChainReport> {
        let mut report = AuditChainReport {
            checked: 0,
            chains: Vec::new(),
            first_break: None,
        };
        for chain in 0..CHAINS {
            let tip = self.verify_one_chain(chain).await?;
            report.checked += tip.last_seq;
            report.chains.push(tip);
        }
        report.first_break = match report.chains.iter().find_map(|t| t.first_break.clone()) {
            Some(first) => Some(first),
            None => self.stray_row().await?,
        };
        Ok(report)
    }

    /// Walks one chain in `seq` order, [`PAGE`] rows a query (no long
    /// transaction: linked rows never change, and a row commits with the head
    /// that names it), then checks the chain's head.
    async fn verify_one_chain(&self, chain: i64) -> DomainResult<AuditChainTip> {
        let mut walk = Walk::new(chain);
        // Rows after this seq are read next; it starts below any seq so that
        // a row numbered 0 or less is found as a gap too.
        let mut after = i64::MIN;
        // Set when the head named rows the last query had not seen: the next
        // query must find them, or they are missing.
        let mut head_ahead = false;
        let first_break = 'walk: loop {
            let rows = self
                .fetch_all(
                    Sql::new(concat!(
                        "SELECT ",
                        audit_columns!(),
                        ", seq, prev_hash, hash FROM audit_events \
                         WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                    ))
                    .bind(chain)
                    .bind(after)
                    .bind(PAGE),
                )
                .await?;
            if rows.is_empty() && head_ahead {
                break Some(walk.fault(walk.seq + 1, None, AuditChainFault::SeqGap));
            }
            let full = rows.len() as i64 == PAGE;
            for row in &rows {
                if let Some(fault) = walk.step(row)? {
                    break 'walk Some(fault);
                }
                after = walk.seq;
            }
            if full {
                head_ahead = false;
                continue;
            }
            let head = self
                .fetch_optional(
                    Sql::new("SELECT chain, seq, hash FROM audit_chain_head WHERE chain = $1")
                        .bind(chain),
                )
                .await?;
            let Some(head) = head.as_ref().map(read_head).transpose()? else {
                break Some(walk.fault(walk.seq, walk.id, AuditChainFault::HeadMismatch));
            };
            if head.seq > walk.seq {
                // Committed since the query above, or deleted from the tail.
                head_ahead = true;
                continue;
            }
            if head.seq < walk.seq || head.hash != walk.hash {
                break Some(walk.fault(walk.seq, walk.id, AuditChainFault::HeadMismatch));
            }
            break None;
        };
        Ok(walk.tip(first_break))
    }

    /// A row no chain covers: still unlinked (seq NULL, the oldest first), or
    /// naming a chain there is not.
    async fn stray_row(&self) -> DomainResult<Option<AuditChainBreak>> {
        let unlinked = self
            .fetch_optional(Sql::new(
                "SELECT id FROM audit_events WHERE seq IS NULL ORDER BY id LIMIT 1",
            ))
            .await?;
        let stray = match unlinked {
            Some(row) => Some(row),
            None => {
                self.fetch_optional(
                    Sql::new(
                        "SELECT id FROM audit_events \
                         WHERE chain IS NULL OR chain < 0 OR chain >= $1 LIMIT 1",
                    )
                    .bind(CHAINS),
                )
                .await?
            }
        };
        stray
            .map(|row| {
                Ok(AuditChainBreak {
                    chain: 0,
                    seq: 0,
                    id: Uuid::parse_str(&row.text("id")?).ok(),
                    reason: AuditChainFault::Unchained,
                })
            })
            .transpose()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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

    /// Pins both encodings: changing either would break stored chains.
    #[test]
    fn link_hash_is_stable() {
        // Computed independently from the encodings documented on
        // `link_bytes` and `legacy_link_bytes`.
        assert_eq!(
            legacy_link_hash(GENESIS, 1, &event()),
            "b08cbe8ea7b9b0701399db8b0defabd1e5b8e06e8000c231afa8088ebc74b9d7"
        );
        assert_eq!(
            link_hash(0, GENESIS, 1, &event()),
            "c859c30d9021a4e2f40095992ffb4f021210a0678071328ac7d1c4079c08d246"
        );
        assert_eq!(
            link_hash(5, GENESIS, 1, &event()),
            "16275ec3ee9b07fcb498da136dbd096d9c34b3f669fd03d257bf057ad00f557f"
        );
    }

    /// The split [`LINK_ON_A_FREE_HEAD`] relies on: the head's part (tag,
    /// chain, length-prefixed `prev_hash`, `seq`), then [`event_bytes`].
    #[test]
    fn link_bytes_end_with_the_event() {
        let e = event();
        let mut bytes = TAG.to_vec();
        bytes.extend_from_slice(&7_i64.to_be_bytes());
        bytes.extend_from_slice(&64_u64.to_be_bytes());
        bytes.extend_from_slice(GENESIS.as_bytes());
        bytes.extend_from_slice(&3_i64.to_be_bytes());
        bytes.extend(event_bytes(&e));
        assert_eq!(link_bytes(7, GENESIS, 3, &e), bytes);
    }

    /// Every field, the link, the position and the chain change the hash
    /// (so a chain's first link cannot pass for another chain's); moving
    /// text between adjacent fields or NULL to empty does too.
    #[test]
    fn every_field_counts() {
        let base = link_hash(0, GENESIS, 1, &event());
        let mut variants = vec![
            link_hash(0, GENESIS, 2, &event()),
            link_hash(0, &"1".repeat(64), 1, &event()),
            link_hash(1, GENESIS, 1, &event()),
            link_hash(CHAINS - 1, GENESIS, 1, &event()),
            legacy_link_hash(GENESIS, 1, &event()),
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
            variants.push(link_hash(0, GENESIS, 1, &e));
        }
        for v in &variants {
            assert_ne!(v, &base);
        }
        let mut unique = variants.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), variants.len());
    }

    fn row(chain: i64, seq: i64, prev: &str, hash: &str) -> TestRow {
        TestRow {
            event: event(),
            chain,
            seq,
            prev: prev.to_owned(),
            hash: hash.to_owned(),
        }
    }

    /// Chain 0 accepts links without the chain number (made before
    /// migration 0017) only before its first current one.
    #[test]
    fn legacy_links_only_open_chain_zero() {
        let e = event();
        let v1 = legacy_link_hash(GENESIS, 1, &e);
        let mut walk = Walk::new(0);
        assert_eq!(walk.step(&row(0, 1, GENESIS, &v1)).unwrap(), None);
        let v2 = link_hash(0, &v1, 2, &e);
        assert_eq!(walk.step(&row(0, 2, &v1, &v2)).unwrap(), None);
        let late_v1 = legacy_link_hash(&v2, 3, &e);
        let b = walk.step(&row(0, 3, &v2, &late_v1)).unwrap().unwrap();
        assert_eq!(
            (b.chain, b.seq, b.reason),
            (0, 3, AuditChainFault::HashMismatch)
        );

        let mut other = Walk::new(3);
        let b = other.step(&row(3, 1, GENESIS, &v1)).unwrap().unwrap();
        assert_eq!(
            (b.chain, b.seq, b.reason),
            (3, 1, AuditChainFault::HashMismatch)
        );
        let v2 = link_hash(3, GENESIS, 1, &e);
        assert_eq!(other.step(&row(3, 1, GENESIS, &v2)).unwrap(), None);
        assert_eq!(other.tip(None).last_hash, v2);
    }

    /// A row as the verifier reads it.
    struct TestRow {
        event: StoredEvent,
        chain: i64,
        seq: i64,
        prev: String,
        hash: String,
    }

    impl Columns for TestRow {
        fn text(&self, col: &str) -> DomainResult<String> {
            self.opt_text(col)?
                .ok_or_else(|| DomainError::Internal(format!("{col} is NULL")))
        }

        fn opt_text(&self, col: &str) -> DomainResult<Option<String>> {
            let e = &self.event;
            Ok(match col {
                "id" => Some(e.id.clone()),
                "subject" => Some(e.subject.clone()),
                "source" => e.source.clone(),
                "action" => Some(e.action.clone()),
                "target" => Some(e.target.clone()),
                "outcome" => Some(e.outcome.clone()),
                "details" => Some(e.details.clone()),
                "prev_hash" => Some(self.prev.clone()),
                "hash" => Some(self.hash.clone()),
                _ => return Err(DomainError::Internal(format!("no text column {col}"))),
            })
        }

        fn int(&self, col: &str) -> DomainResult<i64> {
            match col {
                "at" => Ok(self.event.at),
                "chain" => Ok(self.chain),
                "seq" => Ok(self.seq),
                _ => Err(DomainError::Internal(format!("no integer column {col}"))),
            }
        }

        fn opt_int(&self, col: &str) -> DomainResult<Option<i64>> {
            self.int(col).map(Some)
        }

        fn real(&self, col: &str) -> DomainResult<f64> {
            Err(DomainError::Internal(format!("no real column {col}")))
        }

        fn boolean(&self, col: &str) -> DomainResult<bool> {
            Err(DomainError::Internal(format!("no boolean column {col}")))
        }

        fn opt_bytes(&self, col: &str) -> DomainResult<Option<Vec<u8>>> {
            Err(DomainError::Internal(format!("no bytes column {col}")))
        }
    }
}
