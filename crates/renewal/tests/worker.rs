//! Scheduler and workers in process over the real services layer: the internal
//! CA (P-256) or an ACME issuer against pebble, the metadata store on SQLite
//! (a file) or PostgreSQL (a throwaway database), blobs in a local directory.
//! Schedulers race on one PostgreSQL database; deliveries are duplicated by
//! expiring a lease through the queue's injected clock; a CA that stops
//! answering is pebble killed after the first issuance.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use certflow_acme::{AcmeIssuer, AcmeSettings, Http01Tokens, SealedAccountStore};
use certflow_api::{CreateCertificateRequest, CreateSubscriptionRequest};
use certflow_blob::ObjectBlobStore;
use certflow_core::DomainError;
use certflow_core::model::{Actor, AuditQuery, KeyType};
use certflow_core::notify::{Delivery, DeliveryQuery, EventKind};
use certflow_core::ports::{BlobStore, MetadataStore, NotificationStore, RenewalLedger};
use certflow_core::renewal::{JobDelivery, JobState, RenewalJob, RenewalQueue};
use certflow_renewal::{Scheduler, SchedulerSettings, Worker, WorkerSettings};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::{CaSettings, CpuPool, JobOutcome, Services};
use certflow_store::{DbQueueOptions, DbRenewalQueue, PgOptions, PgStore, SqliteStore};
use certflow_testkit::PgDatabase;
use certflow_testkit::pebble::{Pebble, PebbleOptions};
use serde_json::json;
use tempfile::TempDir;
use time::OffsetDateTime;
use uuid::Uuid;

const TEAM: &str = "payments";
const OTHER_TEAM: &str = "search";

// ---------------------------------------------------------------- harness

/// The database under test; both implement every port the services use.
#[derive(Clone)]
enum Db {
    Sqlite(Arc<SqliteStore>),
    Pg(Arc<PgStore>),
}

impl Db {
    fn metadata(&self) -> Arc<dyn MetadataStore> {
        match self {
            Db::Sqlite(s) => s.clone(),
            Db::Pg(s) => s.clone(),
        }
    }
    fn ledger(&self) -> Arc<dyn RenewalLedger> {
        match self {
            Db::Sqlite(s) => s.clone(),
            Db::Pg(s) => s.clone(),
        }
    }
    fn notifications(&self) -> Arc<dyn NotificationStore> {
        match self {
            Db::Sqlite(s) => s.clone(),
            Db::Pg(s) => s.clone(),
        }
    }
    /// The database queue, polling often so tests do not wait on it.
    fn queue(&self) -> DbRenewalQueue {
        let options = DbQueueOptions {
            poll_interval: Duration::from_millis(20),
        };
        match self {
            Db::Sqlite(s) => s.renewal_queue(options),
            Db::Pg(s) => s.renewal_queue(options),
        }
    }
}

/// A clock the tests move forward (seconds added to the system time).
#[derive(Clone, Default)]
struct Skew(Arc<AtomicI64>);

impl Skew {
    fn advance(&self, d: Duration) {
        self.0
            .fetch_add(i64::try_from(d.as_secs()).unwrap(), Ordering::SeqCst);
    }
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::seconds(self.0.load(Ordering::SeqCst))
    }
    fn clock(&self) -> certflow_store::Clock {
        let skew = self.0.clone();
        Arc::new(move || {
            OffsetDateTime::now_utc() + time::Duration::seconds(skew.load(Ordering::SeqCst))
        })
    }
}

struct Env {
    services: Services,
    db: Db,
    /// The schedulers' and queues' time: an hour ahead, when every 60-second
    /// certificate is due (jobs are runnable from the scan's `now`).
    skew: Skew,
    blobs: Arc<ObjectBlobStore>,
    sealer: Sealer,
    _pg: Option<PgDatabase>,
    _dir: TempDir,
}

enum Backend {
    Sqlite,
    Postgres,
}

