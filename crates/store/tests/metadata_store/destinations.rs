//! Destinations (`DestinationStore`): attaching (audited, one per place),
//! the outbox claim (due on attach and on every new version, backoff after
//! failures, leases), attempts, read-back drift and detaching.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::destinations::{
    AttemptOutcome, AwsTarget, Destination, DestinationKind, DestinationStatus, DestinationStore,
};
use certflow_core::ports::MetadataStore;
use uuid::Uuid;

use crate::support::{
    T0, actions, assert_conflict, assert_not_found, at, certificate, create, event, seed_issuer,
    target, version,
};

const LISTENER: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2";

fn destination(cert: Uuid, kind: DestinationKind, secs: i64) -> Destination {
    Destination {
        id: Uuid::now_v7(),
        certificate_id: cert,
        kind,
        target: AwsTarget {
            region: "eu-west-1".into(),
            role_arn: None,
            role_external_id: None,
        },
        listener_arn: (kind == DestinationKind::AwsElbv2Listener).then(|| LISTENER.to_owned()),
        default_certificate: false,
        status: DestinationStatus::Pending,
        external_id: None,
        delivered_version: None,
        delivered_serial: None,
        attempts: 0,
        next_attempt_at: at(secs),
        last_error: None,
        verified_at: None,
        created_by: "alice".into(),
        created_at: at(secs),
        updated_at: at(secs),
    }
}

fn delivered(arn: &str, serial: &str) -> AttemptOutcome {
    AttemptOutcome::Delivered {
        external_id: arn.into(),
        serial: serial.into(),
    }
}

store_case! {
    async fn destinations_are_due_on_attach_and_on_every_new_version<S>(store: &S)
    where
        S: MetadataStore + DestinationStore,
    {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "shop.example.com", "web");
        let v1 = create(store, &cert).await;
        let acm = destination(cert.id, DestinationKind::AwsAcm, T0 + 10);
        let lb = destination(cert.id, DestinationKind::AwsElbv2Listener, T0 + 11);
        store
            .insert_destination(&lb, &event("certificate.destination.attach", &target(&cert)))
            .await
            .unwrap();
        store
            .insert_destination(&acm, &event("certificate.destination.attach", &target(&cert)))
            .await
            .unwrap();
        // The same place twice is a conflict; an unknown certificate is not found.
        let mut again = destination(cert.id, DestinationKind::AwsElbv2Listener, T0 + 12);
        again.id = Uuid::now_v7();
        assert_conflict(
            store
                .insert_destination(&again, &event("certificate.destination.attach", "x"))
                .await,
            &["already has"],
        );
        assert_not_found(
            store
                .insert_destination(
                    &destination(Uuid::new_v4(), DestinationKind::AwsAcm, T0),
                    &event("certificate.destination.attach", "x"),
                )
                .await,
        );
        assert_eq!(
            actions(store, "certificate.destination").await,
            vec!["certificate.destination.attach", "certificate.destination.attach"]
        );

        // Due at once, ACM before the listener; leased while in hand.
        let due = store.claim_destinations(at(T0 + 20), at(T0 + 320), 10).await.unwrap();
        let kinds: Vec<_> = due.iter().map(|d| d.destination.kind).collect();
        assert_eq!(kinds, vec![DestinationKind::AwsAcm, DestinationKind::AwsElbv2Listener]);
        assert!(due.iter().all(|d| d.version == 1));
        assert!(store.claim_destinations(at(T0 + 21), at(T0 + 321), 10).await.unwrap().is_empty());

        // ACM delivered; the listener fails and backs off.
        let arn = "arn:aws:acm:eu-west-1:123456789012:certificate/1";
        store
            .record_destination_attempt(acm.id, 1, at(T0 + 22), &delivered(arn, &v1.serial), &event("certificate.destination.push", "x"))
            .await
            .unwrap();
        store
            .record_destination_attempt(
                lb.id,
                1,
                at(T0 + 23),
                &AttemptOutcome::Failed {
                    external_id: Some(arn.into()),
                    error: "ListenerNotFound".into(),
                    retry_at: at(T0 + 100),
                },
                &event("certificate.destination.push", "x"),
            )
            .await
            .unwrap();
        let got = store.get_destination(lb.id).await.unwrap().unwrap();
        assert_eq!(got.status, DestinationStatus::Failed);
        assert_eq!(got.attempts, 1);
        assert_eq!(got.last_error.as_deref(), Some("ListenerNotFound"));
        assert_eq!(got.external_id.as_deref(), Some(arn), "the ARN is kept for the retry");
        let got = store.get_destination(acm.id).await.unwrap().unwrap();
        assert_eq!(
            (got.status, got.delivered_version, got.delivered_serial.as_deref(), got.external_id.as_deref()),
            (DestinationStatus::Delivered, Some(1), Some(v1.serial.as_str()), Some(arn))
        );
        // Undelivered (the compliance report's read): the failed listener
        // only, within the reader's teams.
        let ids = |v: Vec<certflow_core::destinations::DueDestination>| {
            v.into_iter().map(|d| d.destination.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(store.undelivered_destinations(None).await.unwrap()), vec![lb.id]);
        let web = ["web".to_owned()];
        assert_eq!(ids(store.undelivered_destinations(Some(&web)).await.unwrap()), vec![lb.id]);
        let other = ["other".to_owned()];
        assert!(store.undelivered_destinations(Some(&other)).await.unwrap().is_empty());
        assert!(store.undelivered_destinations(Some(&[])).await.unwrap().is_empty());

        // Nothing due before the retry time; the listener at it.
        assert!(store.claim_destinations(at(T0 + 50), at(T0 + 350), 10).await.unwrap().is_empty());
        let due = store.claim_destinations(at(T0 + 100), at(T0 + 400), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].destination.id, lb.id);
        store
            .record_destination_attempt(
                lb.id,
                1,
                at(T0 + 101),
                &AttemptOutcome::Failed { external_id: None, error: "still".into(), retry_at: at(T0 + 10_000) },
                &event("certificate.destination.push", "x"),
            )
            .await
            .unwrap();

        // A new version: both due at once, the backing-off one too.
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        let v2 = version(&renewed, 2);
        store
            .add_version(&renewed, &v2, &event("certificate.renew", &target(&cert)), None)
            .await
            .unwrap();
        let due = store.claim_destinations(at(T0 + 200), at(T0 + 500), 10).await.unwrap();
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|d| d.version == 2));
        // The delivered ACM destination serves version 1 of 2: undelivered too.
        let mut both = ids(store.undelivered_destinations(None).await.unwrap());
        both.sort();
        let mut expected = vec![acm.id, lb.id];
        expected.sort();
        assert_eq!(both, expected);

        let attempts = store.destination_attempts(lb.id, 10).await.unwrap();
        assert_eq!(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(attempts[0].error.as_deref(), Some("still"));

        let stats = store.destination_stats().await.unwrap();
        assert_eq!(
            stats.by_status,
            vec![
                (DestinationKind::AwsAcm, DestinationStatus::Delivered, 1),
                (DestinationKind::AwsElbv2Listener, DestinationStatus::Failed, 1),
            ]
        );

        // Detach: gone with its attempts, audited; twice is not found.
        store
            .delete_destination(lb.id, &event("certificate.destination.detach", &target(&cert)))
            .await
            .unwrap();
        assert!(store.get_destination(lb.id).await.unwrap().is_none());
        assert!(store.destination_attempts(lb.id, 10).await.unwrap().is_empty());
        assert_not_found(
            store
                .delete_destination(lb.id, &event("certificate.destination.detach", "x"))
                .await,
        );
        assert_eq!(store.certificate_destinations(cert.id).await.unwrap().len(), 1);
    }
}

