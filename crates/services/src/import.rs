//! Importing certificates certflow did not issue through its own API: a PEM
//! bundle (leaf first, optional chain and private key) or a PKCS#12 file.
//!
//! Same write order as issuance: blobs first (the key only sealed), then the
//! metadata row and its `certificate.import` audit event in one transaction;
//! a failed commit removes the blobs. The key never reaches logs or audit.
//! A CA seen for the first time is recorded (`issuer.external`) in that same
//! transaction: a refused import (a name taken, 409) leaves no row behind.
//! Every certificate of the bundle must be DER, since its bytes are kept.
//!
//! A certificate of a CA outside certflow is recorded under an issuer of
//! kind `external` (one per CA: matched by its issuing certificate when the
//! bundle carries it, else by DN), which never issues: managing such a
//! certificate names the certflow issuer that renews it. An inventory-only
//! certificate (`managed = false`) is never renewed until taken over.

use certflow_core::model::{
    Actor, AuditEvent, Certificate, CertificateStatus, CertificateVersion, Issuer, IssuerKind,
    KeySource, KeyType, Labels, VersionStatus,
};
use certflow_core::policy::IssuanceRequest;
use certflow_core::{DomainError, FieldError, Profile, SubjectName};
use certflow_pki::PrivateKey;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::certificates::{CertificateView, blob_prefix};
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
    /// With `manage`: the certflow issuer (by name) that renews it; by
    /// default its signer, which must then be one of certflow's.
    pub issuer: Option<String>,
}

impl std::fmt::Debug for ImportRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportRequest")
            .field("team", &self.team)
            .field("name", &self.name)
            .field("pem", &self.pem.as_ref().map(|_| "[redacted]"))
            .field("pkcs12", &self.pkcs12_base64.as_ref().map(|_| "[redacted]"))
            .field("manage", &self.manage)
            .field("issuer", &self.issuer)
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

