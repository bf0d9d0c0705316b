//! The renewal ledger (`RenewalLedger`) and the database queue over it:
//! inserting jobs once, leases, heartbeats, retries, dead letters, queue
//! statistics, and the certificate statistics that read the jobs.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration as StdDuration;

use certflow_core::model::{AuditQuery, Certificate, CertificateStatus, RevocationReason};
use certflow_core::renewal::{JobDelivery, JobState, QueueStats, RenewalJob, RenewalQueue};
use certflow_store::DbRenewalQueue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::support::{
    DAY, Stores, T0, assert_conflict, assert_not_found, at, audit_ids, certificate, create, event,
    futures_join_all, seed_issuer, target,
};

const LEASE: StdDuration = StdDuration::from_secs(60);

const NO_WAIT: StdDuration = StdDuration::ZERO;

/// A queue whose clock reads `clock` (unix seconds), starting at T0.
fn clocked(store: &dyn Stores) -> (DbRenewalQueue, Arc<AtomicI64>) {
    let clock = Arc::new(AtomicI64::new(T0));
    let reader = clock.clone();
    let queue = store
        .queue()
        .with_clock(Arc::new(move || at(reader.load(Ordering::SeqCst))));
    (queue, clock)
}

fn set(clock: &AtomicI64, secs: i64) {
    clock.store(secs, Ordering::SeqCst);
}

/// A certificate to hang jobs on (jobs reference it; their versions need not exist).
async fn job_target(store: &dyn Stores) -> Certificate {
    let issuer = seed_issuer(store).await;
    let cert = certificate(&issuer, "renew.example.com", "payments");
    create(store, &cert).await;
    cert
}

async fn job(store: &dyn Stores, id: Uuid) -> RenewalJob {
    store.get_renewal_job(id).await.unwrap().unwrap()
}

