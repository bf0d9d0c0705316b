//! What invalidates the agents' assignment cache ([`super`]): every
//! committed change to a certificate's current version or status is
//! announced on the change feed as `certificate:<id>`, and every change of an
//! agent's assignments as `assignments:<agent id>`. On PostgreSQL the feed is
//! LISTEN/NOTIFY, so a renewal committed by a worker replica reaches the API
//! replicas' caches; on SQLite (one process) it is in-process.
//!
//! The announcement comes from a decorator of the metadata store that the
//! use cases write through, so no use case (console, renewal worker, agent)
//! can change a version without it; it is sent after the commit, and a lost
//! one (crash in between, a listener reconnect) is covered by the `*` topic
//! and by the cache's maximum age.

use std::sync::Arc;

use async_trait::async_trait;
use certflow_core::error::DomainResult;
use certflow_core::model::{
    AuditChainReport, AuditEvent, AuditQuery, Certificate, CertificateQuery, CertificateVersion,
    IdempotencyRecord, Issuer, Page, RevocationReason,
};
use certflow_core::ports::{MetadataStore, VersionCommit, VersionCommitted};
use certflow_store::ChangeFeed;
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::AssignmentCache;

/// Topic prefix of a certificate whose current version or status changed.
pub const CERTIFICATE_TOPIC: &str = "certificate:";
/// Topic prefix of an agent whose assignments changed.
pub const ASSIGNMENTS_TOPIC: &str = "assignments:";
/// Topic of an issuer added or a new default issuer.
pub const ISSUERS_TOPIC: &str = "issuers";

/// A [`MetadataStore`] that announces certificate changes on a [`ChangeFeed`]
/// after they commit.
pub struct AnnouncingStore {
    inner: Arc<dyn MetadataStore>,
    feed: ChangeFeed,
}

impl AnnouncingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn MetadataStore>, feed: ChangeFeed) -> Self {
        Self { inner, feed }
    }

    /// Tells every replica to drop the default issuer it keeps in memory.
    async fn announce_issuers(&self) {
        if let Err(e) = self.feed.publish(ISSUERS_TOPIC).await {
            tracing::warn!(error = %e, "cannot announce an issuer change");
        }
    }

    async fn announce(&self, id: Uuid) {
        if let Err(e) = self.feed.publish(&format!("{CERTIFICATE_TOPIC}{id}")).await {
            // The caches' maximum age catches up; the change itself committed.
            tracing::warn!(certificate = %id, error = %e, "cannot announce a certificate change");
        }
    }
}