impl Env {
    /// Services over a fresh database with notifications on and the internal CA (P-256).
    async fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (db, pg) = match backend {
            Backend::Sqlite => (
                Db::Sqlite(Arc::new(
                    SqliteStore::open(&dir.path().join("certflow.db"))
                        .await
                        .unwrap(),
                )),
                None,
            ),
            Backend::Postgres => {
                let pg = PgDatabase::create();
                let store = PgStore::connect(&pg.url(), PgOptions::default())
                    .await
                    .unwrap();
                (Db::Pg(Arc::new(store)), Some(pg))
            }
        };
        let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
        let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
            MasterKey::generate().unwrap(),
            vec![],
        )));
        let services = Services::new(db.metadata(), blobs.clone(), sealer.clone(), None)
            .with_notifications(db.notifications());
        services
            .ensure_ca(
                &CaSettings {
                    name: "internal".into(),
                    key_type: KeyType::EcdsaP256,
                    root_validity_days: 3650,
                    intermediate_validity_days: 1825,
                },
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
        let skew = Skew::default();
        skew.advance(Duration::from_secs(3600));
        Self {
            services,
            db,
            skew,
            blobs,
            sealer,
            _pg: pg,
            _dir: dir,
        }
    }

    /// A 60-second P-256 certificate with a server-held key, due after 10% of its life.
    async fn certificate(&self, name: &str, team: &str, issuer_id: Option<Uuid>) -> Uuid {
        let req = CreateCertificateRequest {
            names: vec![name.into()],
            team: team.into(),
            key_type: Some("ecdsa-p256".into()),
            validity_seconds: Some(60),
            issuer_id,
            renewal: Some(certflow_api::RenewalPolicyView {
                renew_at_fraction: 0.1,
                renew_before_days: None,
                jitter_fraction: 0.0,
            }),
            ..Default::default()
        };
        self.services
            .create_certificate(&actor(), &req, OffsetDateTime::now_utc())
            .await
            .unwrap()
            .certificate
            .id
    }

    /// Subscribes `team` to every event kind, on a webhook nobody dispatches to.
    async fn subscribe(&self, team: &str) -> Uuid {
        self.services
            .create_subscription(
                &actor(),
                &CreateSubscriptionRequest {
                    team: team.into(),
                    events: EventKind::ALL.iter().map(|k| k.as_str().into()).collect(),
                    channel: json!({"type": "webhook", "url": "https://hooks.example.com/hook", "format": "json"}),
                },
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap()
            .id
    }

    /// Deliveries recorded for `team`, oldest first.
    async fn deliveries(&self, team: &str) -> Vec<Delivery> {
        let mut items = self
            .db
            .notifications()
            .list_deliveries(&DeliveryQuery {
                team: Some(team.into()),
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
        items.reverse();
        items
    }

    async fn versions(&self, id: Uuid) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .db
            .metadata()
            .list_versions(id)
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        v.sort_unstable();
        v
    }

    async fn job_of(&self, id: Uuid) -> RenewalJob {
        self.db
            .ledger()
            .latest_renewal_job(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no renewal job for {id}"))
    }

    /// The database queue on the test clock.
    fn queue(&self) -> Arc<DbRenewalQueue> {
        Arc::new(self.db.queue().with_clock(self.skew.clock()))
    }

    /// A queue holding a job (at most 5 attempts) for every certificate
    /// due now: one scheduler pass over it.
    async fn queued(&self) -> Arc<DbRenewalQueue> {
        let queue = self.queue();
        self.scheduler(queue.clone(), 5)
            .scan(self.skew.now())
            .await
            .unwrap();
        queue
    }

    fn scheduler(&self, queue: Arc<dyn RenewalQueue>, max_attempts: u32) -> Scheduler {
        Scheduler::new(
            self.db.metadata(),
            queue,
            SchedulerSettings {
                interval: Duration::from_secs(60),
                batch: 50,
                max_attempts,
            },
        )
        .with_ledger(self.db.ledger())
    }
}

fn actor() -> Actor {
    Actor {
        subject: "test".into(),
        source: None,
    }
}

fn worker_settings() -> WorkerSettings {
    WorkerSettings {
        concurrency: 8,
        lease: Duration::from_secs(30),
        work_timeout: Duration::from_secs(300),
        wait: Duration::from_millis(200),
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(1),
        shutdown_grace: Duration::from_millis(300),
    }
}

fn kinds(deliveries: &[Delivery]) -> Vec<&'static str> {
    deliveries
        .iter()
        .map(|d| d.notification.kind.as_str())
        .collect()
}

// ---------------------------------------------------------------- pebble

/// ACME settings for `pebble` (which validates every challenge: the subject
/// here is renewal, not validation).
fn acme_settings(pebble: &Pebble) -> AcmeSettings {
    let mut s = AcmeSettings::new(pebble.directory_url());
    s.contact = vec!["ops@example.com".into()];
    s.ca_bundle = Some(pebble.ca_bundle_path().to_owned());
    s.order_timeout_secs = 30;
    s.request_timeout_secs = 5;
    s
}

// ---------------------------------------------------------------- tests

/// Two schedulers, each with its own PostgreSQL pool, scan 200 due
/// certificates at once with small pages: every certificate gets exactly one
/// job, and the two reports together count each enqueue once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_on_postgres_enqueue_each_due_certificate_once() {
    let env = Env::start(Backend::Postgres).await;
    let pg = env._pg.as_ref().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let services = env.services.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let req = CreateCertificateRequest {
                    names: vec![format!("c{chunk}-{i}.example.com")],
                    team: TEAM.into(),
                    key_type: Some("ecdsa-p256".into()),
                    validity_seconds: Some(60),
                    ..Default::default()
                };
                let view = services
                    .create_certificate(&actor(), &req, OffsetDateTime::now_utc())
                    .await
                    .unwrap();
                ids.push(view.certificate.id);
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(chunk) = tasks.join_next().await {
        ids.extend(chunk.unwrap());
    }
    assert_eq!(ids.len(), 200);

    let other = Db::Pg(Arc::new(
        PgStore::connect(&pg.url(), PgOptions::default())
            .await
            .unwrap(),
    ));
    let settings = SchedulerSettings {
        interval: Duration::from_secs(60),
        batch: 20,
        max_attempts: 5,
    };
    // One pages by keyset through the ledger, the other from the front of
    // the due index each time: either way, each job once.
    let a = Scheduler::new(
        env.db.metadata(),
        Arc::new(env.db.queue()),
        settings.clone(),
    )
    .with_ledger(env.db.ledger());
    let b = Scheduler::new(other.metadata(), Arc::new(other.queue()), settings);
    let (a, b) = (Arc::new(a), Arc::new(b));
    let now = env.skew.now();
    // Separate tasks, so the two scans run on both runtime threads at once.
    let ta = tokio::spawn({
        let a = a.clone();
        async move { a.scan(now).await }
    });
    let tb = tokio::spawn(async move { b.scan(now).await });
    let (ra, rb) = (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap());
    eprintln!("scheduler a: {ra:?}; scheduler b: {rb:?}");
    assert_eq!(ra.enqueued + rb.enqueued, 200, "{ra:?} {rb:?}");

    let stats = env.db.ledger().renewal_job_stats(now).await.unwrap();
    assert_eq!(stats.queued, 200, "{stats:?}");
    assert_eq!((stats.running, stats.dead), (0, 0));
    for id in &ids {
        let job = env.job_of(*id).await;
        assert_eq!((job.version, job.state), (1, JobState::Queued));
    }
    // A later pass finds nothing new.
    let again = a.scan(now).await.unwrap();
    assert_eq!(again.enqueued, 0, "{again:?}");
}

