//! Per-issuer configuration: which tokens an issuer may mint for certflow and
//! how its groups and clients map to roles and teams.

use std::collections::BTreeMap;

use certflow_core::access::Role;
use serde::{Deserialize, Serialize};

/// How an identity provider shapes its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// Standard OAuth 2.0 / OpenID Connect (RFC 9068 access tokens).
    #[default]
    Generic,
    /// Okta custom authorization server (client id in `cid`, scopes in `scp`).
    Okta,
    /// Amazon Cognito user pools (`token_use`, `client_id` instead of `aud`, `cognito:groups`).
    Cognito,
}

/// Asymmetric JWS algorithms an issuer may be allowed to use. HMAC and `none`
/// are deliberately not representable: a public JWKS key must never become an
/// HMAC secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl SigningAlgorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    /// Parses a JOSE `alg` name (exact, case-sensitive as RFC 7515 requires).
    pub fn parse(alg: &str) -> Option<Self> {
        ALL_ALGORITHMS.into_iter().find(|a| a.as_str() == alg)
    }

    pub(crate) fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Self::RS256 => A::RS256,
            Self::RS384 => A::RS384,
            Self::RS512 => A::RS512,
            Self::PS256 => A::PS256,
            Self::PS384 => A::PS384,
            Self::PS512 => A::PS512,
            Self::ES256 => A::ES256,
            Self::ES384 => A::ES384,
            Self::EdDSA => A::EdDSA,
        }
    }
}

const ALL_ALGORITHMS: [SigningAlgorithm; 9] = [
    SigningAlgorithm::RS256,
    SigningAlgorithm::RS384,
    SigningAlgorithm::RS512,
    SigningAlgorithm::PS256,
    SigningAlgorithm::PS384,
    SigningAlgorithm::PS512,
    SigningAlgorithm::ES256,
    SigningAlgorithm::ES384,
    SigningAlgorithm::EdDSA,
];

/// Groups granting each role; a person gets every role one of their groups maps to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleGroups {
    /// Groups whose members are administrators.
    pub admin: Vec<String>,
    /// Groups whose members are operators.
    pub operator: Vec<String>,
    /// Groups whose members are viewers.
    pub viewer: Vec<String>,
}

/// Role and teams of an automation client (client-credentials tokens carry no groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRole {
    /// The client's role.
    pub role: Role,
    /// Teams the client acts for.
    #[serde(default)]
    pub teams: Vec<String>,
}

/// One trusted token issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value of its tokens.
    pub issuer: String,
    /// OpenID discovery document; default `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// JWKS location, overriding the discovery document's `jwks_uri`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Expected `aud` of access tokens (not used by the Cognito flavor, whose access tokens have none).
    #[serde(default)]
    pub audience: Option<String>,
    /// OAuth clients whose tokens are accepted (required for Cognito; when set
    /// for other flavors, an access token's client id must be one of them).
    #[serde(default)]
    pub client_ids: Vec<String>,
    /// Token shape of this provider.
    #[serde(default)]
    pub flavor: Flavor,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<SigningAlgorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Claim listing a person's groups; default `groups` (`cognito:groups` for Cognito).
    #[serde(default)]
    pub group_claim: Option<String>,
    /// Groups granting each role.
    #[serde(default)]
    pub roles: RoleGroups,
    /// Groups starting with this prefix name a team: `team-payments` → `payments`.
    #[serde(default)]
    pub team_group_prefix: Option<String>,
    /// Explicit group → team mapping (in addition to the prefix rule).
    #[serde(default)]
    pub teams: BTreeMap<String, String>,
    /// Role and teams per client id for client-credentials (service) tokens.
    #[serde(default)]
    pub service_roles: BTreeMap<String, ServiceRole>,
    /// Development only: accept plain `http://` issuer, discovery, JWKS and
    /// token endpoint URLs on hosts other than loopback (keys and codes
    /// fetched over plain HTTP can be swapped by anyone on the path).
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn default_algorithms() -> Vec<SigningAlgorithm> {
    vec![SigningAlgorithm::RS256, SigningAlgorithm::ES256]
}

fn default_leeway() -> u64 {
    60
}

