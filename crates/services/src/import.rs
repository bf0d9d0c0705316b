//! Importing certificates certflow did not issue through its own API: a PEM
//! bundle (leaf first, optional chain and private key) or a PKCS#12 file.
//!
//! Same write order as issuance: blobs first (the key only sealed), then the
//! metadata row and its `certificate.import` audit event in one transaction;
//! a failed commit removes the blobs. The key never reaches logs or audit.
//!
//! Only certificates signed by one of certflow's issuers are accepted for
//! now: the schema requires an issuer on every certificate and version, and
//! an "external issuer" marker needs a migration (left for later).

use bytes::Bytes;
use certflow_core::model::{
    Actor, AuditEvent, Certificate, CertificateStatus, CertificateVersion, Issuer, KeySource,
    Labels, VersionStatus,
};
use certflow_core::policy::IssuanceRequest;
use certflow_core::{DomainError, FieldError, Profile, SubjectName};
use certflow_pki::PrivateKey;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::certificates::{CertificateView, key_context};
use crate::{Services, validate};

/// Largest PEM bundle or PKCS#12 file accepted, in bytes.
pub const MAX_IMPORT_BYTES: usize = 48 * 1024;

/// What to import. Its `Debug` never shows the key, bundle or password.
#[derive(Clone, Default)]
pub struct ImportRequest {
    /// Owning team.
    pub team: String,
    /// Display name; the leaf's first SAN when absent.
    pub name: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// PEM: the certificate, then optionally its chain and private key.
    pub pem: Option<String>,
    /// A PKCS#12 file, base64.
    pub pkcs12_base64: Option<String>,
    /// The PKCS#12 password.
    pub password: Option<String>,
    /// Take over management: renew through certflow from now on.
    pub manage: bool,
}

impl std::fmt::Debug for ImportRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportRequest")
            .field("team", &self.team)
            .field("name", &self.name)
            .field("pem", &self.pem.as_ref().map(|_| "[redacted]"))
            .field("pkcs12", &self.pkcs12_base64.as_ref().map(|_| "[redacted]"))
            .field("manage", &self.manage)
            .finish_non_exhaustive()
    }
}

/// Why an import failed: the bundle could not be read (`Domain`, mostly 400),
/// or it was read but refused (`Unprocessable`: key mismatch, unknown issuer,
/// policy), or it is already imported (`Domain(Conflict)`).
#[derive(Debug)]
pub enum ImportError {
    /// Read but refused; names the field.
    Unprocessable(Vec<FieldError>),
    /// Any other failure (bad input, conflict, backend).
    Domain(DomainError),
}

impl From<DomainError> for ImportError {
    fn from(e: DomainError) -> Self {
        Self::Domain(e)
    }
}

fn refuse(field: &str, reason: impl Into<String>) -> ImportError {
    ImportError::Unprocessable(vec![FieldError::new(field, reason)])
}

/// The bundle read: leaf first, then the chain, and the key if one came along.
struct Bundle {
    field: &'static str,
    certs: Vec<Vec<u8>>,
    key: Option<PrivateKey>,
}

fn read_bundle(req: &ImportRequest) -> Result<Bundle, DomainError> {
    match (&req.pem, &req.pkcs12_base64) {
        (Some(pem), None) => {
            if pem.len() > MAX_IMPORT_BYTES {
                return Err(DomainError::invalid(
                    "pem",
                    format!("at most {MAX_IMPORT_BYTES} bytes are accepted"),
                ));
            }
            let certs = certflow_pki::parse_pem_certs("pem", pem)?;
            let key = if pem.contains("PRIVATE KEY-----") {
                Some(PrivateKey::from_pem("pem", pem)?)
            } else {
                None
            };
            Ok(Bundle {
                field: "pem",
                certs,
                key,
            })
        }
        (None, Some(b64)) => {
            if b64.len() > MAX_IMPORT_BYTES {
                return Err(DomainError::invalid(
                    "pkcs12_base64",
                    format!("at most {MAX_IMPORT_BYTES} bytes are accepted"),
                ));
            }
            let der = decode_base64(b64)
                .ok_or_else(|| DomainError::invalid("pkcs12_base64", "is not valid base64"))?;
            let password = req.password.as_deref().unwrap_or("");
            let (certs, key) = certflow_pki::read_pkcs12("pkcs12_base64", &der, password)?;
            Ok(Bundle {
                field: "pkcs12_base64",
                certs,
                key,
            })
        }
        _ => Err(DomainError::invalid(
            "pem",
            "give exactly one of pem and pkcs12_base64",
        )),
    }
}

