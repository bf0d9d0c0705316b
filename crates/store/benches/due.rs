//! The renewal scheduler's query, `due_for_renewal(now, 1000)`, on 1,000,000
//! certificates of which 1% are due, on SQLite (a temporary file) and on
//! PostgreSQL (a fresh database, dropped afterwards).
//!
//! Per backend it measures the store method (query, labels, decoding; on
//! PostgreSQL also over a connection without TLS) and the bare SQL twice: as
//! the store writes it, which walks the `certificates_due (status,
//! renew_after)` index, and with both conditions wrapped in no-op expressions
//! so that no index applies (a full scan and a top-N sort), to show what the
//! index buys. Setup checks that all return the same certificates and prints
//! the plans.
//!
//! Then, per backend, the scheduler's pass (`scheduler/<backend>`), two ways,
//! alternating: `per-job` pages through `due_for_renewal(now, 1000)` and
//! `insert_renewal_job` one job per due certificate until a batch comes back
//! empty (the pass before keyset paging); `batched` pages by keyset through
//! `due_without_job(now, after, 1000)` and inserts each page with one
//! `insert_renewal_jobs`. Either makes 10,000 jobs; the jobs are deleted
//! (untimed) before each pass, which is timed by hand (three passes each;
//! printed) rather than by criterion. `steady_pass` (`_keyset`) is the
//! scheduler's next pass, when every due certificate already has its job: one
//! `due_for_renewal` (`due_without_job`) that returns nothing.
//!
//! Seeding is bulk SQL (`benches/seed/`), timed and printed, not measured.
//! Run it with `cargo bench -p certflow-store --bench due`; PostgreSQL is
//! `CERTFLOW_TEST_PG_URL` or `postgres://postgres@127.0.0.1:5432/postgres`,
//! as for the store tests. Without `--bench` (`cargo test --benches`) it
//! seeds 10,000 rows only and runs each routine once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use certflow_core::ports::{MetadataStore, RenewalLedger};
use certflow_core::renewal::RenewalJob;
use certflow_store::{PgOptions, PgStore, SqliteStore};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, Row};
use time::OffsetDateTime;
use tokio::runtime::Runtime;

/// "Now" of the seeded rows and of every query: 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;
/// The batch the scheduler asks for.
const LIMIT: u32 = 1000;

const ISSUER: &str = include_str!("seed/issuer.sql");
const CERTIFICATES_SQLITE: &str = include_str!("seed/certificates.sqlite.sql");
const CERTIFICATES_POSTGRES: &str = include_str!("seed/certificates.postgres.sql");
const LABELS: &str = include_str!("seed/labels.sql");

macro_rules! columns {
    () => {
        "c.id, c.name, c.team, c.profile, c.key_type, c.key_source, c.names, c.validity_days, \
         c.validity_secs, c.issuer_id, c.renew_at_fraction, c.renew_before_days, \
         c.renew_jitter_fraction, c.status, c.current_version, c.not_after, c.renew_after, \
         c.created_at, c.updated_at"
    };
}

/// The store's statement (`repo::due_query`) written out: the index applies.
const INDEXED: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM certificates c WHERE c.status = $1 AND c.renew_after <= $2 \
     AND NOT EXISTS (SELECT 1 FROM renewal_jobs j \
     WHERE j.certificate_id = c.id AND j.version = c.current_version) \
     ORDER BY c.renew_after, c.id LIMIT $3"
);

/// The same rows with no index usable: `|| ''` and `+ 0` hide the columns.
const SCAN: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM certificates c WHERE (c.status || '') = $1 AND (c.renew_after + 0) <= $2 \
     AND NOT EXISTS (SELECT 1 FROM renewal_jobs j \
     WHERE j.certificate_id = c.id AND j.version = c.current_version) \
     ORDER BY c.renew_after, c.id LIMIT $3"
);

const COUNT_DUE: &str =
    "SELECT COUNT(*) FROM certificates WHERE status = 'active' AND renew_after <= $1";

/// Full size under `cargo bench`; a smoke-test size otherwise.
fn seeded_rows() -> i64 {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    if benchmarking { 1_000_000 } else { 10_000 }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW).unwrap()
}

/// Times one seeding step.
fn step(steps: &mut Vec<(&'static str, Duration)>, what: &'static str, f: impl FnOnce()) {
    let started = Instant::now();
    f();
    steps.push((what, started.elapsed()));
}

fn report_seeding(backend: &str, rows: i64, due: i64, steps: &[(&'static str, Duration)]) {
    let total: Duration = steps.iter().map(|(_, d)| *d).sum();
    let detail: Vec<String> = steps
        .iter()
        .map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64()))
        .collect();
    println!(
        "seeded {backend}: {rows} certificates, {due} due, in {:.1} s ({})",
        total.as_secs_f64(),
        detail.join(", ")
    );
}

fn print_plan(backend: &str, which: &str, plan: &[String]) {
    println!("plan {backend} {which}:");
    for line in plan {
        println!("    {line}");
    }
}

/// The group's timing settings: the indexed routines take milliseconds.
fn group<'c>(
    c: &'c mut Criterion,
    backend: &str,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(format!("due/{backend}"));
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    group
}

