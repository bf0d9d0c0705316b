//! Agent identity certificates: short-lived clientAuth leaves whose only SAN
//! is a URI naming the agent (`urn:certflow:agent:<id>`), CN the agent's name.
//! Issued by the dedicated agent-identity CA, never by a certificate issuer.

use certflow_core::{DomainError, DomainResult, KeyType};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use crate::asn1::{self, internal, whole_seconds};
use crate::inspect::key_matches_cert;
use crate::keys::PrivateKey;
use crate::signer::{CaPublicKey, Deferred, ToBeSigned, sign_locally};

/// Backdating of notBefore, for relying parties whose clocks run behind.
const CLOCK_SKEW: Duration = Duration::seconds(60);

/// Longest lifetime of an identity certificate (7 days): identities are
/// renewed often so that a disabled agent's certificate soon dies anyway.
pub const MAX_AGENT_IDENTITY_SECS: u32 = 7 * 86_400;

/// What an agent identity certificate is built from.
#[derive(Debug, Clone)]
pub struct AgentIdentityRequest<'a> {
    /// The URI SAN, e.g. `urn:certflow:agent:<uuid>`.
    pub uri: &'a str,
    /// The subject commonName (the agent's name, at most 64 characters).
    pub common_name: &'a str,
    /// The agent key's SubjectPublicKeyInfo DER (from its verified CSR).
    pub spki_der: &'a [u8],
    /// Its type, which must match `spki_der`.
    pub key_type: KeyType,
    /// Lifetime in seconds (60 to [`MAX_AGENT_IDENTITY_SECS`]); capped at the CA's notAfter.
    pub validity_secs: u32,
    /// Issue time.
    pub now: OffsetDateTime,
}

/// Issues an agent identity certificate under the agent-identity CA; returns its DER.
pub fn issue_agent_identity(
    ca_cert_der: &[u8],
    ca_key: &PrivateKey,
    req: &AgentIdentityRequest<'_>,
) -> DomainResult<Vec<u8>> {
    let tbs = agent_identity_tbs(ca_cert_der, req)?;
    if !key_matches_cert(ca_key, ca_cert_der) {
        return Err(DomainError::Internal(
            "the agent CA certificate is not a CA or does not match its key".into(),
        ));
    }
    sign_locally(ca_key, tbs)
}

/// What the agent-identity CA's key signs for `req`, wherever the key lives.
pub fn agent_identity_tbs(
    ca_cert_der: &[u8],
    req: &AgentIdentityRequest<'_>,
) -> DomainResult<ToBeSigned> {
    let mut errors = Vec::new();
    if !(60..=MAX_AGENT_IDENTITY_SECS).contains(&req.validity_secs) {
        errors.push(certflow_core::FieldError::new(
            "validity_seconds",
            format!("must be between 60 and {MAX_AGENT_IDENTITY_SECS} seconds"),
        ));
    }
    let cn = req.common_name.trim();
    if cn.is_empty() || cn.chars().count() > 64 || cn.chars().any(char::is_control) {
        errors.push(certflow_core::FieldError::new(
            "name",
            "must be 1-64 printable characters",
        ));
    }
    let uri = match req.uri.try_into() {
        Ok(ia5) => Some(ia5),
        Err(_) => {
            errors.push(certflow_core::FieldError::new("uri", "not an ASCII URI"));
            None
        }
    };
    let subject_key = crate::issue::subject_key(&mut errors, req.spki_der, req.key_type, "csr");
    let (Some(subject_key), Some(uri), true) = (subject_key, uri, errors.is_empty()) else {
        return Err(DomainError::Invalid(errors));
    };

    let ca = asn1::parse_cert("issuer", ca_cert_der)
        .map_err(|_| DomainError::Internal("the agent CA certificate does not parse".into()))?;
    if !ca.is_ca() {
        return Err(DomainError::Internal(
            "the agent CA certificate is not a CA".into(),
        ));
    }
    let now = whole_seconds(req.now)?;
    let ca_not_after = ca.validity().not_after.to_datetime();
    if ca_not_after <= now {
        return Err(DomainError::Conflict(format!(
            "the agent-identity CA expired at {ca_not_after}"
        )));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.serial_number = Some(asn1::random_serial()?);
    params.not_before = now - CLOCK_SKEW;
    params.not_after = (now + Duration::seconds(i64::from(req.validity_secs))).min(ca_not_after);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = asn1::key_identifier(&subject_key.key);
    let ca_public = CaPublicKey::of_certificate(ca_cert_der)?;
    let deferred = Deferred(&ca_public);
    let issuer = Issuer::from_ca_cert_der(&ca_cert_der.into(), &deferred)
        .map_err(internal("agent CA certificate as issuer"))?;
    let placeholder = params
        .signed_by(&subject_key, &issuer)
        .map_err(internal("agent identity certificate"))?;
    ToBeSigned::from_placeholder(placeholder.der(), &ca_public)
}

/// The uniformResourceIdentifier SANs of a DER certificate, in order.
pub fn uri_names(der: &[u8]) -> DomainResult<Vec<String>> {
    let cert = asn1::parse_cert("certificate", der)?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let GeneralName::URI(u) = gn {
                out.push((*u).to_owned());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testutil::{ca, key, now};
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;

    #[test]
    fn identity_has_uri_san_client_auth_and_the_requested_lifetime() {
        let m = ca(KeyType::EcdsaP256);
        let leaf = key(KeyType::EcdsaP256);
        let spki = leaf.public_key_der();
        let t = now().replace_nanosecond(0).unwrap();
        let der = issue_agent_identity(
            &m.issuing_cert_der,
            &m.issuing_key,
            &AgentIdentityRequest {
                uri: "urn:certflow:agent:0190f0c2-0000-7000-8000-000000000001",
                common_name: "web-01",
                spki_der: &spki,
                key_type: KeyType::EcdsaP256,
                validity_secs: 86_400,
                now: t,
            },
        )
        .unwrap();
        assert_eq!(
            uri_names(&der).unwrap(),
            vec!["urn:certflow:agent:0190f0c2-0000-7000-8000-000000000001"]
        );
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "web-01"
        );
        let eku = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::ExtendedKeyUsage(k) => Some(k.clone()),
                _ => None,
            })
            .unwrap();
        assert!(eku.client_auth && !eku.server_auth);
        let life = cert.validity().not_after.to_datetime() - t;
        assert_eq!(life, Duration::seconds(86_400));
        assert!(!cert.is_ca());
    }

    #[test]
    fn bad_lifetime_name_and_key_are_reported_together() {
        let m = ca(KeyType::EcdsaP256);
        let err = issue_agent_identity(
            &m.issuing_cert_der,
            &m.issuing_key,
            &AgentIdentityRequest {
                uri: "urn:certflow:agent:x",
                common_name: "",
                spki_der: b"junk",
                key_type: KeyType::EcdsaP256,
                validity_secs: 10,
                now: now(),
            },
        )
        .unwrap_err();
        let DomainError::Invalid(fields) = err else {
            panic!("{err}")
        };
        let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["validity_seconds", "name", "csr"]);
    }
}
