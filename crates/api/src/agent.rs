//! The agent API (`/agent/v1/*`, served over mTLS) and the console's view of
//! deployments: the contract between `certflow serve` and `certflow-agent`.
//!
//! Routes (all but enrolment need the agent's identity certificate):
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | POST | `/agent/v1/enroll` | [`EnrollRequest`] (bearer: join token or OIDC client-credentials token) → 201 [`IdentityView`] |
//! | POST | `/agent/v1/identity/renew` | [`RenewIdentityRequest`] → [`IdentityView`] |
//! | GET | `/agent/v1/whoami` | → [`WhoamiView`] |
//! | GET | `/agent/v1/assignments[?wait=<s>]` | `If-None-Match` → 200 [`AssignmentList`] with `ETag`, or 304 |
//! | GET | `/agent/v1/certificates/{id}` | → [`CertificateBundle`] (current version) |
//! | POST | `/agent/v1/certificates` | [`AgentCertificateRequest`] → 201 [`Assignment`] (created and assigned to the caller) |
//! | POST | `/agent/v1/certificates/{id}/renew` | [`AgentRenewRequest`] → [`Assignment`] |
//! | POST | `/agent/v1/reports` | [`ReportRequest`] → 204 |
//! | POST | `/agent/v1/discovered` | [`DiscoveryReport`] (the agent's whole current view) → 204 |
//!
//! Console (`/console/api/v1`): `GET/POST /agents/{id}/assignments`,
//! `DELETE /agents/{id}/assignments/{certificate_id}` ([`AssignRequest`]), and
//! `GET /certificates/{id}/deployments` → `Vec<`[`DeploymentView`]`>`,
//! `GET /discovered?status=unmanaged|managed|all&agent=<id>` → [`DiscoveredList`],
//! `POST /discovered/{id}/take-over` ([`TakeOverRequest`]) → 201 with the new
//! certificate (as `POST /certificates` answers); agent administration:
//! `POST /agents/join-tokens` ([`CreateJoinTokenRequest`]) → 201
//! [`JoinTokenView`], `GET /agents/join-tokens` → [`JoinTokenList`],
//! `POST /agents/join-tokens/{id}/revoke` → [`JoinTokenInfo`], `GET /agents`
//! → [`AgentList`], `POST /agents/{id}/disable|enable|revoke` → [`AgentView`].

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /agent/v1/enroll` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// PEM PKCS#10 request signed by the agent's identity key.
    pub csr: String,
    /// Name the agent proposes (the join token's name otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /agent/v1/identity/renew` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewIdentityRequest {
    /// PEM PKCS#10 request (a fresh key is recommended).
    pub csr: String,
}

/// An identity certificate and what it says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityView {
    /// The agent's id (the URI SAN's last part).
    pub agent_id: Uuid,
    /// Its name (the certificate's CN).
    pub name: String,
    /// Its teams.
    pub teams: Vec<String>,
    /// PEM of the identity certificate.
    pub certificate_pem: String,
    /// PEM of the agent-identity CA chain (trust anchor for the agent listener too).
    pub ca_chain_pem: String,
    /// End of the certificate's validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// `GET /agent/v1/whoami` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoamiView {
    /// The agent's id.
    pub agent_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its teams.
    pub teams: Vec<String>,
    /// `active` (others are refused before this point).
    pub status: String,
    /// Serial of the identity certificate in use.
    pub certificate_serial: String,
    /// End of its validity.
    #[serde(with = "time::serde::rfc3339")]
    pub certificate_not_after: OffsetDateTime,
}

/// One certificate assigned to the calling agent, as of its current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    /// The managed certificate.
    pub certificate_id: Uuid,
    /// Its display name (agents' configurations refer to it by this or the id).
    pub name: String,
    /// Subject alternative names of the current version.
    pub names: Vec<String>,
    /// `csr` (the agent holds the key) or `server` (fetched with the bundle).
    pub key_source: String,
    /// `active`, `revoked` or `archived`; a revoked or archived certificate
    /// is to be removed from service (the agent stops renewing it).
    pub status: String,
    /// Current version number.
    pub version: u32,
    /// Serial (lower-case hex) of the current version.
    pub serial: String,
    /// SHA-256 (lower-case hex) of the current version's DER.
    pub fingerprint_sha256: String,
    /// End of the current version's validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// `GET /agent/v1/assignments` answer (its `ETag` header covers the whole list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AssignmentList {
    /// Every certificate assigned to the agent, ordered by id.
    pub items: Vec<Assignment>,
}

