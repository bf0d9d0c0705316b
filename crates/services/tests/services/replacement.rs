//! Revoking with a replacement, and keys revoked for keyCompromise, against
//! the real SQLite store, blob store and internal CA: a replacement is a new
//! current version (a fresh key when certflow holds it, the same public key
//! when the requester does), a requester-held compromised key is refused
//! before anything is revoked, and no renewal path certifies such a key again.

use certflow_api::CreateCertificateRequest;
use certflow_core::model::{Actor, AuditQuery, CertificateStatus, RevocationReason, VersionStatus};
use certflow_core::renewal::RenewalJob;
use certflow_core::{DomainError, KeyType, SubjectName};
use certflow_services::{CertificateView, DownloadKind, JobOutcome, Replacement, Services};
use time::OffsetDateTime;
use uuid::Uuid;

struct Env {
    services: Services,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let (dir, _, services) = crate::sqlite_services(Default::default()).await;
    Env {
        services,
        _dir: dir,
    }
}

fn actor() -> Actor {
    Actor {
        subject: "alice".into(),
        source: None,
    }
}

/// A PEM CSR for `name` and its key.
fn csr(name: &str) -> (certflow_pki::PrivateKey, String) {
    let key = certflow_pki::PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let der = certflow_pki::build_csr(&key, &[SubjectName::Dns(name.into())]).unwrap();
    let pem = certflow_pki::cert_to_pem(&der).replace("CERTIFICATE", "CERTIFICATE REQUEST");
    (key, pem)
}

fn request(name: &str, csr: Option<String>) -> CreateCertificateRequest {
    CreateCertificateRequest {
        team: "payments".into(),
        names: vec![name.into()],
        csr,
        ..Default::default()
    }
}

/// The public key (SPKI DER) of a version.
async fn spki(s: &Services, id: Uuid, version: u32) -> Vec<u8> {
    let pem = s
        .download(id, Some(version), DownloadKind::Certificate)
        .await
        .unwrap();
    let der = certflow_pki::parse_pem_certs("pem", &pem).unwrap();
    certflow_pki::public_key_of(&der[0]).unwrap()
}

fn version(view: &CertificateView, n: u32) -> &certflow_core::model::CertificateVersion {
    view.versions.iter().find(|v| v.version == n).unwrap()
}

