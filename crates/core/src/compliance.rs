//! Inventory compliance: every certificate certflow knows about, issued or
//! imported, rated against the issuance policies and its deployments. Pure:
//! the caller reads the certificate, its current version, the signature
//! algorithm of the stored certificate, its deployments and the clock, and
//! passes them in.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

use crate::deployments::{DeploymentState, DeploymentStatus};
use crate::destinations::{Destination, DestinationStatus};
use crate::model::{Certificate, CertificateStatus, CertificateVersion, VersionStatus};
use crate::policy::IssuancePolicy;

/// Default window of the "expiring" rule, in days.
pub const DEFAULT_EXPIRING_WITHIN_DAYS: u32 = 30;

/// Smallest RSA modulus accepted whatever the policies say (NIST SP 800-131A).
pub const MIN_RSA_BITS: u32 = 2048;

/// Smallest elliptic-curve size accepted (P-256; NIST SP 800-131A allows
/// 224-bit curves only until 2030 and browsers accept none below P-256).
pub const MIN_EC_BITS: u32 = 256;

/// The public key of a rated certificate, as far as certflow can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeyInfo {
    /// RSA with this modulus size.
    Rsa {
        /// Modulus size in bits.
        bits: u32,
    },
    /// ECDSA on a named curve.
    Ec {
        /// The curve's name, or its OID when certflow does not know it.
        curve: String,
        /// The curve's size; `None` when certflow does not know the curve.
        bits: Option<u32>,
    },
    /// Ed25519 or Ed448.
    EdDsa,
    /// DSA (withdrawn by FIPS 186-5; no browser accepts it).
    Dsa,
    /// A key algorithm certflow cannot identify, by OID.
    Unknown {
        /// The algorithm's OID, dotted.
        algorithm: String,
    },
}

impl PublicKeyInfo {
    /// What a key of `key_type` is, when only the metadata is at hand.
    pub fn of_key_type(key_type: crate::model::KeyType) -> Self {
        use crate::model::KeyType;
        match key_type {
            KeyType::EcdsaP256 => Self::Ec {
                curve: "P-256".into(),
                bits: Some(256),
            },
            KeyType::EcdsaP384 => Self::Ec {
                curve: "P-384".into(),
                bits: Some(384),
            },
            KeyType::Rsa2048 => Self::Rsa { bits: 2048 },
            KeyType::Rsa3072 => Self::Rsa { bits: 3072 },
            KeyType::Rsa4096 => Self::Rsa { bits: 4096 },
            KeyType::Ed25519 => Self::EdDsa,
        }
    }
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Breaks security or availability now.
    Critical,
    /// Will, or breaks policy.
    Warning,
    /// Worth knowing.
    Info,
}

impl Severity {
    /// All severities, most serious first.
    pub const ALL: [Severity; 3] = [Severity::Critical, Severity::Warning, Severity::Info];

    /// The stable name (`critical`, `warning`, `info`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    /// Parses the stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Rule ids (kebab-case, stable: they are metric labels and CSV values).
pub mod rules {
    /// RSA key smaller than 2048 bits or than a policy's minimum, EC key
    /// below 256 bits, DSA, or a key certflow cannot identify.
    pub const WEAK_KEY: &str = "weak-key";
    /// Signed with SHA-1 or MD5.
    pub const WEAK_SIGNATURE: &str = "weak-signature";
    /// Lifetime of the current version longer than a policy's maximum.
    pub const VALIDITY_TOO_LONG: &str = "validity-too-long";
    /// Expires within the report's window.
    pub const EXPIRING: &str = "expiring";
    /// Already expired.
    pub const EXPIRED: &str = "expired";
    /// An agent reports a revoked version installed.
    pub const REVOKED_DEPLOYED: &str = "revoked-deployed";
    /// An assigned agent has not reported the current version installed.
    pub const NOT_DEPLOYED: &str = "not-deployed";
    /// An agent reports a version other than the current one installed.
    pub const VERSION_MISMATCH: &str = "version-mismatch";
    /// A destination (ACM, a listener) does not serve the current version.
    pub const NOT_DELIVERED: &str = "not-delivered";
    /// Issued by an issuer certflow does not know.
    pub const UNKNOWN_ISSUER: &str = "unknown-issuer";
    /// Every rule id, in report order.
    pub const ALL: [&str; 10] = [
        WEAK_KEY,
        WEAK_SIGNATURE,
        VALIDITY_TOO_LONG,
        EXPIRING,
        EXPIRED,
        REVOKED_DEPLOYED,
        NOT_DEPLOYED,
        VERSION_MISMATCH,
        NOT_DELIVERED,
        UNKNOWN_ISSUER,
    ];
}

/// One broken rule, naming the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule id (see [`rules`]).
    pub rule: &'static str,
    /// How serious.
    pub severity: Severity,
    /// What is wrong, with the value.
    pub message: String,
}

