//! The SQS renewal queue against a real SQS API (moto_server, started per
//! test) and the real SQLite renewal ledger. Lease, backoff and redrive timings
//! are real: visibility timeouts of one or two seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::Credentials;
use certflow_core::DomainError;
use certflow_core::model::{
    Actor, AuditEvent, Certificate, CertificateStatus, CertificateVersion, Issuer, IssuerKind,
    KeySource, KeyType, RenewalPolicy, VersionStatus,
};
use certflow_core::ports::{MetadataStore, RenewalLedger};
use certflow_core::renewal::{JobDelivery, JobState, RenewalJob, RenewalQueue};
use certflow_core::{Profile, SubjectName};
use certflow_renewal::sqs::{SqsDepth, ensure_queues};
use certflow_renewal::{SqsOptions, SqsRenewalQueue};
use certflow_store::SqliteStore;
use certflow_testkit::{AWS_REGION, Moto, free_port};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

const NO_WAIT: Duration = Duration::ZERO;
const LONG_LEASE: Duration = Duration::from_secs(60);

/// One moto, its queues, a ledger with one certificate, and the queue under test.
struct Env {
    _moto: Moto,
    sdk: SdkConfig,
    store: Arc<SqliteStore>,
    queue: SqsRenewalQueue,
    queue_url: String,
    dlq_url: String,
    cert: Uuid,
}

impl Env {
    /// `max_receive_count` for the redrive policy; `with_dlq_url` whether the
    /// queue knows the dead-letter queue's URL.
    async fn start(max_receive_count: u32, with_dlq_url: bool) -> Self {
        let moto = Moto::start().await;
        let sdk = moto.sdk_config().await;
        let name = format!("renewals-{}", Uuid::new_v4().simple());
        let (queue_url, dlq_url) = ensure_queues(&sdk, &name, max_receive_count).await.unwrap();
        let store = Arc::new(SqliteStore::open_memory().await.unwrap());
        let cert = seed_certificate(store.as_ref()).await;
        let options = SqsOptions {
            dead_letter_queue_url: with_dlq_url.then(|| dlq_url.clone()),
            max_receive_count,
            ..SqsOptions::new(queue_url.clone())
        };
        let queue = SqsRenewalQueue::new(&sdk, options, store.clone());
        Self {
            _moto: moto,
            sdk,
            store,
            queue,
            queue_url,
            dlq_url,
            cert,
        }
    }

    fn job(&self, version: u32) -> RenewalJob {
        RenewalJob::new(self.cert, version, 5, OffsetDateTime::now_utc())
    }

    async fn ledger(&self, id: Uuid) -> RenewalJob {
        self.store.get_renewal_job(id).await.unwrap().unwrap()
    }

    async fn receive_one(&self, lease: Duration, wait: Duration) -> JobDelivery {
        let mut got = self.queue.receive(10, lease, wait).await.unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        got.remove(0)
    }

    async fn receive_none(&self, wait: Duration) {
        let got = self.queue.receive(10, LONG_LEASE, wait).await.unwrap();
        assert!(got.is_empty(), "{got:?}");
    }

    async fn depth(&self) -> SqsDepth {
        self.queue.depth().await.unwrap()
    }

    fn client(&self) -> Client {
        Client::new(&self.sdk)
    }

    /// Everything in the dead-letter queue, read without keeping it hidden long.
    async fn dead_letters(&self) -> Vec<aws_sdk_sqs::types::Message> {
        self.client()
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
    }
}

