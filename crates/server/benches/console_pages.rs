//! The web console at 100,000 certificates: wall time of one page request
//! (routing, session lookup, the store's queries, template rendering, HTTP
//! over loopback) for the inventory's first page, a search, a filtered and a
//! sorted page deep in the list, and the dashboard — as an administrator
//! (all teams) and as an operator of three teams — on SQLite and PostgreSQL.
//!
//! The server is the real `certflow serve` (a binary crate has no library a
//! bench could link) with `[auth.oidc]` configured (the provider is never
//! called: the bench writes its two sessions straight into the database, as
//! a login would). Seeding is bulk SQL through the `sqlite3` and `psql`
//! command-line clients after the server has migrated its database:
//! certificates over 20 teams and two issuers (one in ten from the second),
//! 3 % archived and 3 % revoked, expiring from 10 days ago to 110 days ahead,
//! each with its DNS name and an `env` label. Seeding is timed and printed,
//! not measured. No version rows are seeded: no measured page reads them.
//!
//! Run with `cargo bench -p certflow-server --bench console_pages`; without
//! `--bench` (`cargo test --benches`) it seeds 2,000 certificates and runs
//! each request once. PostgreSQL is the local server (127.0.0.1:5432, trust
//! auth) through `certflow_testkit::PgDatabase`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use certflow_core::access::{Principal, PrincipalKind, Role};
use criterion::{Criterion, criterion_group, criterion_main};

