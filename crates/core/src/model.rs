//! The domain model: a managed certificate (the logical thing, e.g.
//! "api.example.com for team payments"), its issued versions, the issuers that
//! sign them, and the audit events that record who did what.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::names::SubjectName;
use crate::profile::Profile;
pub use crate::renewal::RenewalPolicy;

/// Key algorithm and size of a certificate's subject key (or a CA key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256: the default.
    #[default]
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// RSA 2048-bit, e = 65537.
    Rsa2048,
    /// RSA 3072-bit, e = 65537.
    Rsa3072,
    /// RSA 4096-bit, e = 65537.
    Rsa4096,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    /// All supported key types.
    pub const ALL: [KeyType; 6] = [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
        KeyType::Ed25519,
    ];

    /// Stable identifier used in the API, config and database.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the key is RSA (it then may use keyEncipherment).
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }
}

/// Where a certificate's private key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    /// The requester holds the key and sent a CSR; certflow never sees the key.
    Csr,
    /// certflow generated the key and keeps it encrypted in the blob store.
    Server,
}

impl KeySource {
    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Csr => "csr",
            KeySource::Server => "server",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        [KeySource::Csr, KeySource::Server]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Lifecycle state of a managed certificate (the logical thing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateStatus {
    /// Has a current, unrevoked version.
    Active,
    /// Its current version was revoked; renewing issues a fresh one.
    Revoked,
    /// Retired by a person: no longer renewed or delivered, kept for history.
    Archived,
}

impl CertificateStatus {
    /// All statuses.
    pub const ALL: [CertificateStatus; 3] = [
        CertificateStatus::Active,
        CertificateStatus::Revoked,
        CertificateStatus::Archived,
    ];

    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Active => "active",
            CertificateStatus::Revoked => "revoked",
            CertificateStatus::Archived => "archived",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// State of one issued version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionStatus {
    /// The version agents should use.
    Current,
    /// Replaced by a newer version; still valid until it expires.
    Superseded,
    /// Revoked; listed on the issuer's CRL.
    Revoked,
}

impl VersionStatus {
    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Current => "current",
            VersionStatus::Superseded => "superseded",
            VersionStatus::Revoked => "revoked",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        [
            VersionStatus::Current,
            VersionStatus::Superseded,
            VersionStatus::Revoked,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// RFC 5280 §5.3.1 CRLReason (value 7 is unused by the RFC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    /// unspecified (0)
    Unspecified,
    /// keyCompromise (1)
    KeyCompromise,
    /// cACompromise (2)
    CaCompromise,
    /// affiliationChanged (3)
    AffiliationChanged,
    /// superseded (4)
    Superseded,
    /// cessationOfOperation (5)
    CessationOfOperation,
    /// certificateHold (6)
    CertificateHold,
    /// removeFromCRL (8)
    RemoveFromCrl,
    /// privilegeWithdrawn (9)
    PrivilegeWithdrawn,
    /// aACompromise (10)
    AaCompromise,
}

impl RevocationReason {
    /// All reasons.
    pub const ALL: [RevocationReason; 10] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::RemoveFromCrl,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    /// The RFC 5280 name, as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::CertificateHold => "certificateHold",
            RevocationReason::RemoveFromCrl => "removeFromCRL",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
            RevocationReason::AaCompromise => "aACompromise",
        }
    }

    /// Parses the RFC 5280 name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// RFC 5280 numeric code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::CaCompromise => 2,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::CertificateHold => 6,
            RevocationReason::RemoveFromCrl => 8,
            RevocationReason::PrivilegeWithdrawn => 9,
            RevocationReason::AaCompromise => 10,
        }
    }

    /// Whether an end-entity certificate may be revoked for this reason:
    /// removeFromCRL only applies to delta CRLs and cACompromise/aACompromise to CAs.
    pub fn applies_to_end_entity(self) -> bool {
        !matches!(
            self,
            RevocationReason::RemoveFromCrl
                | RevocationReason::CaCompromise
                | RevocationReason::AaCompromise
        )
    }
}

/// Free-form labels (`key=value`) used to group and filter certificates.
pub type Labels = BTreeMap<String, String>;