/// `GET /agent/v1/certificates/{id}` answer: what to install.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateBundle {
    /// The managed certificate.
    pub certificate_id: Uuid,
    /// Version of the PEMs below.
    pub version: u32,
    /// Serial (lower-case hex).
    pub serial: String,
    /// SHA-256 (lower-case hex) of the leaf's DER.
    pub fingerprint_sha256: String,
    /// PEM of the leaf certificate.
    pub certificate_pem: String,
    /// PEM of the issuing chain, leaf excluded, root excluded.
    pub chain_pem: String,
    /// PEM (PKCS#8) private key, only for `server`-keyed certificates; the
    /// download is audited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

/// `POST /agent/v1/certificates`: the agent requests a certificate for a key it
/// generated (the key never leaves the host); it is assigned to the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCertificateRequest {
    /// Display name; unique per agent (a repeat returns the existing assignment
    /// when the names match, 409 otherwise).
    pub name: String,
    /// PEM PKCS#10 request carrying the names (SANs) and the public key.
    pub csr: String,
    /// Owning team: one of the agent's teams (defaults to its only team).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Issuer name (the default issuer otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Profile (`tls-server` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Validity in days (issuer/profile default otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_days: Option<u32>,
    /// Validity in seconds, for short-lived certificates (overrides days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_seconds: Option<u32>,
}

/// `POST /agent/v1/certificates/{id}/renew`: a new version now, for a new
/// key when `csr` is given (key rotation; `csr`-keyed certificates only), or
/// when the current one is expired or about to be.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRenewRequest {
    /// PEM PKCS#10 request for the new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// Outcome of the agent's last attempt to deploy a certificate version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentStatus {
    /// Installed, reloaded, and the verification target serves it.
    Installed,
    /// Installing, reloading or verifying failed; the previous version was
    /// restored (see `error`).
    Failed,
    /// Failed and could not even restore the previous version.
    Broken,
}

/// One certificate in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentReport {
    /// The managed certificate.
    pub certificate_id: Uuid,
    /// The version the host now serves (after a rollback: the previous one; 0 if none).
    pub version: u32,
    /// SHA-256 (lower-case hex) of the certificate the host now serves.
    pub fingerprint_sha256: String,
    /// Outcome.
    pub status: DeploymentStatus,
    /// The version the agent tried to install, when it differs from `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempted_version: Option<u32>,
    /// Why it failed (no secrets: the agent never puts key material here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /agent/v1/reports` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// One entry per certificate the agent acted on or verified.
    pub items: Vec<DeploymentReport>,
    /// The agent's version (`certflow-agent --version`), shown in the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// Console: assign a certificate to an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    /// The managed certificate (same team as one of the agent's teams).
    pub certificate_id: Uuid,
}

/// Console: where one certificate stands on one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentView {
    /// The agent.
    pub agent_id: Uuid,
    /// Its name.
    pub agent_name: String,
    /// The managed certificate.
    pub certificate_id: Uuid,
    /// Its current version (what the host should serve).
    pub current_version: u32,
    /// Last reported version served (None: never reported).
    pub deployed_version: Option<u32>,
    /// Last reported fingerprint served.
    pub fingerprint_sha256: Option<String>,
    /// Last reported outcome (`pending` when never reported).
    pub status: String,
    /// Last reported error.
    pub error: Option<String>,
    /// When the last report arrived.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub reported_at: Option<OffsetDateTime>,
    /// The current version is not deployed and was issued longer ago than
    /// the configured drift tolerance.
    pub drift: bool,
}

/// A certificate the agent found on its host (a file under a discovery path)
/// or at a TLS endpoint it was told to look at. Only certificate data: the
/// agent never reads private keys for discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveredCertificate {
    /// Where it was seen: `file:/path` or `tls:host:port` (`tls:host:port,sni` with an SNI).
    pub source: String,
    /// SHA-256 (lower-case hex) of the leaf's DER.
    pub fingerprint_sha256: String,
    /// Serial (lower-case hex).
    pub serial: String,
    /// Subject DN (RFC 4514 text).
    pub subject: String,
    /// Issuer DN (RFC 4514 text).
    pub issuer: String,
    /// DNS and IP subject alternative names.
    pub names: Vec<String>,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// PEM of the leaf (public data: lets the server rate its key and
    /// signature and keep it for take-over); absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
}

