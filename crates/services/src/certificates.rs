//! Managed certificates: request, renew, revoke, archive, read and download.
//!
//! Issuance order is fixed: build and sign in memory, write blobs (the private
//! key only sealed), then commit metadata with its audit event in one
//! transaction. A failed commit removes the blobs it wrote; what a crash leaves
//! behind is unreferenced and swept later, never a row pointing at nothing.
//!
//! Creating and renewing take an optional idempotency key (the console API's
//! `Idempotency-Key`). Its record (scope, key, request hash, result) commits
//! in the metadata transaction, so a repeat finds it and replays the result.
//! Two requests with one key that race may both sign, but the store's primary
//! key lets exactly one commit; the other removes its blobs like any failed
//! commit and replays the winner's result.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use certflow_api::{CreateCertificateRequest, RenewRequest};
use certflow_core::RenewalPolicy;
use certflow_core::model::IssuerKind;
use certflow_core::model::{
    Actor, AuditEvent, AuditQuery, Certificate, CertificateQuery, CertificateStatus,
    CertificateVersion, IdempotencyRecord, Issuer, KeySource, KeyType, Outcome, Page,
    RevocationReason, VersionStatus,
};
use certflow_core::notify::{EventKind, Notification};
use certflow_core::policy::IssuanceRequest;
use certflow_core::ports::{IssueRequest, IssuedCertificate, VersionCommit, VersionCommitted};
use certflow_core::renewal::JobDelivery;
use certflow_core::{
    DomainError, FieldError, Profile, SubjectName, error::DomainResult, validate_names,
};
use certflow_pki::{CsrInfo, LintContext, LintFinding, LintRefusal, PrivateKey};
use certflow_seal::EncryptionContext;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{DEFAULT_TENANT, Services, validate};

/// ACME-issued certificates the linter found errors in, since the process
/// started (a counter for metrics: the certificates are kept).
static ACME_LINT_FAILURES: AtomicU64 = AtomicU64::new(0);

/// notBefore backdating tolerated when linting a certificate an ACME CA
/// signed: Let's Encrypt backdates by one hour, others by less.
const ACME_BACKDATE: time::Duration = time::Duration::hours(1);

/// Lints a certificate an ACME CA signed, against the issuing certificate
/// at the head of its chain. The CA lints before it signs, by its own
/// rules; this is certflow's view of what it received.
fn lint_received(
    cert_der: &[u8],
    chain_pem: &str,
    profile: Profile,
    key_type: KeyType,
) -> Vec<LintFinding> {
    let chain = certflow_pki::parse_pem_certs("chain", chain_pem).unwrap_or_default();
    certflow_pki::lint_leaf(
        cert_der,
        &LintContext {
            profile,
            key_type,
            // No chain: the lint reports the issuer as unparsable.
            issuer_der: chain.first().map_or(&[][..], Vec::as_slice),
            backdate: ACME_BACKDATE,
            foreign: true,
        },
    )
}

/// The audit form of lint findings.
fn findings_json(findings: &[LintFinding]) -> Vec<serde_json::Value> {
    findings
        .iter()
        .map(|f| json!({ "lint": f.lint, "message": f.message }))
        .collect()
}

/// Largest CSR accepted, in bytes (PEM).
const MAX_CSR_BYTES: usize = 16 * 1024;

/// A certificate with its versions (newest first).
#[derive(Debug, Clone)]
pub struct CertificateView {
    /// The certificate.
    pub certificate: Certificate,
    /// Its versions, newest first.
    pub versions: Vec<CertificateVersion>,
}

/// A certificate as a create request left it.
#[derive(Debug, Clone)]
pub struct Created {
    /// The certificate and its first version.
    pub view: CertificateView,
    /// What this request issued; `None` when an idempotent repeat returned
    /// an earlier request's certificate, which the caller reads as it is now.
    pub issued: Option<FirstIssue>,
}

/// A first version as its request issued it: what the creator's answer
/// shows, known without reading the certificate back.
#[derive(Debug, Clone)]
pub struct FirstIssue {
    /// The certificate and its chain, PEM.
    pub fullchain_pem: String,
    /// The creation's audit event: the certificate's whole history so far.
    pub audit: AuditEvent,
}

/// What to download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadKind {
    /// The certificate alone.
    Certificate,
    /// The issuing chain up to the root, without the certificate.
    Chain,
    /// The certificate followed by the chain.
    FullChain,
}

pub(crate) fn key_context(certificate_id: Uuid, version: u32) -> EncryptionContext {
    EncryptionContext::new(
        DEFAULT_TENANT,
        "certificate-key",
        &format!("certificate/{certificate_id}"),
        version,
    )
}

/// Where a version's blobs live. The serial makes the prefix unique per
/// issuance attempt: two replicas racing to write version n never share (and so
/// never clean up) each other's blobs.
pub(crate) fn blob_prefix(certificate_id: Uuid, version: u32, serial: &str) -> String {
    format!("certificates/{certificate_id}/v{version}-{serial}")
}

/// The chain blob sits beside the certificate blob.
pub(crate) fn chain_blob_of(v: &CertificateVersion) -> String {
    match v.cert_blob.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/chain.pem"),
        None => "chain.pem".to_owned(),
    }
}

fn target(id: Uuid) -> String {
    format!("certificate/{id}")
}

/// A request's idempotency key, scoped and with the hash of its request.
struct Idempotency {
    scope: String,
    key: String,
    request_sha256: String,
}

impl Idempotency {
    /// `None` without a key. The scope is the operation (with the certificate,
    /// for renewals) and then the actor's subject: operation and id contain no
    /// space, so no two scopes collide whatever the subject.
    fn new(
        actor: &Actor,
        operation: &str,
        key: Option<&str>,
        request: &impl serde::Serialize,
    ) -> DomainResult<Option<Self>> {
        let Some(key) = key else {
            return Ok(None);
        };
        validate::idempotency_key(key).map_err(|e| DomainError::Invalid(vec![e]))?;
        // The parsed request re-encoded: field order and absent-versus-null
        // no longer matter, only what the request asks for.
        let canonical = serde_json::to_vec(request)
            .map_err(|e| DomainError::Internal(format!("encoding the request: {e}")))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical);
        Ok(Some(Self {
            scope: format!("{operation} {}", actor.subject),
            key: key.to_owned(),
            request_sha256: hex::encode(digest.as_ref()),
        }))
    }

    fn record(&self, v: &CertificateVersion, now: OffsetDateTime) -> IdempotencyRecord {
        IdempotencyRecord {
            scope: self.scope.clone(),
            key: self.key.clone(),
            request_sha256: self.request_sha256.clone(),
            certificate_id: v.certificate_id,
            version: v.version,
            created_at: now,
        }
    }
}

/// The validated form of a create request.
struct Plan {
    name: String,
    team: String,
    profile: Profile,
    key_type: KeyType,
    names: Vec<SubjectName>,
    validity_days: u32,
    validity_secs: Option<u32>,
    renewal: Option<RenewalPolicy>,
    csr: Option<CsrInfo>,
    issuer: Issuer,
}

/// The profile a create request asks for, tls-server by default.
fn requested_profile(errors: &mut Vec<FieldError>, profile: Option<&str>) -> Option<Profile> {
    match profile {
        None => Some(Profile::TlsServer),
        Some(p) => Profile::parse(p).or_else(|| {
            errors.push(FieldError::new(
                "profile",
                format!("unknown profile '{p}'; one of tls-server, tls-client"),
            ));
            None
        }),
    }
}

