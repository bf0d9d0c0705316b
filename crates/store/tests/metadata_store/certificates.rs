//! Certificates and their versions: round trips, uniqueness of names and
//! serials, renewal (`add_version`), revocation, archiving, look-up by
//! serial, and the races between concurrent writers of one certificate.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use std::collections::BTreeMap;

use certflow_core::Profile;
use certflow_core::model::{
    AuditQuery, CertificateQuery, CertificateStatus, CertificateVersion, KeySource, KeyType,
    RenewalPolicy, RevocationReason, VersionStatus,
};
use certflow_core::ports::MetadataStore;
use time::Duration;
use uuid::Uuid;

use crate::support::{
    DAY, T0, assert_conflict, assert_not_found, at, audit_ids, certificate, create, dns, event,
    ids, ip, issuer, query, seed_issuer, target, version, warm_up,
};

store_case! {
    async fn certificate_round_trips_every_field(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let mut cert = certificate(&issuer, "api.example.com", "payments");
        cert.labels = BTreeMap::from([
            ("env".to_owned(), "prod".to_owned()),
            ("owner".to_owned(), "Ünïcode & 'quotes' %_".to_owned()),
        ]);
        cert.profile = Profile::TlsClient;
        cert.key_type = KeyType::Ed25519;
        cert.key_source = KeySource::Csr;
        cert.names = vec![
            dns("api.example.com"),
            dns("*.api.example.com"),
            ip("10.0.0.1"),
            ip("2001:db8::1"),
        ];
        cert.validity_days = 47;
        cert.validity_secs = Some(6 * 3600);
        cert.renewal = RenewalPolicy {
            renew_at_fraction: 2.0 / 3.0,
            renew_before_days: Some(14),
            // Not the default, so the round trip proves the column is written.
            jitter_fraction: 0.25,
        };
        cert.not_after = at(T0 + 47 * DAY);
        cert.renew_after = at(T0 + 33 * DAY);
        cert.created_at = at(T0 + 5);
        cert.updated_at = at(T0 + 6);
        let mut first = version(&cert, 1);
        first.key_type = KeyType::Ed25519;
        first.names = cert.names.clone();
        first.key_blob = None;
        let audit = event("certificate.create", &target(&cert));
        store
            .create_certificate(&cert, &first, &audit, None)
            .await
            .unwrap();

        assert_eq!(
            store.get_certificate(cert.id).await.unwrap(),
            Some(cert.clone())
        );
        assert_eq!(store.list_versions(cert.id).await.unwrap(), vec![first]);
        let listed = store.list_certificates(&query()).await.unwrap();
        assert_eq!(listed.items, vec![cert.clone()]);
        assert_eq!(listed.total, 1);
        let trail = store
            .list_audit(&AuditQuery {
                target: Some(target(&cert)),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(trail.items, vec![audit]);

        // Optional fields absent.
        let mut plain = certificate(&issuer, "plain.example.com", "payments");
        plain.renewal.renew_before_days = None;
        create(store, &plain).await;
        let got = store.get_certificate(plain.id).await.unwrap().unwrap();
        assert_eq!(got, plain);
        assert!(got.labels.is_empty());
    }
}

store_case! {
    async fn unknown_ids_read_as_absent(store: &dyn MetadataStore) {
        seed_issuer(store).await;
        let missing = Uuid::new_v4();
        assert_eq!(store.get_certificate(missing).await.unwrap(), None);
        assert!(store.list_versions(missing).await.unwrap().is_empty());
        assert!(store.list_revoked(missing).await.unwrap().is_empty());
        let empty = store.list_certificates(&query()).await.unwrap();
        assert!(empty.items.is_empty());
        assert_eq!(empty.total, 0);
    }
}

store_case! {
    async fn times_are_kept_in_whole_seconds(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let mut cert = certificate(&issuer, "frac.example.com", "t");
        cert.created_at = at(T0) + Duration::milliseconds(700);
        create(store, &cert).await;
        let got = store.get_certificate(cert.id).await.unwrap().unwrap();
        assert_eq!(got.created_at, at(T0));
    }
}

store_case! {
    async fn certificate_name_is_unique_per_team_until_archived(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let first = certificate(&issuer, "api.example.com", "payments");
        create(store, &first).await;

        let twin = certificate(&issuer, "api.example.com", "payments");
        let result = store
            .create_certificate(
                &twin,
                &version(&twin, 1),
                &event("certificate.create", &target(&twin)),
                None,
            )
            .await;
        assert_conflict(result, &["api.example.com", "payments"]);
        assert_eq!(store.get_certificate(twin.id).await.unwrap(), None);

        // Another team may use the name.
        let elsewhere = certificate(&issuer, "api.example.com", "billing");
        create(store, &elsewhere).await;

        // A revoked certificate still holds its name.
        store
            .revoke_version(
                first.id,
                1,
                RevocationReason::Superseded,
                at(T0 + DAY),
                &event("certificate.revoke", &target(&first)),
            )
            .await
            .unwrap();
        let result = store
            .create_certificate(
                &twin,
                &version(&twin, 1),
                &event("certificate.create", &target(&twin)),
                None,
            )
            .await;
        assert_conflict(result, &["api.example.com", "payments"]);

        // Archiving frees it.
        store
            .archive_certificate(
                first.id,
                at(T0 + DAY),
                &event("certificate.archive", &target(&first)),
            )
            .await
            .unwrap();
        create(store, &twin).await;
        assert_eq!(store.get_certificate(twin.id).await.unwrap(), Some(twin));

        // The same id twice is a conflict of its own.
        let again = store
            .create_certificate(
                &first,
                &version(&first, 1),
                &event("certificate.create", &target(&first)),
                None,
            )
            .await;
        assert_conflict(again, &[&first.id.to_string()]);
    }
}

store_case! {
    async fn serial_is_unique_per_issuer(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let other = issuer("other", false);
        store
            .insert_issuer(&other, &event("issuer.import", "issuer/other"))
            .await
            .unwrap();
        let a = certificate(&main, "a.example.com", "t");
        let va = create(store, &a).await;

        let b = certificate(&main, "b.example.com", "t");
        let mut vb = version(&b, 1);
        vb.serial = va.serial.clone();
        let result = store
            .create_certificate(&b, &vb, &event("certificate.create", &target(&b)), None)
            .await;
        assert_conflict(result, &[&va.serial]);
        // Rolled back as a whole: the certificate row is gone too.
        assert_eq!(store.get_certificate(b.id).await.unwrap(), None);

        // Same serial under another issuer is fine.
        let c = certificate(&other, "c.example.com", "t");
        let mut vc = version(&c, 1);
        vc.serial = va.serial.clone();
        store
            .create_certificate(&c, &vc, &event("certificate.create", &target(&c)), None)
            .await
            .unwrap();

        // add_version checks it too.
        let mut v2 = version(&a, 2);
        v2.serial = va.serial.clone();
        let result = store
            .add_version(&a, &v2, &event("certificate.renew", &target(&a)), None)
            .await;
        assert_conflict(result, &[&va.serial]);
    }
}

store_case! {
    async fn create_checks_issuer_and_first_version(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let ghost = issuer("ghost", false);
        let cert = certificate(&ghost, "x.example.com", "t");
        let result = store
            .create_certificate(
                &cert,
                &version(&cert, 1),
                &event("certificate.create", &target(&cert)),
                None,
            )
            .await;
        assert_not_found(result);

        let cert = certificate(&main, "x.example.com", "t");
        let result = store
            .create_certificate(
                &cert,
                &version(&cert, 2),
                &event("certificate.create", &target(&cert)),
                None,
            )
            .await;
        assert_conflict(result, &["1"]);
        assert_eq!(store.get_certificate(cert.id).await.unwrap(), None);
    }
}

store_case! {
    async fn add_version_supersedes_and_updates_the_certificate(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let mut cert = certificate(&issuer, "api.example.com", "payments");
        cert.labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        let v1 = create(store, &cert).await;

        let mut renewed = cert.clone();
        renewed.current_version = 2;
        renewed.names = vec![
            dns("api.example.com"),
            dns("api2.example.org"),
            ip("192.0.2.10"),
        ];
        renewed.not_after = at(T0 + 180 * DAY);
        renewed.renew_after = at(T0 + 150 * DAY);
        renewed.updated_at = at(T0 + 100 * DAY);
        let mut v2 = version(&renewed, 2);
        v2.names = renewed.names.clone();
        v2.not_after = renewed.not_after;
        store
            .add_version(
                &renewed,
                &v2,
                &event("certificate.renew", &target(&cert)),
                None,
            )
            .await
            .unwrap();

        assert_eq!(
            store.get_certificate(cert.id).await.unwrap(),
            Some(renewed.clone())
        );
        let superseded = CertificateVersion {
            status: VersionStatus::Superseded,
            ..v1
        };
        assert_eq!(
            store.list_versions(cert.id).await.unwrap(),
            vec![v2.clone(), superseded.clone()]
        );

        // The searchable names follow the certificate.
        let search = |s: &str| CertificateQuery {
            search: Some(s.into()),
            ..query()
        };
        assert_eq!(ids(store, &search("api2.example")).await, vec![cert.id]);
        assert_eq!(ids(store, &search("192.0.2.10")).await, vec![cert.id]);

        let mut dropped = renewed.clone();
        dropped.current_version = 3;
        dropped.names = vec![dns("api.example.com")];
        dropped.updated_at = at(T0 + 200 * DAY);
        let v3 = version(&dropped, 3);
        store
            .add_version(
                &dropped,
                &v3,
                &event("certificate.renew", &target(&cert)),
                None,
            )
            .await
            .unwrap();
        assert!(ids(store, &search("api2.example")).await.is_empty());
        let statuses: Vec<(u32, VersionStatus)> = store
            .list_versions(cert.id)
            .await
            .unwrap()
            .iter()
            .map(|v| (v.version, v.status))
            .collect();
        assert_eq!(
            statuses,
            vec![
                (3, VersionStatus::Current),
                (2, VersionStatus::Superseded),
                (1, VersionStatus::Superseded)
            ]
        );
    }
}

store_case! {
    async fn add_version_requires_the_next_number(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "payments");
        let v1 = create(store, &cert).await;

        for wrong in [1, 3, 0] {
            let mut next = cert.clone();
            next.current_version = wrong;
            let audit = event("certificate.renew", &format!("gap/{wrong}"));
            let result = store
                .add_version(&next, &version(&next, wrong), &audit, None)
                .await;
            assert_conflict(result, &["2"]);
            assert!(
                audit_ids(
                    store,
                    AuditQuery {
                        target: Some(format!("gap/{wrong}")),
                        ..AuditQuery::default()
                    }
                )
                .await
                .is_empty()
            );
        }
        assert_eq!(
            store.get_certificate(cert.id).await.unwrap(),
            Some(cert.clone())
        );
        assert_eq!(store.list_versions(cert.id).await.unwrap(), vec![v1]);

        let ghost = certificate(&issuer, "ghost.example.com", "payments");
        let result = store
            .add_version(
                &ghost,
                &version(&ghost, 2),
                &event("certificate.renew", &target(&ghost)),
                None,
            )
            .await;
        assert_not_found(result);
    }
}

store_case! {
    async fn add_version_keeps_a_revoked_version_revoked(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "payments");
        create(store, &cert).await;
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
        assert_eq!(
            store
                .get_certificate(cert.id)
                .await
                .unwrap()
                .unwrap()
                .status,
            CertificateStatus::Revoked
        );

        let mut renewed = cert.clone();
        renewed.current_version = 2;
        renewed.status = CertificateStatus::Active;
        renewed.updated_at = at(T0 + 2 * DAY);
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
        let versions = store.list_versions(cert.id).await.unwrap();
        assert_eq!(versions[0], v2);
        assert_eq!(versions[1].status, VersionStatus::Revoked);
        assert_eq!(versions[1].revoked_at, Some(at(T0 + DAY)));
        assert_eq!(
            versions[1].revocation_reason,
            Some(RevocationReason::KeyCompromise)
        );
        assert_eq!(store.get_certificate(cert.id).await.unwrap(), Some(renewed));
    }
}

