//! Why a token was refused. Messages are for logs and the audit trail: they
//! never contain the token, and attacker-chosen header values are reduced to
//! short, printable excerpts.

/// A rejected token (or an issuer that could not be consulted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Not a compact JWS (three base64url parts with JSON header and payload).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg: none`: an unsigned token.
    #[error("unsigned token (alg none)")]
    Unsigned,
    /// The `alg` is not in the issuer's allow-list (HMAC never is).
    #[error("algorithm {alg} not allowed")]
    AlgorithmNotAllowed {
        /// The header's `alg` (sanitised).
        alg: String,
    },
    /// A header that would let the token choose its own key (`jku`, `jwk`, `x5u`, `x5c`).
    #[error("header {0} is not accepted: keys come from the issuer's JWKS only")]
    ForbiddenHeader(&'static str),
    /// A `crit` header: no extension is understood.
    #[error("critical header extensions are not supported")]
    CriticalHeader,
    /// A `typ` other than `at+jwt` / `JWT` (or `JWT` only for ID tokens).
    #[error("token type {typ} not accepted here")]
    WrongType {
        /// The header's `typ` (sanitised).
        typ: String,
    },
    /// `iss` missing or not a configured issuer.
    #[error("issuer not trusted")]
    UnknownIssuer,
    /// No key with the token's `kid` in the issuer's JWKS, even after a refresh.
    #[error("no key {kid} in the issuer's JWKS")]
    UnknownKey {
        /// The header's `kid` (sanitised), `-` when absent.
        kid: String,
    },
    /// The JWKS key does not fit the token's algorithm (type, curve, `alg`, `use`).
    #[error("key {kid} cannot verify {alg}")]
    KeyMismatch {
        /// The key id.
        kid: String,
        /// The token's algorithm.
        alg: &'static str,
    },
    /// The signature is not a well-formed value for the algorithm (e.g. ECDSA r or s zero).
    #[error("signature encoding invalid for {0}")]
    SignatureEncoding(&'static str),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A required claim is absent or of the wrong type.
    #[error("claim {0} missing or invalid")]
    MissingClaim(&'static str),
    /// `exp` (plus leeway) is in the past.
    #[error("token expired {seconds_ago} s ago")]
    Expired {
        /// Seconds since `exp`.
        seconds_ago: i64,
    },
    /// `nbf` (minus leeway) is in the future.
    #[error("token not valid before {seconds_ahead} s from now")]
    NotYetValid {
        /// Seconds until `nbf`.
        seconds_ahead: i64,
    },
    /// `iat` (minus leeway) is in the future.
    #[error("token issued {seconds_ahead} s in the future")]
    IssuedInFuture {
        /// Seconds until `iat`.
        seconds_ahead: i64,
    },
    /// `aud` does not contain the expected audience.
    #[error("audience not accepted")]
    WrongAudience,
    /// The token's client id is not one of the issuer's `client_ids`.
    #[error("client not accepted")]
    ClientNotAllowed,
    /// Cognito `token_use` is not the one this use needs.
    #[error("token_use {found} where {expected} is required")]
    WrongTokenUse {
        /// What was needed.
        expected: &'static str,
        /// What the token says (sanitised).
        found: String,
    },
    /// ID token `nonce` absent or different from the login's.
    #[error("nonce does not match")]
    NonceMismatch,
    /// ID token with several audiences whose `azp` is not the client.
    #[error("authorized party does not match")]
    AuthorizedPartyMismatch,
    /// The issuer's JWKS or discovery document could not be fetched or parsed.
    #[error("issuer metadata unavailable: {0}")]
    IssuerUnavailable(String),
}

impl AuthError {
    /// A stable machine-readable reason, for audit records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Unsigned => "unsigned",
            Self::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Self::ForbiddenHeader(_) => "forbidden_header",
            Self::CriticalHeader => "critical_header",
            Self::WrongType { .. } => "wrong_type",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKey { .. } => "unknown_key",
            Self::KeyMismatch { .. } => "key_mismatch",
            Self::SignatureEncoding(_) => "signature_encoding",
            Self::BadSignature => "bad_signature",
            Self::MissingClaim(_) => "missing_claim",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::IssuedInFuture { .. } => "issued_in_future",
            Self::WrongAudience => "wrong_audience",
            Self::ClientNotAllowed => "client_not_allowed",
            Self::WrongTokenUse { .. } => "wrong_token_use",
            Self::NonceMismatch => "nonce_mismatch",
            Self::AuthorizedPartyMismatch => "authorized_party_mismatch",
            Self::IssuerUnavailable(_) => "issuer_unavailable",
        }
    }

    /// Whether the failure is the issuer's (retry later, 503) rather than the token's (401).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::IssuerUnavailable(_))
    }
}

/// An invalid [`crate::IssuerConfig`] set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid issuer configuration: {0}")]
pub struct ConfigError(pub String);

/// At most 40 printable ASCII characters of an attacker-controlled string.
pub(crate) fn sanitise(value: &str) -> String {
    let mut out: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(40)
        .collect();
    if value.len() > out.len() {
        out.push('…');
    }
    out
}
