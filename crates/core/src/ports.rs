//! Ports: the traits through which use cases reach storage and key material.
//! Each has an embedded implementation and (in later issues) a production one;
//! the server wires them from configuration in one place.

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::DomainResult;
use crate::model::{
    AuditEvent, AuditQuery, Certificate, CertificateQuery, CertificateVersion, IdempotencyRecord,
    Issuer, Page, RevocationReason,
};

/// Metadata repository. Every state change takes the audit event that records
/// it and commits both in one transaction: no action without its audit record.
#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// Cheap liveness probe of the backend (for `/readyz`).
    async fn ping(&self) -> DomainResult<()>;

    /// Stores a new issuer.
    async fn insert_issuer(&self, issuer: &Issuer, audit: &AuditEvent) -> DomainResult<()>;
    /// All issuers, default first.
    async fn list_issuers(&self) -> DomainResult<Vec<Issuer>>;
    /// One issuer.
    async fn get_issuer(&self, id: Uuid) -> DomainResult<Option<Issuer>>;
    /// Makes `id` the default issuer (and no other).
    async fn set_default_issuer(&self, id: Uuid, audit: &AuditEvent) -> DomainResult<()>;

    /// Stores a new certificate with its first version, and `idempotency` (if
    /// any) in the same transaction. Fails with `Conflict`, committing nothing,
    /// if the record's `(scope, key)` is already stored.
    async fn create_certificate(
        &self,
        cert: &Certificate,
        first: &CertificateVersion,
        audit: &AuditEvent,
        idempotency: Option<&IdempotencyRecord>,
    ) -> DomainResult<()>;
    /// Adds a new current version: the previous current one becomes superseded
    /// (or stays revoked), and the certificate's denormalised fields follow.
    /// Fails with `Conflict` if `new.version` is not exactly one more than the latest,
    /// or if `idempotency`'s `(scope, key)` is already stored; the record, if
    /// any, commits with the version.
    async fn add_version(
        &self,
        cert: &Certificate,
        new: &CertificateVersion,
        audit: &AuditEvent,
        idempotency: Option<&IdempotencyRecord>,
    ) -> DomainResult<()>;
    /// Revokes one version; the certificate becomes `revoked` if it was the current one.
    async fn revoke_version(
        &self,
        certificate_id: Uuid,
        version: u32,
        reason: RevocationReason,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// Marks the certificate archived.
    async fn archive_certificate(
        &self,
        id: Uuid,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// One certificate.
    async fn get_certificate(&self, id: Uuid) -> DomainResult<Option<Certificate>>;
    /// Search, filter, sort and paginate.
    async fn list_certificates(&self, query: &CertificateQuery) -> DomainResult<Page<Certificate>>;
    /// All versions of a certificate, newest first.
    async fn list_versions(&self, certificate_id: Uuid) -> DomainResult<Vec<CertificateVersion>>;
    /// Revoked versions signed by an issuer (for its CRL).
    async fn list_revoked(&self, issuer_id: Uuid) -> DomainResult<Vec<CertificateVersion>>;
    /// Active certificates due for renewal at `now` (`renew_after <= now`),
    /// longest overdue first and ties by id, at most `limit` (clamped to
    /// 1..=1000): the renewal scheduler's batch.
    async fn due_for_renewal(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<Certificate>>;

    /// The idempotency record stored under `(scope, key)`, if any.
    async fn get_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> DomainResult<Option<IdempotencyRecord>>;
    /// Deletes idempotency records created before `before`; returns how many.
    async fn purge_idempotency_keys(&self, before: OffsetDateTime) -> DomainResult<u64>;

    /// Appends an audit event on its own (reads that must be audited, failures).
    async fn append_audit(&self, event: &AuditEvent) -> DomainResult<()>;
    /// Queries the audit trail, newest first.
    async fn list_audit(&self, query: &AuditQuery) -> DomainResult<Page<AuditEvent>>;

    /// Reads a server setting (e.g. the bootstrap token hash).
    async fn get_setting(&self, key: &str) -> DomainResult<Option<String>>;
    /// Writes a server setting.
    async fn put_setting(&self, key: &str, value: &str) -> DomainResult<()>;
}

/// Blob store for certificates and encrypted keys. Keys are `/`-separated paths.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Writes (or overwrites) a blob.
    async fn put(&self, key: &str, data: Bytes) -> DomainResult<()>;
    /// Reads a blob; `NotFound` if absent.
    async fn get(&self, key: &str) -> DomainResult<Bytes>;
    /// Deletes a blob; absent is fine.
    async fn delete(&self, key: &str) -> DomainResult<()>;
    /// Keys under a prefix.
    async fn list(&self, prefix: &str) -> DomainResult<Vec<String>>;
    /// Keys under a prefix with their last-modified time (for the orphan sweeper).
    async fn list_with_age(&self, prefix: &str) -> DomainResult<Vec<(String, OffsetDateTime)>>;
}
