//! Bearer tokens on the agent API, on top of mTLS: OIDC client-credentials
//! access tokens validated by certflow-auth ([`OidcAgentTokens`]), behind the
//! [`AgentTokenVerifier`] seam. Whoever validates the token, the binding rule
//! is the same and lives in [`check_binding`]: the token's subject must be the
//! one the agent enrolled with, and a certificate-bound token (RFC 8705 §3,
//! `cnf` claim with `x5t#S256`) must be bound to the very certificate presented.

use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certflow_auth::TokenValidator;
use certflow_core::agents::token_subject;
use serde_json::Value;

/// What a validated token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The issuer-qualified subject, `<iss>|<sub>` ([`token_subject`]).
    pub subject: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// The client's teams from `service_roles`, if any are configured.
    pub teams: Option<Vec<String>>,
    /// `cnf.x5t#S256`: base64url (no padding) SHA-256 of the certificate the
    /// token is bound to, when it is certificate-bound.
    pub x5t_s256: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not valid here (never echoing the token).
    #[error("{0}")]
    Invalid(String),
    /// The issuer's keys could not be fetched: try again later.
    #[error("token issuer unavailable: {0}")]
    Unavailable(String),
}

/// Validates bearer tokens presented on the agent API (signature, issuer,
/// audience, expiry, and that it is a client-credentials token).
#[async_trait]
pub trait AgentTokenVerifier: Send + Sync {
    /// The token's claims if it is valid, else why not.
    async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError>;
}

/// [`AgentTokenVerifier`] over the configured `[[auth.issuers]]`: only
/// client-credentials (service) access tokens are accepted, and the client's
/// teams come from the issuer's `service_roles`.
pub struct OidcAgentTokens(pub Arc<TokenValidator>);

#[async_trait]
impl AgentTokenVerifier for OidcAgentTokens {
    async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        // Shared with the validator's cache of verified tokens: a token-carrying
        // poll costs a hash and a look-up, not a signature verification.
        let claims = self
            .0
            .validate_access_token_shared(token)
            .await
            .map_err(|e| {
                if e.is_unavailable() {
                    TokenError::Unavailable(e.to_string())
                } else {
                    TokenError::Invalid(e.to_string())
                }
            })?;
        // A person's token (authorization code flow) is not an agent's credential.
        if !claims.is_service() {
            return Err(TokenError::Invalid(
                "not a client-credentials token (it has a user subject)".into(),
            ));
        }
        let client_id = claims.client_id.clone().unwrap_or_default();
        let sub = claims.subject.clone().unwrap_or_else(|| client_id.clone());
        let teams = self
            .0
            .issuer_config(&claims.issuer)
            .and_then(|c| c.service_roles.get(&client_id))
            .map(|s| s.teams.clone())
            .filter(|t| !t.is_empty());
        let x5t_s256 = match claims.raw.get("cnf") {
            None => None,
            Some(cnf) => Some(
                cnf.get("x5t#S256")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    // Bound to something we cannot check (e.g. a DPoP key): refused.
                    .ok_or_else(|| {
                        TokenError::Invalid("cnf claim without a string x5t#S256".into())
                    })?,
            ),
        };
        Ok(VerifiedToken {
            subject: token_subject(&claims.issuer, &sub),
            client_id,
            teams,
            x5t_s256,
        })
    }
}

/// Why a valid token may not be used with the presented certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The token's subject is not the one the certificate's agent enrolled with.
    #[error("the token's subject is not the agent of the client certificate")]
    SubjectMismatch,
    /// `cnf.x5t#S256` is not the presented certificate's thumbprint.
    #[error("the token is bound to another certificate")]
    ThumbprintMismatch,
}

/// SHA-256 of a DER certificate: what its RFC 8705 §3.1 thumbprint
/// (`x5t#S256`, base64url without padding) encodes.
pub fn cert_sha256(cert_der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, cert_der).as_ref());
    out
}

