//! Tampering with the audit trail behind the store's back, as someone with
//! the database's own credentials would: the triggers refuse it; with them
//! out of the way, `verify_audit_chain` names the first broken link. Needs a
//! second connection, so SQLite runs on a file (a memory database is private
//! to its one connection).

use std::borrow::Cow;
use std::time::Duration;

use certflow_core::DomainError;
use certflow_core::model::{
    Actor, AuditChainBreak, AuditChainFault, AuditEvent, AuditQuery, Outcome,
};
use certflow_core::ports::MetadataStore;
use certflow_store::{PgOptions, PgStore, SqliteStore};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, SqlSafeStr, SqliteConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::support::pg::TestDb;

/// Defines a tampering case and registers it on the backends that can be
/// tampered with from a second connection: `<case>::sqlite_file` and
/// `<case>::postgres`. The case gets the store and a direct connection to
/// its database.
macro_rules! tamper_case {
    ($(#[$attr:meta])* async fn $case:ident $($signature_and_body:tt)*) => {
        $(#[$attr])*
        async fn $case $($signature_and_body)*

        mod $case {
            #[tokio::test]
            async fn sqlite_file() {
                let (store, mut raw, _guard) = super::sqlite().await;
                super::$case(&store, &mut raw).await;
            }

            #[tokio::test]
            async fn postgres() {
                let (store, mut raw, _guard) = super::pg().await;
                super::$case(&store, &mut raw).await;
            }
        }
    };
}

/// A direct connection to the store's database.
pub enum Raw {
    Sqlite(SqliteConnection),
    Pg(PgConnection),
}

impl Raw {
    async fn exec(&mut self, sql: &str) -> Result<(), String> {
        let sql = AssertSqlSafe(sql.to_owned());
        match self {
            Raw::Sqlite(c) => c.execute(sql).await.map(drop),
            Raw::Pg(c) => c.execute(sql).await.map(drop),
        }
        .map_err(|e| e.to_string())
    }

    async fn must_fail(&mut self, sql: &str) -> String {
        match self.exec(sql).await {
            Ok(()) => panic!("{sql} succeeded"),
            Err(e) => e,
        }
    }

    async fn ids_in_seq_order(&mut self) -> Vec<Uuid> {
        let sql = "SELECT id FROM audit_events ORDER BY chain, seq";
        let ids: Vec<String> = match self {
            Raw::Sqlite(c) => sqlx::query_scalar(sql).fetch_all(c).await,
            Raw::Pg(c) => sqlx::query_scalar(sql).fetch_all(c).await,
        }
        .unwrap();
        ids.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// `(seq, hash)` of the head of `chain`.
    async fn head(&mut self, chain: i64) -> (i64, String) {
        let sql = format!("SELECT seq, hash FROM audit_chain_head WHERE chain = {chain}");
        match self {
            Raw::Sqlite(c) => sqlx::query_as(AssertSqlSafe(sql)).fetch_one(c).await,
            Raw::Pg(c) => sqlx::query_as(AssertSqlSafe(sql)).fetch_one(c).await,
        }
        .unwrap()
    }

    /// The hash of link `seq` of `chain`, or the genesis hash for 0.
    async fn hash_at(&mut self, chain: i64, seq: i64) -> String {
        if seq == 0 {
            return "0".repeat(64);
        }
        let sql = format!("SELECT hash FROM audit_events WHERE chain = {chain} AND seq = {seq}");
        match self {
            Raw::Sqlite(c) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(c).await,
            Raw::Pg(c) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(c).await,
        }
        .unwrap()
    }

    /// What an attacker with the database's credentials does first.
    async fn drop_guards(&mut self) {
        let statements: &[&str] = match self {
            Raw::Sqlite(_) => &[
                "DROP TRIGGER audit_events_linked",
                "DROP TRIGGER audit_events_no_update",
                "DROP TRIGGER audit_events_no_delete",
                "DROP TRIGGER audit_events_advance_on_link",
                "DROP TRIGGER audit_chain_head_forward",
                "DROP TRIGGER audit_chain_head_no_insert",
                "DROP TRIGGER audit_chain_head_no_delete",
            ],
            Raw::Pg(_) => &[
                "ALTER TABLE audit_events DISABLE TRIGGER USER",
                "ALTER TABLE audit_events DROP CONSTRAINT audit_events_linked",
                "ALTER TABLE audit_chain_head DISABLE TRIGGER USER",
            ],
        };
        for sql in statements {
            self.exec(sql).await.unwrap();
        }
    }
}

async fn sqlite() -> (SqliteStore, Raw, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certflow.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let raw = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    (store, Raw::Sqlite(raw), dir)
}

async fn pg() -> (PgStore, Raw, TestDb) {
    let db = TestDb::create().await;
    let store = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .unwrap();
    let raw = db.connect().await;
    (store, Raw::Pg(raw), db)
}

fn event(i: u32) -> AuditEvent {
    AuditEvent::success(
        OffsetDateTime::from_unix_timestamp(1_767_225_600 + i64::from(i)).unwrap(),
        &Actor {
            subject: "alice".into(),
            source: Some("192.0.2.7".into()),
        },
        "certificate.download",
        format!("certificate/{i}"),
        serde_json::json!({ "i": i }),
    )
}

/// Appends `n` events; their ids in chain order.
async fn seed(store: &dyn MetadataStore, n: u32) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let e = event(i);
        store.append_audit(&e).await.unwrap();
        ids.push(e.id);
    }
    ids
}

async fn broken_at(store: &dyn MetadataStore, checked: u64) -> AuditChainBreak {
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(report.checked, checked, "{report:?}");
    report.first_break.expect("a break")
}

tamper_case! {
    async fn guards_refuse_changes(store: &dyn MetadataStore, raw: &mut Raw) {
        seed(store, 3).await;
        for sql in [
            "UPDATE audit_events SET details = '{}' WHERE seq = 2",
            "UPDATE audit_events SET outcome = 'failure'",
            "UPDATE audit_events SET seq = NULL, prev_hash = NULL, hash = NULL WHERE seq = 3",
            "DELETE FROM audit_events WHERE seq = 2",
            "DELETE FROM audit_events",
            // Writing around the store without a link.
            "INSERT INTO audit_events (id, at, subject, action, target, outcome, details) \
             VALUES ('x', 0, 's', 'a', 't', 'success', '{}')",
            "INSERT INTO audit_events (id, at, subject, action, target, outcome, details, seq, \
             prev_hash, hash) VALUES ('x', 0, 's', 'a', 't', 'success', '{}', 4, 'p', 'h')",
            "UPDATE audit_events SET chain = 1 WHERE seq = 3",
            // A head moving back.
            "UPDATE audit_chain_head SET seq = seq - 1 WHERE chain = 0",
            "UPDATE audit_chain_head SET chain = 1 WHERE chain = 0",
            "DELETE FROM audit_chain_head",
            "DELETE FROM audit_chain_head WHERE chain = 15",
            "INSERT INTO audit_chain_head (chain, seq, hash) VALUES (16, 0, 'x')",
        ] {
            let error = raw.must_fail(sql).await;
            assert!(error.contains("audit"), "{sql}: {error}");
        }
        if let Raw::Pg(_) = raw {
            let error = raw.must_fail("TRUNCATE audit_events").await;
            assert!(error.contains("append-only"), "{error}");
        }
        let report = store.verify_audit_chain().await.unwrap();
        assert_eq!((report.checked, report.first_break), (3, None));
    }
}

tamper_case! {
    /// A linked event written around the store (the database does not
    /// refuse it, since writers link their events themselves) is named at
    /// its place in the chain; the store's own writes go on after it.
    async fn events_written_around_the_store_are_found(store: &dyn MetadataStore, raw: &mut Raw) {
        let ids = seed(store, 3).await;
        let forged = Uuid::now_v7();
        raw.exec(&format!(
            "INSERT INTO audit_events (id, at, subject, action, target, outcome, details, seq, \
             prev_hash, hash) VALUES ('{forged}', 0, 's', 'a', 't', 'success', '{{}}', 5, \
             '{}', '{}')",
            "2".repeat(64),
            "1".repeat(64)
        ))
        .await
        .unwrap();
        let gap = AuditChainBreak {
            chain: 0,
            seq: 4,
            id: Some(forged),
            reason: AuditChainFault::SeqGap,
        };
        assert_eq!(broken_at(store, 3).await, gap);
        let after = seed(store, 1).await;
        assert_eq!(broken_at(store, 3).await, gap);
        let linked = raw.ids_in_seq_order().await;
        assert_eq!(linked[..3], ids[..]);
        assert_eq!(linked[3..], [forged, after[0]]);
    }
}

tamper_case! {
    async fn edited_details_are_found(store: &dyn MetadataStore, raw: &mut Raw) {
        let ids = seed(store, 5).await;
        raw.drop_guards().await;
        raw.exec(r#"UPDATE audit_events SET details = '{"i":99}' WHERE seq = 3"#)
            .await
            .unwrap();
        assert_eq!(
            broken_at(store, 2).await,
            AuditChainBreak {
                chain: 0,
                seq: 3,
                id: Some(ids[2]),
                reason: AuditChainFault::HashMismatch,
            }
        );
    }
}

tamper_case! {
    async fn edited_link_is_found(store: &dyn MetadataStore, raw: &mut Raw) {
        let ids = seed(store, 5).await;
        raw.drop_guards().await;
        // A row re-hashed over a forged predecessor no longer follows the real one.
        raw.exec(&format!(
            "UPDATE audit_events SET prev_hash = '{}' WHERE seq = 4",
            "a".repeat(64)
        ))
        .await
        .unwrap();
        assert_eq!(
            broken_at(store, 3).await,
            AuditChainBreak {
                chain: 0,
                seq: 4,
                id: Some(ids[3]),
                reason: AuditChainFault::PrevHashMismatch,
            }
        );
    }
}

tamper_case! {
    async fn deleted_middle_row_is_found(store: &dyn MetadataStore, raw: &mut Raw) {
        let ids = seed(store, 5).await;
        raw.drop_guards().await;
        raw.exec("DELETE FROM audit_events WHERE seq = 3")
            .await
            .unwrap();
        assert_eq!(
            broken_at(store, 2).await,
            AuditChainBreak {
                chain: 0,
                seq: 3,
                id: Some(ids[3]),
                reason: AuditChainFault::SeqGap,
            }
        );
    }
}

/// How far a chain's head may trail its newest link on PostgreSQL (on
/// SQLite it never does): the documented checkpoint interval, less one.
const HEAD_LAG: i64 = 63;

tamper_case! {
    /// A chain cut back past its head (a checkpoint on PostgreSQL) is found.
    async fn deleted_tail_is_found(store: &dyn MetadataStore, raw: &mut Raw) {
        seed(store, 70).await;
        raw.drop_guards().await;
        raw.exec("DELETE FROM audit_events WHERE seq >= 7")
            .await
            .unwrap();
        assert_eq!(
            broken_at(store, 6).await,
            AuditChainBreak {
                chain: 0,
                seq: 7,
                id: None,
                reason: AuditChainFault::SeqGap,
            }
        );
    }
}

tamper_case! {
    /// The head names a link of its chain, at most `HEAD_LAG` behind the
    /// newest, and moves forward as the chain grows.
    async fn head_follows_its_chain(store: &dyn MetadataStore, raw: &mut Raw) {
        let mut last = 0;
        for n in [1_u32, 69, 60] {
            seed(store, n).await;
            last += i64::from(n);
            let (seq, hash) = raw.head(0).await;
            assert!(seq <= last && seq >= last - HEAD_LAG, "head {seq} of {last}");
            assert_eq!(raw.hash_at(0, seq).await, hash);
        }
        let report = store.verify_audit_chain().await.unwrap();
        assert_eq!((report.checked, report.first_break), (130, None));
    }
}

tamper_case! {
    async fn rows_written_around_the_chain_are_found(store: &dyn MetadataStore, raw: &mut Raw) {
        seed(store, 2).await;
        raw.drop_guards().await;
        let id = Uuid::now_v7();
        raw.exec(&format!(
            "INSERT INTO audit_events (id, at, subject, action, target, outcome, details) \
             VALUES ('{id}', 0, 's', 'a', 't', 'success', '{{}}')"
        ))
        .await
        .unwrap();
        assert_eq!(
            broken_at(store, 2).await,
            AuditChainBreak {
                chain: 0,
                seq: 0,
                id: Some(id),
                reason: AuditChainFault::Unchained,
            }
        );
        // And a head that no longer names the last row.
        raw.exec(&format!("DELETE FROM audit_events WHERE id = '{id}'"))
            .await
            .unwrap();
        raw.exec(&format!(
            "UPDATE audit_chain_head SET hash = '{}' WHERE chain = 0",
            "b".repeat(64)
        ))
        .await
        .unwrap();
        let b = broken_at(store, 2).await;
        assert_eq!((b.chain, b.seq, b.reason), (0, 2, AuditChainFault::HeadMismatch));
    }
}

tamper_case! {
    /// A linked row in a chain that does not exist is outside every walk.
    async fn rows_in_no_chain_are_found(store: &dyn MetadataStore, raw: &mut Raw) {
        seed(store, 2).await;
        raw.drop_guards().await;
        let id = Uuid::now_v7();
        raw.exec(&format!(
            "INSERT INTO audit_events (id, at, subject, action, target, outcome, details, chain, \
             seq, prev_hash, hash) VALUES ('{id}', 0, 's', 'a', 't', 'success', '{{}}', 16, 1, \
             '{}', '{}')",
            "0".repeat(64),
            "c".repeat(64)
        ))
        .await
        .unwrap();
        assert_eq!(
            broken_at(store, 2).await,
            AuditChainBreak {
                chain: 0,
                seq: 0,
                id: Some(id),
                reason: AuditChainFault::Unchained,
            }
        );
    }
}

tamper_case! {
    /// A chain whose head row is gone cannot be vouched for.
    async fn missing_head_is_found(store: &dyn MetadataStore, raw: &mut Raw) {
        seed(store, 2).await;
        raw.drop_guards().await;
        raw.exec("DELETE FROM audit_chain_head WHERE chain = 5")
            .await
            .unwrap();
        let report = store.verify_audit_chain().await.unwrap();
        assert_eq!(report.checked, 2);
        let b = report.first_break.unwrap();
        assert_eq!((b.chain, b.seq, b.reason), (5, 0, AuditChainFault::HeadMismatch));
        assert_eq!(report.chains[5].first_break, Some(b));
        assert_eq!(report.chains[0].first_break, None);
    }
}

// ------------------------------------------------------------ several chains

/// A PostgreSQL store with 16 connections, a direct connection holding chain
/// heads, and another to tamper with.
async fn pg_chains() -> (PgStore, PgConnection, Raw, TestDb) {
    let db = TestDb::create().await;
    let store = PgStore::connect(
        &db.url(),
        PgOptions {
            max_connections: 16,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let holder = db.connect().await;
    let raw = Raw::Pg(db.connect().await);
    (store, holder, raw, db)
}

/// The advisory lock key of chain 0 ("cfaudit\0"), chain n's is this + n:
/// how a writer holds a chain (migration 0020).
const CHAIN_LOCKS: i64 = 0x6366_6175_6469_7400;

/// Holds chains `0..n` from `holder` as a writer would, until [`release`].
async fn hold_heads(holder: &mut PgConnection, n: i64) {
    hold_chains(holder, 0..n).await;
}

/// Holds `chains` from `holder` as a writer would, until [`release`].
async fn hold_chains(holder: &mut PgConnection, chains: std::ops::Range<i64>) {
    holder.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1 + g) FROM generate_series($2, $3) AS g")
        .bind(CHAIN_LOCKS)
        .bind(chains.start)
        .bind(chains.end - 1)
        .execute(&mut *holder)
        .await
        .unwrap();
}

async fn release(holder: &mut PgConnection) {
    holder.execute("COMMIT").await.unwrap();
}

/// `(chain, seq, id)` of every linked row.
async fn links(raw: &mut Raw) -> Vec<(i64, i64, Uuid)> {
    let Raw::Pg(c) = raw else {
        unreachable!("PostgreSQL only")
    };
    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT chain, seq, id FROM audit_events ORDER BY chain, seq")
            .fetch_all(c)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(chain, seq, id)| (chain, seq, id.parse().unwrap()))
        .collect()
}

/// An audited write does not wait for a head another transaction holds: it
/// takes the lowest free one; with all 16 held it waits for one.
#[tokio::test]
async fn writers_take_a_free_head_on_postgres() {
    let (store, mut holder, mut raw, _db) = pg_chains().await;
    hold_heads(&mut holder, 3).await;
    let first = event(0);
    tokio::time::timeout(Duration::from_secs(10), store.append_audit(&first))
        .await
        .expect("an audited write waited for a held head")
        .unwrap();
    release(&mut holder).await;
    assert_eq!(links(&mut raw).await, vec![(3, 1, first.id)]);

    hold_heads(&mut holder, 16).await;
    let second = event(1);
    let write = tokio::spawn({
        let store = store.clone();
        let second = second.clone();
        async move { store.append_audit(&second).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "wrote while every head was held");
    release(&mut holder).await;
    write.await.unwrap().unwrap();
    let linked = links(&mut raw).await;
    assert_eq!(linked.len(), 2);
    assert!(linked.iter().any(|&(_, _, id)| id == second.id));
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!((report.checked, report.first_break), (2, None));
}

/// Lone events that queue up while every chain is held go in as batches once
/// one is free; a batch holding an id already stored still stores every
/// other event, and only that event's caller gets the conflict.
#[tokio::test]
async fn a_duplicate_in_a_held_up_batch_fails_alone_on_postgres() {
    let (store, mut holder, mut raw, _db) = pg_chains().await;
    let taken = event(0);
    store.append_audit(&taken).await.unwrap();
    hold_heads(&mut holder, 16).await;
    let mut events: Vec<AuditEvent> = (1..=40).map(event).collect();
    events[20].id = taken.id;
    let writes = futures::future::join_all(events.iter().map(|e| store.append_audit(e)));
    let release_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        release(&mut holder).await;
    };
    let (results, ()) = tokio::join!(writes, release_later);
    for (i, r) in results.into_iter().enumerate() {
        if i == 20 {
            match r {
                Err(DomainError::Conflict(m)) => assert!(m.contains(&taken.id.to_string()), "{m}"),
                other => panic!("expected a conflict, got {other:?}"),
            }
        } else {
            r.unwrap();
        }
    }
    let linked = links(&mut raw).await;
    assert_eq!(linked.len(), 40);
    for e in events.iter().filter(|e| e.id != taken.id) {
        assert!(linked.iter().any(|l| l.2 == e.id), "{} missing", e.id);
    }
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!((report.checked, report.first_break), (40, None));
}

/// 16 writers of audited changes at once on PostgreSQL spread over several
/// chains, each gapless and verified. Half their events are lone ones, which
/// share transactions (`append_audit`'s group commit), so a batch of them
/// fills one chain; the changes, a transaction each, take the free ones.
async fn concurrent_chains(store: &PgStore, raw: &mut Raw) -> Vec<(i64, i64, Uuid)> {
    const WRITERS: u32 = 16;
    const EACH: u32 = 40;
    futures::future::join_all((0..WRITERS).map(|w| async move {
        for i in 0..EACH {
            let n = w * EACH + i;
            if i % 2 == 0 {
                let issuer = crate::support::issuer(&format!("issuer-{n}"), false);
                store.insert_issuer(&issuer, &event(n)).await.unwrap();
            } else {
                store.append_audit(&event(n)).await.unwrap();
            }
        }
    }))
    .await;
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(report.first_break, None, "{report:?}");
    assert_eq!(report.checked, u64::from(WRITERS * EACH));
    let used: Vec<_> = report.chains.iter().filter(|t| t.last_seq > 0).collect();
    assert!(used.len() >= 2, "one chain only: {report:?}");
    let linked = links(raw).await;
    for tip in &report.chains {
        let seqs: Vec<i64> = linked
            .iter()
            .filter(|l| l.0 == i64::from(tip.chain))
            .map(|l| l.1)
            .collect();
        assert_eq!(seqs, (1..=tip.last_seq as i64).collect::<Vec<_>>());
    }
    linked
}

#[tokio::test]
async fn concurrent_writers_form_several_chains_on_postgres() {
    let (store, _holder, mut raw, _db) = pg_chains().await;
    concurrent_chains(&store, &mut raw).await;
}

/// A link committed on a chain after a writer read the chain's newest link
/// (here by a connection that skips the chain's lock, so the store's writer
/// cannot see it coming): the writer's link does not fork the chain but
/// follows it.
#[tokio::test]
async fn a_stale_newest_link_does_not_fork_a_chain_on_postgres() {
    let (store, mut holder, mut raw, db) = pg_chains().await;
    seed(&store, 2).await;
    let tip = raw.hash_at(0, 2).await;
    let mut rogue = db.connect().await;
    rogue.execute("BEGIN").await.unwrap();
    let id = Uuid::now_v7().to_string();
    let target = "certificate/rogue";
    rogue
        .execute(AssertSqlSafe(format!(
            "INSERT INTO audit_events (id, at, subject, source, action, target, outcome, \
             details, chain, seq, prev_hash, hash) VALUES ('{id}', {}, 'alice', '192.0.2.7', \
             'certificate.create', '{target}', 'success', '{{}}', 0, 3, '{tip}', '{}')",
            1_767_225_600 + 3,
            v2_hash(0, &tip, 3, &id, target)
        )))
        .await
        .unwrap();
    // Only chain 0 is free: the writer takes it and links after seq 2.
    hold_chains(&mut holder, 1..16).await;
    let late = event(9);
    let write = tokio::spawn({
        let store = store.clone();
        let late = late.clone();
        async move { store.append_audit(&late).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    rogue.execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the writer did not finish")
        .unwrap()
        .unwrap();
    release(&mut holder).await;
    let linked = links(&mut raw).await;
    let seqs: Vec<(i64, i64)> = linked.iter().map(|l| (l.0, l.1)).collect();
    assert_eq!(seqs, [(0, 1), (0, 2), (0, 3), (0, 4)]);
    assert_eq!(linked[2].2.to_string(), id);
    assert_eq!(linked[3].2, late.id);
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!((report.checked, report.first_break), (4, None));
}

/// 16 writers at once while every chain but 0 is held: they race for one
/// chain (reading its newest link while another commits the next), and it
/// stays one gapless, verified chain; released, the rest spread out.
#[tokio::test]
async fn writers_racing_for_one_chain_keep_it_linked_on_postgres() {
    let (store, mut holder, mut raw, _db) = pg_chains().await;
    hold_chains(&mut holder, 1..16).await;
    let writers = futures::future::join_all((0..16_u32).map(|w| {
        let store = store.clone();
        async move {
            for i in 0..15 {
                store.append_audit(&event(w * 15 + i)).await.unwrap();
            }
        }
    }));
    let release_later = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        release(&mut holder).await;
    };
    tokio::join!(writers, release_later);
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, &report.first_break),
        (240, &None),
        "{report:?}"
    );
    assert!(report.chains[0].last_seq > 1, "{report:?}");
    let linked = links(&mut raw).await;
    for tip in &report.chains {
        let seqs: Vec<i64> = linked
            .iter()
            .filter(|l| l.0 == i64::from(tip.chain))
            .map(|l| l.1)
            .collect();
        assert_eq!(seqs, (1..=tip.last_seq as i64).collect::<Vec<_>>());
    }
}

/// Chains 0 and 1 with a few links each, and chain 2 with `n`: written while
/// the lower heads are held.
async fn three_chains(store: &PgStore, holder: &mut PgConnection, n: u32) -> Vec<Uuid> {
    seed(store, 3).await;
    hold_heads(holder, 1).await;
    seed(store, 2).await;
    release(holder).await;
    hold_heads(holder, 2).await;
    let ids = seed(store, n).await;
    release(holder).await;
    ids
}

/// An edited row in any chain is named by chain and seq; the other chains
/// still verify to their heads.
#[tokio::test]
async fn edited_row_in_a_later_chain_is_found_on_postgres() {
    let (store, mut holder, mut raw, _db) = pg_chains().await;
    let ids = three_chains(&store, &mut holder, 5).await;
    raw.drop_guards().await;
    raw.exec(r#"UPDATE audit_events SET details = '{"i":99}' WHERE chain = 2 AND seq = 4"#)
        .await
        .unwrap();
    let report = store.verify_audit_chain().await.unwrap();
    let expected = AuditChainBreak {
        chain: 2,
        seq: 4,
        id: Some(ids[3]),
        reason: AuditChainFault::HashMismatch,
    };
    assert_eq!(report.first_break.as_ref(), Some(&expected), "{report:?}");
    assert_eq!(report.checked, 3 + 2 + 3);
    let tips: Vec<_> = report.chains[..3]
        .iter()
        .map(|t| (t.last_seq, t.first_break.clone()))
        .collect();
    assert_eq!(tips, vec![(3, None), (2, None), (3, Some(expected))]);
}

/// A later chain cut back past its head (a checkpoint) is found; its newest
/// links after the checkpoint cut off show only in its tip, which a copy
/// recorded before no longer matches.
#[tokio::test]
async fn cut_chains_are_found_on_postgres() {
    let (store, mut holder, mut raw, _db) = pg_chains().await;
    three_chains(&store, &mut holder, 70).await;
    let before = store.verify_audit_chain().await.unwrap();
    assert_eq!((before.checked, &before.first_break), (3 + 2 + 70, &None));
    raw.drop_guards().await;
    raw.exec("DELETE FROM audit_events WHERE chain = 2 AND seq >= 60")
        .await
        .unwrap();
    raw.exec("DELETE FROM audit_events WHERE chain = 1 AND seq = 2")
        .await
        .unwrap();
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        report.first_break,
        Some(AuditChainBreak {
            chain: 2,
            seq: 60,
            id: None,
            reason: AuditChainFault::SeqGap,
        }),
        "{report:?}"
    );
    assert_eq!(report.checked, 3 + 1 + 59);
    assert_eq!(report.chains[1].first_break, None);
    assert_ne!(report.chains[1].last_hash, before.chains[1].last_hash);
    assert_eq!(report.chains[1].last_seq, 1);
}

/// After concurrent writes, an edit anywhere is found at its chain and seq.
#[tokio::test]
async fn edit_after_concurrent_writes_is_found_on_postgres() {
    let (store, _holder, mut raw, _db) = pg_chains().await;
    let linked = concurrent_chains(&store, &mut raw).await;
    // The middle row of the highest chain in use.
    let top = linked.iter().map(|l| l.0).max().unwrap();
    let rows: Vec<_> = linked.iter().filter(|l| l.0 == top).collect();
    let (chain, seq, id) = *rows[rows.len() / 2];
    raw.drop_guards().await;
    raw.exec(&format!(
        "UPDATE audit_events SET subject = 'mallory' WHERE chain = {chain} AND seq = {seq}"
    ))
    .await
    .unwrap();
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        report.first_break,
        Some(AuditChainBreak {
            chain: u32::try_from(chain).unwrap(),
            seq: u64::try_from(seq).unwrap(),
            id: Some(id),
            reason: AuditChainFault::HashMismatch,
        })
    );
}

// ------------------------------------------------------------ upgrade

/// The migrations before the audit chain, as an older release applied them.
pub fn before_chain(sqls: [&'static str; 3]) -> Migrator {
    let descriptions = ["init", "idempotency keys", "renewal and notifications"];
    Migrator::with_migrations(
        sqls.iter()
            .zip(descriptions)
            .zip(1..)
            .map(|((sql, description), version)| {
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

/// Events an older release wrote (no links), inserted out of id order.
fn old_events(n: u32) -> (Vec<String>, Vec<Uuid>) {
    let mut ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    ids.sort();
    let mut inserts: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let source = if i % 3 == 0 { "NULL" } else { "'192.0.2.7'" };
            let outcome = if i % 4 == 0 { "failure" } else { "success" };
            format!(
                "INSERT INTO audit_events (id, at, subject, source, action, target, outcome, \
                 details) VALUES ('{id}', {}, 'alice', {source}, 'certificate.create', \
                 'certificate/{i}', '{outcome}', '{{\"i\":{i}}}')",
                1_767_225_600 + i
            )
        })
        .collect();
    inserts.reverse();
    (inserts, ids)
}

/// More old events than one linking page (1000).
const OLD_EVENTS: u32 = 2345;

async fn upgraded_chain_verifies(store: &dyn MetadataStore, raw: &mut Raw, ids: &[Uuid]) {
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(report.first_break, None, "{report:?}");
    assert_eq!(report.checked, u64::from(OLD_EVENTS));
    // Linked in id order, which is creation order.
    assert_eq!(raw.ids_in_seq_order().await, ids);
    // New events continue the chain, and the old ones are now guarded.
    let mut failure = event(0);
    failure.outcome = Outcome::Failure;
    store.append_audit(&failure).await.unwrap();
    raw.must_fail("DELETE FROM audit_events WHERE seq = 1")
        .await;
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, report.first_break),
        (u64::from(OLD_EVENTS) + 1, None)
    );
    let total = store
        .list_audit(&AuditQuery {
            limit: 1,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .total;
    assert_eq!(total, u64::from(OLD_EVENTS) + 1);
}

#[tokio::test]
async fn sqlite_upgrade_links_existing_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certflow.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut old = SqliteConnection::connect(&url).await.unwrap();
    before_chain([
        include_str!("../../migrations/sqlite/0001_init.sql"),
        include_str!("../../migrations/sqlite/0002_idempotency_keys.sql"),
        include_str!("../../migrations/sqlite/0003_renewal_and_notifications.sql"),
    ])
    .run(&mut old)
    .await
    .unwrap();
    let (inserts, ids) = old_events(OLD_EVENTS);
    old.execute("BEGIN").await.unwrap();
    for sql in inserts {
        old.execute(AssertSqlSafe(sql)).await.unwrap();
    }
    old.execute("COMMIT").await.unwrap();
    old.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    let mut raw = Raw::Sqlite(SqliteConnection::connect(&url).await.unwrap());
    upgraded_chain_verifies(&store, &mut raw, &ids).await;
    // Opening again finds nothing left to link.
    store.close().await;
    let store = SqliteStore::open(&path).await.unwrap();
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, report.first_break),
        (u64::from(OLD_EVENTS) + 1, None)
    );
}

#[tokio::test]
async fn postgres_upgrade_links_existing_events() {
    let db = TestDb::create().await;
    let mut old = db.connect().await;
    before_chain([
        include_str!("../../migrations/postgres/0001_init.sql"),
        include_str!("../../migrations/postgres/0002_idempotency_keys.sql"),
        include_str!("../../migrations/postgres/0003_renewal_and_notifications.sql"),
    ])
    .run(&mut old)
    .await
    .unwrap();
    let (inserts, ids) = old_events(OLD_EVENTS);
    old.execute("BEGIN").await.unwrap();
    for sql in inserts {
        old.execute(AssertSqlSafe(sql)).await.unwrap();
    }
    old.execute("COMMIT").await.unwrap();
    old.close().await.unwrap();

    // Replicas starting together take turns linking, one chain results.
    let url = db.url();
    let connect = || PgStore::connect(&url, PgOptions::default());
    let (a, b, c) = tokio::join!(connect(), connect(), connect());
    let (store, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let mut raw = Raw::Pg(db.connect().await);
    upgraded_chain_verifies(&store, &mut raw, &ids).await;
}

// ------------------------------------------------------------ upgrade to several chains

/// Every migration before 0017 (several chains), as the release before it
/// applied them, read from `migrations/<backend>/`.
fn before_chains(backend: &str) -> Migrator {
    migrations_before(backend, 17)
}

/// Every migration before `version`, as the release before it applied them.
fn migrations_before(backend: &str, version: i64) -> Migrator {
    let before = version;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut files: Vec<(i64, String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_owned();
            let (version, description) = stem.split_once('_')?;
            let version: i64 = version.parse().ok()?;
            (version < before).then(|| {
                let sql = std::fs::read_to_string(&p).unwrap();
                (version, description.replace('_', " "), sql)
            })
        })
        .collect();
    files.sort();
    assert_eq!(files.len() as i64, before - 1);
    Migrator::with_migrations(
        files
            .into_iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Owned(description),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The one-chain link hash (encoding v1), written out from its documentation
/// in src/audit.rs: what a release before 0017 stored.
fn v1_hash(prev: &str, seq: i64, id: &str, at: i64, target: &str) -> String {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"certflow.audit-chain.v1\0".to_vec();
    text(&mut out, prev);
    out.extend_from_slice(&seq.to_be_bytes());
    text(&mut out, id);
    out.extend_from_slice(&at.to_be_bytes());
    text(&mut out, "alice");
    out.push(0);
    text(&mut out, "certificate.create");
    text(&mut out, target);
    text(&mut out, "success");
    text(&mut out, "{}");
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &out).as_ref())
}

/// A link hash of encoding v2 (with the chain number), written out from its
/// documentation in src/audit.rs.
fn v2_hash(chain: i64, prev: &str, seq: i64, id: &str, target: &str) -> String {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"certflow.audit-chain.v2\0".to_vec();
    out.extend_from_slice(&chain.to_be_bytes());
    text(&mut out, prev);
    out.extend_from_slice(&seq.to_be_bytes());
    text(&mut out, id);
    out.extend_from_slice(&(1_767_225_600 + seq).to_be_bytes());
    text(&mut out, "alice");
    out.push(1);
    text(&mut out, "192.0.2.7");
    text(&mut out, "certificate.create");
    text(&mut out, target);
    text(&mut out, "success");
    text(&mut out, "{}");
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &out).as_ref())
}