/// A managed certificate: the logical thing whose versions come and go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    /// Stable identifier.
    pub id: Uuid,
    /// Human name, unique per team (e.g. `api.example.com`).
    pub name: String,
    /// Owning team.
    pub team: String,
    /// Labels for grouping and search.
    pub labels: Labels,
    /// Profile every version is issued with.
    pub profile: Profile,
    /// Subject key type.
    pub key_type: KeyType,
    /// Who holds the private key.
    pub key_source: KeySource,
    /// Subject alternative names, normalised (A-labels, lower case).
    pub names: Vec<SubjectName>,
    /// Requested validity of each version, in days.
    pub validity_days: u32,
    /// Exact lifetime in seconds for short-lived certificates; overrides `validity_days`.
    #[serde(default)]
    pub validity_secs: Option<u32>,
    /// The issuer that signs its versions.
    pub issuer_id: Uuid,
    /// Renewal policy.
    pub renewal: RenewalPolicy,
    /// Lifecycle status.
    pub status: CertificateStatus,
    /// Whether certflow renews it. `false`: an imported certificate kept as
    /// inventory only (shown and rated, never renewed) until someone takes
    /// over its management.
    #[serde(default = "managed_by_default")]
    pub managed: bool,
    /// Version number of the current version (1-based).
    pub current_version: u32,
    /// notAfter of the current version, denormalised for filter and sort.
    pub not_after: OffsetDateTime,
    /// When the current version becomes due for renewal (for an unmanaged
    /// certificate: its notAfter, as it is never renewed).
    pub renew_after: OffsetDateTime,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// Certificates issued through certflow are managed; only imports opt out.
fn managed_by_default() -> bool {
    true
}

/// One issued X.509 certificate of a managed certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateVersion {
    /// The managed certificate this version belongs to.
    pub certificate_id: Uuid,
    /// 1-based, increasing.
    pub version: u32,
    /// Serial number, lower-case hex without leading zero bytes.
    pub serial: String,
    /// SHA-256 over the DER certificate, lower-case hex.
    pub fingerprint_sha256: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Subject key type.
    pub key_type: KeyType,
    /// Names in the SAN extension.
    pub names: Vec<SubjectName>,
    /// Issuer that signed it.
    pub issuer_id: Uuid,
    /// Version state.
    pub status: VersionStatus,
    /// Revocation time, if revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// Revocation reason, if revoked.
    pub revocation_reason: Option<RevocationReason>,
    /// Blob key of the DER certificate.
    pub cert_blob: String,
    /// Blob key of the encrypted private key, when certflow holds it.
    pub key_blob: Option<String>,
    /// Issue time.
    pub created_at: OffsetDateTime,
}

/// Where an issuer's signing key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssuerKind {
    /// certflow's own CA: a root created at first start (or imported) and an issuing intermediate.
    Internal,
    /// An ACME CA (RFC 8555); its settings come from the server configuration
    /// and `key_blob` holds the sealed account credentials.
    Acme,
    /// A CA outside certflow that signed imported certificates: recorded so
    /// they have an issuer, never used to issue (no key; `key_blob` is empty,
    /// and `issuing_cert_pem` too when the import did not include it).
    External,
}

/// A certificate authority certflow issues from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issuer {
    /// Stable identifier.
    pub id: Uuid,
    /// Human name.
    pub name: String,
    /// Implementation.
    pub kind: IssuerKind,
    /// Whether new certificates use it when the request names none.
    pub is_default: bool,
    /// Key type of the issuing CA key.
    pub key_type: KeyType,
    /// PEM of the issuing CA certificate (the one that signs leaves).
    pub issuing_cert_pem: String,
    /// PEM of the chain above the issuing certificate, up to and including the root.
    pub chain_pem: String,
    /// Blob key of the encrypted issuing CA private key.
    pub key_blob: String,
    /// Blob key of the encrypted root private key, when certflow created the root.
    pub root_key_blob: Option<String>,
    /// Subject DN of the issuing certificate.
    pub subject: String,
    /// End of the issuing certificate's validity: leaves never outlive it.
    pub not_after: OffsetDateTime,
    /// Creation or import time.
    pub created_at: OffsetDateTime,
}

/// Outcome of an audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The action took effect.
    Success,
    /// The action was refused or failed.
    Failure,
}

