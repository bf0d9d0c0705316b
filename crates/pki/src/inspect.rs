//! Reading certificates back: the facts certflow records about an issued or
//! imported certificate (RFC 5280 §4.1), PEM in and out (RFC 7468 §5), and
//! whether a private key belongs to a certificate.

use std::net::IpAddr;

use certflow_core::{DomainError, DomainResult, KeyType, SubjectName};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::asn1::{self, parse_cert};
use crate::keys::PrivateKey;

/// What certflow records about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lower-case hex without leading zero octets.
    pub serial_hex: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint_sha256: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Subject DN as text (RFC 4514 style, e.g. `CN=www.example.com`),
    /// control and invisible characters escaped (see [`escape_dn_text`]).
    pub subject: String,
    /// Issuer DN as text, escaped the same way.
    pub issuer: String,
    /// dNSName and iPAddress SANs, in certificate order.
    pub names: Vec<SubjectName>,
    /// The subject key type, when it is one certflow supports.
    pub key_type: Option<KeyType>,
    /// Whether basicConstraints says cA=TRUE.
    pub is_ca: bool,
    /// The subject's public key, as its SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
}

/// Parses a DER certificate and extracts what certflow records about it.
pub fn inspect(der: &[u8]) -> DomainResult<CertInfo> {
    let cert = parse_cert("certificate", der)?;
    let serial = asn1::strip_leading_zeros(cert.raw_serial());
    let serial_hex = if serial.is_empty() {
        "00".to_owned()
    } else {
        hex::encode(serial)
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::DNSName(d) => names.push(SubjectName::Dns((*d).to_owned())),
                GeneralName::IPAddress(o) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*o) {
                        names.push(SubjectName::Ip(IpAddr::from(v4)));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*o) {
                        names.push(SubjectName::Ip(IpAddr::from(v6)));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        serial_hex,
        fingerprint_sha256: hex::encode(digest.as_ref()),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        subject: escape_dn_text(&cert.subject().to_string()),
        issuer: escape_dn_text(&cert.issuer().to_string()),
        names,
        key_type: asn1::classify_spki(cert.public_key()).ok(),
        is_ca: cert.is_ca(),
        spki_der: cert.public_key().raw.to_vec(),
    })
}

/// Checks that a certificate from outside is DER (X.690 §10-11), not merely
/// readable: certflow keeps and serves the bytes of what it imports. Not for
/// certificates only reported (discovery), which are recorded as found.
pub fn check_der_certificate(field: &str, der: &[u8]) -> DomainResult<()> {
    crate::der_strict::check_certificate(der).map_err(|e| DomainError::invalid(field, e))
}

/// A DN's text safe to store and show: control characters, bidirectional
/// overrides and invisible characters become `\XX` per UTF-8 octet (RFC
/// 4514 §2.4) and a backslash `\\`, so a certificate from outside cannot
/// put a NUL, an escape sequence or a hidden character on a page or a log.
pub fn escape_dn_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = c.is_control()
            || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}'
                | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E0FFF}');
        if c == '\\' {
            out.push_str("\\\\");
        } else if hidden {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The SubjectPublicKeyInfo DER of a certificate (to re-certify the same key).
pub fn public_key_of(der: &[u8]) -> DomainResult<Vec<u8>> {
    Ok(parse_cert("certificate", der)?.public_key().raw.to_vec())
}

/// A `CERTIFICATE` PEM block with LF line endings.
pub fn cert_to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The DER of every `CERTIFICATE` block in `input`, in order. Other blocks
/// and text around them are ignored; none at all, or one that is not a
/// certificate, is an error on `field`.
pub fn parse_pem_certs(field: &str, input: &str) -> DomainResult<Vec<Vec<u8>>> {
    let blocks = pem::parse_many(input)
        .map_err(|e| DomainError::invalid(field, format!("malformed PEM ({e})")))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(DomainError::invalid(
            field,
            "no CERTIFICATE PEM block found",
        ));
    }
    for (i, der) in certs.iter().enumerate() {
        if let Err(DomainError::Invalid(mut errs)) = parse_cert(field, der) {
            if let Some(e) = errs.first_mut() {
                e.reason = format!("certificate {}: {}", i + 1, e.reason);
            }
            return Err(DomainError::Invalid(errs));
        }
    }
    Ok(certs)
}

/// Whether two SubjectPublicKeyInfos carry the same key (algorithm, curve
/// and key bits), regardless of how optional NULL parameters were encoded.
pub(crate) fn same_key(a: &SubjectPublicKeyInfo<'_>, b: &SubjectPublicKeyInfo<'_>) -> bool {
    let curve = |s: &SubjectPublicKeyInfo<'_>| {
        s.algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
    };
    a.algorithm.algorithm == b.algorithm.algorithm
        && curve(a) == curve(b)
        && a.subject_public_key.data == b.subject_public_key.data
}

/// Whether `key` is the private half of the certificate's public key.
pub fn key_matches_cert(key: &PrivateKey, cert_der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    let spki = key.public_key_der();
    match SubjectPublicKeyInfo::from_der(&spki) {
        Ok((_, ours)) => same_key(&ours, cert.public_key()),
        Err(_) => false,
    }
}

