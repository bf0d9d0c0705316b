//! The validated content of a token, and its mapping to an access principal.

use std::collections::BTreeSet;

use certflow_core::access::{Principal, PrincipalKind, Role};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::IssuerConfig;

/// Which kind of token the claims came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenKind {
    /// An OAuth access token presented as a bearer token.
    Access,
    /// An OpenID Connect ID token from a browser login.
    Id,
}

/// Claims of a token whose signature, issuer, audience and lifetime were verified.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Claims {
    /// Access or ID token.
    pub kind: TokenKind,
    /// `iss`: one of the configured issuers, exactly.
    pub issuer: String,
    /// `sub`, if present.
    pub subject: Option<String>,
    /// `aud`, normalised to a list (empty when absent, as in Cognito access tokens).
    pub audience: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `iat`, Unix seconds.
    pub issued_at: Option<i64>,
    /// The OAuth client: `client_id` (RFC 9068, Cognito), `cid` (Okta) or `azp`.
    pub client_id: Option<String>,
    /// Granted scopes (`scope` string or `scp` list).
    pub scopes: Vec<String>,
    /// The person's groups from the issuer's group claim.
    pub groups: Vec<String>,
    /// `jti`, if present (for replay tracking by the caller).
    pub token_id: Option<String>,
    /// Every claim as sent, for fields this struct does not name (`email`, `name`, …).
    pub raw: Map<String, Value>,
}

impl Claims {
    /// Whether these are a client-credentials (automation) token's claims:
    /// an access token whose subject is the client itself or absent.
    pub fn is_service(&self) -> bool {
        self.kind == TokenKind::Access
            && self
                .client_id
                .as_deref()
                .is_some_and(|client| self.subject.as_deref().is_none_or(|sub| sub == client))
            && !self.raw.contains_key("username")
    }

    /// A string claim by name.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.raw.get(name).and_then(Value::as_str)
    }
}

/// Maps claims to a principal under `config`'s role, team and service mappings.
pub(crate) fn principal_for(config: Option<&IssuerConfig>, claims: &Claims) -> Principal {
    if claims.is_service() {
        let client_id = claims.client_id.clone().unwrap_or_default();
        let service = config.and_then(|c| c.service_roles.get(&client_id));
        return Principal {
            subject: client_id.clone(),
            kind: PrincipalKind::Service { client_id },
            roles: service.map(|s| vec![s.role]).unwrap_or_default(),
            teams: service.map(|s| sorted(s.teams.clone())).unwrap_or_default(),
        };
    }
    let mut roles = BTreeSet::new();
    let mut teams = BTreeSet::new();
    if let Some(config) = config {
        for group in &claims.groups {
            for (role, groups) in [
                (Role::Admin, &config.roles.admin),
                (Role::Operator, &config.roles.operator),
                (Role::Viewer, &config.roles.viewer),
            ] {
                if groups.contains(group) {
                    roles.insert(role);
                }
            }
            if let Some(prefix) = config.team_group_prefix.as_deref()
                && let Some(team) = group.strip_prefix(prefix)
                && !team.is_empty()
            {
                teams.insert(team.to_owned());
            }
            if let Some(team) = config.teams.get(group) {
                teams.insert(team.clone());
            }
        }
    }
    Principal {
        subject: claims.subject.clone().unwrap_or_default(),
        kind: PrincipalKind::Person,
        roles: roles.into_iter().collect(),
        teams: teams.into_iter().collect(),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}
