//! The issuers behind the `IssuerBackend` port: the internal CA, signing with
//! its sealed key in process, and whatever the server registered for other
//! issuers (ACME CAs), looked up by issuer id.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use certflow_core::model::{Issuer, IssuerKind};
use certflow_core::ports::{BlobStore, IssueRequest, IssuedCertificate, IssuerBackend};
use certflow_core::renewal::SuggestedWindow;
use certflow_core::{DomainError, error::DomainResult};
use certflow_pki::{IssuerUrls, LeafRequest, LintRefusal, PrivateKey};
use certflow_seal::Sealer;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ca::key_context;
use crate::cpu::CpuPool;

/// certflow's own CA: signs in process with the issuing key unsealed per call.
#[derive(Clone)]
pub struct InternalCa {
    blobs: Arc<dyn BlobStore>,
    sealer: Sealer,
    public_url: Option<String>,
    /// Signing and linting run here, off the async runtime.
    pub(crate) cpu: CpuPool,
}

impl InternalCa {
    pub(crate) fn new(
        blobs: Arc<dyn BlobStore>,
        sealer: Sealer,
        public_url: Option<String>,
        cpu: CpuPool,
    ) -> Self {
        Self {
            blobs,
            sealer,
            public_url,
            cpu,
        }
    }

    fn urls(&self, issuer: &Issuer) -> Option<IssuerUrls> {
        self.public_url.as_ref().map(|base| IssuerUrls {
            ca_issuers: format!("{base}/pki/{}/ca.crt", issuer.id),
            crl: format!("{base}/pki/{}/crl", issuer.id),
            ocsp: Some(format!("{base}/pki/{}/ocsp", issuer.id)),
        })
    }

    /// The issuer's signing key, unsealed for the duration of one operation.
    pub(crate) async fn signing_key(&self, issuer: &Issuer) -> DomainResult<PrivateKey> {
        let sealed = self
            .blobs
            .get(&issuer.key_blob)
            .await
            .map_err(|e| match e {
                DomainError::NotFound(_) => DomainError::Integrity(format!(
                    "the signing key of issuer {} is missing from the blob store",
                    issuer.id
                )),
                other => other,
            })?;
        let der = self.sealer.open(&sealed, &key_context(issuer.id, "issuing")).await.map_err(|e| {
            DomainError::Integrity(format!(
                "cannot unseal the signing key of issuer '{}' ({e}); is this the master key it was created with?",
                issuer.name
            ))
        })?;
        PrivateKey::from_pkcs8_der(&der)
    }
}

impl InternalCa {
    /// Issues after pre-issuance linting: the certificate, or the lints that
    /// refused it (the CA key then signed nothing).
    pub(crate) async fn issue_linted(
        &self,
        issuer: &Issuer,
        request: &IssueRequest,
        now: OffsetDateTime,
    ) -> DomainResult<Result<IssuedCertificate, LintRefusal>> {
        let ca_key = self.signing_key(issuer).await?;
        let ca_der = certflow_pki::parse_pem_certs("issuing_cert_pem", &issuer.issuing_cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::Internal("issuer has no certificate".into()))?;
        let urls = self.urls(issuer);
        let request = request.clone();
        let linted = self
            .cpu
            .run("signing", move || {
                certflow_pki::issue_leaf_linted(
                    &ca_der,
                    &ca_key,
                    &LeafRequest {
                        profile: request.profile,
                        names: &request.names,
                        spki_der: &request.spki_der,
                        key_type: request.key_type,
                        validity_days: request.validity_days,
                        validity_secs: request.validity_secs,
                        now,
                        urls: urls.as_ref(),
                    },
                )
            })
            .await?;
        Ok(linted.map(|cert_der| IssuedCertificate {
            cert_der,
            chain_pem: format!("{}{}", issuer.issuing_cert_pem, issuer.chain_pem),
        }))
    }
}

#[async_trait]
impl IssuerBackend for InternalCa {
    async fn issue(
        &self,
        issuer: &Issuer,
        request: &IssueRequest,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedCertificate> {
        self.issue_linted(issuer, request, now)
            .await?
            .map_err(|refusal| DomainError::Conflict(refusal.to_string()))
    }

    async fn renewal_info(
        &self,
        _issuer: &Issuer,
        _cert_der: &[u8],
    ) -> DomainResult<Option<SuggestedWindow>> {
        // The internal CA has no opinion: the certificate's policy decides.
        Ok(None)
    }
}

/// Backends by issuer: the internal CA for internal issuers, registered ones otherwise.
#[derive(Clone)]
pub(crate) struct Backends {
    pub(crate) internal: InternalCa,
    pub(crate) external: HashMap<Uuid, Arc<dyn IssuerBackend>>,
}

impl Backends {
    /// The backend that signs for `issuer`.
    pub(crate) fn get(&self, issuer: &Issuer) -> DomainResult<&dyn IssuerBackend> {
        match issuer.kind {
            IssuerKind::Internal => Ok(&self.internal),
            IssuerKind::Acme => self
                .external
                .get(&issuer.id)
                .map(|b| b.as_ref())
                .ok_or_else(|| DomainError::Unavailable {
                    backend: "issuer",
                    reason: format!(
                        "ACME issuer '{}' is not configured on this server (add it under [[acme]])",
                        issuer.name
                    ),
                }),
            IssuerKind::External => Err(DomainError::Conflict(format!(
                "issuer '{}' is an external CA: certflow cannot issue from it",
                issuer.name
            ))),
        }
    }
}