/// The scan takes hundreds of milliseconds an iteration: a few flat samples.
fn slow(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
}

fn store_ids(rt: &Runtime, store: &dyn MetadataStore) -> Vec<String> {
    rt.block_on(store.due_for_renewal(now(), LIMIT))
        .unwrap()
        .into_iter()
        .map(|c| c.id.to_string())
        .collect()
}

fn sqlite(c: &mut Criterion, rt: &Runtime, rows: i64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certflow.db");
    let store = rt.block_on(SqliteStore::open(&path)).unwrap();
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .journal_mode(SqliteJournalMode::Wal);

    let mut steps = Vec::new();
    let mut seeder = rt.block_on(options.connect()).unwrap();
    // Room to build the indexes in memory; the store's own connections keep
    // SQLite's default cache.
    rt.block_on(seeder.execute("PRAGMA cache_size = -262144"))
        .unwrap();
    step(&mut steps, "issuer", || {
        rt.block_on(seeder.execute(ISSUER)).unwrap();
    });
    step(&mut steps, "certificates", || {
        rt.block_on(
            sqlx::query(CERTIFICATES_SQLITE)
                .bind(rows)
                .bind(NOW)
                .execute(&mut seeder),
        )
        .unwrap();
    });
    step(&mut steps, "labels", || {
        rt.block_on(seeder.execute(LABELS)).unwrap();
    });
    // Into the main file, as a database at rest would be; no ANALYZE: the
    // store never runs it, so deployments have no statistics.
    step(&mut steps, "checkpoint", || {
        rt.block_on(seeder.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
            .unwrap();
    });
    rt.block_on(seeder.close()).unwrap();

    // A connection like the store's for the bare SQL.
    let mut conn = rt.block_on(options.connect()).unwrap();
    let due: i64 = rt
        .block_on(sqlx::query_scalar(COUNT_DUE).bind(NOW).fetch_one(&mut conn))
        .unwrap();
    report_seeding("sqlite", rows, due, &steps);
    for (which, sql) in [("index", INDEXED), ("scan", SCAN)] {
        let plan: Vec<String> = rt
            .block_on(
                sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .bind("active")
                    .bind(NOW)
                    .bind(i64::from(LIMIT))
                    .fetch_all(&mut conn),
            )
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
        print_plan("sqlite", which, &plan);
    }
    let ids = |conn: &mut sqlx::SqliteConnection, sql: &'static str| -> Vec<String> {
        rt.block_on(
            sqlx::query_scalar(sql)
                .bind("active")
                .bind(NOW)
                .bind(i64::from(LIMIT))
                .fetch_all(conn),
        )
        .unwrap()
    };
    let expected = store_ids(rt, &store);
    assert_eq!(expected.len(), usize::try_from(due.min(1000)).unwrap());
    assert_eq!(ids(&mut conn, INDEXED), expected);
    assert_eq!(ids(&mut conn, SCAN), expected);

    let mut group = group(c, "sqlite");
    group.bench_function("store_due_for_renewal", |b| {
        b.iter(|| black_box(rt.block_on(store.due_for_renewal(now(), LIMIT)).unwrap()))
    });
    group.bench_function("sql_index", |b| {
        b.iter(|| black_box(ids(&mut conn, INDEXED)))
    });
    slow(&mut group);
    group.bench_function("sql_full_scan", |b| {
        b.iter(|| black_box(ids(&mut conn, SCAN)))
    });
    group.finish();

    let mut clear = || {
        rt.block_on(sqlx::query("DELETE FROM renewal_jobs").execute(&mut conn))
            .unwrap();
    };
    scheduler(c, rt, "sqlite", &store, due, &mut clear);
    rt.block_on(conn.close()).unwrap();
    rt.block_on(store.close());
}

/// What one scheduler pass did and where its time went.
#[derive(Debug, Default, Clone, Copy)]
struct Pass {
    batches: u32,
    enqueued: u64,
    paging: Duration,
    inserting: Duration,
}

/// The scheduler's pass as it was: `due_for_renewal` from the front of the
/// due index until an empty batch, one `insert_renewal_job` (a transaction)
/// per due certificate.
fn per_job_pass<S: MetadataStore + RenewalLedger>(rt: &Runtime, store: &S) -> Pass {
    let mut pass = Pass::default();
    loop {
        let started = Instant::now();
        let batch = rt.block_on(store.due_for_renewal(now(), LIMIT)).unwrap();
        pass.paging += started.elapsed();
        pass.batches += 1;
        if batch.is_empty() {
            return pass;
        }
        let started = Instant::now();
        for cert in &batch {
            let job = RenewalJob::new(cert.id, cert.current_version, 5, now());
            if rt.block_on(store.insert_renewal_job(&job)).unwrap() {
                pass.enqueued += 1;
            }
        }
        pass.inserting += started.elapsed();
    }
}

