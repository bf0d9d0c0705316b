//! Ports: the traits through which use cases reach storage and key material.
//! Each has an embedded implementation and (in later issues) a production one;
//! the server wires them from configuration in one place.

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::DomainResult;
use crate::model::{
    AuditChainReport, AuditEvent, AuditQuery, Certificate, CertificateQuery, CertificateStats,
    CertificateVersion, FleetStats, IdempotencyRecord, Issuer, Page, RevocationReason,
};
use crate::names::SubjectName;
use crate::notify::{
    Channel, Delivery, DeliveryAttempt, DeliveryQuery, Notification, StoredChannel, Subscription,
};
use crate::profile::Profile;
use crate::renewal::{DueVersion, JobDelivery, QueueStats, RenewalJob, SuggestedWindow};

/// A new version of a certificate and what commits with it
/// ([`MetadataStore::commit_version`]).
#[derive(Debug)]
pub struct VersionCommit<'a> {
    /// The certificate as the new version leaves it.
    pub cert: &'a Certificate,
    /// The new version.
    pub new: &'a CertificateVersion,
    /// The event that records it.
    pub audit: &'a AuditEvent,
    /// The request's idempotency record, committed with the version.
    pub idempotency: Option<&'a IdempotencyRecord>,
    /// The version's blobs (keys and bytes): only a store that holds the
    /// blobs too takes them ([`BlobStore::in_metadata_database`]); others refuse.
    pub blobs: Vec<(String, Bytes)>,
    /// The notification announcing the version, recorded with its pending
    /// deliveries: only a store that keeps the notifications too takes it
    /// ([`NotificationStore::in_metadata_database`]); others refuse.
    pub announce: Option<&'a Notification>,
    /// The renewal job delivery the version completes, acknowledged in the
    /// same transaction if its lease is still its own: only a store that
    /// keeps the queue too takes it ([`crate::renewal::RenewalQueue::in_metadata_database`]);
    /// others refuse.
    pub completes: Option<&'a JobDelivery>,
}

impl<'a> VersionCommit<'a> {
    /// The version with its audit event and idempotency record only.
    pub fn new(
        cert: &'a Certificate,
        new: &'a CertificateVersion,
        audit: &'a AuditEvent,
        idempotency: Option<&'a IdempotencyRecord>,
    ) -> Self {
        Self {
            cert,
            new,
            audit,
            idempotency,
            blobs: Vec::new(),
            announce: None,
            completes: None,
        }
    }
}

