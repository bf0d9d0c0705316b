//! A renewal blocked by an issuance policy tightened after issuance, through
//! the real scheduler, database queue and worker on SQLite: the job is
//! dead-lettered on its first attempt (no pointless retries) with the broken
//! rule as its `last_error`, the team gets one `policy-violation` alert, and
//! the certificate keeps its current version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use certflow_api::{CreateCertificateRequest, CreateSubscriptionRequest};
use certflow_blob::ObjectBlobStore;
use certflow_core::model::{Actor, AuditQuery, KeyType};
use certflow_core::notify::{DeliveryQuery, EventKind};
use certflow_core::policy::{IssuancePolicies, IssuancePolicy};
use certflow_core::ports::{MetadataStore, NotificationStore, RenewalLedger};
use certflow_core::renewal::{JobState, RenewalQueue};
use certflow_renewal::{Scheduler, SchedulerSettings, Worker, WorkerSettings};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::{CaSettings, Services};
use certflow_store::{DbQueueOptions, SqliteStore};
use serde_json::json;
use time::OffsetDateTime;

#[tokio::test]
async fn tightened_policy_dead_letters_the_renewal_at_once_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("certflow.db"))
            .await
            .unwrap(),
    );
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        vec![],
    )));
    let services = |policies: IssuancePolicies| {
        Services::new(store.clone(), blobs.clone(), sealer.clone(), None)
            .with_notifications(store.clone())
            .with_issuance_policies(policies.compile().unwrap())
    };
    let actor = Actor {
        subject: "alice".into(),
        source: None,
    };
    let now = OffsetDateTime::now_utc();
    let before = services(IssuancePolicies::default());
    before
        .ensure_ca(
            &CaSettings {
                name: "internal".into(),
                key_type: KeyType::EcdsaP256,
                root_validity_days: 3650,
                intermediate_validity_days: 1825,
            },
            now,
        )
        .await
        .unwrap();
    before
        .create_subscription(
            &actor,
            &CreateSubscriptionRequest {
                team: "payments".into(),
                events: EventKind::ALL.iter().map(|k| k.as_str().into()).collect(),
                channel: json!({"type": "webhook", "url": "https://hooks.example.com/hook", "format": "json"}),
            },
            now,
        )
        .await
        .unwrap();
    // An RSA-2048 certificate, due for renewal after a tenth of its minute.
    let id = before
        .create_certificate(
            &actor,
            &CreateCertificateRequest {
                team: "payments".into(),
                names: vec!["api.example.com".into()],
                key_type: Some("rsa-2048".into()),
                validity_seconds: Some(60),
                renewal: Some(certflow_api::RenewalPolicyView {
                    renew_at_fraction: 0.1,
                    renew_before_days: None,
                    jitter_fraction: 0.0,
                }),
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap()
        .certificate
        .id;

    // The organisation then requires 3072-bit RSA keys.
    let after = services(IssuancePolicies {
        default: IssuancePolicy {
            min_rsa_bits: Some(3072),
            ..Default::default()
        },
        ..Default::default()
    });
    // The queue's clock is an hour ahead: the certificate is due.
    let clock: certflow_store::Clock =
        Arc::new(|| OffsetDateTime::now_utc() + time::Duration::hours(1));
    let queue: Arc<dyn RenewalQueue> = Arc::new(
        store
            .renewal_queue(DbQueueOptions {
                poll_interval: Duration::from_millis(20),
            })
            .with_clock(clock),
    );
    let scheduler = Scheduler::new(
        store.clone(),
        queue.clone(),
        SchedulerSettings {
            interval: Duration::from_secs(60),
            batch: 50,
            max_attempts: 8,
        },
    );
    scheduler
        .scan(OffsetDateTime::now_utc() + time::Duration::hours(1))
        .await
        .unwrap();
    let worker = Worker::new(
        after,
        queue.clone(),
        WorkerSettings {
            wait: Duration::from_millis(200),
            ..Default::default()
        },
    );
    assert_eq!(worker.run_once().await.unwrap(), 1);

    let job = RenewalLedger::latest_renewal_job(store.as_ref(), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Dead, "{job:?}");
    assert_eq!(job.attempts, 1, "refused once, not retried");
    let error = job.last_error.unwrap();
    assert!(
        error.contains("key_type: 'rsa-2048' violates policy.default.min_rsa_bits"),
        "{error}"
    );
    assert_eq!(
        worker
            .stats()
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Nothing more to take: the dead job is not delivered again.
    assert_eq!(worker.run_once().await.unwrap(), 0);
    let versions = MetadataStore::list_versions(store.as_ref(), id)
        .await
        .unwrap();
    assert_eq!(versions.len(), 1);

    let mut deliveries = NotificationStore::list_deliveries(
        store.as_ref(),
        &DeliveryQuery {
            team: Some("payments".into()),
            limit: 50,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .items;
    deliveries.reverse();
    let kinds: Vec<&str> = deliveries
        .iter()
        .map(|d| d.notification.kind.as_str())
        .collect();
    assert_eq!(kinds, ["issued", "policy-violation"]);
    let alert = &deliveries[1].notification;
    assert_eq!(alert.certificate_id, Some(id));
    assert!(alert.reason.as_deref().unwrap().contains("min_rsa_bits"));

    let audit = MetadataStore::list_audit(
        store.as_ref(),
        &AuditQuery {
            target: Some(format!("certificate/{id}")),
            action_prefix: Some("certificate.renewal.".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .items;
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["certificate.renewal.refused"]);
}
