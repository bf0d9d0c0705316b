//! Signing with a CA key certflow may not hold. Everything a CA signs
//! (certificates, CRLs) is `SIGNED{ToBeSigned}` (RFC 5280 §4.1.1.3, §5.1.1.3):
//! the TBS is built here with a stand-in signer that knows only the key's
//! public half, handed out as a [`ToBeSigned`], signed wherever the key lives
//! (in process, a PKCS#11 token, AWS KMS), and finished here, where the
//! signature is checked against the public key before anything leaves.
//!
//! A remote backend only ever sees the digest of the TBS (`MessageType =
//! DIGEST` in KMS, `CKM_ECDSA` / `CKM_RSA_PKCS` on a token), so Ed25519
//! CA keys, which sign the whole message, stay with the local backend.

use aws_lc_rs::digest::{self, SHA256, SHA384};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ED25519, RSA_PKCS1_2048_8192_SHA256,
    UnparsedPublicKey, VerificationAlgorithm,
};
use certflow_core::{DomainError, DomainResult, KeyType};
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use x509_parser::asn1_rs::{Any, FromDer};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::asn1::{self, tlv};
use crate::keys::PrivateKey;

/// The public half of a CA key and its type: all certflow needs to build
/// what the key will sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPublicKey {
    key_type: KeyType,
    spki_der: Vec<u8>,
    bits: Vec<u8>,
}

impl CaPublicKey {
    /// From a SubjectPublicKeyInfo DER (what a token or KMS `GetPublicKey`
    /// returns); keys certflow does not certify are refused under `field`.
    pub fn from_spki_der(field: &str, der: &[u8]) -> DomainResult<Self> {
        match SubjectPublicKeyInfo::from_der(der) {
            Ok(([], spki)) => {
                let key_type =
                    asn1::classify_spki(&spki).map_err(|r| DomainError::invalid(field, r))?;
                Ok(Self {
                    key_type,
                    spki_der: der.to_vec(),
                    bits: spki.subject_public_key.data.to_vec(),
                })
            }
            _ => Err(DomainError::invalid(
                field,
                "not a valid DER SubjectPublicKeyInfo",
            )),
        }
    }

    /// The public key of a DER certificate (a CA's, as stored).
    pub fn of_certificate(cert_der: &[u8]) -> DomainResult<Self> {
        let cert = asn1::parse_cert("certificate", cert_der)
            .map_err(|_| DomainError::Internal("the CA certificate does not parse".into()))?;
        Self::from_spki_der("certificate", cert.public_key().raw)
            .map_err(|e| DomainError::Internal(format!("the CA certificate's key: {e}")))
    }

    /// The key's algorithm and size.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Whether both are the same key (whatever optional encoding details
    /// their SubjectPublicKeyInfos differ in).
    pub fn same_key(&self, other: &CaPublicKey) -> bool {
        self.key_type == other.key_type && self.bits == other.bits
    }

    /// The SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The subjectPublicKey bits (an EC point, an RSAPublicKey DER, ...).
    pub(crate) fn bits(&self) -> &[u8] {
        &self.bits
    }

    fn verification(&self) -> &'static dyn VerificationAlgorithm {
        match self.key_type {
            KeyType::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
            KeyType::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &RSA_PKCS1_2048_8192_SHA256,
            KeyType::Ed25519 => &ED25519,
        }
    }
}

impl PublicKeyData for CaPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        asn1::signature_algorithm(self.key_type)
    }
}

/// The stand-in signer: rcgen asks it for a signature, gets a placeholder,
/// and the TBS is then cut out of what rcgen wrote.
pub(crate) struct Deferred<'a>(pub(crate) &'a CaPublicKey);

impl PublicKeyData for Deferred<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for Deferred<'_> {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(vec![0])
    }
}

/// The hash a remote CA key signs (`MessageType = DIGEST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// SHA-256: P-256 and every RSA size (sha256WithRSAEncryption).
    Sha256,
    /// SHA-384: P-384.
    Sha384,
}