async fn receive_one(queue: &DbRenewalQueue) -> JobDelivery {
    let mut got = queue.receive(10, LEASE, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    got.remove(0)
}

async fn receive_none(queue: &DbRenewalQueue) {
    let got = queue.receive(10, LEASE, NO_WAIT).await.unwrap();
    assert!(got.is_empty(), "{got:?}");
}

store_case! {
    async fn renewal_ledger_round_trips_and_inserts_once(store: &dyn Stores) {
        let cert = job_target(store).await;
        let mut v1 = RenewalJob::new(cert.id, 1, 5, at(T0));
        assert!(store.insert_renewal_job(&v1).await.unwrap());
        assert_eq!(job(store, v1.id).await, v1);
        // Another job for the same (certificate, version) is not inserted.
        let twin = RenewalJob::new(cert.id, 1, 5, at(T0 + 10));
        assert!(!store.insert_renewal_job(&twin).await.unwrap());
        assert_eq!(store.get_renewal_job(twin.id).await.unwrap(), None);
        // The same id again is a conflict, not a silent no-op.
        let same_id = RenewalJob {
            version: 9,
            ..v1.clone()
        };
        assert_conflict(
            store.insert_renewal_job(&same_id).await,
            &["already exists"],
        );

        let v2 = RenewalJob::new(cert.id, 2, 5, at(T0 + 20));
        assert!(store.insert_renewal_job(&v2).await.unwrap());
        assert_eq!(
            store.latest_renewal_job(cert.id).await.unwrap(),
            Some(v2.clone())
        );
        assert_eq!(
            store.latest_renewal_job(Uuid::new_v4()).await.unwrap(),
            None
        );

        // Every field is overwritten, and the audit event commits with it.
        v1.state = JobState::Dead;
        v1.attempts = 5;
        v1.max_attempts = 6;
        v1.run_at = at(T0 + 100);
        v1.lease_until = Some(at(T0 + 200));
        v1.last_attempt_at = Some(at(T0 + 150));
        v1.last_error = Some("CA said no: 'rateLimited'".into());
        v1.updated_at = at(T0 + 150);
        let audit = event("renewal.dead", &target(&cert));
        store.update_renewal_job(&v1, Some(&audit)).await.unwrap();
        assert_eq!(job(store, v1.id).await, v1);
        let trail = audit_ids(
            store,
            AuditQuery {
                action_prefix: Some("renewal.".into()),
                ..AuditQuery::default()
            },
        )
        .await;
        assert_eq!(trail, vec![audit.id]);
        v1.last_error = None;
        store.update_renewal_job(&v1, None).await.unwrap();
        assert_eq!(job(store, v1.id).await.last_error, None);

        // A failing audit rolls the update back.
        let mut changed = v1.clone();
        changed.state = JobState::Queued;
        assert!(
            store
                .update_renewal_job(&changed, Some(&audit))
                .await
                .is_err()
        );
        assert_eq!(job(store, v1.id).await.state, JobState::Dead);

        let ghost = RenewalJob::new(cert.id, 7, 5, at(T0));
        assert_not_found(store.update_renewal_job(&ghost, None).await);

        store.delete_renewal_job(v2.id).await.unwrap();
        assert_eq!(store.get_renewal_job(v2.id).await.unwrap(), None);
        assert_eq!(store.latest_renewal_job(cert.id).await.unwrap(), Some(v1));
        // Deleted, the key is free again (a failed hand-off to SQS is retried).
        assert!(store.insert_renewal_job(&v2).await.unwrap());
    }
}

store_case! {
    async fn concurrent_enqueues_insert_one_job(store: &dyn Stores) {
        let cert = job_target(store).await;
        let queue = store.queue();
        let jobs: Vec<RenewalJob> = (0..8)
            .map(|_| RenewalJob::new(cert.id, 1, 5, at(T0)))
            .collect();
        let results = futures_join_all(jobs.iter().map(|j| queue.enqueue(j))).await;
        let inserted: Vec<&RenewalJob> = jobs
            .iter()
            .zip(&results)
            .filter(|(_, r)| *r.as_ref().unwrap())
            .map(|(j, _)| j)
            .collect();
        assert_eq!(inserted.len(), 1, "{results:?}");
        assert_eq!(
            store.latest_renewal_job(cert.id).await.unwrap().unwrap().id,
            inserted[0].id
        );
        assert_eq!(queue.stats().await.unwrap().queued, 1);
    }
}

store_case! {
    async fn concurrent_receivers_never_share_a_job(store: &dyn Stores) {
        let cert = job_target(store).await;
        let queue = store.queue();
        for version in 1..=30 {
            assert!(
                queue
                    .enqueue(&RenewalJob::new(cert.id, version, 5, at(T0)))
                    .await
                    .unwrap()
            );
        }
        let worker = |queue: DbRenewalQueue| async move {
            let mut mine = Vec::new();
            loop {
                let got = queue.receive(4, LEASE, NO_WAIT).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|d| d.job.id));
            }
        };
        let all = futures_join_all((0..5).map(|_| worker(queue.clone()))).await;
        let ids: Vec<Uuid> = all.into_iter().flatten().collect();
        let distinct: HashSet<Uuid> = ids.iter().copied().collect();
        assert_eq!(ids.len(), 30, "a job was delivered twice or lost");
        assert_eq!(distinct.len(), 30);
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.queued, stats.running), (0, 30));
    }
}

store_case! {
    async fn expired_lease_is_redelivered_and_the_old_receipt_refused(store: &dyn Stores) {
        let cert = job_target(store).await;
        let (queue, clock) = clocked(store);
        let enqueued = RenewalJob::new(cert.id, 1, 5, at(T0));
        queue.enqueue(&enqueued).await.unwrap();
        let first = receive_one(&queue).await;
        assert_eq!(first.job.id, enqueued.id);
        assert_eq!(first.job.state, JobState::Running);
        assert_eq!(first.job.attempts, 1);
        assert_eq!(first.job.lease_until, Some(at(T0 + 60)));
        assert_eq!(first.job.last_attempt_at, Some(at(T0)));
        // Leased: nobody else gets it, up to and including its last second.
        receive_none(&queue).await;
        set(&clock, T0 + 60);
        receive_none(&queue).await;

        set(&clock, T0 + 61);
        let second = receive_one(&queue).await;
        assert_eq!(second.job.id, enqueued.id);
        assert_eq!(second.job.attempts, 2);
        assert_ne!(second.receipt, first.receipt);
        assert!(
            second
                .job
                .last_error
                .as_deref()
                .unwrap()
                .contains("lease expired")
        );
        assert_eq!(job(store, enqueued.id).await, second.job);

        // The first worker has lost its lease for every operation.
        assert_conflict(queue.heartbeat(&first, LEASE).await, &["lease lost"]);
        assert_conflict(queue.complete(&first).await, &["lease lost"]);
        assert_conflict(queue.retry(&first, "x", LEASE).await, &["lease lost"]);
        assert_conflict(queue.dead_letter(&first, "x").await, &["lease lost"]);
        assert_eq!(job(store, enqueued.id).await, second.job);

        queue.complete(&second).await.unwrap();
        let done = job(store, enqueued.id).await;
        assert_eq!(done.state, JobState::Done);
        assert_eq!(done.last_error, None);
        assert_eq!(done.lease_until, None);
        // Done is final: not delivered again, not acknowledged twice.
        set(&clock, T0 + 10_000);
        receive_none(&queue).await;
        assert_conflict(queue.complete(&second).await, &["lease lost"]);
    }
}

