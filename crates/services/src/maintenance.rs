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
use crate::certificates::key_context as cert_key_context;

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
