//! Discovery: agents report the certificates they find on their hosts
//! (files and TLS endpoints); the console lists those certflow does not
//! manage and can take one over — certflow issues a new certificate for
//! its names, assigns it to the agent and renews it from then on.
//!
//! A report is the agent's whole current view and is checked whole: one bad
//! item refuses it with every offending field named (`items[3].source`) and
//! nothing is stored.

use std::collections::HashSet;
use std::sync::Arc;

use certflow_api::CreateCertificateRequest;
use certflow_api::agent::{DiscoveredCertificate, DiscoveryReport, TakeOverRequest};
use certflow_core::access::{Permission, Principal};
use certflow_core::agents::Agent;
use certflow_core::discovery::{
    Discovered, DiscoveredItem, DiscoveryQuery, DiscoveryStatus, DiscoverySync,
};
use certflow_core::model::{Actor, AuditEvent};
use certflow_core::ports::DiscoveryStore;
use certflow_core::{DomainError, DomainResult, FieldError};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::CertificateView;
use crate::deployments::Deployments;

/// Most items one discovery report may carry.
pub const MAX_DISCOVERED_ITEMS: usize = 2000;
/// Longest source (`file:/path` or `tls:host:port[,sni]`), in characters.
pub const MAX_SOURCE_CHARS: usize = 1024;
/// Most names one item may carry.
pub const MAX_NAMES: usize = 100;
/// Longest subject or issuer DN kept, in characters.
const MAX_DN_CHARS: usize = 4096;
/// Longest serial (hex digits): RFC 5280 allows 20 octets, lenient parsers more.
const MAX_SERIAL_CHARS: usize = 128;
/// Longest name (a DNS name is at most 253 characters).
const MAX_NAME_CHARS: usize = 255;

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Checks a report whole and turns it into store items; every offending
/// field is named with its item index.
pub fn validate_report(req: &DiscoveryReport) -> DomainResult<Vec<DiscoveredItem>> {
    let mut errors = Vec::new();
    if req.items.len() > MAX_DISCOVERED_ITEMS {
        return Err(DomainError::invalid(
            "items",
            format!("{} items; at most {MAX_DISCOVERED_ITEMS}", req.items.len()),
        ));
    }
    if req.unreadable.len() > MAX_DISCOVERED_ITEMS {
        return Err(DomainError::invalid(
            "unreadable",
            format!(
                "{} sources; at most {MAX_DISCOVERED_ITEMS}",
                req.unreadable.len()
            ),
        ));
    }
    check_unreadable(&mut errors, req);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.iter().enumerate() {
        out.push(discovered_item(&mut errors, i, item, &mut seen)?);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(DomainError::Invalid(errors))
    }
}

/// Checks the sources reported unreadable: well-formed, and not also
/// reported as read.
fn check_unreadable(errors: &mut Vec<FieldError>, req: &DiscoveryReport) {
    for (i, s) in req.unreadable.iter().enumerate() {
        let rest = s.strip_prefix("file:").or_else(|| s.strip_prefix("tls:"));
        if rest.is_none_or(str::is_empty) || s.chars().count() > MAX_SOURCE_CHARS || !printable(s) {
            errors.push(FieldError::new(
                format!("unreadable[{i}]"),
                format!(
                    "must be file:<path> or tls:<host>:<port>, at most {MAX_SOURCE_CHARS} printable characters"
                ),
            ));
        } else if req.items.iter().any(|item| &item.source == s) {
            errors.push(FieldError::new(
                format!("unreadable[{i}]"),
                "is also reported as read in items",
            ));
        }
    }
}

