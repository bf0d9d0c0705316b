//! Who may do what: principals (people, automation, agents), their roles and
//! teams, and the permission every endpoint declares. The rules live here, in
//! one place, so the role/route matrix test can check the HTTP layer against
//! them, and the console API, the pages, the agent listener and the use cases
//! ask them ([`Principal::authorize`], [`Principal::may`],
//! [`Principal::readable_teams`]...) instead of comparing roles and teams.

use serde::{Deserialize, Serialize};

use crate::error::{DomainError, DomainResult};
use crate::model::Certificate;

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

/// The teams a principal may act on for one permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamScope {
    /// Every team (administrators).
    All,
    /// These teams only (possibly none).
    Only(Vec<String>),
}

impl TeamScope {
    /// Whether `team` is in scope.
    pub fn allows(&self, team: &str) -> bool {
        match self {
            TeamScope::All => true,
            TeamScope::Only(teams) => teams.iter().any(|t| t == team),
        }
    }

    /// Whether any of `teams` is in scope (a resource shared by several
    /// teams, such as an agent's discoveries). Every team's scope also
    /// covers a resource of no team.
    pub fn allows_any(&self, teams: &[String]) -> bool {
        match self {
            TeamScope::All => true,
            TeamScope::Only(_) => teams.iter().any(|t| self.allows(t)),
        }
    }

    /// As a store filter: `None` for every team.
    pub fn teams(&self) -> Option<&[String]> {
        match self {
            TeamScope::All => None,
            TeamScope::Only(teams) => Some(teams),
        }
    }

    /// As an owned store filter: `None` for every team.
    pub fn into_teams(self) -> Option<Vec<String>> {
        match self {
            TeamScope::All => None,
            TeamScope::Only(teams) => Some(teams),
        }
    }
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

    /// Whether the principal may act with `permission` on `certificate`
    /// (which belongs to its team).
    pub fn may(&self, permission: Permission, certificate: &Certificate) -> bool {
        self.can(permission, Some(&certificate.team))
    }

    /// [`can`](Self::can) as a result: `Forbidden`, naming the subject, the
    /// permission and the team, when the principal does not hold it.
    pub fn authorize(&self, permission: Permission, team: Option<&str>) -> DomainResult<()> {
        if self.can(permission, team) {
            return Ok(());
        }
        let what = serde_json::to_value(permission)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Err(DomainError::Forbidden(match team {
            Some(team) => format!("{} may not {what} for team '{team}'", self.subject),
            None => format!("{} lacks the {what} permission", self.subject),
        }))
    }

    /// [`may`](Self::may) as a result. `Forbidden` (not `NotFound`): whoever
    /// loaded the certificate already answered `NotFound` for an unknown id.
    pub fn authorize_certificate(
        &self,
        permission: Permission,
        certificate: &Certificate,
    ) -> DomainResult<()> {
        self.authorize(permission, Some(&certificate.team))
    }

    /// The teams in which the principal holds the team-scoped `permission`:
    /// every team for administrators, else those of its teams its roles
    /// allow (none for agents, whose calls are not team-scoped).
    pub fn teams_with(&self, permission: Permission) -> TeamScope {
        if self.is_admin() && self.can(permission, None) {
            return TeamScope::All;
        }
        TeamScope::Only(
            self.teams
                .iter()
                .filter(|t| self.can(permission, Some(t)))
                .cloned()
                .collect(),
        )
    }

    /// The teams whose certificates (and their history, deployments and
    /// discoveries) the principal may read.
    pub fn readable_teams(&self) -> TeamScope {
        self.teams_with(Permission::CertificateRead)
    }