async fn read_bundle(cpu: &crate::CpuPool, req: &ImportRequest) -> Result<Bundle, DomainError> {
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
            let password = zeroize::Zeroizing::new(req.password.clone().unwrap_or_default());
            // Key derivation, bounded by the reader (docs/import.md), off the async runtime.
            let (certs, key) = cpu
                .run("PKCS#12 decoding", move || {
                    certflow_pki::read_pkcs12("pkcs12_base64", &der, &password)
                })
                .await?;
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

/// Imported certificates are recorded, and renewed, as TLS server certificates.
const IMPORTED_PROFILE: Profile = Profile::TlsServer;

/// An import that passed every check; nothing is written yet.
struct CheckedImport {
    bundle: Bundle,
    /// The bundle's first certificate.
    leaf: Vec<u8>,
    info: certflow_pki::CertInfo,
    key_type: KeyType,
    names: Vec<SubjectName>,
    /// Display name.
    name: String,
    /// Signed it: certflow's, or an external CA (not yet recorded when
    /// `new_external`).
    issuer: Issuer,
    new_external: bool,
    /// Renews it when managed.
    renewing: Option<Issuer>,
}

impl CheckedImport {
    /// The chain stored beside the certificate: the bundle's when it came
    /// with one, else its issuer's.
    fn chain_pem(&self) -> String {
        if self.bundle.certs.len() > 1 {
            self.bundle.certs[1..]
                .iter()
                .map(|d| certflow_pki::cert_to_pem(d))
                .collect()
        } else {
            format!("{}{}", self.issuer.issuing_cert_pem, self.issuer.chain_pem)
        }
    }
}

/// The leaf's facts, once it is known to be an end-entity certificate of a
/// supported key type, with valid names, matching the bundle's key if any.
fn checked_leaf(
    field: &str,
    leaf: &[u8],
    key: Option<&PrivateKey>,
) -> Result<(certflow_pki::CertInfo, KeyType, Vec<SubjectName>), ImportError> {
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
    if let Some(key) = key
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
    Ok((info, key_type, names))
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
        let checked = self.check_import(req, now).await?;
        let id = Uuid::now_v7();
        let prefix = blob_prefix(id, 1, &checked.info.serial_hex);
        let (cert_blob, key_blob, _) = self
            .write_version_blobs(
                &prefix,
                id,
                1,
                checked.bundle.key.as_ref(),
                &checked.leaf,
                &checked.chain_pem(),
            )
            .await?;
        let info = &checked.info;
        let version = CertificateVersion {
            certificate_id: id,
            version: 1,
            serial: info.serial_hex.clone(),
            fingerprint_sha256: info.fingerprint_sha256.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            key_type: checked.key_type,
            names: checked.names.clone(),
            issuer_id: checked.issuer.id,
            status: VersionStatus::Current,
            revoked_at: None,
            revocation_reason: None,
            cert_blob,
            key_blob,
            created_at: now,
        };
        let cert = self
            .imported_certificate(id, req, &checked, &version, now)
            .await;
        let audit = AuditEvent::success(
            now,
            actor,
            "certificate.import",
            format!("certificate/{id}"),
            json!({
                "name": cert.name, "team": cert.team,
                "names": cert.names.iter().map(SubjectName::to_text).collect::<Vec<_>>(),
                "serial": version.serial, "fingerprint_sha256": version.fingerprint_sha256,
                "issuer": checked.issuer.name,
                "format": if checked.bundle.field == "pem" { "pem" } else { "pkcs12" },
                "with_key": checked.bundle.key.is_some(), "manage": req.manage,
                "renewed_by": checked.renewing.as_ref().map(|r| r.name.as_str()),
            }),
        );
        let stored = if checked.new_external {
            let issuer_audit = external_issuer_audit(actor, &checked.issuer, now);
            self.store
                .create_certificate_with_issuer(
                    &checked.issuer,
                    &issuer_audit,
                    &cert,
                    &version,
                    &audit,
                )
                .await
        } else {
            self.store
                .create_certificate(&cert, &version, &audit, None)
                .await
        };
        if let Err(e) = stored {
            self.remove_blobs(&version_blobs(&version, &prefix)).await;
            return Err(e.into());
        }
        tracing::info!(certificate = %id, serial = %version.serial, manage = req.manage, "certificate imported");
        Ok(CertificateView {
            certificate: cert,
            versions: vec![version],
        })
    }

    /// Everything an import checks before it writes anything, in this order:
    /// the request, the bundle and its leaf, who signed it and who renews
    /// it, that it is not known yet and, when managed, the issuance policy.
    async fn check_import(
        &self,
        req: &ImportRequest,
        now: OffsetDateTime,
    ) -> Result<CheckedImport, ImportError> {
        let mut errors = Vec::new();
        validate::team(&mut errors, &req.team);
        validate::labels(&mut errors, &req.labels);
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors).into());
        }
        let bundle = read_bundle(&self.cpu, req).await?;
        let field = bundle.field;
        let Some(leaf) = bundle.certs.first() else {
            return Err(DomainError::invalid(field, "holds no certificate").into());
        };
        for (i, der) in bundle.certs.iter().enumerate() {
            if let Err(DomainError::Invalid(mut errs)) =
                certflow_pki::check_der_certificate(field, der)
            {
                for e in &mut errs {
                    e.reason = format!("certificate {}: {}", i + 1, e.reason);
                }
                return Err(DomainError::Invalid(errs).into());
            }
        }
        let (info, key_type, names) = checked_leaf(field, leaf, bundle.key.as_ref())?;
        // `issuer` signed it (certflow's, or an external CA, new or recorded
        // by an earlier import); `renewing` renews it when managed.
        let (issuer, new_external) = match self.known_issuer_of(leaf).await? {
            Some(known) => (known, false),
            None => self.external_issuer(&info, &bundle.certs, now).await?,
        };
        let renewing = if req.manage {
            Some(self.renewing_issuer(req.issuer.as_deref(), &issuer).await?)
        } else {
            None
        };
        if !new_external
            && self
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
        if let Some(renewing) = &renewing {
            self.policies
                .check(&IssuanceRequest {
                    team: &req.team,
                    issuer: &renewing.name,
                    profile: IMPORTED_PROFILE,
                    key_type,
                    names: &names,
                    validity_days: IMPORTED_PROFILE.default_validity_days(),
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
        let leaf = leaf.clone();
        Ok(CheckedImport {
            bundle,
            leaf,
            info,
            key_type,
            names,
            name,
            issuer,
            new_external,
            renewing,
        })
    }

    /// The certificate row of an import whose first version is `version`.
    async fn imported_certificate(
        &self,
        id: Uuid,
        req: &ImportRequest,
        checked: &CheckedImport,
        version: &CertificateVersion,
        now: OffsetDateTime,
    ) -> Certificate {
        let renewing = &checked.renewing;
        let renewal = self.renewal_defaults.resolve(
            &req.team,
            &renewing.as_ref().unwrap_or(&checked.issuer).name,
        );
        // An inventory-only certificate is never renewed (`managed` keeps it
        // out of the scheduler); its notAfter is when it stops being useful.
        let renew_after = match renewing {
            Some(renewing) => self.renew_after(renewing, &renewal, version).await,
            None => checked.info.not_after,
        };
        Certificate {
            id,
            name: checked.name.clone(),
            team: req.team.clone(),
            labels: req.labels.clone(),
            profile: IMPORTED_PROFILE,
            key_type: checked.key_type,
            // With the key, certflow holds it and renews with a fresh one,
            // like a server-generated key; without, the key stays with its
            // holder and a renewal re-certifies the same public key, like a CSR.
            key_source: if checked.bundle.key.is_some() {
                KeySource::Server
            } else {
                KeySource::Csr
            },
            names: checked.names.clone(),
            validity_days: IMPORTED_PROFILE.default_validity_days(),
            validity_secs: None,
            // The issuer of its versions to come; the first keeps its signer.
            issuer_id: renewing.as_ref().unwrap_or(&checked.issuer).id,
            renewal,
            status: CertificateStatus::Active,
            managed: req.manage,
            current_version: 1,
            not_after: checked.info.not_after,
            renew_after,
            created_at: now,
            updated_at: now,
        }
    }

    /// The external CA that signed a leaf no recorded issuer signed: the
    /// issuing certificate from the bundle's chain when it holds one (a new
    /// row, since a recorded one would have matched), else the external
    /// issuer recorded by DN only under the leaf's issuer DN, else a new
    /// DN-only one. A new row (`true`) is returned unsaved.
    async fn external_issuer(
        &self,
        info: &certflow_pki::CertInfo,
        certs: &[Vec<u8>],
        now: OffsetDateTime,
    ) -> Result<(Issuer, bool), DomainError> {
        let leaf = &certs[0];
        let issuing = certs[1..]
            .iter()
            .find(|c| certflow_pki::is_signed_by(leaf, c));
        let (issuing_cert_pem, chain_pem, key_type, not_after, fingerprint) = match issuing {
            Some(ca) => {
                let ca_info = certflow_pki::inspect(ca)?;
                let chain: String = certs[1..]
                    .iter()
                    .filter(|c| *c != ca)
                    .map(|d| certflow_pki::cert_to_pem(d))
                    .collect();
                (
                    certflow_pki::cert_to_pem(ca),
                    chain,
                    ca_info.key_type,
                    ca_info.not_after,
                    Some(ca_info.fingerprint_sha256),
                )
            }
            None => {
                let recorded = self.store.list_issuers().await?.into_iter().find(|i| {
                    i.kind == IssuerKind::External
                        && i.issuing_cert_pem.is_empty()
                        && i.subject == info.issuer
                });
                if let Some(recorded) = recorded {
                    return Ok((recorded, false));
                }
                // Without its certificate the CA's notAfter is unknown; the
                // leaf's is the latest it is known to be valid.
                (String::new(), String::new(), None, info.not_after, None)
            }
        };
        let issuer = Issuer {
            id: Uuid::now_v7(),
            name: external_name(&info.issuer, fingerprint.as_deref()),
            kind: IssuerKind::External,
            is_default: false,
            // Unknown without its certificate (or of a type certflow does not
            // issue with); nothing reads it for an issuer that never signs.
            key_type: key_type.unwrap_or_default(),
            issuing_cert_pem,
            chain_pem,
            key_blob: String::new(),
            root_key_blob: None,
            subject: info.issuer.clone(),
            not_after,
            created_at: now,
        };
        Ok((issuer, true))
    }

    /// Takes over management of the inventory-only certificate `id`: from
    /// now on it is renewed through `issuer` (a certflow issuer's name) or,
    /// when none is named, through the issuer of its current version, which
    /// must then be one of certflow's. Its names are held against the
    /// issuance policy first; a refusal changes nothing. `Conflict` when it is
    /// already managed or archived.
    pub async fn manage_certificate(
        &self,
        actor: &Actor,
        id: Uuid,
        issuer: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<CertificateView, ImportError> {
        let view = self.certificate(id).await?;
        let mut cert = view.certificate;
        if cert.status == CertificateStatus::Archived {
            return Err(DomainError::Conflict(format!("certificate {id} is archived")).into());
        }
        if cert.managed {
            return Err(DomainError::Conflict(format!(
                "certificate {id} is already managed by certflow"
            ))
            .into());
        }
        let current = view
            .versions
            .iter()
            .find(|v| v.version == cert.current_version)
            .ok_or_else(|| {
                DomainError::Internal(format!("certificate {id} has no current version"))
            })?;
        let previous = self.issuer(cert.issuer_id).await?;
        let target = self.renewing_issuer(issuer, &previous).await?;
        self.policies
            .check(&IssuanceRequest {
                team: &cert.team,
                issuer: &target.name,
                profile: cert.profile,
                key_type: cert.key_type,
                names: &cert.names,
                validity_days: cert.validity_days,
                validity_secs: cert.validity_secs,
            })
            .map_err(ImportError::Unprocessable)?;
        cert.managed = true;
        cert.issuer_id = target.id;
        cert.renew_after = self.renew_after(&target, &cert.renewal, current).await;
        cert.updated_at = now;
        let audit = AuditEvent::success(
            now,
            actor,
            "certificate.manage",
            format!("certificate/{id}"),
            json!({
                "issuer": target.name, "previous_issuer": previous.name,
                "renew_after": cert.renew_after.unix_timestamp(),
            }),
        );
        self.store.manage_certificate(&cert, &audit).await?;
        tracing::info!(certificate = %id, issuer = %target.name, "certificate taken over");
        Ok(self.certificate(id).await?)
    }

    /// The certflow issuer that will renew a certificate taken over: the one
    /// named, else `current` (its issuer so far) when that is one of certflow's.
    async fn renewing_issuer(
        &self,
        name: Option<&str>,
        current: &Issuer,
    ) -> Result<Issuer, ImportError> {
        let Some(name) = name else {
            return if can_issue(current) {
                Ok(current.clone())
            } else {
                Err(DomainError::invalid(
                    "issuer",
                    format!(
                        "the certificate was issued by the external CA '{}'; name the certflow \
                         issuer that will renew it",
                        current.subject
                    ),
                )
                .into())
            };
        };
        let issuers = self.store.list_issuers().await?;
        match issuers.into_iter().find(|i| i.name == name) {
            Some(i) if can_issue(&i) => Ok(i),
            Some(_) => Err(DomainError::invalid(
                "issuer",
                format!("'{name}' is an external CA, which certflow cannot issue from"),
            )
            .into()),
            None => {
                Err(DomainError::invalid("issuer", format!("no issuer is named '{name}'")).into())
            }
        }
    }

    /// The issuer whose issuing certificate signed `leaf`, if any: one of
    /// certflow's, or an external CA recorded with its certificate. certflow's
    /// come first: a CA recorded as external and imported later with its key
    /// (`certflow ca import`) is certflow's from then on.
    async fn known_issuer_of(&self, leaf: &[u8]) -> Result<Option<Issuer>, DomainError> {
        let mut issuers = self.store.list_issuers().await?;
        issuers.sort_by_key(|i| !can_issue(i));
        for issuer in issuers {
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

/// The audit event of recording a new external issuer, committed with the
/// first certificate imported from it.
fn external_issuer_audit(actor: &Actor, issuer: &Issuer, now: OffsetDateTime) -> AuditEvent {
    AuditEvent::success(
        now,
        actor,
        "issuer.external",
        format!("issuer/{}", issuer.id),
        json!({ "name": issuer.name, "subject": issuer.subject }),
    )
}

/// Whether certflow can issue (and so renew) through `issuer`.
fn can_issue(issuer: &Issuer) -> bool {
    issuer.kind != IssuerKind::External
}

/// Name of the external issuer recorded for a CA: its CN (else its DN),
/// with the start of its certificate's fingerprint when known, as different
/// CAs may share a name. `dn` comes escaped from `certflow_pki::inspect`
/// (no control characters); a long CN is cut at 64 characters (RFC 5280
/// ub-common-name).
fn external_name(dn: &str, fingerprint: Option<&str>) -> String {
    let cn = dn
        .split(',')
        .find_map(|rdn| rdn.trim().strip_prefix("CN="))
        .unwrap_or(dn);
    let cn: String = match cn.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &cn[..cut]),
        None => cn.to_owned(),
    };
    match fingerprint {
        Some(f) => format!("external: {cn} ({})", &f[..f.len().min(12)]),
        None => format!("external: {cn}"),
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
    use certflow_blob::ObjectBlobStore;
    use certflow_core::model::{AuditQuery, KeyType};
    use certflow_core::policy::IssuancePolicies;
    use certflow_core::ports::{BlobStore as _, MetadataStore as _};
    use certflow_pki::{CaMaterial, LeafRequest, cert_to_pem, create_ca, issue_leaf};
    use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
    use certflow_store::SqliteStore;

    use super::*;

    struct Env {
        _dir: tempfile::TempDir,
        services: Services,
        store: Arc<SqliteStore>,
        blobs: Arc<ObjectBlobStore>,
        /// Imported as certflow's issuer "legacy" (default).
        own: CaMaterial,
        /// A CA certflow does not know.
        foreign: CaMaterial,
        now: OffsetDateTime,
    }

    async fn env() -> Env {
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
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let own = create_ca("Legacy", KeyType::EcdsaP256, now, 3650, 1825).unwrap();
        let foreign = create_ca("Foreign", KeyType::EcdsaP256, now, 3650, 1825).unwrap();
        services
            .import_ca(
                &Actor::system(),
                &ImportCaRequest {
                    name: "legacy".into(),
                    certificate_pem: cert_to_pem(&own.issuing_cert_der),
                    private_key_pem: own.issuing_key.to_pem().to_string(),
                    chain_pem: Some(own.chain_der.iter().map(|d| cert_to_pem(d)).collect()),
                    make_default: true,
                },
                now,
            )
            .await
            .unwrap();
        Env {
            _dir: dir,
            services,
            store,
            blobs,
            own,
            foreign,
            now,
        }
    }

    /// PEM of a leaf for `name` signed by `ca`, with its key, and with the
    /// issuing certificate when `with_chain`.
    fn bundle(ca: &CaMaterial, name: &str, now: OffsetDateTime, with_chain: bool) -> String {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let der = issue_leaf(
            &ca.issuing_cert_der,
            &ca.issuing_key,
            &LeafRequest {
                profile: Profile::TlsServer,
                names: &[SubjectName::Dns(name.into())],
                spki_der: &key.public_key_der(),
                key_type: KeyType::EcdsaP256,
                validity_days: 30,
                validity_secs: None,
                now,
                urls: None,
            },
        )
        .unwrap();
        let mut pem = cert_to_pem(&der);
        if with_chain {
            pem.push_str(&cert_to_pem(&ca.issuing_cert_der));
        }
        pem.push_str(key.to_pem().as_str());
        pem
    }

    async fn external_events(e: &Env) -> usize {
        e.store
            .list_audit(&AuditQuery {
                action_prefix: Some("issuer.external".into()),
                limit: 100,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .items
            .len()
    }

    /// A refused import leaves no row (issue 22): a leaf of a CA certflow
    /// has not seen, under a name its team already uses, is a 409, and
    /// neither that CA's external issuer nor its `issuer.external` event is
    /// stored, whether the CA is known by its certificate or by its DN only.
    #[tokio::test]
    async fn a_refused_import_records_no_issuer() {
        let e = env().await;
        let actor = Actor::system();
        let mut first = import(
            "web",
            bundle(&e.foreign, "a.example.com", e.now, true),
            false,
            None,
        );
        first.name = Some("shared-name".into());
        e.services
            .import_certificate(&actor, &first, e.now)
            .await
            .unwrap();
        let issuers = e.store.list_issuers().await.unwrap();
        let events = external_events(&e).await;
        assert_eq!(events, 1);
        for with_chain in [true, false] {
            let other = create_ca("Other", KeyType::EcdsaP256, e.now, 3650, 1825).unwrap();
            let mut again = import(
                "web",
                bundle(&other, "b.example.com", e.now, with_chain),
                false,
                None,
            );
            again.name = Some("shared-name".into());
            match e.services.import_certificate(&actor, &again, e.now).await {
                Err(ImportError::Domain(DomainError::Conflict(msg))) => {
                    assert!(msg.contains("shared-name"), "{msg}")
                }
                other => panic!("expected 409, got {other:?}"),
            }
            assert_eq!(e.store.list_issuers().await.unwrap(), issuers);
            assert_eq!(external_events(&e).await, events);
        }
        assert_eq!(e.blobs.list("certificates/").await.unwrap().len(), 3);
    }

    /// Every certificate of a bundle must be DER: the leaf or a chain
    /// certificate whose outer SEQUENCE tag is 0x70 is refused by position.
    #[tokio::test]
    async fn non_der_certificates_are_refused_by_position() {
        let e = env().await;
        let pem = bundle(&e.own, "a.example.com", e.now, true);
        let certs = certflow_pki::parse_pem_certs("pem", &pem).unwrap();
        for (at, want) in [(0, "certificate 1: not DER"), (1, "certificate 2: not DER")] {
            let mut bad = certs.clone();
            bad[at][0] = 0x70;
            let text: String = bad.iter().map(|d| cert_to_pem(d)).collect();
            match e
                .services
                .import_certificate(&Actor::system(), &import("web", text, false, None), e.now)
                .await
            {
                Err(ImportError::Domain(DomainError::Invalid(errs))) => {
                    assert_eq!(errs[0].field, "pem");
                    assert!(errs[0].reason.contains(want), "{errs:?}");
                    assert!(errs[0].reason.contains("expected SEQUENCE"), "{errs:?}");
                }
                other => panic!("expected 400, got {other:?}"),
            }
        }
        assert_eq!(e.store.list_issuers().await.unwrap().len(), 1);
    }

    /// A CA whose name carries control characters and a right-to-left
    /// override (made by openssl) is recorded with them escaped (RFC 4514
    /// §2.4 `\XX`), in its issuer's name and subject alike.
    #[tokio::test]
    async fn control_characters_of_a_foreign_ca_are_escaped() {
        let e = env().await;
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let evil_cn = "/CN=Ev\u{1}il\u{1b}[31m\u{202e}CA";
        run(&[
            "req",
            "-x509",
            "-utf8",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            evil_cn,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=evil.example.com",
        ]);
        std::fs::write(
            dir.path().join("ext"),
            "subjectAltName=DNS:evil.example.com\nbasicConstraints=critical,CA:FALSE\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "10",
            "-extfile",
            "ext",
            "-out",
            "leaf.pem",
        ]);
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let pem = format!("{}{}", read("leaf.pem"), read("ca.pem"));
        let view = e
            .services
            .import_certificate(&Actor::system(), &import("web", pem, false, None), e.now)
            .await
            .unwrap();
        let issuer = e
            .store
            .get_issuer(view.certificate.issuer_id)
            .await
            .unwrap()
            .unwrap();
        for text in [&issuer.name, &issuer.subject] {
            assert!(text.contains(r"Ev\01il\1B[31m\E2\80\AECA"), "{text}");
            assert!(
                !text.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{text}"
            );
        }
    }

    /// Taking over management is held against the issuance policy; keeping
    /// the certificate as inventory only is not (it is rated, never renewed).
    #[tokio::test]
    async fn manage_requires_the_policy_inventory_does_not() {
        let e = env().await;
        let with_key = bundle(&e.own, "www.other.org", e.now, false);
        let leaf = certflow_pki::parse_pem_certs("pem", &with_key).unwrap();
        let mut req = import("web", cert_to_pem(&leaf[0]), true, None);
        match e
            .services
            .import_certificate(&Actor::system(), &req, e.now)
            .await
        {
            Err(ImportError::Unprocessable(fields)) => {
                assert!(
                    fields.iter().any(|f| f.reason.contains("www.other.org")),
                    "{fields:?}"
                );
            }
            other => panic!("expected a policy refusal, got {other:?}"),
        }
        assert!(e.blobs.list("certificates/").await.unwrap().is_empty());
        req.manage = false;
        let view = e
            .services
            .import_certificate(&Actor::system(), &req, e.now)
            .await
            .unwrap();
        assert!(!view.certificate.managed);
        assert_eq!(view.certificate.renew_after, view.certificate.not_after);
        assert_eq!(view.certificate.key_source, KeySource::Csr);
    }

    fn import(team: &str, pem: String, manage: bool, issuer: Option<&str>) -> ImportRequest {
        ImportRequest {
            team: team.into(),
            pem: Some(pem),
            manage,
            issuer: issuer.map(str::to_owned),
            ..Default::default()
        }
    }

    async fn manage_events(e: &Env, id: Uuid) -> usize {
        e.store
            .list_audit(&AuditQuery {
                target: Some(format!("certificate/{id}")),
                action_prefix: Some("certificate.manage".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .items
            .len()
    }

    /// An inventory-only certificate is not renewed, not even on request;
    /// taking it over makes it renewable, once.
    #[tokio::test]
    async fn inventory_is_not_renewed_until_taken_over_once() {
        let e = env().await;
        let actor = Actor::system();
        let pem = bundle(&e.own, "www.example.com", e.now, false);
        let view = e
            .services
            .import_certificate(&actor, &import("web", pem, false, None), e.now)
            .await
            .unwrap();
        let id = view.certificate.id;
        assert!(!view.certificate.managed);
        let far = e.now + time::Duration::days(400);
        assert!(e.store.due_for_renewal(far, 100).await.unwrap().is_empty());
        match e.services.renew(&actor, id, None, e.now).await {
            Err(DomainError::Conflict(m)) => assert!(m.contains("inventory only"), "{m}"),
            other => panic!("expected 409, got {other:?}"),
        }

        let taken = e
            .services
            .manage_certificate(&actor, id, None, e.now)
            .await
            .unwrap();
        assert!(taken.certificate.managed);
        assert!(taken.certificate.renew_after < taken.certificate.not_after);
        assert_eq!(manage_events(&e, id).await, 1);
        let due = e.store.due_for_renewal(far, 100).await.unwrap();
        assert_eq!(due.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id]);
        match e.services.manage_certificate(&actor, id, None, e.now).await {
            Err(ImportError::Domain(DomainError::Conflict(m))) => {
                assert!(m.contains("already managed"), "{m}")
            }
            other => panic!("expected 409, got {other:?}"),
        }
        assert_eq!(manage_events(&e, id).await, 1);
        let renewed = e.services.renew(&actor, id, None, e.now).await.unwrap();
        assert_eq!(renewed.certificate.current_version, 2);
    }

    /// A take-over the issuance policy refuses names the rule's field and
    /// value and changes nothing.
    #[tokio::test]
    async fn manage_refused_by_policy_changes_nothing() {
        let e = env().await;
        let actor = Actor::system();
        let pem = bundle(&e.own, "www.other.org", e.now, false);
        let view = e
            .services
            .import_certificate(&actor, &import("web", pem, false, None), e.now)
            .await
            .unwrap();
        let id = view.certificate.id;
        match e.services.manage_certificate(&actor, id, None, e.now).await {
            Err(ImportError::Unprocessable(fields)) => assert!(
                fields.iter().any(|f| f.reason.contains("www.other.org")),
                "{fields:?}"
            ),
            other => panic!("expected a policy refusal, got {other:?}"),
        }
        assert_eq!(
            e.store.get_certificate(id).await.unwrap(),
            Some(view.certificate)
        );
        assert_eq!(manage_events(&e, id).await, 0);
    }

    /// A certificate of another CA is kept under one `external` issuer per
    /// CA; managing it needs a certflow issuer, whose renewals then replace
    /// it; until then the compliance report flags its issuer.
    #[tokio::test]
    async fn external_certificates_are_inventory_until_a_certflow_issuer_takes_over() {
        let e = env().await;
        let actor = Actor::system();
        let first = bundle(&e.foreign, "a.example.com", e.now, true);

        // manage without naming a certflow issuer: 400 on `issuer`, nothing stored.
        match e
            .services
            .import_certificate(&actor, &import("web", first.clone(), true, None), e.now)
            .await
        {
            Err(ImportError::Domain(DomainError::Invalid(fields))) => {
                assert_eq!(fields[0].field, "issuer", "{fields:?}")
            }
            other => panic!("expected 400 on issuer, got {other:?}"),
        }
        assert!(e.blobs.list("certificates/").await.unwrap().is_empty());
        assert_eq!(e.store.list_issuers().await.unwrap().len(), 1);

        let a = e
            .services
            .import_certificate(&actor, &import("web", first.clone(), false, None), e.now)
            .await
            .unwrap();
        let issuers = e.store.list_issuers().await.unwrap();
        let external = issuers
            .iter()
            .find(|i| i.kind == IssuerKind::External)
            .unwrap()
            .clone();
        assert_eq!(a.certificate.issuer_id, external.id);
        assert_eq!(a.versions[0].issuer_id, external.id);
        assert!(!a.certificate.managed);
        assert!(
            external.name.starts_with("external: Foreign"),
            "{}",
            external.name
        );
        // The same certificate again: already known (serial and issuer).
        assert!(matches!(
            e.services
                .import_certificate(&actor, &import("web", first, false, None), e.now)
                .await,
            Err(ImportError::Domain(DomainError::Conflict(_)))
        ));
        // Other certificates of that CA join its issuer, with or without the
        // chain (the recorded CA certificate verifies them).
        for (name, chain) in [("b.example.com", true), ("c.example.com", false)] {
            let pem = bundle(&e.foreign, name, e.now, chain);
            let v = e
                .services
                .import_certificate(&actor, &import("web", pem, false, None), e.now)
                .await
                .unwrap();
            assert_eq!(v.certificate.issuer_id, external.id, "{name}");
        }
        // A CA never seen with its certificate is known by its DN only: one row.
        let third = create_ca("Third", KeyType::EcdsaP256, e.now, 3650, 1825).unwrap();
        let mut dn_only = Vec::new();
        for name in ["d.example.com", "e.example.com"] {
            let pem = bundle(&third, name, e.now, false);
            let v = e
                .services
                .import_certificate(&actor, &import("web", pem, false, None), e.now)
                .await
                .unwrap();
            dn_only.push(v.certificate.issuer_id);
        }
        assert_eq!(dn_only[0], dn_only[1]);
        let by_dn = e.services.issuer(dn_only[0]).await.unwrap();
        assert_ne!(by_dn.id, external.id);
        assert_eq!(
            (by_dn.kind, by_dn.issuing_cert_pem.as_str()),
            (IssuerKind::External, "")
        );
        assert!(by_dn.subject.contains("Third"), "{}", by_dn.subject);
        assert!(matches!(
            e.services.issuer_certificate_der(by_dn.id).await,
            Err(DomainError::NotFound(_))
        ));
        assert_eq!(e.store.list_issuers().await.unwrap().len(), 3);
        let report = e
            .services
            .compliance_report(None, None, 30, e.now)
            .await
            .unwrap();
        let item = report
            .items
            .iter()
            .find(|i| i.certificate_id == a.certificate.id)
            .unwrap();
        assert!(
            item.findings
                .iter()
                .any(|f| f.rule == certflow_core::compliance::rules::UNKNOWN_ISSUER),
            "{item:?}"
        );

        // External CAs never issue.
        match e
            .services
            .manage_certificate(&actor, a.certificate.id, Some(&external.name), e.now)
            .await
        {
            Err(ImportError::Domain(DomainError::Invalid(fields))) => {
                assert_eq!(fields[0].field, "issuer")
            }
            other => panic!("expected 400 on issuer, got {other:?}"),
        }
        let taken = e
            .services
            .manage_certificate(&actor, a.certificate.id, Some("legacy"), e.now)
            .await
            .unwrap();
        let legacy = issuers.iter().find(|i| i.name == "legacy").unwrap();
        assert_eq!(taken.certificate.issuer_id, legacy.id);
        assert_eq!(taken.versions[0].issuer_id, external.id);
        let renewed = e
            .services
            .renew(&actor, a.certificate.id, None, e.now)
            .await
            .unwrap();
        assert_eq!(renewed.versions[0].issuer_id, legacy.id);
        let der = e.blobs.get(&renewed.versions[0].cert_blob).await.unwrap();
        assert!(certflow_pki::is_signed_by(&der, &e.own.issuing_cert_der));
        // Key maintenance passes over external issuers, which hold no key.
        let report = e.services.rewrap_keys(&actor, e.now).await.unwrap();
        assert!(report.keys >= 2, "{report:?}");

        // Once that CA is imported with its key it is certflow's: its next
        // certificate is no longer external.
        let imported = e
            .services
            .import_ca(
                &actor,
                &ImportCaRequest {
                    name: "foreign".into(),
                    certificate_pem: cert_to_pem(&e.foreign.issuing_cert_der),
                    private_key_pem: e.foreign.issuing_key.to_pem().to_string(),
                    chain_pem: Some(e.foreign.chain_der.iter().map(|d| cert_to_pem(d)).collect()),
                    make_default: false,
                },
                e.now,
            )
            .await
            .unwrap();
        let pem = bundle(&e.foreign, "f.example.com", e.now, true);
        let v = e
            .services
            .import_certificate(&actor, &import("web", pem, true, None), e.now)
            .await
            .unwrap();
        assert_eq!(v.versions[0].issuer_id, imported.id);
        assert_eq!(v.certificate.issuer_id, imported.id);
    }

    /// What `/pki/<issuer>/root.crt` and `ca-bundle.pem` serve: for an
    /// imported CA its root and its chain in order, issuing CA first; for a
    /// CA known from imported certificates whose chain stops below the root,
    /// or known by its DN only, not found, never a bundle without its anchor.
    #[tokio::test]
    async fn root_and_ca_bundle_of_imported_and_external_issuers() {
        let e = env().await;
        let issuers = e.store.list_issuers().await.unwrap();
        let legacy = issuers.iter().find(|i| i.name == "legacy").unwrap();
        assert_eq!(
            e.services.issuer_root_der(legacy.id).await.unwrap(),
            e.own.root_cert_der
        );
        let want: String = std::iter::once(&e.own.issuing_cert_der)
            .chain(&e.own.chain_der)
            .map(|d| cert_to_pem(d))
            .collect();
        assert_eq!(
            e.services.issuer_ca_bundle_pem(legacy.id).await.unwrap(),
            want
        );

        // A leaf of another CA imported with its issuing certificate only.
        let pem = bundle(&e.foreign, "a.example.com", e.now, true);
        let v = e
            .services
            .import_certificate(&Actor::system(), &import("web", pem, false, None), e.now)
            .await
            .unwrap();
        let external = v.certificate.issuer_id;
        assert!(e.services.issuer_certificate_der(external).await.is_ok());
        for got in [
            e.services.issuer_root_der(external).await.map(|_| ()),
            e.services.issuer_ca_bundle_pem(external).await.map(|_| ()),
        ] {
            match got {
                Err(DomainError::NotFound(what)) => {
                    assert!(what.contains("ends below the root"), "{what}")
                }
                other => panic!("expected not found, got {other:?}"),
            }
        }
        // A leaf imported without its chain: the CA is known by its DN only.
        let third = create_ca("Third", KeyType::EcdsaP256, e.now, 3650, 1825).unwrap();
        let pem = bundle(&third, "c.example.com", e.now, false);
        let v = e
            .services
            .import_certificate(&Actor::system(), &import("web", pem, false, None), e.now)
            .await
            .unwrap();
        assert!(matches!(
            e.services.issuer_root_der(v.certificate.issuer_id).await,
            Err(DomainError::NotFound(_))
        ));
    }
}