impl DigestAlgorithm {
    /// The digest algorithm a CA key of this type signs through, or `None`
    /// for Ed25519 (which signs the whole message).
    pub fn for_key_type(kt: KeyType) -> Option<Self> {
        match kt {
            KeyType::EcdsaP384 => Some(Self::Sha384),
            KeyType::Ed25519 => None,
            _ => Some(Self::Sha256),
        }
    }

    /// The digest of `message`.
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha256 => &SHA256,
            Self::Sha384 => &SHA384,
        };
        digest::digest(alg, message).as_ref().to_vec()
    }

    /// The DigestInfo prefix of PKCS#1 v1.5 signatures (RFC 8017 §9.2 note 1).
    pub fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Self::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Self::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
        }
    }
}

/// Something a CA key must sign: the DER of a TBSCertificate or TBSCertList,
/// with the signature algorithm it names, waiting for its signature.
#[derive(Debug, Clone)]
pub struct ToBeSigned {
    tbs: Vec<u8>,
    algorithm: Vec<u8>,
    signer: CaPublicKey,
}

/// The raw TLVs of a DER SEQUENCE's first two elements.
fn first_two(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (rest, outer) = Any::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let body = outer.data;
    let (after_tbs, _) = Any::from_der(body).ok()?;
    let tbs = &body[..body.len() - after_tbs.len()];
    let (after_alg, _) = Any::from_der(after_tbs).ok()?;
    let alg = &after_tbs[..after_tbs.len() - after_alg.len()];
    Some((tbs, alg))
}

impl ToBeSigned {
    /// Cuts the TBS and the algorithm out of a structure rcgen signed with [`Deferred`].
    pub(crate) fn from_placeholder(signed_der: &[u8], signer: &CaPublicKey) -> DomainResult<Self> {
        let (tbs, algorithm) = first_two(signed_der).ok_or_else(|| {
            DomainError::Internal("a structure we built is not SIGNED{...} DER".into())
        })?;
        Ok(Self {
            tbs: tbs.to_vec(),
            algorithm: algorithm.to_vec(),
            signer: signer.clone(),
        })
    }

    /// The DER the key signs (whole; local keys sign this).
    pub fn message(&self) -> &[u8] {
        &self.tbs
    }

    /// The type of the key that must sign.
    pub fn key_type(&self) -> KeyType {
        self.signer.key_type
    }

    /// The digest a remote key signs, and with which algorithm; `Invalid`
    /// for Ed25519, whose signatures cover the whole message.
    pub fn digest(&self) -> DomainResult<(DigestAlgorithm, Vec<u8>)> {
        let alg = DigestAlgorithm::for_key_type(self.signer.key_type).ok_or_else(|| {
            DomainError::invalid(
                "key_type",
                "Ed25519 CA keys sign whole messages: only the local key backend holds them",
            )
        })?;
        Ok((alg, alg.digest(&self.tbs)))
    }

    /// The signed structure: `SEQUENCE { tbs, algorithm, BIT STRING signature }`,
    /// once the signature verifies under the public key (ECDSA signatures are
    /// DER `Ecdsa-Sig-Value`, RSA ones PKCS#1 v1.5). A signature that does
    /// not verify is the backend's fault (wrong key, wrong mechanism), never
    /// published.
    pub fn finish(self, signature: &[u8]) -> DomainResult<Vec<u8>> {
        UnparsedPublicKey::new(self.signer.verification(), &self.signer.bits)
            .verify(&self.tbs, signature)
            .map_err(|_| {
                DomainError::Internal(
                    "the CA key's signature does not verify under the CA's public key".into(),
                )
            })?;
        let mut bits = Vec::with_capacity(signature.len() + 1);
        bits.push(0); // no unused bits
        bits.extend_from_slice(signature);
        let mut body = self.tbs;
        body.extend(self.algorithm);
        body.extend(tlv(0x03, &bits));
        Ok(tlv(0x30, &body))
    }
}

/// Signs `tbs` with a key held in process and finishes it.
/// A key that is not the CA's fails [`ToBeSigned::finish`]'s check.
pub fn sign_locally(key: &PrivateKey, tbs: ToBeSigned) -> DomainResult<Vec<u8>> {
    let signature = key.sign(tbs.message())?;
    tbs.finish(&signature)
}

