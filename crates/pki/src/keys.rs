//! Private keys: generation, PKCS#8 (RFC 5208/5958) and PEM (RFC 7468) in and
//! out. The DER lives in `Zeroizing` buffers, and the PEM codec below is
//! written here so no base64 copy of a key is left in freed memory.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair as _, RsaKeyPair,
};
use certflow_core::{DomainError, DomainResult, KeyType};
use rcgen::PublicKeyData;
use x509_parser::asn1_rs::{Any, FromDer, Tag};
use x509_parser::x509::AlgorithmIdentifier;
use zeroize::{Zeroize, Zeroizing};

use crate::asn1::{self, OID_EC_PUBLIC_KEY, OID_ED25519, OID_P256, OID_P384, OID_RSA_ENCRYPTION};

/// A private key certflow can sign with or hand out, as PKCS#8 v1 DER.
#[derive(Clone)]
pub struct PrivateKey {
    key_type: KeyType,
    pkcs8: Zeroizing<Vec<u8>>,
    spki: Vec<u8>,
    /// The key loaded for signing, once: loading checks the private half
    /// against the public one (a scalar multiplication), a visible share of
    /// an issuance if it were done per signature (BENCHMARKS.md).
    signer: Arc<SigningKeyPair>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, <redacted>)", self.key_type.as_str())
    }
}

/// rcgen's key pair, wiped on drop (rcgen keeps its own copy of the DER).
pub(crate) struct SigningKeyPair(rcgen::KeyPair);

impl SigningKeyPair {
    pub(crate) fn get(&self) -> &rcgen::KeyPair {
        &self.0
    }
}

impl Drop for SigningKeyPair {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

fn key_err(reason: impl Into<String>) -> DomainError {
    DomainError::invalid("key", reason)
}

fn generation_failed(_: aws_lc_rs::error::Unspecified) -> DomainError {
    DomainError::Internal("key generation failed".into())
}

impl PrivateKey {
    /// Generates a fresh key of this type (RSA with e = 65537).
    pub fn generate(kt: KeyType) -> DomainResult<Self> {
        // aws-lc-rs directly rather than rcgen's wrapper: rcgen emits PKCS#8 v2
        // for Ed25519, and v1 is what every consumer of our PEM/PKCS#12 reads.
        let pkcs8: Zeroizing<Vec<u8>> = match kt {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
                let alg = if kt == KeyType::EcdsaP256 {
                    &ECDSA_P256_SHA256_ASN1_SIGNING
                } else {
                    &ECDSA_P384_SHA384_ASN1_SIGNING
                };
                let kp = EcdsaKeyPair::generate(alg).map_err(generation_failed)?;
                Zeroizing::new(
                    kp.to_pkcs8v1()
                        .map_err(generation_failed)?
                        .as_ref()
                        .to_vec(),
                )
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let size = match kt {
                    KeyType::Rsa2048 => KeySize::Rsa2048,
                    KeyType::Rsa3072 => KeySize::Rsa3072,
                    _ => KeySize::Rsa4096,
                };
                let kp = RsaKeyPair::generate(size).map_err(generation_failed)?;
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                    kp.as_der().map_err(generation_failed)?;
                Zeroizing::new(der.as_ref().to_vec())
            }
            KeyType::Ed25519 => {
                let kp = Ed25519KeyPair::generate().map_err(generation_failed)?;
                Zeroizing::new(
                    kp.to_pkcs8v1()
                        .map_err(generation_failed)?
                        .as_ref()
                        .to_vec(),
                )
            }
        };
        Self::from_parts(kt, pkcs8)
            .map_err(|_| DomainError::Internal("generated key failed to load".into()))
    }

