//! Leaf issuance. The certificate is built from the profile alone (RFC 5280
//! §4.2, CA/B BR §7.1.2.7 for TLS server certificates); the requester only
//! contributes a public key and already-validated names.

use certflow_core::{DomainError, DomainResult, KeyType, Profile, SubjectName};
use rcgen::{
    CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, PublicKeyData, SanType,
    SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::asn1::{self, internal, tlv, whole_seconds};
use crate::inspect::key_matches_cert;
use crate::keys::PrivateKey;
use crate::lint::{LintContext, LintRefusal, lint_leaf_under};
use crate::signer::{CaPublicKey, Deferred, ToBeSigned, sign_locally};

/// Backdating of notBefore, for relying parties whose clocks run behind.
pub(crate) const CLOCK_SKEW: Duration = Duration::seconds(60);

/// Where relying parties fetch the issuer certificate and its CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerUrls {
    /// HTTP URL of the issuing CA certificate (AIA caIssuers, RFC 5280 §4.2.2.1).
    pub ca_issuers: String,
    /// HTTP URL of the issuer's CRL (CRL distribution point, RFC 5280 §4.2.1.13).
    pub crl: String,
    /// HTTP URL of the issuer's OCSP responder (AIA id-ad-ocsp, RFC 5280 §4.2.2.1).
    pub ocsp: Option<String>,
}

/// Everything a leaf certificate is built from.
#[derive(Debug, Clone)]
pub struct LeafRequest<'a> {
    /// The profile, which alone decides the extensions.
    pub profile: Profile,
    /// Validated subject alternative names; the first suitable one becomes the CN.
    pub names: &'a [SubjectName],
    /// The subject's SubjectPublicKeyInfo DER.
    pub spki_der: &'a [u8],
    /// The subject key's type, which must match `spki_der`.
    pub key_type: KeyType,
    /// Requested lifetime; capped at the issuer's notAfter.
    pub validity_days: u32,
    /// Exact lifetime in seconds for short-lived certificates (at least 60);
    /// overrides `validity_days`, within the same profile maximum.
    pub validity_secs: Option<u32>,
    /// Issue time.
    pub now: OffsetDateTime,
    /// AIA and CRL DP URLs, when the issuer publishes them.
    pub urls: Option<&'a IssuerUrls>,
}

/// certificatePolicies = { 2.23.140.1.2.1 } (CA/B domain-validated), DER.
const DV_POLICIES: &[u8] = &[
    0x30, 0x0a, 0x30, 0x08, 0x06, 0x06, 0x67, 0x81, 0x0c, 0x01, 0x02, 0x01,
];

/// The subject key as rcgen writes it into the certificate.
pub(crate) struct SubjectKey {
    alg: &'static SignatureAlgorithm,
    pub(crate) key: Vec<u8>,
}

impl PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Issues a leaf certificate under the CA and returns its DER.
pub fn issue_leaf(
    ca_cert_der: &[u8],
    ca_key: &PrivateKey,
    req: &LeafRequest<'_>,
) -> DomainResult<Vec<u8>> {
    issue_leaf_linted(ca_cert_der, ca_key, req)?
        .map_err(|refusal| DomainError::Conflict(refusal.to_string()))
}

/// Whether the leaf's issuer field is byte-identical to the CA's subject
/// (rcgen re-encodes the name; RFC 5280 §7.1 path building compares them).
pub(crate) fn issuer_name_matches(leaf_der: &[u8], ca_der: &[u8]) -> bool {
    match (
        x509_parser::parse_x509_certificate(leaf_der),
        x509_parser::parse_x509_certificate(ca_der),
    ) {
        (Ok((_, leaf)), Ok((_, ca))) => leaf.issuer().as_raw() == ca.subject().as_raw(),
        _ => false,
    }
}