/// Standard base64 (RFC 4648 §4, padded), whitespace ignored: a PKCS#12
/// file pasted from `base64` output arrives wrapped in lines.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}

#[cfg(test)]
#[test]
fn base64_is_standard_padded_and_may_be_wrapped() {
    assert_eq!(
        decode_base64("aGVs\nbG8=\r\n").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(decode_base64("+/8=").as_deref(), Some(&[0xfb, 0xff][..]));
    for bad in ["aGVsbG8", "aGVsbG8==", "-_8=", "aGVs*bG8=", "aG=VsbG8"] {
        assert_eq!(decode_base64(bad), None, "{bad}");
    }
}

impl Services {
    /// Imports a certificate (with or without its key) as a certificate of
    /// `req.team`. With `manage`, its names must pass the issuance policy and
    /// its renewal is scheduled through its issuer; without, it is inventory
    /// only and never renewed.
    pub async fn import_certificate(
        &self,
        actor: &Actor,
        req: &ImportRequest,
        now: OffsetDateTime,
    ) -> Result<CertificateView, ImportError> {
        let mut errors = Vec::new();
        validate::team(&mut errors, &req.team);
        validate::labels(&mut errors, &req.labels);
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors).into());
        }
        let bundle = read_bundle(req)?;
        let field = bundle.field;
        let Some(leaf) = bundle.certs.first() else {
            return Err(DomainError::invalid(field, "holds no certificate").into());
        };
        let info = certflow_pki::inspect(leaf)?;
        if info.is_ca {
            return Err(refuse(
                field,
                "the first certificate is a CA certificate; put the end-entity certificate first",
            ));
        }
        let Some(key_type) = info.key_type else {
            return Err(refuse(field, "the certificate's key type is not supported"));
        };
        if let Some(key) = &bundle.key
            && !certflow_pki::key_matches_cert(key, leaf)
        {
            return Err(refuse(
                field,
                "the private key does not match the certificate",
            ));
        }
        let names = certflow_core::validate_names(
            field,
            &info
                .names
                .iter()
                .map(SubjectName::to_text)
                .collect::<Vec<_>>(),
        )
        .map_err(ImportError::Unprocessable)?;
        let Some(issuer) = self.own_issuer_of(leaf).await? else {
            return Err(refuse(
                field,
                format!(
                    "issued by '{}', which is not one of certflow's issuers; \
                     certificates of other CAs cannot be imported yet",
                    info.issuer
                ),
            ));
        };
        if self
            .store
            .version_by_serial(issuer.id, &info.serial_hex)
            .await?
            .is_some()
        {
            return Err(DomainError::Conflict(format!(
                "a certificate with serial {} of issuer '{}' is already known",
                info.serial_hex, issuer.name
            ))
            .into());
        }
        let profile = Profile::TlsServer;
        let validity_days = profile.default_validity_days();
        if req.manage {
            self.policies
                .check(&IssuanceRequest {
                    team: &req.team,
                    issuer: &issuer.name,
                    profile,
                    key_type,
                    names: &names,
                    validity_days,
                    validity_secs: None,
                })
                .map_err(ImportError::Unprocessable)?;
        }
        let name = req
            .name
            .clone()
            .or_else(|| names.first().map(SubjectName::to_text))
            .unwrap_or_default();
        let mut errors = Vec::new();
        validate::display_name(&mut errors, &name);
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors).into());
        }

        let id = Uuid::now_v7();
        // Same layout as issued versions (certificates.rs `blob_prefix`), so
        // downloads find the chain beside the certificate.
        let prefix = format!("certificates/{id}/v1-{}", info.serial_hex);
        let cert_blob = format!("{prefix}/cert.der");
        let chain_pem: String = if bundle.certs.len() > 1 {
            bundle.certs[1..]
                .iter()
                .map(|d| certflow_pki::cert_to_pem(d))
                .collect()
        } else {
            format!("{}{}", issuer.issuing_cert_pem, issuer.chain_pem)
        };
        let mut written = Vec::new();
        let mut key_blob = None;
        let stored: Result<(), DomainError> = async {
            if let Some(key) = &bundle.key {
                let blob = format!("{prefix}/key.enc");
                let sealed = self
                    .sealer
                    .seal(key.pkcs8_der(), &key_context(id, 1))
                    .await?;
                self.blobs.put(&blob, Bytes::from(sealed)).await?;
                written.push(blob.clone());
                key_blob = Some(blob);
            }
            self.blobs
                .put(&cert_blob, Bytes::from(leaf.clone()))
                .await?;
            written.push(cert_blob.clone());
            let chain_blob = format!("{prefix}/chain.pem");
            self.blobs.put(&chain_blob, Bytes::from(chain_pem)).await?;
            written.push(chain_blob);
            Ok(())
        }
        .await;
        if let Err(e) = stored {
            self.remove_blobs(&written).await;
            return Err(e.into());
        }
        let version = CertificateVersion {
            certificate_id: id,
            version: 1,
            serial: info.serial_hex.clone(),
            fingerprint_sha256: info.fingerprint_sha256.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            key_type,
            names: names.clone(),
            issuer_id: issuer.id,
            status: VersionStatus::Current,
            revoked_at: None,
            revocation_reason: None,
            cert_blob,
            key_blob,
            created_at: now,
        };
        let renewal = self.renewal_defaults.resolve(&req.team, &issuer.name);
        // An inventory-only certificate is never renewed (`managed` keeps it
        // out of the scheduler); its notAfter is when it stops being useful.
        let renew_after = if req.manage {
            self.renew_after(&issuer, &renewal, &version).await
        } else {
            info.not_after
        };
        let cert = Certificate {
            id,
            name,
            team: req.team.clone(),
            labels: req.labels.clone(),
            profile,
            key_type,
            // With the key, certflow holds it and renews with a fresh one,
            // like a server-generated key; without, the key stays with its
            // holder and a renewal re-certifies the same public key, like a CSR.
            key_source: if bundle.key.is_some() {
                KeySource::Server
            } else {
                KeySource::Csr
            },
            names,
            validity_days,
            validity_secs: None,
            issuer_id: issuer.id,
            renewal,
            status: CertificateStatus::Active,
            managed: req.manage,
            current_version: 1,
            not_after: info.not_after,
            renew_after,
            created_at: now,
            updated_at: now,
        };
        let audit = AuditEvent::success(
            now,
            actor,
            "certificate.import",
            format!("certificate/{id}"),
            json!({
                "name": cert.name, "team": cert.team,
                "names": cert.names.iter().map(SubjectName::to_text).collect::<Vec<_>>(),
                "serial": version.serial, "fingerprint_sha256": version.fingerprint_sha256,
                "issuer": issuer.name, "format": if field == "pem" { "pem" } else { "pkcs12" },
                "with_key": bundle.key.is_some(), "manage": req.manage,
            }),
        );
        if let Err(e) = self
            .store
            .create_certificate(&cert, &version, &audit, None)
            .await
        {
            self.remove_blobs(&version_blobs(&version, &prefix)).await;
            return Err(e.into());
        }
        tracing::info!(certificate = %id, serial = %version.serial, manage = req.manage, "certificate imported");
        Ok(CertificateView {
            certificate: cert,
            versions: vec![version],
        })
    }

    /// The certflow issuer whose issuing certificate signed `leaf`, if any.
    async fn own_issuer_of(&self, leaf: &[u8]) -> Result<Option<Issuer>, DomainError> {
        for issuer in self.store.list_issuers().await? {
            let Ok(certs) = certflow_pki::parse_pem_certs("issuer", &issuer.issuing_cert_pem)
            else {
                continue;
            };
            if certs
                .first()
                .is_some_and(|ca| certflow_pki::is_signed_by(leaf, ca))
            {
                return Ok(Some(issuer));
            }
        }
        Ok(None)
    }
}