/// Jobs reference a certificate; its versions need not exist.
async fn seed_certificate(store: &SqliteStore) -> Uuid {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let actor = Actor {
        subject: "test".into(),
        source: None,
    };
    let audit = |action: &str| AuditEvent::success(now, &actor, action, "test", json!({}));
    let issuer = Issuer {
        id: Uuid::new_v4(),
        name: "main".into(),
        kind: IssuerKind::Internal,
        is_default: true,
        key_type: KeyType::EcdsaP384,
        issuing_cert_pem: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
        chain_pem: "-----BEGIN CERTIFICATE-----\ny\n-----END CERTIFICATE-----\n".into(),
        key_blob: "issuers/main/issuing.key".into(),
        root_key_blob: None,
        subject: "CN=main".into(),
        not_after: now + time::Duration::days(3650),
        created_at: now,
    };
    store
        .insert_issuer(&issuer, &audit("issuer.create"))
        .await
        .unwrap();
    let cert = Certificate {
        id: Uuid::new_v4(),
        name: "renew.example.com".into(),
        team: "payments".into(),
        labels: BTreeMap::new(),
        profile: Profile::TlsServer,
        key_type: KeyType::EcdsaP256,
        key_source: KeySource::Server,
        names: vec![SubjectName::Dns("renew.example.com".into())],
        validity_days: 90,
        validity_secs: None,
        issuer_id: issuer.id,
        renewal: RenewalPolicy::default(),
        status: CertificateStatus::Active,
        managed: true,
        current_version: 1,
        not_after: now + time::Duration::days(90),
        renew_after: now + time::Duration::days(60),
        created_at: now,
        updated_at: now,
    };
    let first = CertificateVersion {
        certificate_id: cert.id,
        version: 1,
        serial: "01".into(),
        fingerprint_sha256: format!("{:064x}", 1),
        not_before: now,
        not_after: cert.not_after,
        key_type: cert.key_type,
        names: cert.names.clone(),
        issuer_id: issuer.id,
        status: VersionStatus::Current,
        revoked_at: None,
        revocation_reason: None,
        cert_blob: "c.der".into(),
        key_blob: None,
        created_at: now,
    };
    store
        .create_certificate(&cert, &first, &audit("certificate.create"), None)
        .await
        .unwrap();
    cert.id
}

#[tokio::test]
async fn enqueue_is_idempotent_across_calls_and_concurrent_tasks() {
    let env = Arc::new(Env::start(5, true).await);
    // Eight schedulers race on the same version, each with its own job id.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let env = env.clone();
            tokio::spawn(async move {
                let job = env.job(1);
                (job.id, env.queue.enqueue(&job).await.unwrap())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (id, enqueued) = task.await.unwrap();
        if enqueued {
            winners.push(id);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert!(!env.queue.enqueue(&env.job(1)).await.unwrap());
    let row = env
        .store
        .latest_renewal_job(env.cert)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.id, winners[0]);
    assert_eq!(env.queue.stats().await.unwrap().queued, 1);
    assert_eq!(env.depth().await.visible, 1);

    // One message, carrying ids only.
    let out = env
        .client()
        .receive_message()
        .queue_url(&env.queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let messages = out.messages();
    assert_eq!(messages.len(), 1);
    let body: serde_json::Value = serde_json::from_str(messages[0].body().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({ "job_id": winners[0], "certificate_id": env.cert, "version": 1 })
    );

    // The raw look above was a receive too: SQS counts it as an attempt.
    let delivery = env.receive_one(LONG_LEASE, NO_WAIT).await;
    assert_eq!(delivery.job.id, winners[0]);
    assert_eq!(delivery.job.attempts, 2);
    env.receive_none(Duration::from_secs(1)).await;

    // Another version is another job.
    assert!(env.queue.enqueue(&env.job(2)).await.unwrap());
}

#[tokio::test]
async fn receive_then_complete_leaves_nothing() {
    let env = Env::start(5, true).await;
    let job = env.job(1);
    assert!(env.queue.enqueue(&job).await.unwrap());

    let before = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let delivery = env
        .receive_one(Duration::from_secs(30), Duration::from_secs(2))
        .await;
    assert_eq!(delivery.job.id, job.id);
    assert_eq!(delivery.job.attempts, 1);
    assert_eq!(delivery.job.state, JobState::Running);
    let row = env.ledger(job.id).await;
    assert_eq!(row.state, JobState::Running);
    assert_eq!(row.attempts, 1);
    assert!(row.last_attempt_at.unwrap() >= before);
    let lease_until = row.lease_until.unwrap();
    assert!(
        lease_until >= before + time::Duration::seconds(29),
        "{lease_until}"
    );
    let stats = env.queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.running), (0, 1));
    assert_eq!(env.depth().await.in_flight, 1);

    env.queue.complete(&delivery).await.unwrap();
    let row = env.ledger(job.id).await;
    assert_eq!(row.state, JobState::Done);
    assert_eq!(row.lease_until, None);
    env.receive_none(Duration::from_secs(1)).await;
    assert_eq!(
        env.depth().await,
        SqsDepth {
            dead_letter: Some(0),
            ..SqsDepth::default()
        }
    );
    let stats = env.queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.running, stats.dead), (0, 0, 0));

    // The done job's version is not enqueued again.
    assert!(!env.queue.enqueue(&env.job(1)).await.unwrap());
    assert_eq!(env.depth().await.visible, 0);
}

