//! Certificate creation through `Services::create_certificate`, end to end:
//! request validation, key generation (or CSR parsing and verification),
//! signing by the internal CA (P-256), sealing the key, three blob writes to a
//! local directory and the metadata transaction (certificate, version, names,
//! audit event). On SQLite (a temporary file) and on PostgreSQL (a fresh
//! database, dropped afterwards), there both over the URL's connection (TLS
//! when the server offers it, as the local test server does) and with
//! `sslmode=disable`, to show TLS's share (see BENCHMARKS.md).
//!
//! - `p256_server_key`: certflow generates a P-256 key and keeps it sealed.
//! - `p256_csr`: the requester's P-256 key, from `testdata/csr/p256.csr`.
//! - `p256_server_key_x8`: eight server-key creations at once (throughput
//!   with concurrency, on a two-worker runtime).
//!
//! Every creation uses a new name, so each iteration is a real first
//! issuance. Run it with `cargo bench -p certflow-services --bench issuance`;
//! PostgreSQL is `CERTFLOW_TEST_PG_URL` or
//! `postgres://postgres@127.0.0.1:5432/postgres`, as for the store tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use certflow_api::CreateCertificateRequest;
use certflow_blob::ObjectBlobStore;
use certflow_core::model::{Actor, KeyType};
use certflow_core::ports::MetadataStore;
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::{CaSettings, Services};
use certflow_store::{PgOptions, PgStore, SqliteStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use time::OffsetDateTime;
use tokio::runtime::Runtime;

const CSR: &str = include_str!("../../../testdata/csr/p256.csr");

/// Creations in flight at once in the concurrent variant.
const CONCURRENCY: u64 = 8;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Makes every certificate name unique, across variants and backends.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A request for a new certificate: server-generated P-256 key, or `csr`'s key.
fn request(variant: &str, csr: Option<&str>) -> CreateCertificateRequest {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{variant}-{n}.bench.example.com");
    CreateCertificateRequest {
        name: Some(name.clone()),
        names: vec![name],
        team: "bench".into(),
        key_type: csr.is_none().then(|| "ecdsa-p256".into()),
        csr: csr.map(str::to_owned),
        ..CreateCertificateRequest::default()
    }
}

fn actor() -> Actor {
    Actor {
        subject: "bench".into(),
        source: Some("127.0.0.1".into()),
    }
}

/// Use cases over `store`, a local blob directory and the internal CA
/// (created by the first call for a store, reused by later ones, which must
/// share `sealer`).
async fn services(store: Arc<dyn MetadataStore>, blobs: &Path, sealer: Sealer) -> Services {
    let blobs = Arc::new(ObjectBlobStore::local(blobs).unwrap());
    let services = Services::new(store, blobs, sealer, Some("http://127.0.0.1:8080".into()));
    services
        .ensure_ca(
            &CaSettings {
                name: "bench".into(),
                key_type: KeyType::EcdsaP256,
                root_validity_days: 3650,
                intermediate_validity_days: 1825,
            },
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    services
}

fn sealer() -> Sealer {
    Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        vec![],
    )))
}

async fn create(services: &Services, variant: &str, csr: Option<&str>) {
    let view = services
        .create_certificate(&actor(), &request(variant, csr), OffsetDateTime::now_utc())
        .await
        .unwrap();
    black_box(view);
}

fn bench_backend(c: &mut Criterion, rt: &Runtime, backend: &str, services: &Services) {
    let mut group = c.benchmark_group(format!("issuance/{backend}"));
    group
        .throughput(Throughput::Elements(1))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    group.bench_function("p256_server_key", |b| {
        b.iter(|| rt.block_on(create(services, "key", None)))
    });
    group.bench_function("p256_csr", |b| {
        b.iter(|| rt.block_on(create(services, "csr", Some(CSR))))
    });
    group.throughput(Throughput::Elements(CONCURRENCY));
    group.bench_function(format!("p256_server_key_x{CONCURRENCY}"), |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..CONCURRENCY)
                    .map(|_| {
                        let services = services.clone();
                        tokio::spawn(async move { create(&services, "par", None).await })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            })
        })
    });
    group.finish();
}

fn sqlite(c: &mut Criterion, rt: &Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        rt.block_on(SqliteStore::open(&dir.path().join("certflow.db")))
            .unwrap(),
    );
    let services = rt.block_on(services(store.clone(), &dir.path().join("blobs"), sealer()));
    bench_backend(c, rt, "sqlite", &services);
    rt.block_on(store.close());
}

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

fn postgres(c: &mut Criterion, rt: &Runtime) {
    let admin_url =
        std::env::var("CERTFLOW_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
    let mut admin = rt
        .block_on(PgConnection::connect(&admin_url))
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin_url}: {e}"));
    let name = format!("certflow_bench_{}", uuid::Uuid::new_v4().simple());
    rt.block_on(admin.execute(AssertSqlSafe(format!("CREATE DATABASE {name}"))))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = with_database(&admin_url, &name);
    let separator = if url.contains('?') { '&' } else { '?' };
    let sealer = sealer();
    for (backend, url) in [
        ("postgres", url.clone()),
        (
            "postgres_no_tls",
            format!("{url}{separator}sslmode=disable"),
        ),
    ] {
        let store = Arc::new(
            rt.block_on(PgStore::connect(&url, PgOptions::default()))
                .unwrap(),
        );
        let services = rt.block_on(services(
            store.clone(),
            &dir.path().join("blobs"),
            sealer.clone(),
        ));
        bench_backend(c, rt, backend, &services);
        rt.block_on(store.close());
    }
    rt.block_on(admin.execute(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))))
        .unwrap();
    rt.block_on(admin.close()).unwrap();
}

fn issuance(c: &mut Criterion) {
    // Both cores, for the concurrent variant.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    sqlite(c, &rt);
    postgres(c, &rt);
}

criterion_group!(benches, issuance);
criterion_main!(benches);
