//! The AWS KMS key provider against moto_server, over the real AWS SDK. Each
//! test starts its own moto (under a second), so tests share no state and need
//! no reset.
//!
//! moto_server must be installed (`scripts/peers.sh`): without it these tests
//! fail, they never skip, so a CI machine missing it cannot pass silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_sdk_kms::config::{Credentials, Region};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use certflow_core::DomainError;
use certflow_seal::{EncryptionContext, KmsKeyProvider, Sealer};
use certflow_testkit::{Moto, free_port};

const REGION: &str = "eu-west-1";
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing";

/// A loopback endpoint nothing listens on: connections are refused at once.
fn closed_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// What these tests do with a moto: KMS keys and providers over them.
trait MotoExt {
    fn kms_admin(&self) -> aws_sdk_kms::Client;
    async fn create_key(&self, alias: Option<&str>) -> String;
    async fn kms(&self, key_id: &str, previous: &[&str]) -> Result<KmsKeyProvider, DomainError>;
    async fn sealer(&self, key_id: &str, previous: &[&str]) -> Sealer;
}

impl MotoExt for Moto {
    /// The key-management client used to set KMS up, outside the code under test.
    fn kms_admin(&self) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(credentials())
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// A symmetric key, optionally under an alias; returns its ARN.
    async fn create_key(&self, alias: Option<&str>) -> String {
        let kms = self.kms_admin();
        let key = kms.create_key().send().await.unwrap();
        let meta = key.key_metadata().unwrap();
        if let Some(alias) = alias {
            kms.create_alias()
                .alias_name(alias)
                .target_key_id(meta.key_id())
                .send()
                .await
                .unwrap();
        }
        meta.arn().unwrap().to_owned()
    }

    async fn kms(&self, key_id: &str, previous: &[&str]) -> Result<KmsKeyProvider, DomainError> {
        kms_at(&self.endpoint, key_id, previous).await
    }

    async fn sealer(&self, key_id: &str, previous: &[&str]) -> Sealer {
        Sealer::new(Arc::new(self.kms(key_id, previous).await.unwrap()))
    }
}

fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "certflow-tests")
}

/// Explicit credentials and region through the loader: nothing is read from
/// (or written to) the process environment, and the SDK never looks for the
/// instance metadata service.
async fn kms_at(
    endpoint: &str,
    key_id: &str,
    previous: &[&str],
) -> Result<KmsKeyProvider, DomainError> {
    let loader =
        aws_config::defaults(BehaviorVersion::latest()).credentials_provider(credentials());
    KmsKeyProvider::with_loader(
        loader,
        key_id.into(),
        previous.iter().map(|p| (*p).to_owned()).collect(),
        Some(REGION.into()),
        Some(endpoint.into()),
    )
    .await
}

fn ctx(record: &str, version: u32) -> EncryptionContext {
    EncryptionContext::new("default", "cert-key", record, version)
}

#[tokio::test]
async fn kms_seal_open_roundtrip() {
    let moto = Moto::start().await;
    let arn = moto.create_key(Some("alias/certflow-test")).await;
    let provider = moto.kms("alias/certflow-test", &[]).await.unwrap();
    // The alias is resolved once: envelopes and the provider agree on the ARN.
    assert_eq!(certflow_seal::KeyProvider::current_key_id(&provider), arn);
    let sealer = Sealer::new(Arc::new(provider));
    let secret = b"-----BEGIN PRIVATE KEY----- kms secret";
    let sealed = sealer.seal(secret, &ctx("rec-1", 1)).await.unwrap();
    assert!(!sealed.windows(10).any(|w| w == b"kms secret"));
    assert_eq!(Sealer::key_id_of(&sealed).unwrap(), arn);
    assert_eq!(
        sealer
            .open(&sealed, &ctx("rec-1", 1))
            .await
            .unwrap()
            .as_slice(),
        secret
    );
}