/// `n` events of `chain` as a release with 0017 and 0018 wrote them (its
/// trigger moving the head); the last hash.
fn trigger_linked_events(chain: i64, n: i64) -> (Vec<String>, String) {
    let mut prev = "0".repeat(64);
    let mut inserts = Vec::new();
    for seq in 1..=n {
        let id = Uuid::now_v7().to_string();
        let target = format!("certificate/{chain}-{seq}");
        let hash = v2_hash(chain, &prev, seq, &id, &target);
        inserts.push(format!(
            "INSERT INTO audit_events (id, at, subject, source, action, target, outcome, \
             details, chain, seq, prev_hash, hash) VALUES ('{id}', {}, 'alice', '192.0.2.7', \
             'certificate.create', '{target}', 'success', '{{}}', {chain}, {seq}, '{prev}', \
             '{hash}')",
            1_767_225_600 + seq
        ));
        prev = hash;
    }
    (inserts, prev)
}

/// Chains 0 and 3 written while the database moved the heads (0017, 0018);
/// the SQL and both last hashes.
fn trigger_linked_chains() -> (Vec<String>, [String; 2]) {
    let (mut inserts, zero) = trigger_linked_events(0, 3);
    let (more, three) = trigger_linked_events(3, 2);
    inserts.extend(more);
    (inserts, [zero, three])
}