/// Everything the rating needs about one certificate.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The certificate.
    pub certificate: &'a Certificate,
    /// Its current version, if stored.
    pub current: Option<&'a CertificateVersion>,
    /// The current version's public key, if known.
    pub key: Option<&'a PublicKeyInfo>,
    /// Signature algorithm of the stored certificate (e.g. `sha1WithRSAEncryption`), if parsed.
    pub signature_algorithm: Option<&'a str>,
    /// Where it stands on each assigned agent.
    pub deployments: &'a [DeploymentState],
    /// Its destinations (at least those not serving the current version).
    pub destinations: &'a [Destination],
    /// Versions of this certificate that are revoked.
    pub revoked_versions: &'a [u32],
    /// Whether its issuer is one of certflow's issuers.
    pub issuer_known: bool,
}

/// Rates one certificate against `policies` (every applicable one must pass,
/// as at issuance) at `now`; findings ordered as [`rules::ALL`].
pub fn rate(
    s: &Subject<'_>,
    policies: &[&IssuancePolicy],
    expiring_within_days: u32,
    now: OffsetDateTime,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let cert = s.certificate;
    let mut push = |rule, severity, message: String| {
        out.push(Finding {
            rule,
            severity,
            message,
        })
    };

    for f in key_and_signature(s.key, s.signature_algorithm, policies) {
        push(f.rule, f.severity, f.message);
    }

    if let Some(v) = s.current {
        let days = (v.not_after - v.not_before).as_seconds_f64() / 86_400.0;
        if let Some(max) = policies.iter().filter_map(|p| p.max_validity_days).min()
            && days > f64::from(max)
        {
            push(
                rules::VALIDITY_TOO_LONG,
                Severity::Warning,
                format!(
                    "validity of {} days exceeds the policy maximum of {max} days",
                    days.ceil()
                ),
            );
        }
    }

    let not_after = s.current.map_or(cert.not_after, |v| v.not_after);
    // Revoked and archived certificates are not expected to be renewed.
    if cert.status == CertificateStatus::Active
        && let Some(f) = expiry(not_after, expiring_within_days, now)
    {
        push(f.rule, f.severity, f.message);
    }

    let cert_revoked = cert.status == CertificateStatus::Revoked
        || s.current
            .is_some_and(|v| v.status == VersionStatus::Revoked);
    for d in s.deployments {
        let Some(report) = d
            .last_report
            .as_ref()
            .filter(|r| r.status == DeploymentStatus::Installed)
        else {
            continue;
        };
        let version_revoked = s.revoked_versions.contains(&report.version)
            || (cert_revoked && report.version == cert.current_version);
        if version_revoked {
            push(
                rules::REVOKED_DEPLOYED,
                Severity::Critical,
                format!(
                    "agent {} serves revoked version {}",
                    d.agent_name, report.version
                ),
            );
        }
    }

    if cert.status == CertificateStatus::Active {
        for f in delivery(s) {
            push(f.rule, f.severity, f.message);
        }
    }

    if !s.issuer_known {
        push(
            rules::UNKNOWN_ISSUER,
            Severity::Warning,
            format!(
                "issuer {} is not one of certflow's issuers",
                // The signer of the current version: a certificate taken over
                // from another CA keeps it until its first renewal.
                s.current.map_or(cert.issuer_id, |v| v.issuer_id)
            ),
        );
    }
    out
}

/// Where an active certificate should be served and is not: agents that
/// report another version or a failure, destinations not yet delivered.
fn delivery(s: &Subject<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let cert = s.certificate;
    let mut push = |rule, severity, message: String| {
        out.push(Finding {
            rule,
            severity,
            message,
        })
    };
    for d in s.deployments {
        match d.last_report.as_ref() {
            Some(r) if r.status == DeploymentStatus::Installed => {
                if r.version != d.assigned.version {
                    push(
                        rules::VERSION_MISMATCH,
                        Severity::Warning,
                        format!(
                            "agent {} serves version {}, the current one is {}",
                            d.agent_name, r.version, d.assigned.version
                        ),
                    );
                }
            }
            Some(r) => push(
                rules::NOT_DEPLOYED,
                Severity::Warning,
                format!(
                    "agent {} reports {} for version {}",
                    d.agent_name,
                    r.status.as_str(),
                    r.attempted_version.unwrap_or(d.assigned.version)
                ),
            ),
            None => push(
                rules::NOT_DEPLOYED,
                Severity::Info,
                format!(
                    "agent {} has not reported version {} installed",
                    d.agent_name, d.assigned.version
                ),
            ),
        }
    }

    for d in s
        .destinations
        .iter()
        .filter(|d| is_undelivered(d, cert.current_version))
    {
        push(
            rules::NOT_DELIVERED,
            // Like an agent's report: a failure needs someone, a
            // delivery not yet attempted only time.
            if d.status == DestinationStatus::Failed {
                Severity::Warning
            } else {
                Severity::Info
            },
            undelivered_message(d, cert.current_version),
        );
    }
    out
}

