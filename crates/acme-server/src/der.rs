//! The few DER structures this crate writes: a JWK's SubjectPublicKeyInfo
//! (RFC 5280 §4.1, RFC 5480, RFC 8017 A.1.1, RFC 8410), so that a CSR's key
//! can be compared with the account key byte for byte.

use crate::jwk::{Curve, Jwk};

const ID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const PRIME256V1: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const SECP384R1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const DER_NULL: &[u8] = &[0x05, 0x00];
const ID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// A DER TLV.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn bit_string(bits: &[u8]) -> Vec<u8> {
    let mut content = vec![0];
    content.extend_from_slice(bits);
    tlv(0x03, &content)
}

fn unsigned_integer(be: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let skip = be
            .iter()
            .take_while(|b| **b == 0)
            .count()
            .min(be.len().saturating_sub(1));
        &be[skip..]
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(0x02, &content)
}

/// The SubjectPublicKeyInfo of `key`.
pub(crate) fn spki(key: &Jwk) -> Vec<u8> {
    match key {
        Jwk::Ec { crv, x, y } => {
            let curve = match crv {
                Curve::P256 => PRIME256V1,
                Curve::P384 => SECP384R1,
            };
            let point = [&[4u8][..], x, y].concat();
            seq(&[&seq(&[ID_EC_PUBLIC_KEY, curve]), &bit_string(&point)])
        }
        Jwk::Rsa { n, e } => {
            let rsa_key = seq(&[&unsigned_integer(n), &unsigned_integer(e)]);
            seq(&[&seq(&[RSA_ENCRYPTION, DER_NULL]), &bit_string(&rsa_key)])
        }
        Jwk::Ed25519 { x } => seq(&[&seq(&[ID_ED25519]), &bit_string(x)]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData as _;
    use x509_parser::prelude::FromDer as _;
    use x509_parser::public_key::PublicKey;
    use x509_parser::x509::SubjectPublicKeyInfo;

    #[test]
    fn ec_and_ed25519_keys_encode_as_a_crypto_library_does() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            let raw = pair.public_key_raw();
            let jwk = if alg == &rcgen::PKCS_ED25519 {
                Jwk::Ed25519 { x: raw.to_vec() }
            } else {
                let half = (raw.len() - 1) / 2;
                Jwk::Ec {
                    crv: if half == 32 { Curve::P256 } else { Curve::P384 },
                    x: raw[1..=half].to_vec(),
                    y: raw[1 + half..].to_vec(),
                }
            };
            assert_eq!(spki(&jwk), pair.subject_public_key_info(), "{alg:?}");
        }
    }

    #[test]
    fn rsa_keys_parse_back_to_their_components() {
        let n: Vec<u8> = std::iter::once(0xc1)
            .chain(std::iter::repeat_n(0x5a, 255))
            .collect();
        let der = spki(&Jwk::Rsa {
            n: n.clone(),
            e: vec![1, 0, 1],
        });
        let (rest, info) = SubjectPublicKeyInfo::from_der(&der).unwrap();
        assert!(rest.is_empty());
        let PublicKey::RSA(rsa) = info.parsed().unwrap() else {
            panic!("not RSA");
        };
        assert_eq!(
            rsa.modulus
                .iter()
                .skip_while(|b| **b == 0)
                .copied()
                .collect::<Vec<_>>(),
            n
        );
        assert_eq!(rsa.exponent, [1, 0, 1]);
    }
}