/// After 0019 the chains written before still verify to their heads, and
/// the store's writes continue them.
async fn trigger_linked_chains_upgraded(store: &dyn MetadataStore, tips: &[String; 2]) {
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, &report.first_break),
        (5, &None),
        "{report:?}"
    );
    let tip = |n: usize| {
        (
            report.chains[n].last_seq,
            report.chains[n].last_hash.clone(),
        )
    };
    assert_eq!(
        (tip(0), tip(3)),
        ((3, tips[0].clone()), (2, tips[1].clone()))
    );
    seed(store, 2).await;
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, &report.first_break),
        (7, &None),
        "{report:?}"
    );
    assert_eq!(report.chains[0].last_seq, 5);
}

#[tokio::test]
async fn sqlite_upgrade_keeps_trigger_linked_chains() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certflow.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut old = SqliteConnection::connect(&url).await.unwrap();
    migrations_before("sqlite", 19).run(&mut old).await.unwrap();
    let (inserts, tips) = trigger_linked_chains();
    for sql in inserts {
        old.execute(AssertSqlSafe(sql)).await.unwrap();
    }
    old.close().await.unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    trigger_linked_chains_upgraded(&store, &tips).await;
}

#[tokio::test]
async fn postgres_upgrade_keeps_trigger_linked_chains() {
    let db = TestDb::create().await;
    let mut old = db.connect().await;
    migrations_before("postgres", 19)
        .run(&mut old)
        .await
        .unwrap();
    let (inserts, tips) = trigger_linked_chains();
    for sql in inserts {
        old.execute(AssertSqlSafe(sql)).await.unwrap();
    }
    old.close().await.unwrap();
    let store = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .unwrap();
    trigger_linked_chains_upgraded(&store, &tips).await;
}

