//! Challenge validation (RFC 8555 §8.3, §8.4; RFC 8737; RFC 8738 for IP
//! identifiers): certflow really fetches, looks up and connects. Names are
//! resolved through the configured DNS resolver (`dns_resolver`) for all
//! three types, and every address is judged by the outbound policy before a
//! connection is made to it, so a client cannot point validation at the
//! server's own loopback or cloud metadata address unless an administrator
//! allow-listed it (`[outbound] allow`).

mod dns01;
mod http01;
mod resolve;
mod tls_alpn01;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certflow_core::outbound::OutboundPolicy;

pub use resolve::Resolver;

/// Where and how long validation connects.
#[derive(Debug, Clone)]
pub struct ValidatorSettings {
    /// The port of http-01 requests (80 in RFC 8555; other values for tests
    /// and private networks).
    pub http01_port: u16,
    /// The port of tls-alpn-01 connections (443 in RFC 8737).
    pub tls_alpn01_port: u16,
    /// The DNS server for every lookup (TXT and addresses); the system's
    /// resolver configuration when `None`.
    pub dns_resolver: Option<SocketAddr>,
    /// Bound on one validation attempt (lookups, connection, response).
    pub timeout: Duration,
}

impl Default for ValidatorSettings {
    fn default() -> Self {
        Self {
            http01_port: 80,
            tls_alpn01_port: 443,
            dns_resolver: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A challenge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeType {
    /// `http-01`.
    Http01,
    /// `dns-01`.
    Dns01,
    /// `tls-alpn-01`.
    TlsAlpn01,
}

impl ChallengeType {
    /// Parses the RFC name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http-01" => Some(Self::Http01),
            "dns-01" => Some(Self::Dns01),
            "tls-alpn-01" => Some(Self::TlsAlpn01),
            _ => None,
        }
    }
}

/// What is being validated: a DNS name (`*.` stripped for wildcards) or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A DNS name.
    Dns(String),
    /// An IP address (RFC 8738).
    Ip(std::net::IpAddr),
}

impl Target {
    /// From an ACME identifier (`dns` or `ip`, its value).
    pub fn from_identifier(kind: &str, value: &str) -> Result<Self, ValidationFailure> {
        match kind {
            "dns" => Ok(Target::Dns(
                value
                    .strip_prefix("*.")
                    .unwrap_or(value)
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            )),
            "ip" => value.parse().map(Target::Ip).map_err(|_| {
                ValidationFailure::new("malformed", format!("{value:?} is not an IP address"))
            }),
            other => Err(ValidationFailure::new(
                "unsupportedIdentifier",
                format!("identifier type {other:?} cannot be validated"),
            )),
        }
    }
}

/// Why a validation failed: an ACME error type name (`connection`, `dns`,
/// `tls`, `incorrectResponse`, `unauthorized`...) and a detail for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationFailure {
    /// The ACME error type, without the URN prefix.
    pub problem_type: &'static str,
    /// What went wrong, by class (nothing the remote side wrote).
    pub detail: String,
}

impl ValidationFailure {
    /// A failure of `problem_type`.
    pub fn new(problem_type: &'static str, detail: impl Into<String>) -> Self {
        Self {
            problem_type,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for ValidationFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.problem_type, self.detail)
    }
}

impl std::error::Error for ValidationFailure {}

/// The three validators, sharing a resolver, the outbound policy and an HTTP client.
#[derive(Clone)]
pub struct ChallengeValidators {
    settings: ValidatorSettings,
    resolver: Resolver,
    http: reqwest::Client,
}

impl ChallengeValidators {
    /// Validators under `policy` with `settings`.
    pub fn new(settings: ValidatorSettings, policy: Arc<OutboundPolicy>) -> Result<Self, String> {
        let resolver = Resolver::new(settings.dns_resolver, policy)?;
        let http = http01::client(&resolver, settings.timeout)?;
        Ok(Self {
            settings,
            resolver,
            http,
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &ValidatorSettings {
        &self.settings
    }

    /// Validates one challenge: `Ok` when the client proved control of
    /// `target` for `key_authorization`.
    pub async fn validate(
        &self,
        kind: ChallengeType,
        target: &Target,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), ValidationFailure> {
        if !crate::keyauth::is_token(token) {
            return Err(ValidationFailure::new(
                "malformed",
                "the challenge token is not base64url",
            ));
        }
        let attempt = async {
            match kind {
                ChallengeType::Http01 => {
                    http01::validate(
                        &self.http,
                        &self.resolver,
                        self.settings.http01_port,
                        target,
                        token,
                        key_authorization,
                    )
                    .await
                }
                ChallengeType::Dns01 => {
                    dns01::validate(&self.resolver, target, key_authorization).await
                }
                ChallengeType::TlsAlpn01 => {
                    tls_alpn01::validate(
                        &self.resolver,
                        self.settings.tls_alpn01_port,
                        target,
                        key_authorization,
                    )
                    .await
                }
            }
        };
        match tokio::time::timeout(self.settings.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ValidationFailure::new(
                "connection",
                format!("no answer within {} s", self.settings.timeout.as_secs()),
            )),
        }
    }
}

/// The port the use cases call from the validation task.
#[async_trait::async_trait]
impl certflow_core::acme::ChallengeValidator for ChallengeValidators {
    async fn validate(
        &self,
        challenge_type: certflow_core::acme::ChallengeType,
        identifier: &certflow_core::acme::AcmeIdentifier,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), certflow_core::acme::AcmeValidationError> {
        let to_port = |f: ValidationFailure| certflow_core::acme::AcmeValidationError {
            problem_type: f.problem_type,
            detail: f.detail,
        };
        let kind = ChallengeType::parse(challenge_type.as_str()).ok_or_else(|| {
            to_port(ValidationFailure::new(
                "malformed",
                "unknown challenge type",
            ))
        })?;
        let target = Target::from_identifier(identifier.kind.as_str(), &identifier.value)
            .map_err(to_port)?;
        ChallengeValidators::validate(self, kind, &target, token, key_authorization)
            .await
            .map_err(to_port)
    }
}
