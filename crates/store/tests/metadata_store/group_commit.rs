//! Certificates created concurrently share transactions (group commit):
//! each caller still gets the answer it would have had alone.

use bytes::Bytes;
use certflow_core::model::VersionStatus;
use certflow_core::ports::{BlobStore, MetadataStore, VersionCommit};

use crate::support::{
    assert_conflict, batch_with_a_taken_name, certificate, event, futures_join_all, ids, query,
    seed_issuer, target, version, warm_up,
};

store_case! {
    /// Forty creations at once all commit, each with its version, names,
    /// labels and audit event, and the audit chain still verifies.
    async fn concurrent_creations_all_commit(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        warm_up(store).await;
        let certs: Vec<_> = (0..40)
            .map(|i| {
                let mut c = certificate(&issuer, &format!("c{i}.example.com"), "team");
                c.labels.insert("n".into(), i.to_string());
                c
            })
            .collect();
        let results = futures_join_all(certs.iter().map(|c| {
            let first = version(c, 1);
            let audit = event("certificate.create", &target(c));
            async move { store.create_certificate(c, &first, &audit, None).await }
        }))
        .await;
        for r in &results {
            r.as_ref().unwrap();
        }
        let mut listed = ids(store, &query()).await;
        listed.sort();
        let mut want: Vec<_> = certs.iter().map(|c| c.id).collect();
        want.sort();
        assert_eq!(listed, want);
        for c in &certs {
            let got = store.get_certificate(c.id).await.unwrap().unwrap();
            assert_eq!(got.labels, c.labels);
            assert_eq!(store.list_versions(c.id).await.unwrap().len(), 1);
        }
        let report = store.verify_audit_chain().await.unwrap();
        assert!(report.first_break.is_none(), "{report:?}");
    }
}

store_case! {
    /// Creations racing with a name already taken: that one fails with the
    /// conflict it would have alone, the others in its batch still commit.
    async fn a_failing_creation_does_not_fail_its_batch(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        warm_up(store).await;
        let (certs, clash) = batch_with_a_taken_name(store, &issuer, "team", "ok", 20, 10).await;
        let results = futures_join_all(certs.iter().map(|c| {
            let first = version(c, 1);
            let audit = event("certificate.create", &target(c));
            async move { store.create_certificate(c, &first, &audit, None).await }
        }))
        .await;
        for (c, r) in certs.iter().zip(results) {
            if c.id == clash.id {
                assert_conflict(r, &["taken.example.com"]);
            } else {
                r.unwrap();
            }
        }
        assert!(store.get_certificate(clash.id).await.unwrap().is_none());
        assert_eq!(ids(store, &query()).await.len(), 21);
        let report = store.verify_audit_chain().await.unwrap();
        assert!(report.first_break.is_none(), "{report:?}");
    }
}

store_case! {
    /// Renewals of thirty certificates at once all land (one group commit);
    /// a second version 2 of one of them, racing in the same batch, fails
    /// as it would alone and takes nothing of the others with it.
    async fn concurrent_new_versions_land_and_a_duplicate_fails_alone(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        warm_up(store).await;
        let mut certs = Vec::new();
        for i in 0..30 {
            let c = certificate(&issuer, &format!("r{i}.example.com"), "team");
            crate::support::create(store, &c).await;
            certs.push(c);
        }
        let mut renewals: Vec<_> = certs
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.current_version = 2;
                c.not_after += time::Duration::days(30);
                c.renew_after += time::Duration::days(30);
                c.updated_at += time::Duration::days(1);
                (c.clone(), version(&c, 2))
            })
            .collect();
        let mut twin = renewals[7].clone();
        twin.1.serial = "0badc0de".into();
        renewals.push(twin);
        let results = futures_join_all(renewals.iter().map(|(c, v)| {
            let audit = event("certificate.renew", &target(c));
            async move { store.add_version(c, v, &audit, None).await }
        }))
        .await;
        let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        assert_eq!(failed.len(), 1, "{results:?}");
        assert!(matches!(failed[0], Err(certflow_core::DomainError::Conflict(_))));
        // Each certificate as a renewal alone leaves it: the new version
        // current, the old one superseded, the row's new dates, labels and
        // names untouched and still found by a search.
        for (renewed, _) in &renewals[..30] {
            let versions = store.list_versions(renewed.id).await.unwrap();
            let statuses: Vec<_> = versions.iter().map(|v| (v.version, v.status)).collect();
            assert_eq!(
                statuses,
                [(2, VersionStatus::Current), (1, VersionStatus::Superseded)],
                "{}",
                renewed.name
            );
            let stored = store.get_certificate(renewed.id).await.unwrap().unwrap();
            assert_eq!(
                (stored.current_version, stored.not_after, stored.renew_after),
                (2, renewed.not_after, renewed.renew_after)
            );
            assert_eq!((&stored.labels, &stored.names), (&renewed.labels, &renewed.names));
            let mut q = query();
            q.search = Some(renewed.name.clone());
            assert_eq!(ids(store, &q).await, [renewed.id], "{}", renewed.name);
        }
        let report = store.verify_audit_chain().await.unwrap();
        assert!(report.first_break.is_none(), "{report:?}");
    }
}

store_case! {
    /// A version's blobs commit in the version's own transaction: of
    /// concurrent creations (one refused by a taken name) and renewals, every
    /// committed version's blobs read back and the refused one left none.
    async fn blobs_commit_in_their_versions_transaction<S: MetadataStore + BlobStore>(
        store: &S,
    ) {
        let issuer = seed_issuer(store).await;
        warm_up(store).await;
        let (mut certs, clash) =
            batch_with_a_taken_name(store, &issuer, "team", "b", 12, 5).await;
        let blobs_of = |c: &certflow_core::model::Certificate, v: u32| {
            vec![
                (format!("certificates/{}/{v}/cert.der", c.id), Bytes::from(format!("der {}", c.id))),
                (format!("certificates/{}/{v}/chain.pem", c.id), Bytes::from_static(b"chain")),
            ]
        };
        let results = futures_join_all(certs.iter().map(|c| {
            let first = version(c, 1);
            let audit = event("certificate.create", &target(c));
            let blobs = blobs_of(c, 1);
            async move {
                let commit = VersionCommit {
                    blobs,
                    ..VersionCommit::new(c, &first, &audit, None)
                };
                store.create_first_version(commit).await
            }
        }))
        .await;
        for (c, r) in certs.iter().zip(results) {
            if c.id == clash.id {
                assert_conflict(r, &["taken.example.com"]);
            } else {
                r.unwrap();
            }
        }
        assert!(store.list(&format!("certificates/{}/", clash.id)).await.unwrap().is_empty());
        certs.retain(|c| c.id != clash.id);
        let renewals = futures_join_all(certs.iter().map(|c| {
            let mut c = c.clone();
            c.current_version = 2;
            let audit = event("certificate.renew", &target(&c));
            let blobs = blobs_of(&c, 2);
            async move {
                let v = version(&c, 2);
                let commit = VersionCommit {
                    blobs,
                    ..VersionCommit::new(&c, &v, &audit, None)
                };
                store.commit_version(commit).await
            }
        }))
        .await;
        for r in renewals {
            r.unwrap();
        }
        for c in &certs {
            for v in [1, 2] {
                assert_eq!(
                    store.get(&format!("certificates/{}/{v}/cert.der", c.id)).await.unwrap(),
                    Bytes::from(format!("der {}", c.id))
                );
            }
        }
        assert!(store.in_metadata_database());
        let report = store.verify_audit_chain().await.unwrap();
        assert!(report.first_break.is_none(), "{report:?}");
    }
}
