//! The inventory compliance report: every certificate the reader may see,
//! rated against the issuance policies and its deployments
//! ([`certflow_core::compliance`]), and the unmanaged certificates agents
//! discovered on their hosts, rated on their own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use certflow_core::DomainResult;
use certflow_core::compliance::{self, Finding, PublicKeyInfo, Subject, Summary};
use certflow_core::deployments::DeploymentState;
use certflow_core::destinations::Destination;
use certflow_core::model::{
    Certificate, CertificateQuery, CertificateStatus, CertificateVersion, SortKey, VersionStatus,
};
use certflow_core::policy::PolicySet;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Services;
use crate::agents::Agents;
use crate::deployments::Deployments;

/// Certificates read per page (the store's largest page).
const PAGE: u32 = 500;

/// One certificate with findings.
#[derive(Debug, Clone, Serialize)]
pub struct ComplianceItem {
    /// The certificate.
    pub certificate_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its team.
    pub team: String,
    /// What it breaks (never empty: compliant certificates are only counted).
    pub findings: Vec<Finding>,
}

/// One unmanaged discovered certificate with findings.
#[derive(Debug, Clone, Serialize)]
pub struct DiscoveredComplianceItem {
    /// The discovery (see `GET /discovered`).
    pub discovered_id: Uuid,
    /// The agent that found it.
    pub agent_id: Uuid,
    /// Its name.
    pub agent_name: String,
    /// Where: `file:/path` or `tls:host:port[,sni]`.
    pub source: String,
    /// Subject DN.
    pub subject: String,
    /// Its names.
    pub names: Vec<String>,
    /// SHA-256 (lower-case hex) of its DER.
    pub fingerprint_sha256: String,
    /// What it breaks (never empty).
    pub findings: Vec<Finding>,
}

/// A destination that does not serve its certificate's current version
/// (each is also a `not-delivered` finding of its certificate).
#[derive(Debug, Clone, Serialize)]
pub struct UndeliveredDestination {
    /// The destination.
    pub destination_id: Uuid,
    /// Its certificate.
    pub certificate_id: Uuid,
    /// The certificate's name.
    pub name: String,
    /// The certificate's team.
    pub team: String,
    /// `aws-acm` or `aws-elbv2-listener`.
    pub kind: &'static str,
    /// `pending`, `failed`, or `delivered` (an older version).
    pub status: &'static str,
    /// AWS region.
    pub region: String,
    /// The listener (`aws-elbv2-listener`).
    pub listener_arn: Option<String>,
    /// The ACM certificate ARN, once imported.
    pub external_id: Option<String>,
    /// Version it serves, if any.
    pub delivered_version: Option<u32>,
    /// The certificate's current version, which it should serve.
    pub current_version: u32,
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// Reason of the last failure.
    pub last_error: Option<String>,
    /// Last change of state.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct ComplianceReport {
    /// When it was computed.
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// Window of the `expiring` rule, in days.
    pub expiring_within_days: u32,
    /// Counts by rule and severity.
    pub summary: Summary,
    /// Certificates with findings, by team then name.
    pub items: Vec<ComplianceItem>,
    /// Unmanaged certificates agents discovered, with findings, by agent
    /// name then source (empty when the server takes no discovery reports).
    pub discovered: Vec<DiscoveredComplianceItem>,
    /// Destinations not serving the current version, by team, certificate
    /// name, then attachment (empty when destinations are not configured).
    pub undelivered_destinations: Vec<UndeliveredDestination>,
}

/// What the stored certificate itself says (the metadata cannot tell).
#[derive(Default)]
struct Parsed {
    signature_algorithm: Option<String>,
    key: Option<PublicKeyInfo>,
}

/// Names of the signature algorithms x509-parser's registry might not spell
/// as the core's rule expects; anything else is shown by its registry name or OID.
fn signature_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "1.2.840.113549.1.1.2" => "md2WithRSAEncryption",
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.3.14.3.2.29" => "sha1WithRSASignature",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        "1.2.840.10040.4.3" => "dsa-with-sha1",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        "1.3.101.112" => "Ed25519",
        _ => return None,
    })
}

