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
use certflow_core::access::TeamScope;
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

/// The discovery use cases: agents' reports, and the console's list, view
/// and take-over. Like the other use cases they are handed what the caller
/// may do (a [`TeamScope`], from `Principal::readable_teams` or
/// `Principal::scope`) and an [`Actor`] for the audit trail, never the
/// principal. Cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    deployments: Deployments,
}

impl Discovery {
    /// The discovery use cases over `deployments` and the discovery store it
    /// was wired with ([`Deployments::with_discovery`]; without one, every
    /// call is `Unavailable`).
    pub fn new(deployments: &Deployments) -> Self {
        Self {
            deployments: deployments.clone(),
        }
    }

    fn store(&self) -> DomainResult<&Arc<dyn DiscoveryStore>> {
        self.deployments
            .discovery
            .as_ref()
            .ok_or_else(|| DomainError::Unavailable {
                backend: "discovery",
                reason: "this server does not accept discovery reports".into(),
            })
    }

    /// Records an agent's discovery report, replacing its previous one.
    /// The audit event holds counts only (no certificate data).
    pub async fn record(
        &self,
        agent: &Agent,
        source: Option<String>,
        req: &DiscoveryReport,
        now: OffsetDateTime,
    ) -> DomainResult<DiscoverySync> {
        let store = self.store()?;
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

    /// The discoveries of agents sharing one of `teams`.
    pub async fn list(
        &self,
        teams: &TeamScope,
        status: DiscoveryStatus,
        agent_id: Option<Uuid>,
    ) -> DomainResult<Vec<Discovered>> {
        self.store()?
            .list_discovered(&DiscoveryQuery {
                status,
                teams: teams.teams().map(<[String]>::to_vec),
                agent_id,
            })
            .await
    }

    /// One discovery, if its agent shares one of `teams` (else `NotFound`:
    /// outside them the row does not exist for the caller).
    pub async fn get(&self, teams: &TeamScope, id: Uuid) -> DomainResult<Discovered> {
        let not_found = || DomainError::NotFound(format!("discovered certificate {id}"));
        let found = self
            .store()?
            .get_discovered(id)
            .await?
            .ok_or_else(not_found)?;
        if !teams.allows_any(&found.agent_teams) {
            return Err(not_found());
        }
        Ok(found)
    }

    /// Takes a discovered certificate over: a new certflow certificate for
    /// its names, owned by `req.team` (which must be one of the discovering
    /// agent's teams), with a server key of the discovered key type when
    /// certflow supports it; issued through the usual request path (policies
    /// apply), assigned to the agent, and recorded on the discovery
    /// (`discovery.take-over`). The discovery must be in `teams` (the
    /// caller's readable ones), and the caller must have authorized
    /// [`CertificateWrite`](certflow_core::access::Permission::CertificateWrite) on `req.team`, as for any request.
    /// A discovery that is already managed or taken over is a conflict.
    pub async fn take_over(
        &self,
        actor: &Actor,
        teams: &TeamScope,
        id: Uuid,
        req: &TakeOverRequest,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        let found = self.get(teams, id).await?;
        self.take_over_found(actor, found, req, now).await
    }

    async fn take_over_found(
        &self,
        actor: &Actor,
        found: Discovered,
        req: &TakeOverRequest,
        now: OffsetDateTime,
    ) -> DomainResult<CertificateView> {
        let store = self.store()?;
        let id = found.id;
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
            let services = &self.deployments.services;
            let issuer_id = services.issuer_id_named(req.issuer.as_deref()).await?;
            // The discovered key type when certflow can generate it; else the default.
            let key_type = found
                .item
                .certificate_der
                .as_deref()
                .and_then(|der| certflow_pki::inspect(der).ok())
                .and_then(|info| info.key_type)
                .map(|k| k.as_str().to_owned());
            let view = services
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
            self.deployments
                .assign(actor, found.agent_id, certificate_id, now)
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