/// A create request's CSR, parsed. Only a failure other than a bad CSR is
/// an error; a bad one is among `errors`.
fn requested_csr(errors: &mut Vec<FieldError>, csr: Option<&str>) -> DomainResult<Option<CsrInfo>> {
    Ok(match csr {
        None => None,
        Some(pem) if pem.len() > MAX_CSR_BYTES => {
            errors.push(FieldError::new(
                "csr",
                format!(
                    "is {} bytes; at most {MAX_CSR_BYTES} are accepted",
                    pem.len()
                ),
            ));
            None
        }
        Some(pem) => match certflow_pki::parse_csr("csr", pem.as_bytes()) {
            Ok(info) => Some(info),
            Err(DomainError::Invalid(mut e)) => {
                errors.append(&mut e);
                None
            }
            Err(other) => return Err(other),
        },
    })
}

/// The key type of a create request: the CSR's key's, which a `key_type`
/// given beside it must match; else the one asked for, else the default.
fn requested_key_type(
    errors: &mut Vec<FieldError>,
    key_type: Option<&str>,
    csr: Option<&CsrInfo>,
) -> KeyType {
    let requested_key_type = match key_type {
        None => None,
        Some(k) => KeyType::parse(k).or_else(|| {
            let all: Vec<&str> = KeyType::ALL.iter().map(|k| k.as_str()).collect();
            errors.push(FieldError::new(
                "key_type",
                format!("unknown key type '{k}'; one of {}", all.join(", ")),
            ));
            None
        }),
    };
    match (csr, requested_key_type) {
        (Some(info), Some(k)) if info.key_type != k => {
            errors.push(FieldError::new(
                "key_type",
                format!(
                    "is {} but the CSR's key is {}",
                    k.as_str(),
                    info.key_type.as_str()
                ),
            ));
            k
        }
        (Some(info), _) => info.key_type,
        (None, k) => k.unwrap_or_default(),
    }
}

/// The names of a create request; without any, the CSR's SANs, else its CN.
fn requested_names(
    errors: &mut Vec<FieldError>,
    names: &[String],
    csr: Option<&CsrInfo>,
) -> Vec<SubjectName> {
    let raw_names: Vec<String> = match (csr, names.is_empty()) {
        (Some(info), true) if !info.names.is_empty() => info.names.clone(),
        (Some(info), true) => info.common_name.iter().cloned().collect(),
        _ => names.to_vec(),
    };
    match validate_names("names", &raw_names) {
        Ok(n) => n,
        Err(mut e) => {
            errors.append(&mut e);
            Vec::new()
        }
    }
}

/// The validity in days of a create request (the profile's default unless
/// given; 0 when the profile is unknown), checked with the optional
/// `validity_seconds` against the profile's range.
fn requested_validity(
    errors: &mut Vec<FieldError>,
    req: &CreateCertificateRequest,
    profile: Option<Profile>,
) -> u32 {
    let validity_days = match profile {
        Some(p) => {
            let days = req.validity_days.unwrap_or(p.default_validity_days());
            if days == 0 || days > p.max_validity_days() {
                errors.push(FieldError::new(
                    "validity_days",
                    format!(
                        "{days} is outside the {} profile's range of 1-{} days",
                        p.as_str(),
                        p.max_validity_days()
                    ),
                ));
            }
            days
        }
        None => 0,
    };
    if let (Some(secs), Some(p)) = (req.validity_seconds, profile) {
        let max = u64::from(p.max_validity_days()) * 86_400;
        if secs < 60 || u64::from(secs) > max {
            errors.push(FieldError::new(
                "validity_seconds",
                format!(
                    "{secs} is outside the {} profile's range of 60-{max} seconds",
                    p.as_str()
                ),
            ));
        }
    }
    validity_days
}

impl Services {
    async fn plan(&self, req: &CreateCertificateRequest) -> DomainResult<Plan> {
        let mut errors: Vec<FieldError> = Vec::new();
        validate::team(&mut errors, &req.team);
        validate::labels(&mut errors, &req.labels);
        let profile = requested_profile(&mut errors, req.profile.as_deref());
        let csr = requested_csr(&mut errors, req.csr.as_deref())?;
        let key_type = requested_key_type(&mut errors, req.key_type.as_deref(), csr.as_ref());
        let names = requested_names(&mut errors, &req.names, csr.as_ref());
        let validity_days = requested_validity(&mut errors, req, profile);
        let renewal = req.renewal.as_ref().map(|r| RenewalPolicy {
            renew_at_fraction: r.renew_at_fraction,
            renew_before_days: r.renew_before_days,
            jitter_fraction: r.jitter_fraction,
        });
        if let Some(Err(DomainError::Invalid(mut e))) =
            renewal.as_ref().map(|r| r.validate("renewal"))
        {
            errors.append(&mut e);
        }

        let name = req
            .name
            .clone()
            .or_else(|| names.first().map(SubjectName::to_text))
            .unwrap_or_default();
        if req.name.is_some() || !names.is_empty() {
            validate::display_name(&mut errors, &name);
        }

        let issuer = self.requested_issuer(&mut errors, req.issuer_id).await?;

        match (errors.is_empty(), profile, issuer) {
            (true, Some(profile), Some(issuer)) => {
                // Only a request that is otherwise valid is held against the
                // issuance policies: their verdict needs every field parsed.
                self.policies
                    .check(&IssuanceRequest {
                        team: &req.team,
                        issuer: &issuer.name,
                        profile,
                        key_type,
                        names: &names,
                        validity_days,
                        validity_secs: req.validity_seconds,
                    })
                    .map_err(DomainError::Invalid)?;
                Ok(Plan {
                    name,
                    team: req.team.clone(),
                    profile,
                    key_type,
                    names,
                    validity_days,
                    validity_secs: req.validity_seconds,
                    renewal,
                    csr,
                    issuer,
                })
            }
            _ => Err(DomainError::Invalid(errors)),
        }
    }

    /// The issuer a create request names, or by default certflow's default
    /// issuer (an external CA never issues); `Conflict` when certflow has
    /// none at all.
    async fn requested_issuer(
        &self,
        errors: &mut Vec<FieldError>,
        issuer_id: Option<Uuid>,
    ) -> DomainResult<Option<Issuer>> {
        Ok(match issuer_id {
            Some(id) => match self.store.get_issuer(id).await? {
                Some(i) if i.kind == IssuerKind::External => {
                    errors.push(FieldError::new(
                        "issuer_id",
                        format!(
                            "issuer '{}' is an external CA, which certflow cannot issue from",
                            i.name
                        ),
                    ));
                    None
                }
                Some(i) => Some(i),
                None => {
                    errors.push(FieldError::new(
                        "issuer_id",
                        format!("no issuer with id {id}"),
                    ));
                    None
                }
            },
            None => Some(self.default_issuer().await?),
        })
    }

    /// The issuer of a request that names none: the default, else the
    /// first that can issue. Kept in memory until an issuer is added or the
    /// default changes (here, or on another replica: [`Services::forget_issuers`]).
    async fn default_issuer(&self) -> DomainResult<Issuer> {
        let (cached, generation) = self.issuers.default();
        if let Some(issuer) = cached {
            return Ok(issuer);
        }
        // External CAs (of imported certificates) never issue.
        let issuers: Vec<_> = self
            .store
            .list_issuers()
            .await?
            .into_iter()
            .filter(|i| i.kind != IssuerKind::External)
            .collect();
        let default = issuers
            .iter()
            .find(|i| i.is_default)
            .or(issuers.first())
            .cloned()
            .ok_or_else(|| DomainError::Conflict("no issuer is configured".into()))?;
        self.issuers.remember_default(&default, generation);
        Ok(default)
    }