/// ECDSA `r || s` (what PKCS#11 `CKM_ECDSA` returns, each half `coord` octets)
/// as DER `Ecdsa-Sig-Value` (RFC 3279 §2.2.3), what X.509 carries.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> DomainResult<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(DomainError::Internal(format!(
            "an ECDSA signature of {} octets is not r || s",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let integer = |v: &[u8]| {
        let v = asn1::strip_leading_zeros(v);
        let mut content = Vec::with_capacity(v.len() + 1);
        if v.first().is_none_or(|b| b & 0x80 != 0) {
            content.push(0);
        }
        content.extend_from_slice(v);
        tlv(0x02, &content)
    };
    Ok(tlv(0x30, &[integer(r), integer(s)].concat()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testutil::key;

    #[test]
    fn public_keys_of_every_type_round_trip() {
        for kt in KeyType::ALL {
            let k = key(kt);
            let public = CaPublicKey::from_spki_der("k", &k.public_key_der()).unwrap();
            assert_eq!(public.key_type(), kt);
            assert_eq!(public.spki_der(), k.public_key_der().as_slice());
            assert_eq!(
                DigestAlgorithm::for_key_type(kt).is_none(),
                kt == KeyType::Ed25519
            );
        }
        assert!(CaPublicKey::from_spki_der("k", b"nope").is_err());
    }

    #[test]
    fn a_signature_by_another_key_is_never_finished() {
        let m = crate::testutil::ca(KeyType::EcdsaP256);
        let tbs = crate::crl::crl_tbs(
            &m.issuing_cert_der,
            &[],
            1,
            crate::testutil::now(),
            crate::testutil::now() + time::Duration::days(1),
        )
        .unwrap();
        let other = key(KeyType::EcdsaP256).sign(tbs.message()).unwrap();
        assert!(matches!(
            tbs.clone().finish(&other),
            Err(DomainError::Internal(_))
        ));
        assert!(sign_locally(&key(KeyType::EcdsaP256), tbs.clone()).is_err());
        let der = sign_locally(&m.issuing_key, tbs).unwrap();
        assert!(x509_parser::parse_x509_crl(&der).is_ok());
    }

    #[test]
    fn a_hierarchy_from_public_keys_alone_verifies() {
        // What the remote backends do: build from public halves, sign elsewhere.
        let now = crate::testutil::now();
        for kt in [KeyType::EcdsaP384, KeyType::Rsa2048] {
            let (root_key, issuing_key) = (PrivateKey::generate(kt).unwrap(), key(kt));
            let public =
                |k: &PrivateKey| CaPublicKey::from_spki_der("k", &k.public_key_der()).unwrap();
            let root_tbs =
                crate::ca::root_ca_tbs("Remote", &public(&root_key), now, 30, 20).unwrap();
            assert_eq!(
                root_tbs.digest().unwrap().0,
                DigestAlgorithm::for_key_type(kt).unwrap()
            );
            let root = sign_locally(&root_key, root_tbs).unwrap();
            let issuing_tbs =
                crate::ca::issuing_ca_tbs("Remote", &root, &public(&issuing_key), now, 20).unwrap();
            let issuing = sign_locally(&root_key, issuing_tbs).unwrap();
            let (r, i) = (
                asn1::parse_cert("r", &root).unwrap(),
                asn1::parse_cert("i", &issuing).unwrap(),
            );
            r.verify_signature(None).unwrap();
            i.verify_signature(Some(r.public_key())).unwrap();
            assert_eq!(i.public_key().raw, issuing_key.public_key_der().as_slice());
            assert_eq!(i.issuer().as_raw(), r.subject().as_raw());
        }
    }

    #[test]
    fn raw_ecdsa_signatures_become_der() {
        // r with its top bit set gets a 0x00; s with leading zeros loses them.
        let mut raw = vec![0x80; 32];
        raw.extend([0u8; 31]);
        raw.push(0x05);
        let der = ecdsa_raw_to_der(&raw).unwrap();
        let mut want = vec![0x30, 0x26, 0x02, 0x21, 0x00];
        want.extend([0x80; 32]);
        want.extend([0x02, 0x01, 0x05]);
        assert_eq!(der, want);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
    }
}
