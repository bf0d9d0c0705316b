//! Shared X.509 plumbing: public-key classification (RFC 5480, RFC 8017,
//! RFC 8410), the few DER encodings rcgen has no builder for, serial numbers
//! (RFC 5280 §4.1.2.2, CA/B BR §7.1), and certificate parsing with our errors.

use certflow_core::{DomainError, DomainResult, KeyType};
use time::{OffsetDateTime, UtcOffset};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

pub(crate) const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
pub(crate) const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
pub(crate) const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
pub(crate) const OID_ED25519: &str = "1.3.101.112";
pub(crate) const OID_ED448: &str = "1.3.101.113";
pub(crate) const OID_X25519: &str = "1.3.101.110";
pub(crate) const OID_X448: &str = "1.3.101.111";
pub(crate) const OID_DSA: &str = "1.2.840.10040.4.1";
pub(crate) const OID_P256: &str = "1.2.840.10045.3.1.7";
pub(crate) const OID_P384: &str = "1.3.132.0.34";

/// id-pe-authorityInfoAccess (RFC 5280 §4.2.2.1).
pub(crate) const EXT_AUTHORITY_INFO_ACCESS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
/// id-ce-certificatePolicies (RFC 5280 §4.2.1.4).
pub(crate) const EXT_CERTIFICATE_POLICIES: &[u64] = &[2, 5, 29, 32];

/// Longest serial RFC 5280 §4.1.2.2 allows, in octets.
pub(crate) const MAX_SERIAL_LEN: usize = 20;

/// A human name for a curve OID, so rejections read "secp256k1", not digits.
fn curve_name(oid: &str) -> &str {
    match oid {
        "1.3.132.0.10" => "secp256k1",
        "1.3.132.0.35" => "P-521",
        "1.2.840.10045.3.1.1" => "P-192",
        "1.3.132.0.33" => "P-224",
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1",
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1",
        "1.3.36.3.3.2.8.1.1.13" => "brainpoolP512r1",
        "1.2.156.10197.1.301" => "SM2",
        other => other,
    }
}

/// Why a public-key algorithm that is not one of ours is refused.
pub(crate) fn unsupported_algorithm(oid: &str) -> String {
    match oid {
        OID_DSA => "DSA keys are not supported; use ECDSA P-256/P-384, RSA or Ed25519".into(),
        OID_ED448 => "Ed448 keys are not supported; use Ed25519".into(),
        OID_X25519 | OID_X448 => "X25519/X448 keys cannot sign; use a signature key".into(),
        OID_RSASSA_PSS => "RSASSA-PSS-only keys are not supported; use an rsaEncryption key".into(),
        other => format!("public key algorithm {other} is not supported"),
    }
}

/// Why an EC curve is refused.
pub(crate) fn unsupported_curve(oid: &str) -> String {
    format!(
        "EC curve {} is not supported; use P-256 or P-384",
        curve_name(oid)
    )
}

/// Bit length of a big-endian unsigned integer.
pub(crate) fn bit_len(be: &[u8]) -> usize {
    let trimmed = strip_leading_zeros(be);
    match trimmed.first() {
        None => 0,
        Some(first) => trimmed.len() * 8 - first.leading_zeros() as usize,
    }
}

pub(crate) fn strip_leading_zeros(be: &[u8]) -> &[u8] {
    let start = be.iter().position(|b| *b != 0).unwrap_or(be.len());
    &be[start..]
}

/// The certflow key type of an RSA key with this modulus and exponent, or why not.
pub(crate) fn rsa_key_type(modulus: &[u8], exponent: &[u8]) -> Result<KeyType, String> {
    let bits = bit_len(modulus);
    let kt = match bits {
        2048 => KeyType::Rsa2048,
        3072 => KeyType::Rsa3072,
        4096 => KeyType::Rsa4096,
        b if b < 2048 => {
            return Err(format!(
                "RSA key of {b} bits is too small; at least 2048 bits are required"
            ));
        }
        b => {
            return Err(format!(
                "RSA key size of {b} bits is not supported; use 2048, 3072 or 4096"
            ));
        }
    };
    let e = strip_leading_zeros(exponent);
    if e != [0x01, 0x00, 0x01] {
        let shown = if e.len() <= 8 {
            let mut buf = [0u8; 8];
            buf[8 - e.len()..].copy_from_slice(e);
            u64::from_be_bytes(buf).to_string()
        } else {
            "(more than 64 bits)".to_owned()
        };
        return Err(format!(
            "RSA public exponent {shown} is not allowed; it must be 65537"
        ));
    }
    Ok(kt)
}

