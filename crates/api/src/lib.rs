//! certflow's wire types: what the console API accepts and returns, shared by
//! the server, the admin CLI and (later) the agent. Enumerations travel as
//! strings and are parsed by the use cases, so a bad value is reported with the
//! field's name and the allowed values rather than a serde message.

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
    /// Current version number.
    pub current_version: u32,
    /// Expiry of the current version.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When the current version becomes due for renewal.
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
    /// Renew once this fraction of the lifetime has elapsed.
    pub renew_at_fraction: f64,
    /// Versions, newest first.
    pub versions: Vec<VersionView>,
    /// PEM of the current certificate followed by its issuing chain up to the root.
    pub fullchain_pem: String,
    /// Audit events on this certificate, newest first.
    pub history: Vec<AuditEventView>,
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
    /// `internal`.
    pub kind: String,
    /// Used when a request names no issuer.
    pub is_default: bool,
    /// CA key type.
    pub key_type: String,
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
