//! The audit trail's hash chains (migrations 0004 and 0017): linking each
//! event as it is inserted, linking events from before 0004, and verifying.
//!
//! There are [`CHAINS`] independent chains. Each event has its `chain`, a
//! gapless `seq` within it (1, 2, 3...), the `hash` of the chain's event
//! before it as `prev_hash` ([`GENESIS`] for the first) and its own `hash`:
//! lower-case hex SHA-256 of [`link_bytes`]. The hash covers the chain number
//! and every stored column as the database holds it (details as its JSON
//! text), so verifying needs nothing but the rows. `UNIQUE (chain, seq)`
//! gives every position one event, so a chain cannot fork; triggers refuse
//! updates and deletes of events.
//!
//! `audit_chain_head` has one row per chain, a checkpoint: a link of the
//! chain fewer than [`checkpoint_every`] links behind its newest (64 on
//! PostgreSQL; 1 on SQLite, where it is always the newest). The write that
//! reaches a checkpoint moves it, in the write's transaction; triggers refuse
//! moving it back. `verify-audit` checks that each head names a link of its
//! chain, so the database alone shows a chain cut back past its checkpoint;
//! the last links after it are vouched for only by tips recorded elsewhere
//! (below). Before migration 0020 the head was rewritten with every event,
//! which on PostgreSQL was most of what the chain cost concurrent writers.
//!
//! A writer links its events under a lock on one chain, held to its commit,
//! and reads the chain's newest link from `audit_events` (index on `(chain,
//! seq)`). On PostgreSQL the lock is a transaction-level advisory lock
//! ([`CHAIN_LOCKS`]): the writer takes the lowest-numbered chain no other
//! transaction holds, so concurrent audited writes commit side by side
//! instead of one at a time; a transaction already holding a chain can
//! always take it again, so it never waits while holding one, and chain
//! locks cannot deadlock. SQLite's single writer always takes chain 0.
//!
//! A lone event on PostgreSQL is linked by one statement: it locks a free
//! chain, reads its newest link, hashes the chain's part of the link in the
//! database (`sha256()`) followed by the event's part encoded here, and
//! inserts the event, in one round trip. That statement's snapshot predates
//! its lock, so it can miss a link the chain's previous holder committed
//! just before: its insert then finds the position taken and does nothing
//! (`ON CONFLICT DO NOTHING`), and the writer links again after the newest
//! link, read afresh. Otherwise (a batch, every chain held, SQLite) the
//! writer reads the newest link, hashes the whole links here and inserts
//! them, all or none, unless a later link exists. The bytes hashed are the
//! same either way.
//!
//! Events written on their own (`append_audit`, not with a change) go
//! through a group commit ([`commit_audits`]): those that arrive while a
//! batch commits share the next transaction, one chain and one multi-row
//! `INSERT`, so that on PostgreSQL the chain's fixed cost (the lock, the
//! newest link, the hashing statement) and the commit are paid once a batch
//! instead of once an event.
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
use sqlx::Pool;
use uuid::Uuid;

use crate::codec::{audit_columns, id, secs};
use crate::error::{Violation, conflict, map};
use crate::group_commit::together_or_alone;
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

/// How far behind its chain's newest link a head may be: the head is moved
/// by the write that reaches a multiple of this (or passes one, in a batch).
/// On PostgreSQL rewriting the head row per event was most of what a chain
/// cost concurrent writers (a HOT update of a row 16 backends keep pinned);
/// SQLite's one writer moves it with every write, so there the head is
/// always the newest link, as before.
fn checkpoint_every<B: Backend>() -> i64 {
    if over_the_network::<B>() { 64 } else { 1 }
}

/// Whether a write that took its chain from `before_seq` to `after_seq` must
/// move the head.
fn passes_checkpoint<B: Backend>(before_seq: i64, after_seq: i64) -> bool {
    let every = checkpoint_every::<B>();
    before_seq.div_euclid(every) != after_seq.div_euclid(every)
}

/// The chains' PostgreSQL advisory locks are `CHAIN_LOCKS + chain` (one
/// bigint key each, "cfaudit\0" in ASCII): a writer holds its chain's until
/// its commit. Nothing else in the database should use these keys.
const CHAIN_LOCKS: i64 = 0x6366_6175_6469_7400;

