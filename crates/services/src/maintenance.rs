//! Housekeeping that keeps storage consistent and keys current: the orphan-blob
//! sweeper (what a crash between blob write and metadata commit leaves behind,
//! and idempotency keys past their 24 hours) and re-wrapping sealed keys under
//! the current master key after a rotation.

use std::collections::HashMap;

use bytes::Bytes;
use certflow_core::model::{
    Actor, AuditEvent, CertificateQuery, CertificateVersion, IDEMPOTENCY_KEY_TTL,
};
use certflow_core::{DomainError, DomainResult};
use certflow_seal::Sealer;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Services;
use crate::ca::key_context as ca_key_context;
use crate::certificates::{chain_blob_of, key_context as cert_key_context};

/// What a sweep found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Blobs looked at.
    pub scanned: usize,
    /// Unreferenced blobs older than the grace period, now deleted.
    pub deleted: Vec<String>,
    /// Unreferenced blobs still inside the grace period (an issuance may be in flight).
    pub young_orphans: usize,
    /// Idempotency keys older than [`IDEMPOTENCY_KEY_TTL`], now deleted.
    pub idempotency_keys_purged: u64,
}

/// What a store check found (`certflow admin verify-store`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreReport {
    /// Certificates looked at.
    pub certificates: usize,
    /// Versions whose certificate and chain were read back.
    pub versions: usize,
    /// Sealed private keys opened (and matched against their certificate).
    pub keys: usize,
    /// Everything wrong, one line each; empty when the store is consistent.
    pub problems: Vec<String>,
    /// Blobs in certflow's layout that no metadata row references, with their age.
    pub unreferenced: Vec<(String, time::Duration)>,
}

/// What a re-wrap did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    /// Sealed keys found.
    pub keys: usize,
    /// Keys re-sealed under the current master key.
    pub rewrapped: usize,
}

impl Services {
    /// Deletes blobs that no metadata row references and that are older than
    /// `grace`, then idempotency keys older than [`IDEMPOTENCY_KEY_TTL`]. Safe
    /// to run on several replicas at once: deleting twice is harmless, and the
    /// grace period protects issuances whose commit has not happened yet.
    pub async fn sweep_orphan_blobs(
        &self,
        grace: time::Duration,
        now: OffsetDateTime,
    ) -> DomainResult<SweepReport> {
        let mut report = SweepReport::default();
        let mut versions: HashMap<Uuid, Vec<CertificateVersion>> = HashMap::new();
        let issuers = self.store.list_issuers().await?;
        for (key, modified) in self.blobs.list_with_age("").await? {
            report.scanned += 1;
            let referenced = match key.split('/').collect::<Vec<_>>().as_slice() {
                ["certificates", id, dir, _file] => match Uuid::parse_str(id) {
                    Ok(id) => {
                        if let std::collections::hash_map::Entry::Vacant(slot) = versions.entry(id)
                        {
                            slot.insert(self.store.list_versions(id).await?);
                        }
                        let prefix = format!("certificates/{id}/{dir}/");
                        versions.get(&id).is_some_and(|vs| {
                            vs.iter().any(|v| {
                                v.cert_blob.starts_with(&prefix)
                                    || v.key_blob.as_ref().is_some_and(|k| k.starts_with(&prefix))
                            })
                        })
                    }
                    Err(_) => false,
                },
                ["issuers", ..] => issuers
                    .iter()
                    .any(|i| i.key_blob == key || i.root_key_blob.as_deref() == Some(key.as_str())),
                // Not ours to judge: leave anything outside certflow's layout alone.
                _ => true,
            };
            if referenced {
                continue;
            }
            if now - modified < grace {
                report.young_orphans += 1;
                continue;
            }
            self.blobs.delete(&key).await?;
            tracing::info!(blob = %key, "deleted orphan blob");
            report.deleted.push(key);
        }
        report.idempotency_keys_purged = self
            .store
            .purge_idempotency_keys(now - IDEMPOTENCY_KEY_TTL)
            .await?;
        if report.idempotency_keys_purged > 0 {
            tracing::info!(
                purged = report.idempotency_keys_purged,
                "purged expired idempotency keys"
            );
        }
        Ok(report)
    }

