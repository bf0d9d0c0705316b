//! Pre-issuance linting, after Let's Encrypt's Boulder: the leaf is first
//! built with a placeholder signature (same issuer name, AKI, algorithm and
//! TBS bytes as the one to issue), parsed back with x509-parser and checked
//! here, and only a certificate with no finding has its TBS signed by the
//! real CA key. A bug in how certflow builds certificates then costs a
//! refused issuance, never a misissued certificate that must be revoked.
//!
//! Each lint is a named function over the parsed certificate; `lint_leaf`
//! runs them all and returns every finding, not only the first.

use std::collections::HashSet;

use certflow_core::{KeyType, Profile, SubjectName};
use time::Duration;
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::x509::X509Version;

use crate::asn1::{self, MAX_SERIAL_LEN};

/// What a leaf is linted against.
#[derive(Debug, Clone, Copy)]
pub struct LintContext<'a> {
    /// The profile the leaf was built for.
    pub profile: Profile,
    /// The subject key's type.
    pub key_type: KeyType,
    /// The issuing CA certificate, DER.
    pub issuer_der: &'a [u8],
    /// Backdating of notBefore the builder adds to the requested lifetime.
    pub backdate: Duration,
    /// Another CA signed it (ACME): judged by the standards, not by
    /// certflow's own profile choices — a server certificate that also
    /// carries clientAuth, as Web PKI certificates long did, is no fault.
    pub foreign: bool,
}

/// One broken lint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintFinding {
    /// The lint's name, e.g. `key_usage_matches_key_type`.
    pub lint: &'static str,
    /// What is wrong, naming the offending value.
    pub message: String,
}

impl std::fmt::Display for LintFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.lint, self.message)
    }
}

/// A certificate that failed pre-issuance linting: it was never signed by the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintRefusal {
    /// Every finding.
    pub findings: Vec<LintFinding>,
}

impl std::fmt::Display for LintRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.findings.iter().map(ToString::to_string).collect();
        write!(
            f,
            "pre-issuance lint refused the certificate: {}",
            all.join("; ")
        )
    }
}

type Lint = fn(&X509Certificate<'_>, &X509Certificate<'_>, &LintContext<'_>) -> Result<(), String>;

/// Every lint, by name, in the order they run.
const LINTS: &[(&str, Lint)] = &[
    ("version_is_v3", version_is_v3),
    ("no_duplicate_extensions", no_duplicate_extensions),
    (
        "san_present_and_cn_among_sans",
        san_present_and_cn_among_sans,
    ),
    (
        "validity_within_profile_and_issuer",
        validity_within_profile_and_issuer,
    ),
    ("key_usage_matches_key_type", key_usage_matches_key_type),
    (
        "extended_key_usage_matches_profile",
        extended_key_usage_matches_profile,
    ),
    ("basic_constraints_end_entity", basic_constraints_end_entity),
    ("serial_number_well_formed", serial_number_well_formed),
    ("key_identifiers", key_identifiers),
    (
        "issuer_name_matches_ca_subject",
        issuer_name_matches_ca_subject,
    ),
    ("name_encodings", name_encodings),
    (
        "signature_algorithm_consistent",
        signature_algorithm_consistent,
    ),
];

/// Lints a leaf certificate (DER); an empty list means it may be signed.
pub fn lint_leaf(der: &[u8], ctx: &LintContext<'_>) -> Vec<LintFinding> {
    let finding = |lint: &'static str, message: String| vec![LintFinding { lint, message }];
    let issuer = match asn1::parse_cert("issuer", ctx.issuer_der) {
        Ok(c) => c,
        Err(e) => return finding("issuer_parses", e.to_string()),
    };
    lint_leaf_under(der, &issuer, ctx)
}

/// [`lint_leaf`] with the issuer (`ctx.issuer_der`) already parsed.
pub(crate) fn lint_leaf_under(
    der: &[u8],
    issuer: &X509Certificate<'_>,
    ctx: &LintContext<'_>,
) -> Vec<LintFinding> {
    let cert = match asn1::parse_cert("certificate", der) {
        Ok(c) => c,
        Err(e) => {
            return vec![LintFinding {
                lint: "parses",
                message: e.to_string(),
            }];
        }
    };
    LINTS
        .iter()
        .filter_map(|(name, lint)| {
            lint(&cert, issuer, ctx).err().map(|message| LintFinding {
                lint: name,
                message,
            })
        })
        .collect()
}

/// RFC 5280 §4.1.2.1: extensions need version 3.
fn version_is_v3(
    cert: &X509Certificate<'_>,
    _: &X509Certificate<'_>,
    _: &LintContext<'_>,
) -> Result<(), String> {
    if cert.version() == X509Version::V3 {
        Ok(())
    } else {
        Err(format!("version is {:?}, not v3", cert.version()))
    }
}

/// RFC 5280 §4.2: a certificate MUST NOT include more than one instance of an extension.
fn no_duplicate_extensions(
    cert: &X509Certificate<'_>,
    _: &X509Certificate<'_>,
    _: &LintContext<'_>,
) -> Result<(), String> {
    let mut seen = HashSet::new();
    let dups: Vec<String> = cert
        .extensions()
        .iter()
        .filter(|e| !seen.insert(e.oid.to_id_string()))
        .map(|e| e.oid.to_id_string())
        .collect();
    if dups.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "extension(s) {} appear more than once",
            dups.join(", ")
        ))
    }
}