impl Outcome {
    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Subject: `bootstrap-admin`, an OIDC `sub`, an agent id, or `system`.
    pub subject: String,
    /// Where the request came from (client IP), if over the network.
    pub source: Option<String>,
}

impl Actor {
    /// The server itself (scheduler, first-start bootstrap).
    pub fn system() -> Self {
        Self {
            subject: "system".into(),
            source: None,
        }
    }
}

/// One entry of the audit trail. Never carries keys or tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Stable identifier (UUIDv7, so time-ordered).
    pub id: Uuid,
    /// When.
    pub at: OffsetDateTime,
    /// Who.
    pub actor: Actor,
    /// What, e.g. `certificate.create`, `certificate.key.download`.
    pub action: String,
    /// On what, e.g. `certificate/<uuid>`.
    pub target: String,
    /// Success or failure.
    pub outcome: Outcome,
    /// Extra non-secret details.
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A successful action by `actor` on `target` at `now`.
    pub fn success(
        now: OffsetDateTime,
        actor: &Actor,
        action: &str,
        target: impl Into<String>,
        details: serde_json::Value,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            at: now,
            actor: actor.clone(),
            action: action.to_owned(),
            target: target.into(),
            outcome: Outcome::Success,
            details,
        }
    }
}

/// Why [`MetadataStore::verify_audit_chain`](crate::ports::MetadataStore::verify_audit_chain)
/// stopped trusting the audit chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditChainFault {
    /// The row's stored fields no longer hash to its stored `hash`: it was edited.
    HashMismatch,
    /// The row's `prev_hash` is not the previous row's `hash`: a row before it
    /// was replaced, or the row was moved.
    PrevHashMismatch,
    /// A sequence number is missing (a row was deleted), or rows end before
    /// the chain head says they should (the tail was deleted).
    SeqGap,
    /// The recorded chain head (a checkpoint) names no link of the chain, or
    /// is missing.
    HeadMismatch,
    /// A row carries no sequence number, or names a chain there is not: it
    /// was written around the chains.
    Unchained,
}

impl AuditChainFault {
    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditChainFault::HashMismatch => "hash_mismatch",
            AuditChainFault::PrevHashMismatch => "prev_hash_mismatch",
            AuditChainFault::SeqGap => "seq_gap",
            AuditChainFault::HeadMismatch => "head_mismatch",
            AuditChainFault::Unchained => "unchained",
        }
    }
}

/// The first place an audit chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditChainBreak {
    /// The chain the break is in (0 for an unchained row, which is in none).
    pub chain: u32,
    /// Sequence number within that chain where the break is: the tampered
    /// row's, or for a gap the first missing number (0 for an unchained row).
    pub seq: u64,
    /// The row at (or, for a gap, just after) that point, if there is one.
    pub id: Option<Uuid>,
    /// What is wrong there.
    pub reason: AuditChainFault,
}

/// How far one of the audit chains holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditChainTip {
    /// The chain's number.
    pub chain: u32,
    /// Sequence number of its last row checked (0 for an empty chain); the
    /// rows 1..=`last_seq` were all checked.
    pub last_seq: u64,
    /// Hash of that row (64 zeros for an empty chain): recorded outside the
    /// database with `last_seq`, it lets a later check detect a rewritten chain.
    pub last_hash: String,
    /// Where this chain first breaks; `None` if it is intact.
    pub first_break: Option<AuditChainBreak>,
}

/// Result of walking every audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditChainReport {
    /// Rows whose hash and link were checked, in all chains, each chain up
    /// to its first break.
    pub checked: u64,
    /// Every chain, by number, with its last link checked.
    pub chains: Vec<AuditChainTip>,
    /// The first break: the lowest-numbered broken chain's, else a row outside
    /// every chain; `None` if the whole trail is intact.
    pub first_break: Option<AuditChainBreak>,
}

/// Sort key for certificate listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// By name.
    #[default]
    Name,
    /// By expiry of the current version.
    NotAfter,
    /// By creation time.
    CreatedAt,
}