/// Whether `d` does not serve `current_version` yet: not delivered, or
/// delivered an older version (a renewal it has not taken yet).
pub fn is_undelivered(d: &Destination, current_version: u32) -> bool {
    d.status != DestinationStatus::Delivered || d.delivered_version != Some(current_version)
}

/// What the not-delivered finding says about `d`.
fn undelivered_message(d: &Destination, current_version: u32) -> String {
    let place = match &d.listener_arn {
        Some(listener) => format!("{} {listener} in {}", d.kind.as_str(), d.target.region),
        None => format!("{} in {}", d.kind.as_str(), d.target.region),
    };
    let serves = d
        .delivered_version
        .map_or_else(|| "nothing yet".to_owned(), |v| format!("version {v}"));
    match (d.status, d.last_error.as_deref()) {
        (DestinationStatus::Failed, Some(e)) => format!(
            "destination {place} serves {serves}, not version {current_version}: {} failed attempt(s), last: {e}",
            d.attempts
        ),
        _ => format!(
            "destination {place} serves {serves}, not version {current_version} ({})",
            d.status.as_str()
        ),
    }
}

/// The key-size and signature-algorithm rules (weak-key, weak-signature).
fn key_and_signature(
    key: Option<&PublicKeyInfo>,
    signature_algorithm: Option<&str>,
    policies: &[&IssuancePolicy],
) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some((severity, message)) = key.and_then(|k| weak_key(k, policies)) {
        out.push(Finding {
            rule: rules::WEAK_KEY,
            severity,
            message,
        });
    }
    if let Some(alg) = signature_algorithm {
        let lower = alg.to_ascii_lowercase();
        if lower.contains("sha1") || lower.contains("sha-1") || lower.contains("md5") {
            out.push(Finding {
                rule: rules::WEAK_SIGNATURE,
                severity: Severity::Critical,
                message: format!("signature algorithm {alg} is broken (SHA-1 or MD5)"),
            });
        }
    }
    out
}

/// The weak-key rule: how weak `key` is and why, if it is.
fn weak_key(key: &PublicKeyInfo, policies: &[&IssuancePolicy]) -> Option<(Severity, String)> {
    match key {
        PublicKeyInfo::Rsa { bits } => {
            let bits = *bits;
            let min = policies
                .iter()
                .filter_map(|p| p.min_rsa_bits)
                .fold(MIN_RSA_BITS, u32::max);
            if bits < MIN_RSA_BITS {
                Some((
                    Severity::Critical,
                    format!("RSA key of {bits} bits is below {MIN_RSA_BITS}"),
                ))
            } else if bits < min {
                Some((
                    Severity::Warning,
                    format!("RSA key of {bits} bits is below the policy minimum of {min}"),
                ))
            } else {
                None
            }
        }
        PublicKeyInfo::Ec {
            curve,
            bits: Some(bits),
        } if *bits < MIN_EC_BITS => Some((
            Severity::Critical,
            format!("EC key on {curve} ({bits} bits) is below {MIN_EC_BITS} bits"),
        )),
        PublicKeyInfo::Ec { bits: Some(_), .. } | PublicKeyInfo::EdDsa => None,
        // Not knowing the curve means not knowing its strength: someone
        // has to look, but nothing says it is broken.
        PublicKeyInfo::Ec { curve, bits: None } => Some((
            Severity::Warning,
            format!("EC key on curve {curve}, which certflow cannot rate"),
        )),
        PublicKeyInfo::Dsa => Some((
            Severity::Critical,
            "DSA key: DSA is withdrawn (FIPS 186-5) and no browser accepts it".into(),
        )),
        PublicKeyInfo::Unknown { algorithm } => Some((
            Severity::Warning,
            format!("key algorithm {algorithm} is not one certflow can rate"),
        )),
    }
}