/// The SAN entries as text (DNS names as written, IP addresses canonical).
fn san_texts(cert: &X509Certificate<'_>) -> Result<(bool, Vec<String>), String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subjectAltName does not parse ({e})"))?
        .ok_or("no subjectAltName extension")?;
    let mut out = Vec::new();
    for g in &san.value.general_names {
        match g {
            GeneralName::DNSName(d) => out.push((*d).to_owned()),
            GeneralName::IPAddress(o) => out.push(crate::csr::ip_text(o)?),
            other => return Err(format!("unexpected subjectAltName entry {other:?}")),
        }
    }
    Ok((san.critical, out))
}

/// CA/B BR §7.1.2.7.12 / §7.1.4.3: a SAN with at least one entry; a CN, if
/// any, is one of them. RFC 5280 §4.2.1.6: with an empty subject the SAN is critical.
fn san_present_and_cn_among_sans(
    cert: &X509Certificate<'_>,
    _: &X509Certificate<'_>,
    _: &LintContext<'_>,
) -> Result<(), String> {
    let (critical, sans) = san_texts(cert)?;
    if sans.is_empty() {
        return Err("subjectAltName has no entries".into());
    }
    let cns: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap_or("<not a string>"))
        .collect();
    if cns.len() > 1 {
        return Err(format!("{} commonName attributes", cns.len()));
    }
    if let Some(cn) = cns.first()
        && !sans.iter().any(|s| s == cn)
    {
        return Err(format!("commonName '{cn}' is not among the SANs"));
    }
    let empty_subject = cert.subject().iter_attributes().next().is_none();
    if empty_subject && !critical {
        return Err("the subject is empty but subjectAltName is not critical".into());
    }
    Ok(())
}

/// notBefore before notAfter; the lifetime within the profile's maximum (plus
/// the builder's backdating); the whole validity within the issuer's.
fn validity_within_profile_and_issuer(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    ctx: &LintContext<'_>,
) -> Result<(), String> {
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    if na <= nb {
        return Err(format!("notAfter {na} is not after notBefore {nb}"));
    }
    let max = Duration::days(i64::from(ctx.profile.max_validity_days())) + ctx.backdate;
    if na - nb > max {
        return Err(format!(
            "lifetime {} exceeds the {} profile's maximum of {} days",
            na - nb,
            ctx.profile.as_str(),
            ctx.profile.max_validity_days()
        ));
    }
    // Only the end is bounded by the issuer: the backdated notBefore of a
    // leaf issued right after its CA was created may precede the CA's own.
    let ina = issuer.validity().not_after.to_datetime();
    if na > ina {
        return Err(format!(
            "notAfter {na} is after the issuer's notAfter {ina}"
        ));
    }
    Ok(())
}