    /// Signs a version and writes its blobs (or holds them for the version's
    /// own transaction).
    #[allow(clippy::too_many_arguments)]
    async fn issue_version(
        &self,
        owner: Owner<'_>,
        certificate_id: Uuid,
        version: u32,
        issuer: &Issuer,
        profile: Profile,
        names: &[SubjectName],
        validity: (u32, Option<u32>),
        subject_key: SubjectKey<'_>,
        replaces_der: Option<Vec<u8>>,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedVersion> {
        let (spki, key_type, generated, csr_der) = match subject_key {
            SubjectKey::Public {
                spki_der,
                key_type,
                csr_der,
            } => (spki_der.to_vec(), key_type, None, csr_der.to_vec()),
            SubjectKey::Generate(kt) => {
                // Only CAs that want a request (ACME) need one; the internal CA signs the key.
                let csr_names = (issuer.kind != IssuerKind::Internal).then(|| names.to_vec());
                let (key, csr) = self
                    .cpu
                    .run("key generation", move || {
                        let key = PrivateKey::generate(kt)?;
                        let csr = match csr_names {
                            Some(names) => certflow_pki::build_csr(&key, &names)?,
                            None => Vec::new(),
                        };
                        Ok((key, csr))
                    })
                    .await?;
                (key.public_key_der(), kt, Some(key), csr)
            }
        };
        let request = IssueRequest {
            certificate_id,
            names: names.to_vec(),
            profile,
            validity_days: validity.0,
            validity_secs: validity.1,
            csr_der,
            spki_der: spki.clone(),
            key_type,
            replaces_der,
        };
        let issued = self.sign(owner, issuer, &request, version, now).await?;
        let der = issued.cert_der;
        let info = certflow_pki::inspect(&der)?;
        // Whatever the CA, what is stored must be what was asked for.
        if info.spki_der != spki {
            return Err(DomainError::Conflict(format!(
                "issuer '{}' returned a certificate for another key",
                issuer.name
            )));
        }
        let lint_findings = if issuer.kind == IssuerKind::Acme {
            lint_received(&der, &issued.chain_pem, profile, key_type)
        } else {
            Vec::new()
        };
        if !lint_findings.is_empty() {
            ACME_LINT_FAILURES.fetch_add(1, Ordering::Relaxed);
            let findings: Vec<String> = lint_findings.iter().map(ToString::to_string).collect();
            tracing::warn!(
                certificate = %certificate_id,
                version,
                serial = %info.serial_hex,
                issuer = %issuer.name,
                findings = %findings.join("; "),
                "the ACME CA issued a certificate certflow's linter finds fault with; it is kept"
            );
        }

        let fullchain_pem = format!("{}{}", certflow_pki::cert_to_pem(&der), issued.chain_pem);
        let prefix = blob_prefix(certificate_id, version, &info.serial_hex);
        let (cert_blob, key_blob, blobs) = self
            .seal_version_blobs(
                &prefix,
                certificate_id,
                version,
                generated.as_ref(),
                &der,
                &issued.chain_pem,
            )
            .await?;
        let blobs = if self.blobs.in_metadata_database() {
            VersionBlobs::Attached(blobs)
        } else {
            VersionBlobs::Written(self.put_version_blobs(blobs).await?)
        };
        Ok(IssuedVersion {
            version: CertificateVersion {
                certificate_id,
                version,
                serial: info.serial_hex,
                fingerprint_sha256: info.fingerprint_sha256,
                not_before: info.not_before,
                not_after: info.not_after,
                key_type,
                names: names.to_vec(),
                issuer_id: issuer.id,
                status: VersionStatus::Current,
                revoked_at: None,
                revocation_reason: None,
                cert_blob,
                key_blob,
                created_at: now,
            },
            blobs,
            fullchain_pem,
            lint_findings,
        })
    }

    /// `issuer` signs `request`, for version `version` of `owner`'s certificate.
    async fn sign(
        &self,
        owner: Owner<'_>,
        issuer: &Issuer,
        request: &IssueRequest,
        version: u32,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedCertificate> {
        Ok(match issuer.kind {
            // The internal CA lints before it signs; a refusal is audited and
            // announced here, where the certificate's owner is known.
            IssuerKind::Internal => match self
                .backends
                .internal
                .issue_linted(issuer, request, now)
                .await?
            {
                Ok(issued) => issued,
                Err(refusal) => {
                    return Err(self
                        .lint_refused(owner, request.certificate_id, version, &refusal, now)
                        .await);
                }
            },
            _ => {
                self.backends
                    .get(issuer)?
                    .issue(issuer, request, now)
                    .await?
            }
        })
    }

    /// Writes the blobs of version `version` under `prefix`: the key sealed
    /// (when certflow holds it), the certificate and its chain. Returns the
    /// certificate's and the key's blob keys and every key written; should a
    /// write fail, those already written are removed.
    pub(crate) async fn write_version_blobs(
        &self,
        prefix: &str,
        certificate_id: Uuid,
        version: u32,
        key: Option<&PrivateKey>,
        cert_der: &[u8],
        chain_pem: &str,
    ) -> DomainResult<(String, Option<String>, Vec<String>)> {
        let (cert_blob, key_blob, blobs) = self
            .seal_version_blobs(prefix, certificate_id, version, key, cert_der, chain_pem)
            .await?;
        let written = self.put_version_blobs(blobs).await?;
        Ok((cert_blob, key_blob, written))
    }

    /// The blobs of version `version` under `prefix`, not yet written: the
    /// key sealed (when certflow holds it), the certificate and its chain;
    /// with the certificate's and the key's blob keys.
    async fn seal_version_blobs(
        &self,
        prefix: &str,
        certificate_id: Uuid,
        version: u32,
        key: Option<&PrivateKey>,
        cert_der: &[u8],
        chain_pem: &str,
    ) -> DomainResult<(String, Option<String>, Vec<(String, Bytes)>)> {
        let cert_blob = format!("{prefix}/cert.der");
        let chain_blob = format!("{prefix}/chain.pem");
        let mut blobs = Vec::with_capacity(3);
        let mut key_blob = None;
        if let Some(key) = key {
            let blob = format!("{prefix}/key.enc");
            let sealed = self
                .sealer
                .seal(key.pkcs8_der(), &key_context(certificate_id, version))
                .await?;
            blobs.push((blob.clone(), Bytes::from(sealed)));
            key_blob = Some(blob);
        }
        blobs.push((cert_blob.clone(), Bytes::from(cert_der.to_vec())));
        blobs.push((chain_blob, Bytes::from(chain_pem.to_owned())));
        Ok((cert_blob, key_blob, blobs))
    }

    /// Writes a version's blobs as one batch (the local store makes them
    /// durable together); returns their keys. Should a write fail, those
    /// already written are removed.
    async fn put_version_blobs(&self, blobs: Vec<(String, Bytes)>) -> DomainResult<Vec<String>> {
        let written: Vec<String> = blobs.iter().map(|(key, _)| key.clone()).collect();
        if let Err(e) = self.blobs.put_all(blobs).await {
            self.remove_blobs(&written).await;
            return Err(e);
        }
        Ok(written)
    }

    /// Commits a version and its blobs: in the version's own transaction
    /// when they are rows of the metadata database; else the blobs are
    /// written already, and removed again should the commit fail. `first`:
    /// a new certificate with its first version (for which `commit`'s job
    /// must be `None`), else a new version of it.
    async fn commit_version(
        &self,
        first: bool,
        mut commit: VersionCommit<'_>,
        blobs: VersionBlobs,
    ) -> DomainResult<VersionCommitted> {
        let store = &self.store;
        let written = match blobs {
            VersionBlobs::Attached(attached) => {
                commit.blobs = attached;
                Vec::new()
            }
            VersionBlobs::Written(written) => written,
        };
        let committed = if first {
            store
                .create_first_version(commit)
                .await
                .map(|()| VersionCommitted::default())
        } else {
            store.commit_version(commit).await
        };
        if committed.is_err() {
            self.remove_blobs(&written).await;
        }
        committed
    }

    /// The result stored under the request's key, if the key was used: the
    /// certificate as it is now. A key used with another request is refused.
    async fn replay(&self, idempotency: &Idempotency) -> DomainResult<Option<CertificateView>> {
        let Some(record) = self
            .store
            .get_idempotency(&idempotency.scope, &idempotency.key)
            .await?
        else {
            return Ok(None);
        };
        if record.request_sha256 != idempotency.request_sha256 {
            return Err(DomainError::IdempotencyKeyReused(format!(
                "Idempotency-Key '{}' was already used with a different request; \
                 use a new key for a new request",
                idempotency.key
            )));
        }
        tracing::info!(
            certificate = %record.certificate_id,
            version = record.version,
            "idempotent request replayed"
        );
        self.certificate(record.certificate_id).await.map(Some)
    }

    /// After a failed commit (whose blobs are already removed): a conflict
    /// may be a concurrent request with the same key that committed first,
    /// whose result is then ours.
    async fn after_failed_commit(
        &self,
        idempotency: Option<&Idempotency>,
        error: DomainError,
    ) -> DomainResult<CertificateView> {
        if let (DomainError::Conflict(_), Some(idempotency)) = (&error, idempotency)
            && let Some(view) = self.replay(idempotency).await?
        {
            return Ok(view);
        }
        Err(error)
    }

    /// Requests a new managed certificate and issues its first version.
    pub async fn create_certificate(
        &self,
        actor: &Actor,
        req: &CreateCertificateRequest,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        self.create_certificate_idempotent(actor, req, None, now)
            .await
    }

    /// [`create_certificate`](Self::create_certificate) with an optional
    /// idempotency key (1-255 printable ASCII characters), scoped to the
    /// actor: a repeat of the request with the same key returns the
    /// certificate the first one created instead of issuing again, and the
    /// key with another request is refused with `IdempotencyKeyReused`.
    pub async fn create_certificate_idempotent(
        &self,
        actor: &Actor,
        req: &CreateCertificateRequest,
        idempotency_key: Option<&str>,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        self.create_certificate_answered(actor, req, idempotency_key, now)
            .await
            .map(|created| created.view)
    }

    /// [`create_certificate_idempotent`](Self::create_certificate_idempotent),
    /// returning also what a fresh issuance knows (its full chain and audit
    /// event), so that the caller's answer needs no read back.
    pub async fn create_certificate_answered(
        &self,
        actor: &Actor,
        req: &CreateCertificateRequest,
        idempotency_key: Option<&str>,
        now: OffsetDateTime,
    ) -> DomainResult<Created> {
        self.create_certificate_as(actor, req, idempotency_key, true, now)
            .await
    }

    /// [`create_certificate_idempotent`](Self::create_certificate_idempotent);
    /// with `managed = false` certflow never renews the certificate itself
    /// (its requester does, e.g. an ACME client), so it is due at its notAfter.
    pub(crate) async fn create_certificate_as(
        &self,
        actor: &Actor,
        req: &CreateCertificateRequest,
        idempotency_key: Option<&str>,
        managed: bool,
        now: OffsetDateTime,
    ) -> DomainResult<Created> {
        let idempotency = Idempotency::new(actor, "certificate.create", idempotency_key, req)?;
        if let Some(idempotency) = &idempotency
            && let Some(view) = self.replay(idempotency).await?
        {
            return Ok(Created { view, issued: None });
        }
        let plan = self.plan(req).await?;
        let id = Uuid::now_v7();
        let subject_key = match &plan.csr {
            Some(info) => SubjectKey::Public {
                spki_der: &info.spki_der,
                key_type: info.key_type,
                csr_der: &info.der,
            },
            None => SubjectKey::Generate(plan.key_type),
        };
        let IssuedVersion {
            version,
            blobs,
            fullchain_pem,
            lint_findings,
        } = self
            .issue_version(
                Owner {
                    actor,
                    team: &plan.team,
                    name: &plan.name,
                },
                id,
                1,
                &plan.issuer,
                plan.profile,
                &plan.names,
                (plan.validity_days, plan.validity_secs),
                subject_key,
                None,
                now,
            )
            .await?;
        let renewal = match plan.renewal.clone() {
            Some(policy) => policy,
            None => self.renewal_defaults.resolve(&plan.team, &plan.issuer.name),
        };
        let cert = Certificate {
            id,
            name: plan.name,
            team: plan.team,
            labels: req.labels.clone(),
            profile: plan.profile,
            key_type: plan.key_type,
            key_source: if plan.csr.is_some() {
                KeySource::Csr
            } else {
                KeySource::Server
            },
            names: plan.names,
            validity_days: plan.validity_days,
            validity_secs: plan.validity_secs,
            issuer_id: plan.issuer.id,
            renew_after: if managed {
                self.renew_after(&plan.issuer, &renewal, &version).await
            } else {
                version.not_after
            },
            renewal,
            status: CertificateStatus::Active,
            managed,
            current_version: 1,
            not_after: version.not_after,
            created_at: now,
            updated_at: now,
        };
        let details = creation_details(&cert, &version, &lint_findings);
        let audit = AuditEvent::success(now, actor, "certificate.create", target(id), details);
        let record = idempotency.as_ref().map(|i| i.record(&version, now));
        // As a renewal's: the event commits with the certificate where it can.
        let announce = self
            .announces_in_commit()
            .then(|| self.version_event(EventKind::Issued, &cert, 1, Some(&version.serial), now));
        let commit = VersionCommit {
            announce: announce.as_ref(),
            ..VersionCommit::new(&cert, &version, &audit, record.as_ref())
        };
        if let Err(e) = self.commit_version(true, commit, blobs).await {
            return self
                .after_failed_commit(idempotency.as_ref(), e)
                .await
                .map(|view| Created { view, issued: None });
        }
        tracing::info!(certificate = %id, serial = %version.serial, "certificate issued");
        self.warn_if_renewal_margin_short(&cert);
        let view = CertificateView {
            certificate: cert,
            versions: vec![version],
        };
        if announce.is_none() {
            self.publish_version_event(EventKind::Issued, &view, 1, now)
                .await;
        }
        Ok(Created {
            view,
            issued: Some(FirstIssue {
                fullchain_pem,
                audit,
            }),
        })
    }

    /// Issues a new version now, whatever the renewal schedule says. A server-held
    /// key is replaced by a fresh one; a CSR-keyed certificate keeps its public key
    /// unless a new CSR is given.
    pub async fn renew(
        &self,
        actor: &Actor,
        id: Uuid,
        csr: Option<&str>,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        self.renew_idempotent(actor, id, csr, None, now).await
    }

    /// [`renew`](Self::renew) with an optional idempotency key, scoped to the
    /// actor and the certificate: a repeat with the same key and CSR returns
    /// the certificate as renewed by the first instead of issuing another
    /// version; the key with another CSR is refused with `IdempotencyKeyReused`.
    pub async fn renew_idempotent(
        &self,
        actor: &Actor,
        id: Uuid,
        csr: Option<&str>,
        idempotency_key: Option<&str>,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        self.renew_inner(actor, id, csr, idempotency_key, None, now)
            .await
    }

    /// Renews; `replacing` is the version revoked just before and its
    /// reason, when the new version replaces it (recorded in the audit).
    async fn renew_inner(
        &self,
        actor: &Actor,
        id: Uuid,
        csr: Option<&str>,
        idempotency_key: Option<&str>,
        replacing: Option<(u32, RevocationReason)>,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        let request = RenewRequest {
            csr: csr.map(str::to_owned),
        };
        let idempotency = Idempotency::new(
            actor,
            &format!("certificate.renew/{id}"),
            idempotency_key,
            &request,
        )?;
        if let Some(idempotency) = &idempotency
            && let Some(view) = self.replay(idempotency).await?
        {
            return Ok(view);
        }
        let view = self.certificate(id).await?;
        refuse_unrenewable(&view.certificate)?;
        let issuer = self.issuer_to_sign_with(view.certificate.issuer_id).await?;
        // Policies may have been tightened since the last version: every
        // renewal (console, agent, worker) is held against today's.
        let latest = view.versions.first().map_or(0, |v| v.version);
        self.check_renewal_policy(actor, &view.certificate, &issuer, latest, now)
            .await?
            .map_or(Ok(()), |fields| Err(DomainError::Invalid(fields)))?;
        self.renew_checked(
            Renewal {
                actor,
                view,
                issuer,
                csr,
                idempotency,
                replacing,
                completes: None,
            },
            now,
        )
        .await
        .map(|(view, _)| view)
    }

    /// A renewal job's new version of a certificate the worker has read,
    /// found due and held against the issuance policy. `key` is the job's
    /// idempotency key: a duplicate delivery that loses the race to commit
    /// answers the version the other stored. `completes`: the job's
    /// delivery, acknowledged with the version (see [`Renewal::completes`]).
    pub(crate) async fn renew_for_job(
        &self,
        actor: &Actor,
        view: CertificateView,
        issuer: Issuer,
        key: &str,
        completes: Option<&JobDelivery>,
        now: OffsetDateTime,
    ) -> DomainResult<(CertificateView, VersionCommitted)> {
        let id = view.certificate.id;
        let idempotency = Idempotency::new(
            actor,
            &format!("certificate.renew/{id}"),
            Some(key),
            &RenewRequest { csr: None },
        )?;
        self.renew_checked(
            Renewal {
                actor,
                view,
                issuer,
                csr: None,
                idempotency,
                replacing: None,
                completes,
            },
            now,
        )
        .await
    }

    /// Issues and commits the next version of a certificate its caller has
    /// read, found renewable and held against the issuance policy; answers
    /// the certificate as committed, without reading it back.
    async fn renew_checked(
        &self,
        renewal: Renewal<'_>,
        now: OffsetDateTime,
    ) -> DomainResult<(CertificateView, VersionCommitted)> {
        let Renewal {
            actor,
            view,
            issuer,
            csr,
            idempotency,
            replacing,
            completes,
        } = renewal;
        let id = view.certificate.id;
        // A key reported compromised is never certified again (RFC 5280
        // keyCompromise): whichever way the renewal would reuse it.
        let compromised = self.compromised_keys(&view).await?;
        let CertificateView {
            certificate: mut cert,
            versions,
        } = view;
        refuse_unrenewable(&cert)?;
        let latest = versions
            .first()
            .ok_or_else(|| DomainError::Internal(format!("certificate {id} has no version")))?;
        let new_csr = renewal_csr(&cert, csr, &compromised)?;
        let old_spki;
        let subject_key = match (&new_csr, cert.key_source) {
            (Some(info), _) => SubjectKey::Public {
                spki_der: &info.spki_der,
                key_type: info.key_type,
                csr_der: &info.der,
            },
            (None, KeySource::Server) => SubjectKey::Generate(cert.key_type),
            (None, KeySource::Csr) => {
                old_spki = self.reusable_key(id, latest, &compromised).await?;
                SubjectKey::Public {
                    spki_der: &old_spki,
                    key_type: cert.key_type,
                    csr_der: &[],
                }
            }
        };
        let replaces = self.acme_replaces(&issuer, latest).await;
        let next = latest.version + 1;
        let IssuedVersion {
            version,
            blobs,
            lint_findings,
            ..
        } = self
            .issue_version(
                Owner {
                    actor,
                    team: &cert.team,
                    name: &cert.name,
                },
                id,
                next,
                &issuer,
                cert.profile,
                &cert.names,
                (cert.validity_days, cert.validity_secs),
                subject_key,
                replaces,
                now,
            )
            .await?;
        cert.current_version = next;
        cert.not_after = version.not_after;
        cert.renew_after = self.renew_after(&issuer, &cert.renewal, &version).await;
        cert.status = CertificateStatus::Active;
        cert.updated_at = now;
        let details = renewal_details(&version, &latest.serial, replacing, &lint_findings);
        let audit = AuditEvent::success(now, actor, "certificate.renew", target(id), details);
        let record = idempotency.as_ref().map(|i| i.record(&version, now));
        // The event commits with the version where the notifications are
        // rows of the same database: none lost to a crash in between.
        let announce = self.announces_in_commit().then(|| {
            self.version_event(EventKind::Renewed, &cert, next, Some(&version.serial), now)
        });
        let commit = VersionCommit {
            announce: announce.as_ref(),
            completes,
            ..VersionCommit::new(&cert, &version, &audit, record.as_ref())
        };
        let committed = match self.commit_version(false, commit, blobs).await {
            Ok(committed) => committed,
            Err(e) => {
                return self
                    .after_failed_commit(idempotency.as_ref(), e)
                    .await
                    .map(|view| (view, VersionCommitted::default()));
            }
        };
        tracing::info!(certificate = %id, version = next, serial = %version.serial, "certificate renewed");
        // The certificate as the commit left it: the row this request wrote
        // and the versions it read, the new one first and current.
        let superseded = versions.into_iter().map(|mut v| {
            if v.status == VersionStatus::Current {
                v.status = VersionStatus::Superseded;
            }
            v
        });
        let view = CertificateView {
            certificate: cert,
            versions: std::iter::once(version).chain(superseded).collect(),
        };
        if announce.is_none() {
            self.publish_version_event(EventKind::Renewed, &view, next, now)
                .await;
        }
        Ok((view, committed))
    }

    /// The public key of the latest version, for a CSR-keyed renewal
    /// without a new CSR; refused when that key was reported compromised.
    async fn reusable_key(
        &self,
        id: Uuid,
        latest: &CertificateVersion,
        compromised: &[(u32, Vec<u8>)],
    ) -> DomainResult<Vec<u8>> {
        let der = self.blobs.get(&latest.cert_blob).await?;
        let spki = certflow_pki::public_key_of(&der)?;
        if let Some((n, _)) = compromised.iter().find(|(_, k)| *k == spki) {
            return Err(DomainError::Conflict(key_compromised_reason(id, *n)));
        }
        Ok(spki)
    }

    /// What an ACME CA is told the renewal replaces (RFC 9773 `replaces`):
    /// the latest version's certificate; nothing for other CAs.
    async fn acme_replaces(&self, issuer: &Issuer, latest: &CertificateVersion) -> Option<Vec<u8>> {
        if issuer.kind == IssuerKind::Acme {
            self.blobs
                .get(&latest.cert_blob)
                .await
                .ok()
                .map(|b| b.to_vec())
        } else {
            None
        }
    }

    /// Revokes a version (the current one by default) with an RFC 5280 reason.
    pub async fn revoke(
        &self,
        actor: &Actor,
        id: Uuid,
        version: Option<u32>,
        reason: &str,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        self.revoke_with(actor, id, version, reason, false, now)
            .await
            .map(|r| r.view)
    }

    /// [`revoke`](Self::revoke), and with `replace` a new version issued at
    /// once through the renewal path, so that the certificate stays active
    /// and agents install the replacement on their next poll.
    ///
    /// What makes a replacement impossible is refused before anything is
    /// revoked: a version other than the current one, an archived
    /// certificate, and a requester-held (CSR) key revoked for
    /// `keyCompromise` (only its holder can re-key). Issuing the replacement
    /// happens after the revocation committed: if it fails, the revocation
    /// stands, the answer says so ([`Replacement::Failed`]), and the failure
    /// is audited and announced (`renewal-failing`) for someone to renew.
    pub async fn revoke_with(
        &self,
        actor: &Actor,
        id: Uuid,
        version: Option<u32>,
        reason: &str,
        replace: bool,
        now: OffsetDateTime,
    ) -> DomainResult<Revocation> {
        let reason = RevocationReason::parse(reason)
            .filter(|r| r.applies_to_end_entity())
            .ok_or_else(|| {
                let allowed: Vec<&str> = RevocationReason::ALL
                    .iter()
                    .filter(|r| r.applies_to_end_entity())
                    .map(|r| r.as_str())
                    .collect();
                DomainError::invalid("reason", format!("'{reason}' is not a revocation reason for end-entity certificates; one of {}", allowed.join(", ")))
            })?;
        let view = self.certificate(id).await?;
        let number = version.unwrap_or(view.certificate.current_version);
        let v = view
            .versions
            .iter()
            .find(|v| v.version == number)
            .ok_or_else(|| {
                DomainError::NotFound(format!("version {number} of certificate {id}"))
            })?;
        let mut details =
            json!({ "version": number, "serial": v.serial, "reason": reason.as_str() });
        if replace {
            Self::check_replaceable(&view, number, reason)?;
            // The number the replacement takes: versions are numbered one
            // after the latest, and add_version refuses any other.
            let next = view.versions.first().map_or(1, |l| l.version + 1);
            details["replace"] = json!(true);
            details["replacement_version"] = json!(next);
        }
        let audit = AuditEvent::success(now, actor, "certificate.revoke", target(id), details);
        self.store
            .revoke_version(id, number, reason, now, &audit)
            .await?;
        tracing::info!(certificate = %id, version = number, reason = reason.as_str(), replace, "certificate revoked");
        self.revocation_committed(v.issuer_id, &v.serial, now).await;
        let revoked = self.certificate(id).await?;
        self.publish_version_event(EventKind::Revoked, &revoked, number, now)
            .await;
        if !replace {
            return Ok(Revocation {
                view: revoked,
                revoked_version: number,
                replacement: None,
            });
        }
        let replacement = match self
            .renew_inner(actor, id, None, None, Some((number, reason)), now)
            .await
        {
            Ok(view) => Replacement::Issued {
                version: view.certificate.current_version,
            },
            Err(e) => {
                let error = e.to_string();
                self.replacement_failed(actor, &revoked.certificate, number, &error, now)
                    .await;
                Replacement::Failed { error }
            }
        };
        Ok(Revocation {
            view: self.certificate(id).await?,
            revoked_version: number,
            replacement: Some(replacement),
        })
    }

    /// Refuses, before anything is revoked, a replacement that cannot be issued.
    fn check_replaceable(
        view: &CertificateView,
        number: u32,
        reason: RevocationReason,
    ) -> DomainResult<()> {
        let cert = &view.certificate;
        if cert.status == CertificateStatus::Archived {
            return Err(DomainError::Conflict(format!(
                "certificate {} is archived: it is not replaced; revoke without replace",
                cert.id
            )));
        }
        if number != cert.current_version {
            return Err(DomainError::invalid(
                "replace",
                format!(
                    "only the current version ({}) is replaced; version {number} is not current",
                    cert.current_version
                ),
            ));
        }
        if cert.key_source == KeySource::Csr && reason == RevocationReason::KeyCompromise {
            return Err(DomainError::Conflict(format!(
                "key compromised: re-key needed. Certificate {}'s key is held by its requester, \
                 so certflow cannot replace it with a new key; nothing was revoked. Revoke \
                 without replace, then the key holder requests a new version with a new key \
                 (agents: POST /agent/v1/certificates/{}/renew with a new csr)",
                cert.id, cert.id
            )));
        }
        Ok(())
    }

    /// A replacement that could not be issued after its revocation
    /// committed: audited and announced so that someone renews by hand
    /// (a revoked certificate is not picked up by the renewal workers).
    async fn replacement_failed(
        &self,
        actor: &Actor,
        cert: &Certificate,
        revoked: u32,
        error: &str,
        now: OffsetDateTime,
    ) {
        let mut audit = AuditEvent::success(
            now,
            actor,
            "certificate.replacement.failed",
            target(cert.id),
            json!({ "revoked_version": revoked, "error": error }),
        );
        audit.outcome = Outcome::Failure;
        if let Err(e) = self.store.append_audit(&audit).await {
            tracing::error!(certificate = %cert.id, error = %e, "could not audit a failed replacement");
        }
        tracing::error!(certificate = %cert.id, version = revoked, error, "revoked, but its replacement was not issued");
        self.publish(
            Notification {
                reason: Some(error.to_owned()),
                summary: format!(
                    "{} version {revoked} was revoked but its replacement was not issued: {error}; renew it now",
                    cert.name
                ),
                details: json!({ "revoked_version": revoked }),
                ..Notification::about(EventKind::RenewalFailing, cert, revoked, now)
            },
            Some(&format!("replacement-failed:{}:v{revoked}", cert.id)),
        )
        .await;
    }

    /// The public keys (SPKI DER) of the versions revoked for
    /// `keyCompromise`: never to be certified again.
    async fn compromised_keys(&self, view: &CertificateView) -> DomainResult<Vec<(u32, Vec<u8>)>> {
        let mut keys = Vec::new();
        for v in &view.versions {
            if v.revocation_reason == Some(RevocationReason::KeyCompromise) {
                let der = self.blobs.get(&v.cert_blob).await?;
                keys.push((v.version, certflow_pki::public_key_of(&der)?));
            }
        }
        Ok(keys)
    }

    /// Why a CSR-keyed certificate cannot be renewed with the key it has
    /// (a version with that key was revoked for `keyCompromise`), if so.
    pub(crate) async fn key_compromised(
        &self,
        view: &CertificateView,
    ) -> DomainResult<Option<String>> {
        let cert = &view.certificate;
        let Some(latest) = view.versions.first() else {
            return Ok(None);
        };
        if cert.key_source != KeySource::Csr {
            return Ok(None);
        }
        let compromised = self.compromised_keys(view).await?;
        if compromised.is_empty() {
            return Ok(None);
        }
        let der = self.blobs.get(&latest.cert_blob).await?;
        let spki = certflow_pki::public_key_of(&der)?;
        Ok(compromised
            .iter()
            .find(|(_, k)| *k == spki)
            .map(|(n, _)| key_compromised_reason(cert.id, *n)))
    }

    /// Retires a certificate: kept for history, no longer renewed or delivered.
    pub async fn archive(
        &self,
        actor: &Actor,
        id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        let view = self.certificate(id).await?;
        if view.certificate.status == CertificateStatus::Archived {
            return Err(DomainError::Conflict(format!(
                "certificate {id} is already archived"
            )));
        }
        let audit = AuditEvent::success(now, actor, "certificate.archive", target(id), json!({}));
        self.store.archive_certificate(id, now, &audit).await?;
        self.certificate(id).await
    }

    /// One certificate with its versions.
    pub async fn certificate(&self, id: Uuid) -> DomainResult<CertificateView> {
        Ok(CertificateView {
            certificate: self.certificate_row(id).await?,
            versions: self.store.list_versions(id).await?,
        })
    }

    /// The certificate's row, or `NotFound`.
    async fn certificate_row(&self, id: Uuid) -> DomainResult<Certificate> {
        self.store
            .get_certificate(id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("certificate {id}")))
    }

    /// A certificate with the versions a renewal reads
    /// ([`certflow_core::ports::MetadataStore::renewal_versions`]), not its
    /// whole history.
    pub(crate) async fn renewal_view(&self, id: Uuid) -> DomainResult<CertificateView> {
        Ok(CertificateView {
            certificate: self.certificate_row(id).await?,
            versions: self.store.renewal_versions(id).await?,
        })
    }

    /// Search, filter, sort and paginate.
    pub async fn list(&self, query: &CertificateQuery) -> DomainResult<Page<Certificate>> {
        self.store.list_certificates(query).await
    }

    /// Audit trail.
    pub async fn audit(&self, query: &AuditQuery) -> DomainResult<Page<AuditEvent>> {
        self.store.list_audit(query).await
    }

    fn pick(view: &CertificateView, version: Option<u32>) -> DomainResult<&CertificateVersion> {
        let number = version.unwrap_or(view.certificate.current_version);
        view.versions
            .iter()
            .find(|v| v.version == number)
            .ok_or_else(|| {
                DomainError::NotFound(format!(
                    "version {number} of certificate {}",
                    view.certificate.id
                ))
            })
    }

    async fn chain_pem(&self, v: &CertificateVersion) -> DomainResult<String> {
        let chain_blob = chain_blob_of(v);
        let bytes = self.blobs.get(&chain_blob).await?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| DomainError::Integrity(format!("chain blob {chain_blob} is not UTF-8")))
    }

