//! certflow's wire types: what the console API accepts and returns, shared by
//! the server, the admin CLI and (later) the agent. Enumerations travel as
//! strings and are parsed by the use cases, so a bad value is reported with the
//! field's name and the allowed values rather than a serde message.

pub mod agent;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Media type of RFC 9457 problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Base of the stable problem `type` URIs.
pub const PROBLEM_BASE: &str = "https://certflow.dev/problems/";

/// Request a new managed certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCertificateRequest {
    /// Display name, unique in the team. Defaults to the first name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Subject alternative names: DNS names (IDNs allowed, `*.` leftmost only) and IP addresses.
    /// With a CSR and no names, the CSR's names are used.
    #[serde(default)]
    pub names: Vec<String>,
    /// Owning team.
    pub team: String,
    /// Labels (`key: value`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `tls-server` (default) or `tls-client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "tls-server")]
    pub profile: Option<String>,
    /// Key type for a server-generated key: `ecdsa-p256` (default), `ecdsa-p384`,
    /// `rsa-2048`, `rsa-3072`, `rsa-4096`, `ed25519`. Ignored with a CSR (its key decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "ecdsa-p256")]
    pub key_type: Option<String>,
    /// Validity of each version in days (default and maximum depend on the profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_days: Option<u32>,
    /// PEM CSR. Without it, certflow generates the key and keeps it encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// Issuer to use; the default issuer when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_id: Option<Uuid>,
    /// Exact lifetime in seconds for short-lived certificates (at least 60);
    /// overrides `validity_days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_seconds: Option<u32>,
    /// When to renew; the team's, else the issuer's, else the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalPolicyView>,
}

/// When to renew: at a fraction of the lifetime or a fixed time before
/// expiry, whichever is earlier, spread by a jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewalPolicyView {
    /// Fraction of the lifetime after which to renew (0 < f < 1, default 2/3).
    pub renew_at_fraction: f64,
    /// Or this many days before expiry, whichever comes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_days: Option<u32>,
    /// Share of the remaining time over which renewals are spread (0-0.5, default 0.1).
    #[serde(default = "default_jitter")]
    pub jitter_fraction: f64,
}

fn default_jitter() -> f64 {
    0.1
}

/// The renewal state of a certificate: next renewal, and the current job if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RenewalStatusView {
    /// When the current version becomes due.
    #[serde(with = "time::serde::rfc3339")]
    pub next_renewal_at: OffsetDateTime,
    /// `idle` (no job for the current version), `queued`, `running`, `failing`
    /// (retrying after an error), `done` or `dead` (gave up; operator action needed).
    pub state: String,
    /// Attempts of the current job.
    pub attempts: u32,
    /// Last attempt time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_attempt_at: Option<OffsetDateTime>,
    /// Last failure reason (the CA's words).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Next retry time while failing.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub retry_at: Option<OffsetDateTime>,
}

/// Renewal queue depth and age.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueStatsView {
    /// `database` or `sqs`.
    pub queue: String,
    /// Jobs waiting (including backoff).
    pub queued: u64,
    /// Jobs being worked on.
    pub running: u64,
    /// Dead-lettered jobs.
    pub dead: u64,
    /// Age of the oldest unfinished job, seconds.
    pub oldest_age_seconds: u64,
}

/// Subscribe a team to events on a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscriptionRequest {
    /// Team whose certificates it covers.
    pub team: String,
    /// Event kinds: `issued`, `renewed`, `renewal-failing`, `dead-lettered`,
    /// `renewal-at-risk`, `expiring`, `revoked`, `digest`, `deployment-failed`,
    /// `deployment-drift`, `policy-violation`.
    pub events: Vec<String>,
    /// Channel: `{"type":"webhook","url":..,"secret":..,"format":"json"|"slack"}`,
    /// `{"type":"sns","topic_arn":..}` or `{"type":"email","to":[..]}`.
    #[schema(value_type = Object)]
    pub channel: serde_json::Value,
}

/// A subscription (webhook secrets are never returned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionView {
    /// Identifier.
    pub id: Uuid,
    /// Team.
    pub team: String,
    /// Event kinds.
    pub events: Vec<String>,
    /// Channel, without its secret.
    #[schema(value_type = Object)]
    pub channel: serde_json::Value,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One notification's delivery to one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// Identifier.
    pub id: Uuid,
    /// The notification id (receivers de-duplicate on it).
    pub notification_id: Uuid,
    /// Event kind.
    pub event: String,
    /// Team.
    pub team: String,
    /// Certificate concerned.
    #[serde(default)]
    pub certificate_id: Option<Uuid>,
    /// Summary line.
    pub summary: String,
    /// Subscription.
    pub subscription_id: Uuid,
    /// `webhook`, `sns` or `email`.
    pub channel: String,
    /// `pending`, `delivered`, `failed` or `cancelled` (its subscription was deleted).
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Last failure reason.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Next attempt while pending.
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    /// When delivered.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// One page of deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    /// Rows.
    pub items: Vec<DeliveryView>,
    /// Total matching rows.
    pub total: u64,
}

/// Renew a certificate now, optionally with a new CSR (required when the key is the requester's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// New PEM CSR for a CSR-keyed certificate; its key must match the certificate's key type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// Revoke a version (the current one by default).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// RFC 5280 reason: `unspecified`, `keyCompromise`, `affiliationChanged`, `superseded`,
    /// `cessationOfOperation`, `certificateHold`, `privilegeWithdrawn`.
    pub reason: String,
    /// Version to revoke; the current version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Issue a replacement at once (the current version only): a fresh key
    /// when certflow holds it, the same public key when the requester does
    /// (refused with 409, before anything is revoked, for `keyCompromise`:
    /// the key holder must re-key). Agents install it on their next poll.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
}

