//! Notifications (`NotificationStore`): subscriptions, publishing one
//! delivery per matching subscription, leasing deliveries, recording
//! delivery attempts, cancelling a deleted subscription's deliveries, and
//! replacing stored channels (sealing webhook secrets in place).
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::model::AuditQuery;
use certflow_core::notify::{
    Channel, DeliveryQuery, DeliveryState, EventKind, Notification, WebhookFormat, WebhookSecret,
};
use serde_json::json;
use uuid::Uuid;

use crate::support::{
    DAY, Stores, T0, assert_conflict, assert_not_found, at, audit_ids, event, futures_join_all,
    subscription, webhook,
};

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

store_case! {
    async fn subscriptions_round_trip_and_delete_with_audit(store: &dyn Stores) {
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
}

store_case! {
    async fn publish_creates_one_delivery_per_matching_subscription(store: &dyn Stores) {
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
}

store_case! {
    async fn claimed_deliveries_are_leased(store: &dyn Stores) {
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
}

store_case! {
    async fn record_attempt_tracks_success_retry_and_give_up(store: &dyn Stores) {
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
}

store_case! {
    /// Deleting a subscription stops its pending deliveries at once (they are
    /// `cancelled`, never claimed again); delivered ones and other
    /// subscriptions' stay as they were. An attempt in flight during the
    /// delete is still recorded, and a failure of it is not retried.
    async fn deleting_a_subscription_cancels_its_pending_deliveries(store: &dyn Stores) {
        let doomed = subscription(
            "payments",
            &[EventKind::Renewed],
            webhook("https://doomed.example.com", None),
        );
        let kept = subscription(
            "payments",
            &[EventKind::Renewed],
            webhook("https://kept.example.com", None),
        );
        for sub in [&doomed, &kept] {
            store
                .insert_subscription(sub, &event("subscription.create", "s"))
                .await
                .unwrap();
        }
        for i in 0..3 {
            store
                .publish(
                    &notification(EventKind::Renewed, "payments", None, T0 + i),
                    None,
                )
                .await
                .unwrap();
        }
        // The first notification reaches both; the second is in flight to
        // the doomed subscription when it is deleted; the third waits.
        let first = store
            .claim_deliveries(at(T0), at(T0 + 60), 10)
            .await
            .unwrap();
        assert_eq!(first.len(), 2);
        for d in &first {
            store.record_attempt(d.id, at(T0), None, None).await.unwrap();
        }
        let in_flight = store
            .claim_deliveries(at(T0 + 1), at(T0 + 60), 10)
            .await
            .unwrap();
        assert_eq!(in_flight.len(), 2);
        let in_flight_doomed = in_flight
            .iter()
            .find(|d| d.subscription_id == doomed.id)
            .unwrap()
            .id;

        store
            .delete_subscription(doomed.id, &event("subscription.delete", "s"))
            .await
            .unwrap();
        let all = store.list_deliveries(&deliveries(None)).await.unwrap().items;
        let state_of = |sub: Uuid| {
            let mut states: Vec<_> = all
                .iter()
                .filter(|d| d.subscription_id == sub)
                .map(|d| d.state)
                .collect();
            states.sort_by_key(|s| s.as_str());
            states
        };
        assert_eq!(
            state_of(doomed.id),
            vec![
                DeliveryState::Cancelled,
                DeliveryState::Cancelled,
                DeliveryState::Delivered
            ]
        );
        assert_eq!(
            state_of(kept.id),
            vec![
                DeliveryState::Delivered,
                DeliveryState::Pending,
                DeliveryState::Pending
            ]
        );
        // Nothing of the deleted subscription is claimed again, even after
        // the in-flight lease runs out.
        let later = store
            .claim_deliveries(at(T0 + 3600), at(T0 + 3700), 10)
            .await
            .unwrap();
        assert_eq!(later.len(), 2);
        assert!(later.iter().all(|d| d.subscription_id == kept.id), "{later:?}");
        let cancelled = store
            .list_deliveries(&DeliveryQuery {
                state: Some(DeliveryState::Cancelled),
                ..deliveries(None)
            })
            .await
            .unwrap();
        assert_eq!(cancelled.total, 2);

        // The in-flight attempt ends in failure: recorded, not retried.
        store
            .record_attempt(
                in_flight_doomed,
                at(T0 + 2),
                Some("connection refused"),
                Some(at(T0 + 30)),
            )
            .await
            .unwrap();
        let attempts = store.list_attempts(in_flight_doomed).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].error.as_deref(), Some("connection refused"));
        let d = store
            .list_deliveries(&deliveries(None))
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|d| d.id == in_flight_doomed)
            .unwrap();
        assert_eq!(
            (d.state, d.attempts, d.last_error.as_deref()),
            (DeliveryState::Cancelled, 1, Some("connection refused"))
        );
        assert!(
            store
                .claim_deliveries(at(T0 + 7200), at(T0 + 7300), 10)
                .await
                .unwrap()
                .iter()
                .all(|d| d.subscription_id == kept.id)
        );
    }
}

store_case! {
    /// The stored channels with a webhook secret in clear or sealed, one
    /// entry per distinct (subscription, stored text) across subscriptions
    /// and their deliveries; replacing one rewrites the subscription and its
    /// deliveries that still hold that exact text, and nothing else.
    async fn channels_with_secrets_are_listed_and_replaced_in_place(store: &dyn Stores) {
        let plain = subscription(
            "payments",
            &[EventKind::Renewed],
            webhook("https://a.example.com/\"secret\":{", Some("0123456789abcdef")),
        );
        let unsigned = subscription(
            "payments",
            &[EventKind::Renewed],
            webhook("https://b.example.com/?secret=x", None),
        );
        let sealed_channel = Channel::Webhook {
            url: "https://c.example.com".into(),
            secret: Some(WebhookSecret::Sealed("ZW52ZWxvcGU=".into())),
            format: WebhookFormat::Slack,
        };
        let sealed = subscription("payments", &[EventKind::Renewed], sealed_channel.clone());
        let sns = subscription(
            "payments",
            &[EventKind::Renewed],
            Channel::Sns {
                topic_arn: "arn:aws:sns:eu-west-1:123456789012:secret".into(),
            },
        );
        for sub in [&plain, &unsigned, &sealed, &sns] {
            store
                .insert_subscription(sub, &event("subscription.create", "s"))
                .await
                .unwrap();
        }
        store
            .publish(&notification(EventKind::Renewed, "payments", None, T0), None)
            .await
            .unwrap();

        let in_clear = store.channels_with_secrets(false).await.unwrap();
        assert_eq!(in_clear.len(), 1, "{in_clear:?}");
        assert_eq!(
            (in_clear[0].subscription_id, &in_clear[0].channel),
            (plain.id, &plain.channel)
        );
        let already = store.channels_with_secrets(true).await.unwrap();
        assert_eq!(already.len(), 1, "{already:?}");
        assert_eq!(already[0].channel, sealed_channel);

        let now_sealed = Channel::Webhook {
            url: "https://a.example.com/\"secret\":{".into(),
            secret: Some(WebhookSecret::Sealed("c2VhbGVk".into())),
            format: WebhookFormat::Json,
        };
        // Stale text (someone replaced it meanwhile): nothing changes.
        assert_eq!(
            store
                .replace_channel(plain.id, "{\"type\":\"webhook\"}", &now_sealed)
                .await
                .unwrap(),
            0
        );
        // Another subscription's id: nothing changes either.
        assert_eq!(
            store
                .replace_channel(sealed.id, &in_clear[0].stored, &now_sealed)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .replace_channel(plain.id, &in_clear[0].stored, &now_sealed)
                .await
                .unwrap(),
            2,
            "the subscription and its one delivery"
        );
        assert!(store.channels_with_secrets(false).await.unwrap().is_empty());
        assert_eq!(store.channels_with_secrets(true).await.unwrap().len(), 2);
        assert_eq!(
            store.get_subscription(plain.id).await.unwrap().unwrap().channel,
            now_sealed
        );
        let delivery = store
            .claim_deliveries(at(T0), at(T0 + 60), 10)
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.subscription_id == plain.id)
            .unwrap();
        assert_eq!(delivery.channel, now_sealed);
        assert_eq!(
            store.get_subscription(unsigned.id).await.unwrap().unwrap(),
            unsigned
        );
    }
}

