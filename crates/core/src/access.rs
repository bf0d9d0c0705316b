//! Who may do what: principals (people, automation, agents), their roles and
//! teams, and the permission every endpoint declares. The rules live here, in
//! one place, so the role/route matrix test can check the HTTP layer against
//! them.

use serde::{Deserialize, Serialize};

/// A person's role, mapped from the identity provider's group claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, every team, including issuers, agents and settings.
    Admin,
    /// Request, renew, revoke, archive and download in their teams.
    Operator,
    /// Read their teams' certificates and history; no private keys.
    Viewer,
}

impl Role {
    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        [Role::Admin, Role::Operator, Role::Viewer]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// What kind of caller a principal is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PrincipalKind {
    /// A person signed in through SSO (browser session or bearer token).
    Person,
    /// Automation with an OAuth client-credentials token.
    Service {
        /// OAuth client id.
        client_id: String,
    },
    /// A certflow agent (token plus mTLS identity certificate).
    Agent {
        /// The agent's id.
        agent_id: String,
    },
    /// The break-glass bootstrap token.
    Bootstrap,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Subject for the audit trail (`sub`, client id, agent id, `bootstrap-admin`).
    pub subject: String,
    /// Person, service, agent or bootstrap.
    pub kind: PrincipalKind,
    /// Roles (people and services).
    pub roles: Vec<Role>,
    /// Teams whose certificates the principal may act on (ignored for admins).
    pub teams: Vec<String>,
}

/// What an endpoint needs. Team-scoped permissions are checked against the
/// team of the certificate (or the request's team) as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Read certificates, versions, history (team-scoped).
    CertificateRead,
    /// Request, renew, revoke, archive (team-scoped).
    CertificateWrite,
    /// Download private keys (team-scoped, audited).
    KeyDownload,
    /// Read issuers (any authenticated person).
    IssuerRead,
    /// Create or import issuers.
    IssuerAdmin,
    /// Read subscriptions and deliveries (team-scoped).
    NotificationRead,
    /// Create and delete subscriptions (team-scoped).
    NotificationWrite,
    /// Read the audit trail (admins: all; others: their teams' certificates).
    AuditRead,
    /// Queue depth and other operator views.
    OperationsRead,
    /// Manage agents and join tokens.
    AgentAdmin,
    /// Agent endpoints (`/agent/*`) — agents only.
    AgentApi,
}

impl Principal {
    /// The break-glass bootstrap administrator.
    pub fn bootstrap() -> Self {
        Self {
            subject: "bootstrap-admin".into(),
            kind: PrincipalKind::Bootstrap,
            roles: vec![Role::Admin],
            teams: Vec::new(),
        }
    }

    /// Whether this principal is an administrator.
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// Whether the principal may act on `team`'s resources at all.
    pub fn in_team(&self, team: &str) -> bool {
        self.is_admin() || self.teams.iter().any(|t| t == team)
    }

    /// Whether the principal holds `permission` — for `team` when the
    /// permission is team-scoped and a team is known.
    pub fn can(&self, permission: Permission, team: Option<&str>) -> bool {
        use Permission::*;
        if matches!(self.kind, PrincipalKind::Agent { .. }) {
            return permission == AgentApi;
        }
        if permission == AgentApi {
            return false;
        }
        if self.is_admin() {
            return true;
        }
        let operator = self.roles.contains(&Role::Operator);
        let viewer = operator || self.roles.contains(&Role::Viewer);
        let in_team = team.is_none_or(|t| self.in_team(t));
        match permission {
            CertificateRead | NotificationRead | AuditRead => viewer && in_team,
            CertificateWrite | KeyDownload | NotificationWrite => operator && in_team,
            IssuerRead | OperationsRead => viewer,
            IssuerAdmin | AgentAdmin | AgentApi => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(roles: &[Role], teams: &[&str]) -> Principal {
        Principal {
            subject: "u".into(),
            kind: PrincipalKind::Person,
            roles: roles.to_vec(),
            teams: teams.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn operators_act_in_their_teams_only() {
        let op = person(&[Role::Operator], &["a"]);
        assert!(op.can(Permission::CertificateWrite, Some("a")));
        assert!(!op.can(Permission::CertificateWrite, Some("b")));
        assert!(op.can(Permission::KeyDownload, Some("a")));
        assert!(!op.can(Permission::IssuerAdmin, None));
        assert!(!op.can(Permission::AgentApi, None));
    }

    #[test]
    fn viewers_read_but_never_write_or_download_keys() {
        let v = person(&[Role::Viewer], &["a"]);
        assert!(v.can(Permission::CertificateRead, Some("a")));
        assert!(!v.can(Permission::CertificateRead, Some("b")));
        assert!(!v.can(Permission::CertificateWrite, Some("a")));
        assert!(!v.can(Permission::KeyDownload, Some("a")));
    }

    #[test]
    fn admins_do_everything_but_agent_calls_and_agents_only_those() {
        let admin = person(&[Role::Admin], &[]);
        assert!(admin.can(Permission::IssuerAdmin, None));
        assert!(admin.can(Permission::CertificateWrite, Some("any")));
        assert!(!admin.can(Permission::AgentApi, None));
        let agent = Principal {
            subject: "agent-1".into(),
            kind: PrincipalKind::Agent {
                agent_id: "agent-1".into(),
            },
            roles: vec![Role::Admin],
            teams: vec![],
        };
        assert!(agent.can(Permission::AgentApi, None));
        assert!(!agent.can(Permission::CertificateRead, Some("a")));
        assert!(Principal::bootstrap().can(Permission::AgentAdmin, None));
    }

    #[test]
    fn no_role_means_nothing() {
        let nobody = person(&[], &["a"]);
        for p in [
            Permission::CertificateRead,
            Permission::IssuerRead,
            Permission::OperationsRead,
        ] {
            assert!(!nobody.can(p, Some("a")));
        }
    }
}
