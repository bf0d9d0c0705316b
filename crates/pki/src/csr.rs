//! PKCS#10 certificate signing requests (RFC 2986). A CSR contributes its
//! public key, after its self-signature proves possession of the private key,
//! and the names it asks for. Requested extensions are never copied: the
//! profile decides them (CA/B BR §7.1.2.7).

use certflow_core::{DomainError, DomainResult, KeyType};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::asn1::{self, OID_EC_PUBLIC_KEY};

/// Largest CSR accepted, PEM or DER: a 4096-bit RSA request with 100 names fits.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// What certflow takes from a verified CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInfo {
    /// The request itself, DER (passed on to CAs that want a CSR, such as ACME).
    pub der: Vec<u8>,
    /// The SubjectPublicKeyInfo DER, exactly as in the request.
    pub spki_der: Vec<u8>,
    /// The key's algorithm and size.
    pub key_type: KeyType,
    /// dNSName and iPAddress subject alternative names, as text, in request order.
    pub names: Vec<String>,
    /// The subject's first commonName, if any.
    pub common_name: Option<String>,
}

/// Parses and checks a CSR (PEM or DER, at most 16 KiB): well-formed, no
/// trailing data, a supported key, and a self-signature that verifies.
pub fn parse_csr(field: &str, input: &[u8]) -> DomainResult<CsrInfo> {
    let bad = |reason: String| DomainError::invalid(field, reason);
    if input.len() > MAX_CSR_BYTES {
        return Err(bad(format!(
            "is {} bytes; at most {MAX_CSR_BYTES} are accepted",
            input.len()
        )));
    }
    let der = csr_der(input).map_err(bad)?;
    // Strict first: the request's bytes are kept and passed on, so they must
    // be DER, which x509-parser below does not insist on.
    crate::der_strict::check_csr(&der).map_err(bad)?;
    let csr = match X509CertificationRequest::from_der(&der) {
        Ok(([], csr)) => csr,
        Ok(_) => {
            return Err(bad(
                "trailing data after the DER certificate signing request".into(),
            ));
        }
        Err(e) => {
            return Err(bad(format!(
                "not a valid DER certificate signing request ({e})"
            )));
        }
    };
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(bad(format!(
            "unsupported CSR version {}",
            info.version.0 + 1
        )));
    }
    let key_type = asn1::classify_spki(&info.subject_pki).map_err(bad)?;
    check_signature_algorithm(&csr).map_err(bad)?;
    csr.verify_signature().map_err(|_| {
        bad(
            "signature does not verify: the request was altered or not signed by its own key"
                .into(),
        )
    })?;

    let mut names = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for gn in &san.general_names {
                    match gn {
                        GeneralName::DNSName(d) => names.push((*d).to_owned()),
                        GeneralName::IPAddress(octets) => names.push(ip_text(octets).map_err(bad)?),
                        _ => {}
                    }
                }
            }
        }
    }
    let common_name = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(CsrInfo {
        der: der.clone(),
        spki_der: info.subject_pki.raw.to_vec(),
        key_type,
        names,
        common_name,
    })
}