#[async_trait]
impl MetadataStore for AnnouncingStore {
    async fn ping(&self) -> DomainResult<()> {
        self.inner.ping().await
    }
    async fn insert_issuer(&self, issuer: &Issuer, audit: &AuditEvent) -> DomainResult<()> {
        self.inner.insert_issuer(issuer, audit).await?;
        self.announce_issuers().await;
        Ok(())
    }
    async fn list_issuers(&self) -> DomainResult<Vec<Issuer>> {
        self.inner.list_issuers().await
    }
    async fn get_issuer(&self, id: Uuid) -> DomainResult<Option<Issuer>> {
        self.inner.get_issuer(id).await
    }
    async fn set_default_issuer(&self, id: Uuid, audit: &AuditEvent) -> DomainResult<()> {
        self.inner.set_default_issuer(id, audit).await?;
        self.announce_issuers().await;
        Ok(())
    }
    async fn create_certificate(
        &self,
        cert: &Certificate,
        first: &CertificateVersion,
        audit: &AuditEvent,
        idempotency: Option<&IdempotencyRecord>,
    ) -> DomainResult<()> {
        // A new certificate is assigned to no one yet: nothing to announce.
        self.inner
            .create_certificate(cert, first, audit, idempotency)
            .await
    }
    async fn create_certificate_with_issuer(
        &self,
        issuer: &Issuer,
        issuer_audit: &AuditEvent,
        cert: &Certificate,
        first: &CertificateVersion,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        self.inner
            .create_certificate_with_issuer(issuer, issuer_audit, cert, first, audit)
            .await
    }
    async fn create_first_version(&self, commit: VersionCommit<'_>) -> DomainResult<()> {
        self.inner.create_first_version(commit).await
    }
    async fn commit_version(&self, commit: VersionCommit<'_>) -> DomainResult<VersionCommitted> {
        let id = commit.cert.id;
        let committed = self.inner.commit_version(commit).await?;
        self.announce(id).await;
        Ok(committed)
    }
    async fn revoke_version(
        &self,
        certificate_id: Uuid,
        version: u32,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        self.inner
            .revoke_version(certificate_id, version, reason, at, audit)
            .await?;
        self.announce(certificate_id).await;
        Ok(())
    }
    async fn archive_certificate(
        &self,
        id: Uuid,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        self.inner.archive_certificate(id, at, audit).await?;
        self.announce(id).await;
        Ok(())
    }
    async fn manage_certificate(&self, cert: &Certificate, audit: &AuditEvent) -> DomainResult<()> {
        self.inner.manage_certificate(cert, audit).await
    }
    async fn get_certificate(&self, id: Uuid) -> DomainResult<Option<Certificate>> {
        self.inner.get_certificate(id).await
    }
    async fn list_certificates(&self, query: &CertificateQuery) -> DomainResult<Page<Certificate>> {
        self.inner.list_certificates(query).await
    }
    async fn list_versions(&self, certificate_id: Uuid) -> DomainResult<Vec<CertificateVersion>> {
        self.inner.list_versions(certificate_id).await
    }
    async fn list_revoked(&self, issuer_id: Uuid) -> DomainResult<Vec<CertificateVersion>> {
        self.inner.list_revoked(issuer_id).await
    }
    async fn due_for_renewal(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<Certificate>> {
        self.inner.due_for_renewal(now, limit).await
    }
    async fn get_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> DomainResult<Option<IdempotencyRecord>> {
        self.inner.get_idempotency(scope, key).await
    }
    async fn purge_idempotency_keys(&self, before: OffsetDateTime) -> DomainResult<u64> {
        self.inner.purge_idempotency_keys(before).await
    }
    async fn append_audit(&self, event: &AuditEvent) -> DomainResult<()> {
        self.inner.append_audit(event).await
    }
    async fn list_audit(&self, query: &AuditQuery) -> DomainResult<Page<AuditEvent>> {
        self.inner.list_audit(query).await
    }
    async fn verify_audit_chain(&self) -> DomainResult<AuditChainReport> {
        self.inner.verify_audit_chain().await
    }
    async fn certificate_counts(
        &self,
        teams: Option<&[String]>,
        edges: &[OffsetDateTime],
    ) -> DomainResult<certflow_core::model::CertificateCounts> {
        self.inner.certificate_counts(teams, edges).await
    }
    async fn certificate_stats(
        &self,
        expiring_before: OffsetDateTime,
    ) -> DomainResult<certflow_core::model::CertificateStats> {
        self.inner.certificate_stats(expiring_before).await
    }
    async fn get_setting(&self, key: &str) -> DomainResult<Option<String>> {
        self.inner.get_setting(key).await
    }
    async fn put_setting(&self, key: &str, value: &str) -> DomainResult<()> {
        self.inner.put_setting(key, value).await
    }
    async fn version_by_serial(
        &self,
        issuer_id: Uuid,
        serial_hex: &str,
    ) -> DomainResult<Option<CertificateVersion>> {
        self.inner.version_by_serial(issuer_id, serial_hex).await
    }
    async fn increment_setting(&self, key: &str, initial: u64) -> DomainResult<u64> {
        self.inner.increment_setting(key, initial).await
    }
    async fn raise_setting(&self, key: &str, value: u64) -> DomainResult<bool> {
        self.inner.raise_setting(key, value).await
    }
}

/// Applies the feed to `cache`: a certificate or an agent's assignments
/// drop the entries they concern; `*` (the feed reconnected) or missed topics
/// drop everything; and everything older than the cache's maximum age
/// expires on its own.
pub fn spawn_cache_watch(cache: Arc<AssignmentCache>, feed: &ChangeFeed) {
    let mut changes = feed.subscribe();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(topic) => apply(&cache, &topic),
                Err(RecvError::Lagged(_)) => cache.clear(),
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// One topic's effect on the cache.
pub fn apply(cache: &AssignmentCache, topic: &str) {
    if topic == "*" {
        cache.clear();
    } else if let Some(id) = topic.strip_prefix(CERTIFICATE_TOPIC) {
        match Uuid::parse_str(id) {
            Ok(id) => cache.invalidate_certificate(id),
            Err(_) => cache.clear(),
        }
    } else if let Some(id) = topic.strip_prefix(ASSIGNMENTS_TOPIC) {
        match Uuid::parse_str(id) {
            Ok(id) => cache.invalidate_agent(id),
            Err(_) => cache.clear(),
        }
    }
}