/// Checks item `i` of a report (`seen`: the sources of the items before it)
/// and turns it into a store item; only a failure other than a bad field is
/// an error, bad fields are among `errors`.
fn discovered_item<'a>(
    errors: &mut Vec<FieldError>,
    i: usize,
    item: &'a DiscoveredCertificate,
    seen: &mut HashSet<&'a str>,
) -> DomainResult<DiscoveredItem> {
    let field = |f: &str| format!("items[{i}].{f}");
    let mut bad = |f: &str, reason: String| errors.push(FieldError::new(field(f), reason));
    let s = &item.source;
    let rest = s.strip_prefix("file:").or_else(|| s.strip_prefix("tls:"));
    if rest.is_none_or(str::is_empty) {
        bad(
            "source",
            "must be file:<path> or tls:<host>:<port>".to_owned(),
        );
    } else if s.chars().count() > MAX_SOURCE_CHARS || !printable(s) {
        bad(
            "source",
            format!("must be at most {MAX_SOURCE_CHARS} printable characters"),
        );
    } else if !seen.insert(s.as_str()) {
        bad("source", "reported twice in one report".to_owned());
    }
    if !is_sha256_hex(&item.fingerprint_sha256) {
        bad(
            "fingerprint_sha256",
            "must be 64 lower-case hex digits".to_owned(),
        );
    }
    if item.serial.is_empty()
        || item.serial.len() > MAX_SERIAL_CHARS
        || !item.serial.bytes().all(|b| b.is_ascii_hexdigit())
    {
        bad("serial", format!("must be 1-{MAX_SERIAL_CHARS} hex digits"));
    }
    for (f, dn) in [("subject", &item.subject), ("issuer", &item.issuer)] {
        if dn.chars().count() > MAX_DN_CHARS || !printable(dn) {
            bad(
                f,
                format!("must be at most {MAX_DN_CHARS} printable characters"),
            );
        }
    }
    if item.names.len() > MAX_NAMES {
        bad(
            "names",
            format!("{} names; at most {MAX_NAMES}", item.names.len()),
        );
    } else if let Some(n) = item
        .names
        .iter()
        .position(|n| n.is_empty() || n.chars().count() > MAX_NAME_CHARS || !printable(n))
    {
        bad(
            &format!("names[{n}]"),
            format!("must be 1-{MAX_NAME_CHARS} printable characters"),
        );
    }
    let mut certificate_der = None;
    if let Some(pem) = &item.certificate_pem {
        match certflow_pki::parse_pem_certs(&field("certificate_pem"), pem) {
            Err(DomainError::Invalid(mut e)) => errors.append(&mut e),
            Err(e) => return Err(e),
            Ok(ders) if ders.len() != 1 => errors.push(FieldError::new(
                field("certificate_pem"),
                format!("must hold exactly one certificate, not {}", ders.len()),
            )),
            Ok(mut ders) => {
                let der = ders.remove(0);
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
                if hex::encode(digest.as_ref()) != item.fingerprint_sha256 {
                    errors.push(FieldError::new(
                        field("certificate_pem"),
                        "its SHA-256 is not fingerprint_sha256",
                    ));
                }
                certificate_der = Some(der);
            }
        }
    }
    Ok(DiscoveredItem {
        source: item.source.clone(),
        fingerprint_sha256: item.fingerprint_sha256.clone(),
        serial: item.serial.to_ascii_lowercase(),
        subject: item.subject.clone(),
        issuer: item.issuer.clone(),
        names: item.names.clone(),
        not_after: item.not_after,
        certificate_der,
    })
}

/// A take-over claim older than this is a crashed one and may be taken again
/// (issuing a certificate takes seconds, an ACME order at most a few minutes).
const TAKE_OVER_CLAIM_TIMEOUT: time::Duration = time::Duration::minutes(10);

/// The teams whose agents' discoveries `principal` may read (`None`: all).
pub fn visible_teams(principal: &Principal) -> Option<Vec<String>> {
    if principal.is_admin() {
        return None;
    }
    Some(
        principal
            .teams
            .iter()
            .filter(|t| principal.can(Permission::CertificateRead, Some(t)))
            .cloned()
            .collect(),
    )
}

impl Deployments {
    fn discovery(&self) -> DomainResult<&Arc<dyn DiscoveryStore>> {
        self.discovery
            .as_ref()
            .ok_or_else(|| DomainError::Unavailable {
                backend: "discovery",
                reason: "this server does not accept discovery reports".into(),
            })
    }

    /// Records an agent's discovery report, replacing its previous one.
    /// The audit event holds counts only (no certificate data).
    pub async fn record_discovery(
        &self,
        agent: &Agent,
        source: Option<String>,
        req: &DiscoveryReport,
        now: OffsetDateTime,
    ) -> DomainResult<DiscoverySync> {
        let store = self.discovery()?;
        let items = validate_report(req)?;
        let actor = Actor {
            subject: agent.id.to_string(),
            source,
        };
        store
            .replace_discovered(
                agent.id,
                &items,
                &req.unreadable,
                now,
                &AuditEvent::success(
                    now,
                    &actor,
                    "agent.discovery",
                    format!("agent/{}", agent.id),
                    json!({}),
                ),
            )
            .await
    }

    /// Discoveries `principal` may see: those of agents sharing one of its
    /// teams (admins: all), or only `team`'s when given (which it must be
    /// allowed to read).
    pub async fn list_discovered(
        &self,
        principal: &Principal,
        status: DiscoveryStatus,
        agent_id: Option<Uuid>,
        team: Option<&str>,
    ) -> DomainResult<Vec<Discovered>> {
        let teams = match team {
            Some(t) if principal.can(Permission::CertificateRead, Some(t)) => {
                Some(vec![t.to_owned()])
            }
            Some(t) => {
                return Err(DomainError::Forbidden(format!(
                    "{} may not read team '{t}'",
                    principal.subject
                )));
            }
            None => visible_teams(principal),
        };
        self.discovery()?
            .list_discovered(&DiscoveryQuery {
                status,
                teams,
                agent_id,
            })
            .await
    }