#[tokio::test]
async fn kms_wrong_context_or_other_record_is_integrity() {
    let moto = Moto::start().await;
    let arn = moto.create_key(None).await;
    let sealer = moto.sealer(&arn, &[]).await;
    let secret = b"secret of record one";
    let sealed = sealer.seal(secret, &ctx("rec-1", 1)).await.unwrap();

    for wrong in [
        ctx("rec-1", 2),
        ctx("rec-2", 1),
        EncryptionContext::new("other", "cert-key", "rec-1", 1),
    ] {
        let err = sealer.open(&sealed, &wrong).await.unwrap_err();
        assert!(matches!(err, DomainError::Integrity(_)), "{err}");
        assert!(!err.to_string().contains("secret of record"), "{err}");
    }

    // Record two's envelope carrying record one's wrapped data key: KMS refuses
    // to unwrap it for record two.
    let other = sealer.seal(b"record two", &ctx("rec-2", 1)).await.unwrap();
    let one: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    let mut two: serde_json::Value = serde_json::from_slice(&other).unwrap();
    two["wdk"] = one["wdk"].clone();
    let spliced = serde_json::to_vec(&two).unwrap();
    let err = sealer.open(&spliced, &ctx("rec-2", 1)).await.unwrap_err();
    assert!(matches!(err, DomainError::Integrity(_)), "{err}");

    // Altered wrapped key bytes: refused too, never garbage.
    let mut altered = one.clone();
    let mut wdk = B64.decode(one["wdk"].as_str().unwrap()).unwrap();
    let mid = wdk.len() / 2;
    wdk[mid] ^= 1;
    altered["wdk"] = B64.encode(&wdk).into();
    let err = sealer
        .open(&serde_json::to_vec(&altered).unwrap(), &ctx("rec-1", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::Integrity(_)), "{err}");
}

#[tokio::test]
async fn kms_rotation_previous_key_still_decrypts() {
    let moto = Moto::start().await;
    let old = moto.create_key(Some("alias/certflow-2025")).await;
    let new = moto.create_key(None).await;
    let c = ctx("rec-rot", 3);
    let sealed_old = moto
        .sealer("alias/certflow-2025", &[])
        .await
        .seal(b"old data", &c)
        .await
        .unwrap();

    let rotated = moto.sealer(&new, &["alias/certflow-2025"]).await;
    assert_eq!(
        rotated.open(&sealed_old, &c).await.unwrap().as_slice(),
        b"old data"
    );
    let sealed_new = rotated.seal(b"new data", &c).await.unwrap();
    assert_eq!(Sealer::key_id_of(&sealed_new).unwrap(), new);
    assert_eq!(
        rotated.open(&sealed_new, &c).await.unwrap().as_slice(),
        b"new data"
    );

    // Once the old key is dropped from the configuration its data is refused,
    // naming the key so the operator knows what to add back.
    let err = moto
        .sealer(&new, &[])
        .await
        .open(&sealed_old, &c)
        .await
        .unwrap_err();
    let DomainError::Integrity(msg) = &err else {
        panic!("expected Integrity, got {err}");
    };
    assert!(
        msg.contains(&old) && msg.contains("not configured"),
        "{msg}"
    );
}

#[tokio::test]
async fn kms_wrong_key_id_is_a_clear_error() {
    let moto = Moto::start().await;
    let arn = moto.create_key(None).await;
    for (current, previous) in [
        ("alias/does-not-exist", vec![]),
        (arn.as_str(), vec!["alias/does-not-exist"]),
    ] {
        let err = moto.kms(current, &previous).await.unwrap_err();
        let DomainError::Unavailable { backend, reason } = &err else {
            panic!("expected Unavailable, got {err}");
        };
        assert_eq!(*backend, "kms");
        assert!(
            reason.contains("alias/does-not-exist") && reason.contains("does not exist"),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn kms_unreachable_is_unavailable() {
    let err = kms_at(&closed_endpoint(), "alias/any", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, DomainError::Unavailable { backend: "kms", .. }),
        "{err}"
    );

    // KMS going away after start-up: seal and open fail the same way.
    let moto = Moto::start().await;
    let arn = moto.create_key(None).await;
    let sealer = moto.sealer(&arn, &[]).await;
    let sealed = sealer.seal(b"k", &ctx("rec", 1)).await.unwrap();
    drop(moto);
    let err = sealer.seal(b"k", &ctx("rec", 1)).await.unwrap_err();
    assert!(
        matches!(err, DomainError::Unavailable { backend: "kms", .. }),
        "{err}"
    );
    let err = sealer.open(&sealed, &ctx("rec", 1)).await.unwrap_err();
    assert!(
        matches!(err, DomainError::Unavailable { backend: "kms", .. }),
        "{err}"
    );
}