/// Named curves by OID with their size in bits (SEC 2, RFC 5639); any
/// other curve is rated as one certflow cannot rate.
fn named_curve(oid: &str) -> Option<(&'static str, u32)> {
    Some(match oid {
        "1.2.840.10045.3.1.1" => ("P-192", 192),
        "1.3.132.0.33" => ("P-224", 224),
        "1.2.840.10045.3.1.7" => ("P-256", 256),
        "1.3.132.0.34" => ("P-384", 384),
        "1.3.132.0.35" => ("P-521", 521),
        "1.3.132.0.8" => ("secp160r1", 160),
        "1.3.132.0.31" => ("secp192k1", 192),
        "1.3.132.0.32" => ("secp224k1", 224),
        "1.3.132.0.10" => ("secp256k1", 256),
        "1.3.36.3.3.2.8.1.1.1" => ("brainpoolP160r1", 160),
        "1.3.36.3.3.2.8.1.1.3" => ("brainpoolP192r1", 192),
        "1.3.36.3.3.2.8.1.1.5" => ("brainpoolP224r1", 224),
        "1.3.36.3.3.2.8.1.1.7" => ("brainpoolP256r1", 256),
        "1.3.36.3.3.2.8.1.1.11" => ("brainpoolP384r1", 384),
        "1.3.36.3.3.2.8.1.1.13" => ("brainpoolP512r1", 512),
        _ => return None,
    })
}

/// Size in bits of a big-endian unsigned integer (leading zero octets and
/// bits do not count: a 2047-bit modulus is not a 2048-bit one).
fn bit_length(bytes: &[u8]) -> u32 {
    let bytes = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => return 0,
    };
    let full = u32::try_from(bytes.len() - 1).unwrap_or(u32::MAX / 16);
    full * 8 + (8 - bytes[0].leading_zeros())
}

fn public_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> PublicKeyInfo {
    use x509_parser::public_key::PublicKey;
    let algorithm = spki.algorithm.algorithm.to_id_string();
    match algorithm.as_str() {
        // id-Ed25519, id-Ed448 (RFC 8410).
        "1.3.101.112" | "1.3.101.113" => return PublicKeyInfo::EdDsa,
        // id-ecPublicKey: the curve is the parameters' OID (RFC 5480);
        // explicit curve parameters are not rated.
        "1.2.840.10045.2.1" => {
            let oid = spki
                .algorithm
                .parameters
                .as_ref()
                // `as_oid` does not check the tag: a SEQUENCE of explicit
                // parameters would read as a nonsense OID.
                .filter(|p| p.header.tag().0 == 6)
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            return match oid {
                Some(oid) => match named_curve(&oid) {
                    Some((name, bits)) => PublicKeyInfo::Ec {
                        curve: name.into(),
                        bits: Some(bits),
                    },
                    None => PublicKeyInfo::Ec {
                        curve: oid,
                        bits: None,
                    },
                },
                None => PublicKeyInfo::Ec {
                    curve: "explicit parameters".into(),
                    bits: None,
                },
            };
        }
        _ => {}
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => PublicKeyInfo::Rsa {
            bits: bit_length(rsa.modulus),
        },
        Ok(PublicKey::DSA(_)) => PublicKeyInfo::Dsa,
        _ => PublicKeyInfo::Unknown { algorithm },
    }
}

/// The team filters to page through: all teams at once, or each team.
fn scopes(teams: Option<&[String]>) -> Vec<Option<String>> {
    match teams {
        None => vec![None],
        Some(t) => t.iter().cloned().map(Some).collect(),
    }
}

fn parse(der: &[u8]) -> Parsed {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Parsed::default();
    };
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let signature_algorithm = Some(signature_name(&oid).map_or(oid, str::to_owned));
    Parsed {
        signature_algorithm,
        key: Some(public_key(cert.public_key())),
    }
}

