//! What the audit hash chain costs concurrent writers on PostgreSQL: audit
//! events per second through the store (`append_audit`) against the same
//! rows INSERTed into `audit_plain`, an unchained copy of `audit_events`
//! (same columns and indexes but the partial index of unlinked rows, which
//! only plain rows would fill; no triggers).
//!
//! The two sides do not commit alike. The plain side is one INSERT
//! transaction per event, as a store without the chain would write a lone
//! event. The chained side is whatever the store does: since the lone
//! events' group commit, events that arrive while a batch commits share the
//! next transaction (one chain, one multi-row INSERT, one commit; two
//! batches at once), so at 16 writers it commits far fewer transactions
//! than the plain side; before that, one transaction per event as well.
//! The ratio measures the store against an unchained writer, not the
//! chain's cost per transaction; an unchained store that group-committed
//! its lone events as well would be faster still, and is not measured.
//!
//! Per writer count, both sides get a pool of exactly that many connections,
//! so N plain writers are N transactions at once (the chained ones are as
//! many as the store makes of them). A warm-up round is discarded,
//! then rounds alternate which side runs first, so that both see the same
//! load on a shared machine; it prints every round and the medians, and the
//! ratio chained / plain is the figure to compare, not the absolute rates.
//! When the server runs on this machine and its processes' `/proc/<pid>/stat`
//! are readable, it also prints the CPU per event of the server (every
//! `postgres` process: backends, WAL writer and the rest; other databases'
//! work on the same server counts too) and of this process, over all rounds.
//!
//! It uses only the store's public API, so the same file measures any
//! release. Run it with `cargo bench -p certflow-store --bench audit_chain`;
//! PostgreSQL is `CERTFLOW_TEST_PG_URL` or
//! `postgres://postgres@127.0.0.1:5432/postgres`, as for the store tests.
//! `CERTFLOW_BENCH_WRITERS` (default `1,16`), `CERTFLOW_BENCH_ROUNDS` (5) and
//! `CERTFLOW_BENCH_EACH` (events per writer per round, 100) tune it. Without
//! `--bench` (`cargo test --benches`) it runs one short round.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Instant;

use certflow_core::model::{Actor, AuditEvent};
use certflow_core::ports::MetadataStore;
use certflow_store::{PgOptions, PgStore};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Executor};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

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

/// Events per second, `writers` at once, `each` events each, through the store.
async fn chained(store: &PgStore, writers: usize, each: usize) -> f64 {
    let started = Instant::now();
    futures::future::join_all((0..writers).map(|_| async {
        for i in 0..each {
            store.append_audit(&event(i)).await.unwrap();
        }
    }))
    .await;
    (writers * each) as f64 / started.elapsed().as_secs_f64()
}