/// What a [`MetadataStore::commit_version`] committed besides the version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionCommitted {
    /// The job delivery it completes was acknowledged (`false`: none was
    /// given, or its lease was lost to another worker).
    pub completed: bool,
}

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
    /// A new certificate with its first version, as `commit` describes it:
    /// [`create_certificate`](Self::create_certificate) with the version's
    /// blobs and its announcement in the same transaction, each taken only
    /// by a store that keeps them too ([`VersionCommit`]); a job delivery
    /// is refused (a first version completes no renewal).
    async fn create_first_version(&self, commit: VersionCommit<'_>) -> DomainResult<()> {
        if !commit.blobs.is_empty() || commit.announce.is_some() || commit.completes.is_some() {
            return Err(crate::DomainError::Internal(
                "this metadata store keeps no blobs, notifications or jobs".into(),
            ));
        }
        self.create_certificate(commit.cert, commit.new, commit.audit, commit.idempotency)
            .await
    }
    /// Stores a certificate whose issuer is recorded with it: the new
    /// `issuer` row and `issuer_audit`, then the certificate as
    /// [`create_certificate`](Self::create_certificate) does, in one
    /// transaction, so a refused certificate leaves no issuer behind (an
    /// import from a CA certflow did not know).
    async fn create_certificate_with_issuer(
        &self,
        issuer: &Issuer,
        issuer_audit: &AuditEvent,
        cert: &Certificate,
        first: &CertificateVersion,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// Adds a new current version: the previous current one becomes superseded
    /// (or stays revoked), and the certificate's denormalised fields follow.
    /// Fails with `Conflict` if `new.version` is not exactly one more than the latest,
    /// or if `idempotency`'s `(scope, key)` is already stored; the record, if
    /// any, commits with the version. [`commit_version`](Self::commit_version)
    /// with nothing else in the transaction.
    async fn add_version(
        &self,
        cert: &Certificate,
        new: &CertificateVersion,
        audit: &AuditEvent,
        idempotency: Option<&IdempotencyRecord>,
    ) -> DomainResult<()> {
        self.commit_version(VersionCommit::new(cert, new, audit, idempotency))
            .await
            .map(|_| ())
    }
    /// Adds a new current version as [`add_version`](Self::add_version) does,
    /// with what [`VersionCommit`] asks to commit in the same transaction.
    async fn commit_version(&self, commit: VersionCommit<'_>) -> DomainResult<VersionCommitted>;
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
    /// Takes over management of an inventory-only certificate: stores
    /// `managed = true` with `cert`'s `issuer_id`, `renew_after` and
    /// `updated_at`, and appends `audit`, in one transaction. `NotFound` if
    /// absent; `Conflict`, changing nothing, if it is already managed.
    async fn manage_certificate(&self, cert: &Certificate, audit: &AuditEvent) -> DomainResult<()>;
    /// One certificate.
    async fn get_certificate(&self, id: Uuid) -> DomainResult<Option<Certificate>>;
    /// Search, filter, sort and paginate.
    async fn list_certificates(&self, query: &CertificateQuery) -> DomainResult<Page<Certificate>>;
    /// All versions of a certificate, newest first.
    async fn list_versions(&self, certificate_id: Uuid) -> DomainResult<Vec<CertificateVersion>>;
    /// The versions a renewal reads, newest first: the newest, and every
    /// one revoked for keyCompromise (a key never certified again); not the
    /// whole history, which grows with every renewal.
    async fn renewal_versions(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<CertificateVersion>> {
        let mut versions = self.list_versions(certificate_id).await?;
        let mut newest = true;
        versions.retain(|v| {
            std::mem::take(&mut newest)
                || v.revocation_reason == Some(crate::model::RevocationReason::KeyCompromise)
        });
        Ok(versions)
    }
    /// Revoked versions signed by an issuer (for its CRL).
    async fn list_revoked(&self, issuer_id: Uuid) -> DomainResult<Vec<CertificateVersion>>;
    /// Active certificates due for renewal at `now` (`renew_after <= now`)
    /// whose current version has no renewal job yet, longest overdue first
    /// and ties by id, at most `limit` (clamped to 1..=1000): the renewal
    /// scheduler's batch. Skipping versions with a job lets the scheduler page
    /// through a backlog by repeating the call.
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
    /// Walks every audit hash chain in sequence order, a page at a time,
    /// and reports how far each holds. Stores without a chain (test doubles)
    /// answer `Unavailable`.
    async fn verify_audit_chain(&self) -> DomainResult<AuditChainReport> {
        Err(crate::DomainError::Unavailable {
            backend: "database",
            reason: "this store keeps no audit chain".into(),
        })
    }

    /// Certificates by status, each team's earliest expiry among its active
    /// certificates, and how many active certificates expire before
    /// `expiring_before` with no renewal job of their current version queued
    /// or running; one snapshot, grouped in the database.
    async fn certificate_stats(
        &self,
        expiring_before: OffsetDateTime,
    ) -> DomainResult<CertificateStats>;

    /// Certificates of `teams` (all when `None`) by status, and how many
    /// active ones expire before each of `edges`: one grouped statement, so a
    /// dashboard costs one scan whatever the number of teams and weeks.
    async fn certificate_counts(
        &self,
        teams: Option<&[String]>,
        edges: &[OffsetDateTime],
    ) -> DomainResult<crate::model::CertificateCounts>;

    /// Reads a server setting (e.g. the bootstrap token hash).
    async fn get_setting(&self, key: &str) -> DomainResult<Option<String>>;
    /// Writes a server setting.
    async fn put_setting(&self, key: &str, value: &str) -> DomainResult<()>;

    /// The version with this serial (lower-case hex) signed by `issuer_id`,
    /// if that issuer ever issued it (OCSP answers good/revoked/unknown).
    async fn version_by_serial(
        &self,
        _issuer_id: Uuid,
        _serial_hex: &str,
    ) -> DomainResult<Option<CertificateVersion>> {
        Err(crate::DomainError::Unavailable {
            backend: "database",
            reason: "this store cannot look versions up by serial".into(),
        })
    }
    /// Adds one to the integer setting `key` (stored as `initial` when
    /// absent) in one statement and returns the new value: a counter every
    /// replica shares (CRL numbers).
    async fn increment_setting(&self, _key: &str, _initial: u64) -> DomainResult<u64> {
        Err(crate::DomainError::Unavailable {
            backend: "database",
            reason: "this store keeps no counters".into(),
        })
    }
    /// Sets the integer setting `key` to `value` only if it is absent or
    /// smaller, in one statement; returns whether it changed (a pointer that
    /// only moves forward, such as the published CRL's number).
    async fn raise_setting(&self, _key: &str, _value: u64) -> DomainResult<bool> {
        Err(crate::DomainError::Unavailable {
            backend: "database",
            reason: "this store keeps no counters".into(),
        })
    }
}

/// Blob store for certificates and encrypted keys. Keys are `/`-separated paths.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Writes (or overwrites) a blob.
    async fn put(&self, key: &str, data: Bytes) -> DomainResult<()>;
    /// Writes several blobs (the files of one version): when it returns, every
    /// one is durable; on an error some may be written, and the caller removes
    /// them all. Stores that can make a batch durable at once override this.
    async fn put_all(&self, blobs: Vec<(String, Bytes)>) -> DomainResult<()> {
        for (key, data) in blobs {
            self.put(&key, data).await?;
        }
        Ok(())
    }
    /// Whether the blobs are rows of the metadata database, so that a new
    /// version's blobs can commit in the version's own transaction
    /// ([`MetadataStore::create_first_version`], [`VersionCommit::blobs`]).
    fn in_metadata_database(&self) -> bool {
        false
    }
    /// Reads a blob; `NotFound` if absent.
    async fn get(&self, key: &str) -> DomainResult<Bytes>;
    /// Deletes a blob; absent is fine.
    async fn delete(&self, key: &str) -> DomainResult<()>;
    /// Keys under a prefix.
    async fn list(&self, prefix: &str) -> DomainResult<Vec<String>>;
    /// Keys under a prefix with their last-modified time (for the orphan sweeper).
    async fn list_with_age(&self, prefix: &str) -> DomainResult<Vec<(String, OffsetDateTime)>>;
}

/// The ledger of renewal jobs: one row per `(certificate_id, version)`, kept
/// by the metadata store whichever queue carries the jobs, so that the
/// "enqueue once" rule is enforced by a unique key and the API can show each
/// certificate's renewal state.
#[async_trait]
pub trait RenewalLedger: Send + Sync {
    /// Inserts `job` unless one exists for its `(certificate_id, version)`;
    /// returns whether it was inserted.
    async fn insert_renewal_job(&self, job: &RenewalJob) -> DomainResult<bool>;
    /// Inserts each of `jobs` as [`insert_renewal_job`](Self::insert_renewal_job)
    /// does, all in one transaction; returns, in order, whether each was
    /// inserted. A job whose id exists fails the whole batch (`Conflict`,
    /// nothing inserted).
    async fn insert_renewal_jobs(&self, jobs: &[RenewalJob]) -> DomainResult<Vec<bool>>;
    /// Up to `limit` (at most 1000) active managed certificates due at `now`
    /// whose current version has no job, by `(renew_after, certificate_id)`,
    /// starting after `after` (the last of the previous page) when given: the
    /// scheduler's scan, one pass over the due index however many jobs exist.
    async fn due_without_job(
        &self,
        now: OffsetDateTime,
        after: Option<&DueVersion>,
        limit: u32,
    ) -> DomainResult<Vec<DueVersion>>;
    /// Removes a job (when handing it to an external queue failed).
    async fn delete_renewal_job(&self, id: Uuid) -> DomainResult<()>;
    /// Overwrites the job's state, attempts, times and error; appends `audit` in
    /// the same transaction when given. `NotFound` if absent.
    async fn update_renewal_job(
        &self,
        job: &RenewalJob,
        audit: Option<&AuditEvent>,
    ) -> DomainResult<()>;
    /// One job.
    async fn get_renewal_job(&self, id: Uuid) -> DomainResult<Option<RenewalJob>>;
    /// The newest job of a certificate (its renewal state for the API).
    async fn latest_renewal_job(&self, certificate_id: Uuid) -> DomainResult<Option<RenewalJob>>;
    /// Counts by state and the oldest unfinished job's age at `now`.
    async fn renewal_job_stats(&self, now: OffsetDateTime) -> DomainResult<QueueStats>;
    /// Queued or running jobs unchanged since `before`, oldest first, at most
    /// `limit`: jobs whose message in an external queue may have been lost (a
    /// crash between the ledger insert and the send, a redrive behind the
    /// ledger's back).
    async fn stale_renewal_jobs(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<RenewalJob>>;
}

/// Subscriptions, notifications and their deliveries.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Stores a subscription.
    async fn insert_subscription(&self, sub: &Subscription, audit: &AuditEvent)
    -> DomainResult<()>;
    /// Subscriptions, optionally of one team.
    async fn list_subscriptions(&self, team: Option<&str>) -> DomainResult<Vec<Subscription>>;
    /// One subscription.
    async fn get_subscription(&self, id: Uuid) -> DomainResult<Option<Subscription>>;
    /// Deletes a subscription; its pending deliveries are cancelled in the
    /// same transaction (state `cancelled`), its past ones stay. `NotFound` if absent.
    async fn delete_subscription(&self, id: Uuid, audit: &AuditEvent) -> DomainResult<()>;
    /// Every distinct stored webhook channel (of subscriptions and of their
    /// deliveries' snapshots) whose secret is sealed (`sealed`) or in clear:
    /// for sealing old rows in place and re-wrapping after a key rotation.
    async fn channels_with_secrets(&self, sealed: bool) -> DomainResult<Vec<StoredChannel>>;
    /// Replaces, in the subscription and in its deliveries, the channel stored
    /// exactly as `stored` by `channel` (a row changed meanwhile is left
    /// alone). Returns the rows replaced.
    async fn replace_channel(
        &self,
        subscription_id: Uuid,
        stored: &str,
        channel: &Channel,
    ) -> DomainResult<u64>;

    /// Whether the notifications are rows of the metadata database, so that
    /// the event announcing a new version can commit in the version's own
    /// transaction ([`VersionCommit::announce`]).
    fn in_metadata_database(&self) -> bool {
        false
    }
    /// Records `notification` and one pending delivery per subscription of its
    /// team that wants its kind, due at `notification.at`, in one transaction.
    /// With `dedupe_key`, a second call with the same key does nothing and
    /// returns `false` (expiry warnings go out once per version and threshold).
    async fn publish(
        &self,
        notification: &Notification,
        dedupe_key: Option<&str>,
    ) -> DomainResult<bool>;
    /// Leases up to `limit` pending deliveries due at `now` until `lease_until`
    /// (other dispatchers skip them meanwhile).
    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<Delivery>>;
    /// Records one attempt: success marks the delivery delivered; a failure
    /// keeps it pending until `retry_at`, or marks it failed when `retry_at` is `None`.
    async fn record_attempt(
        &self,
        delivery_id: Uuid,
        at: OffsetDateTime,
        error: Option<&str>,
        retry_at: Option<OffsetDateTime>,
    ) -> DomainResult<()>;
    /// Deliveries, newest first.
    async fn list_deliveries(&self, query: &DeliveryQuery) -> DomainResult<Page<Delivery>>;
    /// Attempts of one delivery, oldest first.
    async fn list_attempts(&self, delivery_id: Uuid) -> DomainResult<Vec<DeliveryAttempt>>;
}

/// What a certificate authority is asked to sign.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The certificate (for logs and ACME order tracking).
    pub certificate_id: Uuid,
    /// Names to certify (already validated).
    pub names: Vec<SubjectName>,
    /// Profile (internal CA: extensions; ACME: ignored, the CA decides).
    pub profile: Profile,
    /// Requested lifetime (the CA may shorten it).
    pub validity_days: u32,
    /// Exact lifetime in seconds for short-lived certificates; overrides `validity_days`.
    pub validity_secs: Option<u32>,
    /// DER PKCS#10 request, signed by the certificate's key (ours or the
    /// agent's). Empty when none exists (a CSR-keyed certificate renewed
    /// without a fresh CSR): CAs that need one (ACME) refuse with `Conflict`.
    pub csr_der: Vec<u8>,
    /// DER SubjectPublicKeyInfo of the certificate's key (always set).
    pub spki_der: Vec<u8>,
    /// Its type.
    pub key_type: crate::model::KeyType,
    /// DER of the version this one replaces, if a renewal (ACME ARI `replaces`).
    pub replaces_der: Option<Vec<u8>>,
}

