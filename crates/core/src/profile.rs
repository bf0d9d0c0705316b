//! Certificate profiles: what an issued certificate may be used for and how
//! long it may live. The profile, never the CSR, decides the extensions.

use serde::{Deserialize, Serialize};

/// A certificate profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// TLS server (serverAuth), compatible with the CA/Browser Forum baseline requirements.
    TlsServer,
    /// TLS client (clientAuth), e.g. for mTLS.
    TlsClient,
}

impl Profile {
    /// All profiles.
    pub const ALL: [Profile; 2] = [Profile::TlsServer, Profile::TlsClient];

    /// Stable identifier used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::TlsServer => "tls-server",
            Profile::TlsClient => "tls-client",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Validity used when the request does not say.
    pub fn default_validity_days(self) -> u32 {
        90
    }

    /// The longest validity the profile allows. TLS server follows the CA/B Forum
    /// limit in force since 2026-03-15 (200 days), with a day of margin for clock skew.
    pub fn max_validity_days(self) -> u32 {
        match self {
            Profile::TlsServer => 199,
            Profile::TlsClient => 397,
        }
    }
}