/// Full size under `cargo bench`; a smoke-test size otherwise.
fn seeded_rows() -> i64 {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    if benchmarking { 100_000 } else { 2_000 }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the seeding SQL goes.
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Db {
    fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Runs `sql` with the backend's command-line client; returns its output.
    fn run(&self, sql: &str) -> String {
        let mut cmd = match self {
            Db::Sqlite(path) => {
                let mut c = Command::new("sqlite3");
                c.arg("-batch").arg(path);
                c
            }
            Db::Postgres(url) => {
                let mut c = Command::new("psql");
                c.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", url]);
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sqlite3 and psql are required (scripts/peers.sh)");
        let script = match self {
            // The server holds the database open: wait for its locks.
            Db::Sqlite(_) => format!(".timeout 30000\n{sql}\n"),
            Db::Postgres(_) => format!("{sql}\n"),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The rows, as one `INSERT ... SELECT` over a generated sequence `n`.
fn seed_sql(db: &Db, rows: i64, now: i64, default_issuer: &str) -> String {
    let (seq, id, from) = match db {
        Db::Sqlite(_) => (
            format!(
                "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < {rows})"
            ),
            "printf('%08x-%04x-7000-8000-%012x', (n * 2654435761) % 4294967296, n % 65536, n)",
            "seq",
        ),
        Db::Postgres(_) => (
            String::new(),
            "lpad(to_hex((n * 2654435761) % 4294967296), 8, '0') || '-' || lpad(to_hex(n % 65536), 4, '0') \
             || '-7000-8000-' || lpad(to_hex(n), 12, '0')",
            "generate_series(0::BIGINT, 0::BIGINT + ROWS - 1) AS n",
        ),
    };
    let from = from.replace("ROWS", &rows.to_string());
    // not_after from 10 days ago to 110 days ahead, spread over distinct seconds.
    format!(
        "{seq}
INSERT INTO certificates (id, name, name_folded, team, profile, key_type, key_source, names,
    validity_days, issuer_id, renew_at_fraction, renew_before_days, status, current_version,
    not_after, renew_after, created_at, updated_at)
SELECT {id}, 'svc-' || n || '.example.com', 'svc-' || n || '.example.com', 'team-' || (n % 20),
    'tls-server', 'ecdsa-p256', 'server', '[{{\"type\":\"dns\",\"value\":\"svc-' || n || '.example.com\"}}]',
    90, CASE WHEN n % 10 = 9 THEN '00000000-0000-7000-8000-0000000000b2' ELSE '{default_issuer}' END,
    0.6666666666666666, NULL,
    CASE WHEN n % 100 < 3 THEN 'archived' WHEN n % 100 < 6 THEN 'revoked' ELSE 'active' END, 1,
    {now} - 864000 + (n * 7919) % 10368000, {now} - 3456000 + (n * 7919) % 10368000,
    {now} - 8640000 + (n * 7919) % 10368000, {now} - 8640000 + (n * 7919) % 10368000
FROM {from};
INSERT INTO certificate_names (certificate_id, name) SELECT id, name_folded FROM certificates;
INSERT INTO certificate_labels (certificate_id, key, value)
SELECT id, 'env', CASE WHEN substr(id, 1, 1) < '8' THEN 'prod' ELSE 'staging' END FROM certificates;"
    )
}

const SECOND_ISSUER: &str = "INSERT INTO issuers (id, name, kind, is_default, key_type, issuing_cert_pem, \
    chain_pem, key_blob, root_key_blob, subject, not_after, created_at) VALUES ('00000000-0000-7000-8000-0000000000b2', \
    'bench-acme', 'acme', FALSE, 'ecdsa-p256', '-----BEGIN CERTIFICATE-----', '', 'issuers/bench/issuing.key', \
    NULL, 'CN=bench', 4102444800, 1735689600);";

/// A session for `principal`, as a login writes it; returns the cookie value.
fn session(db: &Db, principal: &Principal, now_ms: i64) -> String {
    let cookie = format!("bench-session-{}", principal.subject);
    let hash = hex::encode(digest::digest(&digest::SHA256, cookie.as_bytes()).as_ref());
    let json = serde_json::to_string(principal)
        .unwrap()
        .replace('\'', "''");
    let day = 86_400_000;
    db.run(&format!(
        "INSERT INTO sessions (id_hash, subject, principal, sealed_id_token, created_ms, \
         last_seen_ms, idle_expires_ms, absolute_expires_ms) VALUES ('{hash}', '{}', '{json}', \
         NULL, {now_ms}, {now_ms}, {}, {});",
        principal.subject,
        now_ms + day,
        now_ms + day
    ));
    cookie
}

struct Fixture {
    _server: Server,
    _dir: tempfile::TempDir,
    _pg: Option<certflow_testkit::PgDatabase>,
    url: String,
    admin: String,
    operator: String,
    second_issuer: &'static str,
}

fn fixture(backend: &str, rows: i64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("certflow.toml");
    let pg = (backend == "postgres").then(certflow_testkit::PgDatabase::create);
    let database = match &pg {
        Some(pg) => format!("[database]\nurl = \"{}\"\n", pg.url()),
        None => String::new(),
    };
    std::fs::write(
        &config,
        format!(
            r#"{database}
[auth.oidc]
issuer = "http://127.0.0.1:9"
client_id = "console"
client_secret = "unused"
redirect_uri = "http://127.0.0.1:9/console/callback"

[console]
rate_limit_per_sec = 1000000.0
rate_limit_burst = 1000000.0
"#
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_certflow"))
        .args(["serve", "--roles", "api"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CERTFLOW_DATA_DIR", dir.path())
        .env("CERTFLOW_SERVER__LISTEN", "127.0.0.1:0")
        .env("CERTFLOW_AGENT__LISTEN", "off") // pages only: no agent listener
        .env("CERTFLOW_METRICS__LISTEN", "off")
        .env("CERTFLOW_CONFIG", &config)
        // A fixed throwaway key: with PostgreSQL it must come from outside.
        .env(
            "CERTFLOW_MASTER_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("server.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let mut url = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(u) = line.strip_prefix("certflow: listening on ") {
            url = u.to_owned();
            break;
        }
    }
    assert!(
        !url.is_empty(),
        "certflow serve did not start: {}",
        std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
    );
    let server = Server(child);
    let db = match &pg {
        Some(pg) => Db::Postgres(pg.url()),
        None => Db::Sqlite(dir.path().join("certflow.db")),
    };
    let default_issuer = db.run("SELECT id FROM issuers WHERE is_default;");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let started = Instant::now();
    db.run(SECOND_ISSUER);
    db.run(&seed_sql(&db, rows, now, &default_issuer));
    if let Db::Sqlite(_) = db {
        db.run("PRAGMA wal_checkpoint(TRUNCATE);");
    }
    let seeded = started.elapsed();
    let count = db.run("SELECT COUNT(*) FROM certificates;");
    println!(
        "seeded {}: {count} certificates (with names and labels) in {:.1} s",
        db.name(),
        seeded.as_secs_f64()
    );
    let now_ms = now * 1000;
    let admin = session(
        &db,
        &Principal {
            subject: "bench-admin".into(),
            kind: PrincipalKind::Person,
            roles: vec![Role::Admin],
            teams: vec![],
        },
        now_ms,
    );
    let operator = session(
        &db,
        &Principal {
            subject: "bench-operator".into(),
            kind: PrincipalKind::Person,
            roles: vec![Role::Operator],
            teams: vec!["team-1".into(), "team-2".into(), "team-3".into()],
        },
        now_ms,
    );
    Fixture {
        _server: server,
        _dir: dir,
        _pg: pg,
        url,
        admin,
        operator,
        second_issuer: "00000000-0000-7000-8000-0000000000b2",
    }
}

/// The pages measured: (name, path, who asks).
fn pages(f: &Fixture, rows: i64) -> Vec<(&'static str, String, String)> {
    let deep = (rows / 50 / 2).max(1);
    vec![
        (
            "inventory_first_page",
            "/console/certificates".into(),
            f.admin.clone(),
        ),
        (
            "inventory_search",
            "/console/certificates?search=svc-4242".into(),
            f.admin.clone(),
        ),
        (
            "inventory_filtered",
            format!(
                "/console/certificates?team=team-9&label=env%3Dprod&status=active&expiring=30&issuer={}",
                f.second_issuer
            ),
            f.admin.clone(),
        ),
        (
            "inventory_sorted_deep_page",
            format!("/console/certificates?sort=not_after&order=desc&page={deep}"),
            f.admin.clone(),
        ),
        ("dashboard_admin", "/console/".into(), f.admin.clone()),
        (
            "dashboard_operator_3_teams",
            "/console/".into(),
            f.operator.clone(),
        ),
    ]
}

fn get(http: &reqwest::blocking::Client, url: &str, cookie: &str) -> String {
    let r = http
        .get(url)
        .header("cookie", format!("__Host-certflow_session={cookie}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{url}");
    r.text().unwrap()
}

fn bench_backend(c: &mut Criterion, backend: &str) {
    let rows = seeded_rows();
    let f = fixture(backend, rows);
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // Each page once, checked, before timing.
    for (name, path, who) in pages(&f, rows) {
        let body = get(&http, &format!("{}{path}", f.url), &who);
        let ok = match name {
            "inventory_search" => body.contains("svc-4242.example.com"),
            "dashboard_admin" | "dashboard_operator_3_teams" => body.contains("class=\"num\""),
            _ => body.contains("Showing 1") || body.contains("Showing "),
        };
        assert!(ok, "{name}: unexpected page");
    }
    let mut group = c.benchmark_group(format!("console/{backend}"));
    // The slowest pages take seconds: few flat samples keep a run short.
    group
        .sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, path, who) in pages(&f, rows) {
        let url = format!("{}{path}", f.url);
        group.bench_function(name, |b| b.iter(|| get(&http, &url, &who)));
    }
    group.finish();
}

fn console(c: &mut Criterion) {
    // CONSOLE_BENCH_BACKENDS=sqlite (or postgres) runs one.
    let only = std::env::var("CONSOLE_BENCH_BACKENDS").unwrap_or_default();
    for backend in ["sqlite", "postgres"] {
        if only.is_empty() || only.split(',').any(|b| b == backend) {
            bench_backend(c, backend);
        }
    }
}

criterion_group!(benches, console);
criterion_main!(benches);
