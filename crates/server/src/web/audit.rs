//! Audit events as people read them: times as dates, agents and certificates
//! by name with a link to their page, and the details as a definition list
//! instead of raw JSON. Shared by the audit log and a certificate's trail.
//!
//! The details are free-form JSON written by each use case; what is known
//! about them is the naming habit of the writers: `certificate_id` and
//! `agent_id` hold ids, keys ending in `_at` (and `not_after`, `last_seen`,
//! `renew_after`) hold Unix times. Anything else is shown as it is.

use std::collections::{BTreeSet, HashMap};

use certflow_core::DomainError;
use certflow_core::access::{Permission, Principal};
use certflow_core::model::AuditEvent;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PageResult, when};
use crate::state::AppState;

/// Keys holding a Unix time besides those ending in `_at`.
const TIME_KEYS: &[&str] = &["not_after", "not_before", "last_seen", "renew_after"];

/// Latest Unix time shown as a date (9999-12-31): larger numbers are not times.
const MAX_UNIX: i64 = 253_402_300_799;

/// One value: text, with a link when it names something the console shows,
/// and a machine-readable date when it is a time.
pub(crate) struct Shown {
    pub text: String,
    /// Where it links to, or "".
    pub href: String,
    /// RFC 3339 form of a time (for `<time datetime>`), or "".
    pub datetime: String,
}

impl Shown {
    fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            href: String::new(),
            datetime: String::new(),
        }
    }

    fn time(t: OffsetDateTime) -> Self {
        let datetime = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            text: when(t),
            href: String::new(),
            datetime,
        }
    }
}

/// One term of an event's details and its values; a list of objects (say,
/// the items of an agent's report) becomes one nested list per object.
pub(crate) struct Fact {
    pub term: String,
    pub values: Vec<Shown>,
    pub groups: Vec<Vec<Leaf>>,
}

/// A term of a nested list.
pub(crate) struct Leaf {
    pub term: String,
    pub value: Shown,
}

/// An audit trail row.
pub(crate) struct AuditRow {
    pub at: Shown,
    /// Who: the person's subject, or an agent by name.
    pub who: Shown,
    pub source: String,
    pub action: String,
    pub target: Shown,
    pub outcome: &'static str,
    pub details: Vec<Fact>,
}

/// Names of the certificates and agents the events refer to, as far as
/// the reader may see them.
#[derive(Default)]
pub(crate) struct Names {
    certificates: HashMap<Uuid, String>,
    agents: HashMap<Uuid, String>,
    /// Whether agent names link to the agents page (administrators only).
    agent_links: bool,
}

