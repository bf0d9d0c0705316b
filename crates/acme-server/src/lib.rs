//! The protocol half of certflow's ACME server (RFC 8555, RFC 8737 for
//! tls-alpn-01, RFC 8738 for IP identifiers): what a request must look like
//! and what a challenge must prove, independent of storage and HTTP framing.
//!
//! Why a crate of our own: there is no well-kept ACME *server* crate for
//! Rust. The ACME crates (instant-acme, acme-lib, acme2...) are clients;
//! the general JOSE crates (jsonwebtoken, josekit...) verify compact JWTs
//! and neither enforce RFC 8555 §6.2's rules (flattened JSON only, exactly
//! one of `jwk`/`kid`, `url`, `nonce`) nor give RFC 7638 thumbprints and
//! the EAB inner JWS. So the parsing is written here, strictly, as small
//! pure functions ([`parse_jws`], [`parse_protected_header`], [`parse_eab`],
//! [`Jwk::from_json`]) that a fuzz target can call, and signatures are
//! verified with aws-lc-rs, the workspace's one crypto provider.
//!
//! The use cases (accounts, orders, authorizations, issuance) live in
//! certflow-services; the HTTP surface in certflow-server's `acme_api`.

mod der;
pub mod eab;
pub mod jwk;
pub mod jws;
pub mod keyauth;
pub mod problem;
pub mod validate;

pub use eab::{EabRequest, parse_eab};
pub use jwk::Jwk;
pub use jws::{Jws, KeyRef, ProtectedHeader, check_header, parse_jws, parse_protected_header};
pub use keyauth::{dns01_txt_value, key_authorization, tls_alpn01_digest};
pub use problem::{Problem, ProblemType, Subproblem};
pub use validate::{
    ChallengeType, ChallengeValidators, Target, ValidationFailure, ValidatorSettings,
};

/// The DER SubjectPublicKeyInfo of a DER certificate (`malformed` if it is
/// not one): revocation by certificate key compares it with the JWS key.
pub fn certificate_spki(der: &[u8]) -> Result<Vec<u8>, Problem> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| Problem::malformed("\"certificate\" is not a DER X.509 certificate"))?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}
