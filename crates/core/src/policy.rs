//! Issuance policies: which certificates a team may get from an issuer.
//! Configured as `[policy.default]`, `[policy.teams.<team>]` and
//! `[policy.issuers.<issuer name>]`; checked when a certificate is requested
//! and again before every renewal, so a policy tightened later stops the
//! renewal of a certificate it no longer allows.
//!
//! **Every applicable policy must pass** (the default, the team's and the
//! issuer's), rather than the most specific one winning: a team policy then
//! can only narrow what the organisation-wide default allows, never widen it,
//! and a refusal names each policy and rule that refused. Put the rules every
//! team shares in `default` and only the narrowing in the others.
//!
//! Pure: no I/O, no clock. Rules that are absent (empty lists, `None`) allow
//! everything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::model::KeyType;
use crate::names::{SubjectName, parse_name};
use crate::profile::Profile;

/// An extended key usage (RFC 5280 §4.2.1.12), by its RFC name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ExtendedKeyUsage {
    /// id-kp-serverAuth
    #[serde(rename = "serverAuth")]
    ServerAuth,
    /// id-kp-clientAuth
    #[serde(rename = "clientAuth")]
    ClientAuth,
    /// id-kp-codeSigning
    #[serde(rename = "codeSigning")]
    CodeSigning,
    /// id-kp-emailProtection
    #[serde(rename = "emailProtection")]
    EmailProtection,
    /// id-kp-timeStamping
    #[serde(rename = "timeStamping")]
    TimeStamping,
    /// id-kp-OCSPSigning
    #[serde(rename = "OCSPSigning")]
    OcspSigning,
}

impl ExtendedKeyUsage {
    /// The RFC 5280 name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtendedKeyUsage::ServerAuth => "serverAuth",
            ExtendedKeyUsage::ClientAuth => "clientAuth",
            ExtendedKeyUsage::CodeSigning => "codeSigning",
            ExtendedKeyUsage::EmailProtection => "emailProtection",
            ExtendedKeyUsage::TimeStamping => "timeStamping",
            ExtendedKeyUsage::OcspSigning => "OCSPSigning",
        }
    }

    /// The extended key usages a profile puts in its certificates.
    pub fn of_profile(profile: Profile) -> &'static [ExtendedKeyUsage] {
        match profile {
            Profile::TlsServer => &[ExtendedKeyUsage::ServerAuth],
            Profile::TlsClient => &[ExtendedKeyUsage::ClientAuth],
        }
    }
}

/// Bits of an RSA key type; `None` for other algorithms.
pub fn rsa_bits(key_type: KeyType) -> Option<u32> {
    match key_type {
        KeyType::Rsa2048 => Some(2048),
        KeyType::Rsa3072 => Some(3072),
        KeyType::Rsa4096 => Some(4096),
        _ => None,
    }
}

/// One issuance policy, as configured. Every rule is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuancePolicy {
    /// DNS suffixes: `example.com` allows `example.com` and every name under
    /// it (`api.example.com`, `*.example.com`).
    pub allowed_domains: Vec<String>,
    /// Exact DNS names (a wildcard name must be listed as `*.example.com`).
    pub allowed_names: Vec<String>,
    /// Regular expressions a whole DNS name (lower-case A-label form) may match.
    pub allowed_patterns: Vec<String>,
    /// Whether wildcard names (`*.example.com`) are allowed.
    pub allow_wildcards: Option<bool>,
    /// Whether IP address SANs are allowed.
    pub allow_ip_addresses: Option<bool>,
    /// Whether names only meaningful on one host or network are allowed:
    /// single-label names (`intranet`) and `localhost` with the names under
    /// it (RFC 6761 §6.3). `false` refuses them.
    pub allow_local_names: Option<bool>,
    /// Key types a certificate may have (`ecdsa-p256`, `rsa-3072`...).
    #[serde(with = "key_type_names")]
    pub allowed_key_types: Vec<KeyType>,
    /// Smallest RSA modulus, in bits (2048, 3072 or 4096).
    pub min_rsa_bits: Option<u32>,
    /// Longest lifetime of one version, in days.
    pub max_validity_days: Option<u32>,
    /// Extended key usages a certificate's profile must include all of.
    pub required_extended_key_usages: Vec<ExtendedKeyUsage>,
    /// Extended key usages a certificate's profile may include (none other).
    pub allowed_extended_key_usages: Vec<ExtendedKeyUsage>,
    /// Most subject alternative names in one certificate.
    pub max_names: Option<usize>,
}