    /// PEM download of a version: certificate, chain, or both.
    pub async fn download(
        &self,
        id: Uuid,
        version: Option<u32>,
        kind: DownloadKind,
    ) -> DomainResult<String> {
        let view = self.certificate(id).await?;
        let v = Self::pick(&view, version)?;
        let cert_pem = certflow_pki::cert_to_pem(&self.blobs.get(&v.cert_blob).await?);
        Ok(match kind {
            DownloadKind::Certificate => cert_pem,
            DownloadKind::Chain => self.chain_pem(v).await?,
            DownloadKind::FullChain => format!("{cert_pem}{}", self.chain_pem(v).await?),
        })
    }

    pub(crate) async fn private_key(&self, v: &CertificateVersion) -> DomainResult<PrivateKey> {
        // The certificate exists but certflow never had this key: a state of
        // the resource (409), not a missing one (404).
        let blob = v.key_blob.as_ref().ok_or_else(|| {
            DomainError::Conflict(format!(
                "certflow does not hold the private key of version {}: it was issued for a \
                 certificate signing request (or imported without its key), so only the requester has it",
                v.version
            ))
        })?;
        let sealed = self.blobs.get(blob).await?;
        let der = self
            .sealer
            .open(&sealed, &key_context(v.certificate_id, v.version))
            .await?;
        PrivateKey::from_pkcs8_der(&der)
    }