store_case! {
    async fn heartbeat_extends_the_lease(store: &dyn Stores) {
        let cert = job_target(store).await;
        let (queue, clock) = clocked(store);
        queue
            .enqueue(&RenewalJob::new(cert.id, 1, 5, at(T0)))
            .await
            .unwrap();
        let delivery = receive_one(&queue).await;
        set(&clock, T0 + 50);
        queue.heartbeat(&delivery, LEASE).await.unwrap();
        assert_eq!(
            job(store, delivery.job.id).await.lease_until,
            Some(at(T0 + 110))
        );
        set(&clock, T0 + 100);
        receive_none(&queue).await;
        // Still the holder after the original lease would have ended.
        queue.heartbeat(&delivery, LEASE).await.unwrap();
        set(&clock, T0 + 161);
        let again = receive_one(&queue).await;
        assert_eq!((again.job.id, again.job.attempts), (delivery.job.id, 2));
    }
}

store_case! {
    async fn retry_honours_run_at(store: &dyn Stores) {
        let cert = job_target(store).await;
        let (queue, clock) = clocked(store);
        queue
            .enqueue(&RenewalJob::new(cert.id, 1, 5, at(T0)))
            .await
            .unwrap();
        let first = receive_one(&queue).await;
        set(&clock, T0 + 10);
        queue
            .retry(
                &first,
                "CA unavailable: connection refused",
                StdDuration::from_millis(299_500),
            )
            .await
            .unwrap();
        let waiting = job(store, first.job.id).await;
        assert_eq!(waiting.state, JobState::Queued);
        // Rounded up to the whole second: never earlier than asked.
        assert_eq!(waiting.run_at, at(T0 + 310));
        assert_eq!(waiting.lease_until, None);
        assert_eq!(
            waiting.last_error.as_deref(),
            Some("CA unavailable: connection refused")
        );
        assert_conflict(queue.complete(&first).await, &["lease lost"]);
        set(&clock, T0 + 309);
        receive_none(&queue).await;
        set(&clock, T0 + 310);
        let second = receive_one(&queue).await;
        assert_eq!(second.job.attempts, 2);
        // The reason stays visible while the retry runs.
        assert_eq!(
            second.job.last_error.as_deref(),
            Some("CA unavailable: connection refused")
        );
        queue.complete(&second).await.unwrap();
        assert_eq!(job(store, first.job.id).await.last_error, None);
    }
}

store_case! {
    async fn dead_letter_after_max_attempts(store: &dyn Stores) {
        let cert = job_target(store).await;
        let (queue, clock) = clocked(store);

        // Explicitly, by the worker.
        let explicit = RenewalJob::new(cert.id, 1, 2, at(T0));
        queue.enqueue(&explicit).await.unwrap();
        let d = receive_one(&queue).await;
        queue.retry(&d, "refused", StdDuration::ZERO).await.unwrap();
        let d = receive_one(&queue).await;
        assert_eq!(d.job.attempts, d.job.max_attempts);
        queue
            .dead_letter(&d, "refused twice: badCSR")
            .await
            .unwrap();
        let dead = job(store, explicit.id).await;
        assert_eq!(dead.state, JobState::Dead);
        assert_eq!(dead.last_error.as_deref(), Some("refused twice: badCSR"));
        receive_none(&queue).await;
        assert_conflict(queue.complete(&d).await, &["lease lost"]);

        // By repeated lease expiry: the worker crashes every time.
        let crashing = RenewalJob::new(cert.id, 2, 2, at(T0));
        queue.enqueue(&crashing).await.unwrap();
        assert_eq!(receive_one(&queue).await.job.attempts, 1);
        set(&clock, T0 + 61);
        assert_eq!(receive_one(&queue).await.job.attempts, 2);
        set(&clock, T0 + 122);
        receive_none(&queue).await;
        let buried = job(store, crashing.id).await;
        assert_eq!(buried.state, JobState::Dead);
        assert_eq!(buried.attempts, 2);
        let reason = buried.last_error.unwrap();
        assert!(
            reason.contains("lease expired") && reason.contains("giving up"),
            "{reason}"
        );

        let stats = queue.stats().await.unwrap();
        assert_eq!(
            stats,
            QueueStats {
                queued: 0,
                running: 0,
                dead: 2,
                failing: 0,
                oldest_age_secs: 0
            }
        );
    }
}

