//! The audit trail: round trips, filters and paging, every mutation recorded
//! with its event, a failed audit write undoing the mutation, and the hash
//! chain over it (tampering behind the store's back is in `audit_chain`).
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use std::collections::BTreeMap;

use certflow_core::DomainError;
use certflow_core::model::{
    Actor, AuditChainReport, AuditChainTip, AuditEvent, AuditQuery, CertificateQuery, Outcome,
    RevocationReason,
};
use certflow_core::notify::EventKind;
use certflow_core::ports::MetadataStore;
use serde_json::json;
use time::Duration;
use uuid::Uuid;

use crate::support::{
    DAY, Stores, T0, assert_conflict, at, audit_ids, certificate, create, dns, event,
    futures_join_all, issuer, query, seed_issuer, subscription, target, version, warm_up, webhook,
};

store_case! {
    /// A failing audit insert (its id already used) must undo the whole change.
    async fn audit_failure_rolls_back_every_mutation(store: &dyn MetadataStore) {
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

store_case! {
    async fn audit_round_trips_and_rejects_duplicates(store: &dyn MetadataStore) {
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
}

store_case! {
    async fn audit_filters_order_and_pages(store: &dyn MetadataStore) {
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
}

store_case! {
    async fn mutations_record_their_audit_event(store: &dyn MetadataStore) {
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
}

/// Verifies the chains and checks they cover every audit row, each chain
/// numbered 1..=n.
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
    assert_eq!(report.checked, total);
    assert_eq!(report.chains.len(), 16, "{report:?}");
    for (n, tip) in report.chains.iter().enumerate() {
        assert_eq!(tip.chain as usize, n);
        assert_eq!((tip.last_hash.len(), &tip.first_break), (64, &None));
    }
    let linked: u64 = report.chains.iter().map(|t| t.last_seq).sum();
    assert_eq!(linked, total);
    report
}

store_case! {
    async fn audit_chain_of_an_empty_store_verifies(store: &dyn MetadataStore) {
        assert_eq!(
            store.verify_audit_chain().await.unwrap(),
            AuditChainReport {
                checked: 0,
                chains: (0..16)
                    .map(|chain| AuditChainTip {
                        chain,
                        last_seq: 0,
                        last_hash: "0".repeat(64),
                        first_break: None,
                    })
                    .collect(),
                first_break: None,
            }
        );
    }
}

store_case! {
    /// Every kind of audited write, refused writes that roll back, and more
    /// events than one verification page (1000) holds.
    async fn audit_chain_verifies_after_mixed_writes(store: &dyn Stores) {
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
}

store_case! {
    /// Writers on every connection of the pool at once form gapless chains
    /// (on PostgreSQL each takes a chain head no other writer holds; on
    /// SQLite they take turns on chain 0).
    async fn concurrent_audited_writes_form_gapless_chains(store: &dyn MetadataStore) {
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
}

store_case! {
    /// Lone audit events written at once each land exactly once, each caller
    /// answered only once its event is stored, and the chains verify.
    async fn concurrent_lone_events_all_land(store: &dyn MetadataStore) {
        warm_up(store).await;
        let events: Vec<AuditEvent> = (0..100)
            .map(|i| event("certificate.key.download", &format!("certificate/{i}")))
            .collect();
        let results = futures_join_all(events.iter().map(|e| async move {
            store.append_audit(e).await?;
            // Answered: the event is there for any reader.
            let found = audit_ids(
                store,
                AuditQuery {
                    target: Some(e.target.clone()),
                    ..AuditQuery::default()
                },
            )
            .await;
            Ok::<_, DomainError>(found)
        }))
        .await;
        for (e, r) in events.iter().zip(results) {
            assert_eq!(r.unwrap(), vec![e.id]);
        }
        let mut stored = audit_ids(store, AuditQuery::default()).await;
        stored.sort();
        let mut want: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        want.sort();
        assert_eq!(stored, want);
        let report = assert_chain_intact(store).await;
        assert_eq!(report.checked, 100);
    }
}

store_case! {
    /// Among events written at once, one whose id is already stored fails
    /// alone, with the conflict it would get written by itself; the others
    /// land, the stored event keeps its content, and the chains verify.
    async fn a_duplicate_among_concurrent_events_fails_alone(store: &dyn MetadataStore) {
        warm_up(store).await;
        let taken = event("certificate.create", "certificate/taken");
        store.append_audit(&taken).await.unwrap();
        let mut events: Vec<AuditEvent> = (0..40)
            .map(|i| event("certificate.key.download", &format!("certificate/{i}")))
            .collect();
        let mut clash = event("certificate.delete", "certificate/clash");
        clash.id = taken.id;
        events.insert(20, clash);
        let results =
            futures_join_all(events.iter().map(|e| async move { store.append_audit(e).await }))
                .await;
        for (i, r) in results.into_iter().enumerate() {
            if i == 20 {
                assert_conflict(r, &[&taken.id.to_string()]);
            } else {
                r.unwrap();
            }
        }
        let trail = store
            .list_audit(&AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(trail.total, 41);
        let stored: Vec<&AuditEvent> = trail.items.iter().filter(|e| e.id == taken.id).collect();
        assert_eq!(stored, vec![&taken]);
        for e in events.iter().filter(|e| e.id != taken.id) {
            assert!(trail.items.contains(e), "{e:?} missing");
        }
        let report = assert_chain_intact(store).await;
        assert_eq!(report.checked, 41);
    }
}

store_case! {
    /// Links made from any text verify: PostgreSQL hashes a link's head part
    /// in the database and SQLite here, over the same bytes (text beyond
    /// ASCII, an empty and a missing source, long details).
    async fn audit_links_of_any_text_verify(store: &dyn MetadataStore) {
        let mut wide = event_at(T0, "certificate.download", "certificate/ümlaut-✓", "zoë 🔐");
        wide.actor.source = Some(String::new());
        wide.details = json!({ "note": "tab\t, quote \", nul \u{0} escaped, ß", "n": -0.5 });
        let mut long = event_at(T0 + 1, "certificate.update", "certificate/long", "ops");
        long.actor.source = Some("2001:db8::1".into());
        long.details = json!({ "pem": "A".repeat(20_000) });
        let bare = event_at(T0 + 2, "system.start", "server", "system");
        for e in [&wide, &long, &bare] {
            store.append_audit(e).await.unwrap();
        }
        let report = assert_chain_intact(store).await;
        assert_eq!(report.checked, 3);
        let page = store
            .list_audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        for e in [&wide, &long, &bare] {
            assert!(page.items.contains(e), "{e:?}");
        }
    }
}

store_case! {
    async fn audit_filters_by_outcome_and_time(store: &dyn MetadataStore) {
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
}