/// The scheduler's pass now (`Scheduler::with_ledger`): keyset pages of
/// `due_without_job`, each after the last row of the one before, until a
/// short page; one `insert_renewal_jobs` (one transaction) per page.
fn batched_pass<S: MetadataStore + RenewalLedger>(rt: &Runtime, store: &S) -> Pass {
    let mut pass = Pass::default();
    let mut after = None;
    loop {
        let started = Instant::now();
        let page = rt
            .block_on(store.due_without_job(now(), after.as_ref(), LIMIT))
            .unwrap();
        pass.paging += started.elapsed();
        pass.batches += 1;
        let jobs: Vec<RenewalJob> = page
            .iter()
            .map(|due| RenewalJob::new(due.certificate_id, due.version, 5, now()))
            .collect();
        let started = Instant::now();
        let inserted = rt.block_on(store.insert_renewal_jobs(&jobs)).unwrap();
        pass.inserting += started.elapsed();
        pass.enqueued += inserted.iter().filter(|&&new| new).count() as u64;
        if page.len() < LIMIT as usize {
            return pass;
        }
        after = page.last().copied();
    }
}

/// Passes timed by hand: one takes seconds (10,000 commits), more than
/// criterion's ten samples plus warm-up can afford on a shared machine.
fn pass_count() -> usize {
    if seeded_rows() == 1_000_000 { 3 } else { 1 }
}

/// `scheduler/<backend>`: `clear` empties `renewal_jobs` between passes.
fn scheduler<S: MetadataStore + RenewalLedger>(
    c: &mut Criterion,
    rt: &Runtime,
    backend: &str,
    store: &S,
    due: i64,
    clear: &mut dyn FnMut(),
) {
    let due = u64::try_from(due).unwrap();
    // Alternating, so both kinds see the same state of the machine.
    for i in 1..=pass_count() {
        for (kind, run) in [
            ("per-job", per_job_pass::<S> as fn(&Runtime, &S) -> Pass),
            ("batched", batched_pass::<S>),
        ] {
            clear();
            let started = Instant::now();
            let pass = run(rt, store);
            let total = started.elapsed();
            assert_eq!(pass.enqueued, due);
            println!(
                "scheduler/{backend}/{kind} pass {i}: {:.2} s for {} jobs in {} batches: \
                 paging {:.1} ms ({:.2} ms a batch), inserting {:.2} s ({:.0} µs a job)",
                total.as_secs_f64(),
                pass.enqueued,
                pass.batches,
                pass.paging.as_secs_f64() * 1e3,
                pass.paging.as_secs_f64() * 1e3 / f64::from(pass.batches),
                pass.inserting.as_secs_f64(),
                pass.inserting.as_secs_f64() * 1e6 / pass.enqueued.max(1) as f64,
            );
        }
    }
    // Every due certificate has its job now: the next pass finds nothing.
    let mut group = c.benchmark_group(format!("scheduler/{backend}"));
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("steady_pass", |b| {
        b.iter(|| {
            let batch = rt.block_on(store.due_for_renewal(now(), LIMIT)).unwrap();
            assert!(batch.is_empty());
        })
    });
    group.bench_function("steady_pass_keyset", |b| {
        b.iter(|| {
            let page = rt
                .block_on(store.due_without_job(now(), None, LIMIT))
                .unwrap();
            assert!(page.is_empty());
        })
    });
    group.finish();
}

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// `url` with its database (path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{database}{query}", &base[..authority_end])
}