impl Names {
    /// Looks up what `events` refer to: each certificate through
    /// `Services::certificate_for` (one the reader may not read keeps its
    /// bare id), the agents from the agent list when any is named.
    pub async fn of(state: &AppState, p: &Principal, events: &[AuditEvent]) -> PageResult<Self> {
        let mut certificate_ids = BTreeSet::new();
        let mut agent_ids = BTreeSet::new();
        for e in events {
            let ids = |prefix: &str| {
                e.target
                    .strip_prefix(prefix)
                    .and_then(|id| Uuid::parse_str(id).ok())
            };
            certificate_ids.extend(ids("certificate/"));
            agent_ids.extend(ids("agent/"));
            // Agents act under their id.
            agent_ids.extend(Uuid::parse_str(&e.actor.subject).ok());
            collect_ids(&e.details, &mut certificate_ids, &mut agent_ids);
        }
        let mut names = Names {
            agent_links: p.can(Permission::AgentAdmin, None),
            ..Names::default()
        };
        for id in certificate_ids {
            match state
                .services
                .certificate_for(p, Permission::CertificateRead, id)
                .await
            {
                Ok(c) => {
                    names.certificates.insert(id, c.name);
                }
                Err(DomainError::NotFound(_) | DomainError::Forbidden(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !agent_ids.is_empty() {
            names.agents = state
                .agents
                .list()
                .await?
                .into_iter()
                .filter(|a| agent_ids.contains(&a.id))
                .map(|a| (a.id, a.name))
                .collect();
        }
        Ok(names)
    }

    fn certificate(&self, id: Uuid) -> Shown {
        match self.certificates.get(&id) {
            Some(name) => Shown {
                text: name.clone(),
                href: format!("/console/certificates/{id}"),
                datetime: String::new(),
            },
            None => Shown::text(id.to_string()),
        }
    }

    /// The agent `id` by name (without the word "agent").
    fn agent(&self, id: Uuid) -> Option<Shown> {
        let name = self.agents.get(&id)?;
        Some(Shown {
            text: name.clone(),
            href: if self.agent_links {
                format!("/console/agents#agent-{id}")
            } else {
                String::new()
            },
            datetime: String::new(),
        })
    }

    /// `certificate/<id>` or `agent/<id>` by name, anything else as it is.
    fn target(&self, target: &str) -> Shown {
        let id = |prefix: &str| {
            target
                .strip_prefix(prefix)
                .and_then(|id| Uuid::parse_str(id).ok())
        };
        if let Some(id) = id("certificate/") {
            let mut shown = self.certificate(id);
            if shown.href.is_empty() {
                shown.text = target.to_owned();
            } else {
                shown.text = format!("certificate {}", shown.text);
            }
            return shown;
        }
        if let Some(mut shown) = id("agent/").and_then(|id| self.agent(id)) {
            shown.text = format!("agent {}", shown.text);
            return shown;
        }
        Shown::text(target)
    }
}

/// The certificate and agent ids named in `details` (at any depth).
fn collect_ids(details: &Value, certificates: &mut BTreeSet<Uuid>, agents: &mut BTreeSet<Uuid>) {
    match details {
        Value::Object(map) => {
            for (k, v) in map {
                let id = v.as_str().and_then(|s| Uuid::parse_str(s).ok());
                match (k.as_str(), id) {
                    ("certificate_id", Some(id)) => {
                        certificates.insert(id);
                    }
                    ("agent_id", Some(id)) => {
                        agents.insert(id);
                    }
                    _ => collect_ids(v, certificates, agents),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_ids(v, certificates, agents)),
        _ => {}
    }
}

/// The rows of `events`, names looked up for `p`.
pub(crate) async fn rows(
    state: &AppState,
    p: &Principal,
    events: &[AuditEvent],
) -> PageResult<Vec<AuditRow>> {
    let names = Names::of(state, p, events).await?;
    Ok(events.iter().map(|e| row(e, &names)).collect())
}

/// The row of `e`.
pub(crate) fn row(e: &AuditEvent, names: &Names) -> AuditRow {
    let who = Uuid::parse_str(&e.actor.subject)
        .ok()
        .and_then(|id| names.agent(id))
        .map(|mut shown| {
            shown.text = format!("agent {}", shown.text);
            shown
        })
        .unwrap_or_else(|| Shown::text(e.actor.subject.clone()));
    AuditRow {
        at: Shown::time(e.at),
        who,
        source: e.actor.source.clone().unwrap_or_default(),
        action: e.action.clone(),
        target: names.target(&e.target),
        outcome: e.outcome.as_str(),
        details: details(&e.details, names),
    }
}

/// The details of an event as terms and values.
pub(crate) fn details(details: &Value, names: &Names) -> Vec<Fact> {
    let Value::Object(map) = details else {
        return match details {
            Value::Null => Vec::new(),
            other => vec![Fact {
                term: "details".into(),
                values: vec![scalar("", other, names)],
                groups: Vec::new(),
            }],
        };
    };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let mut fact = Fact {
                term: term(k),
                values: Vec::new(),
                groups: Vec::new(),
            };
            match v {
                Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
                    fact.groups = items.iter().map(|item| leaves(item, names)).collect();
                }
                Value::Array(items) => {
                    fact.values = items.iter().map(|i| scalar(k, i, names)).collect();
                    if fact.values.is_empty() {
                        fact.values.push(Shown::text("none"));
                    }
                }
                Value::Object(_) => fact.groups = vec![leaves(v, names)],
                _ => fact.values = vec![scalar(k, v, names)],
            }
            fact
        })
        .collect()
}

/// One nested object's terms (deeper structure as compact JSON).
fn leaves(item: &Value, names: &Names) -> Vec<Leaf> {
    item.as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| Leaf {
            term: term(k),
            value: scalar(k, v, names),
        })
        .collect()
}

/// `absolute_expires_at` → `absolute expires`, `certificate_id` → `certificate`.
fn term(key: &str) -> String {
    let key = key
        .strip_suffix("_id")
        .or_else(|| key.strip_suffix("_at"))
        .filter(|k| !k.is_empty())
        .unwrap_or(key);
    key.replace('_', " ")
}

/// Whether `key` holds a Unix time, by the writers' naming habit.
fn is_time_key(key: &str) -> bool {
    key.ends_with("_at") || TIME_KEYS.contains(&key)
}

/// A single value: an id by name, a time as a date, else its text.
fn scalar(key: &str, v: &Value, names: &Names) -> Shown {
    match v {
        Value::String(s) => {
            let id = Uuid::parse_str(s).ok();
            match (key, id) {
                ("certificate_id", Some(id)) => names.certificate(id),
                ("agent_id", Some(id)) => names.agent(id).unwrap_or_else(|| Shown::text(s.clone())),
                _ => Shown::text(s.clone()),
            }
        }
        Value::Number(n) if is_time_key(key) => n
            .as_i64()
            .filter(|t| (0..=MAX_UNIX).contains(t))
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .map_or_else(|| Shown::text(n.to_string()), Shown::time),
        Value::Number(n) => Shown::text(n.to_string()),
        Value::Bool(b) => Shown::text(if *b { "yes" } else { "no" }),
        Value::Null => Shown::text("none"),
        other => Shown::text(other.to_string()),
    }
}