/// The leaf's subject commonName: the first DNS name that fits the 64-character
/// limit, else the first IP address; CA/B BR §7.1.4.3 wants it among the SANs.
pub(crate) fn common_name(names: &[SubjectName]) -> Option<String> {
    names
        .iter()
        .find_map(|n| match n {
            SubjectName::Dns(d) if d.len() <= 64 => Some(d.clone()),
            _ => None,
        })
        .or_else(|| {
            names.iter().find_map(|n| match n {
                SubjectName::Ip(ip) => Some(ip.to_string()),
                _ => None,
            })
        })
}

fn check_url(url: &str) -> Result<(), String> {
    // CA/B BR §7.1.2.7.7/§7.1.2.11.2 require plain http for AIA and CRL DP.
    if !url.starts_with("http://") || url.len() <= "http://".len() {
        return Err(format!("'{url}' is not an http:// URL"));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("'{url}' contains spaces or non-ASCII characters"));
    }
    Ok(())
}

/// AuthorityInfoAccess (RFC 5280 §4.2.2.1): the OCSP responder, when there
/// is one, then the caIssuers HTTP URL.
fn aia(ca_issuers: &str, ocsp: Option<&str>) -> Vec<u8> {
    let access = |arc: u8, url: &str| {
        // id-ad-ocsp 1.3.6.1.5.5.7.48.1, id-ad-caIssuers 1.3.6.1.5.5.7.48.2
        let method = tlv(0x06, &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, arc]);
        let location = tlv(0x86, url.as_bytes()); // [6] uniformResourceIdentifier
        tlv(0x30, &[method, location].concat())
    };
    let mut seq = ocsp.map(|u| access(0x01, u)).unwrap_or_default();
    seq.extend(access(0x02, ca_issuers));
    tlv(0x30, &seq)
}

/// Checks everything the caller supplied; every problem is reported at once.
fn check_request(req: &LeafRequest<'_>) -> DomainResult<(SubjectKey, Vec<SanType>)> {
    let mut errors = Vec::new();
    if req.names.is_empty() {
        errors.push(certflow_core::FieldError::new(
            "names",
            "at least one name is required",
        ));
    }
    if let Some(secs) = req.validity_secs {
        if secs < 60 || u64::from(secs) > u64::from(req.profile.max_validity_days()) * 86_400 {
            errors.push(certflow_core::FieldError::new(
                "validity_seconds",
                format!(
                    "must be between 60 and {} seconds for profile {}",
                    u64::from(req.profile.max_validity_days()) * 86_400,
                    req.profile.as_str()
                ),
            ));
        }
    } else if req.validity_days == 0 {
        errors.push(certflow_core::FieldError::new(
            "validity_days",
            "must be at least 1 day",
        ));
    } else if req.validity_days > req.profile.max_validity_days() {
        errors.push(certflow_core::FieldError::new(
            "validity_days",
            format!(
                "at most {} days for profile {}",
                req.profile.max_validity_days(),
                req.profile.as_str()
            ),
        ));
    }
    if let Some(urls) = req.urls {
        for (field, url) in [
            ("urls.ca_issuers", &urls.ca_issuers),
            ("urls.crl", &urls.crl),
        ]
        .into_iter()
        .chain(urls.ocsp.as_ref().map(|u| ("urls.ocsp", u)))
        {
            if let Err(reason) = check_url(url) {
                errors.push(certflow_core::FieldError::new(field, reason));
            }
        }
    }
    let subject_key = subject_key(&mut errors, req.spki_der, req.key_type, "public_key");
    let mut sans = Vec::with_capacity(req.names.len());
    for (i, name) in req.names.iter().enumerate() {
        match name {
            // Wildcards are a TLS server convention (RFC 6125 §6.4.3); RFC 5280
            // gives them no meaning, and no client authenticates as "*".
            SubjectName::Dns(d) if d.starts_with("*.") && req.profile != Profile::TlsServer => {
                errors.push(certflow_core::FieldError::new(
                    format!("names[{i}]"),
                    format!(
                        "wildcard names are only allowed in {} certificates",
                        Profile::TlsServer.as_str()
                    ),
                ));
            }
            SubjectName::Dns(d) => match d.as_str().try_into() {
                Ok(ia5) => sans.push(SanType::DnsName(ia5)),
                Err(_) => errors.push(certflow_core::FieldError::new(
                    format!("names[{i}]"),
                    "not an ASCII DNS name",
                )),
            },
            SubjectName::Ip(ip) => sans.push(SanType::IpAddress(*ip)),
        }
    }
    match subject_key {
        Some(key) if errors.is_empty() => Ok((key, sans)),
        _ => Err(DomainError::Invalid(errors)),
    }
}

