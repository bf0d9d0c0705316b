//! Bearer tokens on the agent API, on top of mTLS: the seam where OAuth
//! client-credentials tokens (validated elsewhere, e.g. by certflow-auth) plug
//! in. Whoever validates the token, the binding rule is the same and lives in
//! [`check_binding`]: the token's subject must be the agent the client
//! certificate names, and a certificate-bound token (RFC 8705 §3, `cnf` claim
//! with `x5t#S256`) must be bound to the very certificate presented.

use async_trait::async_trait;
use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// What a validated token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The token's `sub`.
    pub subject: String,
    /// `cnf.x5t#S256`: base64url (no padding) SHA-256 of the certificate the
    /// token is bound to, when it is certificate-bound.
    pub x5t_s256: Option<String>,
}

/// Validates bearer tokens presented on the agent API (signature, issuer,
/// audience, expiry): implemented by the OIDC validator when configured.
#[async_trait]
pub trait AgentTokenVerifier: Send + Sync {
    /// The token's claims if it is valid, else why not (never echoing the token).
    async fn verify(&self, token: &str) -> Result<VerifiedToken, String>;
}

/// Why a valid token may not be used with the presented certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// `sub` is not the agent the certificate names.
    #[error("the token's subject is not the agent of the client certificate")]
    SubjectMismatch,
    /// `cnf.x5t#S256` is not the presented certificate's thumbprint.
    #[error("the token is bound to another certificate")]
    ThumbprintMismatch,
}

/// RFC 8705 §3.1 thumbprint of a DER certificate: base64url(SHA-256(DER)), no padding.
pub fn x5t_s256(cert_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, cert_der).as_ref())
}

/// The rule: the token's subject equals the client certificate's agent id,
/// and a certificate-bound token matches the presented certificate.
pub fn check_binding(
    token: &VerifiedToken,
    agent_id: Uuid,
    cert_der: &[u8],
) -> Result<(), BindingError> {
    let subject_ok = Uuid::parse_str(&token.subject).is_ok_and(|s| s == agent_id);
    if !subject_ok {
        return Err(BindingError::SubjectMismatch);
    }
    if let Some(bound) = &token.x5t_s256 {
        let presented = x5t_s256(cert_der);
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

    const CERT: &[u8] = b"not really DER, but any bytes hash";

    fn token(subject: &str, x5t: Option<String>) -> VerifiedToken {
        VerifiedToken {
            subject: subject.into(),
            x5t_s256: x5t,
        }
    }

    #[test]
    fn subject_must_be_the_certificates_agent() {
        let id = Uuid::now_v7();
        assert_eq!(
            check_binding(&token(&id.to_string(), None), id, CERT),
            Ok(())
        );
        // Case and hyphenation of the UUID do not matter; its value does.
        let upper = id.to_string().to_uppercase();
        assert_eq!(check_binding(&token(&upper, None), id, CERT), Ok(()));
        assert_eq!(
            check_binding(&token(&Uuid::now_v7().to_string(), None), id, CERT),
            Err(BindingError::SubjectMismatch)
        );
        assert_eq!(
            check_binding(&token("service-account", None), id, CERT),
            Err(BindingError::SubjectMismatch)
        );
    }

    #[test]
    fn bound_tokens_must_match_the_presented_certificate() {
        let id = Uuid::now_v7();
        let good = x5t_s256(CERT);
        assert_eq!(good.len(), 43, "{good}");
        assert!(!good.contains(['+', '/', '=']));
        assert_eq!(
            check_binding(&token(&id.to_string(), Some(good.clone())), id, CERT),
            Ok(())
        );
        // A padded thumbprint from a lenient issuer is the same value.
        assert_eq!(
            check_binding(&token(&id.to_string(), Some(format!("{good}="))), id, CERT),
            Ok(())
        );
        assert_eq!(
            check_binding(
                &token(&id.to_string(), Some(x5t_s256(b"another certificate"))),
                id,
                CERT
            ),
            Err(BindingError::ThumbprintMismatch)
        );
        // The subject is checked first: a stolen bound token names its own agent.
        assert_eq!(
            check_binding(&token("someone", Some(good)), id, CERT),
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