async fn actions(s: &Services, id: Uuid) -> Vec<(String, serde_json::Value)> {
    let mut items = s
        .audit(&AuditQuery {
            target: Some(format!("certificate/{id}")),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    // Listed newest first.
    items.reverse();
    items.into_iter().map(|e| (e.action, e.details)).collect()
}

#[tokio::test]
async fn a_server_keyed_replacement_is_a_new_current_version_with_a_new_key() {
    let e = env().await;
    let s = &e.services;
    let now = OffsetDateTime::now_utc();
    let v1 = s
        .create_certificate(&actor(), &request("web.example.com", None), now)
        .await
        .unwrap();
    let id = v1.certificate.id;

    let r = s
        .revoke_with(&actor(), id, None, "superseded", true, now)
        .await
        .unwrap();
    assert_eq!(r.replacement, Some(Replacement::Issued { version: 2 }));
    assert_eq!(r.view.certificate.status, CertificateStatus::Active);
    assert_eq!(r.view.certificate.current_version, 2);
    let (old, new) = (version(&r.view, 1), version(&r.view, 2));
    assert_eq!(old.status, VersionStatus::Revoked);
    assert_eq!(old.revocation_reason, Some(RevocationReason::Superseded));
    assert_eq!(new.status, VersionStatus::Current);
    assert_ne!(new.serial, old.serial);
    assert_ne!(spki(s, id, 2).await, spki(s, id, 1).await, "a fresh key");

    let audit = actions(s, id).await;
    let (action, details) = &audit[audit.len() - 2];
    assert_eq!(action, "certificate.revoke");
    assert_eq!(details["replace"], true);
    assert_eq!(details["replacement_version"], 2);
    let (action, details) = &audit[audit.len() - 1];
    assert_eq!(action, "certificate.renew");
    assert_eq!(details["version"], 2);
    assert_eq!(details["replaces_revoked_version"], 1);

    // Without replace the certificate is revoked and nothing is issued.
    let r = s
        .revoke_with(&actor(), id, None, "cessationOfOperation", false, now)
        .await
        .unwrap();
    assert_eq!(r.replacement, None);
    assert_eq!(r.view.certificate.status, CertificateStatus::Revoked);
    assert_eq!(r.view.versions.len(), 2);
}

#[tokio::test]
async fn a_csr_keyed_replacement_keeps_the_key_unless_it_was_compromised() {
    let e = env().await;
    let s = &e.services;
    let now = OffsetDateTime::now_utc();
    let (key, pem) = csr("app.example.com");
    let id = s
        .create_certificate(&actor(), &request("app.example.com", Some(pem)), now)
        .await
        .unwrap()
        .certificate
        .id;

    let r = s
        .revoke_with(&actor(), id, None, "affiliationChanged", true, now)
        .await
        .unwrap();
    assert_eq!(r.replacement, Some(Replacement::Issued { version: 2 }));
    assert_eq!(r.view.certificate.status, CertificateStatus::Active);
    assert_ne!(version(&r.view, 2).serial, version(&r.view, 1).serial);
    assert_eq!(spki(s, id, 2).await, key.public_key_der(), "the same key");

    // keyCompromise: only the key holder can re-key; refused, nothing revoked.
    let before = actions(s, id).await.len();
    let err = s
        .revoke_with(&actor(), id, None, "keyCompromise", true, now)
        .await
        .unwrap_err();
    let DomainError::Conflict(msg) = &err else {
        panic!("{err:?}");
    };
    assert!(msg.contains("re-key needed"), "{msg}");
    assert!(
        msg.contains(&format!("/agent/v1/certificates/{id}/renew")),
        "{msg}"
    );
    let view = s.certificate(id).await.unwrap();
    assert_eq!(view.certificate.status, CertificateStatus::Active);
    assert_eq!(view.versions.len(), 2);
    assert_eq!(version(&view, 2).status, VersionStatus::Current);
    assert_eq!(actions(s, id).await.len(), before, "nothing audited");

    // Replacing a version other than the current one is refused as well.
    let err = s
        .revoke_with(&actor(), id, Some(1), "superseded", true, now)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::Invalid(f) if f[0].field == "replace"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_key_revoked_for_key_compromise_is_never_certified_again() {
    let e = env().await;
    let s = &e.services;
    let now = OffsetDateTime::now_utc();
    let (key, pem) = csr("db.example.com");
    let id = s
        .create_certificate(&actor(), &request("db.example.com", Some(pem.clone())), now)
        .await
        .unwrap()
        .certificate
        .id;
    // Version 2 reuses the requester's key; version 1 is then reported
    // compromised, which compromises version 2's key too.
    s.renew(&actor(), id, None, now).await.unwrap();
    assert_eq!(spki(s, id, 2).await, key.public_key_der());
    s.revoke(&actor(), id, Some(1), "keyCompromise", now)
        .await
        .unwrap();
    assert_eq!(
        s.certificate(id).await.unwrap().certificate.status,
        CertificateStatus::Active
    );

    // Renew now, without a CSR: refused with the reason.
    let err = s.renew(&actor(), id, None, now).await.unwrap_err();
    let DomainError::Conflict(msg) = &err else {
        panic!("{err:?}");
    };
    assert!(msg.starts_with("key compromised: re-key needed"), "{msg}");
    // A CSR for the same key: refused too.
    let err = s.renew(&actor(), id, Some(&pem), now).await.unwrap_err();
    assert!(
        matches!(&err, DomainError::Invalid(f) if f[0].field == "csr" && f[0].reason.contains("compromised")),
        "{err:?}"
    );
    // The renewal worker gives up at once (dead-letter) with the reason, audited.
    let job = RenewalJob::new(id, 2, 8, now);
    match s.run_renewal_job(&job, now).await.unwrap() {
        JobOutcome::PolicyRefused { reason } => {
            assert!(
                reason.starts_with("key compromised: re-key needed"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let audit = actions(s, id).await;
    let (action, details) = audit.last().unwrap();
    assert_eq!(action, "certificate.renewal.refused");
    assert!(
        details["reason"]
            .as_str()
            .unwrap()
            .contains("re-key needed")
    );
    assert_eq!(
        s.certificate(id).await.unwrap().versions.len(),
        2,
        "nothing issued"
    );

    // A CSR for a new key is what it takes.
    let (fresh, pem) = csr("db.example.com");
    let view = s.renew(&actor(), id, Some(&pem), now).await.unwrap();
    assert_eq!(view.certificate.current_version, 3);
    assert_eq!(spki(s, id, 3).await, fresh.public_key_der());

    // The current version revoked for keyCompromise: renew now is refused as well.
    s.revoke(&actor(), id, None, "keyCompromise", now)
        .await
        .unwrap();
    let err = s.renew(&actor(), id, None, now).await.unwrap_err();
    assert!(
        matches!(&err, DomainError::Conflict(m) if m.contains("Version 3")),
        "{err:?}"
    );
}

/// A server-held key revoked for keyCompromise is simply replaced by a fresh one.
#[tokio::test]
async fn a_server_keyed_compromised_key_is_replaced_by_a_fresh_one() {
    let e = env().await;
    let s = &e.services;
    let now = OffsetDateTime::now_utc();
    let id = s
        .create_certificate(&actor(), &request("api.example.com", None), now)
        .await
        .unwrap()
        .certificate
        .id;
    let r = s
        .revoke_with(&actor(), id, None, "keyCompromise", true, now)
        .await
        .unwrap();
    assert_eq!(r.replacement, Some(Replacement::Issued { version: 2 }));
    assert_ne!(spki(s, id, 2).await, spki(s, id, 1).await);
}