/// The rule: the token's subject equals the subject recorded for the client
/// certificate's agent at enrolment, and a certificate-bound token matches
/// the presented certificate.
pub fn check_binding(
    token: &VerifiedToken,
    agent_subject: &str,
    cert_sha256: &[u8; 32],
) -> Result<(), BindingError> {
    // Subjects are identifiers, not secrets: a plain comparison leaks nothing.
    if token.subject != agent_subject {
        return Err(BindingError::SubjectMismatch);
    }
    if let Some(bound) = &token.x5t_s256 {
        let presented = URL_SAFE_NO_PAD.encode(cert_sha256);
        // Thumbprints are public, so a plain comparison leaks nothing.
        if bound.trim_end_matches('=') != presented {
            return Err(BindingError::ThumbprintMismatch);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 8705 §3.1 thumbprint of a DER certificate: base64url(SHA-256(DER)), no padding.
    fn x5t_s256(cert_der: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, cert_der).as_ref())
    }

    const CERT: &[u8] = b"not really DER, but any bytes hash";
    const ISS: &str = "https://idp.example.com";

    fn token(subject: &str, x5t: Option<String>) -> VerifiedToken {
        VerifiedToken {
            subject: subject.into(),
            client_id: "agent-1".into(),
            teams: None,
            x5t_s256: x5t,
        }
    }

    #[test]
    fn subject_must_be_the_one_the_agent_enrolled_with() {
        let recorded = token_subject(ISS, "agent-1");
        assert_eq!(
            check_binding(&token(&recorded, None), &recorded, &cert_sha256(CERT)),
            Ok(())
        );
        // Another client of the same issuer.
        assert_eq!(
            check_binding(
                &token(&token_subject(ISS, "agent-2"), None),
                &recorded,
                &cert_sha256(CERT)
            ),
            Err(BindingError::SubjectMismatch)
        );
        // The same `sub` from another issuer is someone else.
        assert_eq!(
            check_binding(
                &token(&token_subject("https://other.example.com", "agent-1"), None),
                &recorded,
                &cert_sha256(CERT)
            ),
            Err(BindingError::SubjectMismatch)
        );
        // Exact: no case folding, no prefix match.
        assert_eq!(
            check_binding(
                &token(&recorded.to_uppercase(), None),
                &recorded,
                &cert_sha256(CERT)
            ),
            Err(BindingError::SubjectMismatch)
        );
        assert_eq!(
            check_binding(
                &token(&format!("{recorded}x"), None),
                &recorded,
                &cert_sha256(CERT)
            ),
            Err(BindingError::SubjectMismatch)
        );
    }

    #[test]
    fn bound_tokens_must_match_the_presented_certificate() {
        let recorded = token_subject(ISS, "agent-1");
        let good = x5t_s256(CERT);
        assert_eq!(good.len(), 43, "{good}");
        assert!(!good.contains(['+', '/', '=']));
        assert_eq!(
            check_binding(
                &token(&recorded, Some(good.clone())),
                &recorded,
                &cert_sha256(CERT)
            ),
            Ok(())
        );
        // A padded thumbprint from a lenient issuer is the same value.
        assert_eq!(
            check_binding(
                &token(&recorded, Some(format!("{good}="))),
                &recorded,
                &cert_sha256(CERT)
            ),
            Ok(())
        );
        assert_eq!(
            check_binding(
                &token(&recorded, Some(x5t_s256(b"another certificate"))),
                &recorded,
                &cert_sha256(CERT)
            ),
            Err(BindingError::ThumbprintMismatch)
        );
        // The subject is checked first: a stolen bound token names its own agent.
        assert_eq!(
            check_binding(
                &token(&token_subject(ISS, "someone"), Some(good)),
                &recorded,
                &cert_sha256(CERT)
            ),
            Err(BindingError::SubjectMismatch)
        );
    }

    #[test]
    fn thumbprint_is_sha256_base64url_of_the_der() {
        // SHA-256("abc") = ba7816bf...; base64url of it, no padding.
        assert_eq!(
            x5t_s256(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }
}
