//! Audit rows never carry secrets: a realistic session through the use cases
//! (CA set-up, create with an idempotency key, renew, key and PKCS#12
//! downloads, a webhook subscription with a secret, revoke, archive), then
//! every stored audit column is searched for the secrets the session handled.

use std::sync::Arc;

use certflow_api::{CreateCertificateRequest, CreateSubscriptionRequest};
use certflow_blob::ObjectBlobStore;
use certflow_core::model::{Actor, AuditQuery, KeyType};
use certflow_core::ports::{MetadataStore, NotificationStore};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::{CaSettings, Services};
use time::OffsetDateTime;

const WEBHOOK_SECRET: &str = "whsec-7f3a9c1e-do-not-log";
const P12_PASSWORD: &str = "p12-Passw0rd-do-not-log";

async fn session<S>(store: Arc<S>)
where
    S: MetadataStore + NotificationStore + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let master = MasterKey::generate().unwrap();
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(master, vec![])));
    let services =
        Services::new(store.clone(), blobs, sealer, None).with_notifications(store.clone());
    let now = OffsetDateTime::now_utc();
    services
        .ensure_ca(
            &CaSettings {
                name: "test".into(),
                key_type: KeyType::EcdsaP256,
                root_validity_days: 3650,
                intermediate_validity_days: 1825,
            },
            now,
        )
        .await
        .unwrap();
    let alice = Actor {
        subject: "alice".into(),
        source: Some("192.0.2.7".into()),
    };
    let request = CreateCertificateRequest {
        team: "payments".into(),
        names: vec!["api.example.com".into()],
        ..Default::default()
    };
    let id = services
        .create_certificate_idempotent(&alice, &request, Some("create-1"), now)
        .await
        .unwrap()
        .certificate
        .id;
    services.renew(&alice, id, None, now).await.unwrap();
    let first_key = services
        .download_key(&alice, id, Some(1), now)
        .await
        .unwrap();
    let key = services.download_key(&alice, id, None, now).await.unwrap();
    services
        .download_pkcs12(&alice, id, None, P12_PASSWORD, now)
        .await
        .unwrap();
    services
        .create_subscription(
            &alice,
            &CreateSubscriptionRequest {
                team: "payments".into(),
                events: vec!["renewed".into()],
                channel: serde_json::json!({
                    "type": "webhook",
                    "url": "https://hooks.example.com/certflow",
                    "secret": WEBHOOK_SECRET,
                    "format": "json",
                }),
            },
            now,
        )
        .await
        .unwrap();
    services
        .revoke(&alice, id, Some(1), "keyCompromise", now)
        .await
        .unwrap();
    services.archive(&alice, id, now).await.unwrap();

    let trail = store
        .list_audit(&AuditQuery {
            limit: 500,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = trail.items.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "certificate.create",
        "certificate.renew",
        "certificate.key.download",
        "subscription.create",
        "certificate.revoke",
        "certificate.archive",
    ] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    // Every stored column of every row, as one text.
    let stored = serde_json::to_string(&trail.items).unwrap();
    let key_body = |pem: &str| -> Vec<String> {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_owned)
            .collect()
    };
    let mut secrets = vec![
        "PRIVATE KEY".to_owned(),
        WEBHOOK_SECRET.to_owned(),
        P12_PASSWORD.to_owned(),
    ];
    secrets.extend(key_body(&key));
    secrets.extend(key_body(&first_key));
    for secret in &secrets {
        assert!(
            !stored.contains(secret.as_str()),
            "audit rows carry {secret:?}"
        );
    }
    assert_eq!(
        store.verify_audit_chain().await.unwrap().checked,
        trail.total
    );
}

#[tokio::test]
async fn on_sqlite_memory() {
    session(Arc::new(
        certflow_store::SqliteStore::open_memory().await.unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn on_postgres() {
    let (store, _db) = crate::support::postgres().await;
    session(Arc::new(store)).await;
}