store_case! {
    /// Racing revocations of one version: exactly one records its reason.
    async fn concurrent_revocations_allow_exactly_one(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "race.example.com", "t");
        create(store, &cert).await;
        let attempt = |reason: RevocationReason| {
            let audit = event("certificate.revoke", &target(&cert));
            let id = cert.id;
            async move {
                store
                    .revoke_version(id, 1, reason, at(T0 + DAY), &audit)
                    .await
                    .map(|()| reason)
            }
        };
        warm_up(store).await;
        let (a, b, c, d) = tokio::join!(
            attempt(RevocationReason::KeyCompromise),
            attempt(RevocationReason::Superseded),
            attempt(RevocationReason::AffiliationChanged),
            attempt(RevocationReason::CessationOfOperation),
        );
        let results = [a, b, c, d];
        let winners: Vec<RevocationReason> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for r in results.into_iter().filter(Result::is_err) {
            assert_conflict(r, &["already revoked"]);
        }
        let revoked = store.list_revoked(issuer.id).await.unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].revocation_reason, Some(winners[0]));
        let trail = audit_ids(
            store,
            AuditQuery {
                target: Some(target(&cert)),
                action_prefix: Some("certificate.revoke".into()),
                ..AuditQuery::default()
            },
        )
        .await;
        assert_eq!(trail.len(), 1);
    }
}