    /// The private key (PKCS#8 PEM). Audited before it is returned: if the
    /// audit record cannot be written, the key is not handed out.
    pub async fn download_key(
        &self,
        actor: &Actor,
        id: Uuid,
        version: Option<u32>,
        now: OffsetDateTime,
    ) -> DomainResult<Zeroizing<String>> {
        let view = self.certificate(id).await?;
        let v = Self::pick(&view, version)?;
        let key = self.private_key(v).await?;
        self.audit_key_download(actor, id, v.version, "pem", now)
            .await?;
        Ok(key.to_pem())
    }

    /// Records a private-key download; callers hand the key out only if this succeeds.
    async fn audit_key_download(
        &self,
        actor: &Actor,
        id: Uuid,
        version: u32,
        format: &str,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        self.store
            .append_audit(&AuditEvent::success(
                now,
                actor,
                "certificate.key.download",
                target(id),
                json!({ "version": version, "format": format }),
            ))
            .await
    }

    /// Certificate, chain and key as a password-protected PKCS#12 file. Audited.
    pub async fn download_pkcs12(
        &self,
        actor: &Actor,
        id: Uuid,
        version: Option<u32>,
        password: &str,
        now: OffsetDateTime,
    ) -> DomainResult<Vec<u8>> {
        validate::pkcs12_password(password).map_err(|e| DomainError::Invalid(vec![e]))?;
        let view = self.certificate(id).await?;
        let v = Self::pick(&view, version)?;
        let key = self.private_key(v).await?;
        let cert_der = self.blobs.get(&v.cert_blob).await?;
        let chain = certflow_pki::parse_pem_certs("chain", &self.chain_pem(v).await?)?;
        // Three key derivations of 100,000 iterations: off the async runtime.
        let password = zeroize::Zeroizing::new(password.to_owned());
        let name = view.certificate.name.clone();
        let p12 = self
            .cpu
            .run("PKCS#12 export", move || {
                certflow_pki::pkcs12(&cert_der, &chain, &key, &password, &name)
            })
            .await?;
        self.audit_key_download(actor, id, v.version, "pkcs12", now)
            .await?;
        Ok(p12)
    }
}