/// What one discovery pass found (`certflow-agent discover --json`, and the
/// body of `POST /agent/v1/discovered`: the agent's whole current view,
/// replacing what it reported before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryReport {
    /// One entry per source that held or served a readable certificate.
    pub items: Vec<DiscoveredCertificate>,
    /// Sources the agent looked at but could not read this time (an
    /// endpoint down, a file or directory it may not read): what the server
    /// knows of them, and of the files under such a directory, is kept as it
    /// was instead of being dropped from the agent's view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// A discovered certificate as the console lists it
/// (`GET /console/api/v1/discovered`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiscoveredView {
    /// Stable id (kept while the agent keeps reporting the source).
    pub id: Uuid,
    /// The agent that found it.
    pub agent_id: Uuid,
    /// Its name.
    pub agent_name: String,
    /// `file:/path` or `tls:host:port[,sni]`.
    pub source: String,
    /// SHA-256 (lower-case hex) of the leaf's DER.
    pub fingerprint_sha256: String,
    /// Serial (lower-case hex).
    pub serial: String,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// DNS and IP subject alternative names.
    pub names: Vec<String>,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// First report of this source by this agent.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// Last report of it.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// The certflow certificate one of whose versions has this fingerprint
    /// (the certificate is managed), if any.
    pub managed_certificate_id: Option<Uuid>,
    /// The certflow certificate created to take it over, if any.
    pub taken_over_certificate_id: Option<Uuid>,
}

/// `GET /console/api/v1/discovered` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiscoveredList {
    /// Matching discoveries, by agent name then source.
    pub items: Vec<DiscoveredView>,
}

/// `POST /console/api/v1/discovered/{id}/take-over` body: certflow issues a
/// new certificate for the discovered names, owned by `team` and assigned
/// to the agent that found it, and renews it from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeOverRequest {
    /// Owning team: one of the discovering agent's teams.
    pub team: String,
    /// Issuer name (the default issuer otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Display name (the first discovered name otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /console/api/v1/agents/join-tokens` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinTokenRequest {
    /// Name of the agent it enrols (1-64 printable characters; the agent may propose another).
    pub name: String,
    /// Teams assigned to the agent.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Minutes until the token expires (1-1440, default 60).
    #[serde(default = "default_join_token_ttl")]
    pub ttl_minutes: u32,
}

fn default_join_token_ttl() -> u32 {
    60
}

/// A new join token: shown once, stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    /// Token id (for the audit trail).
    pub id: Uuid,
    /// `cfj_...`: give it to the agent; it enrols exactly one agent.
    pub token: String,
    /// Name of the agent it enrols.
    pub name: String,
    /// Teams of that agent.
    pub teams: Vec<String>,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A join token as listed: never its text or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenInfo {
    /// Token id.
    pub id: Uuid,
    /// Name of the agent it enrols.
    pub name: String,
    /// Teams of that agent.
    pub teams: Vec<String>,
    /// `unused` (it can still enrol an agent), `used` or `expired` (also
    /// once revoked: revoking makes it expire).
    pub state: String,
    /// When it expires, or expired.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it enrolled its agent.
    #[serde(with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
    /// The agent it enrolled.
    pub agent_id: Option<Uuid>,
}

/// `GET /console/api/v1/agents/join-tokens` answer: join tokens, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenList {
    /// The tokens.
    pub items: Vec<JoinTokenInfo>,
}

/// An agent, as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    /// Agent id (the identity certificate's URI SAN is `urn:certflow:agent:<id>`).
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Teams.
    pub teams: Vec<String>,
    /// `active`, `disabled` or `revoked`.
    pub status: String,
    /// Serial of the identity certificate honoured.
    pub certificate_serial: String,
    /// Its SHA-256 fingerprint.
    pub certificate_sha256: String,
    /// Its expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub certificate_not_after: OffsetDateTime,
    /// Enrolment time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last authenticated request (minute precision).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen: Option<OffsetDateTime>,
}

/// `GET /console/api/v1/agents` answer: agents, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    /// The agents.
    pub items: Vec<AgentView>,
}