/// Chains as writers before 0020 left them, each head on its chain's newest
/// link: chain 0 with 70 links, chain 3 with 2; the SQL and both last hashes.
fn head_moving_chains() -> (Vec<String>, [String; 2]) {
    let (mut sql, zero) = trigger_linked_events(0, 70);
    let (more, three) = trigger_linked_events(3, 2);
    sql.extend(more);
    sql.push(format!(
        "UPDATE audit_chain_head SET seq = 70, hash = '{zero}' WHERE chain = 0"
    ));
    sql.push(format!(
        "UPDATE audit_chain_head SET seq = 2, hash = '{three}' WHERE chain = 3"
    ));
    (sql, [zero, three])
}

/// After 0020 (heads as checkpoints) chains whose heads moved with every
/// event verify as before, and the store's writes continue them.
#[tokio::test]
async fn postgres_upgrade_keeps_chains_whose_heads_moved_with_every_event() {
    let db = TestDb::create().await;
    let mut old = db.connect().await;
    migrations_before("postgres", 20)
        .run(&mut old)
        .await
        .unwrap();
    let (sql, tips) = head_moving_chains();
    for statement in sql {
        old.execute(AssertSqlSafe(statement)).await.unwrap();
    }
    old.close().await.unwrap();
    let store = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .unwrap();
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, &report.first_break),
        (72, &None),
        "{report:?}"
    );
    let tip = |r: &certflow_core::model::AuditChainReport, n: usize| {
        (r.chains[n].last_seq, r.chains[n].last_hash.clone())
    };
    assert_eq!(
        (tip(&report, 0), tip(&report, 3)),
        ((70, tips[0].clone()), (2, tips[1].clone()))
    );
    seed(&store, 60).await;
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, &report.first_break),
        (132, &None),
        "{report:?}"
    );
    assert_eq!(report.chains[0].last_seq, 130);
    let mut raw = Raw::Pg(db.connect().await);
    let (seq, hash) = raw.head(0).await;
    assert!(seq >= 130 - HEAD_LAG, "head {seq}");
    assert_eq!(raw.hash_at(0, seq).await, hash);
}

