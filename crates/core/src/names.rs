//! Name policy: which subject alternative names certflow will put in a
//! certificate. Pure functions with their own error reasons, applied before any
//! key is generated or anything is stored.
//!
//! DNS names are normalised to lower-case A-labels (IDNA 2008 / UTS #46 via the
//! `idna` crate); each label must be LDH (RFC 5890 §2.3.1), a wildcard may only
//! be the whole leftmost label (RFC 6125 §6.4.3, CA/B BR 7.1.2.7.12).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// Most subject alternative names a certificate may carry.
pub const MAX_NAMES: usize = 100;

/// A subject alternative name that passed the name policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum SubjectName {
    /// dNSName, lower-case A-label form, possibly with a leftmost `*` label.
    Dns(String),
    /// iPAddress.
    Ip(IpAddr),
}

impl SubjectName {
    /// The name as text (IP addresses in their canonical form).
    pub fn to_text(&self) -> String {
        match self {
            SubjectName::Dns(d) => d.clone(),
            SubjectName::Ip(ip) => ip.to_string(),
        }
    }
}

impl fmt::Display for SubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// Validates and normalises the requested names. `field` is the name of the
/// request field, used in the error path (`names[3]`). Every bad entry is
/// reported, not only the first.
pub fn validate_names(field: &str, inputs: &[String]) -> Result<Vec<SubjectName>, Vec<FieldError>> {
    if inputs.is_empty() {
        return Err(vec![FieldError::new(
            field,
            "at least one name is required",
        )]);
    }
    if inputs.len() > MAX_NAMES {
        return Err(vec![FieldError::new(
            field,
            format!(
                "{} names given; at most {MAX_NAMES} are allowed",
                inputs.len()
            ),
        )]);
    }
    let mut out: Vec<SubjectName> = Vec::with_capacity(inputs.len());
    let mut errors = Vec::new();
    for (i, raw) in inputs.iter().enumerate() {
        let path = format!("{field}[{i}]");
        match parse_name(raw) {
            Ok(name) => {
                if let Some(j) = out.iter().position(|n| *n == name) {
                    errors.push(FieldError::new(path, format!("duplicate of {field}[{j}]")));
                }
                out.push(name);
            }
            Err(reason) => {
                errors.push(FieldError::new(path, reason));
                // Keep indices aligned for later duplicate messages.
                out.push(SubjectName::Dns(String::new()));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Parses one name: an IP address literal, or a DNS name (U-labels allowed).
pub fn parse_name(raw: &str) -> Result<SubjectName, String> {
    if raw.is_empty() {
        return Err("empty name".into());
    }
    if raw.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains whitespace or a control character".into());
    }
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Ok(SubjectName::Ip(ip));
    }
    parse_dns(raw).map(SubjectName::Dns)
}

fn parse_dns(raw: &str) -> Result<String, String> {
    if raw.ends_with('.') {
        return Err("must not end with a dot".into());
    }
    let (wildcard, rest) = match raw.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    if rest.contains('*') {
        return Err(
            "a wildcard is only allowed as the whole leftmost label (*.example.com)".into(),
        );
    }
    let ascii = if rest.is_ascii() {
        rest.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_strict(rest)
            .map_err(|_| "not a valid internationalised domain name".to_owned())?
    };
    if ascii.len() + if wildcard { 2 } else { 0 } > 253 {
        return Err("longer than 253 characters".into());
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    if wildcard && labels.len() < 2 {
        return Err("a wildcard must be followed by at least two labels".into());
    }
    for label in &labels {
        check_label(label)?;
    }
    if let Some(tld) = labels.last()
        && labels.len() > 1
        && tld.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("the top-level label must not be all digits".into());
    }
    Ok(if wildcard {
        format!("*.{ascii}")
    } else {
        ascii
    })
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("contains an empty label".into());
    }
    if label.len() > 63 {
        return Err(format!("label '{label}' is longer than 63 characters"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "label '{label}' is not LDH (letters, digits, hyphen)"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label '{label}' starts or ends with a hyphen"));
    }
    if label.len() >= 4 && &label[2..4] == "--" {
        // Reserved LDH labels (RFC 5890 §2.3.1): only IDNA A-labels are allowed,
        // and those must decode to a valid U-label that encodes back to itself.
        if !label.starts_with("xn--") {
            return Err(format!(
                "label '{label}' is a reserved LDH label (hyphens in positions 3-4)"
            ));
        }
        let (unicode, result) = idna::domain_to_unicode(label);
        if result.is_err() {
            return Err(format!("label '{label}' is not a valid IDN A-label"));
        }
        match idna::domain_to_ascii_strict(&unicode) {
            Ok(back) if back == label => {}
            _ => return Err(format!("label '{label}' is not a valid IDN A-label")),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        let cases = [
            (
                "API.Example.com",
                SubjectName::Dns("api.example.com".into()),
            ),
            ("*.example.com", SubjectName::Dns("*.example.com".into())),
            (
                "bücher.example",
                SubjectName::Dns("xn--bcher-kva.example".into()),
            ),
            (
                "xn--bcher-kva.example",
                SubjectName::Dns("xn--bcher-kva.example".into()),
            ),
            ("localhost", SubjectName::Dns("localhost".into())),
            ("10.0.0.1", SubjectName::Ip("10.0.0.1".parse().unwrap())),
            ("::1", SubjectName::Ip("::1".parse().unwrap())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_name(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_bad_names_with_reason() {
        let cases = [
            ("", "empty"),
            ("a\0b.example.com", "NUL"),
            ("a b.example.com", "whitespace"),
            ("foo.*.example.com", "wildcard"),
            ("f*o.example.com", "wildcard"),
            ("*.*.example.com", "wildcard"),
            ("*.com", "at least two labels"),
            ("under_score.example.com", "not LDH"),
            ("-lead.example.com", "hyphen"),
            ("trail-.example.com", "hyphen"),
            ("ab--cd.example.com", "reserved LDH"),
            ("xn--zz.example", "A-label"),
            ("a..example.com", "empty label"),
            ("example.com.", "dot"),
            ("example.123", "all digits"),
            ("ex\u{202e}ample.com", "internationalised"),
        ];
        for (input, needle) in cases {
            let err = parse_name(input).unwrap_err();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
        let long = format!("{}.example.com", "a".repeat(64));
        assert!(parse_name(&long).unwrap_err().contains("63"));
        let very_long = vec!["abcdefghi"; 30].join(".");
        assert!(parse_name(&very_long).unwrap_err().contains("253"));
    }

    #[test]
    fn list_rules() {
        assert!(validate_names("names", &[]).is_err());
        let many: Vec<String> = (0..=MAX_NAMES)
            .map(|i| format!("h{i}.example.com"))
            .collect();
        let err = validate_names("names", &many).unwrap_err();
        assert!(err[0].reason.contains("at most 100"));
        let dup =
            validate_names("names", &["A.example.com".into(), "a.example.com".into()]).unwrap_err();
        assert_eq!(dup[0].field, "names[1]");
        let errs = validate_names(
            "names",
            &["ok.example.com".into(), "bad_.x".into(), "-x.y".into()],
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "names[1]");
        assert_eq!(errs[1].field, "names[2]");
    }
}