store_case! {
    /// Racing creations of one name in one team: exactly one takes it.
    async fn concurrent_creations_of_one_name_allow_exactly_one(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let attempt = || {
            let cert = certificate(&issuer, "race.example.com", "payments");
            async move {
                let first = version(&cert, 1);
                let audit = event("certificate.create", &target(&cert));
                store.create_certificate(&cert, &first, &audit, None).await
            }
        };
        warm_up(store).await;
        let (a, b, c, d) = tokio::join!(attempt(), attempt(), attempt(), attempt());
        let results = [a, b, c, d];
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        for r in results.into_iter().filter(Result::is_err) {
            assert_conflict(r, &["race.example.com", "payments"]);
        }
        assert_eq!(store.list_certificates(&query()).await.unwrap().total, 1);
    }
}

store_case! {
    /// Racing renewals to the same number: the check and the insert are one
    /// transaction, so exactly one wins.
    async fn concurrent_renewals_allow_exactly_one(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "race.example.com", "t");
        create(store, &cert).await;
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        let attempt = || {
            let v2 = version(&renewed, 2);
            let renewed = renewed.clone();
            let audit = event("certificate.renew", &target(&cert));
            async move { store.add_version(&renewed, &v2, &audit, None).await }
        };
        warm_up(store).await;
        let (a, b, c, d) = tokio::join!(attempt(), attempt(), attempt(), attempt());
        let results = [a, b, c, d];
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        for r in results.into_iter().filter(Result::is_err) {
            assert_conflict(r, &["version"]);
        }
        assert_eq!(store.list_versions(cert.id).await.unwrap().len(), 2);
    }
}