/// Builds, lints and signs the leaf without the post-issuance name check.
/// Used to try a CA at import: a lint refusal there means the CA offered is
/// one certflow cannot issue from correctly, which is the caller's to fix.
pub(crate) fn build_leaf(
    ca_cert_der: &[u8],
    ca_key: &PrivateKey,
    req: &LeafRequest<'_>,
) -> DomainResult<Vec<u8>> {
    let tbs = prepare_leaf(ca_cert_der, req)?.map_err(|refusal| {
        DomainError::invalid(
            "certificate",
            format!("certflow cannot issue correct certificates from this CA ({refusal})"),
        )
    })?;
    sign_locally(ca_key, tbs)
}

/// Issues a leaf certificate under the CA, or says which pre-issuance lints
/// refused it (the CA key then signed nothing).
pub fn issue_leaf_linted(
    ca_cert_der: &[u8],
    ca_key: &PrivateKey,
    req: &LeafRequest<'_>,
) -> DomainResult<Result<Vec<u8>, LintRefusal>> {
    if !key_matches_cert(ca_key, ca_cert_der) {
        return Err(DomainError::Internal(
            "the CA key does not match the CA certificate".into(),
        ));
    }
    match prepare_leaf(ca_cert_der, req)? {
        Ok(tbs) => sign_locally(ca_key, tbs).map(Ok),
        Err(refusal) => Ok(Err(refusal)),
    }
}

/// Builds the leaf and lints it: the TBS the CA key must sign (byte for
/// byte the one linted), or the lints that refused it. The CA certificate
/// alone decides issuer, AKI and signature algorithm, so the key may live
/// anywhere ([`ToBeSigned`]).
pub fn prepare_leaf(
    ca_cert_der: &[u8],
    req: &LeafRequest<'_>,
) -> DomainResult<Result<ToBeSigned, LintRefusal>> {
    build_leaf_linted_under(ca_cert_der, &parse_ca(ca_cert_der)?, req)
}

/// The CA certificate `ca_cert_der`, parsed: once an issuance, for every
/// step that reads it (each parse is a visible share of an issuance's CPU).
fn parse_ca(ca_cert_der: &[u8]) -> DomainResult<X509Certificate<'_>> {
    asn1::parse_cert("issuer", ca_cert_der)
        .map_err(|_| DomainError::Internal("the CA certificate does not parse".into()))
}

/// [`prepare_leaf`] under `ca_cert`, the certificate `ca_cert_der` parsed.
fn build_leaf_linted_under(
    ca_cert_der: &[u8],
    ca_cert: &X509Certificate<'_>,
    req: &LeafRequest<'_>,
) -> DomainResult<Result<ToBeSigned, LintRefusal>> {
    let (params, subject_key) = leaf_params_under(ca_cert, req)?;
    let ca = CaPublicKey::from_spki_der("certificate", ca_cert.public_key().raw)
        .map_err(|e| DomainError::Internal(format!("the CA certificate's key: {e}")))?;
    let ctx = LintContext {
        profile: req.profile,
        key_type: req.key_type,
        issuer_der: ca_cert_der,
        backdate: CLOCK_SKEW,
        foreign: false,
    };
    linted_tbs(&params, &subject_key, ca_cert_der, ca_cert, &ca, &ctx)
}