/// Search, filter, sort and page over certificates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CertificateQuery {
    /// Substring of the name or any SAN (case-insensitive).
    pub search: Option<String>,
    /// Owning team.
    pub team: Option<String>,
    /// Owned by one of these teams (a person's teams, listed at once);
    /// `Some` of an empty list matches nothing.
    pub teams: Option<Vec<String>>,
    /// Labels that must all be present with these values.
    pub labels: Labels,
    /// Lifecycle status.
    pub status: Option<CertificateStatus>,
    /// Only certificates whose current version expires before this instant.
    pub expires_before: Option<OffsetDateTime>,
    /// Only certificates issued by this issuer.
    pub issuer_id: Option<Uuid>,
    /// Only managed (`true`) or inventory-only (`false`) certificates.
    pub managed: Option<bool>,
    /// Sort key.
    pub sort: SortKey,
    /// Descending order.
    pub descending: bool,
    /// Page size (1..=500).
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}

/// One page of results and the total matching count.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// How many rows match the filter in total.
    pub total: u64,
}

/// Filter over the audit trail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Exact target, e.g. `certificate/<uuid>`.
    pub target: Option<String>,
    /// Action prefix, e.g. `certificate.`.
    pub action_prefix: Option<String>,
    /// Actor subject.
    pub subject: Option<String>,
    /// Success or failure only.
    pub outcome: Option<Outcome>,
    /// Events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Events before this time.
    pub until: Option<OffsetDateTime>,
    /// Page size.
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}

/// How long an idempotency key is remembered: a retry after this may issue again.
pub const IDEMPOTENCY_KEY_TTL: time::Duration = time::Duration::hours(24);

/// A client-chosen `Idempotency-Key` and the result of the request that first
/// carried it, stored in the same transaction as that request's commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// Who and what the key belongs to, e.g. the actor, the operation and the
    /// certificate; the same key in another scope is another key.
    pub scope: String,
    /// The client's key (1-255 printable ASCII characters).
    pub key: String,
    /// SHA-256 of the canonical request (its parsed body as JSON), lower-case hex:
    /// a repeat with another body is refused rather than replayed.
    pub request_sha256: String,
    /// The certificate the request created or renewed.
    pub certificate_id: Uuid,
    /// The version it issued.
    pub version: u32,
    /// When it was stored; records older than [`IDEMPOTENCY_KEY_TTL`] may be purged.
    pub created_at: OffsetDateTime,
}

/// The certificate inventory in numbers, for `/metrics` and its alerts: read
/// from the shared database, so every replica reports the whole system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateStats {
    /// Certificates by status; every status is present (0 when none).
    pub by_status: Vec<(CertificateStatus, u64)>,
    /// Per team with active certificates: the earliest `not_after` among
    /// them, by team name.
    pub earliest_expiry_by_team: Vec<(String, OffsetDateTime)>,
    /// Active certificates whose current version expires before the instant
    /// asked about (expired ones included) with no renewal job of that
    /// version queued or running: nothing is going to replace them.
    pub expiring_without_renewal: u64,
}

/// Certificate counts for a dashboard, from one grouped statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateCounts {
    /// Certificates by status; every status is present (0 when none).
    pub by_status: Vec<(CertificateStatus, u64)>,
    /// For each instant asked about, in order: active certificates whose
    /// current version expires before it (cumulative, expired ones included).
    pub active_expiring_before: Vec<u64>,
}

/// Agents and their deployments in numbers, for `/metrics` and its alerts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Agents allowed to connect.
    pub agents_active: u64,
    /// Agents refused until re-enabled.
    pub agents_disabled: u64,
    /// Agents refused for good.
    pub agents_revoked: u64,
    /// Active agents not seen since the instant asked about (never seen:
    /// since their enrolment).
    pub agents_not_seen: u64,
    /// Assignments (active agent, active certificate) whose last report is
    /// `installed`.
    pub deployments_installed: u64,
    /// ... whose last report is `failed` (rolled back).
    pub deployments_failed: u64,
    /// ... whose last report is `broken` (the rollback failed too).
    pub deployments_broken: u64,
    /// ... with no report yet.
    pub deployments_pending: u64,
    /// ... whose current version was issued before the drift instant asked
    /// about and is not reported installed (the `deployment-drift` rule).
    pub deployments_drift: u64,
}