impl Services {
    /// Rates one page of fetched certificates on the CPU pool.
    async fn rate_page(
        &self,
        fetched: Vec<Fetched>,
        issuer_names: &Arc<HashMap<Uuid, String>>,
        expiring_within_days: u32,
        now: OffsetDateTime,
    ) -> DomainResult<Vec<(Certificate, Vec<Destination>, Vec<Finding>)>> {
        let (names, policies) = (issuer_names.clone(), self.policies.clone());
        self.cpu
            .run("compliance report", move || {
                Ok(fetched
                    .into_iter()
                    .map(|f| {
                        let findings = f.rate(&names, &policies, expiring_within_days, now);
                        (f.certificate, f.destinations, findings)
                    })
                    .collect::<Vec<_>>())
            })
            .await
    }

    /// The destinations not serving their certificate's current version, by
    /// certificate (only those: a delivered destination has no finding).
    async fn undelivered_by_certificate(
        &self,
        teams: Option<&[String]>,
    ) -> DomainResult<HashMap<Uuid, Vec<Destination>>> {
        let mut destinations: HashMap<Uuid, Vec<Destination>> = HashMap::new();
        if let Some(ports) = &self.destinations {
            for due in ports.store.undelivered_destinations(teams).await? {
                destinations
                    .entry(due.destination.certificate_id)
                    .or_default()
                    .push(due.destination);
            }
        }
        Ok(destinations)
    }

    /// Rates every certificate of `teams` (`None`: all teams) except archived
    /// ones, which certflow no longer manages.
    ///
    /// Cost: certificates are read in pages of 500; each certificate then
    /// costs one version query and one blob read (its current DER, for the
    /// signature algorithm and key size, which the metadata does not hold),
    /// sequentially, so 100k certificates are ~200k point reads and memory
    /// holds one page plus the findings. Deployments are read once per agent
    /// (`agent_deployments`), not per certificate: agents are far fewer;
    /// destinations not serving the current version in one query.
    /// Parsing and rating a page, and the discovered certificates (one
    /// signature check per issuer each), run on the CPU pool.
    pub async fn compliance_report(
        &self,
        fleet: Option<(&Deployments, &Agents)>,
        teams: Option<&[String]>,
        expiring_within_days: u32,
        now: OffsetDateTime,
    ) -> DomainResult<ComplianceReport> {
        let issuers = self.store.list_issuers().await?;
        // External CAs (recorded for imported certificates) are not
        // certflow's: their certificates get the unknown-issuer finding.
        let issuer_names: Arc<HashMap<Uuid, String>> = Arc::new(
            issuers
                .iter()
                .filter(|i| i.kind != certflow_core::model::IssuerKind::External)
                .map(|i| (i.id, i.name.clone()))
                .collect(),
        );

        let mut deployed: HashMap<Uuid, Vec<DeploymentState>> = HashMap::new();
        if let Some((deployments, agents)) = fleet {
            let visible: Option<HashSet<&str>> =
                teams.map(|t| t.iter().map(String::as_str).collect());
            for agent in agents.list().await? {
                for s in deployments.agent_deployments(agent.id).await? {
                    if visible
                        .as_ref()
                        .is_none_or(|v| v.contains(s.assigned.team.as_str()))
                    {
                        deployed
                            .entry(s.assigned.certificate_id)
                            .or_default()
                            .push(s);
                    }
                }
            }
        }

        let mut destinations = self.undelivered_by_certificate(teams).await?;

        let mut summary = Summary::new();
        let mut items = Vec::new();
        let mut undelivered = Vec::new();
        for team in scopes(teams) {
            let mut offset = 0u64;
            loop {
                let query = CertificateQuery {
                    team: team.clone(),
                    sort: SortKey::Name,
                    limit: PAGE,
                    offset,
                    ..CertificateQuery::default()
                };
                let page = self.store.list_certificates(&query).await?;
                let n = page.items.len();
                let mut fetched = Vec::with_capacity(n);
                for certificate in page.items {
                    if certificate.status == CertificateStatus::Archived {
                        continue;
                    }
                    // A certificate belongs to one team: listed once.
                    let deployments = deployed.remove(&certificate.id).unwrap_or_default();
                    let dests = destinations.remove(&certificate.id).unwrap_or_default();
                    fetched.push(self.fetch(certificate, deployments, dests).await?);
                }
                let rated = self
                    .rate_page(fetched, &issuer_names, expiring_within_days, now)
                    .await?;
                for (cert, dests, findings) in rated {
                    summary.add(&findings);
                    if cert.status == CertificateStatus::Active {
                        undelivered.extend(
                            dests
                                .into_iter()
                                .filter(|d| compliance::is_undelivered(d, cert.current_version))
                                .map(|d| undelivered_item(d, &cert)),
                        );
                    }
                    if !findings.is_empty() {
                        items.push(ComplianceItem {
                            certificate_id: cert.id,
                            name: cert.name,
                            team: cert.team,
                            findings,
                        });
                    }
                }
                offset += n as u64;
                if n < PAGE as usize || offset >= page.total {
                    break;
                }
            }
        }
        items.sort_by(|a, b| (&a.team, &a.name).cmp(&(&b.team, &b.name)));
        // Stable: a certificate's destinations stay in attachment order.
        undelivered.sort_by(|a, b| (&a.team, &a.name).cmp(&(&b.team, &b.name)));
        let discovered = match fleet.and_then(|(d, _)| d.discovery.clone()) {
            Some(store) => {
                self.rate_discovered(
                    store.as_ref(),
                    &issuers,
                    teams,
                    &mut summary,
                    expiring_within_days,
                    now,
                )
                .await?
            }
            None => Vec::new(),
        };
        Ok(ComplianceReport {
            generated_at: now,
            expiring_within_days,
            summary,
            items,
            discovered,
            undelivered_destinations: undelivered,
        })
    }

