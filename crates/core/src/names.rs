//! Name policy: which subject alternative names certflow will put in a
//! certificate. Pure functions with their own error reasons, applied before any
//! key is generated or anything is stored.
//!
//! DNS names are stored as lower-case A-labels; each label must be LDH (RFC 5890
//! §2.3.1), a wildcard may only be the whole leftmost label (RFC 6125 §6.4.3,
//! CA/B BR 7.1.2.7.12).
//!
//! A certificate holds exactly the name asked for: the only rewrites are ASCII
//! lower-casing and the faithful U-label → A-label conversion (`bücher` →
//! `xn--bcher-kva`). Any character UTS 46 would map, drop or refuse (a
//! zero-width space, a full-width dot, an upper-case `Ü`), an invisible joiner,
//! a label not in NFC, a label mixing scripts (UTS 39 §5.2, Highly Restrictive)
//! and a non-Latin label that looks like an ASCII one (UTS 39 §4 skeleton) are
//! refused, naming the character and its position. A-labels are held to the
//! same rules through the U-label they decode to.

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
    // Split on '.' only: a full-width or ideographic dot stays inside its
    // label, where the character check below names it.
    let mut ascii_labels = Vec::new();
    let mut start = if wildcard { 2 } else { 0 };
    for label in rest.split('.') {
        ascii_labels.push(if label.is_ascii() {
            label.to_ascii_lowercase()
        } else {
            unicode_label(label, start)?
        });
        start += label.chars().count() + 1;
    }
    let ascii = ascii_labels.join(".");
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
        // The U-label a reader is shown must pass what a typed one would.
        unicode_label(&unicode, 0).map_err(|e| {
            format!("label '{label}' decodes to '{unicode}', which is refused: {e}")
        })?;
    }
    Ok(())
}

/// The A-label of a label holding non-ASCII characters, when IDNA would
/// convert it faithfully; else why not, naming the character and its
/// 1-based position in the whole name (`start` characters precede the label).
fn unicode_label(label: &str, start: usize) -> Result<String, String> {
    let mapper = icu_normalizer::uts46::Uts46MapperBorrowed::new();
    for (i, c) in label.chars().enumerate() {
        let at = start + i + 1;
        if c.is_ascii() {
            // Upper case folds (the one rewrite allowed); the rest must be LDH.
            if c.is_ascii_alphanumeric() || c == '-' {
                continue;
            }
            return Err(format!(
                "'{c}' at character {at} is not allowed in a label (letters, digits, hyphen)"
            ));
        }
        let mapped: String = mapper.map_normalize(std::iter::once(c)).collect();
        if mapped.contains('\u{FFFD}') {
            return Err(format!(
                "{} at character {at} is not allowed in a domain name (UTS 46: disallowed)",
                describe(c)
            ));
        }
        if mapped.is_empty() {
            return Err(format!(
                "{} at character {at} would be silently removed by IDNA processing (UTS 46: \
                 ignored); certflow certifies exactly the name asked for: remove it",
                describe(c)
            ));
        }
        if mapped != c.to_string() {
            return Err(format!(
                "{} at character {at} would be rewritten to '{mapped}' by IDNA processing \
                 (UTS 46: mapped); certflow certifies exactly the name asked for: write '{mapped}'",
                describe(c)
            ));
        }
        if matches!(c, '\u{200C}' | '\u{200D}') {
            return Err(format!(
                "{} at character {at} is invisible; names with invisible characters are refused",
                describe(c)
            ));
        }
        if !unicode_security::GeneralSecurityProfile::identifier_allowed(c) {
            return Err(format!(
                "{} at character {at} is not allowed in identifiers (UTS 39 general security \
                 profile: symbols, punctuation, historic or limited-use scripts)",
                describe(c)
            ));
        }
    }
    let folded = label.to_ascii_lowercase();
    let normalised: String = mapper.map_normalize(folded.chars()).collect();
    if normalised != folded {
        return Err(format!(
            "label '{label}' is not in Unicode normalisation form C; write '{normalised}'"
        ));
    }
    // Validity first (RFC 5891-5893), then the look-alike rules (UTS 39).
    let ascii = idna::domain_to_ascii_strict(&folded).map_err(|_| {
        format!(
            "label '{label}' is not a valid internationalised label (IDNA: bidirectional text, \
             joiner context, a leading combining mark or hyphen positions)"
        )
    })?;
    check_scripts(&folded, start)?;
    Ok(ascii)
}