/// The `certificate.create` audit event's details: the certificate, its
/// first version's serial and what the linter found.
fn creation_details(
    cert: &Certificate,
    first: &CertificateVersion,
    lint_findings: &[LintFinding],
) -> serde_json::Value {
    let mut details = json!({
        "name": cert.name, "team": cert.team, "profile": cert.profile.as_str(),
        "key_type": cert.key_type.as_str(), "key_source": cert.key_source.as_str(),
        "names": cert.names.iter().map(SubjectName::to_text).collect::<Vec<_>>(),
        "version": 1, "serial": first.serial,
    });
    if !lint_findings.is_empty() {
        details["lint_findings"] = json!(findings_json(lint_findings));
    }
    details
}

/// The `certificate.renew` audit event's details: the new version and
/// serial, the one it follows, what it replaces and what the linter found.
fn renewal_details(
    version: &CertificateVersion,
    previous_serial: &str,
    replacing: Option<(u32, RevocationReason)>,
    lint_findings: &[LintFinding],
) -> serde_json::Value {
    let mut details = json!({
        "version": version.version, "serial": version.serial, "previous_serial": previous_serial,
    });
    if let Some((revoked, reason)) = replacing {
        details["replaces_revoked_version"] = json!(revoked);
        details["revocation_reason"] = json!(reason.as_str());
    }
    if !lint_findings.is_empty() {
        details["lint_findings"] = json!(findings_json(lint_findings));
    }
    details
}