/// The expired and expiring rules for a certificate ending at `not_after`.
fn expiry(
    not_after: OffsetDateTime,
    expiring_within_days: u32,
    now: OffsetDateTime,
) -> Option<Finding> {
    if not_after <= now {
        Some(Finding {
            rule: rules::EXPIRED,
            severity: Severity::Critical,
            message: format!("expired at {}", rfc3339(not_after)),
        })
    } else if not_after <= now + time::Duration::days(i64::from(expiring_within_days)) {
        Some(Finding {
            rule: rules::EXPIRING,
            severity: Severity::Warning,
            message: format!(
                "expires at {} (within {expiring_within_days} days)",
                rfc3339(not_after)
            ),
        })
    } else {
        None
    }
}

/// Everything the rating needs about a certificate an agent found that
/// certflow does not manage (see [`crate::discovery`]).
#[derive(Debug, Clone, Copy)]
pub struct DiscoveredSubject<'a> {
    /// End of its validity.
    pub not_after: OffsetDateTime,
    /// Its public key, if the certificate was sent.
    pub key: Option<&'a PublicKeyInfo>,
    /// Its signature algorithm, if the certificate was sent.
    pub signature_algorithm: Option<&'a str>,
    /// Its issuer DN, as reported.
    pub issuer: &'a str,
    /// Whether one of certflow's issuers signed it.
    pub issuer_known: bool,
}

