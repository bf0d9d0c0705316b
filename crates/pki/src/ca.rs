//! Certificate authorities: a fresh two-tier hierarchy (a root and one issuing
//! intermediate, RFC 5280 §4.2.1.3/§4.2.1.9, CA/B BR §7.1.2.1 and §7.1.2.10),
//! or an imported CA checked before certflow signs anything with it.

use certflow_core::{DomainError, DomainResult, KeyType, Profile, SubjectName};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Version;

use crate::asn1::{self, internal, parse_cert, whole_seconds};
use crate::inspect::{key_matches_cert, parse_pem_certs};
use crate::issue::{self, LeafRequest};
use crate::keys::PrivateKey;
use crate::signer::{CaPublicKey, Deferred, ToBeSigned, sign_locally};

/// Backdating of CA certificates, for relying parties with slow clocks.
const CLOCK_SKEW: Duration = Duration::seconds(60);

/// Upper bound of an X.520 commonName (RFC 5280 Appendix A, ub-common-name).
const MAX_CN_CHARS: usize = 64;

/// The certificates and keys of an issuer.
#[derive(Debug, Clone)]
pub struct CaMaterial {
    /// The self-signed root at the top of the chain.
    pub root_cert_der: Vec<u8>,
    /// The root's key; `None` for imported CAs (certflow never sees it).
    pub root_key: Option<PrivateKey>,
    /// The certificate leaves are issued under.
    pub issuing_cert_der: Vec<u8>,
    /// The issuing certificate's key.
    pub issuing_key: PrivateKey,
    /// Certificates above the issuing one, up to and including the root;
    /// empty when the issuing certificate is itself the root.
    pub chain_der: Vec<Vec<u8>>,
}

fn ca_name(org: &str, cn: String) -> DistinguishedName {
    // O before CN: the attribute order CA/B BR §7.1.4.1 prescribes.
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    dn
}

/// Checks the settings of a new hierarchy; returns the trimmed name.
fn check_new_ca(name: &str, root_days: u32, intermediate_days: u32) -> DomainResult<&str> {
    let name = name.trim();
    let issuing_cn = format!("{name} Issuing CA 1");
    let mut errors = Vec::new();
    if name.is_empty() {
        errors.push(certflow_core::FieldError::new("name", "must not be empty"));
    } else if name.chars().any(char::is_control) {
        errors.push(certflow_core::FieldError::new(
            "name",
            "must not contain control characters",
        ));
    } else if issuing_cn.chars().count() > MAX_CN_CHARS {
        errors.push(certflow_core::FieldError::new(
            "name",
            format!(
                "at most {} characters: \"<name> Issuing CA 1\" must fit the 64-character commonName limit",
                MAX_CN_CHARS - " Issuing CA 1".len()
            ),
        ));
    }
    if root_days == 0 {
        errors.push(certflow_core::FieldError::new(
            "root_days",
            "must be at least 1 day",
        ));
    }
    if intermediate_days == 0 {
        errors.push(certflow_core::FieldError::new(
            "intermediate_days",
            "must be at least 1 day",
        ));
    }
    if !errors.is_empty() {
        return Err(DomainError::Invalid(errors));
    }
    Ok(name)
}

/// Creates a root CA and an issuing intermediate signed by it, both with keys
/// of `key_type` generated here; the intermediate never outlives the root.
pub fn create_ca(
    name: &str,
    key_type: KeyType,
    now: OffsetDateTime,
    root_days: u32,
    intermediate_days: u32,
) -> DomainResult<CaMaterial> {
    check_new_ca(name, root_days, intermediate_days)?;
    let root_key = PrivateKey::generate(key_type)?;
    let issuing_key = PrivateKey::generate(key_type)?;
    let public = |k: &PrivateKey| CaPublicKey::from_spki_der("key", &k.public_key_der());
    let root_tbs = root_ca_tbs(name, &public(&root_key)?, now, root_days, intermediate_days)?;
    let root_der = sign_locally(&root_key, root_tbs)?;
    let issuing_tbs = issuing_ca_tbs(
        name,
        &root_der,
        &public(&issuing_key)?,
        now,
        intermediate_days,
    )?;
    let issuing_der = sign_locally(&root_key, issuing_tbs)?;
    Ok(CaMaterial {
        root_cert_der: root_der.clone(),
        root_key: Some(root_key),
        issuing_cert_der: issuing_der,
        issuing_key,
        chain_der: vec![root_der],
    })
}

