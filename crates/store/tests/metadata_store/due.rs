//! Which certificates are due for renewal (`due_for_renewal`): order,
//! limits, unmanaged certificates, and those that already have a job.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::DomainError;
use certflow_core::model::{AuditQuery, Certificate, CertificateQuery, Issuer, RevocationReason};
use certflow_core::ports::MetadataStore;
use certflow_core::renewal::RenewalJob;
use time::Duration;
use uuid::Uuid;

use crate::support::{
    DAY, Stores, T0, at, certificate, create, event, ids, issuer, query, seed_issuer, sorted,
    target, version,
};

/// An active certificate that becomes due for renewal at `renew_after`.
fn renewing(issuer: &Issuer, name: &str, renew_after: i64) -> Certificate {
    Certificate {
        not_after: at(renew_after + 30 * DAY),
        renew_after: at(renew_after),
        ..certificate(issuer, name, "payments")
    }
}

fn by_due_order(mut certs: Vec<Certificate>) -> Vec<Certificate> {
    certs.sort_by_key(|c| (c.renew_after, c.id));
    certs
}

store_case! {
    async fn due_for_renewal_returns_due_active_oldest_first(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let base = T0 + 60 * DAY;
        // Half a second past `base`: a certificate due at `base` is due, one due
        // a second later is not.
        let now = at(base) + Duration::milliseconds(500);
        assert_eq!(store.due_for_renewal(now, 1000).await.unwrap(), vec![]);

        let mut labelled = renewing(&issuer, "labelled.example.com", base - 3 * DAY);
        labelled.labels = [("env".to_owned(), "prod".to_owned())].into();
        let due = vec![
            renewing(&issuer, "exactly-now.example.com", base),
            labelled,
            // Three due in the same second: ordered by id.
            renewing(&issuer, "tie-a.example.com", base - DAY),
            renewing(&issuer, "tie-b.example.com", base - DAY),
            renewing(&issuer, "tie-c.example.com", base - DAY),
            renewing(&issuer, "long-overdue.example.com", base - 400 * DAY),
        ];
        let next_second = renewing(&issuer, "next-second.example.com", base + 1);
        let later = renewing(&issuer, "later.example.com", base + 20 * DAY);
        let revoked = renewing(&issuer, "revoked.example.com", base - 5 * DAY);
        let archived = renewing(&issuer, "archived.example.com", base - 5 * DAY);
        let renewed = renewing(&issuer, "renewed.example.com", base - 2 * DAY);
        for cert in due
            .iter()
            .chain([&next_second, &later, &revoked, &archived, &renewed])
        {
            create(store, cert).await;
        }
        store
            .revoke_version(
                revoked.id,
                1,
                RevocationReason::KeyCompromise,
                at(base - DAY),
                &event("certificate.revoke", &target(&revoked)),
            )
            .await
            .unwrap();
        store
            .archive_certificate(
                archived.id,
                at(base - DAY),
                &event("certificate.archive", &target(&archived)),
            )
            .await
            .unwrap();
        // Renewing moves renew_after past `now`.
        let renewed_v2 = Certificate {
            current_version: 2,
            renew_after: at(base + 50 * DAY),
            not_after: at(base + 80 * DAY),
            ..renewed.clone()
        };
        store
            .add_version(
                &renewed_v2,
                &version(&renewed_v2, 2),
                &event("certificate.renew", &target(&renewed)),
                None,
            )
            .await
            .unwrap();

        let expected = by_due_order(due);
        assert_eq!(expected[0].name, "long-overdue.example.com");
        assert_eq!(store.due_for_renewal(now, 1000).await.unwrap(), expected);
        // One second later the next one is due too, last.
        let got = store
            .due_for_renewal(at(base + 1), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>();
        let mut ids = expected.iter().map(|c| c.id).collect::<Vec<_>>();
        ids.push(next_second.id);
        assert_eq!(got, ids);
    }
}

store_case! {
    /// An inventory-only certificate is stored and filtered as such, never
    /// due, and becomes due once taken over (once: a second take-over, or one
    /// naming an unknown issuer, changes nothing).
    async fn unmanaged_certificates_are_never_due_until_taken_over(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let other = self::issuer("other", false);
        store
            .insert_issuer(&other, &event("issuer.create", "issuer/other"))
            .await
            .unwrap();
        let base = T0 + 60 * DAY;
        let managed = renewing(&issuer, "managed.example.com", base - DAY);
        let inventory = Certificate {
            managed: false,
            ..renewing(&issuer, "inventory.example.com", base - 2 * DAY)
        };
        let expired = Certificate {
            managed: false,
            ..renewing(&issuer, "expired.example.com", base - 400 * DAY)
        };
        for cert in [&managed, &inventory, &expired] {
            create(store, cert).await;
        }
        assert_eq!(
            store.get_certificate(inventory.id).await.unwrap().as_ref(),
            Some(&inventory)
        );
        let due = |now: i64| async move {
            store
                .due_for_renewal(at(now), 1000)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(due(base).await, vec![managed.id]);
        let only = |managed: bool| CertificateQuery {
            managed: Some(managed),
            ..query()
        };
        assert_eq!(
            sorted(ids(store, &only(false)).await),
            sorted(vec![inventory.id, expired.id])
        );
        assert_eq!(ids(store, &only(true)).await, vec![managed.id]);

        let taken = Certificate {
            managed: true,
            issuer_id: other.id,
            renew_after: at(base - DAY / 2),
            updated_at: at(base),
            ..inventory.clone()
        };
        let manage = event("certificate.manage", &target(&inventory));
        store.manage_certificate(&taken, &manage).await.unwrap();
        assert_eq!(
            store.get_certificate(inventory.id).await.unwrap().as_ref(),
            Some(&taken)
        );
        assert_eq!(due(base).await, vec![managed.id, inventory.id]);
        let audit = store
            .list_audit(&AuditQuery {
                target: Some(target(&inventory)),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(audit.items[0].action, "certificate.manage");

        let again = Certificate {
            renew_after: at(base + DAY),
            ..taken.clone()
        };
        assert!(matches!(
            store.manage_certificate(&again, &manage).await,
            Err(DomainError::Conflict(_))
        ));
        assert_eq!(
            store.get_certificate(inventory.id).await.unwrap().as_ref(),
            Some(&taken)
        );
        let unknown_issuer = Certificate {
            managed: true,
            issuer_id: Uuid::new_v4(),
            ..expired.clone()
        };
        assert!(matches!(
            store.manage_certificate(&unknown_issuer, &manage).await,
            Err(DomainError::NotFound(_))
        ));
        let absent = Certificate {
            id: Uuid::new_v4(),
            ..taken.clone()
        };
        assert!(matches!(
            store.manage_certificate(&absent, &manage).await,
            Err(DomainError::NotFound(_))
        ));
        assert_eq!(
            store.get_certificate(expired.id).await.unwrap().as_ref(),
            Some(&expired)
        );
        assert_eq!(due(base).await, vec![managed.id, inventory.id]);
    }
}

store_case! {
    async fn due_for_renewal_respects_limit(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let base = T0 + 60 * DAY;
        let certs: Vec<Certificate> = (0..5)
            .map(|i| renewing(&issuer, &format!("svc-{i}.example.com"), base - i * DAY))
            .collect();
        for cert in &certs {
            create(store, cert).await;
        }
        let expected: Vec<Uuid> = by_due_order(certs).into_iter().map(|c| c.id).collect();
        let due = |now: i64, limit: u32| async move {
            store
                .due_for_renewal(at(now), limit)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(due(base, 2).await, expected[..2]);
        assert_eq!(due(base, 5).await, expected);
        // Clamped to 1..=1000.
        assert_eq!(due(base, 0).await, expected[..1]);
        assert_eq!(due(base, u32::MAX).await, expected);
        // Only what is due by then, however large the limit.
        assert_eq!(due(base - 3 * DAY, 1000).await, expected[..2]);
        assert!(due(base - 5 * DAY, 1000).await.is_empty());
    }
}

store_case! {
    async fn due_for_renewal_skips_certificates_with_a_job(store: &dyn Stores) {
        let issuer = seed_issuer(store).await;
        let base = T0 + 60 * DAY;
        let a = renewing(&issuer, "a.example.com", base - 2 * DAY);
        let b = renewing(&issuer, "b.example.com", base - DAY);
        create(store, &a).await;
        create(store, &b).await;
        let due = || async {
            store
                .due_for_renewal(at(base), 10)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(due().await, vec![a.id, b.id]);
        // A job for the current version, whatever its state, takes it out.
        let job = RenewalJob::new(a.id, 1, 5, at(base));
        store.insert_renewal_job(&job).await.unwrap();
        assert_eq!(due().await, vec![b.id]);
        // A job for another version does not.
        store
            .insert_renewal_job(&RenewalJob::new(b.id, 7, 5, at(base)))
            .await
            .unwrap();
        assert_eq!(due().await, vec![b.id]);
        // Once renewed, the new version is judged on its own renew_after.
        let renewed = Certificate {
            current_version: 2,
            renew_after: at(base - DAY / 2),
            not_after: at(base + 30 * DAY),
            ..a.clone()
        };
        store
            .add_version(
                &renewed,
                &version(&renewed, 2),
                &event("certificate.renew", &target(&a)),
                None,
            )
            .await
            .unwrap();
        assert_eq!(due().await, vec![b.id, a.id]);
    }
}