/// Download certificate, chain and key as a password-protected PKCS#12 file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pkcs12Request {
    /// Password protecting the file (at least 8 characters).
    pub password: String,
    /// Version; the current version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// Import an existing CA as an issuer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportCaRequest {
    /// Issuer name.
    pub name: String,
    /// PEM of the issuing CA certificate (optionally followed by its chain).
    pub certificate_pem: String,
    /// PEM (PKCS#8) private key of the issuing CA certificate.
    pub private_key_pem: String,
    /// PEM of the certificates above it, up to the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_pem: Option<String>,
    /// Make it the default issuer.
    #[serde(default)]
    pub make_default: bool,
}

/// Servers before `managed` existed only managed certificates.
fn yes() -> bool {
    true
}

/// A managed certificate as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificateSummary {
    /// Identifier.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Owning team.
    pub team: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Profile.
    pub profile: String,
    /// Subject key type.
    pub key_type: String,
    /// `server` (certflow holds the key) or `csr`.
    pub key_source: String,
    /// Subject alternative names.
    pub names: Vec<String>,
    /// `active`, `revoked` or `archived`.
    pub status: String,
    /// Whether certflow renews it; `false`: an imported certificate kept as
    /// inventory only (`POST /certificates/{id}/manage` takes it over).
    #[serde(default = "yes")]
    pub managed: bool,
    /// Current version number.
    pub current_version: u32,
    /// Expiry of the current version.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When the current version becomes due for renewal (inventory only: its expiry).
    #[serde(with = "time::serde::rfc3339")]
    pub renew_after: OffsetDateTime,
    /// Issuer.
    pub issuer_id: Uuid,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One issued version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionView {
    /// Version number.
    pub version: u32,
    /// Serial number (hex).
    pub serial: String,
    /// SHA-256 fingerprint of the DER certificate (hex).
    pub fingerprint_sha256: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Subject key type.
    pub key_type: String,
    /// Names in the certificate.
    pub names: Vec<String>,
    /// `current`, `superseded` or `revoked`.
    pub status: String,
    /// Revocation time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// RFC 5280 revocation reason.
    #[serde(default)]
    pub revocation_reason: Option<String>,
    /// Whether certflow holds this version's private key.
    pub has_private_key: bool,
}

/// A certificate with its versions, chain and history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificateDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: CertificateSummary,
    /// Requested validity in days.
    pub validity_days: u32,
    /// Exact lifetime in seconds, for short-lived certificates.
    #[serde(default)]
    pub validity_seconds: Option<u32>,
    /// Renewal policy.
    pub renewal_policy: RenewalPolicyView,
    /// Renewal state.
    pub renewal: RenewalStatusView,
    /// Versions, newest first.
    pub versions: Vec<VersionView>,
    /// PEM of the current certificate followed by its issuing chain up to the root.
    pub fullchain_pem: String,
    /// Audit events on this certificate, newest first.
    pub history: Vec<AuditEventView>,
    /// What became of the replacement a revocation asked for (revoke with
    /// `replace` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<ReplacementView>,
}

/// The replacement a revocation asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplacementView {
    /// `issued`, or `failed`: the revocation stands without a replacement
    /// (the failure is audited and the team told); renew the certificate.
    pub status: String,
    /// The version revoked.
    pub revoked_version: u32,
    /// The replacement's version number, when issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Why it was not issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One page of certificates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CertificatePage {
    /// Rows.
    pub items: Vec<CertificateSummary>,
    /// Total matching rows.
    pub total: u64,
    /// Page size used.
    pub limit: u32,
    /// Rows skipped.
    pub offset: u64,
}

/// An issuer (certificate authority).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IssuerView {
    /// Identifier.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// `internal`, `acme`, or `external`: the CA of imported certificates,
    /// which certflow never issues from.
    pub kind: String,
    /// Used when a request names no issuer.
    pub is_default: bool,
    /// CA key type.
    pub key_type: String,
    /// Where the issuing CA's key is kept: `local` (sealed in the blob
    /// store), `pkcs11` (a PKCS#11 token) or `aws-kms`; absent for issuers
    /// whose keys certflow does not hold (ACME, external CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_backend: Option<String>,
    /// Subject of the issuing certificate.
    pub subject: String,
    /// Expiry of the issuing certificate.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// PEM of the issuing certificate.
    pub issuing_cert_pem: String,
    /// PEM of the chain above it, up to the root.
    pub chain_pem: String,
    /// Creation or import time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An audit trail entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEventView {
    /// Identifier (time-ordered).
    pub id: Uuid,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who.
    pub subject: String,
    /// From where.
    pub source: Option<String>,
    /// What, e.g. `certificate.create`.
    pub action: String,
    /// On what, e.g. `certificate/<id>`.
    pub target: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// Non-secret details.
    pub details: serde_json::Value,
}

/// One page of audit events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Rows.
    pub items: Vec<AuditEventView>,
    /// Total matching rows.
    pub total: u64,
}

/// One rejected field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProblemField {
    /// Path of the field, e.g. `names[2]`.
    pub field: String,
    /// Why it was rejected.
    pub reason: String,
}

/// RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Stable URI naming the problem type, e.g. `https://certflow.dev/problems/invalid-request`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong here.
    pub detail: String,
    /// Offending fields, for validation errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
}

/// Health or readiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    /// Per-backend checks (readiness only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, String>,
}