/// What the root key of a new hierarchy signs: its own self-signed
/// certificate (`<name> Root CA`, keyCertSign and cRLSign, valid `root_days`).
/// `intermediate_days` is checked here too, so a bad setting is refused
/// before any key signs.
pub fn root_ca_tbs(
    name: &str,
    root: &CaPublicKey,
    now: OffsetDateTime,
    root_days: u32,
    intermediate_days: u32,
) -> DomainResult<ToBeSigned> {
    let name = check_new_ca(name, root_days, intermediate_days)?;
    let not_before = whole_seconds(now)? - CLOCK_SKEW;
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(name, format!("{name} Root CA"));
    params.serial_number = Some(asn1::random_serial()?);
    params.not_before = not_before;
    params.not_after = not_before + Duration::days(i64::from(root_days));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // A self-referencing AKI is optional (RFC 5280 §4.2.1.1) but recommended
    // for roots by CA/B BR §7.1.2.1.2, and helps path building.
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = asn1::key_identifier(root.bits());
    let placeholder = params
        .self_signed(&Deferred(root))
        .map_err(internal("root CA certificate"))?;
    ToBeSigned::from_placeholder(placeholder.der(), root)
}

/// What the root key signs for the issuing CA (`<name> Issuing CA 1`,
/// pathLen 0, serverAuth and clientAuth): the intermediate for `issuing`'s
/// key under the root certificate `root_cert_der`, never outliving it.
pub fn issuing_ca_tbs(
    name: &str,
    root_cert_der: &[u8],
    issuing: &CaPublicKey,
    now: OffsetDateTime,
    intermediate_days: u32,
) -> DomainResult<ToBeSigned> {
    let name = check_new_ca(name, 1, intermediate_days)?;
    let root_public = CaPublicKey::of_certificate(root_cert_der)?;
    let root = parse_cert("root", root_cert_der)
        .map_err(|_| DomainError::Internal("the root certificate does not parse".into()))?;
    let root_not_after = root.validity().not_after.to_datetime();
    let not_before = whole_seconds(now)? - CLOCK_SKEW;
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(name, format!("{name} Issuing CA 1"));
    params.serial_number = Some(asn1::random_serial()?);
    params.not_before = not_before;
    params.not_after =
        (not_before + Duration::days(i64::from(intermediate_days))).min(root_not_after);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    // CA/B BR §7.1.2.10.6: a TLS issuing CA states the purposes it issues for.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = asn1::key_identifier(issuing.bits());
    // Sign through the root as parsed back from DER, exactly as later
    // issuance sees a CA, so the AKI is the root's SKI as written.
    let deferred = Deferred(&root_public);
    let root_issuer = Issuer::from_ca_cert_der(&root_cert_der.into(), &deferred)
        .map_err(internal("root CA as issuer"))?;
    let placeholder = params
        .signed_by(issuing, &root_issuer)
        .map_err(internal("issuing CA certificate"))?;
    ToBeSigned::from_placeholder(placeholder.der(), &root_public)
}

fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Validity window and CA-ness of one certificate of the imported chain.
fn check_ca_cert(
    field: &str,
    what: &str,
    cert: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> DomainResult<()> {
    let bad = |reason: String| Err(DomainError::invalid(field, reason));
    let v1_root = cert.version() == X509Version::V1 && is_self_signed(cert);
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) if v1_root => {}
        Ok(_) => {
            return bad(format!(
                "{what} is not a CA certificate (basicConstraints cA is not true)"
            ));
        }
        Err(_) => return bad(format!("{what} has a malformed basicConstraints extension")),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return bad(format!(
                "{what} may not sign certificates (keyUsage lacks keyCertSign)"
            ));
        }
        Ok(_) => {}
        Err(_) => return bad(format!("{what} has a malformed keyUsage extension")),
    }
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        return bad(format!(
            "{what} is not valid before {}",
            fmt_time(not_before)
        ));
    }
    if now > not_after {
        return bad(format!("{what} expired at {}", fmt_time(not_after)));
    }
    Ok(())
}

