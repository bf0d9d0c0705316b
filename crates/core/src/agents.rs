//! Agents: hosts running `certflow-agent`, enrolled with a single-use join
//! token or an OIDC client-credentials access token, and identified afterwards
//! by a short-lived client certificate from a dedicated agent-identity CA,
//! whose URI SAN names the agent.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Prefix of the URI SAN that carries an agent's id in its identity certificate.
pub const AGENT_URI_PREFIX: &str = "urn:certflow:agent:";

/// The URI SAN of agent `id`.
pub fn agent_uri(id: Uuid) -> String {
    format!("{AGENT_URI_PREFIX}{id}")
}

/// The agent id named by a URI SAN, if it is an agent URI.
pub fn parse_agent_uri(uri: &str) -> Option<Uuid> {
    uri.strip_prefix(AGENT_URI_PREFIX)
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// The subject an agent enrolled by OIDC token is bound to: `<iss>|<sub>`.
///
/// `sub` is unique only within its issuer, so the issuer is part of it. The
/// validator accepts only the configured issuers' exact `iss` values, which
/// are URLs and so contain no `|` (RFC 3986 does not allow it unencoded):
/// the first `|` separates the two, and two different pairs never compose
/// to the same text.
pub fn token_subject(issuer: &str, subject: &str) -> String {
    format!("{issuer}|{subject}")
}

/// Whether an agent may call the agent API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentStatus {
    /// Enrolled and allowed.
    Active,
    /// Refused until re-enabled (not offered yet: re-enrol instead).
    Disabled,
    /// Refused for good; its identity certificate is no longer honoured.
    Revoked,
}

impl AgentStatus {
    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Disabled => "disabled",
            AgentStatus::Revoked => "revoked",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        [
            AgentStatus::Active,
            AgentStatus::Disabled,
            AgentStatus::Revoked,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// UUIDv7, named by the identity certificate's URI SAN.
    pub id: Uuid,
    /// Display name (the identity certificate's CN).
    pub name: String,
    /// Teams whose certificates the agent may act on.
    pub teams: Vec<String>,
    /// Active, disabled or revoked.
    pub status: AgentStatus,
    /// Serial (lower-case hex) of the only identity certificate honoured.
    pub cert_serial: String,
    /// SHA-256 (lower-case hex) of that certificate's DER.
    pub cert_fingerprint_sha256: String,
    /// End of that certificate's validity.
    pub cert_not_after: OffsetDateTime,
    /// Enrolment time.
    pub created_at: OffsetDateTime,
    /// Last authenticated request (coarse: updated at most once a minute).
    pub last_seen: Option<OffsetDateTime>,
    /// For an agent enrolled with an OIDC client-credentials token, the
    /// token's issuer-qualified subject ([`token_subject`]): every later
    /// request must carry a valid token with this subject. `None` for an
    /// agent enrolled with a join token.
    #[serde(default)]
    pub subject: Option<String>,
}

/// A join token as stored: only its SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Identifier (UUIDv7), for listing and audit.
    pub id: Uuid,
    /// SHA-256 (lower-case hex) of the token text.
    pub token_sha256: String,
    /// Name the enrolled agent gets unless it proposes one.
    pub name: String,
    /// Teams the enrolled agent is assigned.
    pub teams: Vec<String>,
    /// After this the token is refused.
    pub expires_at: OffsetDateTime,
    /// Who created it (audit subject).
    pub created_by: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// When it was consumed, if it was.
    pub used_at: Option<OffsetDateTime>,
    /// The agent it enrolled, if consumed.
    pub agent_id: Option<Uuid>,
}

/// The agent-identity CA: certificates and the blobs holding its sealed keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCaRecord {
    /// Identifier, bound into the keys' encryption context.
    pub id: Uuid,
    /// PEM of the issuing certificate (signs identity certificates).
    pub issuing_cert_pem: String,
    /// PEM of the certificates above it, up to the root.
    pub chain_pem: String,
    /// Blob of the sealed issuing key.
    pub key_blob: String,
    /// Blob of the sealed root key.
    pub root_key_blob: Option<String>,
    /// End of the issuing certificate's validity.
    pub not_after: OffsetDateTime,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn agent_uris_round_trip_and_foreign_uris_are_not_agents() {
        let id = Uuid::now_v7();
        assert_eq!(parse_agent_uri(&agent_uri(id)), Some(id));
        assert_eq!(parse_agent_uri("urn:certflow:agent:nope"), None);
        assert_eq!(parse_agent_uri(&format!("spiffe://x/{id}")), None);
        assert_eq!(
            token_subject("https://idp.example.com", "auth0|agent-1"),
            "https://idp.example.com|auth0|agent-1"
        );
        for s in [
            AgentStatus::Active,
            AgentStatus::Disabled,
            AgentStatus::Revoked,
        ] {
            assert_eq!(AgentStatus::parse(s.as_str()), Some(s));
        }
    }
}