/// One label in one script (UTS 39 §5.2 Highly Restrictive: a single script,
/// or Latin with Han and Hiragana/Katakana, Bopomofo or Hangul), and a
/// non-Latin label is not a look-alike of an ASCII one (UTS 39 §4 skeleton).
fn check_scripts(label: &str, start: usize) -> Result<(), String> {
    use unicode_security::mixed_script::AugmentedScriptSet;
    use unicode_security::{RestrictionLevel, RestrictionLevelDetection};

    let mut seen = AugmentedScriptSet::default();
    if label.detect_restriction_level() > RestrictionLevel::HighlyRestrictive {
        for (i, c) in label.chars().enumerate() {
            let mut next = seen;
            next.intersect_with(AugmentedScriptSet::for_char(c));
            if next.is_empty() {
                return Err(format!(
                    "label '{label}' mixes scripts: {} ({}) at character {} follows {} \
                     letters; a name mixing scripts can pass for another (UTS 39 mixed-script \
                     detection)",
                    describe(c),
                    AugmentedScriptSet::for_char(c),
                    start + i + 1,
                    seen
                ));
            }
            seen = next;
        }
        return Err(format!("label '{label}' mixes scripts (UTS 39)"));
    }
    let resolved = AugmentedScriptSet::for_str(label);
    let mut latin = AugmentedScriptSet::for_char('a');
    latin.intersect_with(resolved);
    if latin.is_empty() {
        let skeleton: String = unicode_security::skeleton(label).collect();
        if skeleton.is_ascii() {
            return Err(format!(
                "label '{label}' ({resolved}) looks like the ASCII label '{skeleton}' (UTS 39 \
                 whole-script confusable); ask for the ASCII name if that is the one meant"
            ));
        }
    }
    Ok(())
}

