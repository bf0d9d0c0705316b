//! Issuers: every field round-trips, names and ids conflict, and exactly one
//! issuer is the default, also under concurrent changes.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::model::{AuditQuery, Certificate, IssuerKind, KeyType};
use certflow_core::ports::MetadataStore;
use uuid::Uuid;

use crate::support::{
    DAY, T0, assert_conflict, assert_not_found, at, audit_ids, certificate, create, event, issuer,
    seed_issuer, target, version, warm_up,
};

store_case! {
    async fn issuer_round_trips_every_field(store: &dyn MetadataStore) {
        let mut imported = issuer("imported", false);
        imported.root_key_blob = None;
        imported.key_type = KeyType::Rsa4096;
        imported.created_at = at(T0 - DAY);
        let main = issuer("main", true);
        let audit = event("issuer.import", "issuer/imported");
        store.insert_issuer(&imported, &audit).await.unwrap();
        store
            .insert_issuer(&main, &event("issuer.create", "issuer/main"))
            .await
            .unwrap();

        assert_eq!(
            store.get_issuer(imported.id).await.unwrap(),
            Some(imported.clone())
        );
        assert_eq!(store.get_issuer(main.id).await.unwrap(), Some(main.clone()));
        assert_eq!(store.get_issuer(Uuid::new_v4()).await.unwrap(), None);
        // Default first, although it was created later.
        assert_eq!(store.list_issuers().await.unwrap(), vec![main, imported]);
        let trail = store
            .list_audit(&AuditQuery {
                target: Some("issuer/imported".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(trail.items, vec![audit]);
    }
}

store_case! {
    async fn issuer_conflicts(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let again = store
            .insert_issuer(&main, &event("issuer.create", "issuer/main"))
            .await;
        assert_conflict(again, &["already exists"]);
        let second_default = issuer("second", true);
        let result = store
            .insert_issuer(&second_default, &event("issuer.create", "issuer/second"))
            .await;
        assert_conflict(result, &["default"]);
        assert_eq!(store.get_issuer(second_default.id).await.unwrap(), None);
    }
}

store_case! {
    async fn set_default_issuer_moves_the_flag(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let other = issuer("other", false);
        store
            .insert_issuer(&other, &event("issuer.import", "issuer/other"))
            .await
            .unwrap();
        store
            .set_default_issuer(other.id, &event("issuer.set-default", "issuer/other"))
            .await
            .unwrap();
        let list = store.list_issuers().await.unwrap();
        assert_eq!(
            list.iter()
                .map(|i| (i.id, i.is_default))
                .collect::<Vec<_>>(),
            vec![(other.id, true), (main.id, false)]
        );
        // Idempotent for the current default.
        store
            .set_default_issuer(other.id, &event("issuer.set-default", "issuer/other"))
            .await
            .unwrap();
        assert!(
            store
                .get_issuer(other.id)
                .await
                .unwrap()
                .unwrap()
                .is_default
        );

        let missing = Uuid::new_v4();
        let audit = event("issuer.set-default", "issuer/missing");
        assert_not_found(store.set_default_issuer(missing, &audit).await);
        // Nothing changed, not even the audit trail.
        assert!(
            store
                .get_issuer(other.id)
                .await
                .unwrap()
                .unwrap()
                .is_default
        );
        assert!(!store.get_issuer(main.id).await.unwrap().unwrap().is_default);
        assert!(
            audit_ids(
                store,
                AuditQuery {
                    target: Some("issuer/missing".into()),
                    ..AuditQuery::default()
                }
            )
            .await
            .is_empty()
        );
    }
}

store_case! {
    /// Racing changes of the default issuer all succeed, one after another,
    /// and leave exactly one default.
    async fn concurrent_default_changes_leave_one_default(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let mut others = Vec::new();
        for i in 0..4 {
            let other = issuer(&format!("other{i}"), false);
            store
                .insert_issuer(&other, &event("issuer.import", "issuer/other"))
                .await
                .unwrap();
            others.push(other);
        }
        let attempt = |i: usize| {
            let id = others[i].id;
            let audit = event("issuer.set-default", "issuer/other");
            async move { store.set_default_issuer(id, &audit).await }
        };
        warm_up(store).await;
        let (a, b, c, d) = tokio::join!(attempt(0), attempt(1), attempt(2), attempt(3));
        for r in [a, b, c, d] {
            r.unwrap();
        }
        let defaults: Vec<Uuid> = store
            .list_issuers()
            .await
            .unwrap()
            .into_iter()
            .filter(|i| i.is_default)
            .map(|i| i.id)
            .collect();
        assert_eq!(defaults.len(), 1);
        assert_ne!(defaults[0], main.id);
    }
}

store_case! {
    async fn an_issuer_recorded_with_a_certificate_commits_with_it_or_not_at_all(
        store: &dyn MetadataStore,
    ) {
        let main = seed_issuer(store).await;
        create(store, &certificate(&main, "taken", "web")).await;
        let before = audit_ids(store, AuditQuery::default()).await;
        let mut external = issuer("external: Foreign CA", false);
        external.kind = IssuerKind::External;
        external.key_blob = String::new();
        external.root_key_blob = None;
        let record = |cert: &Certificate| {
            (
                event("issuer.external", &format!("issuer/{}", external.id)),
                version(cert, 1),
                event("certificate.import", &target(cert)),
            )
        };

        // The certificate's name is taken in its team: neither is stored.
        let clash = certificate(&external, "taken", "web");
        let (issuer_audit, first, audit) = record(&clash);
        let result = store
            .create_certificate_with_issuer(&external, &issuer_audit, &clash, &first, &audit)
            .await;
        assert_conflict(result, &["taken", "web"]);
        assert_eq!(store.get_issuer(external.id).await.unwrap(), None);
        assert_eq!(store.get_certificate(clash.id).await.unwrap(), None);
        assert_eq!(audit_ids(store, AuditQuery::default()).await, before);

        // Otherwise both are, each with its event, the chain intact.
        let fine = certificate(&external, "fine", "web");
        let (issuer_audit, first, audit) = record(&fine);
        store
            .create_certificate_with_issuer(&external, &issuer_audit, &fine, &first, &audit)
            .await
            .unwrap();
        assert_eq!(
            store.get_issuer(external.id).await.unwrap(),
            Some(external.clone())
        );
        let stored = store.get_certificate(fine.id).await.unwrap().unwrap();
        assert_eq!(stored.issuer_id, external.id);
        assert_eq!(store.list_versions(fine.id).await.unwrap(), vec![first]);
        let after = audit_ids(store, AuditQuery::default()).await;
        assert_eq!(after.len(), before.len() + 2);
        assert!(after.contains(&issuer_audit.id) && after.contains(&audit.id));
        assert_eq!(store.verify_audit_chain().await.unwrap().first_break, None);

        // An issuer id already stored: a conflict, and the certificate is not stored.
        let late = certificate(&external, "late", "web");
        let (issuer_audit, first, audit) = record(&late);
        let result = store
            .create_certificate_with_issuer(&external, &issuer_audit, &late, &first, &audit)
            .await;
        assert_conflict(result, &["already exists"]);
        assert_eq!(store.get_certificate(late.id).await.unwrap(), None);
    }
}
