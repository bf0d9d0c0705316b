//! Keys, CSRs and certificate checks the agent needs: key generation (PKCS#8
//! v1, which every consumer reads), CSRs via rcgen, and the checks that gate
//! an install (key matches certificate, names covered, chain signs the leaf).

use std::net::IpAddr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    RsaKeyPair,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use zeroize::Zeroizing;

use crate::config::KeyType;

/// Generates a key and returns it as PKCS#8 v1 PEM (kept in a wiped buffer).
pub fn generate_key(kt: KeyType) -> anyhow::Result<Zeroizing<String>> {
    let failed = |_| anyhow::anyhow!("key generation failed");
    let der: Zeroizing<Vec<u8>> = match kt {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
            let alg = if kt == KeyType::EcdsaP256 {
                &ECDSA_P256_SHA256_ASN1_SIGNING
            } else {
                &ECDSA_P384_SHA384_ASN1_SIGNING
            };
            let kp = EcdsaKeyPair::generate(alg).map_err(failed)?;
            Zeroizing::new(kp.to_pkcs8v1().map_err(failed)?.as_ref().to_vec())
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let size = match kt {
                KeyType::Rsa2048 => KeySize::Rsa2048,
                KeyType::Rsa3072 => KeySize::Rsa3072,
                _ => KeySize::Rsa4096,
            };
            let kp = RsaKeyPair::generate(size).map_err(failed)?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = kp.as_der().map_err(failed)?;
            Zeroizing::new(der.as_ref().to_vec())
        }
        KeyType::Ed25519 => {
            let kp = Ed25519KeyPair::generate().map_err(failed)?;
            Zeroizing::new(kp.to_pkcs8v1().map_err(failed)?.as_ref().to_vec())
        }
    };
    Ok(Zeroizing::new(pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        der.to_vec(),
    ))))
}

/// A PKCS#10 request (PEM) for `names` signed by `key_pem`, with `cn` as subject.
pub fn csr(key_pem: &str, cn: &str, names: &[String]) -> anyhow::Result<String> {
    let key = KeyPair::from_pem(key_pem).map_err(|_| anyhow::anyhow!("unreadable private key"))?;
    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| anyhow::anyhow!("names not usable in a CSR: {e}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let req = params
        .serialize_request(&key)
        .map_err(|e| anyhow::anyhow!("CSR signing failed: {e}"))?;
    req.pem()
        .map_err(|e| anyhow::anyhow!("CSR encoding failed: {e}"))
}

/// What the agent needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial, lower-case hex without separators.
    pub serial: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    /// DNS names and IP addresses (as text) of the SAN extension.
    pub names: Vec<String>,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// The raw public key (the subjectPublicKey bits).
    pub public_key: Vec<u8>,
}

/// SHA-256 of `der`, lower-case hex.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

/// Parses a DER certificate.
pub fn cert_info(der: &[u8]) -> anyhow::Result<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| anyhow::anyhow!("not a valid X.509 certificate"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(IpAddr::from(<[u8; 4]>::try_from(*b)?).to_string()),
                    16 => names.push(IpAddr::from(<[u8; 16]>::try_from(*b)?).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        serial: hex::encode(cert.tbs_certificate.raw_serial()),
        fingerprint: sha256_hex(der),
        names,
        not_after: cert.validity().not_after.to_datetime(),
        not_before: cert.validity().not_before.to_datetime(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Decodes every `CERTIFICATE` block of a PEM text.
pub fn pem_certs(text: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let blocks = pem::parse_many(text).map_err(|_| anyhow::anyhow!("malformed PEM certificate"))?;
    Ok(blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect())
}

/// PEM of one DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// The raw public key of a PEM private key.
pub fn key_public(key_pem: &str) -> anyhow::Result<Vec<u8>> {
    let key = KeyPair::from_pem(key_pem).map_err(|_| anyhow::anyhow!("unreadable private key"))?;
    Ok(key.public_key_raw().to_vec())
}

/// The checks that gate an install: the private key is the certificate's,
/// the certificate names everything requested, the chain's first certificate
/// signed the leaf, and the leaf is within its validity. Errors never carry key material.
pub fn check_material(
    leaf_der: &[u8],
    chain_der: &[Vec<u8>],
    key_pem: Option<&str>,
    requested: &[String],
    now: OffsetDateTime,
) -> anyhow::Result<CertInfo> {
    let info = cert_info(leaf_der)?;
    if let Some(k) = key_pem
        && key_public(k)? != info.public_key
    {
        anyhow::bail!("the certificate does not match the private key");
    }
    let missing: Vec<&String> = requested
        .iter()
        .filter(|n| !covers(&info.names, n))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the certificate's names {:?} do not cover the requested {missing:?}",
            info.names
        );
    }
    if let Some(issuer) = chain_der.first() {
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
            .map_err(|_| anyhow::anyhow!("not a valid X.509 certificate"))?;
        let (_, ca) = x509_parser::parse_x509_certificate(issuer)
            .map_err(|_| anyhow::anyhow!("the chain holds an invalid certificate"))?;
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|_| anyhow::anyhow!("the chain's first certificate did not sign the leaf"))?;
    }
    if now >= info.not_after {
        anyhow::bail!("the certificate expired at {}", info.not_after);
    }
    Ok(info)
}

