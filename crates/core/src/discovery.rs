//! Discovery: certificates agents find in local files and on their host's
//! TLS endpoints, managed by certflow or not. Each agent's report replaces
//! its previous view; a discovered certificate is "managed" when its
//! fingerprint is one of a certflow version's, and can be "taken over": a
//! new certflow certificate is issued for its names and assigned to the agent.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// One certificate as an agent reported it (validated by the use case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredItem {
    /// `file:/path` or `tls:host:port[,sni]`; unique per agent.
    pub source: String,
    /// SHA-256 (lower-case hex) of the leaf's DER.
    pub fingerprint_sha256: String,
    /// Serial (lower-case hex).
    pub serial: String,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// DNS and IP subject alternative names, as reported.
    pub names: Vec<String>,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// DER of the leaf, when the agent sent it (public data).
    pub certificate_der: Option<Vec<u8>>,
}

/// A stored discovery, with what the console shows beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Stable id (kept while the agent keeps reporting the source).
    pub id: Uuid,
    /// The discovering agent.
    pub agent_id: Uuid,
    /// Its name.
    pub agent_name: String,
    /// Its teams (who may see the row).
    pub agent_teams: Vec<String>,
    /// What was reported last.
    pub item: DiscoveredItem,
    /// First report of this source by this agent.
    pub first_seen: OffsetDateTime,
    /// Last report of it.
    pub last_seen: OffsetDateTime,
    /// The certflow certificate created by a take-over, if any.
    pub taken_over_certificate_id: Option<Uuid>,
    /// The certflow certificate and version with this fingerprint, if any.
    pub managed: Option<(Uuid, u32)>,
}

/// Which discoveries to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryStatus {
    /// Not a certflow version (the default: what needs attention).
    #[default]
    Unmanaged,
    /// A certflow version.
    Managed,
    /// Both.
    All,
}

impl DiscoveryStatus {
    /// Every status.
    pub const ALL: [DiscoveryStatus; 3] = [Self::Unmanaged, Self::Managed, Self::All];

    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unmanaged => "unmanaged",
            Self::Managed => "managed",
            Self::All => "all",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Filters of [`DiscoveryStore::list_discovered`](crate::ports::DiscoveryStore::list_discovered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryQuery {
    /// Managed, unmanaged or both.
    pub status: DiscoveryStatus,
    /// Only rows of agents with at least one of these teams (`None`: all).
    pub teams: Option<Vec<String>>,
    /// Only this agent's rows.
    pub agent_id: Option<Uuid>,
}

/// What replacing an agent's discoveries changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiscoverySync {
    /// Items in the report.
    pub items: u64,
    /// Sources not stored before.
    pub new: u64,
    /// Stored sources no longer reported (deleted).
    pub removed: u64,
}
