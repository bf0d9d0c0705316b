//! Deployments: certificates assigned to agents, what agents fetch and
//! request, what they report, and the notifications that follow (a failed
//! install, or drift: a new version not installed in time).
//!
//! An agent acts only on certificates assigned to it: anything else is
//! `NotFound` (never `Forbidden`, which would confirm the certificate exists).
//! Agent-requested certificates go through the same creation and renewal
//! use cases as the console's, so policies, audit and events are the same.

use std::sync::Arc;

use certflow_api::CreateCertificateRequest;
use certflow_api::agent::{
    AgentCertificateRequest, DeploymentReport, DeploymentStatus as WireStatus, ReportRequest,
};
use certflow_core::agents::Agent;
use certflow_core::deployments::{
    AssignedCertificate, Assignment, Deployment, DeploymentState, DeploymentStatus,
};
use certflow_core::model::{Actor, AuditEvent, CertificateStatus, KeySource};
use certflow_core::notify::{EventKind, Notification};
use certflow_core::ports::{AgentStore, DeploymentStore};
use certflow_core::{DomainError, DomainResult, FieldError};
use serde_json::json;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{DownloadKind, Services};

/// Most items one report may carry.
pub const MAX_REPORT_ITEMS: usize = 1000;
/// Longest error text kept from a report, in characters.
pub const MAX_ERROR_CHARS: usize = 2000;
/// Most drift candidates one check handles.
const DRIFT_BATCH: u32 = 500;
/// An agent may renew without a new key only this close to expiry (or later):
/// otherwise the scheduler renews on policy and the agent has nothing to ask.
const AGENT_RENEW_WINDOW: Duration = Duration::days(1);

/// Settings of the deployment use cases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentSettings {
    /// A new version not reported installed this long after it was issued is drift.
    pub drift_after: Duration,
}

impl Default for DeploymentSettings {
    fn default() -> Self {
        Self {
            drift_after: Duration::hours(1),
        }
    }
}

/// What an agent installs: the current version's PEMs (and key, if held by certflow).
pub struct Bundle {
    /// The certificate.
    pub certificate_id: Uuid,
    /// Version of the PEMs.
    pub version: u32,
    /// Serial (lower-case hex).
    pub serial: String,
    /// SHA-256 of the leaf (lower-case hex).
    pub fingerprint_sha256: String,
    /// PEM of the leaf.
    pub certificate_pem: String,
    /// PEM of the intermediates (no root).
    pub chain_pem: String,
    /// PKCS#8 PEM key, for `server`-keyed certificates (wiped on drop).
    pub key_pem: Option<Zeroizing<String>>,
}

/// The deployment use cases. Cheap to clone.
#[derive(Clone)]
pub struct Deployments {
    pub(crate) services: Services,
    store: Arc<dyn DeploymentStore>,
    agents: Arc<dyn AgentStore>,
    settings: Arc<DeploymentSettings>,
    /// Certificates agents discovered (see `discovery.rs`), when wired.
    pub(crate) discovery: Option<Arc<dyn certflow_core::ports::DiscoveryStore>>,
}

fn agent_actor(agent: &Agent, source: Option<String>) -> Actor {
    Actor {
        subject: agent.id.to_string(),
        source,
    }
}

fn not_assigned(certificate_id: Uuid) -> DomainError {
    DomainError::NotFound(format!(
        "certificate {certificate_id} assigned to this agent"
    ))
}