/// The same rows into `audit_plain`, one transaction each.
async fn plain(pool: &PgPool, writers: usize, each: usize) -> f64 {
    let started = Instant::now();
    futures::future::join_all((0..writers).map(|_| async {
        for i in 0..each {
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
    (writers * each) as f64 / started.elapsed().as_secs_f64()
}

/// Clock ticks (utime, stime and reaped children's) of the processes whose
/// `comm` is `name`, or of this process for `None`; 0 if unreadable.
fn cpu_ticks(name: Option<&str>) -> u64 {
    let stat_ticks = |stat: &str| -> Option<(String, u64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields
            .get(11..15)?
            .iter()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .sum();
        Some((comm, ticks))
    };
    let Some(name) = name else {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        return stat_ticks(&stat).map_or(0, |(_, t)| t);
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter_map(|stat| stat_ticks(&stat))
        .filter(|(comm, _)| comm == name)
        .map(|(_, t)| t)
        .sum()
}

/// CPU spent by the server and by this process while a side ran.
#[derive(Default)]
struct Cpu {
    server: u64,
    client: u64,
    events: usize,
}

impl Cpu {
    async fn time<F: std::future::Future<Output = f64>>(&mut self, events: usize, run: F) -> f64 {
        let (server, client) = (cpu_ticks(Some("postgres")), cpu_ticks(None));
        let rate = run.await;
        self.server += cpu_ticks(Some("postgres")).saturating_sub(server);
        self.client += cpu_ticks(None).saturating_sub(client);
        self.events += events;
        rate
    }

    /// "server N µs, bench M µs" per event (100 ticks a second).
    fn per_event(&self) -> String {
        let us = |ticks: u64| ticks as f64 * 10_000.0 / self.events.max(1) as f64;
        format!(
            "server {:.0} µs, bench {:.0} µs",
            us(self.server),
            us(self.client)
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A fresh database, dropped by [`drop_database`].
async fn create_database(admin_url: &str) -> (String, String) {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin_url}: {e}"));
    let name = format!("certflow_bench_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
    (name.clone(), format!("{base}/{name}"))
}

async fn drop_database(admin_url: &str, name: &str) {
    let mut admin = PgConnection::connect(admin_url).await.unwrap();
    admin
        .execute(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await
        .unwrap();
}

/// Measures `writers` concurrent writers on a fresh database.
async fn measure(admin_url: &str, writers: usize, rounds: usize, each: usize) {
    let (name, url) = create_database(admin_url).await;
    let store = PgStore::connect(
        &url,
        PgOptions {
            max_connections: u32::try_from(writers).unwrap(),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(writers).unwrap())
        .connect(&url)
        .await
        .unwrap();
    pool.execute(
        "CREATE TABLE audit_plain (LIKE audit_events INCLUDING DEFAULTS INCLUDING INDEXES)",
    )
    .await
    .unwrap();
    let partial: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes \
         WHERE tablename = 'audit_plain' AND indexdef LIKE '%WHERE%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for index in partial {
        pool.execute(AssertSqlSafe(format!("DROP INDEX {index}")))
            .await
            .unwrap();
    }
    // Warm-up: connections open, statements prepared, both tables touched.
    plain(&pool, writers, each.min(20)).await;
    chained(&store, writers, each.min(20)).await;
    let (mut plains, mut chains, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut plain_cpu, mut chained_cpu) = (Cpu::default(), Cpu::default());
    let n = writers * each;
    for round in 0..rounds {
        let (p, c) = if round % 2 == 0 {
            let p = plain_cpu.time(n, plain(&pool, writers, each)).await;
            (p, chained_cpu.time(n, chained(&store, writers, each)).await)
        } else {
            let c = chained_cpu.time(n, chained(&store, writers, each)).await;
            (plain_cpu.time(n, plain(&pool, writers, each)).await, c)
        };
        println!(
            "writers={writers} round={round} plain={p:.0}/s chained={c:.0}/s ratio={:.2}",
            c / p
        );
        plains.push(p);
        chains.push(c);
        ratios.push(c / p);
    }
    let report = store.verify_audit_chain().await.unwrap();
    assert_eq!(report.first_break, None, "{report:?}");
    println!(
        "writers={writers} median plain={:.0}/s chained={:.0}/s ratio={:.2} \
         (median of round ratios {:.2}; {} events verified)",
        median(plains.clone()),
        median(chains.clone()),
        median(chains) / median(plains),
        median(ratios),
        report.checked
    );
    println!(
        "writers={writers} cpu per event: plain {}; chained {}",
        plain_cpu.per_event(),
        chained_cpu.per_event()
    );
    pool.close().await;
    store.close().await;
    drop_database(admin_url, &name).await;
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let admin_url = setting("CERTFLOW_TEST_PG_URL", DEFAULT_URL);
    let writers: Vec<usize> = setting("CERTFLOW_BENCH_WRITERS", "1,16")
        .split(',')
        .map(|w| w.trim().parse().unwrap())
        .collect();
    let (rounds, each) = if bench {
        (
            setting("CERTFLOW_BENCH_ROUNDS", "5").parse().unwrap(),
            setting("CERTFLOW_BENCH_EACH", "100").parse().unwrap(),
        )
    } else {
        (1, 5)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for w in writers {
            measure(&admin_url, w, rounds, each).await;
        }
    });
}