    /// Rates the unmanaged discovered certificates of agents in `teams`
    /// (all when `None`) against the default policy: they belong to no
    /// team. One already taken over is skipped: its replacement is a
    /// managed certificate, rated as such, and the agent installs it. Key
    /// and signature come from the leaf the agent sent; the issuer is known
    /// when one of certflow's issuing certificates signed it, or (no leaf
    /// sent) when its issuer DN is one of theirs.
    async fn rate_discovered(
        &self,
        store: &dyn certflow_core::ports::DiscoveryStore,
        issuers: &[certflow_core::model::Issuer],
        teams: Option<&[String]>,
        summary: &mut Summary,
        expiring_within_days: u32,
        now: OffsetDateTime,
    ) -> DomainResult<Vec<DiscoveredComplianceItem>> {
        use certflow_core::discovery::{DiscoveryQuery, DiscoveryStatus};
        let issuer_ders: Vec<Vec<u8>> = issuers
            .iter()
            .filter_map(|i| certflow_pki::parse_pem_certs("issuer", &i.issuing_cert_pem).ok())
            .flatten()
            .collect();
        let issuer_dns: HashSet<String> = issuers.iter().map(|i| i.subject.clone()).collect();
        let policy_set = self.policies.clone();
        let rows = store
            .list_discovered(&DiscoveryQuery {
                status: DiscoveryStatus::Unmanaged,
                teams: teams.map(<[String]>::to_vec),
                agent_id: None,
            })
            .await?;
        let (out, add) = self
            .cpu
            .run("compliance report", move || {
                Ok(rate_discovered_rows(
                    rows,
                    &issuer_ders,
                    &issuer_dns,
                    &policy_set,
                    expiring_within_days,
                    now,
                ))
            })
            .await?;
        for findings in &add {
            summary.add_discovered(findings);
        }
        Ok(out)
    }
}