    /// The teams a query by this principal covers: `team` alone when one is
    /// asked for (`Forbidden` unless it holds `permission` there), else
    /// [`teams_with`](Self::teams_with).
    pub fn scope(&self, permission: Permission, team: Option<&str>) -> DomainResult<TeamScope> {
        match team {
            Some(team) => {
                self.authorize(permission, Some(team))?;
                Ok(TeamScope::Only(vec![team.to_owned()]))
            }
            None => Ok(self.teams_with(permission)),
        }
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

    fn certificate_of(team: &str) -> Certificate {
        use crate::model::{CertificateStatus, KeySource, KeyType, Labels};
        let t = time::OffsetDateTime::UNIX_EPOCH;
        Certificate {
            id: uuid::Uuid::nil(),
            name: "www".into(),
            team: team.into(),
            labels: Labels::default(),
            profile: crate::Profile::TlsServer,
            key_type: KeyType::EcdsaP256,
            key_source: KeySource::Server,
            names: Vec::new(),
            validity_days: 90,
            validity_secs: None,
            issuer_id: uuid::Uuid::nil(),
            renewal: crate::RenewalPolicy::default(),
            status: CertificateStatus::Active,
            managed: true,
            current_version: 1,
            not_after: t,
            renew_after: t,
            created_at: t,
            updated_at: t,
        }
    }

    fn service(roles: &[Role], teams: &[&str]) -> Principal {
        Principal {
            kind: PrincipalKind::Service {
                client_id: "ci".into(),
            },
            ..person(roles, teams)
        }
    }

    fn agent(teams: &[&str]) -> Principal {
        Principal {
            subject: "agent-1".into(),
            kind: PrincipalKind::Agent {
                agent_id: "agent-1".into(),
            },
            roles: Vec::new(),
            teams: teams.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    const CERTIFICATE: [Permission; 3] = [
        Permission::CertificateRead,
        Permission::CertificateWrite,
        Permission::KeyDownload,
    ];

    fn only(teams: &[&str]) -> TeamScope {
        TeamScope::Only(teams.iter().map(|t| (*t).to_owned()).collect())
    }

    // docs/identity-and-access.md, "Roles and teams": "admins do everything", on every team;
    // the bootstrap token is the break-glass administrator.
    #[test]
    fn administrators_act_on_every_teams_certificates() {
        let other = certificate_of("b");
        for admin in [
            person(&[Role::Admin], &[]),
            person(&[Role::Admin], &["a"]),
            Principal::bootstrap(),
        ] {
            for p in CERTIFICATE {
                assert!(admin.may(p, &other), "{p:?}");
                assert!(admin.authorize_certificate(p, &other).is_ok());
                assert_eq!(admin.teams_with(p), TeamScope::All);
            }
            assert_eq!(admin.readable_teams(), TeamScope::All);
            assert_eq!(
                admin.scope(Permission::CertificateRead, Some("b")).ok(),
                Some(only(&["b"]))
            );
        }
    }

    // "Operators act on their teams' certificates only."
    #[test]
    fn operators_act_on_their_teams_certificates_only() {
        for op in [
            person(&[Role::Operator], &["a", "c"]),
            service(&[Role::Operator], &["a", "c"]),
        ] {
            for p in CERTIFICATE {
                assert!(op.may(p, &certificate_of("a")), "{p:?}");
                assert!(op.may(p, &certificate_of("c")), "{p:?}");
                assert!(!op.may(p, &certificate_of("b")), "{p:?}");
                assert!(matches!(
                    op.authorize_certificate(p, &certificate_of("b")),
                    Err(DomainError::Forbidden(_))
                ));
                assert_eq!(op.teams_with(p), only(&["a", "c"]));
            }
            assert_eq!(op.readable_teams(), only(&["a", "c"]));
        }
    }

    // "Viewers read them (no private keys)."
    #[test]
    fn viewers_read_their_teams_certificates_without_keys() {
        let v = person(&[Role::Viewer], &["a"]);
        let own = certificate_of("a");
        assert!(v.may(Permission::CertificateRead, &own));
        assert!(!v.may(Permission::CertificateWrite, &own));
        assert!(!v.may(Permission::KeyDownload, &own));
        assert!(!v.may(Permission::CertificateRead, &certificate_of("b")));
        assert_eq!(v.readable_teams(), only(&["a"]));
        assert_eq!(v.teams_with(Permission::CertificateWrite), only(&[]));
        assert_eq!(v.teams_with(Permission::KeyDownload), only(&[]));
        assert_eq!(
            v.scope(Permission::CertificateRead, None).ok(),
            Some(only(&["a"]))
        );
        assert_eq!(
            v.scope(Permission::CertificateRead, Some("a")).ok(),
            Some(only(&["a"]))
        );
        let refused = |r: DomainResult<_>| match r {
            Err(DomainError::Forbidden(why)) => why,
            other => format!("not Forbidden: {other:?}"),
        };
        assert_eq!(
            refused(v.scope(Permission::CertificateRead, Some("b")).map(|_| ())),
            "u may not certificate-read for team 'b'"
        );
        assert_eq!(
            refused(v.authorize(Permission::KeyDownload, None)),
            "u lacks the key-download permission"
        );
    }

    // Agents are "kept apart": they call the agent API, never the console's
    // certificate routes, whatever their teams.
    #[test]
    fn agents_act_on_no_certificate_through_the_console() {
        let a = agent(&["a"]);
        for p in CERTIFICATE {
            assert!(!a.may(p, &certificate_of("a")), "{p:?}");
            assert_eq!(a.teams_with(p), only(&[]));
        }
        assert_eq!(a.readable_teams(), only(&[]));
        assert!(a.authorize(Permission::AgentApi, None).is_ok());
        assert!(matches!(
            a.scope(Permission::CertificateRead, Some("a")),
            Err(DomainError::Forbidden(_))
        ));
    }

    #[test]
    fn team_scopes_filter_by_team() {
        assert!(TeamScope::All.allows("x"));
        assert!(TeamScope::All.allows_any(&[]));
        assert!(!only(&["a"]).allows_any(&[]));
        assert_eq!(TeamScope::All.teams(), None);
        let s = only(&["a"]);
        assert!(s.allows("a") && !s.allows("b"));
        assert!(s.allows_any(&["b".into(), "a".into()]));
        assert!(!s.allows_any(&["b".into()]));
        assert_eq!(s.teams(), Some(&["a".to_owned()][..]));
        assert_eq!(s.into_teams(), Some(vec!["a".to_owned()]));
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
        assert_eq!(nobody.readable_teams(), only(&[]));
        assert!(!nobody.may(Permission::CertificateRead, &certificate_of("a")));
    }
}
