//! The AWS KMS backend against moto: keys created (or adopted from the
//! configuration) as SIGN_VERIFY keys of the CA key type, the key policy
//! naming the signer roles, signatures verifying under `GetPublicKey`'s key,
//! an unreachable endpoint reported as unavailable.
//!
//! moto (5.2.x) ignores `MessageType = DIGEST` and hashes the digest again,
//! so signatures here use `raw_messages`; the digest path is what AWS KMS
//! gets by default.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
    VerificationAlgorithm,
};
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use certflow_core::ca_keys::{CaKeyBackend, CaKeyRef, CaKeyRole, CaKeyStore};
use certflow_core::{DomainError, KeyType};
use certflow_keystore::{KmsCaKeys, KmsSettings};
use certflow_pki::CaPublicKey;
use certflow_testkit::{AWS_REGION, Moto};

fn loader() -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(AWS_REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
}

fn verification(kt: KeyType) -> &'static dyn VerificationAlgorithm {
    match kt {
        KeyType::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
        KeyType::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
        _ => &RSA_PKCS1_2048_8192_SHA256,
    }
}

/// The subjectPublicKey bits of an SPKI DER.
fn bits(spki: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).unwrap();
    spki.subject_public_key.data.to_vec()
}

#[tokio::test]
async fn kms_creates_signs_adopts_and_reports_outages() {
    let moto = Moto::start().await;
    let client = aws_sdk_kms::Client::new(&moto.sdk_config().await);
    let settings = KmsSettings {
        endpoint: Some(moto.endpoint.clone()),
        signer_role_arns: vec!["arn:aws:iam::123456789012:role/certflow-worker".into()],
        raw_messages: true,
        ..Default::default()
    };
    let keys = KmsCaKeys::with_loader(loader(), settings.clone())
        .await
        .unwrap();
    assert_eq!(keys.backend(), CaKeyBackend::AwsKms);

    for (i, kt) in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048]
        .into_iter()
        .enumerate()
    {
        let label = format!("certflow-test-{i}");
        let (key, spki) = keys.generate(CaKeyRole::Issuing, &label, kt).await.unwrap();
        let CaKeyRef::AwsKms { key_id } = &key else {
            panic!("{key:?}")
        };
        assert!(key_id.starts_with("arn:aws:kms:"), "{key_id}");
        assert_eq!(
            CaPublicKey::from_spki_der("spki", &spki)
                .unwrap()
                .key_type(),
            kt
        );
        let meta = client.describe_key().key_id(key_id).send().await.unwrap();
        let meta = meta.key_metadata().unwrap();
        assert_eq!(meta.key_usage().unwrap().as_str(), "SIGN_VERIFY");
        assert!(meta.description().unwrap().contains(&label));
        // Only the named role may sign; the account administers.
        let policy = client
            .get_key_policy()
            .key_id(key_id)
            .policy_name("default")
            .send()
            .await
            .unwrap();
        let policy = policy.policy().unwrap();
        assert!(
            policy.contains("certflow-worker") && policy.contains("kms:Sign"),
            "{policy}"
        );

        let message = b"a TBSCertificate stand-in";
        let signature = keys.sign(&key, kt, message).await.unwrap();
        UnparsedPublicKey::new(verification(kt), &bits(&spki))
            .verify(message, &signature)
            .unwrap_or_else(|_| panic!("{kt:?}: KMS signature does not verify"));
    }
    assert!(
        keys.generate(CaKeyRole::Root, "ed", KeyType::Ed25519)
            .await
            .is_err()
    );

    // A configured key is adopted, not created; one of another type is refused.
    let existing = client
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap();
    let existing_arn = existing.key_metadata().unwrap().arn().unwrap().to_owned();
    let mut with_root = settings.clone();
    with_root
        .key_ids
        .insert(CaKeyRole::Root, existing_arn.clone());
    let adopting = KmsCaKeys::with_loader(loader(), with_root).await.unwrap();
    let (key, _) = adopting
        .generate(CaKeyRole::Root, "certflow-root", KeyType::EcdsaP256)
        .await
        .unwrap();
    assert_eq!(
        key,
        CaKeyRef::AwsKms {
            key_id: existing_arn.clone()
        }
    );
    let err = adopting
        .generate(CaKeyRole::Root, "certflow-root", KeyType::EcdsaP384)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ECC_NIST_P384"), "{err}");
    // Discarding never deletes a configured key.
    adopting.discard(&key).await.unwrap();
    let state = client
        .describe_key()
        .key_id(&existing_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        state.key_metadata().unwrap().key_state().unwrap().as_str(),
        "Enabled"
    );

    // Nothing listening: unavailable, naming KMS and where it was looked for.
    let port = certflow_testkit::free_port();
    let gone = KmsCaKeys::with_loader(
        loader(),
        KmsSettings {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    match gone.sign(&key, KeyType::EcdsaP256, b"x").await {
        Err(DomainError::Unavailable { backend, reason }) => {
            assert_eq!(backend, CaKeyBackend::AwsKms.display_name());
            assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