/// One job delivered twice at once, then once more: one new version. The
/// racing calls answer with version 2 (a loser of the commit race replays the
/// winner through the idempotency key) or find it already renewed; the late
/// one finds it already renewed.
async fn duplicate_job_runs_issue_one_version(backend: Backend) {
    let env = Env::start(backend).await;
    let id = env.certificate("dup.example.com", TEAM, None).await;
    let job = RenewalJob::new(id, 1, 5, OffsetDateTime::now_utc());
    let now = OffsetDateTime::now_utc();
    let (x, y) = tokio::join!(
        env.services.run_renewal_job(&job, now),
        env.services.run_renewal_job(&job, now)
    );
    // Depending on timing the second sees the first's version stored
    // (AlreadyRenewed) or loses the commit race and replays it (Renewed).
    let outcomes = [x.unwrap(), y.unwrap()];
    assert!(
        outcomes.contains(&JobOutcome::Renewed { version: 2 })
            && outcomes.iter().all(|o| matches!(
                o,
                JobOutcome::Renewed { version: 2 } | JobOutcome::AlreadyRenewed
            )),
        "{outcomes:?}"
    );
    assert_eq!(
        env.services.run_renewal_job(&job, now).await.unwrap(),
        JobOutcome::AlreadyRenewed
    );
    assert_eq!(env.versions(id).await, [1, 2]);
    let cert = env
        .db
        .metadata()
        .get_certificate(id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cert.current_version, 2);
    let renewals = env
        .services
        .audit(&AuditQuery {
            target: Some(format!("certificate/{id}")),
            action_prefix: Some("certificate.renew".into()),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(renewals.total, 1, "one renewal in the audit trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_job_runs_issue_one_version_sqlite() {
    duplicate_job_runs_issue_one_version(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_job_runs_issue_one_version_postgres() {
    duplicate_job_runs_issue_one_version(Backend::Postgres).await;
}

/// A worker takes the job and stalls past its lease; the job is delivered
/// again to one of two workers polling at once while the stalled one wakes up
/// and finishes too. One new version; the stalled worker's acknowledgement is
/// refused (its lease is gone) and the ledger shows the job done.
async fn redelivered_job_renews_once(backend: Backend) {
    let env = Env::start(backend).await;
    let id = env.certificate("lease.example.com", TEAM, None).await;
    let queue = env.queue();
    let report = env
        .scheduler(queue.clone(), 5)
        .scan(env.skew.now())
        .await
        .unwrap();
    assert_eq!(report.enqueued, 1);

    let stalled = queue
        .receive(1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .pop()
        .expect("the job is delivered");
    assert_eq!(stalled.job.attempts, 1);
    env.skew.advance(Duration::from_secs(31));

    let w1 = Worker::new(env.services.clone(), queue.clone(), worker_settings());
    let w2 = Worker::new(env.services.clone(), queue.clone(), worker_settings());
    let late = async {
        let outcome = env
            .services
            .run_renewal_job(&stalled.job, OffsetDateTime::now_utc())
            .await;
        (outcome, queue.complete(&stalled).await)
    };
    let (n1, n2, (outcome, ack)) = tokio::join!(w1.run_once(), w2.run_once(), late);
    assert_eq!(
        n1.unwrap() + n2.unwrap(),
        1,
        "redelivered to exactly one worker"
    );
    assert!(
        matches!(
            outcome.unwrap(),
            JobOutcome::Renewed { version: 2 } | JobOutcome::AlreadyRenewed
        ),
        "the stalled worker finds or makes version 2"
    );
    assert!(
        matches!(ack, Err(DomainError::Conflict(_))),
        "a lost lease cannot acknowledge: {ack:?}"
    );
    assert_eq!(env.versions(id).await, [1, 2]);
    let job = env.job_of(id).await;
    assert_eq!((job.state, job.attempts), (JobState::Done, 2), "{job:?}");
    let stats = [w1.stats(), w2.stats()];
    let renewed: u64 = stats
        .iter()
        .map(|s| s.renewed.load(Ordering::Relaxed) + s.already_renewed.load(Ordering::Relaxed))
        .sum();
    assert_eq!(renewed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_job_renews_once_sqlite() {
    redelivered_job_renews_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_job_renews_once_postgres() {
    redelivered_job_renews_once(Backend::Postgres).await;
}

/// Runs `worker` until the certificate's job is in `until`, returning each
/// attempt's ledger row; gives up after `timeout`.
async fn drive(
    env: &Env,
    worker: &Worker,
    id: Uuid,
    until: JobState,
    timeout: Duration,
) -> Vec<RenewalJob> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let n = worker.run_once().await.unwrap();
        let job = env.job_of(id).await;
        if n > 0 {
            seen.push(job.clone());
        }
        if job.state == until {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "job not {until:?} after {timeout:?}: {job:?}"
        );
    }
}

/// An ACME-issued certificate whose CA goes away (pebble killed after the
/// first issuance): each attempt fails on the refused connection, is retried
/// with backoff, recorded in the ledger and the audit trail; the team hears
/// once that renewal is failing and once that it was given up on, another
/// team hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_acme_ca_retries_then_dead_letters_and_tells_the_team() {
    let mut pebble = Pebble::start(PebbleOptions {
        leaf_validity_secs: Some(120),
        ..Default::default()
    })
    .await;
    let mut env = Env::start(Backend::Sqlite).await;
    let (issuer, created) = env
        .services
        .ensure_acme_issuer("pebble", pebble.directory_url(), OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(created);
    let accounts = Arc::new(SealedAccountStore::for_issuer(
        env.blobs.clone(),
        env.sealer.clone(),
        &issuer,
    ));
    let acme = AcmeIssuer::new(acme_settings(&pebble), accounts, Http01Tokens::new())
        .await
        .unwrap();
    env.services = env
        .services
        .clone()
        .with_issuer_backend(issuer.id, Arc::new(acme));
    env.subscribe(TEAM).await;
    env.subscribe(OTHER_TEAM).await;
    let id = env
        .certificate("renew.example.com", TEAM, Some(issuer.id))
        .await;
    assert_eq!(kinds(&env.deliveries(TEAM).await), ["issued"]);

    pebble.stop();
    let queue = env.queue();
    let report = env
        .scheduler(queue.clone(), 3)
        .scan(env.skew.now())
        .await
        .unwrap();
    assert_eq!(report.enqueued, 1);
    let worker = Worker::new(env.services.clone(), queue.clone(), worker_settings());
    let started = Instant::now();
    let attempts = drive(&env, &worker, id, JobState::Dead, Duration::from_secs(60)).await;
    eprintln!(
        "three attempts against a dead CA in {:?}; last error: {:?}",
        started.elapsed(),
        attempts.last().unwrap().last_error
    );

    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    for (i, job) in attempts[..2].iter().enumerate() {
        assert_eq!(job.state, JobState::Queued, "retried: {job:?}");
        assert_eq!(job.attempts, i as u32 + 1);
        let error = job.last_error.as_deref().unwrap();
        assert!(
            error.contains("127.0.0.1") || error.to_lowercase().contains("refused"),
            "the CA's reason is kept: {error}"
        );
    }
    // Backoff: the retry waits about the base delay (run_at is kept in seconds).
    assert!(attempts[0].run_at >= attempts[0].last_attempt_at.unwrap());
    let dead = attempts.last().unwrap();
    assert_eq!((dead.state, dead.attempts), (JobState::Dead, 3));
    assert!(dead.last_error.is_some());
    let stats = worker.stats();
    assert_eq!(stats.retried.load(Ordering::Relaxed), 2);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(env.versions(id).await, [1], "nothing was issued");

    let audit = env
        .services
        .audit(&AuditQuery {
            target: Some(format!("certificate/{id}")),
            action_prefix: Some("certificate.renewal.".into()),
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut actions: Vec<&str> = audit.items.iter().map(|e| e.action.as_str()).collect();
    actions.sort_unstable();
    assert_eq!(
        actions,
        [
            "certificate.renewal.dead-lettered",
            "certificate.renewal.failed",
            "certificate.renewal.failed"
        ]
    );

    let told = env.deliveries(TEAM).await;
    assert_eq!(
        kinds(&told),
        ["issued", "renewal-failing", "dead-lettered"],
        "failing once per version, then given up"
    );
    let failing = &told[1].notification;
    assert_eq!(failing.certificate_id, Some(id));
    assert_eq!(failing.version, Some(1));
    assert!(failing.reason.as_deref().is_some_and(|r| !r.is_empty()));
    assert!(env.deliveries(OTHER_TEAM).await.is_empty());
}

/// The internal CA's signing key vanishes from the blob store before a
/// worker process first signs with it: renewal fails with the integrity
/// error and is retried; with the key back, the next attempt renews, once.
/// (A process that has read the sealed key keeps it, so the worker is a
/// process started after the key went.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_internal_ca_recovers_on_retry_with_one_version() {
    let env = Env::start(Backend::Sqlite).await;
    env.subscribe(TEAM).await;
    let id = env.certificate("recover.example.com", TEAM, None).await;
    let issuer = env.services.issuers().await.unwrap().remove(0);
    let key = env.blobs.get(&issuer.key_blob).await.unwrap();
    env.blobs.delete(&issuer.key_blob).await.unwrap();

    let queue = env.queued().await;
    let started_later = Services::new(
        env.db.metadata(),
        env.blobs.clone(),
        env.sealer.clone(),
        None,
    )
    .with_notifications(env.db.notifications());
    let worker = Worker::new(started_later, queue.clone(), worker_settings());
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let job = env.job_of(id).await;
    assert_eq!((job.state, job.attempts), (JobState::Queued, 1));
    let error = job.last_error.unwrap();
    assert!(error.contains("signing key"), "{error}");

    env.blobs.put(&issuer.key_blob, key).await.unwrap();
    let attempts = drive(&env, &worker, id, JobState::Done, Duration::from_secs(30)).await;
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0].attempts, 2);
    assert_eq!(attempts[0].last_error, None, "cleared on success");
    assert_eq!(env.versions(id).await, [1, 2]);
    assert_eq!(
        kinds(&env.deliveries(TEAM).await),
        ["issued", "renewal-failing", "renewed"]
    );
}

/// A renewal is announced to the certificate's team only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_notifies_the_subscribed_team_only() {
    let env = Env::start(Backend::Sqlite).await;
    let ours = env.subscribe(TEAM).await;
    env.subscribe(OTHER_TEAM).await;
    let id = env.certificate("notify.example.com", TEAM, None).await;

    let queue = env.queued().await;
    let worker = Worker::new(env.services.clone(), queue, worker_settings());
    drive(&env, &worker, id, JobState::Done, Duration::from_secs(30)).await;

    let told = env.deliveries(TEAM).await;
    assert_eq!(kinds(&told), ["issued", "renewed"]);
    let renewed = &told[1];
    assert_eq!(renewed.subscription_id, ours);
    assert_eq!(renewed.notification.certificate_id, Some(id));
    assert_eq!(renewed.notification.version, Some(2));
    assert_eq!(renewed.notification.team, TEAM);
    assert!(env.deliveries(OTHER_TEAM).await.is_empty());
}

/// A blob store where one operation never finishes: reading one blob (a CA
/// key that never comes back, a CA hanging mid-renewal) or storing under one
/// prefix (one certificate's new version never stored, the others go through).
struct Hung {
    inner: Arc<ObjectBlobStore>,
    hangs: Hang,
}

/// What a [`Hung`] store never finishes.
enum Hang {
    /// Reading this key.
    Get(String),
    /// Writing any key under this prefix.
    PutUnder(String),
}

#[async_trait::async_trait]
impl BlobStore for Hung {
    async fn put(&self, key: &str, data: bytes::Bytes) -> certflow_core::DomainResult<()> {
        if matches!(&self.hangs, Hang::PutUnder(prefix) if key.starts_with(prefix.as_str())) {
            std::future::pending::<()>().await;
        }
        self.inner.put(key, data).await
    }
    async fn get(&self, key: &str) -> certflow_core::DomainResult<bytes::Bytes> {
        if matches!(&self.hangs, Hang::Get(k) if k == key) {
            std::future::pending::<()>().await;
        }
        self.inner.get(key).await
    }
    async fn delete(&self, key: &str) -> certflow_core::DomainResult<()> {
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> certflow_core::DomainResult<Vec<String>> {
        self.inner.list(prefix).await
    }
    async fn list_with_age(
        &self,
        prefix: &str,
    ) -> certflow_core::DomainResult<Vec<(String, OffsetDateTime)>> {
        self.inner.list_with_age(prefix).await
    }
}

/// A worker told to stop while its job hangs (the CA key read never
/// answers) gives the job its grace period, then hands it back: queued,
/// runnable at once, the interrupted delivery not counted, no lease left.
/// Another worker renews it at once instead of after the 30 s lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_worker_hands_its_leased_job_back() {
    let env = Env::start(Backend::Sqlite).await;
    let id = env.certificate("handback.example.com", TEAM, None).await;
    let issuer = env.services.issuers().await.unwrap().remove(0);
    let hung = Services::new(
        env.db.metadata(),
        Arc::new(Hung {
            inner: env.blobs.clone(),
            hangs: Hang::Get(issuer.key_blob.clone()),
        }),
        env.sealer.clone(),
        None,
    );
    let queue = env.queued().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = Worker::new(hung, queue.clone(), worker_settings());
    let running = tokio::spawn(worker.run(stopped));
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.job_of(id).await.state != JobState::Running {
        assert!(Instant::now() < deadline, "the job was never leased");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the worker stops within its grace period")
        .unwrap();
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the job had its grace: {waited:?}"
    );
    let job = env.job_of(id).await;
    assert_eq!(
        (job.state, job.attempts, job.lease_until),
        (JobState::Queued, 0, None),
        "{job:?}"
    );
    assert!(job.run_at <= env.skew.now());

    // Another worker (a CA that answers) takes it at once: one receive.
    let healthy = Worker::new(env.services.clone(), queue.clone(), worker_settings());
    assert_eq!(healthy.run_once().await.unwrap(), 1);
    let job = env.job_of(id).await;
    assert_eq!((job.state, job.attempts), (JobState::Done, 1));
    assert_eq!(env.versions(id).await, [1, 2]);
}

impl Env {
    /// Services whose internal CA never answers (its key read hangs).
    async fn hung_services(&self) -> Services {
        let issuer = self.services.issuers().await.unwrap().remove(0);
        Services::new(
            self.db.metadata(),
            Arc::new(Hung {
                inner: self.blobs.clone(),
                hangs: Hang::Get(issuer.key_blob.clone()),
            }),
            self.sealer.clone(),
            None,
        )
    }

    /// Waits (10 s at most) for the certificate's job to be in `state`.
    async fn until_job(&self, id: Uuid, state: JobState) -> RenewalJob {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let job = self.job_of(id).await;
            if job.state == state {
                return job;
            }
            assert!(Instant::now() < deadline, "job never {state:?}: {job:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A worker dies (its task is dropped mid-job: no hand-back, no more
/// heartbeats) while its job hangs. As long as it lived, heartbeats kept its
/// 2 s lease for longer than two leases; once dead, another worker takes the
/// job over within the lease (rounded up to whole seconds) and renews it.
async fn dead_workers_job_is_taken_over_within_its_lease(backend: Backend) {
    let env = Env::start(backend).await;
    let id = env.certificate("takeover.example.com", TEAM, None).await;
    let queue = env.queued().await;
    let lease = Duration::from_secs(2);
    let settings = WorkerSettings {
        lease,
        ..worker_settings()
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let doomed = Worker::new(env.hung_services().await, queue.clone(), settings.clone());
    let running = tokio::spawn(doomed.run(stopped));
    env.until_job(id, JobState::Running).await;

    let healthy = Worker::new(env.services.clone(), queue.clone(), settings);
    tokio::time::sleep(lease * 2 + Duration::from_millis(500)).await;
    assert_eq!(
        healthy.run_once().await.unwrap(),
        0,
        "heartbeats keep a live worker's job: {:?}",
        env.job_of(id).await
    );

    running.abort();
    let _ = running.await;
    let died = Instant::now();
    while healthy.run_once().await.unwrap() == 0 {
        assert!(
            died.elapsed() < lease + Duration::from_secs(3),
            "not taken over: {:?}",
            env.job_of(id).await
        );
    }
    let takeover = died.elapsed();
    eprintln!("job of a dead worker taken over {takeover:?} after it died (lease {lease:?})");
    assert!(takeover <= lease + Duration::from_secs(2), "{takeover:?}");
    let job = env.job_of(id).await;
    assert_eq!((job.state, job.attempts), (JobState::Done, 2), "{job:?}");
    assert_eq!(env.versions(id).await, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_workers_job_is_taken_over_within_its_lease_sqlite() {
    dead_workers_job_is_taken_over_within_its_lease(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_workers_job_is_taken_over_within_its_lease_postgres() {
    dead_workers_job_is_taken_over_within_its_lease(Backend::Postgres).await;
}

/// A live worker whose attempt hangs (the CA key read never answers) cuts
/// it short at the work timeout, although heartbeats would hold the lease for
/// ever: a failed attempt with the reason, retried after the backoff, and the
/// retry (a CA that answers) renews once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_attempt_is_cut_short_at_the_work_timeout_and_retried() {
    let env = Env::start(Backend::Sqlite).await;
    let id = env.certificate("stuck.example.com", TEAM, None).await;
    let queue = env.queued().await;
    let settings = WorkerSettings {
        lease: Duration::from_secs(1),
        work_timeout: Duration::from_millis(1500),
        ..worker_settings()
    };
    let stuck = Worker::new(env.hung_services().await, queue.clone(), settings.clone());
    let started = Instant::now();
    assert_eq!(stuck.run_once().await.unwrap(), 1);
    let cut = started.elapsed();
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(5)).contains(&cut),
        "{cut:?}"
    );
    let job = env.job_of(id).await;
    assert_eq!((job.state, job.attempts), (JobState::Queued, 1), "{job:?}");
    let error = job.last_error.clone().unwrap();
    assert!(error.contains("work timeout"), "{error}");
    assert_eq!(stuck.stats().retried.load(Ordering::Relaxed), 1);

    let healthy = Worker::new(env.services.clone(), queue, settings);
    let attempts = drive(&env, &healthy, id, JobState::Done, Duration::from_secs(30)).await;
    assert_eq!(attempts.last().unwrap().attempts, 2, "{attempts:#?}");
    assert_eq!(env.versions(id).await, [1, 2]);
    // The cut-short attempt is on record as a failed renewal.
    let audit = env
        .services
        .audit(&AuditQuery {
            target: Some(format!("certificate/{id}")),
            action_prefix: Some("certificate.renewal.failed".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.total, 1, "{:?}", audit.items);
}

/// The database queue hands out the renewal of the certificate with the
/// least time left first, whichever job was queued first: a 60-second
/// certificate's job goes ahead of a long-lived one's queued earlier.
async fn soonest_expiring_job_is_claimed_first(backend: Backend) {
    let env = Env::start(backend).await;
    let long = env
        .services
        .create_certificate(
            &actor(),
            &CreateCertificateRequest {
                names: vec!["long.example.com".into()],
                team: TEAM.into(),
                key_type: Some("ecdsa-p256".into()),
                ..Default::default()
            },
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap()
        .certificate
        .id;
    let short = env.certificate("short.example.com", TEAM, None).await;
    let queue = env.queue();
    let now = env.skew.now();
    let first = RenewalJob::new(long, 1, 5, now - time::Duration::minutes(10));
    assert!(queue.enqueue(&first).await.unwrap());
    assert!(
        queue
            .enqueue(&RenewalJob::new(short, 1, 5, now))
            .await
            .unwrap()
    );
    let mut order = Vec::new();
    for _ in 0..2 {
        for d in queue
            .receive(1, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
        {
            order.push(d.job.certificate_id);
        }
    }
    assert_eq!(order, [short, long]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soonest_expiring_job_is_claimed_first_sqlite() {
    soonest_expiring_job_is_claimed_first(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soonest_expiring_job_is_claimed_first_postgres() {
    soonest_expiring_job_is_claimed_first(Backend::Postgres).await;
}

/// A certificate whose current version has less time left than a renewal
/// takes (no worker ran) is announced once per version as
/// `renewal-at-risk`, with its job's state; once renewed it is not at risk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_risk_certificate_is_announced_once_per_version() {
    let env = Env::start(Backend::Sqlite).await;
    env.subscribe(TEAM).await;
    let id = env.certificate("risk.example.com", TEAM, None).await;
    let queue = env.queue();
    let scheduler = env.scheduler(queue.clone(), 5).with_at_risk(
        env.db.notifications(),
        env.db.ledger(),
        Duration::from_secs(30),
    );
    let now = OffsetDateTime::now_utc();
    // 60 s left of 60: due (after 10 %), not at risk.
    let report = scheduler
        .scan(now + time::Duration::seconds(10))
        .await
        .unwrap();
    assert_eq!((report.enqueued, report.at_risk), (1, 0), "{report:?}");
    // 20 s left, nothing renewed it: at risk, announced once.
    for _ in 0..2 {
        let report = scheduler
            .scan(now + time::Duration::seconds(40))
            .await
            .unwrap();
        assert_eq!(report.at_risk, 1, "{report:?}");
    }
    let told = env.deliveries(TEAM).await;
    assert_eq!(kinds(&told), ["issued", "renewal-at-risk"]);
    let n = &told[1].notification;
    assert_eq!((n.certificate_id, n.version), (Some(id), Some(1)));
    assert_eq!(n.details["job"]["state"], "queued", "{:?}", n.details);
    assert!(n.summary.contains("risk.example.com"), "{}", n.summary);

    let worker = Worker::new(env.services.clone(), queue, worker_settings());
    drive(&env, &worker, id, JobState::Done, Duration::from_secs(30)).await;
    let report = scheduler.scan(OffsetDateTime::now_utc()).await.unwrap();
    assert_eq!(report.at_risk, 0, "{report:?}");
    // (Listed by time: the announcement is dated at the scan's later clock.)
    let mut all = kinds(&env.deliveries(TEAM).await);
    all.sort_unstable();
    assert_eq!(all, ["issued", "renewal-at-risk", "renewed"]);
}

/// A running worker whose job hangs keeps taking jobs into its free slots:
/// a job queued after the hung one is renewed while it still hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_job_holds_one_slot_not_the_worker() {
    let env = Env::start(Backend::Sqlite).await;
    let stuck = env.certificate("stuck.example.com", TEAM, None).await;
    let next = env.certificate("next.example.com", TEAM, None).await;
    let services = Services::new(
        env.db.metadata(),
        Arc::new(Hung {
            inner: env.blobs.clone(),
            hangs: Hang::PutUnder(format!("certificates/{stuck}/v2")),
        }),
        env.sealer.clone(),
        None,
    );
    let queue = env.queue();
    let now = env.skew.now();
    assert!(
        queue
            .enqueue(&RenewalJob::new(stuck, 1, 5, now))
            .await
            .unwrap()
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let settings = WorkerSettings {
        concurrency: 2,
        ..worker_settings()
    };
    let running = tokio::spawn(Worker::new(services, queue.clone(), settings).run(stopped));
    env.until_job(stuck, JobState::Running).await;

    assert!(
        queue
            .enqueue(&RenewalJob::new(next, 1, 5, now))
            .await
            .unwrap()
    );
    env.until_job(next, JobState::Done).await;
    assert_eq!(env.versions(next).await, [1, 2]);
    assert_eq!(env.job_of(stuck).await.state, JobState::Running);

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the worker stops within its grace period")
        .unwrap();
    let job = env.job_of(stuck).await;
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Queued, 0),
        "handed back: {job:?}"
    );
}

/// The database queue with its own acknowledgement broken: a job can only
/// be acknowledged by the version's commit.
struct NoSeparateAck(Arc<DbRenewalQueue>);

#[async_trait::async_trait]
impl RenewalQueue for NoSeparateAck {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn in_metadata_database(&self) -> bool {
        self.0.in_metadata_database()
    }
    async fn enqueue(&self, job: &RenewalJob) -> certflow_core::DomainResult<bool> {
        self.0.enqueue(job).await
    }
    async fn receive(
        &self,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> certflow_core::DomainResult<Vec<JobDelivery>> {
        self.0.receive(max, lease, wait).await
    }
    async fn heartbeat(
        &self,
        delivery: &JobDelivery,
        lease: Duration,
    ) -> certflow_core::DomainResult<()> {
        self.0.heartbeat(delivery, lease).await
    }
    async fn complete(&self, _: &JobDelivery) -> certflow_core::DomainResult<()> {
        Err(DomainError::Unavailable {
            backend: "renewal queue",
            reason: "down".into(),
        })
    }
    async fn retry(
        &self,
        delivery: &JobDelivery,
        error: &str,
        retry_in: Duration,
    ) -> certflow_core::DomainResult<()> {
        self.0.retry(delivery, error, retry_in).await
    }
    async fn dead_letter(
        &self,
        delivery: &JobDelivery,
        error: &str,
    ) -> certflow_core::DomainResult<()> {
        self.0.dead_letter(delivery, error).await
    }
    async fn stats(&self) -> certflow_core::DomainResult<certflow_core::renewal::QueueStats> {
        self.0.stats().await
    }
}

/// On the database queue a renewal's version, its `renewed` event and the
/// job's acknowledgement commit together: the job is done even though no
/// acknowledgement could be made after the commit, and the event is
/// recorded once.
async fn renewal_acknowledges_its_job_in_the_versions_commit(backend: Backend) {
    let env = Env::start(backend).await;
    env.subscribe(TEAM).await;
    let id = env.certificate("ack.example.com", TEAM, None).await;
    let queue = env.queued().await;
    let worker = Worker::new(
        env.services.clone(),
        Arc::new(NoSeparateAck(queue)),
        worker_settings(),
    );
    let seen = drive(&env, &worker, id, JobState::Done, Duration::from_secs(30)).await;
    assert_eq!(seen.len(), 1, "one delivery: {seen:?}");
    assert_eq!(env.versions(id).await, [1, 2]);
    assert_eq!(kinds(&env.deliveries(TEAM).await), ["issued", "renewed"]);
    assert_eq!(worker.stats().renewed.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_acknowledges_its_job_in_the_versions_commit_sqlite() {
    renewal_acknowledges_its_job_in_the_versions_commit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_acknowledges_its_job_in_the_versions_commit_postgres() {
    renewal_acknowledges_its_job_in_the_versions_commit(Backend::Postgres).await;
}

/// A renewal burst on a CPU pool with one thread and no queue, kept busy
/// by a console operation when the burst starts: every job waits for its
/// turn and renews on its first attempt; none fails, none tells the team
/// that renewal is failing, and the pool still refuses console work past
/// its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cpu_pool_delays_renewals_but_fails_none() {
    let env = Env::start(Backend::Sqlite).await;
    env.subscribe(TEAM).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            env.certificate(&format!("busy{i}.example.com"), TEAM, None)
                .await,
        );
    }
    let queue = env.queue();
    let report = env
        .scheduler(queue.clone(), 5)
        .scan(env.skew.now())
        .await
        .unwrap();
    assert_eq!(report.enqueued, 8, "{report:?}");
    let pool = CpuPool::new(1, 0);
    let worker = Worker::new(
        env.services.clone().with_cpu_pool(pool.clone()),
        queue,
        worker_settings(),
    );
    let busy = {
        let pool = pool.clone();
        tokio::spawn(async move {
            // The closure runs on the pool's own blocking thread, which
            // it is to hold: that is the console operation in progress.
            pool.run("console work", || {
                std::thread::sleep(Duration::from_millis(300));
                Ok(())
            })
            .await
        })
    };
    while pool.admitted() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        pool.run("more console work", || Ok(())).await.is_err(),
        "the pool refuses interactive work past its queue"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = 0;
    while done < ids.len() {
        assert!(Instant::now() < deadline, "{done} of 8 renewed in 60 s");
        worker.run_once().await.unwrap();
        done = 0;
        for id in &ids {
            if env.job_of(*id).await.state == JobState::Done {
                done += 1;
            }
        }
    }
    busy.await.unwrap().unwrap();
    let stats = worker.stats();
    assert_eq!(stats.renewed.load(Ordering::Relaxed), 8);
    assert_eq!(
        stats.retried.load(Ordering::Relaxed),
        0,
        "no failed attempt"
    );
    for id in &ids {
        assert_eq!(env.versions(*id).await, [1, 2]);
        assert_eq!(env.job_of(*id).await.attempts, 1);
    }
    let mut told = kinds(&env.deliveries(TEAM).await);
    told.sort_unstable();
    told.dedup();
    assert_eq!(told, ["issued", "renewed"], "nobody hears of a failure");
}