fn postgres(c: &mut Criterion, rt: &Runtime, rows: i64) {
    let admin_url =
        std::env::var("CERTFLOW_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
    let mut admin = rt
        .block_on(PgConnection::connect(&admin_url))
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin_url}: {e}"));
    let name = format!("certflow_bench_{}", uuid::Uuid::new_v4().simple());
    rt.block_on(admin.execute(AssertSqlSafe(format!("CREATE DATABASE {name}"))))
        .unwrap();
    let url = with_database(&admin_url, &name);
    let store = rt
        .block_on(PgStore::connect(&url, PgOptions::default()))
        .unwrap();

    // The same store without TLS: sqlx 0.9.0 leaves Nagle's algorithm on, and
    // a statement larger than one TLS record (16 KiB, here the 1000 ids of the
    // labels query) then waits for the server's delayed ACK (see BENCHMARKS.md).
    let separator = if url.contains('?') { '&' } else { '?' };
    let store_no_tls = rt
        .block_on(PgStore::connect(
            &format!("{url}{separator}sslmode=disable"),
            PgOptions::default(),
        ))
        .unwrap();

    let mut conn = rt.block_on(PgConnection::connect(&url)).unwrap();
    let mut steps = Vec::new();
    step(&mut steps, "issuer", || {
        rt.block_on(conn.execute(ISSUER)).unwrap();
    });
    step(&mut steps, "certificates", || {
        rt.block_on(
            sqlx::query(CERTIFICATES_POSTGRES)
                .bind(rows)
                .bind(NOW)
                .execute(&mut conn),
        )
        .unwrap();
    });
    step(&mut steps, "labels", || {
        rt.block_on(conn.execute(LABELS)).unwrap();
    });
    // What autovacuum would soon do: statistics and the visibility map.
    step(&mut steps, "vacuum analyze", || {
        rt.block_on(conn.execute("VACUUM ANALYZE")).unwrap();
    });
    // At rest, as SQLite's checkpoint above: otherwise the checkpoint the
    // bulk load triggers writes hundreds of megabytes during the first
    // measurements (it made the first scheduler pass's commits 3 ms each).
    step(&mut steps, "checkpoint", || {
        rt.block_on(conn.execute("CHECKPOINT")).unwrap();
    });
    let due: i64 = rt
        .block_on(sqlx::query_scalar(COUNT_DUE).bind(NOW).fetch_one(&mut conn))
        .unwrap();
    report_seeding("postgres", rows, due, &steps);

    // Custom plans (the first executions of a prepared statement) and the
    // generic plan PostgreSQL may settle on after five.
    rt.block_on(
        sqlx::raw_sql(AssertSqlSafe(format!(
            "PREPARE due_index AS {INDEXED}; PREPARE due_scan AS {SCAN}"
        )))
        .execute(&mut conn),
    )
    .unwrap();
    for (which, statement, mode) in [
        ("index, custom plan", "due_index", "force_custom_plan"),
        ("index, generic plan", "due_index", "force_generic_plan"),
        ("scan", "due_scan", "force_custom_plan"),
    ] {
        rt.block_on(conn.execute(AssertSqlSafe(format!("SET plan_cache_mode = {mode}"))))
            .unwrap();
        let plan: Vec<String> = rt
            .block_on(
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "EXPLAIN EXECUTE {statement}('active', {NOW}, {LIMIT})"
                )))
                .fetch_all(&mut conn),
            )
            .unwrap();
        print_plan("postgres", which, &plan);
    }
    rt.block_on(sqlx::raw_sql("RESET plan_cache_mode; DEALLOCATE ALL").execute(&mut conn))
        .unwrap();

    let ids = |conn: &mut PgConnection, sql: &'static str| -> Vec<String> {
        rt.block_on(
            sqlx::query_scalar(sql)
                .bind("active")
                .bind(NOW)
                .bind(i64::from(LIMIT))
                .fetch_all(conn),
        )
        .unwrap()
    };
    let expected = store_ids(rt, &store);
    assert_eq!(expected.len(), usize::try_from(due.min(1000)).unwrap());
    assert_eq!(store_ids(rt, &store_no_tls), expected);
    assert_eq!(ids(&mut conn, INDEXED), expected);
    assert_eq!(ids(&mut conn, SCAN), expected);

    let mut group = group(c, "postgres");
    group.bench_function("store_due_for_renewal", |b| {
        b.iter(|| black_box(rt.block_on(store.due_for_renewal(now(), LIMIT)).unwrap()))
    });
    group.bench_function("store_due_for_renewal_no_tls", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(store_no_tls.due_for_renewal(now(), LIMIT))
                    .unwrap(),
            )
        })
    });
    group.bench_function("sql_index", |b| {
        b.iter(|| black_box(ids(&mut conn, INDEXED)))
    });
    slow(&mut group);
    group.bench_function("sql_full_scan", |b| {
        b.iter(|| black_box(ids(&mut conn, SCAN)))
    });
    group.finish();

    // Over TLS, as deployed; the per-job statements are small, so Nagle's
    // delay (see above) does not apply to them.
    let mut clear = || {
        rt.block_on(sqlx::query("TRUNCATE renewal_jobs").execute(&mut conn))
            .unwrap();
    };
    scheduler(c, rt, "postgres", &store, due, &mut clear);
    rt.block_on(conn.close()).unwrap();
    rt.block_on(store.close());
    rt.block_on(store_no_tls.close());
    rt.block_on(admin.execute(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))))
        .unwrap();
    rt.block_on(admin.close()).unwrap();
}

fn due(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = seeded_rows();
    sqlite(c, &rt, rows);
    postgres(c, &rt, rows);
}

criterion_group!(benches, due);
criterion_main!(benches);
