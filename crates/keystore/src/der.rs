//! The few DER structures the adapters build themselves: a
//! SubjectPublicKeyInfo from a token's public key attributes (RFC 5480 §2,
//! RFC 3279 §2.3.1), and the inside of an EC point attribute.

use certflow_core::KeyType;

/// DER tag-length-value (X.690 §8.1).
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let first = be.iter().position(|b| *b != 0).unwrap_or(be.len() - 1);
        out.push(0x80 | (be.len() - first) as u8);
        out.extend_from_slice(&be[first..]);
    }
    out.extend_from_slice(content);
    out
}

/// id-ecPublicKey (1.2.840.10045.2.1), as a full OID TLV.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// rsaEncryption (1.2.840.113549.1.1.1) with its NULL parameters.
const RSA_ALGORITHM: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// The namedCurve OID TLV of an EC key type (CKA_EC_PARAMS), `None` otherwise.
pub(crate) fn ec_params(kt: KeyType) -> Option<&'static [u8]> {
    match kt {
        // prime256v1 1.2.840.10045.3.1.7
        KeyType::EcdsaP256 => Some(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        // secp384r1 1.3.132.0.34
        KeyType::EcdsaP384 => Some(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
        _ => None,
    }
}

/// The uncompressed point inside CKA_EC_POINT, which PKCS#11 defines as a
/// DER OCTET STRING (some modules return the bare point: accepted too). An
/// uncompressed P-256 point is 65 octets, a P-384 one 97, so the two forms
/// cannot be mistaken for each other.
pub(crate) fn ec_point(attr: &[u8]) -> Option<&[u8]> {
    const POINT_LENS: [usize; 2] = [65, 97];
    match attr {
        [0x04, n, body @ ..]
            if usize::from(*n) == body.len()
                && POINT_LENS.contains(&body.len())
                && body[0] == 0x04 =>
        {
            Some(body)
        }
        [0x04, ..] if POINT_LENS.contains(&attr.len()) => Some(attr),
        _ => None,
    }
}

/// SubjectPublicKeyInfo of an EC key: the curve parameters and the point.
pub(crate) fn ec_spki(params: &[u8], point: &[u8]) -> Vec<u8> {
    let algorithm = tlv(0x30, &[OID_EC_PUBLIC_KEY, params].concat());
    let mut bits = vec![0];
    bits.extend_from_slice(point);
    tlv(0x30, &[algorithm, tlv(0x03, &bits)].concat())
}

/// A positive DER INTEGER of big-endian magnitude `v`.
fn integer(v: &[u8]) -> Vec<u8> {
    let first = v.iter().position(|b| *b != 0).unwrap_or(v.len());
    let v = &v[first..];
    let mut content = Vec::with_capacity(v.len() + 1);
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(v);
    tlv(0x02, &content)
}

/// SubjectPublicKeyInfo of an RSA key from its modulus and public exponent.
pub(crate) fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let key = tlv(0x30, &[integer(modulus), integer(exponent)].concat());
    let mut bits = vec![0];
    bits.extend(key);
    tlv(0x30, &[RSA_ALGORITHM.to_vec(), tlv(0x03, &bits)].concat())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_are_unwrapped_either_way() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let wrapped = tlv(0x04, &point);
        assert_eq!(ec_point(&wrapped), Some(point.as_slice()));
        assert_eq!(ec_point(&point), Some(point.as_slice()));
        let mut p384 = vec![0x04];
        p384.extend([9u8; 96]);
        assert_eq!(ec_point(&tlv(0x04, &p384)), Some(p384.as_slice()));
        assert_eq!(ec_point(&[0x02, 0x01]), None);
    }

    #[test]
    fn rsa_spki_has_minimal_integers() {
        let spki = rsa_spki(&[0x00, 0xc0, 0x01], &[0x01, 0x00, 0x01]);
        assert_eq!(
            spki[RSA_ALGORITHM.len() + 2..],
            [
                0x03, 0x0d, 0x00, 0x30, 0x0a, 0x02, 0x03, 0x00, 0xc0, 0x01, 0x02, 0x03, 0x01, 0x00,
                0x01
            ]
        );
    }
}
