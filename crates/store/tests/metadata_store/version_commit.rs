//! A new version with what commits in its transaction
//! (`MetadataStore::commit_version`, and `create_first_version` for a new
//! certificate's): the event announcing it, with one
//! pending delivery per subscription that wants it, and the acknowledgement
//! of the renewal job it completes, only while that job's lease is the
//! delivery's own. All or nothing: a refused version records neither.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration as StdDuration;

use certflow_core::model::Certificate;
use certflow_core::notify::{DeliveryQuery, DeliveryState, EventKind, Notification};
use certflow_core::ports::{VersionCommit, VersionCommitted};
use certflow_core::renewal::{JobDelivery, JobState, RenewalJob, RenewalQueue};
use certflow_store::DbRenewalQueue;
use uuid::Uuid;

use crate::support::{
    Stores, T0, assert_conflict, at, batch_with_a_taken_name, certificate, create, event,
    futures_join_all, seed_issuer, subscription, target, version, webhook,
};

const LEASE: StdDuration = StdDuration::from_secs(60);

/// A certificate of team `payments` at version 1, and a leased delivery of
/// its renewal job from `queue`.
async fn due(store: &dyn Stores, queue: &DbRenewalQueue, name: &str) -> (Certificate, JobDelivery) {
    let issuer = match store.list_issuers().await.unwrap().into_iter().next() {
        Some(issuer) => issuer,
        None => seed_issuer(store).await,
    };
    let cert = certificate(&issuer, name, "payments");
    create(store, &cert).await;
    let job = RenewalJob::new(cert.id, 1, 5, at(T0));
    assert!(store.insert_renewal_job(&job).await.unwrap());
    let mut got = queue.receive(1, LEASE, StdDuration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    (cert, got.remove(0))
}

/// The `renewed` event of version `number` of `cert`.
fn renewed(cert: &Certificate, number: u32) -> Notification {
    announced(EventKind::Renewed, cert, number)
}

/// The `kind` event of version `number` of `cert`.
fn announced(kind: EventKind, cert: &Certificate, number: u32) -> Notification {
    Notification {
        id: Uuid::now_v7(),
        kind,
        team: cert.team.clone(),
        certificate_id: Some(cert.id),
        certificate_name: Some(cert.name.clone()),
        version: Some(number),
        not_after: Some(cert.not_after),
        days_left: None,
        reason: None,
        summary: format!("{} version {number} {}", cert.name, kind.as_str()),
        details: serde_json::json!({}),
        at: at(T0),
    }
}

/// Commits version `number` of `cert` with `announce` and `completes`.
async fn commit(
    store: &dyn Stores,
    cert: &Certificate,
    number: u32,
    announce: Option<&Notification>,
    completes: Option<&JobDelivery>,
) -> certflow_core::DomainResult<VersionCommitted> {
    let mut cert = cert.clone();
    cert.current_version = number;
    let v = version(&cert, number);
    let audit = event("certificate.renew", &target(&cert));
    store
        .commit_version(VersionCommit {
            announce,
            completes,
            ..VersionCommit::new(&cert, &v, &audit, None)
        })
        .await
}

async fn deliveries(store: &dyn Stores, certificate_id: Uuid) -> Vec<(Uuid, Uuid, DeliveryState)> {
    let page = store
        .list_deliveries(&DeliveryQuery {
            certificate_id: Some(certificate_id),
            limit: 100,
            ..DeliveryQuery::default()
        })
        .await
        .unwrap();
    page.items
        .into_iter()
        .map(|d| (d.notification.id, d.subscription_id, d.state))
        .collect()
}

async fn state(store: &dyn Stores, job: Uuid) -> JobState {
    store.get_renewal_job(job).await.unwrap().unwrap().state
}

store_case! {
    async fn a_version_commits_with_its_event_and_its_jobs_acknowledgement(store: &dyn Stores) {
        let queue = store.queue();
        let wants = subscription("payments", &[EventKind::Renewed], webhook("https://a.example.com/", None));
        let other_kind = subscription("payments", &[EventKind::Expiring], webhook("https://b.example.com/", None));
        let other_team = subscription("billing", &[EventKind::Renewed], webhook("https://c.example.com/", None));
        for sub in [&wants, &other_kind, &other_team] {
            store.insert_subscription(sub, &event("subscription.create", "s")).await.unwrap();
        }
        let (cert, delivery) = due(store, &queue, "api.example.com").await;
        let event_of_2 = renewed(&cert, 2);
        let committed = commit(store, &cert, 2, Some(&event_of_2), Some(&delivery)).await.unwrap();
        assert_eq!(committed, VersionCommitted { completed: true });
        assert_eq!(store.get_certificate(cert.id).await.unwrap().unwrap().current_version, 2);
        assert_eq!(state(store, delivery.job.id).await, JobState::Done);
        // Done is done: the job is not delivered again, nor acknowledged twice.
        assert!(queue.receive(1, LEASE, StdDuration::ZERO).await.unwrap().is_empty());
        assert_eq!(
            deliveries(store, cert.id).await,
            vec![(event_of_2.id, wants.id, DeliveryState::Pending)]
        );
    }
}

store_case! {
    async fn a_refused_version_records_no_event_and_acknowledges_nothing(store: &dyn Stores) {
        let queue = store.queue();
        let wants = subscription("payments", &[EventKind::Renewed], webhook("https://a.example.com/", None));
        store.insert_subscription(&wants, &event("subscription.create", "s")).await.unwrap();
        let (cert, delivery) = due(store, &queue, "api.example.com").await;
        // Version 3 is not the next one after 1.
        let event_of_3 = renewed(&cert, 3);
        assert_conflict(commit(store, &cert, 3, Some(&event_of_3), Some(&delivery)).await, &["version"]);
        assert_eq!(store.get_certificate(cert.id).await.unwrap().unwrap().current_version, 1);
        assert_eq!(deliveries(store, cert.id).await, vec![]);
        assert_eq!(state(store, delivery.job.id).await, JobState::Running);
        // The lease is still the delivery's own.
        queue.complete(&delivery).await.unwrap();
    }
}

store_case! {
    async fn a_lost_lease_is_not_acknowledged_and_the_version_still_commits(store: &dyn Stores) {
        let clock = Arc::new(AtomicI64::new(T0));
        let reader = clock.clone();
        let queue = store.queue().with_clock(Arc::new(move || at(reader.load(Ordering::SeqCst))));
        let (cert, stale) = due(store, &queue, "api.example.com").await;
        // The lease runs out and another worker takes the job over.
        clock.store(T0 + 61, Ordering::SeqCst);
        let mut again = queue.receive(1, LEASE, StdDuration::ZERO).await.unwrap();
        assert_eq!(again.len(), 1);
        let current = again.remove(0);
        let committed = commit(store, &cert, 2, None, Some(&stale)).await.unwrap();
        assert_eq!(committed, VersionCommitted { completed: false });
        assert_eq!(store.get_certificate(cert.id).await.unwrap().unwrap().current_version, 2);
        assert_eq!(state(store, current.job.id).await, JobState::Running);
        queue.complete(&current).await.unwrap();
        assert_eq!(state(store, current.job.id).await, JobState::Done);
    }
}

store_case! {
    async fn concurrent_versions_each_acknowledge_their_own_job(store: &dyn Stores) {
        let queue = store.queue();
        let wants = subscription("payments", &[EventKind::Renewed], webhook("https://a.example.com/", None));
        store.insert_subscription(&wants, &event("subscription.create", "s")).await.unwrap();
        let mut due_ones = Vec::new();
        for i in 0..12 {
            due_ones.push(due(store, &queue, &format!("api{i}.example.com")).await);
        }
        let events: Vec<Notification> = due_ones.iter().map(|(c, _)| renewed(c, 2)).collect();
        let results = futures_join_all(
            due_ones
                .iter()
                .zip(&events)
                .map(|((cert, delivery), e)| commit(store, cert, 2, Some(e), Some(delivery))),
        )
        .await;
        for r in results {
            assert_eq!(r.unwrap(), VersionCommitted { completed: true });
        }
        for ((cert, delivery), e) in due_ones.iter().zip(&events) {
            assert_eq!(state(store, delivery.job.id).await, JobState::Done);
            assert_eq!(
                deliveries(store, cert.id).await,
                vec![(e.id, wants.id, DeliveryState::Pending)]
            );
        }
    }
}

store_case! {
    async fn new_certificates_commit_with_their_events_and_a_refused_one_records_none(
        store: &dyn Stores,
    ) {
        let wants = subscription("payments", &[EventKind::Issued], webhook("https://a.example.com/", None));
        let other_kind = subscription("payments", &[EventKind::Renewed], webhook("https://b.example.com/", None));
        for sub in [&wants, &other_kind] {
            store.insert_subscription(sub, &event("subscription.create", "s")).await.unwrap();
        }
        let issuer = seed_issuer(store).await;
        let (certs, clash) =
            batch_with_a_taken_name(store, &issuer, "payments", "n", 12, 5).await;
        let events: Vec<Notification> =
            certs.iter().map(|c| announced(EventKind::Issued, c, 1)).collect();
        let results = futures_join_all(certs.iter().zip(&events).map(|(c, e)| async move {
            let first = version(c, 1);
            let audit = event("certificate.create", &target(c));
            store
                .create_first_version(VersionCommit {
                    announce: Some(e),
                    ..VersionCommit::new(c, &first, &audit, None)
                })
                .await
        }))
        .await;
        for ((c, e), r) in certs.iter().zip(&events).zip(results) {
            if c.id == clash.id {
                assert_conflict(r, &["taken.example.com"]);
                assert_eq!(deliveries(store, c.id).await, vec![]);
            } else {
                r.unwrap();
                assert_eq!(
                    deliveries(store, c.id).await,
                    vec![(e.id, wants.id, DeliveryState::Pending)]
                );
            }
        }
    }
}

store_case! {
    async fn a_first_version_completes_no_job(store: &dyn Stores) {
        let queue = store.queue();
        let (cert, delivery) = due(store, &queue, "api.example.com").await;
        let mut other = cert.clone();
        other.id = Uuid::new_v4();
        other.name = "other.example.com".into();
        let first = version(&other, 1);
        let audit = event("certificate.create", &target(&other));
        let refused = store
            .create_first_version(VersionCommit {
                completes: Some(&delivery),
                ..VersionCommit::new(&other, &first, &audit, None)
            })
            .await;
        assert!(matches!(refused, Err(certflow_core::DomainError::Internal(_))), "{refused:?}");
        assert!(store.get_certificate(other.id).await.unwrap().is_none());
        assert_eq!(state(store, delivery.job.id).await, JobState::Running);
        queue.complete(&delivery).await.unwrap();
    }
}
