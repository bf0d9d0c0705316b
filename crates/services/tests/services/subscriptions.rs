//! Subscriptions through the use cases on a SQLite file: webhook URLs under
//! the outbound policy, secrets sealed at rest (read back from the database
//! file and its rows directly), rows written in clear before sealing sealed
//! at start, re-wrapping after a master-key rotation, and deleting a
//! subscription cancelling its pending deliveries.

use std::sync::Arc;

use certflow_api::CreateSubscriptionRequest;
use certflow_core::DomainError;
use certflow_core::model::Actor;
use certflow_core::notify::{
    Channel, DeliveryQuery, DeliveryState, EventKind, Notification, SecretOpener, WebhookFormat,
    WebhookSecret,
};
use certflow_core::outbound::{OutboundPolicy, OutboundSettings};
use certflow_core::ports::NotificationStore;
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::Services;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

const SECRET: &str = "whsec-5b1d0c7e-never-at-rest";

fn actor() -> Actor {
    Actor {
        subject: "operator".into(),
        source: None,
    }
}

fn request(url: &str, secret: Option<&str>) -> CreateSubscriptionRequest {
    let mut channel = json!({ "type": "webhook", "url": url, "format": "json" });
    if let Some(s) = secret {
        channel["secret"] = json!(s);
    }
    CreateSubscriptionRequest {
        team: "payments".into(),
        events: vec!["renewed".into()],
        channel,
    }
}

fn notification(at: OffsetDateTime) -> Notification {
    Notification {
        id: Uuid::now_v7(),
        kind: EventKind::Renewed,
        team: "payments".into(),
        certificate_id: None,
        certificate_name: None,
        version: None,
        not_after: None,
        days_left: None,
        reason: None,
        summary: "renewed".into(),
        details: json!({}),
        at,
    }
}