/// Key types by their configuration names (`rsa-2048`): `KeyType`'s own serde
/// form (`rsa2048`) is the database's, not what people write.
mod key_type_names {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::model::KeyType;

    pub(super) fn serialize<S: Serializer>(v: &[KeyType], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|k| k.as_str()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KeyType>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                KeyType::parse(s).ok_or_else(|| {
                    let all: Vec<&str> = KeyType::ALL.iter().map(|k| k.as_str()).collect();
                    D::Error::custom(format!("unknown key type '{s}'; one of {}", all.join(", ")))
                })
            })
            .collect()
    }
}

/// The `[policy]` section: a default, then per team and per issuer name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuancePolicies {
    /// Applies to every certificate.
    pub default: IssuancePolicy,
    /// By owning team.
    pub teams: BTreeMap<String, IssuancePolicy>,
    /// By issuer name.
    pub issuers: BTreeMap<String, IssuancePolicy>,
}

/// What a policy is checked against: a request, or a certificate about to be renewed.
#[derive(Debug, Clone, Copy)]
pub struct IssuanceRequest<'a> {
    /// Owning team.
    pub team: &'a str,
    /// Issuer name.
    pub issuer: &'a str,
    /// Profile.
    pub profile: Profile,
    /// Subject key type.
    pub key_type: KeyType,
    /// Validated names.
    pub names: &'a [SubjectName],
    /// Requested validity in days.
    pub validity_days: u32,
    /// Exact lifetime in seconds, when set (overrides `validity_days`).
    pub validity_secs: Option<u32>,
}

/// One broken rule: which policy, which rule, which field and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The policy, as named in the configuration: `policy.teams.payments`.
    pub policy: String,
    /// The rule: `allowed_domains`, `max_validity_days`...
    pub rule: &'static str,
    /// The request field holding the offending value: `names[2]`, `key_type`...
    pub field: String,
    /// The offending value, as text.
    pub value: String,
    /// What the rule allows.
    pub reason: String,
}

impl Violation {
    /// The violation as a field error: the field, then rule and value.
    pub fn to_field_error(&self) -> FieldError {
        FieldError::new(self.field.clone(), self.to_string())
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "'{}' violates {}.{}: {}",
            self.value, self.policy, self.rule, self.reason
        )
    }
}

/// A policy checked and ready to evaluate (patterns compiled, names normalised).
#[derive(Debug, Clone)]
struct Compiled {
    name: String,
    rules: IssuancePolicy,
    /// Suffixes in lower-case A-label form, without a leading `.` or `*.`.
    domains: Vec<String>,
    names: Vec<String>,
    // The regex crate matches in linear time whatever the pattern (no
    // backtracking), so a configured pattern cannot stall issuance.
    patterns: Vec<regex::Regex>,
}

/// Every configured policy, compiled. Cheap to share behind an `Arc`.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    default: Option<Compiled>,
    teams: BTreeMap<String, Compiled>,
    issuers: BTreeMap<String, Compiled>,
}

/// Longest regular expression accepted, in bytes of source.
const MAX_PATTERN_LEN: usize = 1024;