/// What the CA returned.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// DER of the leaf.
    pub cert_der: Vec<u8>,
    /// PEM of the intermediates that chain the leaf to its root (may be empty).
    pub chain_pem: String,
}

/// A certificate authority certflow issues from: the internal CA, or an ACME CA.
/// Errors: `Unavailable` when the CA cannot be reached (retry), `Conflict` or
/// `Invalid` when it refused (the reason is shown to users and retried too:
/// a refusal may be temporary, e.g. a rate limit).
#[async_trait]
pub trait IssuerBackend: Send + Sync {
    /// Signs `request` under `issuer`.
    async fn issue(
        &self,
        issuer: &Issuer,
        request: &IssueRequest,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedCertificate>;
    /// The CA's suggested renewal window for `cert_der` (ACME ARI, RFC 9773);
    /// `None` when the CA offers none.
    async fn renewal_info(
        &self,
        issuer: &Issuer,
        cert_der: &[u8],
    ) -> DomainResult<Option<SuggestedWindow>>;
}

/// Agents, their join tokens and the agent-identity CA. Every state change
/// commits its audit event in the same transaction.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// The agent-identity CA, once created.
    async fn get_agent_ca(&self) -> DomainResult<Option<crate::agents::AgentCaRecord>>;
    /// Stores the agent-identity CA; `Conflict` if one exists (replicas racing at first start).
    async fn insert_agent_ca(
        &self,
        ca: &crate::agents::AgentCaRecord,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// Stores a new join token (its hash only).
    async fn insert_join_token(
        &self,
        token: &crate::agents::JoinToken,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// The join token whose SHA-256 is `token_sha256`, used or not.
    async fn get_join_token(
        &self,
        token_sha256: &str,
    ) -> DomainResult<Option<crate::agents::JoinToken>>;
    /// In one transaction: consumes the token (unused and unexpired at `now`,
    /// else `Forbidden` and nothing changes), stores `agent`, appends `audit`.
    /// Of concurrent enrolments with one token exactly one succeeds.
    async fn enroll_agent(
        &self,
        token_sha256: &str,
        now: OffsetDateTime,
        agent: &crate::agents::Agent,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// One agent.
    async fn get_agent(&self, id: Uuid) -> DomainResult<Option<crate::agents::Agent>>;
    /// All agents, oldest first.
    async fn list_agents(&self) -> DomainResult<Vec<crate::agents::Agent>>;
    /// Sets the status (revoked is final: `Conflict` when leaving it). `NotFound` if absent.
    async fn set_agent_status(
        &self,
        id: Uuid,
        status: crate::agents::AgentStatus,
        audit: &AuditEvent,
    ) -> DomainResult<crate::agents::Agent>;
    /// Makes a renewed certificate the agent's identity, if the agent is active
    /// and its identity is still `previous_serial` (else `Conflict`).
    async fn replace_agent_identity(
        &self,
        id: Uuid,
        previous_serial: &str,
        serial: &str,
        fingerprint_sha256: &str,
        not_after: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// Records that the agent was seen at `now`.
    async fn touch_agent(&self, id: Uuid, now: OffsetDateTime) -> DomainResult<()>;
    /// The agent enrolled with an OIDC token of `subject` (see
    /// [`crate::agents::token_subject`]), whatever its status.
    async fn get_agent_by_subject(
        &self,
        subject: &str,
    ) -> DomainResult<Option<crate::agents::Agent>>;
    /// Stores an agent enrolled with an OIDC token (its `subject` set) and
    /// appends `audit`; `Conflict` if an agent with that subject exists
    /// (two first enrolments racing: the loser re-enrols the winner's).
    async fn insert_token_agent(
        &self,
        agent: &crate::agents::Agent,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// Re-enrolment with an OIDC token: makes `serial` the identity of the
    /// agent `id` if it is still active and still bound to `subject`, whatever
    /// its current identity (which may have expired); else `Forbidden` and
    /// nothing changes. Returns the agent as stored afterwards.
    async fn reenroll_agent(
        &self,
        id: Uuid,
        subject: &str,
        serial: &str,
        fingerprint_sha256: &str,
        not_after: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<crate::agents::Agent>;
    /// Join tokens, newest first, at most `limit` (their hashes come along;
    /// callers show neither hash nor text).
    async fn list_join_tokens(&self, limit: u32) -> DomainResult<Vec<crate::agents::JoinToken>>;
    /// Revokes the unused, unexpired join token `id` by making it expire at
    /// `now`, in the transaction that appends `audit`. `NotFound` if there is
    /// no such token; `Conflict` if it was used or has expired.
    async fn revoke_join_token(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<crate::agents::JoinToken>;
}

/// Pending console logins and browser sessions, keyed by hashes of the
/// browser's secrets (see [`crate::session`]).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Records a login on its way to the identity provider.
    async fn insert_pending_login(&self, login: &crate::session::PendingLogin) -> DomainResult<()>;
    /// Removes and returns the pending login of `state_hash` in one step, so a
    /// replayed callback finds nothing; expired logins are returned too (the
    /// caller refuses them).
    async fn take_pending_login(
        &self,
        state_hash: &str,
    ) -> DomainResult<Option<crate::session::PendingLogin>>;
    /// Stores a new session (`Conflict` if its id hash exists).
    async fn insert_session(&self, session: &crate::session::Session) -> DomainResult<()>;
    /// The session of `id_hash`, live or expired.
    async fn get_session(&self, id_hash: &str) -> DomainResult<Option<crate::session::Session>>;
    /// Records activity: a new `last_seen` and idle expiry.
    async fn touch_session(
        &self,
        id_hash: &str,
        last_seen: OffsetDateTime,
        idle_expires_at: OffsetDateTime,
    ) -> DomainResult<()>;
    /// Ends a session; `true` if it existed.
    async fn delete_session(&self, id_hash: &str) -> DomainResult<bool>;
    /// Deletes expired sessions and pending logins; returns how many rows went.
    async fn purge_expired_sessions(&self, now: OffsetDateTime) -> DomainResult<u64>;
}

/// Assignments of certificates to agents and the agents' deployment
/// reports. Every change commits its audit event in the same transaction.
#[async_trait]
pub trait DeploymentStore: Send + Sync {
    /// Assigns a certificate to an agent; `false` (and nothing written, no
    /// audit) if it already is. `NotFound` if either does not exist.
    async fn assign(
        &self,
        assignment: &crate::deployments::Assignment,
        audit: &AuditEvent,
    ) -> DomainResult<bool>;
    /// Removes an assignment and the agent's reports about it. `NotFound` if absent.
    async fn unassign(
        &self,
        agent_id: Uuid,
        certificate_id: Uuid,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// The agent's assignments with each certificate's current version, by certificate id.
    async fn assigned_certificates(
        &self,
        agent_id: Uuid,
    ) -> DomainResult<Vec<crate::deployments::AssignedCertificate>>;
    /// Stores reports (one row per agent and certificate, replaced by the
    /// next report) with `audit`, in one transaction.
    async fn record_deployments(
        &self,
        reports: &[crate::deployments::Deployment],
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// Where one certificate stands on every agent it is assigned to.
    async fn certificate_deployments(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<crate::deployments::DeploymentState>>;
    /// Where every certificate assigned to one agent stands.
    async fn agent_deployments(
        &self,
        agent_id: Uuid,
    ) -> DomainResult<Vec<crate::deployments::DeploymentState>>;
    /// Assignments of active agents whose active certificate's current
    /// version was issued at or before `issued_before`, is not reported
    /// installed, and was not yet announced as drift; at most `limit`.
    async fn drift_candidates(
        &self,
        issued_before: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<crate::deployments::DeploymentState>>;
    /// Records that drift of `version` was announced for the assignment.
    async fn mark_drift_notified(
        &self,
        agent_id: Uuid,
        certificate_id: Uuid,
        version: u32,
    ) -> DomainResult<()>;
    /// Agents by status and how many active ones were not seen since
    /// `seen_since`; assignments of active agents to active certificates by
    /// their last report, and how many are drifting (current version issued
    /// at or before `drift_issued_before`, not reported installed). One
    /// snapshot, grouped in the database.
    async fn fleet_stats(
        &self,
        seen_since: OffsetDateTime,
        drift_issued_before: OffsetDateTime,
    ) -> DomainResult<FleetStats>;
}

/// Certificates agents discovered on their hosts (see [`crate::discovery`]).
/// Every change commits its audit event in the same transaction.
#[async_trait]
pub trait DiscoveryStore: Send + Sync {
    /// Replaces the agent's discoveries with `items` (sources unique) in one
    /// transaction: a source stored before keeps its id and `first_seen`,
    /// every reported row gets `last_seen = now`, sources no longer reported
    /// are deleted. `audit`'s details get the counts (`items`, `new`,
    /// `removed`) added before it is appended. `NotFound` if the agent does not exist.
    async fn replace_discovered(
        &self,
        agent_id: Uuid,
        items: &[crate::discovery::DiscoveredItem],
        unreadable: &[String],
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<crate::discovery::DiscoverySync>;
    /// Discoveries matching `query`, by agent then source.
    async fn list_discovered(
        &self,
        query: &crate::discovery::DiscoveryQuery,
    ) -> DomainResult<Vec<crate::discovery::Discovered>>;
    /// One discovery.
    async fn get_discovered(&self, id: Uuid) -> DomainResult<Option<crate::discovery::Discovered>>;
    /// Claims the discovery for one take-over: `false` when it was taken
    /// over already or another claim newer than `stale_before` holds it.
    async fn claim_discovered_take_over(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        stale_before: OffsetDateTime,
    ) -> DomainResult<bool>;
    /// Drops a claim whose take-over failed.
    async fn release_discovered_take_over(&self, id: Uuid) -> DomainResult<()>;
    /// Records the certificate that took the discovery over (ending the
    /// claim), with `audit`; `Conflict` if it already was taken over,
    /// `NotFound` if absent.
    async fn set_discovered_taken_over(
        &self,
        id: Uuid,
        certificate_id: Uuid,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
}
