//! Deployments: which managed certificates an agent installs (assignments),
//! and what it last reported about each (deployments). An agent sees only
//! its assignments; the console sees, per certificate and per agent, whether
//! the current version is served, failed to install, or is late (drift).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{CertificateStatus, KeySource};
use crate::names::SubjectName;

/// A certificate given to an agent to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The agent.
    pub agent_id: Uuid,
    /// The managed certificate.
    pub certificate_id: Uuid,
    /// Audit subject of whoever assigned it (a person, or the agent itself
    /// for certificates it requested).
    pub created_by: String,
    /// When.
    pub created_at: OffsetDateTime,
}

/// Outcome an agent reports for one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentStatus {
    /// Installed, reloaded and verified.
    Installed,
    /// Failed; the previous version was restored.
    Failed,
    /// Failed, and restoring the previous version failed too.
    Broken,
}

impl DeploymentStatus {
    /// Every status.
    pub const ALL: [DeploymentStatus; 3] = [Self::Installed, Self::Failed, Self::Broken];

    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Installed => "installed",
            Self::Failed => "failed",
            Self::Broken => "broken",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The last report of one agent about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The agent.
    pub agent_id: Uuid,
    /// The managed certificate.
    pub certificate_id: Uuid,
    /// The version the host serves (0: none).
    pub version: u32,
    /// SHA-256 (lower-case hex) of what it serves (empty with version 0).
    pub fingerprint_sha256: String,
    /// Outcome.
    pub status: DeploymentStatus,
    /// The version it tried to install, when it differs from `version`.
    pub attempted_version: Option<u32>,
    /// Why it failed (the agent's words, bounded in length).
    pub error: Option<String>,
    /// When the report arrived.
    pub reported_at: OffsetDateTime,
    /// The agent's software version.
    pub agent_version: Option<String>,
}

/// One assignment of an agent with its certificate's current version: what
/// `GET /agent/v1/assignments` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedCertificate {
    /// The managed certificate.
    pub certificate_id: Uuid,
    /// Its display name.
    pub name: String,
    /// Its team.
    pub team: String,
    /// Who holds the key.
    pub key_source: KeySource,
    /// Active, revoked or archived.
    pub status: CertificateStatus,
    /// Current version number.
    pub version: u32,
    /// Its serial (lower-case hex).
    pub serial: String,
    /// Its SHA-256 fingerprint (lower-case hex).
    pub fingerprint_sha256: String,
    /// Its names.
    pub names: Vec<SubjectName>,
    /// End of its validity.
    pub not_after: OffsetDateTime,
    /// When it was issued (stored).
    pub issued_at: OffsetDateTime,
    /// When the certificate was assigned to the agent.
    pub assigned_at: OffsetDateTime,
}

/// Where one assigned certificate stands on one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentState {
    /// The agent.
    pub agent_id: Uuid,
    /// Its name.
    pub agent_name: String,
    /// The assigned certificate with its current version.
    pub assigned: AssignedCertificate,
    /// The agent's last report about it, if any.
    pub last_report: Option<Deployment>,
    /// The version last announced as late (drift), if any.
    pub drift_notified_version: Option<u32>,
}

impl DeploymentState {
    /// Whether the current version is served, as last reported.
    pub fn current_installed(&self) -> bool {
        self.last_report.as_ref().is_some_and(|d| {
            d.status == DeploymentStatus::Installed && d.version == self.assigned.version
        })
    }

    /// Drift: an active certificate whose current version, issued at least
    /// `after` before `now`, is not reported installed.
    pub fn drifting(&self, now: OffsetDateTime, after: time::Duration) -> bool {
        self.assigned.status == CertificateStatus::Active
            && !self.current_installed()
            && self.assigned.issued_at + after <= now
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(report: Option<(u32, DeploymentStatus)>) -> DeploymentState {
        let t0 = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        DeploymentState {
            agent_id: Uuid::nil(),
            agent_name: "web-1".into(),
            assigned: AssignedCertificate {
                certificate_id: Uuid::nil(),
                name: "www".into(),
                team: "web".into(),
                key_source: KeySource::Csr,
                status: CertificateStatus::Active,
                version: 2,
                serial: "01".into(),
                fingerprint_sha256: "ab".into(),
                names: vec![],
                not_after: t0 + time::Duration::days(90),
                issued_at: t0,
                assigned_at: t0,
            },
            last_report: report.map(|(version, status)| Deployment {
                agent_id: Uuid::nil(),
                certificate_id: Uuid::nil(),
                version,
                fingerprint_sha256: "ab".into(),
                status,
                attempted_version: None,
                error: None,
                reported_at: t0,
                agent_version: None,
            }),
            drift_notified_version: None,
        }
    }

    #[test]
    fn drift_is_the_current_version_not_installed_after_the_tolerance() {
        let hour = time::Duration::hours(1);
        let t0 = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        let never = state(None);
        assert!(!never.drifting(t0 + time::Duration::minutes(59), hour));
        assert!(never.drifting(t0 + hour, hour));
        assert!(state(Some((1, DeploymentStatus::Installed))).drifting(t0 + hour, hour));
        assert!(state(Some((2, DeploymentStatus::Failed))).drifting(t0 + hour, hour));
        assert!(!state(Some((2, DeploymentStatus::Installed))).drifting(t0 + hour, hour));
        let mut revoked = state(None);
        revoked.assigned.status = CertificateStatus::Revoked;
        assert!(!revoked.drifting(t0 + hour, hour));
        for s in DeploymentStatus::ALL {
            assert_eq!(DeploymentStatus::parse(s.as_str()), Some(s));
        }
    }
}