/// Builds the certificate with a placeholder signature, lints it, and only
/// if no lint objects returns its TBS for the CA key to sign. What is
/// linted is what is signed (Boulder's rule) by construction: the TBS is
/// cut out of the very bytes the lints read. Boulder lints a copy signed by
/// a throwaway key because zlint wants a whole certificate; our lints read
/// no signature value (the algorithm identifiers are the CA key's here), so
/// that extra signature, build and parse would buy nothing.
pub(crate) fn linted_tbs(
    params: &CertificateParams,
    subject_key: &SubjectKey,
    ca_cert_der: &[u8],
    ca_cert: &X509Certificate<'_>,
    ca: &CaPublicKey,
    ctx: &LintContext<'_>,
) -> DomainResult<Result<ToBeSigned, LintRefusal>> {
    // from_ca_cert_der takes the CA's SKI verbatim as our AKI, whatever
    // method computed it (openssl uses SHA-1, rcgen truncated SHA-256), and
    // its subject as our issuer.
    let deferred = Deferred(ca);
    let issuer = Issuer::from_ca_cert_der(&ca_cert_der.into(), &deferred)
        .map_err(internal("CA certificate as issuer"))?;
    let placeholder = params
        .signed_by(subject_key, &issuer)
        .map_err(internal("leaf certificate"))?;
    let findings = lint_leaf_under(placeholder.der(), ca_cert, ctx);
    if !findings.is_empty() {
        return Ok(Err(LintRefusal { findings }));
    }
    ToBeSigned::from_placeholder(placeholder.der(), ca).map(Ok)
}

/// The leaf's parameters and subject key, from the profile and the request.
#[cfg(test)]
pub(crate) fn leaf_params(
    ca_cert_der: &[u8],
    req: &LeafRequest<'_>,
) -> DomainResult<(CertificateParams, SubjectKey)> {
    leaf_params_under(&parse_ca(ca_cert_der)?, req)
}

/// [`leaf_params`] under the parsed CA certificate `ca`.
fn leaf_params_under(
    ca: &X509Certificate<'_>,
    req: &LeafRequest<'_>,
) -> DomainResult<(CertificateParams, SubjectKey)> {
    let (subject_key, sans) = check_request(req)?;

    if !ca.is_ca() {
        return Err(DomainError::Internal(
            "the issuer certificate is not a CA".into(),
        ));
    }
    let not_before = whole_seconds(req.now)? - CLOCK_SKEW;
    let ca_not_after = ca.validity().not_after.to_datetime();
    if ca_not_after <= not_before {
        return Err(DomainError::Conflict(format!(
            "the issuing CA certificate expired at {ca_not_after}; replace the CA before issuing"
        )));
    }

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(cn) = common_name(req.names) {
        dn.push(DnType::CommonName, cn);
    }
    // An empty subject makes rcgen mark the SAN critical (RFC 5280 §4.2.1.6).
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.serial_number = Some(asn1::random_serial()?);
    params.not_before = not_before;
    let not_after = match req.validity_secs {
        // Short-lived: the requested lifetime counts from now, or the backdating
        // would eat a large share of a two-minute certificate.
        Some(secs) => not_before + CLOCK_SKEW + Duration::seconds(i64::from(secs)),
        None => not_before + Duration::days(i64::from(req.validity_days)),
    };
    params.not_after = not_after.min(ca_not_after);
    // ExplicitNoCa writes basicConstraints cA=FALSE and, with it, the SKI.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if req.key_type.is_rsa() {
        // RSA key transport (TLS 1.2 RSA kx); meaningless for EC/EdDSA keys and
        // forbidden there by CA/B BR §7.1.2.7.11.
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![match req.profile {
        Profile::TlsServer => ExtendedKeyUsagePurpose::ServerAuth,
        Profile::TlsClient => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = asn1::key_identifier(&subject_key.key);
    if let Some(urls) = req.urls {
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![urls.crl.clone()],
        }];
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                asn1::EXT_AUTHORITY_INFO_ACCESS,
                aia(&urls.ca_issuers, urls.ocsp.as_deref()),
            ));
    }
    if req.profile == Profile::TlsServer {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                asn1::EXT_CERTIFICATE_POLICIES,
                DV_POLICIES.to_vec(),
            ));
    }

    Ok((params, subject_key))
}