/// The DER of a PEM or DER CSR.
fn csr_der(input: &[u8]) -> Result<Vec<u8>, String> {
    let trimmed = input.trim_ascii_start();
    if trimmed.is_empty() {
        return Err("is empty".into());
    }
    if trimmed.first() == Some(&0x30) {
        return Ok(trimmed.to_vec());
    }
    if !trimmed.starts_with(b"-----BEGIN ") {
        return Err("is neither PEM (-----BEGIN CERTIFICATE REQUEST-----) nor DER".into());
    }
    let blocks = pem::parse_many(trimmed).map_err(|e| format!("malformed PEM ({e})"))?;
    let other = blocks.first().map(|b| b.tag().to_owned());
    let mut csrs = blocks
        .into_iter()
        .filter(|b| matches!(b.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"));
    match (csrs.next(), csrs.next(), other) {
        (Some(one), None, _) => Ok(one.into_contents()),
        (Some(_), Some(_), _) => {
            Err("contains more than one certificate request; send exactly one".into())
        }
        (None, _, Some(tag)) => Err(format!(
            "expected a CERTIFICATE REQUEST PEM block, found {tag}"
        )),
        (None, _, None) => {
            Err("malformed PEM: no complete -----BEGIN/END CERTIFICATE REQUEST----- block".into())
        }
    }
}

/// Signature algorithms accepted for the proof of possession.
fn check_signature_algorithm(csr: &X509CertificationRequest<'_>) -> Result<(), String> {
    let oid = csr.signature_algorithm.algorithm.to_id_string();
    let key_alg = csr
        .certification_request_info
        .subject_pki
        .algorithm
        .algorithm
        .to_id_string();
    match oid.as_str() {
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" | "1.2.840.10045.4.1" => Err(
            "signed with SHA-1, which is no longer accepted; sign with SHA-256 or stronger".into(),
        ),
        // sha256/384/512WithRSAEncryption and RSASSA-PSS over an RSA key.
        "1.2.840.113549.1.1.11"
        | "1.2.840.113549.1.1.12"
        | "1.2.840.113549.1.1.13"
        | "1.2.840.113549.1.1.10"
            if key_alg == asn1::OID_RSA_ENCRYPTION =>
        {
            Ok(())
        }
        "1.2.840.10045.4.3.2" | "1.2.840.10045.4.3.3" if key_alg == OID_EC_PUBLIC_KEY => Ok(()),
        asn1::OID_ED25519 if key_alg == asn1::OID_ED25519 => Ok(()),
        other => Err(format!(
            "signature algorithm {other} is not supported for this key"
        )),
    }
}

pub(crate) fn ip_text(octets: &[u8]) -> Result<String, String> {
    if let Ok(v4) = <[u8; 4]>::try_from(octets) {
        Ok(std::net::Ipv4Addr::from(v4).to_string())
    } else if let Ok(v6) = <[u8; 16]>::try_from(octets) {
        Ok(std::net::Ipv6Addr::from(v6).to_string())
    } else {
        Err(format!(
            "subjectAltName iPAddress of {} octets is malformed",
            octets.len()
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testutil::{fixture, key};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose};

    fn reason(field: &str, input: &[u8]) -> String {
        match parse_csr(field, input) {
            Err(DomainError::Invalid(errs)) => {
                assert_eq!(errs.len(), 1);
                assert_eq!(errs[0].field, field);
                errs[0].reason.clone()
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn accepts_openssl_fixtures() {
        let cases = [
            ("p256.csr", KeyType::EcdsaP256),
            ("p384.csr", KeyType::EcdsaP384),
            ("rsa2048.csr", KeyType::Rsa2048),
            ("ed25519.csr", KeyType::Ed25519),
            ("ca-true.csr", KeyType::EcdsaP256),
        ];
        for (file, kt) in cases {
            let pem_bytes = fixture(file);
            let info = parse_csr("csr", &pem_bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(info.key_type, kt, "{file}");
            let stem = file.trim_end_matches(".csr");
            assert_eq!(
                info.names,
                vec![
                    format!("{stem}.example.com"),
                    format!("www.{stem}.example.com"),
                    "192.0.2.10".to_owned()
                ],
                "{file}"
            );
            assert_eq!(
                info.common_name.as_deref(),
                Some(format!("{stem}.example.com").as_str())
            );
            // The same request as DER parses to the same thing.
            let der = pem::parse(&pem_bytes).unwrap().into_contents();
            assert_eq!(parse_csr("csr", &der).unwrap(), info);
        }
    }

    #[test]
    fn rejects_bad_fixtures_with_reason() {
        let cases = [
            ("rsa1024.csr", "1024 bits is too small"),
            ("rsa-e3.csr", "exponent 3 is not allowed"),
            ("secp256k1.csr", "curve secp256k1 is not supported"),
            ("p521.csr", "curve P-521 is not supported"),
            ("dsa.csr", "DSA keys are not supported"),
            ("ed448.csr", "Ed448 keys are not supported"),
            ("sha1.csr", "SHA-1"),
            ("bad-signature.csr", "signature does not verify"),
            ("garbage.pem", "not DER"),
            ("truncated.csr", "malformed PEM"),
        ];
        for (file, needle) in cases {
            let r = reason("csr", &fixture(file));
            assert!(r.contains(needle), "{file}: {r}");
        }
    }

    #[test]
    fn rejects_structural_problems() {
        let good = fixture("p256.csr");
        let der = pem::parse(&good).unwrap().into_contents();

        let mut trailing = der.clone();
        trailing.extend_from_slice(&[0x00, 0x01]);
        assert!(reason("csr", &trailing).contains("2 trailing bytes"));

        let oversize = vec![b'A'; MAX_CSR_BYTES + 1];
        assert!(reason("csr", &oversize).contains("at most 16384"));

        assert!(reason("csr", b"").contains("empty"));
        assert!(reason("csr", b"hello").contains("neither PEM"));
        assert!(reason("csr", &der[..der.len() / 2]).contains("not DER"));

        let cert_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(reason("csr", cert_pem.as_bytes()).contains("found CERTIFICATE"));

        let two = [good.clone(), good.clone()].concat();
        assert!(reason("csr", &two).contains("more than one"));

        let field = reason("request.csr", b"x");
        assert!(!field.is_empty());
    }

    #[test]
    fn accepts_rcgen_requests_for_every_key_type_and_ignores_requested_extensions() {
        for kt in KeyType::ALL {
            let k = key(kt);
            let kp = k.signing_key_pair();
            let mut params =
                CertificateParams::new(vec!["a.example.com".to_owned(), "2001:db8::1".to_owned()])
                    .unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let csr = params.serialize_request(kp.get()).unwrap();
            let info = parse_csr("csr", csr.der()).unwrap();
            assert_eq!(info.key_type, kt);
            assert_eq!(info.spki_der, k.public_key_der());
            assert_eq!(
                info.names,
                vec!["a.example.com".to_owned(), "2001:db8::1".to_owned()]
            );
        }
    }
}

/// A CSR for `names` signed by `key`: what certflow sends a CA that wants a
/// request (ACME) when it holds the key itself.
pub fn build_csr(
    key: &crate::PrivateKey,
    names: &[certflow_core::SubjectName],
) -> DomainResult<Vec<u8>> {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(crate::issue::san)
        .collect::<DomainResult<_>>()?;
    if let Some(cn) = crate::issue::common_name(names) {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    let kp = key.signing_key_pair();
    let csr = params
        .serialize_request(kp.get())
        .map_err(|e| DomainError::Internal(format!("building a CSR: {e}")))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod build_tests {
    #![allow(clippy::unwrap_used)]
    use certflow_core::{KeyType, validate_names};

    #[test]
    fn built_csr_parses_verifies_and_names_the_key() {
        let key = crate::PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let names = validate_names("names", &["a.example.com".into(), "10.0.0.1".into()]).unwrap();
        let der = super::build_csr(&key, &names).unwrap();
        let info = super::parse_csr("csr", &der).unwrap();
        assert_eq!(info.spki_der, key.public_key_der());
        assert_eq!(info.names, vec!["a.example.com", "10.0.0.1"]);
        assert_eq!(info.common_name.as_deref(), Some("a.example.com"));
        assert_eq!(info.der, der);
    }
}
