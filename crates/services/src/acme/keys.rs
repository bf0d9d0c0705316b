//! Key and certificate identity for the ACME use cases: whether a CSR's key
//! is the account's JWK, a certificate's serial and fingerprint, and RFC
//! 9773 certificate identifiers (`base64url(AKI keyIdentifier) "."
//! base64url(serial)`).

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// OID of Ed25519 keys (RFC 8410).
const ED25519: &str = "1.3.101.112";

fn member(jwk: &serde_json::Value, name: &str) -> Option<Vec<u8>> {
    B64URL.decode(jwk.get(name)?.as_str()?).ok()
}

fn unsigned(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Whether the DER SubjectPublicKeyInfo `spki_der` holds the key of `jwk`
/// (EC, RSA or OKP Ed25519): compared by key material, so encodings of one
/// key never pass for two keys.
pub(crate) fn same_key(jwk: &serde_json::Value, spki_der: &[u8]) -> bool {
    let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(spki_der) else {
        return false;
    };
    let kty = jwk.get("kty").and_then(|k| k.as_str()).unwrap_or_default();
    if spki.algorithm.algorithm.to_id_string() == ED25519 {
        return kty == "OKP"
            && member(jwk, "x").is_some_and(|x| x == spki.subject_public_key.data.as_ref());
    }
    match (kty, spki.parsed()) {
        ("EC", Ok(PublicKey::EC(point))) => match (member(jwk, "x"), member(jwk, "y")) {
            (Some(x), Some(y)) => {
                let mut uncompressed = vec![4_u8];
                uncompressed.extend_from_slice(&x);
                uncompressed.extend_from_slice(&y);
                point.data() == uncompressed.as_slice()
            }
            _ => false,
        },
        ("RSA", Ok(PublicKey::RSA(rsa))) => match (member(jwk, "n"), member(jwk, "e")) {
            (Some(n), Some(e)) => {
                unsigned(&n) == unsigned(rsa.modulus) && unsigned(&e) == unsigned(rsa.exponent)
            }
            _ => false,
        },
        _ => false,
    }
}

/// Lower-case hex of a serial without leading zero bytes (as certflow stores it).
fn serial_hex(raw: &[u8]) -> String {
    let s = unsigned(raw);
    if s.is_empty() {
        "00".to_owned()
    } else {
        hex::encode(s)
    }
}

/// A DER certificate's serial (as stored) and SHA-256 fingerprint (lower-case hex).
pub(crate) fn serial_and_fingerprint(cert_der: &[u8]) -> Option<(String, String)> {
    match X509Certificate::from_der(cert_der) {
        Ok(([], cert)) => Some((
            serial_hex(cert.tbs_certificate.raw_serial()),
            hex::encode(digest(&SHA256, cert_der).as_ref()),
        )),
        _ => None,
    }
}

/// The RFC 9773 identifier of a DER certificate, if it has an authority key identifier.
pub fn ari_cert_id(cert_der: &[u8]) -> Option<String> {
    let ([], cert) = X509Certificate::from_der(cert_der).ok()? else {
        return None;
    };
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })?;
    Some(format!(
        "{}.{}",
        B64URL.encode(aki.0),
        B64URL.encode(cert.tbs_certificate.raw_serial())
    ))
}

/// The stored serial an RFC 9773 identifier names (its AKI part is not
/// needed to find an ACME certificate: serials are random and looked up
/// together with the fingerprint or the ACME record).
pub(crate) fn serial_of_ari_id(ari_id: &str) -> Option<String> {
    let (aki, serial) = ari_id.split_once('.')?;
    B64URL.decode(aki).ok()?;
    let raw = B64URL.decode(serial).ok()?;
    (!raw.is_empty() && raw.len() <= 20).then(|| serial_hex(&raw))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ari_ids_name_the_stored_serial() {
        // RFC 9773 §4.1's example: serial 0x0087654321 (a leading zero byte).
        assert_eq!(
            serial_of_ari_id("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE").as_deref(),
            Some("87654321")
        );
        assert_eq!(serial_of_ari_id("no-dot"), None);
        assert_eq!(serial_of_ari_id("a.!!"), None);
    }
}