/// Rates an unmanaged discovered certificate: key, signature, expiry and
/// issuer (the validity and deployment rules concern managed certificates
/// only); findings ordered as [`rules::ALL`].
pub fn rate_discovered(
    s: &DiscoveredSubject<'_>,
    policies: &[&IssuancePolicy],
    expiring_within_days: u32,
    now: OffsetDateTime,
) -> Vec<Finding> {
    let mut out = key_and_signature(s.key, s.signature_algorithm, policies);
    out.extend(expiry(s.not_after, expiring_within_days, now));
    if !s.issuer_known {
        out.push(Finding {
            rule: rules::UNKNOWN_ISSUER,
            severity: Severity::Warning,
            message: format!("issuer {} is not one of certflow's issuers", s.issuer),
        });
    }
    out
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Counts by rule and by severity, every rule and severity present (zero included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Findings per rule id.
    pub by_rule: BTreeMap<String, u64>,
    /// Findings per severity.
    pub by_severity: BTreeMap<String, u64>,
    /// Findings per (rule, severity) pair, for metrics.
    #[serde(skip)]
    pub by_rule_severity: BTreeMap<(String, String), u64>,
    /// Certificates rated.
    pub certificates: u64,
    /// Certificates with at least one finding.
    pub non_compliant: u64,
    /// Of those rated, unmanaged certificates agents discovered.
    pub discovered: u64,
    /// Destinations not serving their certificate's current version (the
    /// `not-delivered` findings).
    pub undelivered_destinations: u64,
}

impl Summary {
    /// An empty summary listing every rule and severity at zero.
    pub fn new() -> Self {
        Self {
            by_rule: rules::ALL.iter().map(|r| ((*r).to_owned(), 0)).collect(),
            by_severity: Severity::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), 0))
                .collect(),
            ..Self::default()
        }
    }

    /// Adds one unmanaged discovered certificate's findings.
    pub fn add_discovered(&mut self, findings: &[Finding]) {
        self.add(findings);
        self.discovered += 1;
    }

    /// Adds one certificate's findings.
    pub fn add(&mut self, findings: &[Finding]) {
        self.certificates += 1;
        if !findings.is_empty() {
            self.non_compliant += 1;
        }
        for f in findings {
            if f.rule == rules::NOT_DELIVERED {
                self.undelivered_destinations += 1;
            }
            *self.by_rule.entry(f.rule.to_owned()).or_default() += 1;
            *self
                .by_severity
                .entry(f.severity.as_str().to_owned())
                .or_default() += 1;
            *self
                .by_rule_severity
                .entry((f.rule.to_owned(), f.severity.as_str().to_owned()))
                .or_default() += 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::deployments::{AssignedCertificate, Deployment};
    use crate::model::{KeySource, KeyType, Labels};
    use crate::names::SubjectName;
    use crate::profile::Profile;
    use crate::renewal::RenewalPolicy;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap()
    }

    fn cert() -> Certificate {
        Certificate {
            id: Uuid::nil(),
            name: "www".into(),
            team: "web".into(),
            labels: Labels::default(),
            profile: Profile::TlsServer,
            key_type: KeyType::EcdsaP256,
            key_source: KeySource::Server,
            names: vec![SubjectName::Dns("www.example.com".into())],
            validity_days: 90,
            validity_secs: None,
            issuer_id: Uuid::nil(),
            renewal: RenewalPolicy::default(),
            status: CertificateStatus::Active,
            managed: true,
            current_version: 2,
            not_after: t0() + time::Duration::days(80),
            renew_after: t0() + time::Duration::days(50),
            created_at: t0() - time::Duration::days(10),
            updated_at: t0() - time::Duration::days(10),
        }
    }

    fn version(c: &Certificate) -> CertificateVersion {
        CertificateVersion {
            certificate_id: c.id,
            version: c.current_version,
            serial: "01".into(),
            fingerprint_sha256: "ff".into(),
            not_before: c.not_after - time::Duration::days(90),
            not_after: c.not_after,
            key_type: c.key_type,
            names: c.names.clone(),
            issuer_id: c.issuer_id,
            status: VersionStatus::Current,
            revoked_at: None,
            revocation_reason: None,
            cert_blob: "b".into(),
            key_blob: None,
            created_at: c.created_at,
        }
    }

    fn deployment(c: &Certificate, report: Option<(u32, DeploymentStatus)>) -> DeploymentState {
        DeploymentState {
            agent_id: Uuid::nil(),
            agent_name: "web-1".into(),
            assigned: AssignedCertificate {
                certificate_id: c.id,
                name: c.name.clone(),
                team: c.team.clone(),
                key_source: c.key_source,
                status: c.status,
                version: c.current_version,
                serial: "01".into(),
                fingerprint_sha256: "ff".into(),
                names: c.names.clone(),
                not_after: c.not_after,
                issued_at: c.created_at,
                assigned_at: c.created_at,
            },
            last_report: report.map(|(version, status)| Deployment {
                agent_id: Uuid::nil(),
                certificate_id: c.id,
                version,
                fingerprint_sha256: "ff".into(),
                status,
                attempted_version: None,
                error: None,
                reported_at: t0(),
                agent_version: None,
            }),
            drift_notified_version: None,
        }
    }

    fn destination(
        c: &Certificate,
        status: DestinationStatus,
        delivered_version: Option<u32>,
    ) -> Destination {
        use crate::destinations::{AwsTarget, DestinationKind};
        Destination {
            id: Uuid::nil(),
            certificate_id: c.id,
            kind: DestinationKind::AwsAcm,
            target: AwsTarget {
                region: "eu-west-1".into(),
                role_arn: None,
                role_external_id: None,
            },
            listener_arn: None,
            default_certificate: false,
            status,
            external_id: None,
            delivered_version,
            delivered_serial: None,
            attempts: u32::from(status == DestinationStatus::Failed),
            next_attempt_at: t0(),
            last_error: (status == DestinationStatus::Failed).then(|| "AccessDenied".into()),
            verified_at: None,
            created_by: "admin".into(),
            created_at: t0(),
            updated_at: t0(),
        }
    }

    struct Case {
        name: &'static str,
        edit: fn(&mut Certificate, &mut CertificateVersion, &mut Inputs),
        policy: IssuancePolicy,
        expect: &'static [(&'static str, Severity)],
    }

    #[derive(Default)]
    struct Inputs {
        key: Option<PublicKeyInfo>,
        sig: Option<&'static str>,
        deployments: Vec<Option<(u32, DeploymentStatus)>>,
        destinations: Vec<(DestinationStatus, Option<u32>)>,
        revoked: Vec<u32>,
        unknown_issuer: bool,
    }

    fn run(case: &Case) -> Vec<(&'static str, Severity)> {
        let mut c = cert();
        let mut v = version(&c);
        let mut inputs = Inputs {
            sig: Some("ecdsa-with-SHA256"),
            deployments: vec![Some((2, DeploymentStatus::Installed))],
            ..Inputs::default()
        };
        (case.edit)(&mut c, &mut v, &mut inputs);
        let deployments: Vec<_> = inputs
            .deployments
            .iter()
            .map(|r| deployment(&c, *r))
            .collect();
        let destinations: Vec<_> = inputs
            .destinations
            .iter()
            .map(|(status, version)| destination(&c, *status, *version))
            .collect();
        let s = Subject {
            certificate: &c,
            current: Some(&v),
            key: inputs.key.as_ref(),
            signature_algorithm: inputs.sig,
            deployments: &deployments,
            destinations: &destinations,
            revoked_versions: &inputs.revoked,
            issuer_known: !inputs.unknown_issuer,
        };
        rate(&s, &[&case.policy], 30, t0())
            .into_iter()
            .map(|f| {
                assert!(!f.message.is_empty(), "{}: empty message", case.name);
                (f.rule, f.severity)
            })
            .collect()
    }

    fn ec(curve: &str, bits: Option<u32>) -> PublicKeyInfo {
        PublicKeyInfo::Ec {
            curve: curve.into(),
            bits,
        }
    }

    /// The message names what is weak, so that the report says what to fix.
    #[test]
    fn weak_key_messages_name_the_key() {
        let message = |key: PublicKeyInfo| {
            let f = key_and_signature(Some(&key), None, &[]);
            assert_eq!(f.len(), 1, "{key:?}");
            f[0].message.clone()
        };
        let m = message(ec("P-192", Some(192)));
        assert!(m.contains("P-192") && m.contains("192 bits"), "{m}");
        let m = message(ec("1.3.132.0.99", None));
        assert!(
            m.contains("1.3.132.0.99") && m.contains("cannot rate"),
            "{m}"
        );
        assert!(message(PublicKeyInfo::Dsa).contains("DSA"));
        let m = message(PublicKeyInfo::Unknown {
            algorithm: "1.2.643.2.2.19".into(),
        });
        assert!(m.contains("1.2.643.2.2.19"), "{m}");
    }

    /// Without the certificate, the metadata's key type stands in; every
    /// key type certflow issues passes.
    #[test]
    fn every_issued_key_type_is_known_and_strong() {
        for kt in KeyType::ALL {
            let key = PublicKeyInfo::of_key_type(kt);
            assert!(!matches!(key, PublicKeyInfo::Unknown { .. }), "{kt:?}");
            assert!(weak_key(&key, &[]).is_none(), "{kt:?}");
        }
        assert_eq!(
            PublicKeyInfo::of_key_type(KeyType::EcdsaP384),
            ec("P-384", Some(384))
        );
    }

    #[test]
    fn every_rule_fires_alone_and_a_clean_certificate_has_no_finding() {
        use DeploymentStatus::*;
        use Severity::*;
        let strict = IssuancePolicy {
            min_rsa_bits: Some(3072),
            max_validity_days: Some(47),
            ..IssuancePolicy::default()
        };
        let cases = [
            Case {
                name: "clean",
                edit: |_, _, _| {},
                policy: IssuancePolicy::default(),
                expect: &[],
            },
            Case {
                name: "rsa-1024",
                edit: |_, _, i| i.key = Some(PublicKeyInfo::Rsa { bits: 1024 }),
                policy: IssuancePolicy::default(),
                expect: &[(rules::WEAK_KEY, Critical)],
            },
            Case {
                name: "rsa-2048 under a 3072 policy",
                edit: |_, _, i| i.key = Some(PublicKeyInfo::Rsa { bits: 2048 }),
                policy: strict.clone(),
                expect: &[
                    (rules::WEAK_KEY, Warning),
                    (rules::VALIDITY_TOO_LONG, Warning),
                ],
            },
            Case {
                name: "rsa-4096",
                edit: |_, _, i| i.key = Some(PublicKeyInfo::Rsa { bits: 4096 }),
                policy: IssuancePolicy::default(),
                expect: &[],
            },
            Case {
                name: "P-192",
                edit: |_, _, i| i.key = Some(ec("P-192", Some(192))),
                policy: IssuancePolicy::default(),
                expect: &[(rules::WEAK_KEY, Critical)],
            },
            Case {
                name: "P-224",
                edit: |_, _, i| i.key = Some(ec("P-224", Some(224))),
                policy: IssuancePolicy::default(),
                expect: &[(rules::WEAK_KEY, Critical)],
            },
            Case {
                name: "P-256 under a 3072-bit RSA policy",
                edit: |_, _, i| i.key = Some(ec("P-256", Some(256))),
                policy: IssuancePolicy {
                    min_rsa_bits: Some(3072),
                    ..IssuancePolicy::default()
                },
                expect: &[],
            },
            Case {
                name: "P-384",
                edit: |_, _, i| i.key = Some(ec("P-384", Some(384))),
                policy: IssuancePolicy::default(),
                expect: &[],
            },
            Case {
                name: "a curve certflow does not know",
                edit: |_, _, i| i.key = Some(ec("1.2.3.4", None)),
                policy: IssuancePolicy::default(),
                expect: &[(rules::WEAK_KEY, Warning)],
            },
            Case {
                name: "Ed25519",
                edit: |_, _, i| i.key = Some(PublicKeyInfo::EdDsa),
                policy: IssuancePolicy::default(),
                expect: &[],
            },
            Case {
                name: "DSA",
                edit: |_, _, i| i.key = Some(PublicKeyInfo::Dsa),
                policy: IssuancePolicy::default(),
                expect: &[(rules::WEAK_KEY, Critical)],
            },
            Case {
                name: "an unknown key algorithm",
                edit: |_, _, i| {
                    i.key = Some(PublicKeyInfo::Unknown {
                        algorithm: "1.2.643.2.2.19".into(),
                    })
                },
                policy: IssuancePolicy::default(),
                expect: &[(rules::WEAK_KEY, Warning)],
            },
            Case {
                name: "sha1",
                edit: |_, _, i| i.sig = Some("sha1WithRSAEncryption"),
                policy: IssuancePolicy::default(),
                expect: &[(rules::WEAK_SIGNATURE, Critical)],
            },
            Case {
                name: "md5",
                edit: |_, _, i| i.sig = Some("md5WithRSAEncryption"),
                policy: IssuancePolicy::default(),
                expect: &[(rules::WEAK_SIGNATURE, Critical)],
            },
            Case {
                name: "validity 90 > 47",
                edit: |_, _, _| {},
                policy: IssuancePolicy {
                    max_validity_days: Some(47),
                    ..IssuancePolicy::default()
                },
                expect: &[(rules::VALIDITY_TOO_LONG, Warning)],
            },
            Case {
                name: "validity 90 = 90",
                edit: |_, _, _| {},
                policy: IssuancePolicy {
                    max_validity_days: Some(90),
                    ..IssuancePolicy::default()
                },
                expect: &[],
            },
            Case {
                name: "expiring in 10 days",
                edit: |c, v, _| {
                    c.not_after = t0() + time::Duration::days(10);
                    v.not_after = c.not_after;
                },
                policy: IssuancePolicy::default(),
                expect: &[(rules::EXPIRING, Warning)],
            },
            Case {
                name: "expired",
                edit: |c, v, _| {
                    c.not_after = t0() - time::Duration::days(1);
                    v.not_after = c.not_after;
                },
                policy: IssuancePolicy::default(),
                expect: &[(rules::EXPIRED, Critical)],
            },
            Case {
                name: "revoked version deployed",
                edit: |c, v, _| {
                    c.status = CertificateStatus::Revoked;
                    v.status = VersionStatus::Revoked;
                },
                policy: IssuancePolicy::default(),
                expect: &[(rules::REVOKED_DEPLOYED, Critical)],
            },
            Case {
                name: "older revoked version deployed",
                edit: |_, _, i| {
                    i.revoked = vec![1];
                    i.deployments = vec![Some((1, Installed))];
                },
                policy: IssuancePolicy::default(),
                expect: &[
                    (rules::REVOKED_DEPLOYED, Critical),
                    (rules::VERSION_MISMATCH, Warning),
                ],
            },
            Case {
                name: "never reported",
                edit: |_, _, i| i.deployments = vec![None],
                policy: IssuancePolicy::default(),
                expect: &[(rules::NOT_DEPLOYED, Info)],
            },
            Case {
                name: "install failed",
                edit: |_, _, i| i.deployments = vec![Some((2, Failed))],
                policy: IssuancePolicy::default(),
                expect: &[(rules::NOT_DEPLOYED, Warning)],
            },
            Case {
                name: "older version served",
                edit: |_, _, i| i.deployments = vec![Some((1, Installed))],
                policy: IssuancePolicy::default(),
                expect: &[(rules::VERSION_MISMATCH, Warning)],
            },
            Case {
                name: "destination delivered the current version",
                edit: |_, _, i| i.destinations = vec![(DestinationStatus::Delivered, Some(2))],
                policy: IssuancePolicy::default(),
                expect: &[],
            },
            Case {
                name: "destination pending",
                edit: |_, _, i| i.destinations = vec![(DestinationStatus::Pending, None)],
                policy: IssuancePolicy::default(),
                expect: &[(rules::NOT_DELIVERED, Info)],
            },
            Case {
                name: "destination failed",
                edit: |_, _, i| i.destinations = vec![(DestinationStatus::Failed, None)],
                policy: IssuancePolicy::default(),
                expect: &[(rules::NOT_DELIVERED, Warning)],
            },
            Case {
                name: "destination serving the previous version",
                edit: |_, _, i| i.destinations = vec![(DestinationStatus::Delivered, Some(1))],
                policy: IssuancePolicy::default(),
                expect: &[(rules::NOT_DELIVERED, Info)],
            },
            Case {
                name: "failed destination of a revoked certificate",
                edit: |c, v, i| {
                    c.status = CertificateStatus::Revoked;
                    v.status = VersionStatus::Revoked;
                    i.deployments = vec![];
                    i.destinations = vec![(DestinationStatus::Failed, Some(1))];
                },
                policy: IssuancePolicy::default(),
                expect: &[],
            },
            Case {
                name: "unknown issuer",
                edit: |_, _, i| i.unknown_issuer = true,
                policy: IssuancePolicy::default(),
                expect: &[(rules::UNKNOWN_ISSUER, Warning)],
            },
        ];
        for case in &cases {
            assert_eq!(run(case), case.expect, "{}", case.name);
        }
    }

    #[test]
    fn the_expiring_window_is_a_parameter() {
        let c = cert(); // expires in 80 days
        let s = Subject {
            certificate: &c,
            current: None,
            key: None,
            signature_algorithm: None,
            deployments: &[],
            destinations: &[],
            revoked_versions: &[],
            issuer_known: true,
        };
        assert!(rate(&s, &[], 30, t0()).is_empty());
        let f = rate(&s, &[], 90, t0());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, rules::EXPIRING);
        assert!(f[0].message.contains("within 90 days"), "{}", f[0].message);
    }

    #[test]
    fn a_discovered_certificate_is_rated_for_key_signature_expiry_and_issuer() {
        let legacy = DiscoveredSubject {
            not_after: t0() - time::Duration::days(1),
            key: Some(&PublicKeyInfo::Rsa { bits: 1024 }),
            signature_algorithm: Some("sha1WithRSAEncryption"),
            issuer: "CN=Old CA",
            issuer_known: false,
        };
        let found: Vec<_> = rate_discovered(&legacy, &[], 30, t0())
            .into_iter()
            .map(|f| (f.rule, f.severity))
            .collect();
        assert_eq!(
            found,
            [
                (rules::WEAK_KEY, Severity::Critical),
                (rules::WEAK_SIGNATURE, Severity::Critical),
                (rules::EXPIRED, Severity::Critical),
                (rules::UNKNOWN_ISSUER, Severity::Warning),
            ]
        );
        let fine = DiscoveredSubject {
            not_after: t0() + time::Duration::days(60),
            key: Some(&PublicKeyInfo::Rsa { bits: 2048 }),
            signature_algorithm: Some("sha256WithRSAEncryption"),
            issuer: "CN=test Issuing CA",
            issuer_known: true,
        };
        assert!(rate_discovered(&fine, &[], 30, t0()).is_empty());
        let strict = IssuancePolicy {
            min_rsa_bits: Some(3072),
            ..IssuancePolicy::default()
        };
        let f = rate_discovered(
            &DiscoveredSubject {
                not_after: t0() + time::Duration::days(10),
                ..fine
            },
            &[&strict],
            30,
            t0(),
        );
        let f: Vec<_> = f.into_iter().map(|f| (f.rule, f.severity)).collect();
        assert_eq!(
            f,
            [
                (rules::WEAK_KEY, Severity::Warning),
                (rules::EXPIRING, Severity::Warning)
            ]
        );
    }

    #[test]
    fn the_summary_counts_by_rule_and_severity_with_zeros() {
        let mut s = Summary::new();
        s.add(&[]);
        s.add(&[Finding {
            rule: rules::EXPIRED,
            severity: Severity::Critical,
            message: "x".into(),
        }]);
        assert_eq!(s.certificates, 2);
        assert_eq!(s.non_compliant, 1);
        assert_eq!(s.by_rule[rules::EXPIRED], 1);
        assert_eq!(s.by_rule[rules::WEAK_KEY], 0);
        assert_eq!(s.by_severity["critical"], 1);
        assert_eq!(s.by_severity["info"], 0);
        assert_eq!(s.undelivered_destinations, 0);
        s.add(&[Finding {
            rule: rules::NOT_DELIVERED,
            severity: Severity::Warning,
            message: "x".into(),
        }]);
        assert_eq!(s.undelivered_destinations, 1);
        assert_eq!(s.by_rule[rules::NOT_DELIVERED], 1);
    }

    /// The finding names the place, what it serves, and why it failed.
    #[test]
    fn the_not_delivered_message_names_place_version_and_reason() {
        let c = cert();
        let d = destination(&c, DestinationStatus::Failed, Some(1));
        let m = undelivered_message(&d, 2);
        assert!(
            m.contains("aws-acm in eu-west-1")
                && m.contains("serves version 1, not version 2")
                && m.contains("AccessDenied"),
            "{m}"
        );
    }
}
