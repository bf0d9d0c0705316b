//! Behaviour suite of the store's ports on SQLite and PostgreSQL, one test
//! binary, being split into one module per port or concern; [`support`]
//! holds the stores under test and the fixtures several modules seed.
//!
//! Every case in [`suite`] is an async function over `&dyn MetadataStore`
//! (or `&dyn Stores`, or `&S` bounded by the ports it needs) and knows
//! nothing about the backend. Each backend runs them through
//! `metadata_store_suite!` with its own way of opening a fresh, empty store:
//! `sqlite_memory`, `sqlite_file` and `postgres` at the bottom. The cases
//! already in a module of their port (`settings`, `issuers`, `certificates`, `listing`, `due`)
//! define and register themselves with `store_case!`.
//! Backend-specific behaviour (files, reopening, connecting, migrating) is
//! tested outside the suite.
//!
//! The PostgreSQL tests need a server: `postgres://postgres@127.0.0.1:5432/postgres`
//! (trust authentication) unless `CERTFLOW_TEST_PG_URL` names another. Each
//! test creates its own database and drops it afterwards. Without a server
//! they fail, saying how to start one; they never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Defines a suite case and registers it on every backend: the `async fn` as
/// written, and next to it a module of the same name with one
/// `#[tokio::test]` per backend, each passing the case a fresh store.
macro_rules! store_case {
    ($(#[$attr:meta])* async fn $case:ident $($signature_and_body:tt)*) => {
        $(#[$attr])*
        async fn $case $($signature_and_body)*

        mod $case {
            #[tokio::test]
            async fn sqlite_memory() {
                let (store, _guard) = crate::support::sqlite_memory().await;
                super::$case(&store).await;
            }

            #[tokio::test]
            async fn sqlite_file() {
                let (store, _guard) = crate::support::sqlite_file().await;
                super::$case(&store).await;
            }

            #[tokio::test]
            async fn postgres() {
                let (store, _guard) = crate::support::postgres().await;
                super::$case(&store).await;
            }
        }
    };
}

mod support;

mod audit_chain;
mod audit_secrets;
mod backends;
mod certificates;
mod due;
mod issuers;
mod listing;
mod settings;

/// Backend-agnostic cases not yet in the module of their port.
mod suite {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration as StdDuration;

    use certflow_core::DomainError;
    use certflow_core::model::{
        Actor, AuditChainReport, AuditEvent, AuditQuery, Certificate, CertificateQuery,
        CertificateStatus, CertificateVersion, IdempotencyRecord, Outcome, RevocationReason,
    };
    use certflow_core::notify::{Channel, DeliveryQuery, DeliveryState, EventKind, Notification};
    use certflow_core::ports::MetadataStore;
    use certflow_core::renewal::{JobDelivery, JobState, QueueStats, RenewalJob, RenewalQueue};
    use certflow_store::DbRenewalQueue;
    use serde_json::json;
    use time::{Duration, OffsetDateTime};
    use uuid::Uuid;

    use crate::support::{
        DAY, Stores, T0, actions, assert_conflict, assert_not_found, at, audit_ids, certificate,
        create, dns, event, futures_join_all, issuer, query, seed_agent, seed_issuer, subscription,
        target, version, warm_up, webhook,
    };

    pub async fn ping_answers(store: &dyn MetadataStore) {
        store.ping().await.unwrap();
    }

    /// A failing audit insert (its id already used) must undo the whole change.
    pub async fn audit_failure_rolls_back_every_mutation(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let used = event("used", "used");
        store.append_audit(&used).await.unwrap();
        let reuse = |action: &str| AuditEvent {
            action: action.into(),
            ..used.clone()
        };
        let assert_dup = |result: Result<(), DomainError>| {
            assert_conflict(result, &["audit event", &used.id.to_string()]);
        };

        // insert_issuer
        let other = issuer("other", false);
        assert_dup(store.insert_issuer(&other, &reuse("issuer.create")).await);
        assert_eq!(store.get_issuer(other.id).await.unwrap(), None);
        store
            .insert_issuer(&other, &event("issuer.create", "issuer/other"))
            .await
            .unwrap();

        // set_default_issuer
        assert_dup(
            store
                .set_default_issuer(other.id, &reuse("issuer.set-default"))
                .await,
        );
        assert!(store.get_issuer(main.id).await.unwrap().unwrap().is_default);
        assert!(
            !store
                .get_issuer(other.id)
                .await
                .unwrap()
                .unwrap()
                .is_default
        );

        // create_certificate: no certificate, version, name or label survives.
        let mut cert = certificate(&main, "atomic.example.com", "t");
        cert.labels = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let first = version(&cert, 1);
        assert_dup(
            store
                .create_certificate(&cert, &first, &reuse("certificate.create"), None)
                .await,
        );
        assert_eq!(store.get_certificate(cert.id).await.unwrap(), None);
        assert!(store.list_versions(cert.id).await.unwrap().is_empty());
        let by_label = CertificateQuery {
            labels: cert.labels.clone(),
            ..query()
        };
        assert_eq!(store.list_certificates(&by_label).await.unwrap().total, 0);
        // The same serial and name are still free.
        store
            .create_certificate(
                &cert,
                &first,
                &event("certificate.create", &target(&cert)),
                None,
            )
            .await
            .unwrap();

        // add_version
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        renewed.names = vec![dns("changed.example.com")];
        renewed.updated_at = at(T0 + DAY);
        assert_dup(
            store
                .add_version(
                    &renewed,
                    &version(&renewed, 2),
                    &reuse("certificate.renew"),
                    None,
                )
                .await,
        );
        assert_eq!(
            store.get_certificate(cert.id).await.unwrap(),
            Some(cert.clone())
        );
        assert_eq!(
            store.list_versions(cert.id).await.unwrap(),
            vec![first.clone()]
        );
        let search = CertificateQuery {
            search: Some("changed".into()),
            ..query()
        };
        assert_eq!(store.list_certificates(&search).await.unwrap().total, 0);

        // revoke_version
        assert_dup(
            store
                .revoke_version(
                    cert.id,
                    1,
                    RevocationReason::KeyCompromise,
                    at(T0 + DAY),
                    &reuse("certificate.revoke"),
                )
                .await,
        );
        assert_eq!(
            store.get_certificate(cert.id).await.unwrap(),
            Some(cert.clone())
        );
        assert_eq!(store.list_versions(cert.id).await.unwrap(), vec![first]);
        assert!(store.list_revoked(main.id).await.unwrap().is_empty());

        // archive_certificate
        assert_dup(
            store
                .archive_certificate(cert.id, at(T0 + DAY), &reuse("certificate.archive"))
                .await,
        );
        assert_eq!(store.get_certificate(cert.id).await.unwrap(), Some(cert));

        // Only the original event carries that id.
        let trail = store
            .list_audit(&AuditQuery {
                target: Some("used".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(trail.items, vec![used]);
    }

    fn event_at(secs: i64, action: &str, target: &str, subject: &str) -> AuditEvent {
        AuditEvent {
            id: Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs as u64, 0)),
            at: at(secs),
            actor: Actor {
                subject: subject.into(),
                source: None,
            },
            action: action.into(),
            target: target.into(),
            outcome: Outcome::Success,
            details: json!({}),
        }
    }

    pub async fn audit_round_trips_and_rejects_duplicates(store: &dyn MetadataStore) {
        let mut e = event("certificate.key.download", "certificate/1");
        e.outcome = Outcome::Failure;
        e.details = json!({ "reason": "forbidden", "nested": { "list": [1, 2.5, null, "x"] }, "ok": false });
        store.append_audit(&e).await.unwrap();
        let mut bare = event_at(T0 + 1, "system.start", "server", "system");
        bare.details = serde_json::Value::Null;
        store.append_audit(&bare).await.unwrap();
        let page = store
            .list_audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.total, 2);
        assert!(page.items.contains(&e));
        assert!(page.items.contains(&bare));
        assert_conflict(store.append_audit(&e).await, &[&e.id.to_string()]);
    }

    pub async fn audit_filters_order_and_pages(store: &dyn MetadataStore) {
        let events = [
            event_at(T0 + 1, "certificate.create", "certificate/1", "alice"),
            event_at(T0 + 2, "certificate.renew", "certificate/1", "bob"),
            event_at(T0 + 3, "issuer.create", "issuer/1", "alice"),
            event_at(T0 + 4, "certificate.revoke", "certificate/2", "alice"),
            event_at(T0 + 5, "certificatex.other", "certificate/1", "alice"),
            event_at(T0 + 6, "Certificate.create", "certificate/1", "alice"),
            event_at(T0 + 7, "certificate_create", "certificate/10", "carol"),
        ];
        // Inserted out of order: the id, not insertion, decides.
        for i in [3, 0, 6, 5, 1, 4, 2] {
            store.append_audit(&events[i]).await.unwrap();
        }
        let id = |i: usize| events[i].id;
        let newest_first = |idx: &[usize]| {
            let mut v: Vec<Uuid> = idx.iter().map(|&i| id(i)).collect();
            v.sort();
            v.reverse();
            v
        };

        assert_eq!(
            audit_ids(store, AuditQuery::default()).await,
            newest_first(&[0, 1, 2, 3, 4, 5, 6])
        );
        let by_target = AuditQuery {
            target: Some("certificate/1".into()),
            ..AuditQuery::default()
        };
        assert_eq!(
            audit_ids(store, by_target.clone()).await,
            newest_first(&[0, 1, 4, 5])
        );
        // Prefix is literal and case-sensitive.
        let by_prefix = AuditQuery {
            action_prefix: Some("certificate.".into()),
            ..AuditQuery::default()
        };
        assert_eq!(
            audit_ids(store, by_prefix.clone()).await,
            newest_first(&[0, 1, 3])
        );
        let by_subject = AuditQuery {
            subject: Some("alice".into()),
            ..AuditQuery::default()
        };
        assert_eq!(
            audit_ids(store, by_subject).await,
            newest_first(&[0, 2, 3, 4, 5])
        );
        let combined = AuditQuery {
            target: Some("certificate/1".into()),
            action_prefix: Some("certificate.".into()),
            subject: Some("alice".into()),
            ..AuditQuery::default()
        };
        assert_eq!(audit_ids(store, combined).await, vec![id(0)]);

        // Pages: newest first, total counts every match.
        let first = store
            .list_audit(&AuditQuery {
                limit: 3,
                ..by_target.clone()
            })
            .await
            .unwrap();
        let second = store
            .list_audit(&AuditQuery {
                limit: 3,
                offset: 3,
                ..by_target
            })
            .await
            .unwrap();
        assert_eq!((first.total, second.total), (4, 4));
        let both: Vec<Uuid> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|e| e.id)
            .collect();
        assert_eq!(both, newest_first(&[0, 1, 4, 5]));
        assert_eq!(first.items[0], events[5]);
    }

    pub async fn mutations_record_their_audit_event(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "payments");
        let create_event = event("certificate.create", &target(&cert));
        store
            .create_certificate(&cert, &version(&cert, 1), &create_event, None)
            .await
            .unwrap();
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        let renew_event = event("certificate.renew", &target(&cert));
        store
            .add_version(&renewed, &version(&renewed, 2), &renew_event, None)
            .await
            .unwrap();
        let revoke_event = event("certificate.revoke", &target(&cert));
        store
            .revoke_version(
                cert.id,
                2,
                RevocationReason::Unspecified,
                at(T0 + DAY),
                &revoke_event,
            )
            .await
            .unwrap();
        let archive_event = event("certificate.archive", &target(&cert));
        store
            .archive_certificate(cert.id, at(T0 + 2 * DAY), &archive_event)
            .await
            .unwrap();
        let trail = store
            .list_audit(&AuditQuery {
                target: Some(target(&cert)),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            trail.items,
            vec![archive_event, revoke_event, renew_event, create_event]
        );
    }

    fn idempotency(scope: &str, key: &str, v: &CertificateVersion) -> IdempotencyRecord {
        IdempotencyRecord {
            scope: scope.into(),
            key: key.into(),
            request_sha256: format!("{:064x}", u128::from(v.version) + 7),
            certificate_id: v.certificate_id,
            version: v.version,
            created_at: v.created_at,
        }
    }

    /// Stored with the create, read back by `(scope, key)` and only by both.
    pub async fn idempotency_record_commits_with_the_certificate(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        assert_eq!(store.get_idempotency("alice", "k1").await.unwrap(), None);
        let cert = certificate(&issuer, "api.example.com", "payments");
        let first = version(&cert, 1);
        let record = idempotency("alice/certificate.create", "k1", &first);
        store
            .create_certificate(
                &cert,
                &first,
                &event("certificate.create", &target(&cert)),
                Some(&record),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .get_idempotency("alice/certificate.create", "k1")
                .await
                .unwrap(),
            Some(record)
        );
        assert_eq!(
            store
                .get_idempotency("bob/certificate.create", "k1")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .get_idempotency("alice/certificate.create", "K1")
                .await
                .unwrap(),
            None
        );

        // A record that does not describe the version committed is a bug.
        let other = certificate(&issuer, "other.example.com", "payments");
        let wrong = idempotency("alice/certificate.create", "k2", &version(&cert, 1));
        let result = store
            .create_certificate(
                &other,
                &version(&other, 1),
                &event("certificate.create", &target(&other)),
                Some(&wrong),
            )
            .await;
        assert!(
            matches!(result, Err(DomainError::Internal(_))),
            "{result:?}"
        );
        assert_eq!(store.get_certificate(other.id).await.unwrap(), None);
    }

    /// Stored with the new version; a failed renewal stores no record.
    pub async fn idempotency_record_commits_with_the_version(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "payments");
        create(store, &cert).await;
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        let scope = format!("alice/certificate.renew/{}", cert.id);

        // Wrong number: refused, and the key stays unused.
        let v3 = version(&renewed, 3);
        assert_conflict(
            store
                .add_version(
                    &renewed,
                    &v3,
                    &event("certificate.renew", &target(&cert)),
                    Some(&idempotency(&scope, "r1", &v3)),
                )
                .await,
            &["version"],
        );
        assert_eq!(store.get_idempotency(&scope, "r1").await.unwrap(), None);

        let v2 = version(&renewed, 2);
        let record = idempotency(&scope, "r1", &v2);
        store
            .add_version(
                &renewed,
                &v2,
                &event("certificate.renew", &target(&cert)),
                Some(&record),
            )
            .await
            .unwrap();
        assert_eq!(
            store.get_idempotency(&scope, "r1").await.unwrap(),
            Some(record)
        );
        assert_eq!(store.list_versions(cert.id).await.unwrap().len(), 2);
    }

    /// A second commit under a stored `(scope, key)` is a `Conflict` and leaves
    /// no certificate, version, label, audit event or record behind.
    pub async fn duplicate_idempotency_key_commits_nothing(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "payments");
        let first = version(&cert, 1);
        let record = idempotency("alice/certificate.create", "dup", &first);
        store
            .create_certificate(
                &cert,
                &first,
                &event("certificate.create", &target(&cert)),
                Some(&record),
            )
            .await
            .unwrap();

        let mut again = certificate(&issuer, "again.example.com", "payments");
        again.labels = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let again_first = version(&again, 1);
        let again_event = event("certificate.create", &target(&again));
        assert_conflict(
            store
                .create_certificate(
                    &again,
                    &again_first,
                    &again_event,
                    Some(&idempotency(
                        "alice/certificate.create",
                        "dup",
                        &again_first,
                    )),
                )
                .await,
            &["idempotency key", "dup"],
        );
        assert_eq!(store.get_certificate(again.id).await.unwrap(), None);
        assert!(store.list_versions(again.id).await.unwrap().is_empty());
        assert_eq!(store.list_certificates(&query()).await.unwrap().total, 1);
        assert!(
            audit_ids(
                store,
                AuditQuery {
                    target: Some(target(&again)),
                    ..AuditQuery::default()
                },
            )
            .await
            .is_empty()
        );
        // The first record is untouched.
        assert_eq!(
            store
                .get_idempotency("alice/certificate.create", "dup")
                .await
                .unwrap(),
            Some(record)
        );

        // The same for a renewal: no version, and the certificate unchanged.
        let scope = format!("alice/certificate.renew/{}", cert.id);
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        let v2 = version(&renewed, 2);
        store
            .add_version(
                &renewed,
                &v2,
                &event("certificate.renew", &target(&cert)),
                Some(&idempotency(&scope, "r", &v2)),
            )
            .await
            .unwrap();
        let mut third = renewed.clone();
        third.current_version = 3;
        third.updated_at = at(T0 + DAY);
        let v3 = version(&third, 3);
        assert_conflict(
            store
                .add_version(
                    &third,
                    &v3,
                    &event("certificate.renew", &target(&cert)),
                    Some(&idempotency(&scope, "r", &v3)),
                )
                .await,
            &["idempotency key"],
        );
        assert_eq!(store.list_versions(cert.id).await.unwrap().len(), 2);
        assert_eq!(store.get_certificate(cert.id).await.unwrap(), Some(renewed));
        assert_eq!(
            store
                .get_idempotency(&scope, "r")
                .await
                .unwrap()
                .map(|r| r.version),
            Some(2)
        );
    }

    /// Racing creations with one key (different ids, names and serials, as
    /// two replicas signing the same request would have): exactly one commits.
    pub async fn concurrent_requests_with_one_idempotency_key_commit_once(
        store: &dyn MetadataStore,
    ) {
        let issuer = seed_issuer(store).await;
        let attempt = |i: u32| {
            let cert = certificate(&issuer, &format!("n{i}.example.com"), "payments");
            async move {
                let first = version(&cert, 1);
                let record = idempotency("alice/certificate.create", "once", &first);
                let audit = event("certificate.create", &target(&cert));
                store
                    .create_certificate(&cert, &first, &audit, Some(&record))
                    .await
                    .map(|()| cert.id)
            }
        };
        warm_up(store).await;
        let (a, b, c, d) = tokio::join!(attempt(1), attempt(2), attempt(3), attempt(4));
        let results = [a, b, c, d];
        let winners: Vec<Uuid> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .copied()
            .collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for r in results.into_iter().filter(Result::is_err) {
            assert_conflict(r, &["idempotency key"]);
        }
        assert_eq!(store.list_certificates(&query()).await.unwrap().total, 1);
        let stored = store
            .get_idempotency("alice/certificate.create", "once")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.certificate_id, winners[0]);

        // And renewals of one certificate with one key, each to the next number.
        let cert = store.get_certificate(winners[0]).await.unwrap().unwrap();
        let scope = format!("alice/certificate.renew/{}", cert.id);
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        let attempt = || {
            let v2 = version(&renewed, 2);
            let record = idempotency(&scope, "once", &v2);
            let renewed = renewed.clone();
            let audit = event("certificate.renew", &target(&cert));
            async move {
                store
                    .add_version(&renewed, &v2, &audit, Some(&record))
                    .await
            }
        };
        let (a, b, c, d) = tokio::join!(attempt(), attempt(), attempt(), attempt());
        let results = [a, b, c, d];
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        for r in results.into_iter().filter(Result::is_err) {
            assert_conflict(r, &["idempotency key"]);
        }
        assert_eq!(store.list_versions(cert.id).await.unwrap().len(), 2);
    }

    /// `purge_idempotency_keys(before)` deletes exactly the records created before it.
    pub async fn idempotency_keys_are_purged_by_age(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "payments");
        let first = version(&cert, 1);
        let mut old = idempotency("alice/certificate.create", "old", &first);
        old.created_at = at(T0);
        store
            .create_certificate(
                &cert,
                &first,
                &event("certificate.create", &target(&cert)),
                Some(&old),
            )
            .await
            .unwrap();
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        let v2 = version(&renewed, 2);
        let mut young = idempotency("alice/certificate.renew", "young", &v2);
        young.created_at = at(T0 + DAY);
        store
            .add_version(
                &renewed,
                &v2,
                &event("certificate.renew", &target(&cert)),
                Some(&young),
            )
            .await
            .unwrap();

        assert_eq!(store.purge_idempotency_keys(at(T0)).await.unwrap(), 0);
        // Sub-second cut-offs compare as instants: T0 is before T0 + 0.5 s.
        let cut = at(T0) + Duration::milliseconds(500);
        assert_eq!(store.purge_idempotency_keys(cut).await.unwrap(), 1);
        assert_eq!(
            store
                .get_idempotency("alice/certificate.create", "old")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .get_idempotency("alice/certificate.renew", "young")
                .await
                .unwrap(),
            Some(young)
        );
        assert_eq!(
            store
                .purge_idempotency_keys(at(T0 + 2 * DAY))
                .await
                .unwrap(),
            1
        );
        // Purging touches nothing but the records.
        assert_eq!(store.list_versions(cert.id).await.unwrap().len(), 2);
    }

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

    pub async fn renewal_ledger_round_trips_and_inserts_once(store: &dyn Stores) {
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

    pub async fn concurrent_enqueues_insert_one_job(store: &dyn Stores) {
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

    pub async fn concurrent_receivers_never_share_a_job(store: &dyn Stores) {
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

    pub async fn expired_lease_is_redelivered_and_the_old_receipt_refused(store: &dyn Stores) {
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

    pub async fn heartbeat_extends_the_lease(store: &dyn Stores) {
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

    pub async fn retry_honours_run_at(store: &dyn Stores) {
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

    pub async fn dead_letter_after_max_attempts(store: &dyn Stores) {
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

    pub async fn queue_stats_count_states_and_oldest_age(store: &dyn Stores) {
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

    pub async fn release_hands_a_job_back_at_once(store: &dyn Stores) {
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

    pub async fn certificate_stats_group_status_team_expiry_and_unrenewed(store: &dyn Stores) {
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

    pub async fn receive_waits_for_a_job(store: &dyn Stores) {
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

    fn notification(
        kind: EventKind,
        team: &str,
        certificate_id: Option<Uuid>,
        at_secs: i64,
    ) -> Notification {
        Notification {
            id: Uuid::now_v7(),
            kind,
            team: team.into(),
            certificate_id,
            certificate_name: certificate_id.map(|_| "api.example.com".to_owned()),
            version: Some(3),
            not_after: Some(at(T0 + 30 * DAY)),
            days_left: Some(14),
            reason: Some("CA said: 'rateLimited' — retry later".into()),
            summary: format!("{} for {team}", kind.as_str()),
            details: json!({ "serials": ["0a", "0b"], "ünïcode": true }),
            at: at(at_secs),
        }
    }

    fn deliveries(team: Option<&str>) -> DeliveryQuery {
        DeliveryQuery {
            team: team.map(str::to_owned),
            limit: 100,
            ..DeliveryQuery::default()
        }
    }

    pub async fn subscriptions_round_trip_and_delete_with_audit(store: &dyn Stores) {
        let hook = subscription(
            "payments",
            &[EventKind::Renewed, EventKind::Expiring],
            webhook("https://hooks.example.com/x", Some("s3cret")),
        );
        let sns = subscription(
            "payments",
            &[EventKind::DeadLettered],
            Channel::Sns {
                topic_arn: "arn:aws:sns:eu-west-1:123456789012:certs".into(),
            },
        );
        let mail = subscription(
            "web",
            &EventKind::ALL,
            Channel::Email {
                to: vec!["ops@example.com".into(), "sec@example.com".into()],
            },
        );
        for sub in [&hook, &sns, &mail] {
            store
                .insert_subscription(
                    sub,
                    &event("subscription.create", &format!("subscription/{}", sub.id)),
                )
                .await
                .unwrap();
        }
        assert_conflict(
            store
                .insert_subscription(&hook, &event("subscription.create", "x"))
                .await,
            &["already exists"],
        );
        assert_eq!(
            store.get_subscription(hook.id).await.unwrap(),
            Some(hook.clone())
        );
        assert_eq!(store.get_subscription(Uuid::new_v4()).await.unwrap(), None);
        assert_eq!(
            store.list_subscriptions(Some("payments")).await.unwrap(),
            vec![hook.clone(), sns.clone()]
        );
        assert_eq!(
            store.list_subscriptions(None).await.unwrap(),
            vec![hook.clone(), sns.clone(), mail.clone()]
        );
        assert_eq!(
            store.list_subscriptions(Some("nobody")).await.unwrap(),
            vec![]
        );

        let audit = event("subscription.delete", &format!("subscription/{}", sns.id));
        store.delete_subscription(sns.id, &audit).await.unwrap();
        assert_eq!(store.get_subscription(sns.id).await.unwrap(), None);
        assert_not_found(
            store
                .delete_subscription(sns.id, &event("subscription.delete", "x"))
                .await,
        );
        let trail = audit_ids(
            store,
            AuditQuery {
                action_prefix: Some("subscription.".into()),
                ..AuditQuery::default()
            },
        )
        .await;
        assert_eq!(trail.len(), 4);
        assert_eq!(trail[0], audit.id);
        // A failing audit event (a duplicate id) commits nothing.
        assert!(store.delete_subscription(hook.id, &audit).await.is_err());
        assert!(store.get_subscription(hook.id).await.unwrap().is_some());
        let late = subscription("payments", &[EventKind::Issued], webhook("https://x", None));
        assert!(store.insert_subscription(&late, &audit).await.is_err());
        assert_eq!(store.get_subscription(late.id).await.unwrap(), None);
    }

    pub async fn publish_creates_one_delivery_per_matching_subscription(store: &dyn Stores) {
        let renewals = subscription(
            "payments",
            &[EventKind::Renewed, EventKind::Expiring],
            webhook("https://hooks.example.com/a", Some("s3cret")),
        );
        let issued = subscription(
            "payments",
            &[EventKind::Issued],
            Channel::Sns {
                topic_arn: "arn:aws:sns:eu-west-1:1:t".into(),
            },
        );
        let other_team = subscription(
            "web",
            &[EventKind::Renewed],
            Channel::Email {
                to: vec!["web@example.com".into()],
            },
        );
        for sub in [&renewals, &issued, &other_team] {
            store
                .insert_subscription(sub, &event("subscription.create", "s"))
                .await
                .unwrap();
        }
        let cert = Uuid::new_v4();
        let renewed = notification(EventKind::Renewed, "payments", Some(cert), T0 + 5);
        assert!(store.publish(&renewed, None).await.unwrap());
        let page = store.list_deliveries(&deliveries(None)).await.unwrap();
        assert_eq!(page.total, 1);
        let d = &page.items[0];
        assert_eq!(d.notification, renewed);
        assert_eq!(d.subscription_id, renewals.id);
        assert_eq!(d.channel, renewals.channel);
        assert_eq!((d.state, d.attempts), (DeliveryState::Pending, 0));
        assert_eq!((d.next_attempt_at, d.created_at), (at(T0 + 5), at(T0 + 5)));
        assert_eq!((d.last_error.as_deref(), d.delivered_at), (None, None));

        // Nobody subscribed to revocations of payments: recorded, not delivered.
        assert!(
            store
                .publish(
                    &notification(EventKind::Revoked, "payments", Some(cert), T0 + 6),
                    None
                )
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .list_deliveries(&deliveries(None))
                .await
                .unwrap()
                .total,
            1
        );
        assert!(
            store
                .publish(
                    &notification(EventKind::Issued, "payments", None, T0 + 7),
                    None
                )
                .await
                .unwrap()
        );
        let page = store
            .list_deliveries(&deliveries(Some("payments")))
            .await
            .unwrap();
        assert_eq!(
            page.items
                .iter()
                .map(|d| d.subscription_id)
                .collect::<Vec<_>>(),
            vec![issued.id, renewals.id]
        );
        assert_eq!(
            store
                .list_deliveries(&deliveries(Some("web")))
                .await
                .unwrap()
                .total,
            0
        );

        // The channel is a snapshot: deleting the subscription keeps the delivery.
        store
            .delete_subscription(renewals.id, &event("subscription.delete", "s"))
            .await
            .unwrap();
        let kept = store
            .list_deliveries(&DeliveryQuery {
                certificate_id: Some(cert),
                ..deliveries(None)
            })
            .await
            .unwrap();
        assert_eq!(kept.total, 1);
        assert_eq!(kept.items[0].channel, renewals.channel);

        // Deduplicated: the second publish with the key records nothing.
        let warning = notification(EventKind::Renewed, "web", Some(cert), T0 + 8);
        let key = format!("expiring:{cert}:v3:14");
        assert!(store.publish(&warning, Some(&key)).await.unwrap());
        let again = notification(EventKind::Renewed, "web", Some(cert), T0 + 9);
        assert!(!store.publish(&again, Some(&key)).await.unwrap());
        assert_eq!(
            store
                .list_deliveries(&deliveries(Some("web")))
                .await
                .unwrap()
                .total,
            1
        );
        // Racing publishers of one key: exactly one wins.
        let racers: Vec<Notification> = (0..6)
            .map(|i| notification(EventKind::Renewed, "web", Some(cert), T0 + 10 + i))
            .collect();
        let won = futures_join_all(racers.iter().map(|n| store.publish(n, Some("race")))).await;
        assert_eq!(won.into_iter().filter(|r| *r.as_ref().unwrap()).count(), 1);
        assert_eq!(
            store
                .list_deliveries(&deliveries(Some("web")))
                .await
                .unwrap()
                .total,
            2
        );
    }

    pub async fn claimed_deliveries_are_leased(store: &dyn Stores) {
        let sub = subscription(
            "payments",
            &[EventKind::Renewed],
            webhook("https://h.example.com", None),
        );
        store
            .insert_subscription(&sub, &event("subscription.create", "s"))
            .await
            .unwrap();
        for i in 0..3 {
            store
                .publish(
                    &notification(EventKind::Renewed, "payments", None, T0 + i),
                    None,
                )
                .await
                .unwrap();
        }
        // Not due yet.
        assert!(
            store
                .claim_deliveries(at(T0 - 1), at(T0 + 60), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let first = store
            .claim_deliveries(at(T0 + 1), at(T0 + 60), 10)
            .await
            .unwrap();
        assert_eq!(
            first.iter().map(|d| d.notification.at).collect::<Vec<_>>(),
            vec![at(T0), at(T0 + 1)]
        );
        // Within the lease another dispatcher gets only what is left.
        let second = store
            .claim_deliveries(at(T0 + 30), at(T0 + 90), 10)
            .await
            .unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].notification.at, at(T0 + 2));
        assert!(
            store
                .claim_deliveries(at(T0 + 59), at(T0 + 120), 10)
                .await
                .unwrap()
                .is_empty()
        );
        // A dispatcher that died: the lease runs out and the deliveries come back.
        let third = store
            .claim_deliveries(at(T0 + 60), at(T0 + 120), 1)
            .await
            .unwrap();
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].id, first[0].id);
    }

    pub async fn record_attempt_tracks_success_retry_and_give_up(store: &dyn Stores) {
        let sub = subscription(
            "payments",
            &[EventKind::Renewed, EventKind::DeadLettered],
            webhook("https://h.example.com", Some("k")),
        );
        store
            .insert_subscription(&sub, &event("subscription.create", "s"))
            .await
            .unwrap();
        let cert = Uuid::new_v4();
        store
            .publish(
                &notification(EventKind::Renewed, "payments", Some(cert), T0),
                None,
            )
            .await
            .unwrap();
        store
            .publish(
                &notification(EventKind::DeadLettered, "payments", None, T0 + 1),
                None,
            )
            .await
            .unwrap();
        let claimed = store
            .claim_deliveries(at(T0 + 1), at(T0 + 60), 10)
            .await
            .unwrap();
        let (ok, doomed) = (claimed[0].id, claimed[1].id);

        // A failure with a retry time: pending again, not before that time.
        store
            .record_attempt(
                ok,
                at(T0 + 2),
                Some("HTTP 503 from h.example.com"),
                Some(at(T0 + 300)),
            )
            .await
            .unwrap();
        let page = store
            .list_deliveries(&DeliveryQuery {
                certificate_id: Some(cert),
                ..deliveries(None)
            })
            .await
            .unwrap();
        let d = &page.items[0];
        assert_eq!(
            (d.state, d.attempts, d.next_attempt_at),
            (DeliveryState::Pending, 1, at(T0 + 300))
        );
        assert_eq!(d.last_error.as_deref(), Some("HTTP 503 from h.example.com"));
        // Failures without a retry time give up.
        store
            .record_attempt(doomed, at(T0 + 3), Some("timeout"), Some(at(T0 + 4)))
            .await
            .unwrap();
        store
            .record_attempt(doomed, at(T0 + 5), Some("timeout again"), None)
            .await
            .unwrap();
        // The lease is released, but the retry time holds it back.
        assert!(
            store
                .claim_deliveries(at(T0 + 299), at(T0 + 400), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let retried = store
            .claim_deliveries(at(T0 + 300), at(T0 + 400), 10)
            .await
            .unwrap();
        assert_eq!(retried.iter().map(|d| d.id).collect::<Vec<_>>(), vec![ok]);
        store
            .record_attempt(ok, at(T0 + 301), None, None)
            .await
            .unwrap();

        let delivered = store
            .list_deliveries(&DeliveryQuery {
                state: Some(DeliveryState::Delivered),
                ..deliveries(None)
            })
            .await
            .unwrap();
        assert_eq!(delivered.total, 1);
        let d = &delivered.items[0];
        assert_eq!(
            (d.id, d.attempts, d.delivered_at),
            (ok, 2, Some(at(T0 + 301)))
        );
        let failed = store
            .list_deliveries(&DeliveryQuery {
                state: Some(DeliveryState::Failed),
                ..deliveries(None)
            })
            .await
            .unwrap();
        assert_eq!(
            failed
                .items
                .iter()
                .map(|d| (d.id, d.attempts))
                .collect::<Vec<_>>(),
            vec![(doomed, 2)]
        );
        assert_eq!(failed.items[0].last_error.as_deref(), Some("timeout again"));
        assert_eq!(
            store
                .list_deliveries(&DeliveryQuery {
                    state: Some(DeliveryState::Pending),
                    ..deliveries(None)
                })
                .await
                .unwrap()
                .total,
            0
        );
        // Finished deliveries are never claimed again.
        assert!(
            store
                .claim_deliveries(at(T0 + 10_000), at(T0 + 10_060), 10)
                .await
                .unwrap()
                .is_empty()
        );

        let attempts = store.list_attempts(ok).await.unwrap();
        assert_eq!(
            attempts
                .iter()
                .map(|a| (a.delivery_id, a.attempt, a.at, a.error.clone()))
                .collect::<Vec<_>>(),
            vec![
                (
                    ok,
                    1,
                    at(T0 + 2),
                    Some("HTTP 503 from h.example.com".to_owned())
                ),
                (ok, 2, at(T0 + 301), None),
            ]
        );
        assert_eq!(store.list_attempts(doomed).await.unwrap().len(), 2);
        assert_eq!(store.list_attempts(Uuid::new_v4()).await.unwrap(), vec![]);
        assert_conflict(
            store.record_attempt(ok, at(T0 + 400), None, None).await,
            &["already delivered"],
        );
        assert_not_found(
            store
                .record_attempt(Uuid::new_v4(), at(T0), None, None)
                .await,
        );

        // Filters combine; pages count everything that matches.
        let q = DeliveryQuery {
            team: Some("payments".into()),
            state: Some(DeliveryState::Failed),
            ..deliveries(None)
        };
        assert_eq!(store.list_deliveries(&q).await.unwrap().total, 1);
        let q = DeliveryQuery {
            team: Some("web".into()),
            state: Some(DeliveryState::Failed),
            ..deliveries(None)
        };
        assert_eq!(store.list_deliveries(&q).await.unwrap().total, 0);
        let q = DeliveryQuery {
            limit: 1,
            offset: 1,
            ..deliveries(None)
        };
        let page = store.list_deliveries(&q).await.unwrap();
        assert_eq!((page.total, page.items.len(), page.items[0].id), (2, 1, ok));
    }

    /// Verifies the chain and checks it covers every audit row, numbered 1..=n.
    async fn assert_chain_intact(store: &dyn MetadataStore) -> AuditChainReport {
        let report = store.verify_audit_chain().await.unwrap();
        assert_eq!(report.first_break, None, "{report:?}");
        let total = store
            .list_audit(&AuditQuery {
                limit: 1,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .total;
        assert_eq!((report.checked, report.last_seq), (total, total));
        assert_eq!(report.last_hash.len(), 64);
        report
    }

    pub async fn audit_chain_of_an_empty_store_verifies(store: &dyn MetadataStore) {
        assert_eq!(
            store.verify_audit_chain().await.unwrap(),
            AuditChainReport {
                checked: 0,
                last_seq: 0,
                last_hash: "0".repeat(64),
                first_break: None,
            }
        );
    }

    /// Every kind of audited write, refused writes that roll back, and more
    /// events than one verification page (1000) holds.
    pub async fn audit_chain_verifies_after_mixed_writes(store: &dyn Stores) {
        let main = seed_issuer(store).await;
        let other = issuer("other", false);
        store
            .insert_issuer(&other, &event("issuer.create", "issuer/other"))
            .await
            .unwrap();
        store
            .set_default_issuer(other.id, &event("issuer.default", "issuer/other"))
            .await
            .unwrap();
        for i in 0..30_u32 {
            let cert = certificate(&main, &format!("host{i}.example.com"), "payments");
            create(store, &cert).await;
            if i % 2 == 0 {
                let mut renewed = cert.clone();
                renewed.current_version = 2;
                store
                    .add_version(
                        &renewed,
                        &version(&renewed, 2),
                        &event("certificate.renew", &target(&cert)),
                        None,
                    )
                    .await
                    .unwrap();
            }
            if i % 3 == 0 {
                store
                    .revoke_version(
                        cert.id,
                        1,
                        RevocationReason::KeyCompromise,
                        at(T0 + DAY),
                        &event("certificate.revoke", &target(&cert)),
                    )
                    .await
                    .unwrap();
            }
            if i % 5 == 0 {
                store
                    .archive_certificate(
                        cert.id,
                        at(T0 + 2 * DAY),
                        &event("certificate.archive", &target(&cert)),
                    )
                    .await
                    .unwrap();
            }
            let mut failed = event("certificate.key.download", &target(&cert));
            failed.outcome = Outcome::Failure;
            failed.actor.source = None;
            failed.details = json!({ "reason": "forbidden", "i": i, "text": "ünïcødé \u{0}" });
            store.append_audit(&failed).await.unwrap();
            // Refused writes commit neither their change nor their event.
            assert!(store.append_audit(&failed).await.is_err());
            let duplicate = certificate(&main, &format!("host{i}.example.com"), "payments");
            if i % 5 != 0 {
                assert!(
                    store
                        .create_certificate(
                            &duplicate,
                            &version(&duplicate, 1),
                            &event("certificate.create", &target(&duplicate)),
                            None,
                        )
                        .await
                        .is_err()
                );
            }
        }
        let hook = subscription(
            "payments",
            &[EventKind::Renewed],
            webhook("https://hooks.example.com/x", None),
        );
        store
            .insert_subscription(&hook, &event("subscription.create", "subscription/x"))
            .await
            .unwrap();
        store
            .delete_subscription(hook.id, &event("subscription.delete", "subscription/x"))
            .await
            .unwrap();
        for i in 0..1100 {
            store
                .append_audit(&event("certificate.download", &format!("certificate/{i}")))
                .await
                .unwrap();
        }
        let report = assert_chain_intact(store).await;
        assert!(report.checked > 1100, "{report:?}");
        // A second walk finds the same chain.
        assert_eq!(store.verify_audit_chain().await.unwrap(), report);
    }

    /// Writers on every connection of the pool at once still form one
    /// gapless chain (on PostgreSQL they queue on the chain head's row lock).
    pub async fn concurrent_audited_writes_form_one_chain(store: &dyn MetadataStore) {
        const WRITERS: usize = 16;
        const EACH: usize = 25;
        let main = seed_issuer(store).await;
        warm_up(store).await;
        let writer = |w: usize| {
            let main = main.clone();
            async move {
                for i in 0..EACH {
                    if i % 5 == 0 {
                        let cert = certificate(&main, &format!("w{w}-{i}.example.com"), "t");
                        create(store, &cert).await;
                    } else {
                        store
                            .append_audit(&event("certificate.download", &format!("w{w}/{i}")))
                            .await
                            .unwrap();
                    }
                }
            }
        };
        futures::future::join_all((0..WRITERS).map(writer)).await;
        let report = assert_chain_intact(store).await;
        assert_eq!(report.checked, 1 + (WRITERS * EACH) as u64);
    }

    pub async fn audit_filters_by_outcome_and_time(store: &dyn MetadataStore) {
        let events: Vec<AuditEvent> = (1..=5)
            .map(|i| {
                let mut e = event_at(T0 + i, "certificate.renew", "certificate/1", "alice");
                if i % 2 == 0 {
                    e.outcome = Outcome::Failure;
                }
                e
            })
            .collect();
        for e in &events {
            store.append_audit(e).await.unwrap();
        }
        let ids =
            |idx: &[usize]| -> Vec<Uuid> { idx.iter().rev().map(|&i| events[i].id).collect() };
        let half = Duration::milliseconds(500);
        let q = |outcome, since, until| AuditQuery {
            outcome,
            since,
            until,
            ..AuditQuery::default()
        };
        assert_eq!(
            audit_ids(store, q(None, None, None)).await,
            ids(&[0, 1, 2, 3, 4])
        );
        assert_eq!(
            audit_ids(store, q(Some(Outcome::Failure), None, None)).await,
            ids(&[1, 3])
        );
        assert_eq!(
            audit_ids(store, q(Some(Outcome::Success), None, None)).await,
            ids(&[0, 2, 4])
        );
        // `since` is inclusive, `until` exclusive, both exact to the instant.
        assert_eq!(
            audit_ids(store, q(None, Some(at(T0 + 2)), None)).await,
            ids(&[1, 2, 3, 4])
        );
        assert_eq!(
            audit_ids(store, q(None, Some(at(T0 + 2) + half), None)).await,
            ids(&[2, 3, 4])
        );
        assert_eq!(
            audit_ids(store, q(None, None, Some(at(T0 + 4)))).await,
            ids(&[0, 1, 2])
        );
        assert_eq!(
            audit_ids(store, q(None, None, Some(at(T0 + 4) + half))).await,
            ids(&[0, 1, 2, 3])
        );
        assert_eq!(
            audit_ids(
                store,
                q(Some(Outcome::Success), Some(at(T0 + 2)), Some(at(T0 + 5)))
            )
            .await,
            ids(&[2])
        );
        let page = store
            .list_audit(&AuditQuery {
                limit: 1,
                ..q(Some(Outcome::Failure), Some(at(T0)), None)
            })
            .await
            .unwrap();
        assert_eq!((page.total, page.items.len()), (2, 1));
        assert_eq!(page.items[0], events[3]);
    }

    fn report(
        agent: Uuid,
        cert: Uuid,
        version: u32,
        status: certflow_core::deployments::DeploymentStatus,
        secs: i64,
    ) -> certflow_core::deployments::Deployment {
        certflow_core::deployments::Deployment {
            agent_id: agent,
            certificate_id: cert,
            version,
            fingerprint_sha256: format!("{:064x}", u128::from(version)),
            status,
            attempted_version: (status != certflow_core::deployments::DeploymentStatus::Installed)
                .then_some(version + 1),
            error: (status != certflow_core::deployments::DeploymentStatus::Installed)
                .then(|| "reload failed".to_owned()),
            reported_at: at(secs),
            agent_version: Some("0.1.0".into()),
        }
    }

    pub async fn deployments_assign_follow_versions_record_reports_and_unassign<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DeploymentStore,
    {
        use certflow_core::deployments::{Assignment, DeploymentStatus};
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "www.example.com", "web");
        let v1 = create(store, &cert).await;
        let agent = seed_agent(store, "web-1", "web").await;
        let other = seed_agent(store, "web-2", "web").await;
        let assignment = Assignment {
            agent_id: agent.id,
            certificate_id: cert.id,
            created_by: "alice".into(),
            created_at: at(T0 + 10),
        };
        assert!(
            store
                .assign(&assignment, &event("deployment.assign", "x"))
                .await
                .unwrap()
        );
        // A repeat changes nothing and records nothing.
        assert!(
            !store
                .assign(&assignment, &event("deployment.assign", "x"))
                .await
                .unwrap()
        );
        assert_eq!(actions(store, "deployment.assign").await.len(), 1);
        // Unknown agent or certificate: NotFound, nothing stored.
        let mut unknown = assignment.clone();
        unknown.certificate_id = Uuid::now_v7();
        assert!(matches!(
            store
                .assign(&unknown, &event("deployment.assign", "x"))
                .await,
            Err(DomainError::NotFound(_))
        ));
        unknown.certificate_id = cert.id;
        unknown.agent_id = Uuid::now_v7();
        assert!(matches!(
            store
                .assign(&unknown, &event("deployment.assign", "x"))
                .await,
            Err(DomainError::NotFound(_))
        ));

        let listed = store.assigned_certificates(agent.id).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].certificate_id,
                listed[0].version,
                listed[0].serial.as_str()
            ),
            (cert.id, 1, v1.serial.as_str())
        );
        assert_eq!(listed[0].names, cert.names);
        assert_eq!(listed[0].assigned_at, at(T0 + 10));
        assert!(
            store
                .assigned_certificates(other.id)
                .await
                .unwrap()
                .is_empty()
        );

        // A renewal shows in the listing at once (it joins the current version).
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        let v2 = version(&renewed, 2);
        store
            .add_version(
                &renewed,
                &v2,
                &event("certificate.renew", &target(&cert)),
                None,
            )
            .await
            .unwrap();
        let listed = store.assigned_certificates(agent.id).await.unwrap();
        assert_eq!(
            (listed[0].version, listed[0].serial.clone()),
            (2, v2.serial.clone())
        );
        assert_eq!(listed[0].issued_at, v2.created_at);

        // Reports: only for assigned certificates; the last one wins.
        assert!(matches!(
            store
                .record_deployments(
                    &[report(
                        other.id,
                        cert.id,
                        1,
                        DeploymentStatus::Installed,
                        T0
                    )],
                    &event("deployment.report", "x"),
                )
                .await,
            Err(DomainError::NotFound(_))
        ));
        let states = store.certificate_deployments(cert.id).await.unwrap();
        assert_eq!(states.len(), 1);
        assert!(states[0].last_report.is_none());
        assert_eq!(states[0].agent_name, "web-1");
        let failed = report(agent.id, cert.id, 1, DeploymentStatus::Failed, T0 + 20);
        store
            .record_deployments(
                std::slice::from_ref(&failed),
                &event("deployment.report", "x"),
            )
            .await
            .unwrap();
        let states = store.agent_deployments(agent.id).await.unwrap();
        assert_eq!(states[0].last_report.as_ref(), Some(&failed));
        assert!(!states[0].current_installed());
        let installed = report(agent.id, cert.id, 2, DeploymentStatus::Installed, T0 + 30);
        store
            .record_deployments(
                std::slice::from_ref(&installed),
                &event("deployment.report", "x"),
            )
            .await
            .unwrap();
        let states = store.certificate_deployments(cert.id).await.unwrap();
        assert_eq!(states[0].last_report.as_ref(), Some(&installed));
        assert!(states[0].current_installed());
        assert_eq!(actions(store, "deployment.report").await.len(), 2);

        // Unassigning removes the reports; a second time is NotFound.
        store
            .unassign(agent.id, cert.id, &event("deployment.unassign", "x"))
            .await
            .unwrap();
        assert!(
            store
                .assigned_certificates(agent.id)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .certificate_deployments(cert.id)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            store
                .unassign(agent.id, cert.id, &event("deployment.unassign", "x"))
                .await,
            Err(DomainError::NotFound(_))
        ));
        assert_eq!(actions(store, "deployment.unassign").await.len(), 1);
        // Assigned again, the old reports do not come back.
        assert!(
            store
                .assign(&assignment, &event("deployment.assign", "x"))
                .await
                .unwrap()
        );
        assert!(
            store.agent_deployments(agent.id).await.unwrap()[0]
                .last_report
                .is_none()
        );
    }

    pub async fn fleet_stats_count_agents_and_deployments<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DeploymentStore,
    {
        use certflow_core::agents::AgentStatus;
        use certflow_core::deployments::{Assignment, DeploymentStatus};
        use certflow_core::model::FleetStats;
        assert_eq!(
            store.fleet_stats(at(T0), at(T0)).await.unwrap(),
            FleetStats::default()
        );
        let issuer = seed_issuer(store).await;
        let www = certificate(&issuer, "www.example.com", "web");
        let api = certificate(&issuer, "api.example.com", "web");
        create(store, &www).await; // version 1 issued at T0 + DAY
        create(store, &api).await;
        let quiet = seed_agent(store, "quiet", "web").await;
        let busy = seed_agent(store, "busy", "web").await;
        let off = seed_agent(store, "off", "web").await;
        let gone = seed_agent(store, "gone", "web").await;
        store.touch_agent(busy.id, at(T0 + 7200)).await.unwrap();
        let pairs = [
            (&quiet, &www, None),
            (&busy, &www, Some(DeploymentStatus::Installed)),
            (&busy, &api, Some(DeploymentStatus::Failed)),
            (&quiet, &api, Some(DeploymentStatus::Broken)),
            // A disabled agent's report is nobody's incident.
            (&off, &www, Some(DeploymentStatus::Failed)),
        ];
        for (agent, cert, status) in pairs {
            store
                .assign(
                    &Assignment {
                        agent_id: agent.id,
                        certificate_id: cert.id,
                        created_by: "alice".into(),
                        created_at: at(T0),
                    },
                    &event("deployment.assign", "x"),
                )
                .await
                .unwrap();
            if let Some(status) = status {
                store
                    .record_deployments(
                        &[report(agent.id, cert.id, 1, status, T0 + DAY)],
                        &event("deployment.report", "x"),
                    )
                    .await
                    .unwrap();
            }
        }
        for (agent, status) in [(&off, AgentStatus::Disabled), (&gone, AgentStatus::Revoked)] {
            store
                .set_agent_status(agent.id, status, &event("agent.status", "x"))
                .await
                .unwrap();
        }
        let stats = store
            .fleet_stats(at(T0 + 3600), at(T0 + DAY))
            .await
            .unwrap();
        assert_eq!(
            stats,
            FleetStats {
                agents_active: 2,
                agents_disabled: 1,
                agents_revoked: 1,
                // "quiet" was never seen after its enrolment at T0.
                agents_not_seen: 1,
                deployments_installed: 1,
                deployments_failed: 1,
                deployments_broken: 1,
                deployments_pending: 1,
                // Every active pair but the installed one, once late.
                deployments_drift: 3,
            }
        );
        // Not late yet: issued after the drift instant.
        let early = store
            .fleet_stats(at(T0 + 3600), at(T0 + DAY - 1))
            .await
            .unwrap();
        assert_eq!(early.deployments_drift, 0);
        // Seen within the window: nobody is missing.
        assert_eq!(
            store
                .fleet_stats(at(T0), at(T0 + DAY))
                .await
                .unwrap()
                .agents_not_seen,
            0
        );
        // An archived certificate leaves the counts.
        store
            .archive_certificate(api.id, at(T0), &event("certificate.archive", "x"))
            .await
            .unwrap();
        let after = store
            .fleet_stats(at(T0 + 3600), at(T0 + DAY))
            .await
            .unwrap();
        assert_eq!(
            (
                after.deployments_failed,
                after.deployments_broken,
                after.deployments_drift
            ),
            (0, 0, 1)
        );
    }

    pub async fn drift_candidates_are_late_uninstalled_and_not_yet_announced<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DeploymentStore,
    {
        use certflow_core::deployments::{Assignment, DeploymentStatus};
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "web");
        create(store, &cert).await; // version 1 issued at T0 + DAY
        let late = seed_agent(store, "late", "web").await;
        let done = seed_agent(store, "done", "web").await;
        let off = seed_agent(store, "off", "web").await;
        for a in [&late, &done, &off] {
            store
                .assign(
                    &Assignment {
                        agent_id: a.id,
                        certificate_id: cert.id,
                        created_by: "alice".into(),
                        created_at: at(T0),
                    },
                    &event("deployment.assign", "x"),
                )
                .await
                .unwrap();
        }
        store
            .record_deployments(
                &[report(
                    done.id,
                    cert.id,
                    1,
                    DeploymentStatus::Installed,
                    T0 + DAY,
                )],
                &event("deployment.report", "x"),
            )
            .await
            .unwrap();
        store
            .set_agent_status(
                off.id,
                certflow_core::agents::AgentStatus::Disabled,
                &event("agent.disable", "x"),
            )
            .await
            .unwrap();
        let names = |v: Vec<certflow_core::deployments::DeploymentState>| {
            v.into_iter().map(|s| s.agent_name).collect::<Vec<_>>()
        };
        // Not late yet.
        assert!(
            store
                .drift_candidates(at(T0 + DAY - 1), 100)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            names(store.drift_candidates(at(T0 + DAY), 100).await.unwrap()),
            ["late"]
        );
        store
            .mark_drift_notified(late.id, cert.id, 1)
            .await
            .unwrap();
        assert!(
            store
                .drift_candidates(at(T0 + 9 * DAY), 100)
                .await
                .unwrap()
                .is_empty()
        );
        // A new version is late for everyone, "done" included, once each.
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        store
            .add_version(
                &renewed,
                &version(&renewed, 2),
                &event("certificate.renew", "x"),
                None,
            )
            .await
            .unwrap();
        let late_v2 = store.drift_candidates(at(T0 + 9 * DAY), 100).await.unwrap();
        // Ties on the issue time go by agent id (UUIDv7: enrolment order).
        assert_eq!(names(late_v2.clone()), ["late", "done"]);
        assert!(late_v2.iter().all(|s| s.assigned.version == 2));
        assert_eq!(
            store
                .drift_candidates(at(T0 + 9 * DAY), 1)
                .await
                .unwrap()
                .len(),
            1
        );
        // Marking an older version does not undo a newer mark.
        store
            .mark_drift_notified(done.id, cert.id, 2)
            .await
            .unwrap();
        store
            .mark_drift_notified(done.id, cert.id, 1)
            .await
            .unwrap();
        assert_eq!(
            names(store.drift_candidates(at(T0 + 9 * DAY), 100).await.unwrap()),
            ["late"]
        );
        // An archived certificate is not late anywhere.
        store
            .archive_certificate(
                cert.id,
                at(T0 + 9 * DAY),
                &event("certificate.archive", "x"),
            )
            .await
            .unwrap();
        assert!(
            store
                .drift_candidates(at(T0 + 9 * DAY), 100)
                .await
                .unwrap()
                .is_empty()
        );
    }

    fn found(
        source: &str,
        fingerprint: &str,
        der: Option<&[u8]>,
    ) -> certflow_core::discovery::DiscoveredItem {
        certflow_core::discovery::DiscoveredItem {
            source: source.into(),
            fingerprint_sha256: fingerprint.into(),
            serial: "0a".into(),
            subject: "CN=legacy.example.com".into(),
            issuer: "CN=Some Other CA".into(),
            names: vec!["legacy.example.com".into(), "192.0.2.1".into()],
            not_after: at(T0 + 30 * DAY),
            certificate_der: der.map(<[u8]>::to_vec),
        }
    }

    async fn discovered_sources<S>(store: &S, agent: Uuid) -> Vec<String>
    where
        S: certflow_core::ports::DiscoveryStore,
    {
        use certflow_core::discovery::{DiscoveryQuery, DiscoveryStatus};
        store
            .list_discovered(&DiscoveryQuery {
                status: DiscoveryStatus::All,
                agent_id: Some(agent),
                ..DiscoveryQuery::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.item.source)
            .collect()
    }

    /// A report replaces the agent's view: a source seen before keeps its id
    /// and first sighting, a source no longer reported goes, the audit event
    /// carries the counts; a failed audit append writes nothing.
    pub async fn discovery_replace_keeps_ids_counts_and_removes_unreported<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DiscoveryStore,
    {
        use certflow_core::discovery::DiscoverySync;
        let agent = seed_agent(store, "web-1", "web").await;
        let other = seed_agent(store, "db-1", "db").await;
        let fp = |n: u128| format!("{n:064x}");
        let sync = store
            .replace_discovered(
                agent.id,
                &[
                    found("file:/etc/ssl/a.pem", &fp(0xa1), Some(b"der-a")),
                    found("tls:127.0.0.1:443", &fp(0xa2), None),
                ],
                &[],
                at(T0),
                &event("agent.discovery", "agent/web-1"),
            )
            .await
            .unwrap();
        assert_eq!(
            sync,
            DiscoverySync {
                items: 2,
                new: 2,
                removed: 0,
                kept: 0
            }
        );
        store
            .replace_discovered(
                other.id,
                &[found("file:/etc/ssl/a.pem", &fp(0xb1), None)],
                &[],
                at(T0),
                &event("agent.discovery", "agent/db-1"),
            )
            .await
            .unwrap();
        let before = store
            .list_discovered(&certflow_core::discovery::DiscoveryQuery {
                status: certflow_core::discovery::DiscoveryStatus::All,
                agent_id: Some(agent.id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(before.len(), 2);
        let tls = before
            .iter()
            .find(|d| d.item.source == "tls:127.0.0.1:443")
            .unwrap()
            .clone();
        let file = before
            .iter()
            .find(|d| d.item.source == "file:/etc/ssl/a.pem")
            .unwrap();
        assert_eq!(
            file.item,
            found("file:/etc/ssl/a.pem", &fp(0xa1), Some(b"der-a"))
        );
        assert_eq!((file.first_seen, file.last_seen), (at(T0), at(T0)));
        assert_eq!(file.agent_name, "web-1");
        assert_eq!(file.agent_teams, ["web"]);
        assert_eq!((file.managed, file.taken_over_certificate_id), (None, None));

        // The file went away, the endpoint now serves another certificate,
        // and a new file appeared.
        let mut changed = found("tls:127.0.0.1:443", &fp(0xa3), Some(b"der-c"));
        changed.serial = "0c".into();
        let audit = event("agent.discovery", "agent/web-1");
        let sync = store
            .replace_discovered(
                agent.id,
                &[changed.clone(), found("file:/srv/b.crt", &fp(0xa4), None)],
                &[],
                at(T0 + 10),
                &audit,
            )
            .await
            .unwrap();
        assert_eq!(
            sync,
            DiscoverySync {
                items: 2,
                new: 1,
                removed: 1,
                kept: 0
            }
        );
        assert_eq!(
            discovered_sources(store, agent.id).await,
            ["file:/srv/b.crt", "tls:127.0.0.1:443"]
        );
        let again = store.get_discovered(tls.id).await.unwrap().unwrap();
        assert_eq!(again.item, changed);
        assert_eq!((again.first_seen, again.last_seen), (at(T0), at(T0 + 10)));
        // The other agent's row with the same source is its own.
        assert_eq!(
            discovered_sources(store, other.id).await,
            ["file:/etc/ssl/a.pem"]
        );

        let events = store
            .list_audit(&AuditQuery {
                action_prefix: Some("agent.discovery".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .items;
        assert_eq!(events.len(), 3);
        let last = events.iter().find(|e| e.id == audit.id).unwrap();
        assert_eq!(
            last.details,
            json!({ "why": "test", "items": 2, "new": 1, "removed": 1, "kept": 0 })
        );

        // The same audit event again fails to append: nothing of the
        // report is kept (the empty report would have removed both rows).
        assert!(matches!(
            store
                .replace_discovered(agent.id, &[], &[], at(T0 + 20), &audit)
                .await,
            Err(DomainError::Conflict(_))
        ));
        assert_eq!(discovered_sources(store, agent.id).await.len(), 2);
        // Sources unreadable this time stay as they were: the endpoint
        // itself, and files under an unreadable directory.
        let sync = store
            .replace_discovered(
                agent.id,
                &[],
                &["tls:127.0.0.1:443".to_owned(), "file:/srv".to_owned()],
                at(T0 + 15),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        assert_eq!((sync.removed, sync.kept), (0, 2));
        let kept = store.get_discovered(tls.id).await.unwrap().unwrap();
        assert_eq!((kept.item, kept.last_seen), (changed.clone(), at(T0 + 10)));
        assert_eq!(discovered_sources(store, agent.id).await.len(), 2);
        // An empty report clears the agent's view.
        let sync = store
            .replace_discovered(
                agent.id,
                &[],
                &[],
                at(T0 + 20),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        assert_eq!(
            sync,
            DiscoverySync {
                items: 0,
                new: 0,
                removed: 2,
                kept: 0
            }
        );
        assert!(discovered_sources(store, agent.id).await.is_empty());
        assert!(matches!(
            store
                .replace_discovered(
                    Uuid::now_v7(),
                    &[],
                    &[],
                    at(T0),
                    &event("agent.discovery", "x")
                )
                .await,
            Err(DomainError::NotFound(_))
        ));
    }

    /// "Managed" is a fingerprint match with a certflow version; the list
    /// filters by it, by the agent's teams and by agent; a take-over is
    /// recorded once.
    pub async fn discovery_lists_by_status_team_and_agent_and_takes_over_once<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DiscoveryStore,
    {
        use certflow_core::discovery::{DiscoveryQuery, DiscoveryStatus};
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "www.example.com", "web");
        let v1 = create(store, &cert).await;
        let web = seed_agent(store, "web-1", "web").await;
        let db = seed_agent(store, "db-1", "db").await;
        store
            .replace_discovered(
                web.id,
                &[
                    found("file:/etc/ssl/managed.pem", &v1.fingerprint_sha256, None),
                    found("file:/etc/ssl/legacy.pem", &format!("{:064x}", 0xee), None),
                ],
                &[],
                at(T0),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        store
            .replace_discovered(
                db.id,
                &[found("tls:db:5432", &format!("{:064x}", 0xdd), None)],
                &[],
                at(T0),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        let list = |status, teams: Option<&[&str]>, agent_id| {
            let q = DiscoveryQuery {
                status,
                teams: teams.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
                agent_id,
            };
            async move {
                store
                    .list_discovered(&q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| d.item.source)
                    .collect::<Vec<_>>()
            }
        };
        // Ordered by agent name, then source.
        assert_eq!(
            list(DiscoveryStatus::All, None, None).await,
            [
                "tls:db:5432",
                "file:/etc/ssl/legacy.pem",
                "file:/etc/ssl/managed.pem"
            ]
        );
        assert_eq!(
            list(DiscoveryStatus::Unmanaged, None, None).await,
            ["tls:db:5432", "file:/etc/ssl/legacy.pem"]
        );
        assert_eq!(
            list(DiscoveryStatus::Managed, None, None).await,
            ["file:/etc/ssl/managed.pem"]
        );
        assert_eq!(
            list(DiscoveryStatus::All, Some(&["db", "other"]), None).await,
            ["tls:db:5432"]
        );
        assert!(list(DiscoveryStatus::All, Some(&[]), None).await.is_empty());
        assert_eq!(
            list(DiscoveryStatus::Unmanaged, Some(&["web"]), Some(web.id)).await,
            ["file:/etc/ssl/legacy.pem"]
        );
        assert!(
            list(DiscoveryStatus::All, Some(&["web"]), Some(db.id))
                .await
                .is_empty()
        );

        let all = store
            .list_discovered(&DiscoveryQuery {
                status: DiscoveryStatus::All,
                ..DiscoveryQuery::default()
            })
            .await
            .unwrap();
        let managed = all
            .iter()
            .find(|d| d.item.source.ends_with("managed.pem"))
            .unwrap();
        assert_eq!(managed.managed, Some((cert.id, 1)));
        let legacy = all
            .iter()
            .find(|d| d.item.source.ends_with("legacy.pem"))
            .unwrap();
        assert_eq!(legacy.managed, None);
        assert_eq!(store.get_discovered(Uuid::now_v7()).await.unwrap(), None);

        // One take-over at a time: a claim holds until released, taken over,
        // or stale.
        let claim = |claimed: i64, stale: i64| {
            store.claim_discovered_take_over(legacy.id, at(claimed), at(stale))
        };
        assert!(claim(T0 + 100, T0).await.unwrap());
        assert!(!claim(T0 + 101, T0).await.unwrap(), "held by the first");
        store.release_discovered_take_over(legacy.id).await.unwrap();
        assert!(claim(T0 + 102, T0).await.unwrap(), "released");
        assert!(
            claim(T0 + 2000, T0 + 1000).await.unwrap(),
            "a claim older than the timeout is a crashed one"
        );
        assert!(matches!(
            store
                .claim_discovered_take_over(Uuid::now_v7(), at(T0), at(T0))
                .await,
            Err(DomainError::NotFound(_))
        ));

        store
            .set_discovered_taken_over(legacy.id, cert.id, &event("discovery.take-over", "x"))
            .await
            .unwrap();
        assert_eq!(
            store
                .get_discovered(legacy.id)
                .await
                .unwrap()
                .unwrap()
                .taken_over_certificate_id,
            Some(cert.id)
        );
        assert!(matches!(
            store
                .set_discovered_taken_over(legacy.id, cert.id, &event("discovery.take-over", "x"))
                .await,
            Err(DomainError::Conflict(_))
        ));
        assert!(matches!(
            store
                .set_discovered_taken_over(
                    Uuid::now_v7(),
                    cert.id,
                    &event("discovery.take-over", "x")
                )
                .await,
            Err(DomainError::NotFound(_))
        ));
        assert_eq!(actions(store, "discovery.take-over").await.len(), 1);
        assert!(
            !claim(T0 + 5000, T0 + 4000).await.unwrap(),
            "taken over: no claim, however old the last one"
        );
        // The next report keeps the take-over record of a source seen before.
        store
            .replace_discovered(
                web.id,
                &[found(
                    "file:/etc/ssl/legacy.pem",
                    &format!("{:064x}", 0xee),
                    None,
                )],
                &[],
                at(T0 + 5),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .get_discovered(legacy.id)
                .await
                .unwrap()
                .unwrap()
                .taken_over_certificate_id,
            Some(cert.id)
        );
    }
}

/// Runs every suite case as a `#[tokio::test]`; `$open` yields `(store, guard)`
/// where the guard keeps the backend's resources alive for the test.
macro_rules! metadata_store_suite {
    ($open:expr) => {
        metadata_store_suite!(@cases $open;
            ping_answers,
            audit_failure_rolls_back_every_mutation,
            audit_round_trips_and_rejects_duplicates,
            audit_filters_order_and_pages,
            mutations_record_their_audit_event,
            idempotency_record_commits_with_the_certificate,
            idempotency_record_commits_with_the_version,
            duplicate_idempotency_key_commits_nothing,
            concurrent_requests_with_one_idempotency_key_commit_once,
            idempotency_keys_are_purged_by_age,
            renewal_ledger_round_trips_and_inserts_once,
            concurrent_enqueues_insert_one_job,
            concurrent_receivers_never_share_a_job,
            expired_lease_is_redelivered_and_the_old_receipt_refused,
            heartbeat_extends_the_lease,
            retry_honours_run_at,
            dead_letter_after_max_attempts,
            queue_stats_count_states_and_oldest_age,
            release_hands_a_job_back_at_once,
            certificate_stats_group_status_team_expiry_and_unrenewed,
            receive_waits_for_a_job,
            subscriptions_round_trip_and_delete_with_audit,
            publish_creates_one_delivery_per_matching_subscription,
            claimed_deliveries_are_leased,
            record_attempt_tracks_success_retry_and_give_up,
            audit_chain_of_an_empty_store_verifies,
            audit_chain_verifies_after_mixed_writes,
            concurrent_audited_writes_form_one_chain,
            audit_filters_by_outcome_and_time,
            deployments_assign_follow_versions_record_reports_and_unassign,
            drift_candidates_are_late_uninstalled_and_not_yet_announced,
            fleet_stats_count_agents_and_deployments,
            discovery_replace_keeps_ids_counts_and_removes_unreported,
            discovery_lists_by_status_team_and_agent_and_takes_over_once,
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let (store, _guard) = $open;
                crate::suite::$case(&store).await;
            }
        )*
    };
}

mod sqlite_memory {
    metadata_store_suite!(crate::support::sqlite_memory().await);
}

mod sqlite_file {
    metadata_store_suite!(crate::support::sqlite_file().await);
}

mod postgres {
    metadata_store_suite!(crate::support::postgres().await);
}