store_case! {
    /// Notifications published at once (one group commit) get exactly the
    /// deliveries they would one at a time: one per subscription of their
    /// team that wants their kind.
    async fn concurrent_publishes_deliver_to_matching_subscriptions(store: &dyn Stores) {
        for (team, kinds) in [
            ("web", &[EventKind::Issued][..]),
            ("web", &[EventKind::Issued, EventKind::Revoked][..]),
            ("db", &[EventKind::Revoked][..]),
        ] {
            let sub = subscription(team, kinds, webhook("https://h.example.com", None));
            store
                .insert_subscription(&sub, &event("subscription.create", "s"))
                .await
                .unwrap();
        }
        let batch: Vec<Notification> = (0..24)
            .map(|i| {
                let team = if i % 2 == 0 { "web" } else { "db" };
                let kind = if i % 3 == 0 { EventKind::Revoked } else { EventKind::Issued };
                notification(kind, team, None, T0 + i)
            })
            .collect();
        let recorded = futures_join_all(batch.iter().map(|n| store.publish(n, None))).await;
        assert!(recorded.into_iter().all(|r| r.unwrap()));
        // web: Issued -> 2 subscriptions, Revoked -> 1; db: Revoked -> 1, Issued -> 0.
        let want = |team: &str| -> u64 {
            batch
                .iter()
                .filter(|n| n.team == team)
                .map(|n| match (team, n.kind) {
                    ("web", EventKind::Issued) => 2,
                    ("web", _) | ("db", EventKind::Revoked) => 1,
                    _ => 0,
                })
                .sum()
        };
        for team in ["web", "db"] {
            let got = store.list_deliveries(&deliveries(Some(team))).await.unwrap();
            assert_eq!(got.total, want(team), "{team}");
        }
    }
}