/// Every byte of the SQLite database (main file and write-ahead log).
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for name in ["certflow.db", "certflow.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The channel columns of every subscription and delivery row, as stored.
async fn stored_channels(dir: &std::path::Path) -> Vec<String> {
    let url = format!("sqlite://{}", dir.join("certflow.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT channel FROM subscriptions UNION ALL SELECT channel FROM deliveries",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter().map(|(c,)| c).collect()
}

fn local_sealer(current: &MasterKey, previous: &[&MasterKey]) -> Sealer {
    let copy = |k: &MasterKey| MasterKey::from_base64(&k.to_base64()).unwrap();
    Sealer::new(Arc::new(LocalKeyProvider::new(
        copy(current),
        previous.iter().map(|k| copy(k)).collect(),
    )))
}

#[tokio::test]
async fn webhook_urls_naming_refused_addresses_are_refused_at_creation_naming_the_rule() {
    let (_dir, store, services) = crate::sqlite_services(Default::default()).await;
    let services = services.with_notifications(store.clone());
    let now = OffsetDateTime::now_utc();
    for (url, rule) in [
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is loopback"),
        ("http://localhost/hook", "localhost is loopback"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254 is link-local",
        ),
        ("http://10.0.0.5/hook", "10.0.0.5 is private"),
        ("http://192.168.1.1/", "192.168.1.1 is private"),
        ("http://[::1]:9/", "[::1] is loopback"),
        ("http://[fe80::1]/", "[fe80::1] is link-local"),
        ("http://[fc00::1]/", "[fc00::1] is private"),
        ("http://[::ffff:127.0.0.1]/", "is loopback"),
        ("http://0.0.0.0/", "0.0.0.0 is unspecified"),
        ("http://224.0.0.1/", "224.0.0.1 is multicast"),
        ("http://2130706433/", "127.0.0.1 is loopback"),
    ] {
        let err = services
            .create_subscription(&actor(), &request(url, None), now)
            .await
            .unwrap_err();
        let DomainError::Invalid(fields) = &err else {
            panic!("{url}: {err:?}");
        };
        assert_eq!(fields.len(), 1, "{url}: {fields:?}");
        assert_eq!(fields[0].field, "channel.url");
        assert!(
            fields[0].reason.starts_with("refused by outbound policy: ")
                && fields[0].reason.contains(rule)
                && fields[0].reason.contains("[outbound] allow"),
            "{url}: {}",
            fields[0].reason
        );
    }
    assert!(store.list_subscriptions(None).await.unwrap().is_empty());

    // What an administrator allow-lists is accepted.
    let allowing = services.with_outbound_policy(Arc::new(
        OutboundPolicy::new(&OutboundSettings {
            allow: vec!["127.0.0.1/32".into(), "10.0.0.0/8".into()],
        })
        .unwrap(),
    ));
    for url in ["http://127.0.0.1:8080/hook", "http://10.0.0.5/hook"] {
        allowing
            .create_subscription(&actor(), &request(url, None), now)
            .await
            .unwrap();
    }
    // A public name passes creation (its addresses are checked at delivery).
    allowing
        .create_subscription(&actor(), &request("https://hooks.example.com/x", None), now)
        .await
        .unwrap();
    // A sealed secret is the server's to write, not the caller's.
    let mut forged = request("https://hooks.example.com/x", None);
    forged.channel["secret"] = json!({ "sealed": "ZW52ZWxvcGU=" });
    let err = allowing
        .create_subscription(&actor(), &forged, now)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("channel.secret"), "{err:?}");
}

#[tokio::test]
async fn webhook_secrets_are_sealed_at_rest_and_opened_only_for_delivery() {
    let (dir, store, services) = crate::sqlite_services(Default::default()).await;
    let services = services.with_notifications(store.clone());
    let now = OffsetDateTime::now_utc();
    let sub = services
        .create_subscription(
            &actor(),
            &request("https://hooks.example.com/certflow", Some(SECRET)),
            now,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            &sub.channel,
            Channel::Webhook {
                secret: Some(WebhookSecret::Sealed(_)),
                ..
            }
        ),
        "{:?}",
        sub.channel
    );
    assert_eq!(
        certflow_services::redacted(&sub.channel)["signed"],
        json!(true)
    );
    store.publish(&notification(now), None).await.unwrap();

    let rows = stored_channels(dir.path()).await;
    assert_eq!(rows.len(), 2, "the subscription and its delivery: {rows:?}");
    for row in &rows {
        assert!(!row.contains(SECRET), "{row}");
        assert!(row.contains("\"secret\":{\"sealed\":\""), "{row}");
    }
    assert!(!contains(&database_bytes(dir.path()), SECRET));

    // The dispatcher's opener gets the secret back for this subscription only.
    let claimed = store
        .claim_deliveries(now, now + time::Duration::minutes(1), 10)
        .await
        .unwrap();
    let Channel::Webhook {
        secret: Some(WebhookSecret::Sealed(envelope)),
        ..
    } = &claimed[0].channel
    else {
        panic!("{:?}", claimed[0].channel);
    };
    let opener = services.secret_opener();
    assert_eq!(
        opener
            .open(claimed[0].subscription_id, envelope)
            .await
            .unwrap(),
        SECRET
    );
    assert!(matches!(
        opener.open(Uuid::now_v7(), envelope).await,
        Err(DomainError::Integrity(_))
    ));
}

#[tokio::test]
async fn secrets_stored_in_clear_are_sealed_in_place_and_rewrapped_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        certflow_store::SqliteStore::open(&dir.path().join("certflow.db"))
            .await
            .unwrap(),
    );
    let blobs = Arc::new(certflow_blob::ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let old_key = MasterKey::generate().unwrap();
    let services = Services::new(
        store.clone(),
        blobs.clone(),
        local_sealer(&old_key, &[]),
        None,
    )
    .with_notifications(store.clone());
    let now = OffsetDateTime::now_utc();
    // A subscription as an earlier release stored it, with a pending delivery.
    let legacy = certflow_core::notify::Subscription {
        id: Uuid::now_v7(),
        team: "payments".into(),
        events: vec![EventKind::Renewed],
        channel: Channel::Webhook {
            url: "https://hooks.example.com/legacy".into(),
            secret: Some(WebhookSecret::Plain(SECRET.into())),
            format: WebhookFormat::Slack,
        },
        created_at: now,
    };
    let audit = certflow_core::model::AuditEvent::success(
        now,
        &actor(),
        "subscription.create",
        format!("subscription/{}", legacy.id),
        json!({}),
    );
    store.insert_subscription(&legacy, &audit).await.unwrap();
    store.publish(&notification(now), None).await.unwrap();
    assert!(
        stored_channels(dir.path())
            .await
            .iter()
            .all(|c| c.contains(SECRET))
    );

    let report = services.seal_webhook_secrets(&actor(), now).await.unwrap();
    assert_eq!((report.sealed, report.rows), (1, 2));
    for row in stored_channels(dir.path()).await {
        assert!(!row.contains(SECRET), "{row}");
    }
    // Idempotent: nothing left in clear.
    let again = services.seal_webhook_secrets(&actor(), now).await.unwrap();
    assert_eq!((again.sealed, again.rows), (0, 0));

    // Rotation: the new key seals, the old one only opens until `keys rewrap`.
    let new_key = MasterKey::generate().unwrap();
    let rotated = Services::new(
        store.clone(),
        blobs.clone(),
        local_sealer(&new_key, &[&old_key]),
        None,
    )
    .with_notifications(store.clone());
    let report = rotated.rewrap_keys(&actor(), now).await.unwrap();
    assert_eq!(report.rewrapped, 1, "{report:?}");
    let new_only = Services::new(store.clone(), blobs, local_sealer(&new_key, &[]), None)
        .with_notifications(store.clone());
    let delivery = store
        .claim_deliveries(now, now + time::Duration::minutes(1), 10)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let Channel::Webhook {
        secret: Some(WebhookSecret::Sealed(envelope)),
        format,
        ..
    } = &delivery.channel
    else {
        panic!("{:?}", delivery.channel);
    };
    assert_eq!(*format, WebhookFormat::Slack);
    assert_eq!(
        new_only
            .secret_opener()
            .open(legacy.id, envelope)
            .await
            .unwrap(),
        SECRET
    );
    // The rows hold no secret in clear any more; the text an earlier release
    // wrote may still sit in free pages, the write-ahead log and backups
    // until overwritten (docs/security.md: rotate such secrets).
    for row in stored_channels(dir.path()).await {
        assert!(!row.contains(SECRET), "{row}");
    }
}

#[tokio::test]
async fn deleting_a_subscription_cancels_its_pending_deliveries() {
    let (_dir, store, services) = crate::sqlite_services(Default::default()).await;
    let services = services.with_notifications(store.clone());
    let now = OffsetDateTime::now_utc();
    let sub = services
        .create_subscription(
            &actor(),
            &request("https://hooks.example.com/x", Some(SECRET)),
            now,
        )
        .await
        .unwrap();
    for _ in 0..2 {
        store.publish(&notification(now), None).await.unwrap();
    }
    services
        .delete_subscription(&actor(), sub.id, now)
        .await
        .unwrap();
    let page = services
        .deliveries(&DeliveryQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    assert!(
        page.items
            .iter()
            .all(|d| d.state == DeliveryState::Cancelled),
        "{:?}",
        page.items
    );
    assert!(
        store
            .claim_deliveries(
                now + time::Duration::hours(1),
                now + time::Duration::hours(2),
                10
            )
            .await
            .unwrap()
            .is_empty()
    );
}
