//! X.509 for certflow: private keys, CSR checks (RFC 2986), CA creation and
//! import, profile-driven leaf issuance (RFC 5280 §4, CA/B Forum Baseline
//! Requirements §7.1), CRLs (RFC 5280 §5), OCSP responses (RFC 6960) and PKCS#12 export (RFC 7292).
//!
//! One crypto stack: aws-lc-rs, directly and through rcgen and x509-parser.
//! Every fallible function returns [`certflow_core::DomainResult`]; input the
//! caller can fix is `DomainError::Invalid` naming the field, and no error or
//! log line ever carries key material.

mod agent;
mod asn1;
mod ca;
mod crl;
mod csr;
mod der_strict;
mod inspect;
mod issue;
mod keys;
mod lint;
mod ocsp;
mod pkcs12;
mod pkcs12_read;
mod signer;

pub use agent::{
    AgentIdentityRequest, MAX_AGENT_IDENTITY_SECS, agent_identity_tbs, issue_agent_identity,
    uri_names,
};
pub use ca::{CaMaterial, create_ca, import_ca, issuing_ca_tbs, root_ca_tbs};
pub use crl::{CrlInfo, RevokedEntry, build_crl, crl_info, crl_tbs};
pub use csr::{CsrInfo, MAX_CSR_BYTES, build_csr, parse_csr};
pub use inspect::{
    CertInfo, cert_to_pem, check_der_certificate, inspect, is_signed_by, key_matches_cert,
    parse_pem_certs, public_key_of,
};
pub use issue::{IssuerUrls, LeafRequest, issue_leaf, issue_leaf_linted, prepare_leaf};
pub use keys::PrivateKey;
pub use lint::{LintContext, LintFinding, LintRefusal, lint_leaf};
pub use ocsp::{
    MAX_OCSP_CERTS, OcspAnswer, OcspCertId, OcspCertStatus, OcspHash, OcspIssuer, OcspRequest,
    OcspResponseStatus, OcspSigner, PendingOcspSigner, ocsp_error_response, parse_ocsp_request,
};
pub use pkcs12::pkcs12;
pub use pkcs12_read::{PKCS12_LIMITS, Pkcs12Limits, read_pkcs12, read_pkcs12_within};
pub use signer::{CaPublicKey, DigestAlgorithm, ToBeSigned, ecdsa_raw_to_der, sign_locally};

#[cfg(test)]
mod testutil;