store_case! {
    async fn revoke_transitions(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let cert = certificate(&main, "api.example.com", "payments");
        create(store, &cert).await;
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

        // A superseded version: the certificate stays active.
        store
            .revoke_version(
                cert.id,
                1,
                RevocationReason::Superseded,
                at(T0 + 10 * DAY),
                &event("certificate.revoke", &target(&cert)),
            )
            .await
            .unwrap();
        let got = store.get_certificate(cert.id).await.unwrap().unwrap();
        assert_eq!(got.status, CertificateStatus::Active);
        assert_eq!(got.updated_at, at(T0 + 10 * DAY));

        // Twice: conflict, and nothing recorded.
        let audit = event("certificate.revoke", "twice");
        let result = store
            .revoke_version(
                cert.id,
                1,
                RevocationReason::KeyCompromise,
                at(T0 + 11 * DAY),
                &audit,
            )
            .await;
        assert_conflict(result, &["already revoked"]);
        assert!(
            audit_ids(
                store,
                AuditQuery {
                    target: Some("twice".into()),
                    ..AuditQuery::default()
                }
            )
            .await
            .is_empty()
        );

        // The current version: the certificate becomes revoked.
        store
            .revoke_version(
                cert.id,
                2,
                RevocationReason::CessationOfOperation,
                at(T0 + 12 * DAY),
                &event("certificate.revoke", &target(&cert)),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .get_certificate(cert.id)
                .await
                .unwrap()
                .unwrap()
                .status,
            CertificateStatus::Revoked
        );
        let versions = store.list_versions(cert.id).await.unwrap();
        assert_eq!(
            versions
                .iter()
                .map(|v| (v.version, v.status, v.revoked_at, v.revocation_reason))
                .collect::<Vec<_>>(),
            vec![
                (
                    2,
                    VersionStatus::Revoked,
                    Some(at(T0 + 12 * DAY)),
                    Some(RevocationReason::CessationOfOperation)
                ),
                (
                    1,
                    VersionStatus::Revoked,
                    Some(at(T0 + 10 * DAY)),
                    Some(RevocationReason::Superseded)
                ),
            ]
        );

        // Missing version or certificate.
        assert_not_found(
            store
                .revoke_version(
                    cert.id,
                    3,
                    RevocationReason::Unspecified,
                    at(T0),
                    &event("certificate.revoke", &target(&cert)),
                )
                .await,
        );
        assert_not_found(
            store
                .revoke_version(
                    Uuid::new_v4(),
                    1,
                    RevocationReason::Unspecified,
                    at(T0),
                    &event("certificate.revoke", "x"),
                )
                .await,
        );
    }
}