/// A renewal its caller has loaded and checked, for [`Services::renew_checked`].
struct Renewal<'a> {
    actor: &'a Actor,
    /// The certificate and its versions as read for this renewal.
    view: CertificateView,
    issuer: Issuer,
    /// A new CSR, for a requester-held key.
    csr: Option<&'a str>,
    idempotency: Option<Idempotency>,
    /// The version revoked just before and why, when this one replaces it.
    replacing: Option<(u32, RevocationReason)>,
    /// The renewal job delivery to acknowledge with the version, when the
    /// queue is rows of the metadata database.
    completes: Option<&'a JobDelivery>,
}

/// Who a version is issued for: the acting principal and the certificate's
/// owning team and name, for the audit trail and alerts.
#[derive(Clone, Copy)]
pub(crate) struct Owner<'a> {
    pub(crate) actor: &'a Actor,
    pub(crate) team: &'a str,
    pub(crate) name: &'a str,
}

impl Services {
    /// How many certificates ACME CAs issued to this process that certflow's
    /// linter found errors in (kept, logged at warn, audited with the
    /// issuance or renewal).
    pub fn acme_lint_failures() -> u64 {
        ACME_LINT_FAILURES.load(Ordering::Relaxed)
    }

    /// A certificate refused by pre-issuance linting: audited
    /// (`certificate.issue.lint-refused`) and announced to the team
    /// (`policy-violation`); the caller gets a `Conflict` naming the lints.
    pub(crate) async fn lint_refused(
        &self,
        owner: Owner<'_>,
        certificate_id: Uuid,
        version: u32,
        refusal: &LintRefusal,
        now: OffsetDateTime,
    ) -> DomainError {
        let reason = refusal.to_string();
        let findings: Vec<serde_json::Value> = refusal
            .findings
            .iter()
            .map(|f| json!({ "lint": f.lint, "message": f.message }))
            .collect();
        let mut audit = AuditEvent::success(
            now,
            owner.actor,
            "certificate.issue.lint-refused",
            target(certificate_id),
            json!({ "version": version, "findings": findings }),
        );
        audit.outcome = Outcome::Failure;
        if let Err(e) = self.store.append_audit(&audit).await {
            // The refusal stands either way: nothing was signed.
            tracing::error!(certificate = %certificate_id, error = %e, "could not audit a lint refusal");
        }
        tracing::error!(certificate = %certificate_id, version, %reason, "pre-issuance lint refused a certificate");
        self.publish(
            Notification {
                id: Uuid::now_v7(),
                kind: EventKind::PolicyViolation,
                team: owner.team.to_owned(),
                certificate_id: Some(certificate_id),
                certificate_name: Some(owner.name.to_owned()),
                version: Some(version),
                not_after: None,
                days_left: None,
                reason: Some(reason.clone()),
                summary: format!("{} version {version} was not issued: {reason}", owner.name),
                details: json!({ "findings": findings }),
                at: now,
            },
            Some(&format!("lint-refused:{certificate_id}:v{version}")),
        )
        .await;
        DomainError::Conflict(reason)
    }
}