/// Whether `issuer_der`'s key signed `cert_der` and its subject is the
/// certificate's issuer name (to recognise one of certflow's CAs on import).
pub fn is_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        x509_parser::parse_x509_certificate(cert_der),
        x509_parser::parse_x509_certificate(issuer_der),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testutil::{ca, key, openssl_in, tempdir};

    #[test]
    fn inspect_matches_openssl() {
        let m = ca(KeyType::Rsa2048);
        let dir = tempdir();
        std::fs::write(dir.path().join("c.pem"), cert_to_pem(&m.issuing_cert_der)).unwrap();
        let out = openssl_in(
            dir.path(),
            &[
                "x509",
                "-in",
                "c.pem",
                "-noout",
                "-serial",
                "-fingerprint",
                "-sha256",
            ],
        );
        let info = inspect(&m.issuing_cert_der).unwrap();
        let serial = out.lines().find_map(|l| l.strip_prefix("serial=")).unwrap();
        assert_eq!(info.serial_hex, serial.to_lowercase());
        let fp = out
            .lines()
            .find_map(|l| l.split_once("Fingerprint=").map(|(_, v)| v))
            .unwrap();
        assert_eq!(info.fingerprint_sha256, fp.replace(':', "").to_lowercase());
        assert_eq!(info.subject, "O=Acme, CN=Acme Issuing CA 1");
        assert_eq!(info.issuer, "O=Acme, CN=Acme Root CA");
        assert!(info.is_ca);
        assert_eq!(info.key_type, Some(KeyType::Rsa2048));
        assert!(info.names.is_empty());
        assert_eq!(
            public_key_of(&m.issuing_cert_der).unwrap(),
            m.issuing_key.public_key_der()
        );
    }

    #[test]
    fn serial_hex_drops_leading_zero_octets() {
        let dir = tempdir();
        openssl_in(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "k.pem",
                "-out",
                "c.pem",
                "-subj",
                "/CN=x",
                "-set_serial",
                "0x00ff01",
                "-addext",
                "subjectAltName=DNS:x.example,IP:::1",
            ],
        );
        let pem_text = std::fs::read_to_string(dir.path().join("c.pem")).unwrap();
        let der = parse_pem_certs("certificate", &pem_text).unwrap().remove(0);
        let info = inspect(&der).unwrap();
        assert_eq!(info.serial_hex, "ff01");
        assert_eq!(
            info.names,
            vec![
                SubjectName::Dns("x.example".into()),
                SubjectName::Ip("::1".parse().unwrap())
            ]
        );
    }

    #[test]
    fn pem_roundtrip_and_errors() {
        let m = ca(KeyType::EcdsaP256);
        let bundle = format!(
            "subject=whatever\n{}{}junk\n",
            cert_to_pem(&m.issuing_cert_der),
            cert_to_pem(&m.root_cert_der)
        );
        assert!(!bundle.contains('\r'));
        assert_eq!(
            parse_pem_certs("chain", &bundle).unwrap(),
            vec![m.issuing_cert_der.clone(), m.root_cert_der.clone()]
        );
        let cases = [
            ("", "no CERTIFICATE"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "no CERTIFICATE",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "certificate 1: not a valid DER",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "malformed PEM",
            ),
        ];
        for (input, needle) in cases {
            let err = parse_pem_certs("chain", input).unwrap_err();
            let DomainError::Invalid(errs) = err else {
                panic!()
            };
            assert_eq!(errs[0].field, "chain");
            assert!(
                errs[0].reason.contains(needle),
                "{needle}: {}",
                errs[0].reason
            );
        }
        let mut trailing = m.root_cert_der.clone();
        trailing.push(0);
        assert!(
            inspect(&trailing)
                .unwrap_err()
                .to_string()
                .contains("trailing")
        );
        assert!(inspect(b"nope").is_err());
    }

    /// A CA whose name holds a NUL, an ANSI escape, a right-to-left
    /// override and a zero-width space is shown with those escaped.
    #[test]
    fn dn_text_is_escaped() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "Ev\u{0}il\u{1b}[31m\u{202e}\u{200b}\\",
        );
        let evil = params.self_signed(&key).unwrap();
        let info = inspect(evil.der()).unwrap();
        assert!(
            info.issuer
                .contains("Ev\\00il\\1B[31m\\E2\\80\\AE\\E2\\80\\8B\\\\"),
            "{}",
            info.issuer
        );
        for text in [&info.issuer, &info.subject] {
            assert!(
                !text.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{text}"
            );
        }
        assert_eq!(
            escape_dn_text("CN=b\u{fc}cher, O=Acme"),
            "CN=b\u{fc}cher, O=Acme"
        );
    }

    #[test]
    fn key_matching() {
        let m = ca(KeyType::EcdsaP256);
        assert!(key_matches_cert(&m.issuing_key, &m.issuing_cert_der));
        assert!(!key_matches_cert(
            m.root_key.as_ref().unwrap(),
            &m.issuing_cert_der
        ));
        assert!(!key_matches_cert(
            &key(KeyType::EcdsaP384),
            &m.issuing_cert_der
        ));
        assert!(!key_matches_cert(&m.issuing_key, b"nope"));
    }
}