store_case! {
    async fn destinations_drift_makes_a_delivered_destination_due_again<S>(store: &S)
    where
        S: MetadataStore + DestinationStore,
    {
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "web");
        let v1 = create(store, &cert).await;
        let acm = destination(cert.id, DestinationKind::AwsAcm, T0);
        store
            .insert_destination(&acm, &event("certificate.destination.attach", "x"))
            .await
            .unwrap();
        store.claim_destinations(at(T0 + 1), at(T0 + 300), 10).await.unwrap();
        store
            .record_destination_attempt(acm.id, 1, at(T0 + 2), &delivered("arn:1", &v1.serial), &event("certificate.destination.push", "x"))
            .await
            .unwrap();
        // Read back once it is older than the check interval.
        assert!(store.verify_candidates(at(T0 + 2), 10).await.unwrap().is_empty());
        let due = store.verify_candidates(at(T0 + 3600), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        store.record_verification(acm.id, at(T0 + 3600), None).await.unwrap();
        assert!(store.verify_candidates(at(T0 + 3600), 10).await.unwrap().is_empty());
        assert!(store.claim_destinations(at(T0 + 3601), at(T0 + 3900), 10).await.unwrap().is_empty());
        // Drift: pending again, due at once.
        store
            .record_verification(acm.id, at(T0 + 7200), Some("ACM serves serial 01"))
            .await
            .unwrap();
        let got = store.get_destination(acm.id).await.unwrap().unwrap();
        assert_eq!(got.status, DestinationStatus::Pending);
        assert_eq!(got.last_error.as_deref(), Some("ACM serves serial 01"));
        let due = store.claim_destinations(at(T0 + 7200), at(T0 + 7500), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].destination.external_id.as_deref(), Some("arn:1"));
    }
}