store_case! {
    async fn queue_stats_count_states_and_oldest_age(store: &dyn Stores) {
        let cert = job_target(store).await;
        let (queue, clock) = clocked(store);
        assert_eq!(queue.stats().await.unwrap(), QueueStats::default());
        for (version, created) in [(1, T0), (2, T0 + 30), (3, T0 + 40), (4, T0 + 50)] {
            queue
                .enqueue(&RenewalJob::new(cert.id, version, 1, at(created)))
                .await
                .unwrap();
        }
        set(&clock, T0 + 100);
        let mut got = queue.receive(2, LEASE, NO_WAIT).await.unwrap();
        assert_eq!(
            got.iter().map(|d| d.job.version).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            queue.stats().await.unwrap(),
            QueueStats {
                queued: 2,
                running: 2,
                dead: 0,
                failing: 0,
                oldest_age_secs: 100
            }
        );
        queue.complete(&got.remove(0)).await.unwrap();
        queue.dead_letter(&got.remove(0), "no").await.unwrap();
        assert_eq!(
            queue.stats().await.unwrap(),
            QueueStats {
                queued: 2,
                running: 0,
                dead: 1,
                failing: 0,
                oldest_age_secs: 60
            }
        );
        assert_eq!(
            store
                .renewal_job_stats(at(T0 + 50))
                .await
                .unwrap()
                .oldest_age_secs,
            10
        );
    }
}

store_case! {
    async fn release_hands_a_job_back_at_once(store: &dyn Stores) {
        let cert = job_target(store).await;
        let (queue, clock) = clocked(store);
        let j = RenewalJob::new(cert.id, 1, 3, at(T0));
        queue.enqueue(&j).await.unwrap();
        let first = receive_one(&queue).await;
        assert_eq!(first.job.attempts, 1);
        set(&clock, T0 + 5);
        queue.release(&first).await.unwrap();
        let back = job(store, j.id).await;
        assert_eq!(back.state, JobState::Queued);
        // The interrupted delivery is not an attempt, and no lease is left.
        assert_eq!((back.attempts, back.lease_until), (0, None));
        assert_eq!(back.run_at, at(T0 + 5));
        // Another worker gets it at once, long before the lease would end.
        let second = receive_one(&queue).await;
        assert_eq!(second.job.attempts, 1);
        // The old receipt is worth nothing now, releasing included.
        assert_conflict(queue.release(&first).await, &["lease lost"]);
        assert_conflict(queue.complete(&first).await, &["lease lost"]);
        queue.complete(&second).await.unwrap();
        assert_eq!(job(store, j.id).await.state, JobState::Done);
    }
}