/// Five events linked by a release before 0017; the last hash.
fn one_chain_events() -> (Vec<String>, String) {
    let mut prev = "0".repeat(64);
    let mut inserts = Vec::new();
    for seq in 1..=5_i64 {
        let id = Uuid::now_v7().to_string();
        let at = 1_767_225_600 + seq;
        let target = format!("certificate/{seq}");
        let hash = v1_hash(&prev, seq, &id, at, &target);
        inserts.push(format!(
            "INSERT INTO audit_events (id, at, subject, source, action, target, outcome, \
             details, seq, prev_hash, hash) VALUES ('{id}', {at}, 'alice', NULL, \
             'certificate.create', '{target}', 'success', '{{}}', {seq}, '{prev}', '{hash}')"
        ));
        prev = hash;
    }
    (inserts, prev)
}

/// The one chain became chain 0, still verifying, and new events continue it.
async fn one_chain_upgraded(store: &dyn MetadataStore, raw: &mut Raw, last_hash: &str) {
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, &report.first_break),
        (5, &None),
        "{report:?}"
    );
    assert_eq!(
        (
            report.chains[0].last_seq,
            report.chains[0].last_hash.as_str()
        ),
        (5, last_hash)
    );
    store.append_audit(&event(6)).await.unwrap();
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(
        (report.checked, &report.first_break),
        (6, &None),
        "{report:?}"
    );
    assert_eq!(report.chains[0].last_seq, 6);
    // An older release's head lookup fails instead of linking wrongly.
    let error = raw
        .must_fail("UPDATE audit_chain_head SET seq = seq WHERE id = 1")
        .await;
    assert!(error.contains("id"), "{error}");
}