    /// Loads an unencrypted PKCS#8 key and detects its type; keys certflow
    /// does not certify (other curves, RSA sizes or exponents) are refused.
    pub fn from_pkcs8_der(der: &[u8]) -> DomainResult<Self> {
        let (alg, curve, inner) =
            pkcs8_parts(der).ok_or_else(|| key_err("not a PKCS#8 private key (DER)"))?;
        let not_valid = |_| key_err("malformed or inconsistent private key");
        match alg.as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = curve.ok_or_else(|| key_err("EC key without a named curve"))?;
                let (kt, sig_alg) = match curve.as_str() {
                    OID_P256 => (KeyType::EcdsaP256, &ECDSA_P256_SHA256_ASN1_SIGNING),
                    OID_P384 => (KeyType::EcdsaP384, &ECDSA_P384_SHA384_ASN1_SIGNING),
                    other => return Err(key_err(asn1::unsupported_curve(other))),
                };
                let kp = EcdsaKeyPair::from_pkcs8(sig_alg, der).map_err(not_valid)?;
                Self::canonical_ec(kt, &kp)
            }
            OID_RSA_ENCRYPTION => {
                // Size and exponent first: aws-lc refuses small keys with a
                // generic error, and the caller deserves the real reason.
                check_rsa_pkcs1(inner)?;
                Self::canonical_rsa(&RsaKeyPair::from_pkcs8(der).map_err(not_valid)?)
            }
            OID_ED25519 => {
                let kp = Ed25519KeyPair::from_pkcs8(der).map_err(not_valid)?;
                let v1 = kp
                    .to_pkcs8v1()
                    .map_err(|_| DomainError::Internal("key encoding failed".into()))?;
                Self::from_parts(KeyType::Ed25519, Zeroizing::new(v1.as_ref().to_vec()))
            }
            other => Err(key_err(asn1::unsupported_algorithm(other))),
        }
    }

    /// Loads a PEM key: `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC 1) or
    /// `RSA PRIVATE KEY` (PKCS#1). Encrypted keys are refused with a hint.
    pub fn from_pem(field: &str, pem: &str) -> DomainResult<Self> {
        let invalid = |reason: &str| DomainError::invalid(field, reason);
        let block = decode_key_pem(pem).map_err(|reason| invalid(&reason))?;
        let relabel = |e: DomainError| match e {
            DomainError::Invalid(errs) => DomainError::Invalid(
                errs.into_iter()
                    .map(|mut fe| {
                        fe.field = field.to_owned();
                        fe
                    })
                    .collect(),
            ),
            other => other,
        };
        let not_valid = |_| invalid("malformed or inconsistent private key");
        match block.label.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&block.der).map_err(relabel),
            "EC PRIVATE KEY" => {
                if let Ok(kp) =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &block.der)
                {
                    Self::canonical_ec(KeyType::EcdsaP256, &kp).map_err(relabel)
                } else if let Ok(kp) =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_ASN1_SIGNING, &block.der)
                {
                    Self::canonical_ec(KeyType::EcdsaP384, &kp).map_err(relabel)
                } else {
                    Err(invalid(
                        "not a P-256 or P-384 EC private key (other curves are not supported)",
                    ))
                }
            }
            "RSA PRIVATE KEY" => {
                check_rsa_pkcs1(&block.der).map_err(relabel)?;
                Self::canonical_rsa(&RsaKeyPair::from_der(&block.der).map_err(not_valid)?)
                    .map_err(relabel)
            }
            "ENCRYPTED PRIVATE KEY" => Err(invalid(
                "encrypted private keys are not accepted; decrypt it first (openssl pkey -in key.pem -out plain.pem)",
            )),
            other => Err(invalid(&format!(
                "expected a PRIVATE KEY PEM block, found {other}"
            ))),
        }
    }

    fn canonical_ec(kt: KeyType, kp: &EcdsaKeyPair) -> DomainResult<Self> {
        let v1 = kp
            .to_pkcs8v1()
            .map_err(|_| DomainError::Internal("key encoding failed".into()))?;
        Self::from_parts(kt, Zeroizing::new(v1.as_ref().to_vec()))
    }

    fn canonical_rsa(kp: &RsaKeyPair) -> DomainResult<Self> {
        let public = kp.public_key();
        let kt = asn1::rsa_key_type(
            public.modulus().big_endian_without_leading_zero(),
            public.exponent().big_endian_without_leading_zero(),
        )
        .map_err(key_err)?;
        let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = kp
            .as_der()
            .map_err(|_| DomainError::Internal("key encoding failed".into()))?;
        Self::from_parts(kt, Zeroizing::new(der.as_ref().to_vec()))
    }

    /// Builds the key from canonical PKCS#8 and records its public half.
    fn from_parts(key_type: KeyType, pkcs8: Zeroizing<Vec<u8>>) -> DomainResult<Self> {
        let signer = load_rcgen(key_type, &pkcs8)
            .ok_or_else(|| key_err("malformed or inconsistent private key"))?;
        let spki = signer.get().subject_public_key_info();
        Ok(Self {
            key_type,
            pkcs8,
            spki,
            signer: Arc::new(signer),
        })
    }

    /// The key's algorithm and size.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The key as unencrypted PKCS#8 v1 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key as a `PRIVATE KEY` PEM block.
    pub fn to_pem(&self) -> Zeroizing<String> {
        encode_pem("PRIVATE KEY", &self.pkcs8)
    }

    /// The SubjectPublicKeyInfo DER of the public half.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// Signs `message` with the key's certificate signature algorithm
    /// (ECDSA with SHA-256/384, DER-encoded; PKCS#1 v1.5 with SHA-256; Ed25519).
    pub fn sign(&self, message: &[u8]) -> DomainResult<Vec<u8>> {
        use rcgen::SigningKey as _;
        self.signer
            .get()
            .sign(message)
            .map_err(|e| DomainError::Internal(format!("signing failed: {e}")))
    }

    /// The key in the form rcgen signs with.
    pub(crate) fn signing_key_pair(&self) -> &SigningKeyPair {
        &self.signer
    }
}