/// RFC 5280 §4.2.1.3 and CA/B BR §7.1.2.7.11: keyUsage present and critical,
/// digitalSignature set, keyEncipherment only (and always) for RSA keys, no CA
/// or agreement bits.
fn key_usage_matches_key_type(
    cert: &X509Certificate<'_>,
    _: &X509Certificate<'_>,
    ctx: &LintContext<'_>,
) -> Result<(), String> {
    let ku = cert
        .key_usage()
        .map_err(|e| format!("keyUsage does not parse ({e})"))?
        .ok_or("no keyUsage extension")?;
    let mut problems = Vec::new();
    if !ku.critical {
        problems.push("keyUsage is not critical".to_owned());
    }
    let v = ku.value;
    if !v.digital_signature() {
        problems.push("digitalSignature is not set".to_owned());
    }
    if v.key_encipherment() != ctx.key_type.is_rsa() {
        problems.push(if ctx.key_type.is_rsa() {
            "keyEncipherment is missing for an RSA key".to_owned()
        } else {
            format!("keyEncipherment is set for a {} key", ctx.key_type.as_str())
        });
    }
    for (set, bit) in [
        (v.key_cert_sign(), "keyCertSign"),
        (v.crl_sign(), "cRLSign"),
        (v.data_encipherment(), "dataEncipherment"),
        (v.key_agreement(), "keyAgreement"),
        (v.encipher_only(), "encipherOnly"),
        (v.decipher_only(), "decipherOnly"),
    ] {
        if set {
            problems.push(format!("{bit} is set on an end-entity certificate"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

/// CA/B BR §7.1.2.7.10: extKeyUsage present, not critical, exactly the
/// profile's purpose (serverAuth for tls-server, clientAuth for tls-client),
/// never anyExtendedKeyUsage.
fn extended_key_usage_matches_profile(
    cert: &X509Certificate<'_>,
    _: &X509Certificate<'_>,
    ctx: &LintContext<'_>,
) -> Result<(), String> {
    let eku = cert
        .extended_key_usage()
        .map_err(|e| format!("extKeyUsage does not parse ({e})"))?
        .ok_or("no extKeyUsage extension")?;
    if eku.critical {
        return Err("extKeyUsage is critical".into());
    }
    let v = eku.value;
    let want_server = ctx.profile == Profile::TlsServer;
    let mut problems = Vec::new();
    if v.server_auth != want_server {
        problems.push(format!(
            "serverAuth {} for profile {}",
            if v.server_auth { "present" } else { "missing" },
            ctx.profile.as_str()
        ));
    }
    if v.client_auth == want_server && !(ctx.foreign && want_server) {
        problems.push(format!(
            "clientAuth {} for profile {}",
            if v.client_auth { "present" } else { "missing" },
            ctx.profile.as_str()
        ));
    }
    if v.any || v.code_signing || v.email_protection || v.time_stamping || v.ocsp_signing {
        problems.push("a purpose outside the profile is present".into());
    }
    if !v.other.is_empty() {
        let other: Vec<String> = v.other.iter().map(|o| o.to_id_string()).collect();
        problems.push(format!("unknown purposes {}", other.join(", ")));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

/// RFC 5280 §4.2.1.9 as certflow writes it: basicConstraints present,
/// critical, cA FALSE and no pathLenConstraint.
fn basic_constraints_end_entity(
    cert: &X509Certificate<'_>,
    _: &X509Certificate<'_>,
    _: &LintContext<'_>,
) -> Result<(), String> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| format!("basicConstraints does not parse ({e})"))?
        .ok_or("no basicConstraints extension")?;
    if bc.value.ca {
        return Err("cA is TRUE on an end-entity certificate".into());
    }
    if bc.value.path_len_constraint.is_some() {
        return Err("pathLenConstraint on an end-entity certificate".into());
    }
    if !bc.critical {
        return Err("basicConstraints is not critical".into());
    }
    Ok(())
}

/// RFC 5280 §4.1.2.2 and CA/B BR §7.1: positive, non-zero, minimally encoded,
/// at most 20 octets, and long enough to hold 64 bits of CSPRNG output (the
/// entropy itself comes from `random_serial`; this catches a source that shrank).
fn serial_number_well_formed(
    cert: &X509Certificate<'_>,
    _: &X509Certificate<'_>,
    _: &LintContext<'_>,
) -> Result<(), String> {
    let raw = cert.raw_serial();
    let hex = hex::encode(raw);
    match raw {
        [] => Err("empty serial number".into()),
        [first, ..] if first & 0x80 != 0 => Err(format!("serial {hex} is negative")),
        [0x00, second, ..] if second & 0x80 == 0 => {
            Err(format!("serial {hex} is not minimally encoded"))
        }
        _ if raw.len() > MAX_SERIAL_LEN => Err(format!(
            "serial {hex} is {} octets; at most {MAX_SERIAL_LEN} are allowed",
            raw.len()
        )),
        _ if asn1::bit_len(raw) == 0 => Err("serial number is zero".into()),
        _ if asn1::bit_len(raw) < 64 => Err(format!(
            "serial {hex} has {} bits; at least 64 bits of randomness are required",
            asn1::bit_len(raw)
        )),
        _ => Ok(()),
    }
}

/// RFC 5280 §4.2.1.1/§4.2.1.2: AKI present, non-critical, its keyIdentifier
/// equal to the issuer's SKI; SKI present and non-critical.
fn key_identifiers(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    _: &LintContext<'_>,
) -> Result<(), String> {
    let issuer_ski =
        asn1::subject_key_id(issuer).ok_or("the issuer has no subjectKeyIdentifier")?;
    let mut aki = None;
    let mut ski = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => aki = Some((ext.critical, a)),
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some((ext.critical, k)),
            _ => {}
        }
    }
    let (critical, aki) = aki.ok_or("no authorityKeyIdentifier extension")?;
    if critical {
        return Err("authorityKeyIdentifier is critical".into());
    }
    match &aki.key_identifier {
        Some(k) if k.0 == issuer_ski.as_slice() => {}
        Some(k) => {
            return Err(format!(
                "authorityKeyIdentifier {} is not the issuer's subjectKeyIdentifier {}",
                hex::encode(k.0),
                hex::encode(&issuer_ski)
            ));
        }
        None => return Err("authorityKeyIdentifier has no keyIdentifier".into()),
    }
    let (critical, ski) = ski.ok_or("no subjectKeyIdentifier extension")?;
    if critical {
        return Err("subjectKeyIdentifier is critical".into());
    }
    if ski.0.is_empty() {
        return Err("subjectKeyIdentifier is empty".into());
    }
    Ok(())
}

/// RFC 5280 §7.1 path building compares names byte for byte.
fn issuer_name_matches_ca_subject(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    _: &LintContext<'_>,
) -> Result<(), String> {
    if cert.issuer().as_raw() == issuer.subject().as_raw() {
        Ok(())
    } else {
        Err(format!(
            "issuer name '{}' differs from the CA's subject name '{}'",
            cert.issuer(),
            issuer.subject()
        ))
    }
}

/// PrintableString's alphabet (X.680 §41.4).
fn printable(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(b))
}

/// DNS names in the SAN are IA5 LDH names in lower-case A-label form (what
/// certflow's name policy produces); DN attributes are PrintableString (with
/// its alphabet) or UTF8String (RFC 5280 §4.1.2.6, CA/B BR §7.1.4.2).
fn name_encodings(
    cert: &X509Certificate<'_>,
    _: &X509Certificate<'_>,
    _: &LintContext<'_>,
) -> Result<(), String> {
    let (_, sans) = san_texts(cert)?;
    let mut problems = Vec::new();
    for san in sans
        .iter()
        .filter(|s| s.parse::<std::net::IpAddr>().is_err())
    {
        match certflow_core::names::parse_name(san) {
            Ok(SubjectName::Dns(d)) if d == *san => {}
            Ok(_) => problems.push(format!(
                "DNS name '{san}' is not in lower-case A-label form"
            )),
            Err(e) => problems.push(format!("DNS name '{}': {e}", san.escape_debug())),
        }
    }
    for attr in cert.subject().iter_attributes() {
        let value = attr.attr_value();
        let oid = attr.attr_type().to_id_string();
        match value.tag() {
            Tag::PrintableString if printable(value.data) => {}
            Tag::PrintableString => problems.push(format!(
                "attribute {oid} is a PrintableString with characters outside its alphabet"
            )),
            Tag::Utf8String if std::str::from_utf8(value.data).is_ok() => {}
            Tag::Utf8String => problems.push(format!("attribute {oid} is not valid UTF-8")),
            other => problems.push(format!(
                "attribute {oid} is encoded as {other}, not PrintableString or UTF8String"
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

/// RFC 5280 §4.1.1.2: the signature algorithm inside and outside the TBS agree,
/// and it is the one the CA's key signs with.
fn signature_algorithm_consistent(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    _: &LintContext<'_>,
) -> Result<(), String> {
    let outer = &cert.signature_algorithm;
    let inner = &cert.tbs_certificate.signature;
    if outer.algorithm != inner.algorithm
        || outer.parameters.as_ref().map(|p| p.data) != inner.parameters.as_ref().map(|p| p.data)
    {
        return Err(format!(
            "signatureAlgorithm {} differs from the TBS signature {}",
            outer.algorithm.to_id_string(),
            inner.algorithm.to_id_string()
        ));
    }
    let ca_kt =
        asn1::classify_spki(issuer.public_key()).map_err(|e| format!("the issuer's key: {e}"))?;
    let want = match ca_kt {
        KeyType::EcdsaP256 => "1.2.840.10045.4.3.2",
        KeyType::EcdsaP384 => "1.2.840.10045.4.3.3",
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => "1.2.840.113549.1.1.11",
        KeyType::Ed25519 => "1.3.101.112",
    };
    let got = outer.algorithm.to_id_string();
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "signature algorithm {got} is not {want}, the one a {} CA key signs with",
            ca_kt.as_str()
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use rcgen::{
        CertificateParams, CustomExtension, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
        KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, SigningKey,
    };

    use super::*;
    use crate::issue::{CLOCK_SKEW, LeafRequest, SubjectKey, leaf_params, linted_tbs};
    use crate::signer::CaPublicKey;
    use crate::testutil::{ca, key, now};

    /// The CA key, counting what it signs: a refused certificate must leave it at 0.
    struct CountingSigner<'a> {
        inner: &'a rcgen::KeyPair,
        signed: AtomicU32,
    }

    impl PublicKeyData for CountingSigner<'_> {
        fn der_bytes(&self) -> &[u8] {
            self.inner.der_bytes()
        }
        fn algorithm(&self) -> &'static SignatureAlgorithm {
            self.inner.algorithm()
        }
    }

    impl SigningKey for CountingSigner<'_> {
        fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
            self.signed.fetch_add(1, Ordering::SeqCst);
            self.inner.sign(msg)
        }
    }

    fn names() -> Vec<SubjectName> {
        vec![
            SubjectName::Dns("www.example.com".into()),
            SubjectName::Dns("example.com".into()),
            SubjectName::Ip("192.0.2.7".parse().unwrap()),
        ]
    }

    /// Builds the leaf from `params` tampered by `tamper` and signs it through
    /// the linting path; returns the outcome and how often the CA key signed.
    fn issue_tampered(
        ca_kt: KeyType,
        leaf_kt: KeyType,
        profile: Profile,
        tamper: impl FnOnce(&mut CertificateParams),
    ) -> (Result<Vec<u8>, LintRefusal>, u32) {
        issue_tampered_as(false, ca_kt, leaf_kt, profile, tamper)
    }

    /// [`issue_tampered`], linted as a certificate of another CA when `foreign`.
    fn issue_tampered_as(
        foreign: bool,
        ca_kt: KeyType,
        leaf_kt: KeyType,
        profile: Profile,
        tamper: impl FnOnce(&mut CertificateParams),
    ) -> (Result<Vec<u8>, LintRefusal>, u32) {
        let m = ca(ca_kt);
        let leaf = key(leaf_kt).public_key_der();
        let names = names();
        let req = LeafRequest {
            profile,
            names: &names,
            spki_der: &leaf,
            key_type: leaf_kt,
            validity_days: 90,
            validity_secs: None,
            now: now(),
            urls: None,
        };
        let (mut params, subject_key): (CertificateParams, SubjectKey) =
            leaf_params(&m.issuing_cert_der, &req).unwrap();
        tamper(&mut params);
        let kp = m.issuing_key.signing_key_pair();
        let counting = CountingSigner {
            inner: kp.get(),
            signed: AtomicU32::new(0),
        };
        let ctx = LintContext {
            profile,
            key_type: leaf_kt,
            issuer_der: &m.issuing_cert_der,
            backdate: CLOCK_SKEW,
            foreign,
        };
        let ca_cert = asn1::parse_cert("ca", &m.issuing_cert_der).unwrap();
        let ca_public = CaPublicKey::of_certificate(&m.issuing_cert_der).unwrap();
        let out = linted_tbs(
            &params,
            &subject_key,
            &m.issuing_cert_der,
            &ca_cert,
            &ca_public,
            &ctx,
        )
        .unwrap()
        // Only a TBS that passed the lints can reach the CA key.
        .map(|tbs| {
            let signature = counting.sign(tbs.message()).unwrap();
            tbs.finish(&signature).unwrap()
        });
        (out, counting.signed.load(Ordering::SeqCst))
    }

    #[test]
    fn certflow_leaves_of_every_key_type_and_profile_lint_clean() {
        for ca_kt in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Ed25519] {
            for leaf_kt in KeyType::ALL {
                for profile in Profile::ALL {
                    let (out, signed) = issue_tampered(ca_kt, leaf_kt, profile, |_| {});
                    let der = out.unwrap_or_else(|r| {
                        panic!("{ca_kt:?} CA, {leaf_kt:?} leaf, {profile:?}: {r}")
                    });
                    assert_eq!(signed, 1, "the CA signs once, after the lint");
                    // What was issued lints clean too, and carries the CA's signature.
                    let ctx = LintContext {
                        profile,
                        key_type: leaf_kt,
                        issuer_der: &ca(ca_kt).issuing_cert_der,
                        backdate: CLOCK_SKEW,
                        foreign: false,
                    };
                    assert_eq!(lint_leaf(&der, &ctx), vec![]);
                    let m = ca(ca_kt);
                    let issuer = asn1::parse_cert("ca", &m.issuing_cert_der).unwrap();
                    asn1::parse_cert("leaf", &der)
                        .unwrap()
                        .verify_signature(Some(issuer.public_key()))
                        .unwrap();
                }
            }
        }
    }

    /// Every crafted defect is caught by its lint before the CA key signs anything.
    #[test]
    fn crafted_certificates_are_refused_before_signing() {
        let ec = KeyType::EcdsaP256;
        let server = Profile::TlsServer;
        type Tamper = Box<dyn FnOnce(&mut CertificateParams)>;
        let cases: Vec<(&str, KeyType, Profile, Tamper, &str)> = vec![
            (
                "keyEncipherment on an ECDSA key",
                ec,
                server,
                Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyEncipherment)),
                "key_usage_matches_key_type",
            ),
            (
                "keyEncipherment on an Ed25519 key",
                KeyType::Ed25519,
                server,
                Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyEncipherment)),
                "key_usage_matches_key_type",
            ),
            (
                "RSA without keyEncipherment",
                KeyType::Rsa2048,
                server,
                Box::new(|p| {
                    p.key_usages
                        .retain(|k| *k != KeyUsagePurpose::KeyEncipherment)
                }),
                "key_usage_matches_key_type",
            ),
            (
                "keyCertSign on a leaf",
                ec,
                server,
                Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
                "key_usage_matches_key_type",
            ),
            (
                "clientAuth instead of serverAuth",
                ec,
                server,
                Box::new(|p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]),
                "extended_key_usage_matches_profile",
            ),
            (
                "anyExtendedKeyUsage",
                ec,
                Profile::TlsClient,
                Box::new(|p| p.extended_key_usages.push(ExtendedKeyUsagePurpose::Any)),
                "extended_key_usage_matches_profile",
            ),
            (
                "CA:TRUE on a leaf",
                ec,
                server,
                Box::new(|p| p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)),
                "basic_constraints_end_entity",
            ),
            (
                "no basicConstraints, no SKI",
                ec,
                server,
                Box::new(|p| p.is_ca = IsCa::NoCa),
                "basic_constraints_end_entity",
            ),
            (
                "short serial",
                ec,
                server,
                Box::new(|p| p.serial_number = Some(SerialNumber::from_slice(&[0x01, 0x02]))),
                "serial_number_well_formed",
            ),
            (
                "serial of 21 octets",
                ec,
                server,
                Box::new(|p| p.serial_number = Some(SerialNumber::from_slice(&[0x11; 21]))),
                "serial_number_well_formed",
            ),
            (
                "no AKI",
                ec,
                server,
                Box::new(|p| p.use_authority_key_identifier_extension = false),
                "key_identifiers",
            ),
            (
                "duplicate extension",
                ec,
                server,
                Box::new(|p| {
                    p.custom_extensions.push(CustomExtension::from_oid_content(
                        &[2, 5, 29, 32],
                        vec![
                            0x30, 0x0a, 0x30, 0x08, 0x06, 0x06, 0x67, 0x81, 0x0c, 0x01, 0x02, 0x01,
                        ],
                    ))
                }),
                "no_duplicate_extensions",
            ),
            (
                "no SAN",
                ec,
                server,
                Box::new(|p| p.subject_alt_names.clear()),
                "san_present_and_cn_among_sans",
            ),
            (
                "CN not among the SANs",
                ec,
                server,
                Box::new(|p| {
                    p.distinguished_name
                        .push(DnType::CommonName, "other.example.com")
                }),
                "san_present_and_cn_among_sans",
            ),
            (
                "lifetime beyond the profile",
                ec,
                server,
                Box::new(|p| p.not_after = p.not_before + Duration::days(398)),
                "validity_within_profile_and_issuer",
            ),
            (
                "notAfter beyond the issuer's",
                ec,
                Profile::TlsClient,
                Box::new(|p| {
                    p.not_before += Duration::days(1826);
                    p.not_after = p.not_before + Duration::days(30);
                }),
                "validity_within_profile_and_issuer",
            ),
            (
                "CN as IA5String",
                ec,
                server,
                Box::new(|p| {
                    p.distinguished_name.push(
                        DnType::CommonName,
                        DnValue::Ia5String("www.example.com".try_into().unwrap()),
                    )
                }),
                "name_encodings",
            ),
            (
                "DNS name not in lower-case A-label form",
                ec,
                server,
                Box::new(|p| {
                    p.subject_alt_names
                        .push(SanType::DnsName("Bad_Name.example.com".try_into().unwrap()))
                }),
                "name_encodings",
            ),
        ];
        for (what, leaf_kt, profile, tamper, lint) in cases {
            let (out, signed) = issue_tampered(ec, leaf_kt, profile, tamper);
            let refusal = out.expect_err(what);
            assert!(
                refusal.findings.iter().any(|f| f.lint == lint),
                "{what}: expected {lint}, got {refusal}"
            );
            assert_eq!(signed, 0, "{what}: the CA key signed a refused certificate");
            assert!(refusal.to_string().starts_with("pre-issuance lint refused"));
        }
    }

    /// A certificate whose signature algorithm is not the issuer key's (here
    /// an Ed25519 signature under a P-256 CA) is refused, whoever built it.
    #[test]
    fn a_signature_algorithm_other_than_the_ca_keys_is_refused() {
        let ec = KeyType::EcdsaP256;
        let m = ca(ec);
        let leaf = key(ec).public_key_der();
        let names = names();
        let req = LeafRequest {
            profile: Profile::TlsServer,
            names: &names,
            spki_der: &leaf,
            key_type: ec,
            validity_days: 90,
            validity_secs: None,
            now: now(),
            urls: None,
        };
        let (params, subject_key) = leaf_params(&m.issuing_cert_der, &req).unwrap();
        let other = key(KeyType::Ed25519);
        let other = other.signing_key_pair();
        let issuer =
            rcgen::Issuer::from_ca_cert_der(&m.issuing_cert_der.clone().into(), other.get())
                .unwrap();
        let der = params.signed_by(&subject_key, &issuer).unwrap();
        for foreign in [false, true] {
            let ctx = LintContext {
                profile: Profile::TlsServer,
                key_type: ec,
                issuer_der: &m.issuing_cert_der,
                backdate: CLOCK_SKEW,
                foreign,
            };
            let lints: Vec<&str> = lint_leaf(der.der(), &ctx).iter().map(|f| f.lint).collect();
            assert_eq!(
                lints,
                vec!["signature_algorithm_consistent"],
                "foreign: {foreign}"
            );
        }
    }

    /// serverAuth + clientAuth is certflow's own fault but not another CA's
    /// (Web PKI server certificates long carried both); clientAuth alone on
    /// a server certificate is a fault whoever signed it.
    #[test]
    fn a_foreign_server_certificate_may_also_carry_client_auth() {
        let ec = KeyType::EcdsaP256;
        let both = |p: &mut CertificateParams| {
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        let (own, _) = issue_tampered(ec, ec, Profile::TlsServer, both);
        let refusal = own.expect_err("certflow never issues both");
        assert!(
            refusal
                .findings
                .iter()
                .any(|f| f.lint == "extended_key_usage_matches_profile")
        );
        let (foreign, _) = issue_tampered_as(true, ec, ec, Profile::TlsServer, both);
        foreign.expect("another CA's server certificate with clientAuth too");
        let (client_only, _) = issue_tampered_as(true, ec, ec, Profile::TlsServer, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]
        });
        assert!(client_only.is_err(), "no serverAuth is a fault for anyone");
    }

    #[test]
    fn printable_string_alphabet() {
        assert!(printable(b"Example Org (EU) Ltd. - 1/2: a=b?"));
        assert!(!printable(b"a@b"));
        assert!(!printable(b"caf\xc3\xa9"));
        assert!(!printable(b"*"));
    }

    #[test]
    fn garbage_is_a_finding_not_a_panic() {
        let m = ca(KeyType::EcdsaP256);
        let ctx = LintContext {
            profile: Profile::TlsServer,
            key_type: KeyType::EcdsaP256,
            issuer_der: &m.issuing_cert_der,
            backdate: CLOCK_SKEW,
            foreign: false,
        };
        let f = lint_leaf(&[0x30, 0x03, 0x02, 0x01, 0x01], &ctx);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].lint, "parses");
        // A CA certificate is not a leaf: several lints object.
        let lints: Vec<&str> = lint_leaf(&m.issuing_cert_der, &ctx)
            .iter()
            .map(|f| f.lint)
            .collect();
        assert!(lints.contains(&"basic_constraints_end_entity"), "{lints:?}");
        assert!(lints.contains(&"key_usage_matches_key_type"), "{lints:?}");
    }
}