    /// Checks, without changing anything, that the metadata and the blob
    /// store agree: each certificate's versions are numbered 1..n with its
    /// current version the last and the only one current; every version's
    /// certificate reads back and is the one its row describes (serial,
    /// fingerprint), its chain reads back, and its sealed key opens and
    /// belongs to its certificate. Also lists the blobs nothing references
    /// (what the orphan sweeper would delete once they are old enough).
    pub async fn verify_store(&self, now: OffsetDateTime) -> DomainResult<StoreReport> {
        let mut report = StoreReport::default();
        let mut referenced = std::collections::HashSet::new();
        let mut query = CertificateQuery {
            limit: 500,
            ..Default::default()
        };
        loop {
            let page = self.store.list_certificates(&query).await?;
            for cert in &page.items {
                report.certificates += 1;
                let mut versions = self.store.list_versions(cert.id).await?;
                versions.sort_by_key(|v| v.version);
                self.check_version_numbers(cert, &versions, &mut report.problems);
                for v in &versions {
                    let chain = chain_blob_of(v);
                    referenced.insert(v.cert_blob.clone());
                    referenced.insert(chain.clone());
                    if let Some(k) = &v.key_blob {
                        referenced.insert(k.clone());
                    }
                    self.check_version_blobs(v, &chain, &mut report).await;
                }
            }
            query.offset += page.items.len() as u64;
            if page.items.is_empty() || query.offset >= page.total {
                break;
            }
        }
        let issuers = self.store.list_issuers().await?;
        for (key, modified) in self.blobs.list_with_age("").await? {
            let ours = match key.split('/').next() {
                Some("certificates") => !referenced.contains(&key),
                Some("issuers") => !issuers
                    .iter()
                    .any(|i| i.key_blob == key || i.root_key_blob.as_deref() == Some(key.as_str())),
                _ => false,
            };
            if ours {
                report.unreferenced.push((key, now - modified));
            }
        }
        Ok(report)
    }

    fn check_version_numbers(
        &self,
        cert: &certflow_core::model::Certificate,
        versions: &[CertificateVersion],
        problems: &mut Vec<String>,
    ) {
        let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
        let expected: Vec<u32> = (1..=u32::try_from(versions.len()).unwrap_or(u32::MAX)).collect();
        if numbers != expected {
            problems.push(format!(
                "certificate {}: versions {numbers:?} are not 1..{}",
                cert.id,
                versions.len()
            ));
        }
        if numbers.last() != Some(&cert.current_version) {
            problems.push(format!(
                "certificate {}: current_version {} but the last version is {:?}",
                cert.id,
                cert.current_version,
                numbers.last()
            ));
        }
        let current = versions
            .iter()
            .filter(|v| v.status == certflow_core::model::VersionStatus::Current)
            .count();
        if current > 1 {
            problems.push(format!(
                "certificate {}: {current} current versions",
                cert.id
            ));
        }
    }

    async fn check_version_blobs(
        &self,
        v: &CertificateVersion,
        chain: &str,
        report: &mut StoreReport,
    ) {
        let at = format!("certificate {} version {}", v.certificate_id, v.version);
        let der = match self.blobs.get(&v.cert_blob).await {
            Ok(der) => der,
            Err(e) => {
                report
                    .problems
                    .push(format!("{at}: certificate {}: {e}", v.cert_blob));
                return;
            }
        };
        match certflow_pki::inspect(&der) {
            Ok(info)
                if info.serial_hex == v.serial
                    && info.fingerprint_sha256 == v.fingerprint_sha256 => {}
            Ok(info) => report.problems.push(format!(
                "{at}: {} is serial {} fingerprint {}, the row says {} {}",
                v.cert_blob,
                info.serial_hex,
                info.fingerprint_sha256,
                v.serial,
                v.fingerprint_sha256
            )),
            Err(e) => report
                .problems
                .push(format!("{at}: {} does not parse: {e}", v.cert_blob)),
        }
        if let Err(e) = self.blobs.get(chain).await {
            report.problems.push(format!("{at}: chain {chain}: {e}"));
        }
        report.versions += 1;
        let Some(blob) = &v.key_blob else {
            return;
        };
        let opened = match self.blobs.get(blob).await {
            Ok(sealed) => {
                self.sealer
                    .open(&sealed, &cert_key_context(v.certificate_id, v.version))
                    .await
            }
            Err(e) => Err(e),
        };
        match opened.and_then(|pkcs8| certflow_pki::PrivateKey::from_pkcs8_der(&pkcs8)) {
            Ok(key) if certflow_pki::key_matches_cert(&key, &der) => report.keys += 1,
            Ok(_) => report.problems.push(format!(
                "{at}: key {blob} does not belong to its certificate"
            )),
            Err(e) => report
                .problems
                .push(format!("{at}: key {blob} does not open: {e}")),
        }
    }