impl IssuancePolicies {
    /// Checks every policy and compiles it; the error names the policy and rule.
    pub fn compile(&self) -> Result<PolicySet, String> {
        let mut set = PolicySet::default();
        if self.default != IssuancePolicy::default() {
            set.default = Some(compile_one("policy.default", &self.default)?);
        }
        for (team, p) in &self.teams {
            set.teams.insert(
                team.clone(),
                compile_one(&format!("policy.teams.{team}"), p)?,
            );
        }
        for (issuer, p) in &self.issuers {
            set.issuers.insert(
                issuer.clone(),
                compile_one(&format!("policy.issuers.{issuer}"), p)?,
            );
        }
        Ok(set)
    }
}

fn normalised_dns(policy: &str, rule: &str, raw: &str) -> Result<String, String> {
    match parse_name(raw) {
        Ok(SubjectName::Dns(d)) => Ok(d),
        Ok(SubjectName::Ip(_)) => Err(format!(
            "{policy}.{rule}: '{raw}' is an IP address; use allow_ip_addresses"
        )),
        Err(e) => Err(format!("{policy}.{rule}: '{raw}': {e}")),
    }
}

fn compile_one(name: &str, p: &IssuancePolicy) -> Result<Compiled, String> {
    let mut domains = Vec::new();
    for raw in &p.allowed_domains {
        let bare = raw
            .strip_prefix("*.")
            .or_else(|| raw.strip_prefix('.'))
            .unwrap_or(raw);
        let d = normalised_dns(name, "allowed_domains", bare)?;
        domains.push(d);
    }
    let mut names = Vec::new();
    for raw in &p.allowed_names {
        names.push(normalised_dns(name, "allowed_names", raw)?);
    }
    let mut patterns = Vec::new();
    for raw in &p.allowed_patterns {
        if raw.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "{name}.allowed_patterns: a pattern is longer than {MAX_PATTERN_LEN} bytes"
            ));
        }
        // Anchored: the pattern must match the whole name, as `allowed_names` do.
        let re = regex::RegexBuilder::new(&format!("^(?:{raw})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                format!("{name}.allowed_patterns: '{raw}' is not a valid regular expression: {e}")
            })?;
        patterns.push(re);
    }
    if let Some(bits) = p.min_rsa_bits
        && !(1024..=16384).contains(&bits)
    {
        return Err(format!(
            "{name}.min_rsa_bits: {bits} is not a sensible RSA size (2048, 3072 or 4096)"
        ));
    }
    if p.max_validity_days == Some(0) {
        return Err(format!("{name}.max_validity_days must be at least 1"));
    }
    if p.max_names == Some(0) {
        return Err(format!("{name}.max_names must be at least 1"));
    }
    if let Some(missing) = p.required_extended_key_usages.iter().find(|e| {
        !p.allowed_extended_key_usages.is_empty() && !p.allowed_extended_key_usages.contains(e)
    }) {
        return Err(format!(
            "{name}: required extended key usage {} is not in allowed_extended_key_usages",
            missing.as_str()
        ));
    }
    Ok(Compiled {
        name: name.to_owned(),
        rules: p.clone(),
        domains,
        names,
        patterns,
    })
}

impl PolicySet {
    /// Whether no policy is configured at all.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.teams.is_empty() && self.issuers.is_empty()
    }

    /// Every rule of every applicable policy the request breaks (empty: allowed).
    pub fn evaluate(&self, req: &IssuanceRequest<'_>) -> Vec<Violation> {
        let mut out = Vec::new();
        let applicable = self
            .default
            .iter()
            .chain(self.teams.get(req.team))
            .chain(self.issuers.get(req.issuer));
        for policy in applicable {
            policy.evaluate(req, &mut out);
        }
        out
    }

    /// The policies that apply to `team`'s certificates from `issuer` (for the
    /// compliance report, which rates existing certificates against them).
    pub fn applicable(&self, team: &str, issuer: &str) -> Vec<&IssuancePolicy> {
        self.default
            .iter()
            .chain(self.teams.get(team))
            .chain(self.issuers.get(issuer))
            .map(|c| &c.rules)
            .collect()
    }

    /// [`evaluate`](Self::evaluate) as field errors, or `Ok` when allowed.
    pub fn check(&self, req: &IssuanceRequest<'_>) -> Result<(), Vec<FieldError>> {
        let v = self.evaluate(req);
        if v.is_empty() {
            Ok(())
        } else {
            Err(v.iter().map(Violation::to_field_error).collect())
        }
    }
}