/// Refuses renewing an archived or an inventory-only certificate.
fn refuse_unrenewable(cert: &Certificate) -> DomainResult<()> {
    let id = cert.id;
    if cert.status == CertificateStatus::Archived {
        return Err(DomainError::Conflict(format!(
            "certificate {id} is archived"
        )));
    }
    // Console, API, agent and worker renewals all pass here.
    if !cert.managed {
        return Err(DomainError::Conflict(format!(
            "certificate {id} is inventory only: take over management first"
        )));
    }
    Ok(())
}

/// A renewal's new CSR, parsed: refused for a key certflow holds, above
/// the size limit, for a key reported compromised, or of another key type.
fn renewal_csr(
    cert: &Certificate,
    csr: Option<&str>,
    compromised: &[(u32, Vec<u8>)],
) -> DomainResult<Option<CsrInfo>> {
    Ok(match csr {
        Some(pem) if pem.len() > MAX_CSR_BYTES => {
            return Err(DomainError::invalid(
                "csr",
                format!("at most {MAX_CSR_BYTES} bytes are accepted"),
            ));
        }
        Some(pem) => {
            if cert.key_source == KeySource::Server {
                return Err(DomainError::invalid(
                    "csr",
                    "this certificate's key is held by certflow; renew without a CSR",
                ));
            }
            let info = certflow_pki::parse_csr("csr", pem.as_bytes())?;
            if let Some((n, _)) = compromised.iter().find(|(_, k)| *k == info.spki_der) {
                return Err(DomainError::invalid(
                    "csr",
                    format!(
                        "its key was reported compromised (version {n} was revoked for \
                         keyCompromise); generate a new key"
                    ),
                ));
            }
            if info.key_type != cert.key_type {
                return Err(DomainError::invalid(
                    "csr",
                    format!(
                        "key is {} but the certificate uses {}",
                        info.key_type.as_str(),
                        cert.key_type.as_str()
                    ),
                ));
            }
            Some(info)
        }
        None => None,
    })
}

/// Why a renewal reusing a CSR-keyed certificate's key is refused.
fn key_compromised_reason(id: Uuid, revoked: u32) -> String {
    format!(
        "key compromised: re-key needed. Version {revoked} of certificate {id} was revoked for \
         keyCompromise and its key is held by the requester: renew with a CSR for a new key \
         (agents: POST /agent/v1/certificates/{id}/renew with a new csr)"
    )
}

/// What [`Services::revoke_with`] came to.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The certificate after the revocation (and the replacement, if issued).
    pub view: CertificateView,
    /// The version revoked.
    pub revoked_version: u32,
    /// What became of the replacement, when one was asked for.
    pub replacement: Option<Replacement>,
}

/// The replacement a revocation asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replacement {
    /// Issued: the certificate's current version.
    Issued {
        /// Its number.
        version: u32,
    },
    /// Not issued; the revocation stands and the failure was announced.
    Failed {
        /// Why.
        error: String,
    },
}

/// A version as [`Services::issue_version`] signed it, not yet committed.
struct IssuedVersion {
    /// The version's row.
    version: CertificateVersion,
    /// Its blobs.
    blobs: VersionBlobs,
    /// The certificate and its chain, PEM.
    fullchain_pem: String,
    /// What linting found in a certificate an ACME CA signed (kept all the
    /// same: it is valid and already in CT logs; the caller audits them).
    lint_findings: Vec<LintFinding>,
}

/// A new version's blobs: written already (their keys), or waiting to
/// commit in the version's own transaction, being rows of the metadata
/// database (one commit, not two, and no orphan should it fail).
enum VersionBlobs {
    Written(Vec<String>),
    Attached(Vec<(String, Bytes)>),
}

/// The subject key of a version to issue.
enum SubjectKey<'a> {
    /// The requester's key (from a CSR or the previous version).
    Public {
        spki_der: &'a [u8],
        key_type: KeyType,
        /// The request, DER, or empty when reusing the previous version's key.
        csr_der: &'a [u8],
    },
    /// certflow generates a key of this type.
    Generate(KeyType),
}