    /// Re-seals every private key (CA and certificate keys) and webhook
    /// secret that is not sealed under the current master key. Old keys must
    /// still be configured as `previous` while this runs; afterwards they can
    /// be removed.
    pub async fn rewrap_keys(
        &self,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> DomainResult<RewrapReport> {
        let mut report = RewrapReport::default();
        for issuer in self.store.list_issuers().await? {
            // An external CA (of imported certificates) has no key here, and
            // a key in a token or KMS is not sealed under the master key.
            if issuer.kind == certflow_core::model::IssuerKind::External
                || certflow_core::ca_keys::CaKeyRef::parse(&issuer.key_blob)
                    .blob()
                    .is_none()
            {
                continue;
            }
            report.keys += 1;
            if self
                .rewrap_one(&issuer.key_blob, &ca_key_context(issuer.id, "issuing"))
                .await?
            {
                report.rewrapped += 1;
            }
            if let Some(root) = &issuer.root_key_blob {
                report.keys += 1;
                if self
                    .rewrap_one(root, &ca_key_context(issuer.id, "root"))
                    .await?
                {
                    report.rewrapped += 1;
                }
            }
        }
        let mut query = CertificateQuery {
            limit: 500,
            ..Default::default()
        };
        loop {
            let page = self.store.list_certificates(&query).await?;
            for cert in &page.items {
                for v in self.store.list_versions(cert.id).await? {
                    if let Some(blob) = &v.key_blob {
                        report.keys += 1;
                        if self
                            .rewrap_one(blob, &cert_key_context(v.certificate_id, v.version))
                            .await?
                        {
                            report.rewrapped += 1;
                        }
                    }
                }
            }
            query.offset += page.items.len() as u64;
            if page.items.is_empty() || query.offset >= page.total {
                break;
            }
        }
        // Webhook secrets are sealed under the same master key.
        let (secrets, resealed) = self.rewrap_webhook_secrets().await?;
        report.keys += secrets;
        report.rewrapped += resealed;
        self.store
            .append_audit(&AuditEvent::success(
                now,
                actor,
                "keys.rewrap",
                "keys",
                json!({ "keys": report.keys, "rewrapped": report.rewrapped, "master_key": self.sealer.current_key_id() }),
            ))
            .await?;
        Ok(report)
    }

    /// Re-seals one blob under the current master key; `false` if it already was.
    pub(crate) async fn rewrap_one(
        &self,
        blob: &str,
        context: &certflow_seal::EncryptionContext,
    ) -> DomainResult<bool> {
        let sealed = self.blobs.get(blob).await?;
        if Sealer::key_id_of(&sealed)? == self.sealer.current_key_id() {
            return Ok(false);
        }
        let plain = self.sealer.open(&sealed, context).await.map_err(|e| {
            DomainError::Integrity(format!("cannot open {blob} for re-wrapping: {e}"))
        })?;
        let resealed = self.sealer.seal(&plain, context).await?;
        // Blob stores replace objects atomically, so a crash leaves either envelope, both readable.
        self.blobs.put(blob, Bytes::from(resealed)).await?;
        Ok(true)
    }
}