fn list<T: AsRef<str>>(items: &[T]) -> String {
    items
        .iter()
        .map(|s| s.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Compiled {
    fn violation(
        &self,
        rule: &'static str,
        field: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Violation {
        Violation {
            policy: self.name.clone(),
            rule,
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    fn name_allowed(&self, dns: &str) -> bool {
        let restricted =
            !(self.domains.is_empty() && self.names.is_empty() && self.patterns.is_empty());
        if !restricted {
            return true;
        }
        self.names.iter().any(|n| n == dns)
            || self.domains.iter().any(|d| {
                dns == d
                    || dns
                        .strip_suffix(d.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            })
            || self.patterns.iter().any(|p| p.is_match(dns))
    }

    fn allowed_names_text(&self) -> String {
        let mut parts = Vec::new();
        if !self.domains.is_empty() {
            parts.push(format!("domains {}", list(&self.domains)));
        }
        if !self.names.is_empty() {
            parts.push(format!("names {}", list(&self.names)));
        }
        if !self.rules.allowed_patterns.is_empty() {
            parts.push(format!("patterns {}", list(&self.rules.allowed_patterns)));
        }
        format!("not among the allowed {}", parts.join("; "))
    }

    /// The rules about each name: IP addresses, local names, wildcards and
    /// the allowed names.
    fn evaluate_names(&self, req: &IssuanceRequest<'_>, out: &mut Vec<Violation>) {
        let r = &self.rules;
        for (i, name) in req.names.iter().enumerate() {
            let field = format!("names[{i}]");
            match name {
                SubjectName::Ip(ip) => {
                    if r.allow_ip_addresses == Some(false) {
                        out.push(self.violation(
                            "allow_ip_addresses",
                            field,
                            ip.to_string(),
                            "IP address names are not allowed",
                        ));
                    }
                }
                SubjectName::Dns(d) => {
                    if r.allow_local_names == Some(false)
                        && let Some(why) = local_name(d)
                    {
                        out.push(self.violation("allow_local_names", field.clone(), d, why));
                    }
                    if d.starts_with("*.") && r.allow_wildcards == Some(false) {
                        out.push(self.violation(
                            "allow_wildcards",
                            field.clone(),
                            d,
                            "wildcard names are not allowed",
                        ));
                    }
                    if !self.name_allowed(d) {
                        let rule = if !self.domains.is_empty() {
                            "allowed_domains"
                        } else if !self.names.is_empty() {
                            "allowed_names"
                        } else {
                            "allowed_patterns"
                        };
                        out.push(self.violation(rule, field, d, self.allowed_names_text()));
                    }
                }
            }
        }
    }

    fn evaluate(&self, req: &IssuanceRequest<'_>, out: &mut Vec<Violation>) {
        let r = &self.rules;
        if let Some(max) = r.max_names
            && req.names.len() > max
        {
            out.push(self.violation(
                "max_names",
                "names",
                req.names.len().to_string(),
                format!("at most {max} names are allowed"),
            ));
        }
        self.evaluate_names(req, out);
        if !r.allowed_key_types.is_empty() && !r.allowed_key_types.contains(&req.key_type) {
            let allowed: Vec<&str> = r.allowed_key_types.iter().map(|k| k.as_str()).collect();
            out.push(self.violation(
                "allowed_key_types",
                "key_type",
                req.key_type.as_str(),
                format!("allowed key types are {}", allowed.join(", ")),
            ));
        }
        if let (Some(min), Some(bits)) = (r.min_rsa_bits, rsa_bits(req.key_type))
            && bits < min
        {
            out.push(self.violation(
                "min_rsa_bits",
                "key_type",
                req.key_type.as_str(),
                format!("RSA keys must have at least {min} bits"),
            ));
        }
        if let Some(max_days) = r.max_validity_days {
            let max_secs = u64::from(max_days) * 86_400;
            match req.validity_secs {
                Some(secs) if u64::from(secs) > max_secs => out.push(self.violation(
                    "max_validity_days",
                    "validity_seconds",
                    secs.to_string(),
                    format!("at most {max_days} days ({max_secs} seconds) are allowed"),
                )),
                None if req.validity_days > max_days => out.push(self.violation(
                    "max_validity_days",
                    "validity_days",
                    req.validity_days.to_string(),
                    format!("at most {max_days} days are allowed"),
                )),
                _ => {}
            }
        }
        let ekus = ExtendedKeyUsage::of_profile(req.profile);
        for required in &r.required_extended_key_usages {
            if !ekus.contains(required) {
                out.push(self.violation(
                    "required_extended_key_usages",
                    "profile",
                    req.profile.as_str(),
                    format!(
                        "the profile's extended key usages must include {}",
                        required.as_str()
                    ),
                ));
            }
        }
        if !r.allowed_extended_key_usages.is_empty() {
            for eku in ekus {
                if !r.allowed_extended_key_usages.contains(eku) {
                    let allowed: Vec<&str> = r
                        .allowed_extended_key_usages
                        .iter()
                        .map(|e| e.as_str())
                        .collect();
                    out.push(self.violation(
                        "allowed_extended_key_usages",
                        "profile",
                        req.profile.as_str(),
                        format!(
                            "its extended key usage {} is not among the allowed {}",
                            eku.as_str(),
                            allowed.join(", ")
                        ),
                    ));
                }
            }
        }
    }
}

/// Why `dns` (lower-case A-label form) names something local to one host or
/// network, if it does: one label, or `localhost` and the names under it.
fn local_name(dns: &str) -> Option<&'static str> {
    if dns == "localhost" || dns.ends_with(".localhost") {
        Some("localhost and the names under it (RFC 6761 §6.3) are not allowed")
    } else if !dns.contains('.') {
        Some("single-label names are not allowed")
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<SubjectName> {
        list.iter().map(|n| parse_name(n).unwrap()).collect()
    }

    fn req<'a>(names: &'a [SubjectName]) -> IssuanceRequest<'a> {
        IssuanceRequest {
            team: "payments",
            issuer: "internal",
            profile: Profile::TlsServer,
            key_type: KeyType::EcdsaP256,
            names,
            validity_days: 90,
            validity_secs: None,
        }
    }

    fn only_default(p: IssuancePolicy) -> PolicySet {
        IssuancePolicies {
            default: p,
            ..Default::default()
        }
        .compile()
        .unwrap()
    }

    /// (description, policy, request tweak, expected rule or None when allowed)
    type Case = (
        &'static str,
        IssuancePolicy,
        fn(&mut IssuanceRequest<'_>),
        &'static [&'static str],
        Option<(&'static str, &'static str)>,
    );

    #[test]
    fn table_allowed_and_denied_per_rule() {
        let domains = IssuancePolicy {
            allowed_domains: vec!["example.com".into(), ".Corp.Example".into()],
            ..Default::default()
        };
        let exact = IssuancePolicy {
            allowed_names: vec!["api.internal".into(), "*.web.internal".into()],
            ..Default::default()
        };
        let pattern = IssuancePolicy {
            allowed_patterns: vec![r"[a-z0-9-]+\.svc\.cluster\.local".into()],
            ..Default::default()
        };
        let no_wild = IssuancePolicy {
            allow_wildcards: Some(false),
            ..Default::default()
        };
        let no_ip = IssuancePolicy {
            allow_ip_addresses: Some(false),
            ..Default::default()
        };
        let no_local = IssuancePolicy {
            allow_local_names: Some(false),
            ..Default::default()
        };
        let ec_only = IssuancePolicy {
            allowed_key_types: vec![KeyType::EcdsaP256, KeyType::EcdsaP384],
            ..Default::default()
        };
        let rsa3072 = IssuancePolicy {
            min_rsa_bits: Some(3072),
            ..Default::default()
        };
        let short = IssuancePolicy {
            max_validity_days: Some(30),
            ..Default::default()
        };
        let server_only = IssuancePolicy {
            required_extended_key_usages: vec![ExtendedKeyUsage::ServerAuth],
            ..Default::default()
        };
        let client_allowed = IssuancePolicy {
            allowed_extended_key_usages: vec![ExtendedKeyUsage::ClientAuth],
            ..Default::default()
        };
        let two_names = IssuancePolicy {
            max_names: Some(2),
            ..Default::default()
        };
        fn same(_: &mut IssuanceRequest<'_>) {}
        let cases: Vec<Case> = vec![
            (
                "suffix itself",
                domains.clone(),
                same,
                &["example.com"],
                None,
            ),
            (
                "under suffix",
                domains.clone(),
                same,
                &["a.b.example.com"],
                None,
            ),
            (
                "wildcard under suffix",
                domains.clone(),
                same,
                &["*.example.com"],
                None,
            ),
            (
                "dotted suffix, upper case",
                domains.clone(),
                same,
                &["x.corp.example"],
                None,
            ),
            (
                "look-alike suffix",
                domains.clone(),
                same,
                &["example.com", "badexample.com"],
                Some(("allowed_domains", "badexample.com")),
            ),
            (
                "other domain",
                domains.clone(),
                same,
                &["example.org"],
                Some(("allowed_domains", "example.org")),
            ),
            ("exact name", exact.clone(), same, &["api.internal"], None),
            (
                "exact wildcard",
                exact.clone(),
                same,
                &["*.web.internal"],
                None,
            ),
            (
                "subdomain of exact name",
                exact.clone(),
                same,
                &["x.api.internal"],
                Some(("allowed_names", "x.api.internal")),
            ),
            (
                "pattern",
                pattern.clone(),
                same,
                &["db-1.svc.cluster.local"],
                None,
            ),
            (
                "pattern is anchored",
                pattern.clone(),
                same,
                &["a.b.svc.cluster.local"],
                Some(("allowed_patterns", "a.b.svc.cluster.local")),
            ),
            (
                "IP not restricted by name rules",
                domains.clone(),
                same,
                &["10.0.0.1"],
                None,
            ),
            (
                "no wildcard: plain name",
                no_wild.clone(),
                same,
                &["a.example.com"],
                None,
            ),
            (
                "no wildcard",
                no_wild.clone(),
                same,
                &["a.example.com", "*.example.com"],
                Some(("allow_wildcards", "*.example.com")),
            ),
            (
                "no IP",
                no_ip.clone(),
                same,
                &["a.example.com", "192.0.2.1"],
                Some(("allow_ip_addresses", "192.0.2.1")),
            ),
            (
                "local names allowed by default",
                IssuancePolicy::default(),
                same,
                &["localhost", "intranet", "app.localhost"],
                None,
            ),
            (
                "no local names: dotted names pass",
                no_local.clone(),
                same,
                &[
                    "a.example.com",
                    "*.example.com",
                    "192.0.2.1",
                    "localhost.example.com",
                ],
                None,
            ),
            (
                "no local names: localhost",
                no_local.clone(),
                same,
                &["a.example.com", "localhost"],
                Some(("allow_local_names", "localhost")),
            ),
            (
                "no local names: under localhost",
                no_local.clone(),
                same,
                &["app.localhost"],
                Some(("allow_local_names", "app.localhost")),
            ),
            (
                "no local names: single label",
                no_local.clone(),
                same,
                &["intranet"],
                Some(("allow_local_names", "intranet")),
            ),
            (
                "EC allowed",
                ec_only.clone(),
                same,
                &["a.example.com"],
                None,
            ),
            (
                "RSA refused",
                ec_only.clone(),
                |r| r.key_type = KeyType::Rsa4096,
                &["a.example.com"],
                Some(("allowed_key_types", "rsa-4096")),
            ),
            (
                "RSA 3072 ok",
                rsa3072.clone(),
                |r| r.key_type = KeyType::Rsa3072,
                &["a.example.com"],
                None,
            ),
            (
                "RSA 2048 too small",
                rsa3072.clone(),
                |r| r.key_type = KeyType::Rsa2048,
                &["a.example.com"],
                Some(("min_rsa_bits", "rsa-2048")),
            ),
            (
                "min RSA ignores EC",
                rsa3072.clone(),
                same,
                &["a.example.com"],
                None,
            ),
            (
                "30 days ok",
                short.clone(),
                |r| r.validity_days = 30,
                &["a.example.com"],
                None,
            ),
            (
                "90 days too long",
                short.clone(),
                same,
                &["a.example.com"],
                Some(("max_validity_days", "90")),
            ),
            (
                "seconds override days",
                short.clone(),
                |r| r.validity_secs = Some(120),
                &["a.example.com"],
                None,
            ),
            (
                "seconds too long",
                short.clone(),
                |r| {
                    r.validity_days = 1;
                    r.validity_secs = Some(31 * 86_400)
                },
                &["a.example.com"],
                Some(("max_validity_days", "2678400")),
            ),
            (
                "server EKU present",
                server_only.clone(),
                same,
                &["a.example.com"],
                None,
            ),
            (
                "server EKU missing",
                server_only.clone(),
                |r| r.profile = Profile::TlsClient,
                &["a.example.com"],
                Some(("required_extended_key_usages", "tls-client")),
            ),
            (
                "client EKU allowed",
                client_allowed.clone(),
                |r| r.profile = Profile::TlsClient,
                &["a.example.com"],
                None,
            ),
            (
                "server EKU not allowed",
                client_allowed.clone(),
                same,
                &["a.example.com"],
                Some(("allowed_extended_key_usages", "tls-server")),
            ),
            (
                "two names",
                two_names.clone(),
                same,
                &["a.example.com", "b.example.com"],
                None,
            ),
            (
                "three names",
                two_names.clone(),
                same,
                &["a.example.com", "b.example.com", "c.example.com"],
                Some(("max_names", "3")),
            ),
            (
                "empty policy allows all",
                IssuancePolicy::default(),
                same,
                &["*.x.y", "::1"],
                None,
            ),
        ];
        for (what, policy, tweak, list, want) in cases {
            let set = only_default(policy);
            let n = names(list);
            let mut r = req(&n);
            tweak(&mut r);
            let got = set.evaluate(&r);
            match want {
                None => assert!(got.is_empty(), "{what}: {got:?}"),
                Some((rule, value)) => {
                    assert_eq!(got.len(), 1, "{what}: {got:?}");
                    assert_eq!(got[0].rule, rule, "{what}");
                    assert_eq!(got[0].value, value, "{what}");
                    assert_eq!(got[0].policy, "policy.default", "{what}");
                    let text = got[0].to_field_error().reason;
                    assert!(
                        text.contains(rule) && text.contains(value),
                        "{what}: {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_applicable_policy_must_pass() {
        let set = IssuancePolicies {
            default: IssuancePolicy {
                allowed_domains: vec!["example.com".into()],
                ..Default::default()
            },
            teams: [(
                "payments".to_owned(),
                IssuancePolicy {
                    allowed_domains: vec!["pay.example.com".into()],
                    allow_wildcards: Some(false),
                    ..Default::default()
                },
            )]
            .into(),
            issuers: [(
                "letsencrypt".to_owned(),
                IssuancePolicy {
                    allow_ip_addresses: Some(false),
                    ..Default::default()
                },
            )]
            .into(),
        }
        .compile()
        .unwrap();
        let n = names(&["api.pay.example.com"]);
        assert!(set.evaluate(&req(&n)).is_empty());
        // Allowed by the default, refused by the team's narrower policy.
        let n = names(&["www.example.com"]);
        let v = set.evaluate(&req(&n));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].policy, "policy.teams.payments");
        assert_eq!(v[0].field, "names[0]");
        // The team cannot widen the default: both refuse a foreign name.
        let n = names(&["pay.example.org"]);
        let v = set.evaluate(&req(&n));
        let policies: Vec<&str> = v.iter().map(|v| v.policy.as_str()).collect();
        assert_eq!(policies, ["policy.default", "policy.teams.payments"]);
        // Another team is only under the default.
        let n = names(&["www.example.com", "*.example.com"]);
        let mut r = req(&n);
        r.team = "web";
        assert!(set.evaluate(&r).is_empty());
        // The issuer's policy applies whatever the team.
        let n = names(&["www.example.com", "10.1.2.3"]);
        let mut r = req(&n);
        r.team = "web";
        r.issuer = "letsencrypt";
        let v = set.evaluate(&r);
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].policy.as_str(), v[0].rule, v[0].field.as_str()),
            (
                "policy.issuers.letsencrypt",
                "allow_ip_addresses",
                "names[1]"
            )
        );
        // Every broken rule is reported, not only the first: the wildcard
        // (team), the foreign name (default and team).
        let n = names(&["*.pay.example.com", "x.example.org"]);
        assert_eq!(set.evaluate(&req(&n)).len(), 3);
    }

    #[test]
    fn bad_configuration_is_named() {
        let cases: Vec<(IssuancePolicy, &str)> = vec![
            (
                IssuancePolicy {
                    allowed_patterns: vec!["(unclosed".into()],
                    ..Default::default()
                },
                "policy.default.allowed_patterns",
            ),
            (
                IssuancePolicy {
                    allowed_domains: vec!["bad_domain.com".into()],
                    ..Default::default()
                },
                "policy.default.allowed_domains",
            ),
            (
                IssuancePolicy {
                    allowed_names: vec!["10.0.0.1".into()],
                    ..Default::default()
                },
                "allow_ip_addresses",
            ),
            (
                IssuancePolicy {
                    min_rsa_bits: Some(512),
                    ..Default::default()
                },
                "min_rsa_bits",
            ),
            (
                IssuancePolicy {
                    max_validity_days: Some(0),
                    ..Default::default()
                },
                "max_validity_days",
            ),
            (
                IssuancePolicy {
                    required_extended_key_usages: vec![ExtendedKeyUsage::ServerAuth],
                    allowed_extended_key_usages: vec![ExtendedKeyUsage::ClientAuth],
                    ..Default::default()
                },
                "serverAuth",
            ),
        ];
        for (p, needle) in cases {
            let err = only_default_err(p);
            assert!(err.contains(needle), "{err}");
        }
    }

    fn only_default_err(p: IssuancePolicy) -> String {
        IssuancePolicies {
            default: p,
            ..Default::default()
        }
        .compile()
        .unwrap_err()
    }

    #[test]
    fn deserialises_from_configuration_names() {
        let p: IssuancePolicy = serde_json::from_value(serde_json::json!({
            "allowed_key_types": ["ecdsa-p256", "rsa-3072"],
            "required_extended_key_usages": ["serverAuth"],
            "allowed_extended_key_usages": ["serverAuth", "clientAuth"],
            "max_names": 5,
            "allow_local_names": false
        }))
        .unwrap();
        assert_eq!(p.allowed_key_types, [KeyType::EcdsaP256, KeyType::Rsa3072]);
        assert_eq!(p.allow_local_names, Some(false));
        assert!(
            serde_json::from_value::<IssuancePolicy>(serde_json::json!({ "max_name": 5 })).is_err()
        );
        assert!(PolicySet::default().is_empty());
    }
}