/// Whether a requested name is in the certificate (exactly, or an IP in another spelling).
fn covers(have: &[String], want: &str) -> bool {
    let want = want.trim_end_matches('.').to_ascii_lowercase();
    let ip: Option<IpAddr> = want.parse().ok();
    have.iter()
        .any(|h| h == &want || (ip.is_some() && h.parse::<IpAddr>().ok() == ip))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer};

    /// A throwaway CA: its PEM and an issuer that signs leaves.
    pub(crate) struct TestCa {
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new() -> Self {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, "test ca");
            let cert = p.self_signed(&key).unwrap();
            Self {
                pem: cert.pem(),
                issuer: Issuer::new(p, key),
            }
        }

        /// A leaf for `names` and the given key PEM, as DER.
        pub(crate) fn leaf(&self, key_pem: &str, names: &[&str]) -> Vec<u8> {
            let key = KeyPair::from_pem(key_pem).unwrap();
            let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
            p.signed_by(&key, &self.issuer).unwrap().der().to_vec()
        }

        pub(crate) fn der(&self) -> Vec<u8> {
            pem_certs(&self.pem).unwrap().remove(0)
        }
    }

    #[test]
    fn keys_of_every_type_make_csrs_and_match_their_certificates() {
        let ca = TestCa::new();
        for kt in [
            KeyType::EcdsaP256,
            KeyType::EcdsaP384,
            KeyType::Rsa2048,
            KeyType::Ed25519,
        ] {
            let key = generate_key(kt).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
            let csr = csr(&key, "agent", &["a.example.com".into()]).unwrap();
            assert!(csr.contains("CERTIFICATE REQUEST"));
            let leaf = ca.leaf(&key, &["a.example.com", "10.0.0.7"]);
            let now = OffsetDateTime::now_utc();
            let info = check_material(
                &leaf,
                &[ca.der()],
                Some(&key),
                &["A.example.com".into(), "10.0.0.7".into()],
                now,
            )
            .unwrap();
            assert_eq!(info.fingerprint, sha256_hex(&leaf));
        }
    }

    #[test]
    fn a_mismatch_is_refused() {
        let ca = TestCa::new();
        let other_ca = TestCa::new();
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let other = generate_key(KeyType::EcdsaP256).unwrap();
        let leaf = ca.leaf(&key, &["a.example.com"]);
        let now = OffsetDateTime::now_utc();
        let e = check_material(&leaf, &[ca.der()], Some(&other), &[], now).unwrap_err();
        assert!(
            e.to_string().contains("does not match the private key"),
            "{e}"
        );
        let e = check_material(
            &leaf,
            &[ca.der()],
            Some(&key),
            &["b.example.com".into()],
            now,
        )
        .unwrap_err();
        assert!(e.to_string().contains("b.example.com"), "{e}");
        let e = check_material(&leaf, &[other_ca.der()], Some(&key), &[], now).unwrap_err();
        assert!(e.to_string().contains("did not sign"), "{e}");
        let late = cert_info(&leaf).unwrap().not_after + time::Duration::seconds(1);
        let e = check_material(&leaf, &[ca.der()], Some(&key), &[], late).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }
}