/// Rates discovered certificates (CPU: parsing, one signature check per
/// issuer each); also returns every row's findings, for the summary.
fn rate_discovered_rows(
    rows: Vec<certflow_core::discovery::Discovered>,
    issuer_ders: &[Vec<u8>],
    issuer_dns: &HashSet<String>,
    policy_set: &PolicySet,
    expiring_within_days: u32,
    now: OffsetDateTime,
) -> (Vec<DiscoveredComplianceItem>, Vec<Vec<Finding>>) {
    let policies = policy_set.applicable("", "");
    let mut out = Vec::new();
    let mut all = Vec::new();
    for d in rows
        .into_iter()
        .filter(|d| d.taken_over_certificate_id.is_none())
    {
        let (parsed, issuer_known) = match d.item.certificate_der.as_deref() {
            Some(der) => (
                parse(der),
                issuer_ders
                    .iter()
                    .any(|issuer| certflow_pki::is_signed_by(der, issuer)),
            ),
            None => (
                Parsed::default(),
                issuer_dns.contains(d.item.issuer.as_str()),
            ),
        };
        let findings = compliance::rate_discovered(
            &compliance::DiscoveredSubject {
                not_after: d.item.not_after,
                key: parsed.key.as_ref(),
                signature_algorithm: parsed.signature_algorithm.as_deref(),
                issuer: &d.item.issuer,
                issuer_known,
            },
            &policies,
            expiring_within_days,
            now,
        );
        if !findings.is_empty() {
            out.push(DiscoveredComplianceItem {
                discovered_id: d.id,
                agent_id: d.agent_id,
                agent_name: d.agent_name,
                source: d.item.source,
                subject: d.item.subject,
                names: d.item.names,
                fingerprint_sha256: d.item.fingerprint_sha256,
                findings: findings.clone(),
            });
        }
        all.push(findings);
    }
    (out, all)
}

fn undelivered_item(d: Destination, cert: &Certificate) -> UndeliveredDestination {
    UndeliveredDestination {
        destination_id: d.id,
        certificate_id: cert.id,
        name: cert.name.clone(),
        team: cert.team.clone(),
        kind: d.kind.as_str(),
        status: d.status.as_str(),
        region: d.target.region,
        listener_arn: d.listener_arn,
        external_id: d.external_id,
        delivered_version: d.delivered_version,
        current_version: cert.current_version,
        attempts: d.attempts,
        last_error: d.last_error,
        updated_at: d.updated_at,
    }
}

/// One certificate with what the report reads about it (I/O done).
struct Fetched {
    certificate: Certificate,
    versions: Vec<CertificateVersion>,
    /// The current version's DER, when it could be read.
    der: Option<Bytes>,
    deployments: Vec<DeploymentState>,
    /// Its destinations not serving the current version.
    destinations: Vec<Destination>,
}

impl Services {
    /// Reads a certificate's versions and its current DER.
    async fn fetch(
        &self,
        certificate: Certificate,
        deployments: Vec<DeploymentState>,
        destinations: Vec<Destination>,
    ) -> DomainResult<Fetched> {
        let versions = self.store.list_versions(certificate.id).await?;
        let current = versions
            .iter()
            .find(|v| v.version == certificate.current_version);
        let der = match current {
            // A missing blob is the blob store's problem, reported elsewhere:
            // rate what the metadata says rather than fail the whole report.
            Some(v) => match self.blobs.get(&v.cert_blob).await {
                Ok(der) => Some(der),
                Err(e) => {
                    tracing::warn!(certificate = %certificate.id, error = %e, "compliance: certificate blob unreadable");
                    None
                }
            },
            None => None,
        };
        Ok(Fetched {
            certificate,
            versions,
            der,
            deployments,
            destinations,
        })
    }
}

