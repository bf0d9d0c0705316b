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

/// Whether a stored `source` is kept although the report does not list it:
/// it is one of the report's `unreadable` sources, or a file under an
/// unreadable directory (`file:/dir` keeps `file:/dir/x.pem`). A reading
/// failure says nothing about whether the certificate is still there, so
/// its row (and its take-over record) must survive a passing outage.
pub fn kept_while_unreadable(source: &str, unreadable: &[String]) -> bool {
    unreadable.iter().any(|u| {
        source == u
            || (u.starts_with("file:")
                && source
                    .strip_prefix(u.trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/')))
    })
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
    /// Stored sources not reported but kept: unreadable this time.
    pub kept: u64,
}

#[cfg(test)]
mod tests {
    use super::kept_while_unreadable;

    #[test]
    fn an_unreadable_source_or_directory_keeps_what_was_seen_there() {
        let u = vec![
            "tls:10.0.0.1:443".to_owned(),
            "file:/etc/ssl/private/".to_owned(),
        ];
        assert!(kept_while_unreadable("tls:10.0.0.1:443", &u));
        assert!(
            !kept_while_unreadable("tls:10.0.0.1:4433", &u),
            "no prefix match for endpoints"
        );
        assert!(kept_while_unreadable("file:/etc/ssl/private/a.pem", &u));
        assert!(
            !kept_while_unreadable("file:/etc/ssl/private-old/a.pem", &u),
            "a sibling is not under it"
        );
        assert!(!kept_while_unreadable("file:/etc/ssl/other.pem", &u));
        assert!(!kept_while_unreadable("tls:10.0.0.1:443", &[]));
    }
}
