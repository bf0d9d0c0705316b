//! Issuers: every field round-trips, names and ids conflict, and exactly one
//! issuer is the default, also under concurrent changes.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::model::{AuditQuery, KeyType};
use certflow_core::ports::MetadataStore;
use uuid::Uuid;

use crate::support::{
    DAY, T0, assert_conflict, assert_not_found, at, audit_ids, event, issuer, seed_issuer, warm_up,
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