#[tokio::test]
async fn sqlite_upgrade_keeps_the_one_chain_as_chain_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certflow.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut old = SqliteConnection::connect(&url).await.unwrap();
    before_chains("sqlite").run(&mut old).await.unwrap();
    let (inserts, last_hash) = one_chain_events();
    for sql in inserts {
        old.execute(AssertSqlSafe(sql)).await.unwrap();
    }
    old.close().await.unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    let mut raw = Raw::Sqlite(SqliteConnection::connect(&url).await.unwrap());
    one_chain_upgraded(&store, &mut raw, &last_hash).await;
}

#[tokio::test]
async fn postgres_upgrade_keeps_the_one_chain_as_chain_zero() {
    let db = TestDb::create().await;
    let mut old = db.connect().await;
    before_chains("postgres").run(&mut old).await.unwrap();
    let (inserts, last_hash) = one_chain_events();
    for sql in inserts {
        old.execute(AssertSqlSafe(sql)).await.unwrap();
    }
    old.close().await.unwrap();
    let store = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .unwrap();
    let mut raw = Raw::Pg(db.connect().await);
    one_chain_upgraded(&store, &mut raw, &last_hash).await;
}

/// What the chain costs, printed (`cargo test -p certflow-store --test
/// metadata_store -- --ignored --nocapture audit_chain_cost`): audited writes
/// per second with 1 and 16 writers against the same INSERT into an unchained
/// copy of the table, and linking (upgrade) and verifying 100,000 events.
mod cost {
    use std::time::Instant;