#[tokio::test]
async fn an_expired_lease_redelivers_with_attempts_incremented() {
    let env = Env::start(5, true).await;
    let job = env.job(1);
    env.queue.enqueue(&job).await.unwrap();

    let first = env.receive_one(Duration::from_secs(1), NO_WAIT).await;
    assert_eq!(first.job.attempts, 1);
    env.receive_none(NO_WAIT).await;

    // The worker "crashed": no heartbeat, no ack.
    let started = Instant::now();
    let second = env.receive_one(LONG_LEASE, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    eprintln!("lease 1 s expired: redelivered {waited:?} after the first receive");
    assert_eq!(second.job.id, job.id);
    assert_eq!(second.job.attempts, 2);
    assert_ne!(second.receipt, first.receipt);
    assert_eq!(env.ledger(job.id).await.attempts, 2);

    // The new holder finishes; the old one has nothing left to extend.
    env.queue.complete(&second).await.unwrap();
    match env.queue.heartbeat(&first, LONG_LEASE).await {
        Err(DomainError::Conflict(message)) => assert!(message.contains("lease lost"), "{message}"),
        other => panic!("expected lease lost, got {other:?}"),
    }
    assert_eq!(env.ledger(job.id).await.state, JobState::Done);
}

#[tokio::test]
async fn heartbeat_keeps_the_job_invisible_past_its_first_lease() {
    let env = Env::start(5, true).await;
    let job = env.job(1);
    env.queue.enqueue(&job).await.unwrap();

    let started = Instant::now();
    let delivery = env.receive_one(Duration::from_secs(2), NO_WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.queue
        .heartbeat(&delivery, Duration::from_secs(4))
        .await
        .unwrap();
    let row = env.ledger(job.id).await;
    assert_eq!(row.state, JobState::Running);
    assert!(row.lease_until.unwrap() > delivery.job.lease_until.unwrap());

    // Past the first lease (2 s) and then some: still invisible.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(started.elapsed() > Duration::from_millis(2500));
    env.receive_none(NO_WAIT).await;

    // The extended lease ends at about 5 s.
    let again = env.receive_one(LONG_LEASE, Duration::from_secs(5)).await;
    let at = started.elapsed();
    assert!(at >= Duration::from_secs(4), "{at:?}");
    eprintln!("lease 2 s, heartbeat at 1 s for 4 s: redelivered after {at:?}");
    assert_eq!(again.job.attempts, 2);
}

#[tokio::test]
async fn retry_hides_the_job_until_its_backoff_ends() {
    let env = Env::start(5, true).await;
    let job = env.job(1);
    env.queue.enqueue(&job).await.unwrap();

    let delivery = env.receive_one(LONG_LEASE, NO_WAIT).await;
    let started = Instant::now();
    env.queue
        .retry(&delivery, "CA said: rate limited", Duration::from_secs(3))
        .await
        .unwrap();
    let row = env.ledger(job.id).await;
    assert_eq!(row.state, JobState::Queued);
    assert_eq!(row.last_error.as_deref(), Some("CA said: rate limited"));
    assert_eq!(row.lease_until, None);
    assert!(row.run_at >= OffsetDateTime::now_utc() + time::Duration::seconds(1));
    assert_eq!(env.queue.stats().await.unwrap().queued, 1);

    env.receive_none(NO_WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.receive_none(NO_WAIT).await;

    let again = env.receive_one(LONG_LEASE, Duration::from_secs(5)).await;
    let at = started.elapsed();
    // Back after the backoff (moto's long poll checks about once a second).
    assert!(at >= Duration::from_millis(2900), "{at:?}");
    eprintln!("retry_in 3 s: redelivered after {at:?}");
    assert_eq!(again.job.attempts, 2);
    assert_eq!(again.job.state, JobState::Running);
    // The last failure stays on record until the job succeeds.
    assert_eq!(
        again.job.last_error.as_deref(),
        Some("CA said: rate limited")
    );
    env.queue.complete(&again).await.unwrap();
    assert_eq!(env.ledger(job.id).await.last_error, None);
}

#[tokio::test]
async fn the_redrive_policy_moves_a_job_received_too_often_to_the_dlq() {
    let env = Env::start(2, true).await;
    let job = env.job(1);
    env.queue.enqueue(&job).await.unwrap();

    let first = env.receive_one(Duration::from_secs(1), NO_WAIT).await;
    assert_eq!(first.job.attempts, 1);
    // The job allows 5 attempts but SQS will make only 2 deliveries: the
    // worker must see 2, so it dead-letters the job itself on the last one.
    assert_eq!(first.job.max_attempts, 2);
    let second = env
        .receive_one(Duration::from_secs(1), Duration::from_secs(3))
        .await;
    assert_eq!(second.job.attempts, 2);

    // Both workers vanished; the third receive finds SQS has moved it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    env.receive_none(Duration::from_secs(1)).await;
    let depth = env.depth().await;
    assert_eq!((depth.visible, depth.in_flight), (0, 0), "{depth:?}");
    assert_eq!(depth.dead_letter, Some(1), "{depth:?}");
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body().unwrap().contains(&job.id.to_string()));
}

#[tokio::test]
async fn dead_letter_moves_the_message_and_records_why() {
    let env = Env::start(5, true).await;
    let job = env.job(1);
    env.queue.enqueue(&job).await.unwrap();

    let delivery = env.receive_one(LONG_LEASE, NO_WAIT).await;
    let why = "CA refused: policy forbids renew.example.com";
    env.queue.dead_letter(&delivery, why).await.unwrap();

    let row = env.ledger(job.id).await;
    assert_eq!(row.state, JobState::Dead);
    assert_eq!(row.last_error.as_deref(), Some(why));
    assert_eq!(row.lease_until, None);
    let stats = env.queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.running, stats.dead), (0, 0, 1));

    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let body: serde_json::Value = serde_json::from_str(dead[0].body().unwrap()).unwrap();
    assert_eq!(body["job_id"], json!(job.id));
    let attrs = dead[0].message_attributes().unwrap();
    assert_eq!(attrs["error"].string_value(), Some(why));
    assert_eq!(
        attrs["job_id"].string_value(),
        Some(job.id.to_string().as_str())
    );
    let depth = env.depth().await;
    assert_eq!((depth.visible, depth.in_flight), (0, 0), "{depth:?}");
    env.receive_none(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn dead_letter_without_a_dlq_url_leaves_the_move_to_the_redrive_policy() {
    let env = Env::start(2, false).await;
    let job = env.job(1);
    env.queue.enqueue(&job).await.unwrap();

    let delivery = env.receive_one(LONG_LEASE, NO_WAIT).await;
    env.queue.dead_letter(&delivery, "gave up").await.unwrap();
    assert_eq!(env.ledger(job.id).await.state, JobState::Dead);

    // Receives skip the dead job (each counts) until SQS moves it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            env.queue
                .receive(10, Duration::from_secs(1), Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
        if !env.dead_letters().await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never redriven");
    }
    let depth = env.depth().await;
    assert_eq!((depth.visible, depth.in_flight), (0, 0), "{depth:?}");
}

#[tokio::test]
async fn messages_for_missing_jobs_are_dropped_and_foreign_ones_dead_lettered() {
    let env = Env::start(5, true).await;
    let client = env.client();
    let orphan = json!({ "job_id": Uuid::new_v4(), "certificate_id": env.cert, "version": 1 });
    for body in [orphan.to_string(), "not json at all".to_owned()] {
        client
            .send_message()
            .queue_url(&env.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    env.receive_none(Duration::from_secs(1)).await;
    let depth = env.depth().await;
    assert_eq!((depth.visible, depth.in_flight), (0, 0), "{depth:?}");
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some("not json at all"));
}

#[tokio::test]
async fn a_job_whose_message_was_lost_is_sent_again() {
    let env = Env::start(5, true).await;
    // As if the process stopped between the ledger insert and SendMessage,
    // two hours ago.
    let long_ago = OffsetDateTime::now_utc() - time::Duration::hours(2);
    let lost = RenewalJob::new(env.cert, 1, 5, long_ago);
    assert!(env.store.insert_renewal_job(&lost).await.unwrap());
    env.receive_none(NO_WAIT).await;

    assert!(!env.queue.enqueue(&env.job(1)).await.unwrap());
    let delivery = env.receive_one(LONG_LEASE, Duration::from_secs(2)).await;
    assert_eq!(delivery.job.id, lost.id);
    env.queue.complete(&delivery).await.unwrap();

    // A fresh job is never re-sent: a backlog must not multiply messages.
    let fresh = env.job(2);
    assert!(env.queue.enqueue(&fresh).await.unwrap());
    assert!(!env.queue.enqueue(&env.job(2)).await.unwrap());
    assert_eq!(env.depth().await.visible, 1);
}

#[tokio::test]
async fn recover_resends_lost_hand_offs_found_in_the_ledger() {
    let env = Env::start(5, true).await;
    // A hand-off lost two hours ago, and a fresh job whose message is in flight.
    let long_ago = OffsetDateTime::now_utc() - time::Duration::hours(2);
    let lost = RenewalJob::new(env.cert, 1, 5, long_ago);
    assert!(env.store.insert_renewal_job(&lost).await.unwrap());
    assert!(env.queue.enqueue(&env.job(2)).await.unwrap());
    assert_eq!(env.depth().await.visible, 1);

    // What the scheduler runs after each scan: only the lost one is re-sent.
    assert_eq!(env.queue.recover().await.unwrap(), 1);
    assert_eq!(env.depth().await.visible, 2);
    // Re-sending refreshed the row: a second recovery sends nothing.
    assert_eq!(env.queue.recover().await.unwrap(), 0);
    assert_eq!(env.depth().await.visible, 2);
}

#[tokio::test]
async fn unreachable_sqs_fails_enqueue_and_leaves_no_ledger_row() {
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    let cert = seed_certificate(store.as_ref()).await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(AWS_REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await;
    let options = SqsOptions {
        endpoint_url: Some(closed.clone()),
        ..SqsOptions::new(format!("{closed}/123456789012/renewals"))
    };
    let queue = SqsRenewalQueue::new(&sdk, options, store.clone());

    let job = RenewalJob::new(cert, 1, 5, OffsetDateTime::now_utc());
    let started = Instant::now();
    match queue.enqueue(&job).await {
        Err(DomainError::Unavailable { backend, reason }) => {
            assert_eq!(backend, "SQS");
            assert!(reason.contains("SendMessage"), "{reason}");
        }
        other => panic!("expected SQS unavailable, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "{took:?}");
    eprintln!("enqueue against a closed port failed after {took:?}");
    assert_eq!(store.latest_renewal_job(cert).await.unwrap(), None);
    assert_eq!(store.get_renewal_job(job.id).await.unwrap(), None);
    assert!(matches!(
        queue.receive(1, LONG_LEASE, NO_WAIT).await,
        Err(DomainError::Unavailable { backend: "SQS", .. })
    ));
}

#[test]
fn options_deserialize_with_defaults_and_refuse_unknown_fields() {
    let options: SqsOptions = serde_json::from_value(json!({
        "queue_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/renewals",
        "region": "eu-west-1",
    }))
    .unwrap();
    assert_eq!(
        options,
        SqsOptions {
            region: Some("eu-west-1".into()),
            ..SqsOptions::new("https://sqs.eu-west-1.amazonaws.com/123456789012/renewals")
        }
    );
    assert_eq!(options.max_receive_count, 10);
    let err = serde_json::from_value::<SqsOptions>(json!({
        "queue_url": "q",
        "max_recieve_count": 3,
    }))
    .unwrap_err();
    assert!(err.to_string().contains("max_recieve_count"), "{err}");
}

/// The queue of `env` with a one-second `resend_after_secs`: what the
/// scheduler's recovery does an hour later, by default, today.
fn impatient(env: &Env, max_receive_count: u32) -> SqsRenewalQueue {
    let options = SqsOptions {
        dead_letter_queue_url: Some(env.dlq_url.clone()),
        max_receive_count,
        resend_after_secs: 1,
        ..SqsOptions::new(env.queue_url.clone())
    };
    SqsRenewalQueue::new(&env.sdk, options, env.store.clone())
}

#[tokio::test]
async fn a_job_the_redrive_policy_took_from_a_dead_worker_is_dead_lettered_with_the_reason() {
    let env = Env::start(2, true).await;
    let job = env.job(1);
    env.queue.enqueue(&job).await.unwrap();
    // Both deliveries SQS will make end with the worker killed mid-attempt.
    env.receive_one(Duration::from_secs(1), NO_WAIT).await;
    env.receive_one(Duration::from_secs(1), Duration::from_secs(3))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    env.receive_none(Duration::from_secs(1)).await;
    assert_eq!(env.depth().await.dead_letter, Some(1));
    // The redrive happened behind the ledger's back: it still says running.
    assert_eq!(env.ledger(job.id).await.state, JobState::Running);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(impatient(&env, 2).recover().await.unwrap(), 1);
    let dead = env.ledger(job.id).await;
    assert_eq!(dead.state, JobState::Dead, "{dead:?}");
    let reason = dead.last_error.unwrap_or_default();
    assert!(
        reason.contains("dead-letter queue after 2 deliveries"),
        "{reason}"
    );
    assert_eq!(impatient(&env, 2).recover().await.unwrap(), 0);
}

#[tokio::test]
async fn receives_that_never_reached_a_worker_do_not_strand_the_job() {
    let env = Env::start(3, true).await;
    let job = env.job(1);
    env.queue.enqueue(&job).await.unwrap();
    let first = env.receive_one(Duration::from_secs(1), NO_WAIT).await;
    assert_eq!(first.job.attempts, 1);
    // That worker died; two receives then fail before the ledger (a database
    // outage) and hand the message straight back: SQS counts them all.
    for _ in 0..2 {
        let got = env
            .client()
            .receive_message()
            .queue_url(&env.queue_url)
            .visibility_timeout(0)
            .wait_time_seconds(3)
            .send()
            .await
            .unwrap();
        assert_eq!(got.messages().len(), 1);
    }
    env.receive_none(Duration::from_secs(1)).await;
    assert_eq!(env.depth().await.dead_letter, Some(1));
    assert_eq!(env.ledger(job.id).await.state, JobState::Running);

    // One attempt of three was made: the job is sent again, and its
    // attempts go on from the ledger's count.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let queue = impatient(&env, 3);
    assert_eq!(queue.recover().await.unwrap(), 1);
    assert_eq!(env.ledger(job.id).await.state, JobState::Queued);
    let again = env.receive_one(LONG_LEASE, Duration::from_secs(3)).await;
    assert_eq!(again.job.id, job.id);
    assert_eq!(again.job.attempts, 2);
    queue.complete(&again).await.unwrap();
    assert_eq!(env.ledger(job.id).await.state, JobState::Done);
}
