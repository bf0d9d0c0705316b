//! Human wording shared by every channel: one headline (email subject, SNS
//! subject, Slack line) and a plain-text body with the facts.

use std::fmt::Write as _;

use certflow_core::notify::{EventKind, Notification};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::format_description;
use uuid::Uuid;

/// One certificate in a digest's `details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    /// The certificate.
    pub certificate_id: Uuid,
    /// Its name.
    pub name: String,
    /// Current version.
    pub version: u32,
    /// Its expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Whole days left.
    pub days_left: u32,
}

/// `details` of a [`EventKind::Digest`] notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestDetails {
    /// The horizon the digest covers, in days.
    pub within_days: u32,
    /// Certificates expiring within it, soonest first.
    pub certificates: Vec<DigestEntry>,
}

/// `2026-03-01 12:00 UTC` (receivers read it; RFC 3339 is in the JSON).
pub fn human_time(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn days(n: u32) -> String {
    if n == 1 {
        "1 day".to_owned()
    } else {
        format!("{n} days")
    }
}

/// ` on <agent>` for deployment events (the agent's name is in `details`).
fn on_agent(n: &Notification) -> String {
    n.details
        .get("agent_name")
        .and_then(|v| v.as_str())
        .map(|a| format!(" on {a}"))
        .unwrap_or_default()
}

/// What happened, in a few words: `api.example.com renewal failing`.
pub fn headline(n: &Notification) -> String {
    let name = n.certificate_name.as_deref().unwrap_or("certificate");
    match n.kind {
        EventKind::Issued => format!("{name} issued"),
        EventKind::Renewed => format!("{name} renewed"),
        EventKind::RenewalFailing => format!("{name} renewal failing"),
        EventKind::DeadLettered => format!("{name} renewal gave up"),
        EventKind::Expiring => match (n.days_left, n.not_after) {
            (_, Some(t)) if t <= n.at => format!("{name} has expired"),
            (Some(d), _) => format!("{name} expires in {}", days(d)),
            _ => format!("{name} expiring"),
        },
        EventKind::Revoked => format!("{name} revoked"),
        EventKind::DeploymentFailed => format!("{name} deployment failed{}", on_agent(n)),
        EventKind::DeploymentDrift => format!("{name} new version not deployed{}", on_agent(n)),
        EventKind::PolicyViolation => format!("{name} issuance refused by policy"),
        EventKind::RenewalAtRisk => match n.not_after {
            Some(t) if t <= n.at => format!("{name} has expired before its renewal"),
            _ => format!("{name} renewal at risk: about to expire"),
        },
        EventKind::Digest => {
            let count = digest(n).map(|d| d.certificates.len()).unwrap_or(0);
            format!(
                "team {}: {count} certificate{} expiring soon",
                n.team,
                if count == 1 { "" } else { "s" }
            )
        }
    }
}

/// Email and SNS subject: `[certflow] api.example.com renewal failing`.
pub fn subject(n: &Notification) -> String {
    format!("[certflow] {}", headline(n))
}

/// One readable line with the facts (Slack).
pub fn one_line(n: &Notification) -> String {
    let mut line = format!("[certflow] {}", headline(n));
    if let Some(v) = n.version {
        let _ = write!(line, " (v{v})");
    }
    let _ = write!(line, " · team {}", n.team);
    if let Some(t) = n.not_after {
        let _ = write!(line, " · expires {}", human_time(t));
    }
    if let Some(reason) = &n.reason {
        let _ = write!(line, " · reason: {}", first_line(reason, 300));
    }
    if n.kind == EventKind::Digest
        && let Some(d) = digest(n)
    {
        for e in d.certificates.iter().take(20) {
            let _ = write!(
                line,
                "\n• {} v{} expires {} ({} left)",
                e.name,
                e.version,
                human_time(e.not_after),
                days(e.days_left)
            );
        }
        if d.certificates.len() > 20 {
            let _ = write!(line, "\n… and {} more", d.certificates.len() - 20);
        }
    }
    line
}

/// Plain-text email body: the summary, then one fact a line.
pub fn body(n: &Notification) -> String {
    let mut b = String::new();
    let _ = writeln!(b, "{}", n.summary);
    let _ = writeln!(b);
    if let Some(name) = &n.certificate_name {
        let _ = writeln!(b, "Certificate:   {name}");
    }
    if let Some(id) = n.certificate_id {
        let _ = writeln!(b, "Certificate ID: {id}");
    }
    let _ = writeln!(b, "Team:          {}", n.team);
    let _ = writeln!(b, "Event:         {}", n.kind.as_str());
    if let Some(v) = n.version {
        let _ = writeln!(b, "Version:       {v}");
    }
    if let Some(t) = n.not_after {
        let _ = writeln!(b, "Expires:       {}", human_time(t));
    }
    if let Some(d) = n.days_left {
        let _ = writeln!(b, "Days left:     {d}");
    }
    if let Some(reason) = &n.reason {
        let _ = writeln!(b, "Reason:        {reason}");
    }
    let _ = writeln!(b, "When:          {}", human_time(n.at));
    if n.kind == EventKind::Digest
        && let Some(d) = digest(n)
    {
        let _ = writeln!(b);
        let _ = writeln!(b, "Expiring within {}:", days(d.within_days));
        for e in &d.certificates {
            let _ = writeln!(
                b,
                "  {}  v{}  expires {}  ({} left)  {}",
                e.name,
                e.version,
                human_time(e.not_after),
                days(e.days_left),
                e.certificate_id
            );
        }
    }
    let _ = writeln!(b);
    let _ = writeln!(b, "Notification ID: {}", n.id);
    b
}

fn digest(n: &Notification) -> Option<DigestDetails> {
    serde_json::from_value(n.details.clone()).ok()
}

/// The first line of `s`, at most `max` characters.
pub(crate) fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        let mut out: String = line.chars().take(max).collect();
        out.push('…');
        out
    } else {
        line.to_owned()
    }
}

/// An error and its sources on one line (reqwest's own message is terse).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        source = s.source();
    }
    // Some errors repeat their kind in their own message ("Connection error:
    // Connection error: ..."): drop consecutive duplicate segments.
    let mut parts: Vec<&str> = Vec::new();
    for part in out.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn policy_violation_reads_as_a_refusal_with_its_reason() {
        let n = Notification {
            id: Uuid::now_v7(),
            kind: EventKind::PolicyViolation,
            team: "payments".into(),
            certificate_id: Some(Uuid::now_v7()),
            certificate_name: Some("api.example.com".into()),
            version: Some(3),
            not_after: None,
            days_left: None,
            reason: Some(
                "names[0]: 'api.example.com' violates policy.teams.payments.allowed_domains".into(),
            ),
            summary: "renewal of api.example.com refused by issuance policy".into(),
            details: serde_json::json!({}),
            at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(
            subject(&n),
            "[certflow] api.example.com issuance refused by policy"
        );
        assert!(one_line(&n).contains("reason: names[0]: 'api.example.com' violates"));
        assert!(body(&n).contains("Event:         policy-violation"));
    }
}
