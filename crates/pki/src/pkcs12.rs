//! PKCS#12 export (RFC 7292) with modern protection only: PBES2 with
//! PBKDF2-HMAC-SHA256 and AES-256-CBC (RFC 8018) for the key and the
//! certificates, and an HMAC-SHA256 MAC, which OpenSSL 3 reads without
//! `-legacy`.

use certflow_core::{DomainError, DomainResult};
use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKeyChain,
};

use crate::asn1::parse_cert;
use crate::inspect::key_matches_cert;
use crate::keys::PrivateKey;

/// PBKDF2 and MAC iteration count; OpenSSL 3 writes 2048, NIST SP 800-132
/// asks for as many as is tolerable. Exports are rare and interactive.
const ITERATIONS: u32 = 100_000;

/// Bundles the certificate, its chain (issuer first) and key into a
/// password-protected PKCS#12 file; the key bag is named `friendly_name`.
pub fn pkcs12(
    cert_der: &[u8],
    chain_der: &[Vec<u8>],
    key: &PrivateKey,
    password: &str,
    friendly_name: &str,
) -> DomainResult<Vec<u8>> {
    if password.is_empty() {
        return Err(DomainError::invalid("password", "must not be empty"));
    }
    if friendly_name.trim().is_empty() {
        return Err(DomainError::invalid("friendly_name", "must not be empty"));
    }
    parse_cert("certificate", cert_der)?;
    if !key_matches_cert(key, cert_der) {
        return Err(DomainError::invalid(
            "key",
            "does not match the certificate's public key",
        ));
    }
    let to_p12_cert = |field: &str, der: &[u8]| {
        Certificate::from_der(der)
            .map_err(|_| DomainError::invalid(field, "not a valid X.509 certificate"))
    };
    let mut certs = vec![to_p12_cert("certificate", cert_der)?];
    for der in chain_der {
        certs.push(to_p12_cert("chain", der)?);
    }
    let p12_key = p12_keystore::PrivateKey::from_der(key.pkcs8_der())
        .map_err(|_| DomainError::Internal("key rejected by the PKCS#12 encoder".into()))?;
    let local_key_id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der)
        .as_ref()
        .to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, p12_key, certs)),
    );
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(ITERATIONS)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(ITERATIONS)
        .write()
        .map_err(|e| match e {
            // BMPString cannot hold characters outside the BMP.
            p12_keystore::error::Error::DerError(_) => DomainError::invalid(
                "friendly_name",
                "must only contain characters of the Unicode BMP",
            ),
            _ => DomainError::Internal("PKCS#12 encoding failed".into()),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testutil::{ca, now};
    use certflow_core::{KeyType, Profile, SubjectName};
    use p12_keystore::Pkcs12ImportPolicy;

    #[test]
    fn roundtrips_through_p12_keystore() {
        for kt in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Ed25519] {
            let m = ca(KeyType::EcdsaP256);
            let leaf_key = crate::testutil::key(kt);
            let names = [SubjectName::Dns("p12.example.com".into())];
            let der = crate::issue::issue_leaf(
                &m.issuing_cert_der,
                &m.issuing_key,
                &crate::issue::LeafRequest {
                    profile: Profile::TlsClient,
                    names: &names,
                    spki_der: &leaf_key.public_key_der(),
                    key_type: kt,
                    validity_days: 30,
                    validity_secs: None,
                    now: now(),
                    urls: None,
                },
            )
            .unwrap();
            let chain = vec![m.issuing_cert_der.clone(), m.root_cert_der.clone()];
            let p12 = pkcs12(&der, &chain, &leaf_key, "s3cret", "p12.example.com").unwrap();
            let store = KeyStore::from_pkcs12(&p12, "s3cret", Pkcs12ImportPolicy::Strict).unwrap();
            let (alias, entry) = store.private_key_chain().unwrap();
            assert_eq!(alias, "p12.example.com");
            assert_eq!(entry.key().as_der(), leaf_key.pkcs8_der());
            let got: Vec<&[u8]> = entry.certs().iter().map(Certificate::as_der).collect();
            assert_eq!(
                got,
                vec![der.as_slice(), chain[0].as_slice(), chain[1].as_slice()]
            );
            assert!(KeyStore::from_pkcs12(&p12, "wrong", Pkcs12ImportPolicy::Strict).is_err());
        }
    }

    #[test]
    fn rejects_empty_password_and_foreign_key() {
        let m = ca(KeyType::EcdsaP256);
        let err = pkcs12(&m.issuing_cert_der, &[], &m.issuing_key, "", "x").unwrap_err();
        assert!(
            err.to_string().contains("password: must not be empty"),
            "{err}"
        );
        let err = pkcs12(
            &m.issuing_cert_der,
            &[],
            m.root_key.as_ref().unwrap(),
            "pw",
            "x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("key: does not match"), "{err}");
        let err = pkcs12(b"nope", &[], &m.issuing_key, "pw", "x").unwrap_err();
        assert!(err.to_string().contains("certificate:"), "{err}");
    }
}