fn load_rcgen(kt: KeyType, pkcs8: &[u8]) -> Option<SigningKeyPair> {
    rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), asn1::signature_algorithm(kt))
        .ok()
        .map(SigningKeyPair)
}

/// The algorithm OID, the curve OID for EC keys, and the privateKey octets
/// of a PKCS#8 PrivateKeyInfo (RFC 5208 §5).
fn pkcs8_parts(der: &[u8]) -> Option<(String, Option<String>, &[u8])> {
    let (_, outer) = Any::from_der(der).ok()?;
    if outer.tag() != Tag::Sequence {
        return None;
    }
    let (rest, version) = Any::from_der(outer.data).ok()?;
    if version.tag() != Tag::Integer {
        return None;
    }
    let (rest, alg) = AlgorithmIdentifier::from_der(rest).ok()?;
    let (_, private_key) = Any::from_der(rest).ok()?;
    if private_key.tag() != Tag::OctetString {
        return None;
    }
    let curve = alg
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    Some((alg.algorithm.to_id_string(), curve, private_key.data))
}

/// Checks size and exponent of a PKCS#1 RSAPrivateKey (RFC 8017 §A.1.2):
/// SEQUENCE { version, modulus, publicExponent, ... }.
fn check_rsa_pkcs1(der: &[u8]) -> DomainResult<()> {
    let parsed = (|| {
        let (_, seq) = Any::from_der(der).ok()?;
        let (rest, _version) = Any::from_der(seq.data).ok()?;
        let (rest, modulus) = Any::from_der(rest).ok()?;
        let (_, exponent) = Any::from_der(rest).ok()?;
        (modulus.tag() == Tag::Integer && exponent.tag() == Tag::Integer)
            .then_some((modulus.data, exponent.data))
    })();
    let (modulus, exponent) = parsed.ok_or_else(|| key_err("malformed RSA private key"))?;
    asn1::rsa_key_type(modulus, exponent)
        .map(|_| ())
        .map_err(key_err)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// RFC 7468 PEM with 64-character lines and LF endings, built in place.
pub(crate) fn encode_pem(label: &str, der: &[u8]) -> Zeroizing<String> {
    let body_len = der.len().div_ceil(3) * 4;
    let mut out = Zeroizing::new(String::with_capacity(
        body_len + body_len / 64 + 2 * label.len() + 40,
    ));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut col = 0;
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            let c = if i <= chunk.len() {
                B64[((n >> (18 - 6 * i)) & 0x3f) as usize] as char
            } else {
                '='
            };
            out.push(c);
        }
        col += 4;
        if col == 64 {
            out.push('\n');
            col = 0;
        }
    }
    if col != 0 {
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// One decoded PEM block; the DER is wiped on drop.
pub(crate) struct PemBlock {
    pub(crate) label: String,
    pub(crate) der: Zeroizing<Vec<u8>>,
}

const KEY_LABELS: [&str; 4] = [
    "PRIVATE KEY",
    "EC PRIVATE KEY",
    "RSA PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];

/// Finds the single private-key block in `input` (other blocks, e.g. a
/// certificate pasted alongside, are skipped) and decodes it.
pub(crate) fn decode_key_pem(input: &str) -> Result<PemBlock, String> {
    let mut found: Option<(&str, &str)> = None;
    let mut rest = input;
    let mut other_label = None;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let label_end = after
            .find("-----")
            .ok_or("malformed PEM: unterminated BEGIN line")?;
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let body_end = body_start
            .find(&end_marker)
            .ok_or_else(|| format!("malformed PEM: no END {label} line"))?;
        if KEY_LABELS.contains(&label) {
            if found.is_some() {
                return Err("more than one private key in the PEM input; send exactly one".into());
            }
            found = Some((label, &body_start[..body_end]));
        } else if other_label.is_none() {
            other_label = Some(label);
        }
        rest = &body_start[body_end + end_marker.len()..];
    }
    let (label, body) = match (found, other_label) {
        (Some(f), _) => f,
        (None, Some(other)) => {
            return Err(format!("expected a PRIVATE KEY PEM block, found {other}"));
        }
        (None, None) => {
            return Err("no PEM private key found (expected -----BEGIN PRIVATE KEY-----)".into());
        }
    };
    if body.contains("Proc-Type:") || body.contains("DEK-Info:") {
        return Err(
            "encrypted private keys are not accepted; decrypt it first (openssl pkey -in key.pem -out plain.pem)"
                .into(),
        );
    }
    let der = decode_base64(body)
        .ok_or_else(|| format!("malformed PEM: invalid base64 in the {label} block"))?;
    Ok(PemBlock {
        label: label.to_owned(),
        der,
    })
}

/// Strict base64 (RFC 4648 §4) ignoring whitespace; None on any other byte.
fn decode_base64(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3));
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut padding = 0;
    let mut symbols = 0usize;
    for b in text.bytes() {
        if b.is_ascii_whitespace() {
            continue;
        }
        if b == b'=' {
            padding += 1;
            symbols += 1;
            continue;
        }
        if padding > 0 {
            return None;
        }
        let v = B64.iter().position(|c| *c == b)? as u32;
        symbols += 1;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    acc.zeroize();
    if !symbols.is_multiple_of(4) || padding > 2 || out.is_empty() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testutil::{key, openssl, tempdir};

    #[test]
    fn every_key_type_roundtrips_through_der_and_pem() {
        for kt in KeyType::ALL {
            let k = key(kt);
            assert_eq!(k.key_type(), kt);
            let again = PrivateKey::from_pkcs8_der(k.pkcs8_der()).unwrap();
            assert_eq!(again.key_type(), kt);
            assert_eq!(again.pkcs8_der(), k.pkcs8_der());
            assert_eq!(again.public_key_der(), k.public_key_der());
            let from_pem = PrivateKey::from_pem("key", &k.to_pem()).unwrap();
            assert_eq!(from_pem.pkcs8_der(), k.pkcs8_der());
        }
    }

    #[test]
    fn debug_never_shows_key_material() {
        let k = key(KeyType::EcdsaP256);
        assert_eq!(format!("{k:?}"), "PrivateKey(ecdsa-p256, <redacted>)");
    }

    #[test]
    fn generated_keys_differ() {
        let a = PrivateKey::generate(KeyType::Ed25519).unwrap();
        let b = PrivateKey::generate(KeyType::Ed25519).unwrap();
        assert_ne!(a.public_key_der(), b.public_key_der());
    }

    #[test]
    fn pem_matches_openssl_and_openssl_keys_load() {
        let dir = tempdir();
        for kt in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Ed25519] {
            let k = key(kt);
            let path = dir.path().join("k.pem");
            std::fs::write(&path, k.to_pem().as_bytes()).unwrap();
            let spki_pem = openssl(&["pkey", "-in", path.to_str().unwrap(), "-pubout"]);
            let spki = pem::parse(spki_pem).unwrap();
            assert_eq!(spki.contents(), k.public_key_der().as_slice(), "{kt:?}");
        }
        // Keys written by openssl in its legacy formats load too.
        let cases = [
            (
                vec![
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-384",
                ],
                None,
                KeyType::EcdsaP384,
            ),
            (
                vec![
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ],
                Some(("EC", vec!["ec"])),
                KeyType::EcdsaP256,
            ),
            (
                vec![
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:3072",
                ],
                Some(("RSA", vec!["rsa", "-traditional"])),
                KeyType::Rsa3072,
            ),
            (
                vec!["genpkey", "-algorithm", "ED25519"],
                None,
                KeyType::Ed25519,
            ),
        ];
        for (gen_args, legacy, kt) in cases {
            let mut pem_text = openssl(&gen_args);
            if let Some((label, mut cmd)) = legacy {
                let path = dir.path().join("in.pem");
                std::fs::write(&path, &pem_text).unwrap();
                cmd.extend(["-in", path.to_str().unwrap()]);
                pem_text = openssl(&cmd);
                assert!(pem_text.contains(&format!("BEGIN {label} PRIVATE KEY")));
            }
            let k = PrivateKey::from_pem("key", &pem_text).unwrap();
            assert_eq!(k.key_type(), kt);
        }
    }

    #[test]
    fn unsupported_and_malformed_keys_are_refused_with_reasons() {
        let dir = tempdir();
        let cases: [(&[&str], &str); 5] = [
            (
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:secp256k1",
                ],
                "secp256k1",
            ),
            (
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-521",
                ],
                "P-521",
            ),
            (&["genpkey", "-algorithm", "ED448"], "Ed448"),
            (
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:1024",
                ],
                "too small",
            ),
            (
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-pkeyopt",
                    "rsa_keygen_pubexp:3",
                ],
                "exponent 3",
            ),
        ];
        for (args, needle) in cases {
            let pem_text = openssl(args);
            let err = PrivateKey::from_pem("private_key_pem", &pem_text).unwrap_err();
            let DomainError::Invalid(errs) = err else {
                panic!("{err:?}")
            };
            assert_eq!(errs[0].field, "private_key_pem");
            assert!(
                errs[0].reason.contains(needle),
                "{needle}: {}",
                errs[0].reason
            );
            assert!(
                !errs[0].reason.contains("PRIVATE"),
                "no key material echoed: {}",
                errs[0].reason
            );
        }
        let plain = openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]);
        let path = dir.path().join("plain.pem");
        std::fs::write(&path, &plain).unwrap();
        let encrypted = openssl(&[
            "pkey",
            "-in",
            path.to_str().unwrap(),
            "-aes256",
            "-passout",
            "pass:x",
        ]);
        let bad = [
            ("", "no PEM private key"),
            ("hello", "no PEM private key"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA", "no END"),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
                "invalid base64",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "not a PKCS#8",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "found CERTIFICATE",
            ),
            (encrypted.as_str(), "encrypted"),
        ];
        for (input, needle) in bad {
            let err = PrivateKey::from_pem("key", input).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        let two = format!("{plain}{plain}");
        assert!(
            PrivateKey::from_pem("key", &two)
                .unwrap_err()
                .to_string()
                .contains("more than one")
        );
    }

    #[test]
    fn base64_codec_roundtrips_every_length() {
        for len in 0..70usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let pem_text = encode_pem("X", &data);
            let parsed = pem::parse(pem_text.as_bytes()).unwrap();
            assert_eq!(parsed.contents(), data.as_slice(), "len {len}");
            if len > 0 {
                let body: String = pem_text
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect();
                assert_eq!(
                    decode_base64(&body).unwrap().as_slice(),
                    data.as_slice(),
                    "len {len}"
                );
            }
        }
        assert!(decode_base64("AAA").is_none());
        assert!(decode_base64("AA=A").is_none());
    }
}