/// The SAN entry of a validated name.
pub(crate) fn san(name: &SubjectName) -> DomainResult<SanType> {
    match name {
        SubjectName::Dns(d) => {
            d.as_str().try_into().map(SanType::DnsName).map_err(|_| {
                DomainError::invalid("names", format!("'{d}' is not an ASCII DNS name"))
            })
        }
        SubjectName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
    }
}

/// The subject key of `spki_der`, which must be of `key_type`; problems are
/// pushed to `errors` (the DER's own problems under `field`).
pub(crate) fn subject_key(
    errors: &mut Vec<certflow_core::FieldError>,
    spki_der: &[u8],
    key_type: KeyType,
    field: &str,
) -> Option<SubjectKey> {
    match SubjectPublicKeyInfo::from_der(spki_der) {
        Ok(([], spki)) => match asn1::classify_spki(&spki) {
            Ok(kt) if kt == key_type => Some(SubjectKey {
                alg: asn1::signature_algorithm(kt),
                key: spki.subject_public_key.data.to_vec(),
            }),
            Ok(kt) => {
                errors.push(certflow_core::FieldError::new(
                    "key_type",
                    format!(
                        "the public key is {}, not {}",
                        kt.as_str(),
                        key_type.as_str()
                    ),
                ));
                None
            }
            Err(reason) => {
                errors.push(certflow_core::FieldError::new(field, reason));
                None
            }
        },
        _ => {
            errors.push(certflow_core::FieldError::new(
                field,
                "not a valid DER SubjectPublicKeyInfo",
            ));
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testutil::{ca, key, now};
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
        cert.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
    }

    fn names() -> Vec<SubjectName> {
        vec![
            SubjectName::Dns("www.example.com".into()),
            SubjectName::Dns("*.api.example.com".into()),
            SubjectName::Ip("192.0.2.7".parse().unwrap()),
            SubjectName::Ip("2001:db8::7".parse().unwrap()),
        ]
    }

    fn urls() -> IssuerUrls {
        IssuerUrls {
            ca_issuers: "http://127.0.0.1:8080/pki/abc/ca.crt".into(),
            crl: "http://127.0.0.1:8080/pki/abc/crl".into(),
            ocsp: Some("http://127.0.0.1:8080/pki/abc/ocsp".into()),
        }
    }

    fn request<'a>(
        profile: Profile,
        names: &'a [SubjectName],
        leaf: &'a [u8],
        kt: KeyType,
        u: &'a IssuerUrls,
    ) -> LeafRequest<'a> {
        LeafRequest {
            profile,
            names,
            spki_der: leaf,
            key_type: kt,
            validity_days: 90,
            validity_secs: None,
            now: now(),
            urls: Some(u),
        }
    }

    #[test]
    fn every_profile_leaf_and_ca_key_type_gets_the_profile_extensions() {
        let names = names();
        let client_names: Vec<SubjectName> = names
            .iter()
            .filter(|n| !n.to_text().starts_with('*'))
            .cloned()
            .collect();
        let u = urls();
        // A CSR that asks for CA:TRUE and keyCertSign contributes only its key.
        let ca_true =
            crate::csr::parse_csr("csr", &crate::testutil::fixture("ca-true.csr")).unwrap();
        for ca_kt in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Ed25519] {
            let m = ca(ca_kt);
            let (_, ca_cert) = X509Certificate::from_der(&m.issuing_cert_der).unwrap();
            let ca_ski = asn1::subject_key_id(&ca_cert).unwrap();
            let mut serials = std::collections::HashSet::new();
            let mut subjects: Vec<(Vec<u8>, KeyType)> = KeyType::ALL
                .iter()
                .map(|kt| (key(*kt).public_key_der(), *kt))
                .collect();
            subjects.push((ca_true.spki_der.clone(), ca_true.key_type));
            for profile in Profile::ALL {
                let names = match profile {
                    Profile::TlsServer => names.clone(),
                    Profile::TlsClient => client_names.clone(),
                };
                for (spki, kt) in &subjects {
                    let issued_at = now();
                    let der = issue_leaf(
                        &m.issuing_cert_der,
                        &m.issuing_key,
                        &request(profile, &names, spki, *kt, &u),
                    )
                    .unwrap();
                    let ctx = format!("{profile:?} leaf {kt:?} under {ca_kt:?}");
                    let (rest, c) = X509Certificate::from_der(&der).unwrap();
                    assert!(rest.is_empty());
                    c.verify_signature(Some(ca_cert.public_key())).unwrap();
                    assert_eq!(c.public_key().raw, spki.as_slice(), "{ctx}");

                    let serial = c.raw_serial();
                    assert!(
                        serial.len() <= 20 && serial[0] & 0x80 == 0 && serial[0] != 0,
                        "{ctx}"
                    );
                    assert!(serials.insert(serial.to_vec()), "serial repeated: {ctx}");

                    let bc = c.basic_constraints().unwrap().unwrap();
                    assert!(!bc.value.ca, "{ctx}");
                    assert!(!c.is_ca());
                    let ku = c.key_usage().unwrap().unwrap();
                    assert!(ku.critical && ku.value.digital_signature(), "{ctx}");
                    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign(), "{ctx}");
                    assert_eq!(ku.value.key_encipherment(), kt.is_rsa(), "{ctx}");

                    let eku = c.extended_key_usage().unwrap().unwrap().value;
                    assert_eq!(eku.server_auth, profile == Profile::TlsServer, "{ctx}");
                    assert_eq!(eku.client_auth, profile == Profile::TlsClient, "{ctx}");
                    assert!(
                        !eku.any && !eku.code_signing && eku.other.is_empty(),
                        "{ctx}"
                    );

                    let san = c.subject_alternative_name().unwrap().unwrap();
                    assert!(!san.critical);
                    let got: Vec<String> = san
                        .value
                        .general_names
                        .iter()
                        .map(|g| match g {
                            GeneralName::DNSName(d) => (*d).to_owned(),
                            GeneralName::IPAddress(o) => crate::csr::ip_text(o).unwrap(),
                            other => panic!("unexpected SAN {other:?}"),
                        })
                        .collect();
                    let want: Vec<String> = names.iter().map(SubjectName::to_text).collect();
                    assert_eq!(got, want, "{ctx}");
                    assert_eq!(c.subject().to_string(), "CN=www.example.com");

                    assert_eq!(aki(&c), Some(ca_ski.clone()), "{ctx}");
                    let bits = &c.public_key().subject_public_key.data;
                    let rfc7093 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bits)
                        .as_ref()[..20]
                        .to_vec();
                    assert_eq!(asn1::subject_key_id(&c), Some(rfc7093), "{ctx}");

                    let policies = c
                        .iter_extensions()
                        .find_map(|e| match e.parsed_extension() {
                            ParsedExtension::CertificatePolicies(p) => Some(
                                p.iter()
                                    .map(|i| i.policy_id.to_id_string())
                                    .collect::<Vec<_>>(),
                            ),
                            _ => None,
                        });
                    match profile {
                        Profile::TlsServer => {
                            assert_eq!(policies, Some(vec!["2.23.140.1.2.1".to_owned()]), "{ctx}")
                        }
                        Profile::TlsClient => assert_eq!(policies, None, "{ctx}"),
                    }
                    let aia = c
                        .iter_extensions()
                        .find_map(|e| match e.parsed_extension() {
                            ParsedExtension::AuthorityInfoAccess(a) => Some(
                                a.accessdescs
                                    .iter()
                                    .map(|d| {
                                        (
                                            d.access_method.to_id_string(),
                                            format!("{:?}", d.access_location),
                                        )
                                    })
                                    .collect::<Vec<_>>(),
                            ),
                            _ => None,
                        });
                    assert_eq!(
                        aia,
                        Some(vec![
                            (
                                "1.3.6.1.5.5.7.48.1".to_owned(),
                                format!("URI({:?})", u.ocsp.as_deref().unwrap_or_default())
                            ),
                            (
                                "1.3.6.1.5.5.7.48.2".to_owned(),
                                format!("URI({:?})", u.ca_issuers)
                            )
                        ]),
                        "{ctx}"
                    );
                    let crl_dp = c
                        .iter_extensions()
                        .find_map(|e| match e.parsed_extension() {
                            ParsedExtension::CRLDistributionPoints(p) => Some(format!("{p:?}")),
                            _ => None,
                        });
                    assert!(crl_dp.unwrap().contains(&u.crl), "{ctx}");

                    let sig = c.signature_algorithm.algorithm.to_id_string();
                    let want_sig = match ca_kt {
                        KeyType::EcdsaP256 => "1.2.840.10045.4.3.2",
                        KeyType::Rsa2048 => "1.2.840.113549.1.1.11",
                        _ => "1.3.101.112",
                    };
                    assert_eq!(sig, want_sig, "{ctx}");

                    let nb = c.validity().not_before.to_datetime();
                    let na = c.validity().not_after.to_datetime();
                    assert_eq!(na - nb, Duration::days(90), "{ctx}");
                    // Backdated 60 s from the issuance instant (whole seconds); measured
                    // from the instant taken before issuing, so a slow (loaded) machine
                    // signing RSA keys does not fail it.
                    let after = now();
                    assert!(
                        nb <= after && issued_at - nb <= Duration::seconds(61),
                        "{ctx}: notBefore {nb}, issued at {issued_at}"
                    );
                }
            }
        }
    }

    #[test]
    fn validity_is_capped_at_the_issuer_not_after() {
        let m = crate::ca::create_ca("Brief", KeyType::EcdsaP256, now(), 30, 20).unwrap();
        let leaf = key(KeyType::EcdsaP256).public_key_der();
        let names = names();
        let u = urls();
        let mut req = request(
            Profile::TlsClient,
            &names[..1],
            &leaf,
            KeyType::EcdsaP256,
            &u,
        );
        req.validity_days = 397;
        let der = issue_leaf(&m.issuing_cert_der, &m.issuing_key, &req).unwrap();
        let leaf_info = crate::inspect::inspect(&der).unwrap();
        let ca_info = crate::inspect::inspect(&m.issuing_cert_der).unwrap();
        assert_eq!(leaf_info.not_after, ca_info.not_after);

        req.now = now() + Duration::days(25);
        assert!(matches!(
            issue_leaf(&m.issuing_cert_der, &m.issuing_key, &req),
            Err(DomainError::Conflict(_))
        ));
    }

    #[test]
    fn aki_equals_an_imported_ca_ski_computed_by_openssl() {
        let dir = crate::testutil::tempdir();
        crate::testutil::openssl_in(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/C=DE/O=Example/CN=Example CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        let m = crate::ca::import_ca(
            &std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            &std::fs::read_to_string(dir.path().join("ca.key")).unwrap(),
            None,
            now(),
        )
        .unwrap();
        let (_, ca_cert) = X509Certificate::from_der(&m.issuing_cert_der).unwrap();
        let ski = asn1::subject_key_id(&ca_cert).unwrap();
        // openssl's SKI is the SHA-1 of the key; rcgen's own method would differ.
        let rcgen_ski = {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ca_cert.public_key().raw);
            d.as_ref()[..20].to_vec()
        };
        assert_ne!(ski, rcgen_ski);
        let leaf = key(KeyType::EcdsaP256).public_key_der();
        let names = names();
        let u = urls();
        let der = issue_leaf(
            &m.issuing_cert_der,
            &m.issuing_key,
            &request(Profile::TlsServer, &names, &leaf, KeyType::EcdsaP256, &u),
        )
        .unwrap();
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(aki(&c), Some(ski));
        assert_eq!(c.issuer().as_raw(), ca_cert.subject().as_raw());
    }

    #[test]
    fn common_name_choice() {
        let long = format!("{}.example.com", "a".repeat(60));
        let ip = SubjectName::Ip("10.0.0.1".parse().unwrap());
        let cases = [
            (
                vec![SubjectName::Dns("a.example.com".into()), ip.clone()],
                Some("a.example.com"),
            ),
            (
                vec![ip.clone(), SubjectName::Dns("b.example.com".into())],
                Some("b.example.com"),
            ),
            (
                vec![SubjectName::Dns(long.clone()), ip.clone()],
                Some("10.0.0.1"),
            ),
            (vec![SubjectName::Dns(long.clone())], None),
        ];
        for (names, want) in cases {
            assert_eq!(common_name(&names).as_deref(), want);
        }
        // No CN at all: the subject is empty and the SAN becomes critical.
        let m = ca(KeyType::EcdsaP256);
        let leaf = key(KeyType::EcdsaP256).public_key_der();
        let only_long = [SubjectName::Dns(long)];
        let u = urls();
        let der = issue_leaf(
            &m.issuing_cert_der,
            &m.issuing_key,
            &request(
                Profile::TlsServer,
                &only_long,
                &leaf,
                KeyType::EcdsaP256,
                &u,
            ),
        )
        .unwrap();
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(c.subject().iter_attributes().count(), 0);
        assert!(c.subject_alternative_name().unwrap().unwrap().critical);
    }

    #[test]
    fn rejects_bad_requests() {
        let m = ca(KeyType::EcdsaP256);
        let leaf = key(KeyType::EcdsaP256).public_key_der();
        let names = names();
        let u = urls();
        let base = request(Profile::TlsServer, &names, &leaf, KeyType::EcdsaP256, &u);
        let bad_urls = IssuerUrls {
            ca_issuers: "https://x/ca.crt".into(),
            crl: "http://x/ a".into(),
            ocsp: Some("ldap://x".into()),
        };
        let garbage = [0x30, 0x00];
        let cases: Vec<(LeafRequest<'_>, &str, &str)> = vec![
            (
                LeafRequest {
                    validity_days: 0,
                    validity_secs: None,
                    ..base.clone()
                },
                "validity_days",
                "at least 1",
            ),
            (
                LeafRequest {
                    validity_days: 200,
                    ..base.clone()
                },
                "validity_days",
                "at most 199",
            ),
            (
                LeafRequest {
                    names: &[],
                    ..base.clone()
                },
                "names",
                "at least one",
            ),
            (
                LeafRequest {
                    key_type: KeyType::Rsa2048,
                    ..base.clone()
                },
                "key_type",
                "is ecdsa-p256, not rsa-2048",
            ),
            (
                LeafRequest {
                    spki_der: &garbage,
                    ..base.clone()
                },
                "public_key",
                "not a valid",
            ),
            (
                LeafRequest {
                    urls: Some(&bad_urls),
                    ..base.clone()
                },
                "urls.ca_issuers",
                "http://",
            ),
            (
                LeafRequest {
                    profile: Profile::TlsClient,
                    ..base.clone()
                },
                "names[1]",
                "wildcard names are only allowed in tls-server",
            ),
        ];
        for (req, field, needle) in cases {
            match issue_leaf(&m.issuing_cert_der, &m.issuing_key, &req) {
                Err(DomainError::Invalid(errs)) => {
                    assert_eq!(errs[0].field, field, "{errs:?}");
                    assert!(errs[0].reason.contains(needle), "{errs:?}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        // A CA key that does not belong to the CA certificate is our bug.
        let other = ca(KeyType::Ed25519);
        assert!(matches!(
            issue_leaf(&m.issuing_cert_der, &other.issuing_key, &base),
            Err(DomainError::Internal(_))
        ));
    }
}