store_case! {
    async fn certificate_stats_group_status_team_expiry_and_unrenewed(store: &dyn Stores) {
        let issuer = seed_issuer(store).await;
        let expiring = |name: &str, team: &str, days: i64| {
            let mut c = certificate(&issuer, name, team);
            c.not_after = at(T0 + days * DAY);
            c
        };
        let empty = store.certificate_stats(at(T0 + 7 * DAY)).await.unwrap();
        assert_eq!(empty.expiring_without_renewal, 0);
        assert!(empty.earliest_expiry_by_team.is_empty());
        assert!(empty.by_status.iter().all(|(_, n)| *n == 0));
        assert_eq!(empty.by_status.len(), CertificateStatus::ALL.len());

        let far = certificate(&issuer, "far.example.com", "payments"); // 90 days
        let soon = expiring("soon.example.com", "payments", 5);
        let queued = expiring("queued.example.com", "web", 3);
        let dead = expiring("dead.example.com", "web", 2);
        let stale_job = expiring("stale.example.com", "web", 1);
        let archived = expiring("archived.example.com", "web", 0);
        let revoked = expiring("revoked.example.com", "ops", 0);
        for c in [&far, &soon, &queued, &dead, &stale_job, &archived, &revoked] {
            create(store, c).await;
        }
        store
            .archive_certificate(archived.id, at(T0), &event("certificate.archive", "x"))
            .await
            .unwrap();
        store
            .revoke_version(
                revoked.id,
                1,
                RevocationReason::KeyCompromise,
                at(T0),
                &event("certificate.revoke", "x"),
            )
            .await
            .unwrap();
        // A renewal queued for the current version: in progress.
        let queued_job = RenewalJob::new(queued.id, 1, 3, at(T0));
        assert!(store.insert_renewal_job(&queued_job).await.unwrap());
        // Given up: nothing is in progress any more.
        let mut dead_job = RenewalJob::new(dead.id, 1, 3, at(T0));
        dead_job.state = JobState::Dead;
        assert!(store.insert_renewal_job(&dead_job).await.unwrap());
        // A job of another version does not renew the current one.
        let mut other_version = RenewalJob::new(stale_job.id, 7, 3, at(T0));
        other_version.state = JobState::Running;
        assert!(store.insert_renewal_job(&other_version).await.unwrap());

        let stats = store.certificate_stats(at(T0 + 7 * DAY)).await.unwrap();
        let by_status: BTreeMap<&str, u64> = stats
            .by_status
            .iter()
            .map(|(st, n)| (st.as_str(), *n))
            .collect();
        assert_eq!(
            by_status,
            BTreeMap::from([("active", 5), ("archived", 1), ("revoked", 1)])
        );
        // Active certificates only: the archived and revoked ones expire earlier.
        assert_eq!(
            stats.earliest_expiry_by_team,
            vec![
                ("payments".to_owned(), at(T0 + 5 * DAY)),
                ("web".to_owned(), at(T0 + DAY)),
            ]
        );
        // soon, dead and stale_job; not far (later), queued (in progress),
        // archived or revoked (not active).
        assert_eq!(stats.expiring_without_renewal, 3);
        // The bound is exclusive, and already expired certificates count.
        let edge = store.certificate_stats(at(T0 + 5 * DAY)).await.unwrap();
        assert_eq!(edge.expiring_without_renewal, 2);
        let later = store.certificate_stats(at(T0 + 365 * DAY)).await.unwrap();
        assert_eq!(later.expiring_without_renewal, 4);

        // A retried job is counted as failing (queued after an attempt).
        let (queue, _clock) = clocked(store);
        let d = receive_one(&queue).await;
        assert_eq!(d.job.id, queued_job.id);
        queue
            .retry(&d, "CA unavailable", StdDuration::from_secs(600))
            .await
            .unwrap();
        let q = queue.stats().await.unwrap();
        assert_eq!((q.queued, q.failing, q.running, q.dead), (1, 1, 1, 1));
        // Still in progress (queued), so still not "without renewal".
        let stats = store.certificate_stats(at(T0 + 7 * DAY)).await.unwrap();
        assert_eq!(stats.expiring_without_renewal, 3);
    }
}

store_case! {
    async fn receive_waits_for_a_job(store: &dyn Stores) {
        let cert = job_target(store).await;
        let queue = store.queue();
        let started = std::time::Instant::now();
        let got = queue
            .receive(1, LEASE, StdDuration::from_millis(300))
            .await
            .unwrap();
        assert!(got.is_empty());
        assert!(started.elapsed() >= StdDuration::from_millis(300));

        let job = RenewalJob::new(cert.id, 1, 5, OffsetDateTime::now_utc());
        let producer = async {
            tokio::time::sleep(StdDuration::from_millis(300)).await;
            queue.enqueue(&job).await.unwrap();
        };
        let started = std::time::Instant::now();
        let (got, ()) = tokio::join!(
            queue.receive(1, LEASE, StdDuration::from_secs(10)),
            producer
        );
        let got = got.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].job.id, job.id);
        assert!(started.elapsed() < StdDuration::from_secs(5));
    }
}
