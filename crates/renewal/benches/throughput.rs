//! Renewal throughput: how many due certificates one worker process renews
//! per second, through `Worker::run` (concurrency 32 as `certflow serve`'s default, or `CERTFLOW_BENCH_CONCURRENCY`) and the real
//! services layer wired as `certflow serve` wires it on its defaults — fresh
//! P-256 key, signing by the internal CA, sealing, the version's transaction
//! with its three blobs (`blob.kind = "database"`), the `renewed`
//! notification, the job's acknowledgement. Three queues:
//!
//! - `database/sqlite`: the embedded queue on a SQLite file (the metadata store);
//! - `database/postgres`: the embedded queue on a throwaway PostgreSQL database;
//! - `sqs/moto`: Amazon SQS on moto_server, ledger and metadata on SQLite.
//!
//! Each iteration: the scheduler enqueues all 200 certificates (not timed),
//! then the worker renews until all 200 are renewed (timed). Certificates live
//! 60 seconds and are due 1% into their life (0.6 s after issuance; the
//! policy's lifetime starts at issuance, not at the backdated notBefore), so
//! every renewal makes the next one due almost at once. Run it with
//! `cargo bench -p certflow-renewal --bench throughput`; figures in BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use certflow_api::{CreateCertificateRequest, RenewalPolicyView};
use certflow_core::DomainResult;
use certflow_core::model::{Actor, KeyType};
use certflow_core::ports::{BlobStore, MetadataStore, NotificationStore, RenewalLedger};
use certflow_core::renewal::{JobDelivery, QueueStats, RenewalJob, RenewalQueue};
use certflow_renewal::sqs::ensure_queues;
use certflow_renewal::{
    Scheduler, SchedulerSettings, SqsOptions, SqsRenewalQueue, Worker, WorkerSettings,
};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::{CaSettings, Services};
use certflow_store::{DbQueueOptions, PgOptions, PgStore, SqliteStore};
use certflow_testkit::{Moto, PgDatabase};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::runtime::Runtime;
use tokio::sync::watch;