fn version_blobs(v: &CertificateVersion, prefix: &str) -> Vec<String> {
    let mut blobs = vec![v.cert_blob.clone(), format!("{prefix}/chain.pem")];
    blobs.extend(v.key_blob.clone());
    blobs
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use certflow_api::ImportCaRequest;
    use certflow_blob::{LocalKeyProvider, MasterKey, ObjectBlobStore, Sealer};
    use certflow_core::model::KeyType;
    use certflow_core::policy::IssuancePolicies;
    use certflow_core::ports::BlobStore as _;
    use certflow_pki::{LeafRequest, cert_to_pem, create_ca, issue_leaf};
    use certflow_store::SqliteStore;
    use serde_json::json;

    use super::*;

    /// Taking over management is held against the issuance policy; keeping
    /// the certificate as inventory only is not (it is rated, never renewed).
    #[tokio::test]
    async fn manage_requires_the_policy_inventory_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
        let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
            MasterKey::generate().unwrap(),
            vec![],
        )));
        let policies: IssuancePolicies =
            serde_json::from_value(json!({ "default": { "allowed_domains": ["example.com"] } }))
                .unwrap();
        let services = Services::new(store.clone(), blobs.clone(), sealer, None)
            .with_issuance_policies(policies.compile().unwrap());
        let now = OffsetDateTime::now_utc();
        let ca = create_ca("Legacy", KeyType::EcdsaP256, now, 3650, 1825).unwrap();
        let actor = Actor::system();
        services
            .import_ca(
                &actor,
                &ImportCaRequest {
                    name: "legacy".into(),
                    certificate_pem: cert_to_pem(&ca.issuing_cert_der),
                    private_key_pem: ca.issuing_key.to_pem().to_string(),
                    chain_pem: Some(ca.chain_der.iter().map(|d| cert_to_pem(d)).collect()),
                    make_default: true,
                },
                now,
            )
            .await
            .unwrap();
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let der = issue_leaf(
            &ca.issuing_cert_der,
            &ca.issuing_key,
            &LeafRequest {
                profile: Profile::TlsServer,
                names: &[SubjectName::Dns("www.other.org".into())],
                spki_der: &key.public_key_der(),
                key_type: KeyType::EcdsaP256,
                validity_days: 30,
                validity_secs: None,
                now,
                urls: None,
            },
        )
        .unwrap();
        let mut req = ImportRequest {
            team: "web".into(),
            pem: Some(cert_to_pem(&der)),
            manage: true,
            ..Default::default()
        };
        match services.import_certificate(&actor, &req, now).await {
            Err(ImportError::Unprocessable(fields)) => {
                assert!(
                    fields.iter().any(|f| f.reason.contains("www.other.org")),
                    "{fields:?}"
                );
            }
            other => panic!("expected a policy refusal, got {other:?}"),
        }
        assert!(blobs.list("certificates/").await.unwrap().is_empty());
        req.manage = false;
        let view = services
            .import_certificate(&actor, &req, now)
            .await
            .unwrap();
        assert!(!view.certificate.managed);
        assert_eq!(view.certificate.renew_after, view.certificate.not_after);
        assert_eq!(view.certificate.key_source, KeySource::Csr);
    }
}