/// `U+200B ZERO WIDTH SPACE`, or `U+0430 'а'` for a visible character.
fn describe(c: char) -> String {
    let name = match c {
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{034F}' => "COMBINING GRAPHEME JOINER",
        '\u{180E}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2060}' => "WORD JOINER",
        '\u{3002}' => "IDEOGRAPHIC FULL STOP",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE",
        '\u{FF0E}' => "FULLWIDTH FULL STOP",
        '\u{FF61}' => "HALFWIDTH IDEOGRAPHIC FULL STOP",
        _ if c.is_alphanumeric() => return format!("U+{:04X} '{c}'", u32::from(c)),
        _ => return format!("U+{:04X}", u32::from(c)),
    };
    format!("U+{:04X} {name}", u32::from(c))
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
            (
                "ex\u{202e}ample.com",
                "U+202E RIGHT-TO-LEFT OVERRIDE at character 3",
            ),
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

    /// UTS 46 processing (https://www.unicode.org/reports/tr46/ §4) would
    /// rewrite each of these names; each is refused naming the character and
    /// its 1-based position, never issued under another name.
    #[test]
    fn refuses_what_idna_would_rewrite_naming_the_character() {
        let cases = [
            // Ignored (removed) code points.
            (
                "a\u{200b}.zw.example.com",
                "U+200B ZERO WIDTH SPACE at character 2",
                "removed",
            ),
            (
                "a\u{00ad}b.example.com",
                "U+00AD SOFT HYPHEN at character 2",
                "removed",
            ),
            (
                "ab\u{2060}.example.com",
                "U+2060 WORD JOINER at character 3",
                "removed",
            ),
            (
                "\u{feff}ab.example.com",
                "U+FEFF ZERO WIDTH NO-BREAK SPACE at character 1",
                "removed",
            ),
            // Mapped to another character.
            (
                "a\u{ff0e}example.com",
                "U+FF0E FULLWIDTH FULL STOP at character 2",
                "'.'",
            ),
            (
                "a\u{3002}example.com",
                "U+3002 IDEOGRAPHIC FULL STOP at character 2",
                "'.'",
            ),
            (
                "a\u{ff61}example.com",
                "U+FF61 HALFWIDTH IDEOGRAPHIC FULL STOP",
                "'.'",
            ),
            (
                "\u{ff41}pi.example.com",
                "U+FF41 'ａ' at character 1",
                "'a'",
            ),
            ("B\u{dc}cher.example", "U+00DC 'Ü' at character 2", "'ü'"),
            (
                "\u{fb01}le.example.com",
                "U+FB01 'ﬁ' at character 1",
                "'fi'",
            ),
            (
                "*.x\u{200b}.example.com",
                "U+200B ZERO WIDTH SPACE at character 4",
                "removed",
            ),
            // Disallowed, invisible kept by UTS 46, or not an identifier character.
            ("a\u{2028}b.example.com", "whitespace or a control", ""),
            (
                "a\u{200d}b.example.com",
                "U+200D ZERO WIDTH JOINER at character 2",
                "invisible",
            ),
            (
                "a\u{200c}b.example.com",
                "U+200C ZERO WIDTH NON-JOINER at character 2",
                "invisible",
            ),
            (
                "\u{2603}.example.com",
                "U+2603 at character 1",
                "not allowed in identifiers",
            ),
            (
                "a_\u{e9}.example.com",
                "'_' at character 2",
                "letters, digits, hyphen",
            ),
            // IDNA validity comes before the look-alike rules: Arabic-Indic
            // and Extended Arabic-Indic digits mixed (RFC 5892 Appendix A.8).
            (
                "\u{661}\u{6f1}.example",
                "not a valid internationalised label",
                "IDNA",
            ),
            // Not NFC: 'u' followed by COMBINING DIAERESIS.
            (
                "bu\u{308}cher.example",
                "not in Unicode normalisation form C",
                "'bücher'",
            ),
            // Mixed scripts in one label: Cyrillic 'а' (U+0430) among Latin letters.
            (
                "p\u{430}ypal.example.com",
                "U+0430 'а' (Cyrillic) at character 2 follows Latin",
                "mixes scripts",
            ),
            ("\u{3b1}pple.example.com", "mixes scripts", "Greek"),
            // Whole-script look-alikes of ASCII labels.
            (
                "\u{430}\u{440}\u{435}.example.com",
                "looks like the ASCII label 'ape'",
                "confusable",
            ),
            (
                "xn--80ak6aa92e.com",
                "decodes to 'аррӏе'",
                "looks like the ASCII label",
            ),
            (
                "xn--pypal-4ve.example.com",
                "decodes to 'pаypal'",
                "mixes scripts",
            ),
        ];
        for (input, needle, also) in cases {
            let err = parse_name(input).unwrap_err();
            assert!(err.contains(needle), "{input:?}: {err}");
            assert!(err.contains(also), "{input:?}: {err}");
        }
    }

    /// What IDNA changes faithfully is accepted: ASCII case, and the U-label
    /// to A-label conversion of a label in one script (RFC 5891 §4.4).
    #[test]
    fn accepts_faithful_conversions() {
        let cases = [
            ("B\u{fc}cher.Example", "xn--bcher-kva.example"),
            ("*.b\u{fc}cher.example", "*.xn--bcher-kva.example"),
            ("stra\u{df}e.example", "xn--strae-oqa.example"),
            (
                "\u{43f}\u{440}\u{438}\u{43c}\u{435}\u{440}.example",
                "xn--e1afmkfd.example",
            ),
            ("\u{4f8b}\u{3048}.example", "xn--r8jz45g.example"),
            (
                "\u{30c6}\u{30b9}\u{30c8}abc.example",
                "xn--abc-4k4bocn.example",
            ),
            ("\u{d55c}\u{ad6d}.example", "xn--3e0b707e.example"),
            ("\u{5d0}\u{5d1}.example", "xn--4dbc.example"),
        ];
        // Expected A-labels are RFC 3492 Punycode as Python computes it:
        // 'xn--' + label.encode('punycode').
        for (input, want) in cases {
            assert_eq!(
                parse_name(input),
                Ok(SubjectName::Dns(want.into())),
                "{input:?}"
            );
            // The A-label itself is accepted as given.
            assert_eq!(
                parse_name(want),
                Ok(SubjectName::Dns(want.into())),
                "{want}"
            );
        }
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