/// Classifies a SubjectPublicKeyInfo into one of the key types certflow
/// certifies, or says why it is refused (RFC 5480 §2, RFC 3279 §2.3.1, RFC 8410 §4).
pub(crate) fn classify_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyType, String> {
    let alg = spki.algorithm.algorithm.to_id_string();
    let key: &[u8] = &spki.subject_public_key.data;
    match alg.as_str() {
        OID_RSA_ENCRYPTION => match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                rsa_key_type(rsa.modulus, rsa.exponent)
            }
            _ => Err("malformed RSA public key".into()),
        },
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .ok_or_else(|| {
                    "EC key without a named curve (explicit parameters are not supported)"
                        .to_owned()
                })?;
            let (kt, coord) = match curve.as_str() {
                OID_P256 => (KeyType::EcdsaP256, 32),
                OID_P384 => (KeyType::EcdsaP384, 48),
                other => return Err(unsupported_curve(other)),
            };
            match key.first() {
                Some(0x04) if key.len() == 1 + 2 * coord => Ok(kt),
                Some(0x02 | 0x03) => {
                    Err("compressed EC points are not supported; send the uncompressed form".into())
                }
                _ => Err("malformed EC public key".into()),
            }
        }
        OID_ED25519 => {
            if spki.algorithm.parameters.is_some() {
                return Err("Ed25519 key with algorithm parameters (RFC 8410 forbids them)".into());
            }
            if key.len() != 32 {
                return Err("malformed Ed25519 public key".into());
            }
            Ok(KeyType::Ed25519)
        }
        other => Err(unsupported_algorithm(other)),
    }
}

/// The rcgen signature algorithm a CA key of this type signs with.
pub(crate) fn signature_algorithm(kt: KeyType) -> &'static rcgen::SignatureAlgorithm {
    match kt {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
    }
}

/// 16 random octets, first one forced into 0x40..=0x7f: positive, minimal DER,
/// always 16 octets long and 126 bits of CSPRNG output (BR §7.1 wants >= 64).
pub(crate) fn random_serial() -> DomainResult<rcgen::SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| DomainError::Internal("random number generator failed".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

/// `now` in UTC without sub-seconds: X.509 times have none, and comparing a
/// truncated notAfter with an untruncated one would be off by a fraction.
pub(crate) fn whole_seconds(now: OffsetDateTime) -> DomainResult<OffsetDateTime> {
    now.to_offset(UtcOffset::UTC)
        .replace_nanosecond(0)
        .map_err(|_| DomainError::Internal("time out of range".into()))
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_cert<'a>(field: &str, der: &'a [u8]) -> DomainResult<X509Certificate<'a>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(DomainError::invalid(
            field,
            "trailing data after the DER certificate",
        )),
        Err(e) => Err(DomainError::invalid(
            field,
            format!("not a valid DER X.509 certificate ({e})"),
        )),
    }
}

/// The subjectKeyIdentifier of a certificate, if it has one.
pub(crate) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(kid) => {
                Some(kid.0.to_vec())
            }
            _ => None,
        })
}

/// Key identifier by RFC 7093 §2 method 1: the leftmost 160 bits of the
/// SHA-256 of the subjectPublicKey bits. rcgen's own method hashes the whole
/// SubjectPublicKeyInfo, which no standard (or linter) recognises.
pub(crate) fn key_identifier(public_key_bits: &[u8]) -> rcgen::KeyIdMethod {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key_bits);
    rcgen::KeyIdMethod::PreSpecified(digest.as_ref()[..20].to_vec())
}

/// Maps an rcgen failure that is ours, not the caller's.
pub(crate) fn internal(what: &str) -> impl FnOnce(rcgen::Error) -> DomainError + '_ {
    move |e| DomainError::Internal(format!("{what}: {e}"))
}

/// DER tag-length-value (X.690 §8.1), for the extensions rcgen cannot build.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let significant = strip_leading_zeros(&be);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn tlv_lengths() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 0x02, 1, 2]);
        let long = vec![0u8; 200];
        assert_eq!(&tlv(0x04, &long)[..3], &[0x04, 0x81, 200]);
        let longer = vec![0u8; 300];
        assert_eq!(&tlv(0x04, &longer)[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_len(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_len(&[0x01]), 1);
        assert_eq!(bit_len(&[0x00]), 0);
        let mut m = vec![0u8; 257];
        m[1] = 0x80;
        assert_eq!(bit_len(&m), 2048);
        m[1] = 0x40;
        assert_eq!(bit_len(&m), 2047);
    }

    #[test]
    fn rsa_rules() {
        let mut m = vec![0xffu8; 256];
        assert_eq!(rsa_key_type(&m, &[1, 0, 1]), Ok(KeyType::Rsa2048));
        assert!(rsa_key_type(&m, &[3]).unwrap_err().contains("exponent 3"));
        m[0] = 0x7f;
        assert!(
            rsa_key_type(&m, &[1, 0, 1])
                .unwrap_err()
                .contains("2047 bits is too small")
        );
        let big = vec![0xffu8; 300];
        assert!(
            rsa_key_type(&big, &[1, 0, 1])
                .unwrap_err()
                .contains("2400 bits is not supported")
        );
    }

    #[test]
    fn serials_are_positive_sixteen_octets_and_random() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), 16);
        assert!((0x40..=0x7f).contains(&a[0]));
        assert_ne!(a, b);
    }
}