/// The CTEs `c`, the lowest-numbered chain (0 to $2) whose advisory lock
/// ($1 + chain) no other transaction holds, now locked until the commit, and
/// `t`, its newest link read from `audit_events` ($3, [`GENESIS`], when it
/// has none). PostgreSQL only. The statement's snapshot is taken before the
/// lock, so `t` misses a link that the chain's previous holder committed in
/// between: the next link is then already taken, and the `UNIQUE (chain,
/// seq)` index refuses a second one, so the chain cannot fork.
macro_rules! free_chain_tip {
    () => {
        concat!(
            "c AS (SELECT g AS chain FROM generate_series(0, $2::bigint) AS g ",
            "WHERE pg_try_advisory_xact_lock($1 + g) LIMIT 1), ",
            "t AS (SELECT c.chain, coalesce(e.seq, 0) AS seq, coalesce(e.hash, $3) AS hash ",
            "FROM c LEFT JOIN LATERAL (SELECT seq, hash FROM audit_events ",
            "WHERE chain = c.chain AND seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS e ON true)"
        )
    };
}

/// Takes a free chain and reads its newest link (maybe stale, see
/// `free_chain_tip!`); no row when every chain is held.
const TAKE_FREE_CHAIN: &str = concat!(
    "WITH ",
    free_chain_tip!(),
    " SELECT chain, seq, hash FROM t"
);

/// [`insert_audit`]'s statement on PostgreSQL: takes a free chain, links
/// the event to the chain's newest link, and inserts it, in one round trip.
/// The database hashes [`link_bytes`]'s part that depends on the chain ($12
/// the tag, then the chain number, `prev_hash` and `seq` as [`encode`]
/// writes them) followed by [`event_bytes`] ($13). The row says which chain
/// was taken and whether the event went in: not when the newest link read
/// was stale (`ON CONFLICT (chain, seq) DO NOTHING`, so the transaction
/// lives on and retries on the chain it now holds). No row when every chain
/// is held.
const LINK_ON_A_FREE_CHAIN: &str = concat!(
    "WITH ",
    free_chain_tip!(),
    ", n AS (SELECT t.chain, t.seq + 1 AS seq, t.hash AS prev, encode(sha256($12 ",
    "|| int8send(t.chain) || int8send(octet_length(convert_to(t.hash, 'UTF8'))::bigint) ",
    "|| convert_to(t.hash, 'UTF8') || int8send(t.seq + 1) || $13), 'hex') AS hash FROM t), ",
    "i AS (INSERT INTO audit_events (",
    audit_columns!(),
    ", chain, seq, prev_hash, hash) ",
    "SELECT $4, $5, $6, $7, $8, $9, $10, $11, n.chain, n.seq, n.prev, n.hash FROM n ",
    "ON CONFLICT (chain, seq) DO NOTHING RETURNING 1) ",
    "SELECT chain, seq, hash, EXISTS (SELECT 1 FROM i) AS linked FROM n"
);

/// Whether the backend runs a write's statements over the network, with
/// concurrent writers: then writers take free chains under advisory locks,
/// and a lone event is linked by one statement. SQLite runs in process, has
/// no `sha256()`, data-modifying `WITH` or advisory locks, and its one
/// writer holds the whole database.
fn over_the_network<B: Backend>() -> bool {
    B::NAME == "PostgreSQL"
}

/// Locks `chain` until the commit, waiting for it if another transaction
/// holds it. SQLite's writer already holds everything.
async fn lock_chain<B: Backend>(conn: &mut B::Connection, chain: i64) -> DomainResult<()> {
    if over_the_network::<B>() {
        let sql = Sql::new("SELECT pg_advisory_xact_lock($1)").bind(CHAIN_LOCKS + chain);
        execute::<B>(conn, sql).await?;
    }
    Ok(())
}

