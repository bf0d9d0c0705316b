//! Certificates an ACME CA signed are linted when received: findings keep the
//! certificate (it is valid and already in CT logs) but are counted and
//! recorded in the issuance's or renewal's audit event.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use async_trait::async_trait;
use certflow_api::CreateCertificateRequest;
use certflow_blob::ObjectBlobStore;
use certflow_core::model::{Actor, AuditQuery, Issuer};
use certflow_core::ports::{IssueRequest, IssuedCertificate, IssuerBackend};
use certflow_core::renewal::SuggestedWindow;
use certflow_core::{DomainResult, KeyType, Profile};
use certflow_pki::{CaMaterial, LeafRequest, cert_to_pem, create_ca, issue_leaf};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_store::SqliteStore;
use time::OffsetDateTime;

use crate::Services;

/// A CA standing in for an ACME CA: it signs every request as `profile`,
/// whatever profile the certificate asked for, the way a CA with its own
/// idea of extensions would.
struct CraftingCa {
    ca: CaMaterial,
    profile: Profile,
}

#[async_trait]
impl IssuerBackend for CraftingCa {
    async fn issue(
        &self,
        _issuer: &Issuer,
        request: &IssueRequest,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedCertificate> {
        let cert_der = issue_leaf(
            &self.ca.issuing_cert_der,
            &self.ca.issuing_key,
            &LeafRequest {
                profile: self.profile,
                names: &request.names,
                spki_der: &request.spki_der,
                key_type: request.key_type,
                validity_days: request.validity_days,
                validity_secs: request.validity_secs,
                now,
                urls: None,
            },
        )?;
        Ok(IssuedCertificate {
            cert_der,
            chain_pem: cert_to_pem(&self.ca.issuing_cert_der),
        })
    }

    async fn renewal_info(
        &self,
        _issuer: &Issuer,
        _cert_der: &[u8],
    ) -> DomainResult<Option<SuggestedWindow>> {
        Ok(None)
    }
}

/// Issues and renews one tls-server certificate through an ACME issuer
/// whose CA signs as `signed_as`; returns the details of the
/// `certificate.create` and `certificate.renew` audit events.
async fn issue_and_renew(signed_as: Profile) -> (serde_json::Value, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        vec![],
    )));
    let now = OffsetDateTime::now_utc();
    let plain = Services::new(store.clone(), blobs, sealer, None);
    let (issuer, _) = plain
        .ensure_acme_issuer("acme", "https://acme.invalid/directory", now)
        .await
        .unwrap();
    let ca = create_ca("Crafting", KeyType::EcdsaP256, now, 3650, 1825).unwrap();
    let services = plain.with_issuer_backend(
        issuer.id,
        Arc::new(CraftingCa {
            ca,
            profile: signed_as,
        }),
    );
    let actor = Actor::system();
    let view = services
        .create_certificate(
            &actor,
            &CreateCertificateRequest {
                name: Some("www".into()),
                names: vec!["www.example.com".into()],
                team: "web".into(),
                key_type: Some("ecdsa-p256".into()),
                issuer_id: Some(issuer.id),
                ..CreateCertificateRequest::default()
            },
            now,
        )
        .await
        .unwrap();
    let id = view.certificate.id;
    services.renew(&actor, id, None, now).await.unwrap();
    // Both versions were kept.
    assert_eq!(services.certificate(id).await.unwrap().versions.len(), 2);
    let details = |action: &str| {
        let store = store.clone();
        let action = action.to_owned();
        async move {
            let page = certflow_core::ports::MetadataStore::list_audit(
                store.as_ref(),
                &AuditQuery {
                    target: Some(format!("certificate/{id}")),
                    action_prefix: Some(action.clone()),
                    ..AuditQuery::default()
                },
            )
            .await
            .unwrap();
            let event = page.items.into_iter().find(|e| e.action == action).unwrap();
            event.details
        }
    };
    (
        details("certificate.create").await,
        details("certificate.renew").await,
    )
}

#[tokio::test]
async fn lint_errors_in_an_acme_certificate_are_counted_and_audited_not_fatal() {
    let before = Services::acme_lint_failures();
    let (created, renewed) = issue_and_renew(Profile::TlsClient).await;
    // Other tests of this process may count too, never down.
    assert!(Services::acme_lint_failures() >= before + 2);
    for details in [&created, &renewed] {
        let findings = details["lint_findings"].as_array().unwrap();
        let eku = findings
            .iter()
            .find(|f| f["lint"] == "extended_key_usage_matches_profile")
            .unwrap_or_else(|| panic!("{details}"));
        assert!(
            eku["message"]
                .as_str()
                .unwrap()
                .contains("serverAuth missing"),
            "{eku}"
        );
    }
}

#[tokio::test]
async fn a_clean_acme_certificate_is_audited_without_findings() {
    let (created, renewed) = issue_and_renew(Profile::TlsServer).await;
    assert!(created.get("lint_findings").is_none(), "{created}");
    assert!(renewed.get("lint_findings").is_none(), "{renewed}");
    assert!(created["serial"].is_string(), "{created}");
}