store_case! {
    async fn revoking_an_archived_certificate_keeps_it_archived(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "old.example.com", "t");
        create(store, &cert).await;
        store
            .archive_certificate(
                cert.id,
                at(T0 + DAY),
                &event("certificate.archive", &target(&cert)),
            )
            .await
            .unwrap();
        store
            .revoke_version(
                cert.id,
                1,
                RevocationReason::KeyCompromise,
                at(T0 + 2 * DAY),
                &event("certificate.revoke", &target(&cert)),
            )
            .await
            .unwrap();
        let got = store.get_certificate(cert.id).await.unwrap().unwrap();
        assert_eq!(got.status, CertificateStatus::Archived);
        assert_eq!(
            store.list_versions(cert.id).await.unwrap()[0].status,
            VersionStatus::Revoked
        );
    }
}

store_case! {
    async fn list_revoked_is_per_issuer(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let other = issuer("other", false);
        store
            .insert_issuer(&other, &event("issuer.import", "issuer/other"))
            .await
            .unwrap();
        let a = certificate(&main, "a.example.com", "t");
        let b = certificate(&main, "b.example.com", "t");
        let c = certificate(&other, "c.example.com", "t");
        let d = certificate(&main, "d.example.com", "t");
        let (va, vb, vc) = (
            create(store, &a).await,
            create(store, &b).await,
            create(store, &c).await,
        );
        create(store, &d).await;
        for (cert, when) in [(&b, 5), (&a, 7), (&c, 6)] {
            store
                .revoke_version(
                    cert.id,
                    1,
                    RevocationReason::AffiliationChanged,
                    at(T0 + when),
                    &event("certificate.revoke", &target(cert)),
                )
                .await
                .unwrap();
        }
        let revoked = |v: CertificateVersion, when: i64| CertificateVersion {
            status: VersionStatus::Revoked,
            revoked_at: Some(at(T0 + when)),
            revocation_reason: Some(RevocationReason::AffiliationChanged),
            ..v
        };
        assert_eq!(
            store.list_revoked(main.id).await.unwrap(),
            vec![revoked(vb, 5), revoked(va, 7)]
        );
        assert_eq!(
            store.list_revoked(other.id).await.unwrap(),
            vec![revoked(vc, 6)]
        );
    }
}