impl IssuerConfig {
    /// A configuration with defaults for everything but the issuer and audience.
    pub fn new(issuer: impl Into<String>, audience: Option<String>) -> Self {
        Self {
            issuer: issuer.into(),
            discovery_url: None,
            jwks_url: None,
            audience,
            client_ids: Vec::new(),
            flavor: Flavor::Generic,
            algorithms: default_algorithms(),
            leeway_secs: default_leeway(),
            group_claim: None,
            roles: RoleGroups::default(),
            team_group_prefix: None,
            teams: BTreeMap::new(),
            service_roles: BTreeMap::new(),
            allow_insecure_http: false,
        }
    }

    /// The discovery document URL in effect.
    pub fn discovery_url(&self) -> String {
        self.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            )
        })
    }

    /// The group claim in effect.
    pub fn group_claim(&self) -> &str {
        match (&self.group_claim, self.flavor) {
            (Some(claim), _) => claim,
            (None, Flavor::Cognito) => "cognito:groups",
            (None, _) => "groups",
        }
    }

    /// Checks the configuration is usable; `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("issuer is empty".into());
        }
        let urls = [
            ("issuer", Some(self.issuer.clone())),
            ("discovery_url", Some(self.discovery_url())),
            ("jwks_url", self.jwks_url.clone()),
        ];
        for (key, url) in urls {
            if let Some(url) = url {
                check_transport(&url, self.allow_insecure_http)
                    .map_err(|e| format!("{}: {key} {e}", self.issuer))?;
            }
        }
        if self.algorithms.is_empty() {
            return Err(format!("{}: algorithms is empty", self.issuer));
        }
        match self.flavor {
            Flavor::Cognito if self.client_ids.is_empty() => Err(format!(
                "{}: the cognito flavor needs client_ids (its access tokens have no aud)",
                self.issuer
            )),
            Flavor::Generic | Flavor::Okta
                if self.audience.as_deref().is_none_or(str::is_empty) =>
            {
                Err(format!("{}: audience is required", self.issuer))
            }
            _ => Ok(()),
        }
    }
}

/// Whether `url` may carry an issuer's keys, documents or codes: `https://`,
/// or plain `http://` to a loopback host (`localhost`, 127.0.0.0/8, `::1`:
/// nothing on the network can see or change it), or anywhere with the
/// development switch `allow_insecure_http`. `Err` says why not.
pub fn check_transport(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(&parsed) => Ok(()),
        "http" => Err(format!(
            "{url:?} uses plain http:// to a host that is not loopback: use https:// \
             (allow_insecure_http = true accepts it, for development only)"
        )),
        other => Err(format!("{url:?}: scheme {other}:// is not https://")),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod transport_tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback_or_with_the_development_switch() {
        for ok in [
            "https://idp.example.com/oauth2/default",
            "http://127.0.0.1:8090/realms/x",
            "http://127.9.9.9/",
            "http://localhost:8080/",
            "http://LOCALHOST/",
            "http://[::1]:9000/jwks",
        ] {
            assert_eq!(check_transport(ok, false), Ok(()), "{ok}");
        }
        for refused in [
            "http://idp.example.com/oauth2/default",
            "http://10.0.0.5/jwks",
            "http://[2001:db8::1]/",
            "http://localhost.example.com/",
            "http://127.0.0.1.nip.io/",
        ] {
            let e = check_transport(refused, false).unwrap_err();
            assert!(
                e.contains("plain http://") && e.contains("allow_insecure_http"),
                "{refused}: {e}"
            );
            assert_eq!(
                check_transport(refused, true),
                Ok(()),
                "{refused} with the switch"
            );
        }
        for never in [
            "ftp://idp.example.com/",
            "file:///etc/jwks.json",
            "idp.example.com",
        ] {
            assert!(check_transport(never, true).is_err(), "{never}");
        }
    }

    #[test]
    fn an_issuer_over_plain_http_is_refused_naming_the_key() {
        let mut c = IssuerConfig::new("http://idp.example.com", Some("api".into()));
        let e = c.check().unwrap_err();
        assert!(e.contains("issuer") && e.contains("plain http://"), "{e}");
        c.allow_insecure_http = true;
        c.check().unwrap();
        let mut c = IssuerConfig::new("https://idp.example.com", Some("api".into()));
        c.jwks_url = Some("http://keys.example.com/jwks".into());
        let e = c.check().unwrap_err();
        assert!(e.contains("jwks_url"), "{e}");
        c.jwks_url = None;
        c.discovery_url = Some("http://idp.example.com/.well-known/openid-configuration".into());
        assert!(c.check().unwrap_err().contains("discovery_url"));
        c.discovery_url = Some("http://127.0.0.1:9/.well-known/openid-configuration".into());
        c.check().unwrap();
    }
}