impl Fetched {
    /// Parses the stored certificate and rates it (CPU only).
    fn rate(
        &self,
        issuer_names: &HashMap<Uuid, String>,
        policy_set: &PolicySet,
        expiring_within_days: u32,
        now: OffsetDateTime,
    ) -> Vec<Finding> {
        let cert = &self.certificate;
        let current = self
            .versions
            .iter()
            .find(|v| v.version == cert.current_version);
        let revoked: Vec<u32> = self
            .versions
            .iter()
            .filter(|v| v.status == VersionStatus::Revoked)
            .map(|v| v.version)
            .collect();
        let parsed = self.der.as_deref().map(parse).unwrap_or_default();
        let key_type = current.map_or(cert.key_type, |v| v.key_type);
        // Without the certificate, the metadata's key type stands in.
        let key = parsed
            .key
            .unwrap_or_else(|| PublicKeyInfo::of_key_type(key_type));
        let issuer_id = current.map_or(cert.issuer_id, |v| v.issuer_id);
        let issuer_name = issuer_names.get(&issuer_id);
        let policies = policy_set.applicable(&cert.team, issuer_name.map_or("", String::as_str));
        let subject = Subject {
            certificate: cert,
            current,
            key: Some(&key),
            signature_algorithm: parsed.signature_algorithm.as_deref(),
            deployments: &self.deployments,
            destinations: &self.destinations,
            revoked_versions: &revoked,
            issuer_known: issuer_name.is_some(),
        };
        compliance::rate(&subject, &policies, expiring_within_days, now)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Made by `openssl req -x509 -sha1 -newkey rsa:1024` (what a legacy
    /// import looks like): the metadata cannot tell either weakness.
    const LEGACY: &str = include_str!("../../../testdata/compliance/sha1-rsa1024.pem");

    #[test]
    fn the_stored_certificate_gives_signature_algorithm_and_rsa_size() {
        let der = certflow_pki::parse_pem_certs("legacy", LEGACY).unwrap();
        let parsed = parse(&der[0]);
        assert_eq!(
            parsed.signature_algorithm.as_deref(),
            Some("sha1WithRSAEncryption")
        );
        assert_eq!(parsed.key, Some(PublicKeyInfo::Rsa { bits: 1024 }));
        let garbage = parse(b"not a certificate");
        assert!(garbage.signature_algorithm.is_none() && garbage.key.is_none());
        // An OID outside the table is shown dotted.
        assert_eq!(signature_name("1.2.3.4"), None);
    }

    fn key_of(pem: &str) -> PublicKeyInfo {
        let der = certflow_pki::parse_pem_certs("test", pem).unwrap();
        parse(&der[0]).key.unwrap()
    }

    /// Every key kind the weak-key rule tells apart is recognised from the
    /// certificate itself.
    #[test]
    fn the_stored_certificate_gives_the_key_kind_curve_and_size() {
        // `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime192v1`
        assert_eq!(
            key_of(include_str!("../../../testdata/compliance/ec-p192.pem")),
            PublicKeyInfo::Ec {
                curve: "P-192".into(),
                bits: Some(192)
            }
        );
        // `openssl ecparam -name prime256v1 -param_enc explicit`: a curve
        // given by its parameters, not by name.
        assert_eq!(
            key_of(include_str!("../../../testdata/compliance/ec-explicit.pem")),
            PublicKeyInfo::Ec {
                curve: "explicit parameters".into(),
                bits: None
            }
        );
        // `openssl dsaparam 2048`, then `req -x509 -newkey dsa:... -sha256`.
        assert_eq!(
            key_of(include_str!("../../../testdata/compliance/dsa.pem")),
            PublicKeyInfo::Dsa
        );
        let now = OffsetDateTime::now_utc();
        for (kt, expected) in [
            (
                certflow_core::model::KeyType::EcdsaP384,
                PublicKeyInfo::Ec {
                    curve: "P-384".into(),
                    bits: Some(384),
                },
            ),
            (certflow_core::model::KeyType::Ed25519, PublicKeyInfo::EdDsa),
            (
                certflow_core::model::KeyType::Rsa3072,
                PublicKeyInfo::Rsa { bits: 3072 },
            ),
        ] {
            let ca = certflow_pki::create_ca("t", kt, now, 30, 10).unwrap();
            assert_eq!(parse(&ca.issuing_cert_der).key, Some(expected), "{kt:?}");
            // What the metadata alone would have said agrees.
            assert_eq!(
                PublicKeyInfo::of_key_type(kt),
                parse(&ca.issuing_cert_der).key.unwrap()
            );
        }
    }

    #[test]
    fn bit_length_ignores_leading_zero_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x7f, 0xff]), 15);
        assert_eq!(bit_length(&[0x01]), 1);
    }
}