store_case! {
    /// OCSP answers from `version_by_serial`: a serial belongs to one issuer,
    /// an unknown one reads as absent, and the answer follows the version's
    /// later renewal and revocation.
    async fn version_by_serial_is_scoped_to_its_issuer(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let other = issuer("other", false);
        store
            .insert_issuer(&other, &event("issuer.import", "issuer/other"))
            .await
            .unwrap();
        let a = certificate(&main, "a.example.com", "t");
        let va = create(store, &a).await;
        // The same serial under another issuer is another certificate.
        let c = certificate(&other, "c.example.com", "t");
        let mut vc = version(&c, 1);
        vc.serial = va.serial.clone();
        store
            .create_certificate(&c, &vc, &event("certificate.create", &target(&c)), None)
            .await
            .unwrap();

        assert_eq!(
            store.version_by_serial(main.id, &va.serial).await.unwrap(),
            Some(va.clone())
        );
        assert_eq!(
            store.version_by_serial(other.id, &va.serial).await.unwrap(),
            Some(vc.clone())
        );
        assert_eq!(
            store.version_by_serial(main.id, "00ff00ff").await.unwrap(),
            None
        );
        assert_eq!(
            store
                .version_by_serial(Uuid::new_v4(), &va.serial)
                .await
                .unwrap(),
            None
        );
        // Exact match only: a prefix of a known serial is not that serial.
        assert_eq!(
            store
                .version_by_serial(main.id, &va.serial[..8])
                .await
                .unwrap(),
            None
        );

        let mut renewed = a.clone();
        renewed.current_version = 2;
        let v2 = version(&renewed, 2);
        store
            .add_version(
                &renewed,
                &v2,
                &event("certificate.renew", &target(&a)),
                None,
            )
            .await
            .unwrap();
        store
            .revoke_version(
                a.id,
                1,
                RevocationReason::KeyCompromise,
                at(T0 + 3 * DAY),
                &event("certificate.revoke", &target(&a)),
            )
            .await
            .unwrap();
        assert_eq!(
            store.version_by_serial(main.id, &va.serial).await.unwrap(),
            Some(CertificateVersion {
                status: VersionStatus::Revoked,
                revoked_at: Some(at(T0 + 3 * DAY)),
                revocation_reason: Some(RevocationReason::KeyCompromise),
                ..va
            })
        );
        assert_eq!(
            store.version_by_serial(main.id, &v2.serial).await.unwrap(),
            Some(v2)
        );
        // The other issuer's version is untouched by the revocation.
        assert_eq!(
            store.version_by_serial(other.id, &vc.serial).await.unwrap(),
            Some(vc)
        );
    }
}

store_case! {
    async fn archive_transitions(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "payments");
        create(store, &cert).await;
        store
            .archive_certificate(
                cert.id,
                at(T0 + 3 * DAY),
                &event("certificate.archive", &target(&cert)),
            )
            .await
            .unwrap();
        let got = store.get_certificate(cert.id).await.unwrap().unwrap();
        assert_eq!(got.status, CertificateStatus::Archived);
        assert_eq!(got.updated_at, at(T0 + 3 * DAY));
        // Versions are history and stay as they were.
        assert_eq!(
            store.list_versions(cert.id).await.unwrap()[0].status,
            VersionStatus::Current
        );

        let audit = event("certificate.archive", "again");
        assert_conflict(
            store
                .archive_certificate(cert.id, at(T0 + 4 * DAY), &audit)
                .await,
            &["already archived"],
        );
        assert_not_found(
            store
                .archive_certificate(
                    Uuid::new_v4(),
                    at(T0),
                    &event("certificate.archive", "missing"),
                )
                .await,
        );
        assert!(
            audit_ids(
                store,
                AuditQuery {
                    target: Some("again".into()),
                    ..AuditQuery::default()
                }
            )
            .await
            .is_empty()
        );
    }
}

store_case! {
    async fn renewal_versions_are_the_newest_and_those_revoked_for_key_compromise(
        store: &dyn MetadataStore
    ) {
        let issuer = seed_issuer(store).await;
        let mut cert = certificate(&issuer, "history.example.com", "payments");
        create(store, &cert).await;
        // v1 revoked for keyCompromise, v2 for another reason, v3 and v4 not.
        let reasons = [
            Some(RevocationReason::KeyCompromise),
            Some(RevocationReason::CessationOfOperation),
            None,
        ];
        for (n, reason) in (1u32..).zip(reasons) {
            if let Some(reason) = reason {
                store
                    .revoke_version(
                        cert.id,
                        n,
                        reason,
                        at(T0 + i64::from(n) * DAY),
                        &event("certificate.revoke", &target(&cert)),
                    )
                    .await
                    .unwrap();
            }
            cert.current_version = n + 1;
            cert.status = CertificateStatus::Active;
            cert.updated_at = at(T0 + i64::from(n) * DAY + 1);
            store
                .add_version(
                    &cert,
                    &version(&cert, n + 1),
                    &event("certificate.renew", &target(&cert)),
                    None,
                )
                .await
                .unwrap();
        }
        let all = store.list_versions(cert.id).await.unwrap();
        assert_eq!(all.len(), 4);
        let wanted: Vec<_> = all
            .iter()
            .filter(|v| v.version == 4 || v.version == 1)
            .cloned()
            .collect();
        assert_eq!(store.renewal_versions(cert.id).await.unwrap(), wanted);
        assert_eq!(
            store.renewal_versions(Uuid::new_v4()).await.unwrap(),
            vec![]
        );
    }
}