/// Imports an existing CA. `cert_pem` starts with the issuing certificate;
/// any further certificates there or in `chain_pem` must lead, in order, up
/// to a self-signed root. Every certificate must be a valid CA at `now`, each
/// must have signed the one below it, and the key must match.
pub fn import_ca(
    cert_pem: &str,
    key_pem: &str,
    chain_pem: Option<&str>,
    now: OffsetDateTime,
) -> DomainResult<CaMaterial> {
    let now = whole_seconds(now)?;
    let mut certs = parse_pem_certs("certificate", cert_pem)?;
    let issuing_der = certs.remove(0);
    let mut chain_der = certs;
    if let Some(chain) = chain_pem.filter(|c| !c.trim().is_empty()) {
        chain_der.extend(parse_pem_certs("chain", chain)?);
    }
    let key = PrivateKey::from_pem("key", key_pem)?;

    let issuing = parse_cert("certificate", &issuing_der)?;
    check_ca_cert("certificate", "the certificate", &issuing, now)?;
    if !key_matches_cert(&key, &issuing_der) {
        return Err(DomainError::invalid(
            "key",
            "does not match the certificate's public key",
        ));
    }

    let chain: Vec<X509Certificate<'_>> = chain_der
        .iter()
        .enumerate()
        .map(|(i, der)| {
            parse_cert("chain", der).map_err(|_| {
                DomainError::invalid(
                    "chain",
                    format!("certificate {} is not a valid X.509 certificate", i + 1),
                )
            })
        })
        .collect::<DomainResult<_>>()?;
    let issuing_self_signed = is_self_signed(&issuing);
    if issuing_self_signed && !chain.is_empty() {
        return Err(DomainError::invalid(
            "chain",
            "the certificate is a self-signed root; no chain is expected above it",
        ));
    }
    if !issuing_self_signed && chain.is_empty() {
        return Err(DomainError::invalid(
            "chain",
            "the certificate is not self-signed: include the chain up to the root, issuer first",
        ));
    }
    let mut below = &issuing;
    for (i, cert) in chain.iter().enumerate() {
        let what = format!("chain certificate {} ({})", i + 1, cert.subject());
        check_ca_cert("chain", &what, cert, now)?;
        if below.issuer().as_raw() != cert.subject().as_raw()
            || below.verify_signature(Some(cert.public_key())).is_err()
        {
            return Err(DomainError::invalid(
                "chain",
                format!(
                    "{what} did not sign the certificate below it ({}); list the chain in order, issuer first",
                    below.subject()
                ),
            ));
        }
        below = cert;
    }
    if let Some(top) = chain.last()
        && !is_self_signed(top)
    {
        return Err(DomainError::invalid(
            "chain",
            format!(
                "the last chain certificate ({}) is not a self-signed root",
                top.subject()
            ),
        ));
    }

    trial_issue(&issuing_der, &key, now)?;

    let root_cert_der = chain_der
        .last()
        .cloned()
        .unwrap_or_else(|| issuing_der.clone());
    Ok(CaMaterial {
        root_cert_der,
        root_key: None,
        issuing_cert_der: issuing_der,
        issuing_key: key,
        chain_der,
    })
}

