//! Idempotency keys: committed with the certificate or version they answer,
//! a duplicate key commits nothing (also under concurrent requests), and
//! old keys are purged.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use std::collections::BTreeMap;

use certflow_core::DomainError;
use certflow_core::model::{AuditQuery, CertificateVersion, IdempotencyRecord};
use certflow_core::ports::MetadataStore;
use time::Duration;
use uuid::Uuid;

use crate::support::{
    DAY, T0, assert_conflict, at, audit_ids, certificate, create, event, query, seed_issuer,
    target, version, warm_up,
};

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

store_case! {
    /// Stored with the create, read back by `(scope, key)` and only by both.
    async fn idempotency_record_commits_with_the_certificate(store: &dyn MetadataStore) {
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
}

store_case! {
    /// Stored with the new version; a failed renewal stores no record.
    async fn idempotency_record_commits_with_the_version(store: &dyn MetadataStore) {
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
}

store_case! {
    /// A second commit under a stored `(scope, key)` is a `Conflict` and leaves
    /// no certificate, version, label, audit event or record behind.
    async fn duplicate_idempotency_key_commits_nothing(store: &dyn MetadataStore) {
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
}

store_case! {
    /// Racing creations with one key (different ids, names and serials, as
    /// two replicas signing the same request would have): exactly one commits.
    async fn concurrent_requests_with_one_idempotency_key_commit_once(
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
}

store_case! {
    /// `purge_idempotency_keys(before)` deletes exactly the records created before it.
    async fn idempotency_keys_are_purged_by_age(store: &dyn MetadataStore) {
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
}
