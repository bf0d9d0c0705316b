//! Configuration of one ACME issuer, embeddable in the server's TOML config.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use certflow_core::{DomainError, DomainResult, FieldError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Settings of an ACME issuer.
///
/// ```toml
/// directory_url = "https://acme-v02.api.letsencrypt.org/directory"
/// contact = ["ops@example.com"]
/// challenge = "dns-01"
/// [dns]
/// provider = "route53"
/// hosted_zone_id = "Z0123456789"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSettings {
    /// The CA's directory URL (`https://`).
    pub directory_url: String,
    /// Contact emails for the account (`mailto:` is added when missing).
    #[serde(default)]
    pub contact: Vec<String>,
    /// External account binding, when the CA requires one.
    #[serde(default)]
    pub external_account_binding: Option<EabSettings>,
    /// How names are proven: `http-01` (default) or `dns-01`.
    #[serde(default)]
    pub challenge: ChallengeKind,
    /// Where DNS-01 TXT records are written; required with `dns-01`.
    #[serde(default)]
    pub dns: Option<DnsSettings>,
    /// Waiting for DNS records to be visible to the CA.
    #[serde(default)]
    pub propagation: PropagationSettings,
    /// PEM bundle of the roots that sign the CA's TLS certificate, replacing the
    /// system trust store (a private CA, or pebble's test certificate).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// How long an order may take from creation to certificate download.
    #[serde(default = "default_order_timeout")]
    pub order_timeout_secs: u64,
    /// Timeout of each HTTP request to the CA.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

fn default_order_timeout() -> u64 {
    300
}

fn default_request_timeout() -> u64 {
    30
}

/// RFC 8555 §7.3.4 external account binding.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EabSettings {
    /// The key identifier the CA gave.
    pub key_id: String,
    /// The MAC key the CA gave, base64url (padding optional).
    pub hmac_key: SecretString,
}

impl std::fmt::Debug for EabSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EabSettings")
            .field("key_id", &self.key_id)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

impl EabSettings {
    /// The raw MAC key.
    pub(crate) fn decoded_key(&self) -> DomainResult<Vec<u8>> {
        let text = self.hmac_key.expose_secret().trim();
        URL_SAFE_NO_PAD
            .decode(text)
            .or_else(|_| URL_SAFE.decode(text))
            .map_err(|_| {
                DomainError::invalid("acme.external_account_binding.hmac_key", "is not base64url")
            })
    }
}

/// The challenge type used to prove control of names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ChallengeKind {
    /// A token served over HTTP on port 80 of each name (see [`crate::http01_router`]).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A TXT record at `_acme-challenge.<name>`.
    #[serde(rename = "dns-01")]
    Dns01,
}

/// The DNS provider that publishes DNS-01 records.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase", deny_unknown_fields)]
pub enum DnsSettings {
    /// Amazon Route 53, through the default AWS credential chain.
    Route53 {
        /// The hosted zone holding the names (`Z...` or `/hostedzone/Z...`).
        hosted_zone_id: String,
        /// Another Route 53 endpoint (tests).
        #[serde(default)]
        endpoint_url: Option<String>,
    },
    /// A command run with `CERTFLOW_ACME_*` variables, once per record and action.
    Exec {
        /// Program to run (no shell).
        command: PathBuf,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Kill it after this long.
        #[serde(default = "default_hook_timeout")]
        timeout_secs: u64,
    },
}

fn default_hook_timeout() -> u64 {
    60
}

/// Waiting for DNS-01 records to reach the CA's resolvers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropagationSettings {
    /// Extra wait after the provider reports the records published.
    #[serde(default)]
    pub delay_secs: u64,
    /// Interval between provider status checks (Route 53 `GetChange`).
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// Give up when the provider has not published the records after this long.
    #[serde(default = "default_propagation_timeout")]
    pub timeout_secs: u64,
}

fn default_poll_interval() -> u64 {
    5
}

fn default_propagation_timeout() -> u64 {
    300
}

impl Default for PropagationSettings {
    fn default() -> Self {
        Self {
            delay_secs: 0,
            poll_interval_secs: default_poll_interval(),
            timeout_secs: default_propagation_timeout(),
        }
    }
}

impl AcmeSettings {
    /// A minimal configuration: HTTP-01 against `directory_url`, defaults elsewhere.
    pub fn new(directory_url: impl Into<String>) -> Self {
        Self {
            directory_url: directory_url.into(),
            contact: Vec::new(),
            external_account_binding: None,
            challenge: ChallengeKind::Http01,
            dns: None,
            propagation: PropagationSettings::default(),
            ca_bundle: None,
            order_timeout_secs: default_order_timeout(),
            request_timeout_secs: default_request_timeout(),
        }
    }

    /// Checks the settings; field names in errors are prefixed with `acme.`.
    pub fn validate(&self) -> DomainResult<()> {
        let mut errors = Vec::new();
        if !self.directory_url.starts_with("https://") {
            errors.push(FieldError::new(
                "acme.directory_url",
                "must be an https:// URL",
            ));
        }
        for (i, c) in self.contact.iter().enumerate() {
            let addr = c.strip_prefix("mailto:").unwrap_or(c);
            if !addr.contains('@') || addr.contains(char::is_whitespace) {
                errors.push(FieldError::new(
                    format!("acme.contact[{i}]"),
                    "must be an email address",
                ));
            }
        }
        if let Some(eab) = &self.external_account_binding {
            if eab.key_id.trim().is_empty() {
                errors.push(FieldError::new(
                    "acme.external_account_binding.key_id",
                    "must not be empty",
                ));
            }
            match eab.decoded_key() {
                Ok(k) if k.is_empty() => errors.push(FieldError::new(
                    "acme.external_account_binding.hmac_key",
                    "must not be empty",
                )),
                Ok(_) => {}
                Err(DomainError::Invalid(mut e)) => errors.append(&mut e),
                Err(_) => {}
            }
        }
        if self.challenge == ChallengeKind::Dns01 && self.dns.is_none() {
            errors.push(FieldError::new(
                "acme.dns",
                "is required when challenge is dns-01",
            ));
        }
        if let Some(DnsSettings::Exec { timeout_secs, .. }) = &self.dns
            && *timeout_secs == 0
        {
            errors.push(FieldError::new(
                "acme.dns.timeout_secs",
                "must be at least 1",
            ));
        }
        if self.order_timeout_secs == 0 {
            errors.push(FieldError::new(
                "acme.order_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.request_timeout_secs == 0 {
            errors.push(FieldError::new(
                "acme.request_timeout_secs",
                "must be at least 1",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(errors))
        }
    }

    /// Contacts as `mailto:` URIs.
    pub(crate) fn contact_uris(&self) -> Vec<String> {
        self.contact
            .iter()
            .map(|c| {
                if c.starts_with("mailto:") {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect()
    }
}