/// The newest link of `chain` as committed when this statement starts: the
/// caller holds the chain, so nothing can follow it until the commit.
async fn read_tip<B: Backend>(conn: &mut B::Connection, chain: i64) -> DomainResult<Head> {
    let sql = Sql::new(
        "SELECT chain, seq, hash FROM audit_events WHERE chain = $1 AND seq IS NOT NULL \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(chain);
    match fetch_optional::<B>(conn, sql).await? {
        Some(row) => read_head(&row),
        None => Ok(Head {
            chain,
            seq: 0,
            hash: GENESIS.to_owned(),
        }),
    }
}

/// Takes a chain for the caller's write transaction, held until its commit,
/// and its newest link: the lowest-numbered chain no other transaction
/// holds, or, when all are held, the one `spread` picks, waiting for it.
/// SQLite's writer holds the whole database, so it always takes chain 0.
/// The link may be stale when the chain was free (`free_chain_tip!`).
async fn take_chain<B: Backend>(conn: &mut B::Connection, spread: u128) -> DomainResult<Head> {
    if !over_the_network::<B>() {
        return read_tip::<B>(conn, LEGACY_CHAIN).await;
    }
    let free = Sql::new(TAKE_FREE_CHAIN)
        .bind(CHAIN_LOCKS)
        .bind(CHAINS - 1)
        .bind(GENESIS);
    if let Some(row) = fetch_optional::<B>(conn, free).await? {
        return read_head(&row);
    }
    // Every chain is in a commit under way: queue behind one, spreading the
    // waiters so that each commit releases one of them. A transaction that
    // already holds a chain found it free above (advisory locks are
    // re-entrant), so it never waits while holding one: no deadlock.
    let chain = i64::try_from(spread % CHAINS.unsigned_abs() as u128).unwrap_or(LEGACY_CHAIN);
    lock_chain::<B>(conn, chain).await?;
    read_tip::<B>(conn, chain).await
}

/// Moves the head of `to.chain` forward onto `to`, a link of it.
async fn move_head<B: Backend>(conn: &mut B::Connection, to: &Head) -> DomainResult<()> {
    execute::<B>(conn, move_head_sql(to)).await
}

/// [`move_head`]'s statement.
fn move_head_sql(to: &Head) -> Sql {
    Sql::new("UPDATE audit_chain_head SET seq = $1, hash = $2 WHERE chain = $3 AND seq < $4")
        .bind(to.seq)
        .bind(to.hash.as_str())
        .bind(to.chain)
        .bind(to.seq)
}

/// Links and inserts `event` with [`LINK_ON_A_FREE_CHAIN`]: the link it
/// made and whether it went in, or `None`, having written nothing, when
/// every chain is held by another transaction.
async fn link_on_a_free_chain<B: Backend>(
    conn: &mut B::Connection,
    audit: &AuditEvent,
    event: &StoredEvent,
) -> DomainResult<Option<(Head, bool)>> {
    let sql = Sql::new(LINK_ON_A_FREE_CHAIN)
        .bind(CHAIN_LOCKS)
        .bind(CHAINS - 1)
        .bind(GENESIS)
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
    let row = B::fetch_optional(conn, sql)
        .await
        .map_err(|e| duplicate(e, &[audit]))?;
    row.map(|row| Ok((read_head(&row)?, row.boolean("linked")?)))
        .transpose()
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
/// in a write transaction: on PostgreSQL it holds that chain until the
/// commit, and only [`CHAINS`] audited writes can hold one at a time.
pub(crate) async fn insert_audit<B: Backend>(
    conn: &mut B::Connection,
    audit: &AuditEvent,
) -> DomainResult<()> {
    if over_the_network::<B>() {
        let event = StoredEvent::of(audit)?;
        match link_on_a_free_chain::<B>(conn, audit, &event).await? {
            Some((link, true)) => return checkpoint::<B>(conn, link.seq - 1, &link).await,
            Some((stale, false)) => {
                let tip = read_tip::<B>(conn, stale.chain).await?;
                return append_to::<B>(conn, tip, &[audit]).await;
            }
            None => {}
        }
    }
    insert_audits::<B>(conn, &[audit]).await
}

/// Appends `events`, in order, to one audit chain as its next links: one
/// chain taken, the links hashed here, one multi-row `INSERT`, for a group
/// commit's batch (or a lone event whose writer found every chain held, or
/// on SQLite).
pub(crate) async fn insert_audits<B: Backend>(
    conn: &mut B::Connection,
    audits: &[&AuditEvent],
) -> DomainResult<()> {
    let Some(first) = audits.first() else {
        return Ok(());
    };
    // A UUIDv7 ends in random bits: a free spread of the waiters.
    let tip = take_chain::<B>(conn, first.id.as_u128()).await?;
    append_to::<B>(conn, tip, audits).await
}

/// Commits a batch of lone audit events ([`MetadataStore::append_audit`]'s
/// group commit): in one transaction, one chain taken, one multi-row
/// `INSERT`; should that fail (an id already taken...), each event in a
/// transaction of its own, so that each gets the answer it would have had
/// alone and the others still commit.
///
/// [`MetadataStore::append_audit`]: certflow_core::ports::MetadataStore::append_audit
pub(crate) async fn commit_audits<B: Backend>(
    pool: Pool<B>,
    batch: Vec<AuditEvent>,
) -> Vec<DomainResult<()>> {
    let pool = &pool;
    together_or_alone(
        "audit events",
        &batch,
        |all| async move {
            append_events::<B>(pool, &all.iter().collect::<Vec<_>>()).await?;
            Ok(vec![(); all.len()])
        },
        |one| async move { append_events::<B>(pool, &[one]).await },
    )
    .await
}

/// How many batches of lone events may commit at once. On PostgreSQL two,
/// each on a chain of its own: one batch gathers while the other waits for
/// its commit, where with one the writers' throughput was bound by a batch's
/// round trips (BENCHMARKS.md, "lone events group-committed"); four cost
/// about 30 % more server CPU per event for a rate within the noise of two's.
/// SQLite's one writer connection would only make a second batch wait for
/// it, and smaller.
pub(crate) fn audit_lanes<B: Backend>() -> usize {
    if over_the_network::<B>() { 2 } else { 1 }
}

/// Links `audits` in a write transaction of their own and commits it.
async fn append_events<B: Backend>(pool: &Pool<B>, audits: &[&AuditEvent]) -> DomainResult<()> {
    let mut tx = pool.begin_with(B::BEGIN_WRITE).await.map_err(map)?;
    match audits {
        // A batch of one keeps the lone event's single statement on PostgreSQL.
        [one] => insert_audit::<B>(&mut tx, one).await?,
        all => insert_audits::<B>(&mut tx, all).await?,
    }
    tx.commit().await.map_err(map)
}

/// The statements that link `audits` into a chain, to run in a script
/// ([`crate::store::execute_all`]) with the rest of a batch's writes, which
/// cannot count the links that went in. On SQLite only: its one writer
/// reads the tip under the database's write lock, so it cannot be stale
/// and every link goes in; and should one not, the head, which moves with
/// every write there, refuses to move onto a link that is not there (its
/// trigger, migration 0019) and fails the script. `None` elsewhere: link
/// them with [`insert_audits`].
pub(crate) async fn audit_script<B: Backend>(
    conn: &mut B::Connection,
    audits: &[&AuditEvent],
) -> DomainResult<Option<Vec<Sql>>> {
    if !B::SCRIPTS || checkpoint_every::<B>() != 1 || audits.is_empty() {
        return Ok(None);
    }
    let tip = read_tip::<B>(conn, LEGACY_CHAIN).await?;
    let (rows, last) = links(&tip, audits)?;
    Ok(Some(vec![
        append_links_sql(&tip, rows),
        move_head_sql(&last),
    ]))
}

/// Links `audits` after `tip`, a chain the caller holds, inserts them and
/// moves the head if they pass a checkpoint. `tip` may be stale (read in the
/// statement that took the chain): then nothing is inserted, and the links
/// are made again after the newest link read now that the chain is held.
async fn append_to<B: Backend>(
    conn: &mut B::Connection,
    mut tip: Head,
    audits: &[&AuditEvent],
) -> DomainResult<()> {
    for _ in 0..2 {
        let (rows, last) = links(&tip, audits)?;
        let count = rows.len();
        let inserted = append_links::<B>(conn, &tip, rows)
            .await
            .map_err(|e| duplicate(e, audits))?;
        if inserted == count {
            return checkpoint::<B>(conn, tip.seq, &last).await;
        }
        tip = read_tip::<B>(conn, tip.chain).await?;
    }
    Err(DomainError::Integrity(format!(
        "audit chain {} moved while this transaction held it",
        tip.chain
    )))
}

/// The rows of `audits` linked after `tip`, and the last link.
fn links(tip: &Head, audits: &[&AuditEvent]) -> DomainResult<(Vec<Vec<Param>>, Head)> {
    let mut head = tip.clone();
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
    Ok((rows, head))
}

/// Moves the head onto `last` if the write from `before_seq` to it passed
/// a checkpoint ([`checkpoint_every`]).
async fn checkpoint<B: Backend>(
    conn: &mut B::Connection,
    before_seq: i64,
    last: &Head,
) -> DomainResult<()> {
    if passes_checkpoint::<B>(before_seq, last.seq) {
        move_head::<B>(conn, last).await?;
    }
    Ok(())
}

/// Inserts linked `rows` unless the chain has a link after `tip` (read
/// stale); how many went in, all or none. One statement on both backends.
async fn append_links<B: Backend>(
    conn: &mut B::Connection,
    tip: &Head,
    rows: Vec<Vec<Param>>,
) -> Result<usize, sqlx::Error> {
    Ok(B::fetch_all(conn, append_links_sql(tip, rows)).await?.len())
}

/// [`append_links`]'s statement: a row returned for each link inserted.
fn append_links_sql(tip: &Head, rows: Vec<Vec<Param>>) -> Sql {
    // Placeholders in order (the tip's last): SQLite then binds them by
    // position (`query::sqlite_placeholders`), in a script too.
    let mut sql = Sql::new(concat!(
        "INSERT INTO audit_events (",
        audit_columns!(),
        ", chain, seq, prev_hash, hash) SELECT * FROM ("
    ));
    sql.push_values(rows);
    sql.push(") AS v WHERE NOT EXISTS (SELECT 1 FROM audit_events WHERE chain = ")
        .push_bind(tip.chain)
        .push(" AND seq > ")
        .push_bind(tip.seq)
        .push(") RETURNING 1");
    sql
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
    /// once: each page locks chain 0 first, so they take turns.
    pub(crate) async fn link_unchained(&self) -> DomainResult<u64> {
        let mut linked = 0_u64;
        loop {
            let mut tx = self.begin_write().await?;
            lock_chain::<B>(&mut tx, LEGACY_CHAIN).await?;
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
            // The database checks each old event's link against the head
            // and moves it (migration 0017's update trigger), so the head,
            // a checkpoint, first catches up with the chain.
            let tip = read_tip::<B>(&mut tx, LEGACY_CHAIN).await?;
            move_head::<B>(&mut tx, &tip).await?;
            let Head {
                chain,
                mut seq,
                hash: mut prev,
            } = tip;
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
            if !self.head_on_chain(&walk, &head).await? {
                break Some(walk.fault(walk.seq, walk.id, AuditChainFault::HeadMismatch));
            }
            break None;
        };
        Ok(walk.tip(first_break))
    }

    /// Whether `head`, no further than the walk went, names one of the links
    /// it checked (a checkpoint at most [`checkpoint_every`] links behind the
    /// chain's newest).
    async fn head_on_chain(&self, walk: &Walk, head: &Head) -> DomainResult<bool> {
        if head.seq == walk.seq {
            return Ok(head.hash == walk.hash);
        }
        if head.seq <= 0 {
            return Ok(head.seq == 0 && head.hash == GENESIS);
        }
        let link = self
            .fetch_optional(
                Sql::new("SELECT hash FROM audit_events WHERE chain = $1 AND seq = $2")
                    .bind(head.chain)
                    .bind(head.seq),
            )
            .await?;
        Ok(match link {
            Some(row) => row.opt_text("hash")?.as_deref() == Some(head.hash.as_str()),
            None => false,
        })
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