// Renewals run inside `certflow serve`, whose allocator this is (SQLite's
// `malloc` included: unprefixed); under glibc's the bench spent a tenth of
// its CPU in malloc and free that the server does not.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Due certificates per iteration.
const N: u64 = 200;
/// Jobs a worker runs at once: `CERTFLOW_BENCH_CONCURRENCY`, 32 by default (`certflow serve`'s).
fn concurrency() -> u32 {
    std::env::var("CERTFLOW_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

/// One worker process: its services, scheduler and worker over one queue.
struct Rig {
    scheduler: Scheduler,
    worker: Worker,
    timed: Arc<Timed>,
    _dir: TempDir,
}

/// Time spent in the queue's calls, per call kind: (calls, items, nanoseconds).
#[derive(Default)]
struct Calls {
    receive: [AtomicU64; 3],
    complete: [AtomicU64; 3],
    /// Drains, renewals and this process's CPU clock ticks while draining.
    drained: [AtomicU64; 3],
}

/// This process's user + system CPU so far, in clock ticks (`/proc/self/stat`).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name's closing parenthesis; utime and stime
    // are the 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The real queue, with its calls counted and timed (to split a job's time
/// between the queue and the renewal itself).
struct Timed {
    inner: Arc<dyn RenewalQueue>,
    calls: Calls,
}

fn add(slot: &[AtomicU64; 3], items: u64, start: Instant) {
    slot[0].fetch_add(1, Ordering::Relaxed);
    slot[1].fetch_add(items, Ordering::Relaxed);
    slot[2].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

impl Timed {
    fn report(&self, name: &str) {
        let get = |s: &[AtomicU64; 3]| s.each_ref().map(|a| a.load(Ordering::Relaxed));
        let [rc, ri, rt] = get(&self.calls.receive);
        let [cc, _, ct] = get(&self.calls.complete);
        let [_, renewed, ticks] = get(&self.calls.drained);
        // Clock ticks are 10 ms (USER_HZ 100 on Linux).
        eprintln!(
            "{name}: {rc} receives, {:.2} jobs each, {:.2} ms each; {cc} completes, {:.2} ms each; \
             process CPU {:.0} µs a renewal while draining",
            ri as f64 / rc.max(1) as f64,
            rt as f64 / 1e6 / rc.max(1) as f64,
            ct as f64 / 1e6 / cc.max(1) as f64,
            ticks as f64 * 10_000.0 / renewed.max(1) as f64,
        );
    }
}

#[async_trait]
impl RenewalQueue for Timed {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn enqueue(&self, job: &RenewalJob) -> DomainResult<bool> {
        self.inner.enqueue(job).await
    }
    async fn enqueue_batch(&self, jobs: &[RenewalJob]) -> DomainResult<Vec<bool>> {
        self.inner.enqueue_batch(jobs).await
    }
    async fn receive(
        &self,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> DomainResult<Vec<JobDelivery>> {
        let start = Instant::now();
        let got = self.inner.receive(max, lease, wait).await;
        if let Ok(got) = &got {
            add(&self.calls.receive, got.len() as u64, start);
        }
        got
    }
    async fn heartbeat(&self, delivery: &JobDelivery, lease: Duration) -> DomainResult<()> {
        self.inner.heartbeat(delivery, lease).await
    }
    fn in_metadata_database(&self) -> bool {
        self.inner.in_metadata_database()
    }
    async fn complete(&self, delivery: &JobDelivery) -> DomainResult<()> {
        let start = Instant::now();
        let done = self.inner.complete(delivery).await;
        add(&self.calls.complete, 1, start);
        done
    }
    async fn retry(
        &self,
        delivery: &JobDelivery,
        error: &str,
        retry_in: Duration,
    ) -> DomainResult<()> {
        self.inner.retry(delivery, error, retry_in).await
    }
    async fn dead_letter(&self, delivery: &JobDelivery, error: &str) -> DomainResult<()> {
        self.inner.dead_letter(delivery, error).await
    }
    async fn stats(&self) -> DomainResult<QueueStats> {
        self.inner.stats().await
    }
    async fn recover(&self) -> DomainResult<u64> {
        self.inner.recover().await
    }
}

fn sealer() -> Sealer {
    Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        vec![],
    )))
}

/// Services over `store` (its blobs and notifications too, as on `certflow
/// serve`'s defaults) with the internal CA and `N` due certificates.
async fn services<S>(store: Arc<S>) -> Services
where
    S: MetadataStore + BlobStore + NotificationStore + 'static,
{
    let services =
        Services::new(store.clone(), store.clone(), sealer(), None).with_notifications(store);
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
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..u64::from(concurrency()) {
        let services = services.clone();
        tasks.spawn(async move {
            for i in (part..N).step_by(concurrency() as usize) {
                let req = CreateCertificateRequest {
                    names: vec![format!("r{i}.bench.example.com")],
                    team: "bench".into(),
                    key_type: Some("ecdsa-p256".into()),
                    validity_seconds: Some(60),
                    renewal: Some(RenewalPolicyView {
                        renew_at_fraction: 0.01,
                        renew_before_days: None,
                        jitter_fraction: 0.0,
                    }),
                    ..Default::default()
                };
                let actor = Actor {
                    subject: "bench".into(),
                    source: None,
                };
                services
                    .create_certificate(&actor, &req, OffsetDateTime::now_utc())
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    services
}

fn rig<S: MetadataStore + RenewalLedger + 'static>(
    store: Arc<S>,
    services: Services,
    queue: Arc<dyn RenewalQueue>,
    dir: TempDir,
) -> Rig {
    let timed = Arc::new(Timed {
        inner: queue,
        calls: Calls::default(),
    });
    let queue: Arc<dyn RenewalQueue> = timed.clone();
    let scheduler = Scheduler::new(
        store.clone(),
        queue.clone(),
        SchedulerSettings {
            interval: Duration::from_secs(60),
            batch: 500,
            max_attempts: 5,
        },
    )
    .with_ledger(store);
    let worker = Worker::new(
        services,
        queue,
        WorkerSettings {
            concurrency: concurrency(),
            lease: Duration::from_secs(60),
            work_timeout: Duration::from_secs(300),
            wait: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(1),
        },
    );
    Rig {
        scheduler,
        worker,
        timed,
        _dir: dir,
    }
}

impl Rig {
    /// Enqueues a job for every certificate (each becomes due within the
    /// second its previous renewal was stored).
    async fn enqueue_all(&self) {
        let mut total = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while total < N {
            total += self
                .scheduler
                .scan(OffsetDateTime::now_utc())
                .await
                .unwrap()
                .enqueued;
            if total < N {
                assert!(Instant::now() < deadline, "only {total} of {N} became due");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert_eq!(total, N);
    }

    /// Runs the worker as `certflow serve` does (`Worker::run`: a job taken
    /// whenever a slot frees up) until `N` more renewals are stored and
    /// acknowledged, then stops it.
    async fn drain(&self) -> Duration {
        let stats = self.worker.stats();
        let target = stats.renewed.load(Ordering::Relaxed) + N;
        // A queue on the metadata database is acknowledged in the version's
        // own commit, which `renewed` counts; others by `complete` after it.
        let completes = self.timed.calls.complete[0].load(Ordering::Relaxed)
            + if self.timed.in_metadata_database() {
                0
            } else {
                N
            };
        let (stop, stopped) = watch::channel(false);
        let start = Instant::now();
        let cpu_before = cpu_ticks();
        let running = tokio::spawn(self.worker.clone().run(stopped));
        while stats.renewed.load(Ordering::Relaxed) < target
            || self.timed.calls.complete[0].load(Ordering::Relaxed) < completes
        {
            assert_eq!(stats.retried.load(Ordering::Relaxed), 0, "a renewal failed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed();
        let drained = &self.timed.calls.drained;
        drained[0].fetch_add(1, Ordering::Relaxed);
        drained[1].fetch_add(N, Ordering::Relaxed);
        drained[2].fetch_add(cpu_ticks() - cpu_before, Ordering::Relaxed);
        stop.send(true).unwrap();
        running.await.unwrap();
        elapsed
    }
}

fn bench(c: &mut Criterion, rt: &Runtime, name: &str, rig: &Rig) {
    let mut group = c.benchmark_group("renewal");
    group
        .throughput(Throughput::Elements(N))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    rig.enqueue_all().await;
                    timed += rig.drain().await;
                }
                timed
            })
        })
    });
    group.finish();
    rig.timed.report(name);
}

fn throughput(c: &mut Criterion) {
    // Both cores: the worker's jobs sign and seal in parallel.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    {
        let dir = tempfile::tempdir().unwrap();
        let store = rt.block_on(async {
            Arc::new(
                SqliteStore::open(&dir.path().join("certflow.db"))
                    .await
                    .unwrap(),
            )
        });
        let services = rt.block_on(services(store.clone()));
        let queue = Arc::new(store.renewal_queue(DbQueueOptions::default()));
        let rig = rig(store.clone(), services, queue, dir);
        bench(c, &rt, "database/sqlite", &rig);
        drop(rig);
        rt.block_on(store.close());
    }

    {
        let pg = PgDatabase::create();
        let dir = tempfile::tempdir().unwrap();
        let store = rt.block_on(async {
            Arc::new(
                PgStore::connect(&pg.url(), PgOptions::default())
                    .await
                    .unwrap(),
            )
        });
        let services = rt.block_on(services(store.clone()));
        let queue = Arc::new(store.renewal_queue(DbQueueOptions::default()));
        let rig = rig(store.clone(), services, queue, dir);
        bench(c, &rt, "database/postgres", &rig);
        drop(rig);
        rt.block_on(store.close());
    }

    {
        let moto = rt.block_on(Moto::start());
        let dir = tempfile::tempdir().unwrap();
        let (store, queue) = rt.block_on(async {
            let store = Arc::new(
                SqliteStore::open(&dir.path().join("certflow.db"))
                    .await
                    .unwrap(),
            );
            let sdk = moto.sdk_config().await;
            let (url, dlq) = ensure_queues(&sdk, "renewals", 5).await.unwrap();
            let options = SqsOptions {
                dead_letter_queue_url: Some(dlq),
                ..SqsOptions::new(url)
            };
            let ledger: Arc<dyn RenewalLedger> = store.clone();
            (store, SqsRenewalQueue::new(&sdk, options, ledger))
        });
        let services = rt.block_on(services(store.clone()));
        let rig = rig(store.clone(), services, Arc::new(queue), dir);
        bench(c, &rt, "sqs/moto", &rig);
        drop(rig);
        rt.block_on(store.close());
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