/// Signs a throwaway leaf before accepting the CA, so a CA certflow cannot
/// issue from correctly is refused at import rather than at first use.
fn trial_issue(issuing_der: &[u8], key: &PrivateKey, now: OffsetDateTime) -> DomainResult<()> {
    let kp = key.signing_key_pair();
    if let Err(e) = Issuer::from_ca_cert_der(&issuing_der.into(), kp.get()) {
        return Err(DomainError::invalid(
            "certificate",
            format!("certflow cannot reproduce the certificate's subject name ({e})"),
        ));
    }
    let probe = PrivateKey::generate(KeyType::EcdsaP256)?;
    let names = [SubjectName::Dns("import-check.invalid".into())];
    let req = LeafRequest {
        profile: Profile::TlsClient,
        names: &names,
        spki_der: &probe.public_key_der(),
        key_type: KeyType::EcdsaP256,
        validity_days: 1,
        validity_secs: None,
        now,
        urls: None,
    };
    let der = issue::build_leaf(issuing_der, key, &req)?;
    if !issue::issuer_name_matches(&der, issuing_der) {
        return Err(DomainError::invalid(
            "certificate",
            "certflow cannot reproduce the certificate's subject name exactly \
             (repeated attribute types or multi-valued RDNs are not supported)",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::inspect::{cert_to_pem, inspect};
    use crate::testutil::{ca, now, openssl_in};
    use x509_parser::prelude::FromDer;

    /// A self-signed P-256 CA written by openssl (SHA-1 SKI, as openssl computes it).
    fn openssl_ca(subject: &str) -> (String, String) {
        let dir = crate::testutil::tempdir();
        let d = dir.path();
        openssl_in(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        (
            std::fs::read_to_string(d.join("ca.pem")).unwrap(),
            std::fs::read_to_string(d.join("ca.key")).unwrap(),
        )
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        X509Certificate::from_der(der).unwrap().1
    }

    fn invalid(err: DomainError) -> (String, String) {
        match err {
            DomainError::Invalid(e) => (e[0].field.clone(), e[0].reason.clone()),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn created_hierarchy_has_the_documented_shape() {
        for kt in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Ed25519] {
            let m = ca(kt);
            assert_eq!(m.chain_der, vec![m.root_cert_der.clone()]);
            let root = parse(&m.root_cert_der);
            let inter = parse(&m.issuing_cert_der);
            assert_eq!(root.subject().to_string(), "O=Acme, CN=Acme Root CA");
            assert_eq!(inter.subject().to_string(), "O=Acme, CN=Acme Issuing CA 1");
            assert_eq!(inter.issuer().as_raw(), root.subject().as_raw());

            let bc = root.basic_constraints().unwrap().unwrap();
            assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());
            let ku = root.key_usage().unwrap().unwrap();
            assert!(
                ku.critical
                    && ku.value.key_cert_sign()
                    && ku.value.crl_sign()
                    && !ku.value.digital_signature()
            );

            let bc = inter.basic_constraints().unwrap().unwrap();
            assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint == Some(0));
            let ku = inter.key_usage().unwrap().unwrap();
            assert!(
                ku.critical
                    && ku.value.key_cert_sign()
                    && ku.value.crl_sign()
                    && ku.value.digital_signature()
            );

            let root_ski = asn1::subject_key_id(&root).unwrap();
            let rfc7093 = |c: &X509Certificate<'_>| {
                let d = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &c.public_key().subject_public_key.data,
                );
                d.as_ref()[..20].to_vec()
            };
            assert_eq!(root_ski, rfc7093(&root));
            assert_eq!(asn1::subject_key_id(&inter), Some(rfc7093(&inter)));
            let aki = inter
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                });
            assert_eq!(aki, Some(root_ski.clone()));
            let root_aki = root
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                });
            assert_eq!(root_aki, Some(root_ski));
            assert!(asn1::subject_key_id(&inter).is_some());
            inter.verify_signature(Some(root.public_key())).unwrap();
            root.verify_signature(None).unwrap();

            assert!(key_matches_cert(
                m.root_key.as_ref().unwrap(),
                &m.root_cert_der
            ));
            assert!(key_matches_cert(&m.issuing_key, &m.issuing_cert_der));
            assert_eq!(m.issuing_key.key_type(), kt);
            assert_ne!(root.raw_serial(), inter.raw_serial());
            assert!(inter.validity().not_after <= root.validity().not_after);
        }
    }

    #[test]
    fn intermediate_never_outlives_root() {
        let m = create_ca("Short", KeyType::EcdsaP256, now(), 10, 400).unwrap();
        let root = inspect(&m.root_cert_der).unwrap();
        let inter = inspect(&m.issuing_cert_der).unwrap();
        assert_eq!(inter.not_after, root.not_after);
        assert_eq!(root.not_after - root.not_before, Duration::days(10));
    }

    #[test]
    fn create_rejects_bad_parameters() {
        let err = create_ca(" ", KeyType::EcdsaP256, now(), 0, 0).unwrap_err();
        let DomainError::Invalid(errs) = err else {
            panic!()
        };
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "root_days", "intermediate_days"]);
        let long = "x".repeat(52);
        let (field, reason) =
            invalid(create_ca(&long, KeyType::EcdsaP256, now(), 1, 1).unwrap_err());
        assert_eq!(field, "name");
        assert!(reason.contains("at most 51"), "{reason}");
        assert!(create_ca(&"x".repeat(51), KeyType::EcdsaP256, now(), 1, 1).is_ok());
    }

    #[test]
    fn imports_a_created_intermediate_and_a_bare_root() {
        let m = ca(KeyType::EcdsaP384);
        let cert = cert_to_pem(&m.issuing_cert_der);
        let key = m.issuing_key.to_pem();
        let chain = cert_to_pem(&m.root_cert_der);

        let imported = import_ca(&cert, &key, Some(&chain), now()).unwrap();
        assert_eq!(imported.issuing_cert_der, m.issuing_cert_der);
        assert_eq!(imported.root_cert_der, m.root_cert_der);
        assert_eq!(imported.chain_der, vec![m.root_cert_der.clone()]);
        assert!(imported.root_key.is_none());
        assert_eq!(imported.issuing_key.pkcs8_der(), m.issuing_key.pkcs8_der());

        // The chain may also follow the certificate in the same PEM.
        let bundled = import_ca(&format!("{cert}{chain}"), &key, None, now()).unwrap();
        assert_eq!(bundled.chain_der, imported.chain_der);

        let root_key = m.root_key.as_ref().unwrap().to_pem();
        let root = import_ca(&chain, &root_key, None, now()).unwrap();
        assert_eq!(root.root_cert_der, m.root_cert_der);
        assert!(root.chain_der.is_empty());
    }

    #[test]
    fn imports_an_openssl_ca_with_an_sha1_ski() {
        let (cert, key) = openssl_ca("/C=DE/O=Example GmbH/CN=Example CA");
        let m = import_ca(&cert, &key, None, now()).unwrap();
        assert!(m.chain_der.is_empty());
        assert_eq!(m.root_cert_der, m.issuing_cert_der);
    }

    #[test]
    fn import_rejects_what_it_cannot_trust() {
        let m = ca(KeyType::EcdsaP256);
        let other = ca(KeyType::Ed25519);
        let cert = cert_to_pem(&m.issuing_cert_der);
        let key = m.issuing_key.to_pem();
        let chain = cert_to_pem(&m.root_cert_der);
        let t = now();

        // (certificate, key, chain, now, field, reason fragment)
        type Case = (
            String,
            String,
            Option<String>,
            OffsetDateTime,
            &'static str,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            // Wrong key.
            (
                cert.clone(),
                other.issuing_key.to_pem().to_string(),
                Some(chain.clone()),
                t,
                "key",
                "does not match",
            ),
            // No chain for an intermediate.
            (
                cert.clone(),
                key.to_string(),
                None,
                t,
                "chain",
                "not self-signed",
            ),
            // A chain that did not sign it.
            (
                cert.clone(),
                key.to_string(),
                Some(cert_to_pem(&other.root_cert_der)),
                t,
                "chain",
                "did not sign",
            ),
            // Expired, and not yet valid.
            (
                cert.clone(),
                key.to_string(),
                Some(chain.clone()),
                t + Duration::days(4000),
                "certificate",
                "expired",
            ),
            (
                cert.clone(),
                key.to_string(),
                Some(chain.clone()),
                t - Duration::days(2),
                "certificate",
                "not valid before",
            ),
            // Not PEM certificates at all.
            (
                "nope".into(),
                key.to_string(),
                None,
                t,
                "certificate",
                "no CERTIFICATE",
            ),
            (
                cert.clone(),
                key.to_string(),
                Some("nope".into()),
                t,
                "chain",
                "no CERTIFICATE",
            ),
            (
                cert.clone(),
                "nope".into(),
                Some(chain.clone()),
                t,
                "key",
                "no PEM private key",
            ),
            // A root with a superfluous chain.
            (
                chain.clone(),
                m.root_key.as_ref().unwrap().to_pem().to_string(),
                Some(chain.clone()),
                t,
                "chain",
                "self-signed root",
            ),
        ];
        for (c, k, ch, at, field, needle) in cases {
            let (f, r) = invalid(import_ca(&c, &k, ch.as_deref(), at).unwrap_err());
            assert_eq!(f, field, "{needle}: {r}");
            assert!(r.contains(needle), "{needle}: {r}");
        }
    }

    #[test]
    fn import_rejects_a_leaf_as_ca() {
        let m = ca(KeyType::EcdsaP256);
        let leaf_key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let names = [SubjectName::Dns("leaf.example.com".into())];
        let req = LeafRequest {
            profile: Profile::TlsServer,
            names: &names,
            spki_der: &leaf_key.public_key_der(),
            key_type: KeyType::EcdsaP256,
            validity_days: 30,
            validity_secs: None,
            now: now(),
            urls: None,
        };
        let leaf = crate::issue::issue_leaf(&m.issuing_cert_der, &m.issuing_key, &req).unwrap();
        let (f, r) = invalid(
            import_ca(
                &cert_to_pem(&leaf),
                &leaf_key.to_pem(),
                Some(&format!(
                    "{}{}",
                    cert_to_pem(&m.issuing_cert_der),
                    cert_to_pem(&m.root_cert_der)
                )),
                now(),
            )
            .unwrap_err(),
        );
        assert_eq!(f, "certificate");
        assert!(r.contains("not a CA"), "{r}");
    }

    #[test]
    fn import_rejects_names_it_cannot_reproduce() {
        let (cert, key) = openssl_ca("/DC=com/DC=example/CN=Two DCs");
        let (f, r) = invalid(import_ca(&cert, &key, None, now()).unwrap_err());
        assert_eq!(f, "certificate");
        assert!(r.contains("subject name"), "{r}");
    }
}