    /// One discovery, as `principal` may see it (else `NotFound`).
    pub async fn discovered(&self, principal: &Principal, id: Uuid) -> DomainResult<Discovered> {
        let not_found = || DomainError::NotFound(format!("discovered certificate {id}"));
        let found = self
            .discovery()?
            .get_discovered(id)
            .await?
            .ok_or_else(not_found)?;
        if visible_teams(principal)
            .is_some_and(|teams| !found.agent_teams.iter().any(|t| teams.contains(t)))
        {
            return Err(not_found());
        }
        Ok(found)
    }

    /// Takes a discovered certificate over: a new certflow certificate for
    /// its names, owned by `req.team` (which `principal` must be allowed to
    /// write and the discovering agent must belong to), with a server key of
    /// the discovered key type when certflow supports it; issued through the
    /// usual request path (policies apply), assigned to the agent, and
    /// recorded on the discovery (`discovery.take-over`). A discovery that
    /// is already managed or taken over is a conflict.
    pub async fn take_over_discovered(
        &self,
        principal: &Principal,
        actor: &Actor,
        id: Uuid,
        req: &TakeOverRequest,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        let store = self.discovery()?;
        // Outside the agent's teams the row does not exist for the caller.
        let found = self.discovered(principal, id).await?;
        if !principal.can(Permission::CertificateWrite, Some(&req.team)) {
            return Err(DomainError::Forbidden(format!(
                "{} may not request certificates for team '{}'",
                principal.subject, req.team
            )));
        }
        if !found.agent_teams.contains(&req.team) {
            return Err(DomainError::invalid(
                "team",
                format!(
                    "'{}' is not one of the discovering agent's teams ({})",
                    req.team,
                    found.agent_teams.join(", ")
                ),
            ));
        }
        if let Some(c) = found.taken_over_certificate_id {
            return Err(DomainError::Conflict(format!(
                "discovered certificate {id} was already taken over by certificate {c}"
            )));
        }
        if let Some((c, v)) = found.managed {
            return Err(DomainError::Conflict(format!(
                "discovered certificate {id} is version {v} of certflow certificate {c}: it is managed already"
            )));
        }
        if found.item.names.is_empty() {
            return Err(DomainError::invalid(
                "names",
                "the discovered certificate has no DNS or IP names to certify",
            ));
        }
        // One take-over at a time: two people clicking at once would
        // otherwise both issue; the loser gets 409 before anything is issued.
        if !store
            .claim_discovered_take_over(id, now, now - TAKE_OVER_CLAIM_TIMEOUT)
            .await?
        {
            return Err(DomainError::Conflict(format!(
                "discovered certificate {id} is being taken over or was taken over already"
            )));
        }
        let taken = async {
            let issuer_id = self.services.issuer_id_named(req.issuer.as_deref()).await?;
            // The discovered key type when certflow can generate it; else the default.
            let key_type = found
                .item
                .certificate_der
                .as_deref()
                .and_then(|der| certflow_pki::inspect(der).ok())
                .and_then(|info| info.key_type)
                .map(|k| k.as_str().to_owned());
            let view = self
                .services
                .create_certificate(
                    actor,
                    &CreateCertificateRequest {
                        name: req.name.clone(),
                        names: found.item.names.clone(),
                        team: req.team.clone(),
                        labels: Default::default(),
                        profile: None,
                        key_type,
                        validity_days: None,
                        csr: None,
                        issuer_id,
                        validity_seconds: None,
                        renewal: None,
                    },
                    now,
                )
                .await?;
            let certificate_id = view.certificate.id;
            self.assign(actor, found.agent_id, certificate_id, now)
                .await?;
            store
                .set_discovered_taken_over(
                    id,
                    certificate_id,
                    &AuditEvent::success(
                        now,
                        actor,
                        "discovery.take-over",
                        format!("discovered/{id}"),
                        json!({
                            "certificate_id": certificate_id, "agent_id": found.agent_id,
                            "source": found.item.source, "team": req.team,
                            "fingerprint_sha256": found.item.fingerprint_sha256,
                        }),
                    ),
                )
                .await?;
            Ok(view)
        }
        .await;
        if taken.is_err()
            && let Err(e) = store.release_discovered_take_over(id).await
        {
            // The claim then lapses after the timeout.
            tracing::warn!(discovered = %id, error = %e, "cannot release a failed take-over's claim");
        }
        taken
    }
}