fn wire_status(s: WireStatus) -> DeploymentStatus {
    match s {
        WireStatus::Installed => DeploymentStatus::Installed,
        WireStatus::Failed => DeploymentStatus::Failed,
        WireStatus::Broken => DeploymentStatus::Broken,
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Drops self-signed certificates (roots) from a PEM chain: relying
/// parties have the root, and servers should not send it.
fn without_roots(chain_pem: &str) -> DomainResult<String> {
    let mut out = String::new();
    for der in certflow_pki::parse_pem_certs("chain", chain_pem)? {
        let info = certflow_pki::inspect(&der)?;
        if info.subject != info.issuer {
            out.push_str(&certflow_pki::cert_to_pem(&der));
        }
    }
    Ok(out)
}

/// What is wrong with item `i` of an agent's report, given the current
/// version `a` of its certificate.
fn check_report_item(
    errors: &mut Vec<FieldError>,
    i: usize,
    item: &DeploymentReport,
    a: &AssignedCertificate,
    status: DeploymentStatus,
) {
    let field = |f: &str| format!("items[{i}].{f}");
    if item.version > a.version {
        errors.push(FieldError::new(
            field("version"),
            format!(
                "{} is newer than the current version {}",
                item.version, a.version
            ),
        ));
    }
    if let Some(v) = item.attempted_version
        && (v == 0 || v > a.version)
    {
        errors.push(FieldError::new(
            field("attempted_version"),
            format!("must be between 1 and the current version {}", a.version),
        ));
    }
    match (item.version, item.fingerprint_sha256.as_str()) {
        (0, "") => {}
        (0, _) => errors.push(FieldError::new(
            field("fingerprint_sha256"),
            "must be empty with version 0 (nothing installed)",
        )),
        (_, f) if !is_sha256_hex(f) => errors.push(FieldError::new(
            field("fingerprint_sha256"),
            "must be 64 lower-case hex digits",
        )),
        _ => {}
    }
    if status == DeploymentStatus::Installed && item.version == 0 {
        errors.push(FieldError::new(
            field("version"),
            "an installed certificate has a version of at least 1",
        ));
    }
    if status == DeploymentStatus::Installed
        && item.version == a.version
        && !item.fingerprint_sha256.is_empty()
        && item.fingerprint_sha256 != a.fingerprint_sha256
    {
        errors.push(FieldError::new(
            field("fingerprint_sha256"),
            format!("is not the fingerprint of version {}", a.version),
        ));
    }
}

impl Deployments {
    /// The deployment use cases over `store`, with agents from `agents`.
    pub fn new(
        services: &Services,
        store: Arc<dyn DeploymentStore>,
        agents: Arc<dyn AgentStore>,
        settings: DeploymentSettings,
    ) -> Self {
        Self {
            services: services.clone(),
            store,
            agents,
            settings: Arc::new(settings),
            discovery: None,
        }
    }

    /// Accepts agents' discovery reports into `store` and offers take-over.
    pub fn with_discovery(mut self, store: Arc<dyn certflow_core::ports::DiscoveryStore>) -> Self {
        self.discovery = Some(store);
        self
    }

    /// How long a new version may go uninstalled before it is drift.
    pub fn drift_after(&self) -> Duration {
        self.settings.drift_after
    }

    async fn agent(&self, id: Uuid) -> DomainResult<Agent> {
        self.agents
            .get_agent(id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("agent {id}")))
    }

    /// Assigns a certificate to an agent (console). The certificate's team
    /// must be one of the agent's teams. Returns where it stands and whether
    /// it was newly assigned.
    pub async fn assign(
        &self,
        actor: &Actor,
        agent_id: Uuid,
        certificate_id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<(DeploymentState, bool)> {
        let agent = self.agent(agent_id).await?;
        let cert = self
            .services
            .store()
            .get_certificate(certificate_id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("certificate {certificate_id}")))?;
        if !agent.teams.contains(&cert.team) {
            return Err(DomainError::invalid(
                "certificate_id",
                format!(
                    "the certificate belongs to team '{}', which is not one of the agent's teams ({})",
                    cert.team,
                    agent.teams.join(", ")
                ),
            ));
        }
        if cert.status == CertificateStatus::Archived {
            return Err(DomainError::Conflict(format!(
                "certificate {certificate_id} is archived"
            )));
        }
        let created = self
            .store
            .assign(
                &Assignment {
                    agent_id,
                    certificate_id,
                    created_by: actor.subject.clone(),
                    created_at: now,
                },
                &AuditEvent::success(
                    now,
                    actor,
                    "deployment.assign",
                    format!("agent/{agent_id}"),
                    json!({ "certificate_id": certificate_id, "team": cert.team }),
                ),
            )
            .await?;
        let state = self
            .store
            .agent_deployments(agent_id)
            .await?
            .into_iter()
            .find(|s| s.assigned.certificate_id == certificate_id)
            .ok_or_else(|| not_assigned(certificate_id))?;
        Ok((state, created))
    }

    /// Removes an assignment (console); the agent stops seeing the certificate.
    pub async fn unassign(
        &self,
        actor: &Actor,
        agent_id: Uuid,
        certificate_id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        self.store
            .unassign(
                agent_id,
                certificate_id,
                &AuditEvent::success(
                    now,
                    actor,
                    "deployment.unassign",
                    format!("agent/{agent_id}"),
                    json!({ "certificate_id": certificate_id }),
                ),
            )
            .await
    }

    /// Certificates assigned to an agent, at their current version.
    pub async fn assignments(&self, agent_id: Uuid) -> DomainResult<Vec<AssignedCertificate>> {
        self.store.assigned_certificates(agent_id).await
    }

    /// Where each certificate assigned to an agent stands (console).
    pub async fn agent_deployments(&self, agent_id: Uuid) -> DomainResult<Vec<DeploymentState>> {
        self.agent(agent_id).await?;
        self.store.agent_deployments(agent_id).await
    }

    /// Where a certificate stands on each agent it is assigned to (console).
    pub async fn certificate_deployments(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<DeploymentState>> {
        self.store.certificate_deployments(certificate_id).await
    }

    async fn assigned(
        &self,
        agent: &Agent,
        certificate_id: Uuid,
    ) -> DomainResult<AssignedCertificate> {
        self.store
            .assigned_certificates(agent.id)
            .await?
            .into_iter()
            .find(|a| a.certificate_id == certificate_id)
            .ok_or_else(|| not_assigned(certificate_id))
    }

    /// The current version of an assigned certificate, with its key when
    /// certflow holds it: that download is audited as the agent's, with no
    /// key material in the record, before the key is handed out.
    pub async fn bundle(
        &self,
        agent: &Agent,
        source: Option<String>,
        certificate_id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<Bundle> {
        let a = self.assigned(agent, certificate_id).await?;
        let version = Some(a.version);
        let certificate_pem = self
            .services
            .download(certificate_id, version, DownloadKind::Certificate)
            .await?;
        let chain = self
            .services
            .download(certificate_id, version, DownloadKind::Chain)
            .await?;
        let key_pem = match a.key_source {
            KeySource::Server => Some(
                self.services
                    .download_key(&agent_actor(agent, source), certificate_id, version, now)
                    .await?,
            ),
            KeySource::Csr => None,
        };
        Ok(Bundle {
            certificate_id,
            version: a.version,
            serial: a.serial,
            fingerprint_sha256: a.fingerprint_sha256,
            certificate_pem,
            chain_pem: without_roots(&chain)?,
            key_pem,
        })
    }

    /// A certificate the agent requests for a key it generated, created in
    /// one of its teams and assigned to it. A repeat with the same name and
    /// names returns the existing one (`false`); the same name with other
    /// names is a conflict.
    pub async fn request_certificate(
        &self,
        agent: &Agent,
        source: Option<String>,
        req: &AgentCertificateRequest,
        now: OffsetDateTime,
    ) -> DomainResult<(AssignedCertificate, bool)> {
        let team = match (&req.team, agent.teams.as_slice()) {
            (Some(t), teams) if teams.contains(t) => t.clone(),
            (Some(t), teams) => {
                return Err(DomainError::invalid(
                    "team",
                    format!(
                        "'{t}' is not one of this agent's teams ({})",
                        teams.join(", ")
                    ),
                ));
            }
            (None, [only]) => only.clone(),
            (None, []) => {
                return Err(DomainError::invalid(
                    "team",
                    "this agent has no team; an administrator must give it one",
                ));
            }
            (None, teams) => {
                return Err(DomainError::invalid(
                    "team",
                    format!(
                        "required: the agent has several teams ({})",
                        teams.join(", ")
                    ),
                ));
            }
        };
        let issuer_id = self.services.issuer_id_named(req.issuer.as_deref()).await?;
        // The names come from the CSR; parsed here to compare with a repeat.
        let csr = certflow_pki::parse_csr("csr", req.csr.as_bytes())?;
        if let Some(existing) = self
            .store
            .assigned_certificates(agent.id)
            .await?
            .into_iter()
            .find(|a| a.name == req.name && a.status != CertificateStatus::Archived)
        {
            let wanted =
                certflow_core::validate_names("csr", &csr.names).map_err(DomainError::Invalid)?;
            return if existing.names == wanted {
                Ok((existing, false))
            } else {
                Err(DomainError::Conflict(format!(
                    "this agent already has a certificate named '{}' for other names",
                    req.name
                )))
            };
        }
        let actor = agent_actor(agent, source);
        let view = self
            .services
            .create_certificate(
                &actor,
                &CreateCertificateRequest {
                    name: Some(req.name.clone()),
                    names: Vec::new(),
                    team,
                    labels: Default::default(),
                    profile: req.profile.clone(),
                    key_type: None,
                    validity_days: req.validity_days,
                    csr: Some(req.csr.clone()),
                    issuer_id,
                    validity_seconds: req.validity_seconds,
                    renewal: None,
                },
                now,
            )
            .await?;
        let certificate_id = view.certificate.id;
        self.store
            .assign(
                &Assignment {
                    agent_id: agent.id,
                    certificate_id,
                    created_by: actor.subject.clone(),
                    created_at: now,
                },
                &AuditEvent::success(
                    now,
                    &actor,
                    "deployment.assign",
                    format!("agent/{}", agent.id),
                    json!({ "certificate_id": certificate_id, "team": view.certificate.team, "requested_by_agent": true }),
                ),
            )
            .await?;
        Ok((self.assigned(agent, certificate_id).await?, true))
    }

    /// Renews an assigned certificate for the agent: with a CSR (a new key,
    /// `csr`-keyed certificates only) at once; without one only when the
    /// current version is expired or within a day of it (a host that was
    /// off), else the current version is returned unchanged.
    pub async fn renew(
        &self,
        agent: &Agent,
        source: Option<String>,
        certificate_id: Uuid,
        csr: Option<&str>,
        now: OffsetDateTime,
    ) -> DomainResult<AssignedCertificate> {
        let a = self.assigned(agent, certificate_id).await?;
        if a.status != CertificateStatus::Active {
            return Err(DomainError::Conflict(format!(
                "certificate {certificate_id} is {}; remove it from service",
                a.status.as_str()
            )));
        }
        if csr.is_none() && a.not_after - now > AGENT_RENEW_WINDOW {
            return Ok(a);
        }
        self.services
            .renew(&agent_actor(agent, source), certificate_id, csr, now)
            .await?;
        self.assigned(agent, certificate_id).await
    }

    /// Records an agent's report. Every item must name a certificate
    /// assigned to the agent, once; nothing is recorded if one is wrong.
    /// A failed or broken deployment notifies the certificate's team once
    /// per (agent, certificate, attempted version).
    pub async fn report(
        &self,
        agent: &Agent,
        source: Option<String>,
        req: &ReportRequest,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let assigned = self.store.assigned_certificates(agent.id).await?;
        let mut errors = Vec::new();
        if req.items.len() > MAX_REPORT_ITEMS {
            errors.push(FieldError::new(
                "items",
                format!("at most {MAX_REPORT_ITEMS} items"),
            ));
        }
        if let Some(v) = &req.agent_version
            && (v.is_empty() || v.chars().count() > 64 || v.chars().any(char::is_control))
        {
            errors.push(FieldError::new(
                "agent_version",
                "must be 1-64 printable characters",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut reports = Vec::with_capacity(req.items.len());
        for (i, item) in req.items.iter().enumerate() {
            let field = |f: &str| format!("items[{i}].{f}");
            if !seen.insert(item.certificate_id) {
                errors.push(FieldError::new(
                    field("certificate_id"),
                    "reported twice in one report",
                ));
            }
            let Some(a) = assigned
                .iter()
                .find(|a| a.certificate_id == item.certificate_id)
            else {
                errors.push(FieldError::new(
                    field("certificate_id"),
                    "is not assigned to this agent",
                ));
                continue;
            };
            let status = wire_status(item.status);
            check_report_item(&mut errors, i, item, a, status);
            let error = item
                .error
                .as_deref()
                .map(|e| e.chars().take(MAX_ERROR_CHARS).collect::<String>());
            reports.push((
                a,
                Deployment {
                    agent_id: agent.id,
                    certificate_id: item.certificate_id,
                    version: item.version,
                    fingerprint_sha256: item.fingerprint_sha256.clone(),
                    status,
                    attempted_version: item.attempted_version,
                    error,
                    reported_at: now,
                    agent_version: req.agent_version.clone(),
                },
            ));
        }
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors));
        }
        let rows: Vec<Deployment> = reports.iter().map(|(_, d)| d.clone()).collect();
        // The audit record names what was reported, not the agent's error text.
        let summary: Vec<_> = rows
            .iter()
            .map(|d| json!({ "certificate_id": d.certificate_id, "version": d.version, "status": d.status.as_str(), "attempted_version": d.attempted_version }))
            .collect();
        self.store
            .record_deployments(
                &rows,
                &AuditEvent::success(
                    now,
                    &agent_actor(agent, source),
                    "deployment.report",
                    format!("agent/{}", agent.id),
                    json!({ "items": summary, "agent_version": req.agent_version }),
                ),
            )
            .await?;
        for (a, d) in reports
            .iter()
            .filter(|(_, d)| d.status != DeploymentStatus::Installed)
        {
            self.announce_failed_deployment(agent, a, d, now).await;
        }
        Ok(())
    }

    /// Tells the certificate's team that `agent` could not deploy it
    /// (de-duplicated by agent, certificate, attempted version and status).
    async fn announce_failed_deployment(
        &self,
        agent: &Agent,
        a: &AssignedCertificate,
        d: &Deployment,
        now: OffsetDateTime,
    ) {
        let attempted = d.attempted_version.unwrap_or(d.version);
        self.services
            .publish(
                Notification {
                    id: Uuid::now_v7(),
                    kind: EventKind::DeploymentFailed,
                    team: a.team.clone(),
                    certificate_id: Some(a.certificate_id),
                    certificate_name: Some(a.name.clone()),
                    version: Some(attempted),
                    not_after: Some(a.not_after),
                    days_left: None,
                    reason: d.error.clone(),
                    summary: format!(
                        "{} version {attempted} could not be deployed on agent {} ({}); it serves version {}",
                        a.name,
                        agent.name,
                        d.status.as_str(),
                        d.version
                    ),
                    details: json!({
                        "agent_id": agent.id, "agent_name": agent.name,
                        "status": d.status.as_str(), "deployed_version": d.version,
                        "attempted_version": attempted,
                    }),
                    at: now,
                },
                Some(&format!(
                    "deployment-failed/{}/{}/v{attempted}/{}",
                    agent.id,
                    a.certificate_id,
                    d.status.as_str()
                )),
            )
            .await;
    }

    /// Announces drift: each current version not reported installed by an
    /// assigned agent within `drift_after` of its issue, once per (agent,
    /// certificate, version). Several schedulers may run it: the
    /// notification's de-duplication key keeps it to one. Returns how many
    /// were announced.
    pub async fn check_drift(&self, now: OffsetDateTime) -> DomainResult<usize> {
        let late = self
            .store
            .drift_candidates(now - self.settings.drift_after, DRIFT_BATCH)
            .await?;
        let mut announced = 0;
        for s in late {
            let a = &s.assigned;
            let deployed = s.last_report.as_ref().map(|d| d.version);
            self.services
                .publish(
                    Notification {
                        id: Uuid::now_v7(),
                        kind: EventKind::DeploymentDrift,
                        team: a.team.clone(),
                        certificate_id: Some(a.certificate_id),
                        certificate_name: Some(a.name.clone()),
                        version: Some(a.version),
                        not_after: Some(a.not_after),
                        days_left: None,
                        reason: s.last_report.as_ref().and_then(|d| d.error.clone()),
                        summary: format!(
                            "{} version {} is not deployed on agent {} {} minutes after it was issued",
                            a.name,
                            a.version,
                            s.agent_name,
                            (now - a.issued_at).whole_minutes()
                        ),
                        details: json!({
                            "agent_id": s.agent_id, "agent_name": s.agent_name,
                            "deployed_version": deployed, "serial": a.serial,
                            "issued_at": a.issued_at.unix_timestamp(),
                        }),
                        at: now,
                    },
                    Some(&format!(
                        "deployment-drift/{}/{}/v{}",
                        s.agent_id, a.certificate_id, a.version
                    )),
                )
                .await;
            self.store
                .mark_drift_notified(s.agent_id, a.certificate_id, a.version)
                .await?;
            announced += 1;
        }
        Ok(announced)
    }
}