    use certflow_core::model::{Actor, AuditEvent};
    use certflow_core::ports::MetadataStore;
    use certflow_store::{PgOptions, PgStore, SqliteStore};
    use sqlx::{AssertSqlSafe, Connection, Executor, SqliteConnection};

    use crate::support::pg::TestDb;

    const LINKED: usize = 100_000;
    const EACH: usize = 200;

    fn event(i: usize) -> AuditEvent {
        AuditEvent::success(
            time::OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap(),
            &Actor {
                subject: "alice".into(),
                source: Some("192.0.2.7".into()),
            },
            "certificate.key.download",
            format!("certificate/{}", uuid::Uuid::new_v4()),
            serde_json::json!({ "version": i, "format": "pem" }),
        )
    }

    /// Events per second with `writers` concurrent writers through the store.
    async fn chained(store: &dyn MetadataStore, writers: usize) -> f64 {
        let started = Instant::now();
        futures::future::join_all((0..writers).map(|_| async {
            for i in 0..EACH {
                store.append_audit(&event(i)).await.unwrap();
            }
        }))
        .await;
        (writers * EACH) as f64 / started.elapsed().as_secs_f64()
    }

    /// The same rows into `audit_plain` (no chain), one transaction each.
    async fn plain(pool: &sqlx::PgPool, writers: usize) -> f64 {
        let started = Instant::now();
        futures::future::join_all((0..writers).map(|_| async {
            for i in 0..EACH {
                let e = event(i);
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(
                    "INSERT INTO audit_plain (id, at, subject, source, action, target, outcome, \
                     details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(e.id.to_string())
                .bind(e.at.unix_timestamp())
                .bind(e.actor.subject)
                .bind(e.actor.source)
                .bind(e.action)
                .bind(e.target)
                .bind("success")
                .bind(e.details.to_string())
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        }))
        .await;
        (writers * EACH) as f64 / started.elapsed().as_secs_f64()
    }

    /// `LINKED` old events, inserted 1000 a statement.
    fn old_event_batches() -> Vec<String> {
        (0..LINKED)
            .collect::<Vec<_>>()
            .chunks(1000)
            .map(|chunk| {
                let values: Vec<String> = chunk
                    .iter()
                    .map(|i| {
                        format!(
                            "('{}', {}, 'alice', '192.0.2.7', 'certificate.key.download', \
                             'certificate/{i}', 'success', '{{\"version\":1,\"format\":\"pem\"}}')",
                            uuid::Uuid::now_v7(),
                            1_767_225_600 + i
                        )
                    })
                    .collect();
                format!(
                    "INSERT INTO audit_events (id, at, subject, source, action, target, outcome, \
                     details) VALUES {}",
                    values.join(", ")
                )
            })
            .collect()
    }

    async fn verify_rate(store: &dyn MetadataStore) -> f64 {
        let started = Instant::now();
        let report = store.verify_audit_chain().await.unwrap();
        assert_eq!((report.checked, report.first_break), (LINKED as u64, None));
        LINKED as f64 / started.elapsed().as_secs_f64()
    }

    #[tokio::test]
    #[ignore = "measurement; run with --ignored --nocapture"]
    async fn audit_chain_cost() {
        // Concurrent writers on PostgreSQL, chained vs plain.
        let db = TestDb::create().await;
        let store = PgStore::connect(&db.url(), PgOptions::default())
            .await
            .unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(PgOptions::default().max_connections)
            .connect(&db.url())
            .await
            .unwrap();
        pool.execute(
            "CREATE TABLE audit_plain (LIKE audit_events INCLUDING DEFAULTS INCLUDING INDEXES)",
        )
        .await
        .unwrap();
        for writers in [1, 16] {
            let p = plain(&pool, writers).await;
            let c = chained(&store, writers).await;
            println!(
                "postgres, {writers} writers: chained {c:.0} events/s, plain {p:.0} events/s ({:.0}%)",
                100.0 * c / p
            );
        }
        pool.close().await;
        store.close().await;

        // Linking 100k events of an upgraded database, then verifying them.
        let db = TestDb::create().await;
        let mut old = db.connect().await;
        super::before_chain([
            include_str!("../../migrations/postgres/0001_init.sql"),
            include_str!("../../migrations/postgres/0002_idempotency_keys.sql"),
            include_str!("../../migrations/postgres/0003_renewal_and_notifications.sql"),
        ])
        .run(&mut old)
        .await
        .unwrap();
        for sql in old_event_batches() {
            old.execute(AssertSqlSafe(sql)).await.unwrap();
        }
        old.close().await.unwrap();
        let started = Instant::now();
        let store = PgStore::connect(&db.url(), PgOptions::default())
            .await
            .unwrap();
        println!(
            "postgres: linked {LINKED} events on upgrade in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        println!(
            "postgres: verified {:.0} events/s",
            verify_rate(&store).await
        );
        store.close().await;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certflow.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut old = SqliteConnection::connect(&url).await.unwrap();
        super::before_chain([
            include_str!("../../migrations/sqlite/0001_init.sql"),
            include_str!("../../migrations/sqlite/0002_idempotency_keys.sql"),
            include_str!("../../migrations/sqlite/0003_renewal_and_notifications.sql"),
        ])
        .run(&mut old)
        .await
        .unwrap();
        for sql in old_event_batches() {
            old.execute(AssertSqlSafe(sql)).await.unwrap();
        }
        old.close().await.unwrap();
        let started = Instant::now();
        let store = SqliteStore::open(&path).await.unwrap();
        println!(
            "sqlite: linked {LINKED} events on upgrade in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        println!("sqlite: verified {:.0} events/s", verify_rate(&store).await);
        let started = Instant::now();
        for i in 0..1000 {
            store.append_audit(&event(i)).await.unwrap();
        }
        println!(
            "sqlite (file), 1 writer: chained {:.0} events/s",
            1000.0 / started.elapsed().as_secs_f64()
        );
    }
}
