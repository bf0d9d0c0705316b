//! Agents: join tokens, enrolment (join token or OIDC client-credentials
//! token), identity renewal, the cache that authenticates agent requests
//! without a database round trip, and the dedicated agent-identity CA that
//! signs their short-lived clientAuth certificates.
//!
//! The agent-identity CA is separate from every certificate issuer: it lives
//! in its own table (never listed as an issuer, never chosen as the default)
//! and its keys are sealed under their own encryption context, so an
//! identity certificate can never be mistaken for a managed certificate and
//! vice versa. Its key is unsealed while in use, like the internal CA's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lc_rs::{digest, rand};
use certflow_core::agents::{Agent, AgentCaRecord, AgentStatus, JoinToken, agent_uri};
use certflow_core::ca_keys::{CaKeyRef, CaKeyRole};
use certflow_core::model::{Actor, AuditEvent};
use certflow_core::ports::AgentStore;
use certflow_core::{DomainError, DomainResult, FieldError, KeyType};
use certflow_pki::{AgentIdentityRequest, PrivateKey};
use certflow_seal::EncryptionContext;
use serde_json::json;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::{DEFAULT_TENANT, Services, validate};

/// Prefix that makes join tokens recognisable to secret scanners.
pub const JOIN_TOKEN_PREFIX: &str = "cfj_";

/// Longest lifetime of a join token.
pub const MAX_JOIN_TOKEN_MINUTES: u32 = 1440;

/// Most teams one agent may be assigned.
const MAX_TEAMS: usize = 32;

/// How often `last_seen` is written for a busy agent.
const LAST_SEEN_GRANULARITY: Duration = Duration::seconds(60);

/// Agents kept in the authentication cache before it starts over (a bound
/// on memory, far above any fleet's working set).
const MAX_CACHED_AGENTS: usize = 100_000;

/// Prefix of the change-feed topic announcing that an agent's status or
/// identity changed: `agent:<id>`.
pub const AGENT_TOPIC_PREFIX: &str = "agent:";

/// Tells other replicas that an agent changed, so they drop it from their
/// authentication cache (implemented over the store's change feed).
#[async_trait]
pub trait AgentChanges: Send + Sync {
    /// Announces that agent `id`'s status or identity changed.
    async fn agent_changed(&self, id: Uuid);
}

/// What a validated OIDC client-credentials token enrols an agent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEnrolment {
    /// The token's issuer-qualified subject ([`certflow_core::agents::token_subject`]).
    pub subject: String,
    /// The OAuth client, the default name of the agent.
    pub client_id: String,
    /// The teams configured for the client (`service_roles`); never empty.
    pub teams: Vec<String>,
}

/// Authenticated agents by id, so an idle poll needs no database read.
///
/// An entry is dropped when the agent's status or identity changes: by the
/// use case that changed it on this replica (at once), and on the others
/// through the change feed ([`Agents::apply_change`]). `epoch` closes the
/// race between a read from the store and an invalidation arriving while it
/// is in flight: a read started before the last invalidation is not cached.
#[derive(Default)]
struct AgentCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    agents: HashMap<Uuid, Agent>,
    epoch: u64,
}

impl AgentCache {
    fn get(&self, id: Uuid) -> Result<Agent, u64> {
        match self.inner.lock() {
            Ok(c) => c.agents.get(&id).cloned().ok_or(c.epoch),
            // A poisoned lock only means a panic elsewhere: read through.
            Err(_) => Err(u64::MAX),
        }
    }

    fn put(&self, epoch: u64, agent: &Agent) {
        if let Ok(mut c) = self.inner.lock()
            && c.epoch == epoch
        {
            if c.agents.len() >= MAX_CACHED_AGENTS {
                c.agents.clear();
            }
            c.agents.insert(agent.id, agent.clone());
        }
    }

    fn seen(&self, id: Uuid, now: OffsetDateTime) {
        if let Ok(mut c) = self.inner.lock()
            && let Some(a) = c.agents.get_mut(&id)
        {
            a.last_seen = Some(now);
        }
    }

    fn forget(&self, id: Option<Uuid>) {
        if let Ok(mut c) = self.inner.lock() {
            c.epoch = c.epoch.wrapping_add(1);
            match id {
                Some(id) => {
                    c.agents.remove(&id);
                }
                None => c.agents.clear(),
            }
        }
    }

    fn len(&self) -> usize {
        self.inner.lock().map(|c| c.agents.len()).unwrap_or(0)
    }
}

/// Settings of the agent-identity CA and its certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// Organisation name in the CA subjects (`<name> Issuing CA 1`).
    pub ca_name: String,
    /// Key type of the CA keys.
    pub ca_key_type: KeyType,
    /// Lifetime of identity certificates, seconds.
    pub identity_validity_secs: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            ca_name: "certflow Agent Identity".into(),
            ca_key_type: KeyType::EcdsaP256,
            identity_validity_secs: 86_400,
        }
    }
}

/// What an admin asks for when creating a join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJoinToken {
    /// Name of the agent it enrols (it may propose another).
    pub name: String,
    /// Teams the agent is assigned.
    pub teams: Vec<String>,
    /// Minutes until it expires (1 to [`MAX_JOIN_TOKEN_MINUTES`]).
    pub ttl_minutes: u32,
}

/// A freshly created join token: the text is shown once and never stored.
#[derive(Debug, Clone)]
pub struct CreatedJoinToken {
    /// `cfj_` followed by 32 random bytes, base64url.
    pub token: String,
    /// What is stored.
    pub record: JoinToken,
}

/// An identity certificate handed to an agent.
#[derive(Debug, Clone)]
pub struct IssuedIdentity {
    /// The agent as stored afterwards.
    pub agent: Agent,
    /// PEM of the identity certificate.
    pub certificate_pem: String,
    /// PEM of the agent-identity CA chain (issuing CA first, root last).
    pub ca_chain_pem: String,
}

/// A TLS server certificate for the agent listener, with its key.
pub struct ListenerCertificate {
    /// DER certificates: the leaf, then the internal CA chain.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER of the key (zeroised on drop).
    pub key_pkcs8_der: zeroize::Zeroizing<Vec<u8>>,
    /// End of the leaf's validity.
    pub not_after: OffsetDateTime,
}

/// SHA-256 of a join token's text, lower-case hex: what the store keeps.
pub fn join_token_sha256(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            let index = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0);
            out.push(char::from(ALPHABET[index]));
        }
    }
    out
}

fn key_context(ca_id: Uuid, which: &str) -> EncryptionContext {
    EncryptionContext::new(
        DEFAULT_TENANT,
        "agent-ca-key",
        &format!("agent-ca/{ca_id}/{which}"),
        0,
    )
}

fn check_teams(errors: &mut Vec<FieldError>, teams: &[String]) {
    if teams.len() > MAX_TEAMS {
        errors.push(FieldError::new(
            "teams",
            format!("at most {MAX_TEAMS} teams"),
        ));
    }
    for (i, team) in teams.iter().enumerate() {
        let mut one = Vec::new();
        validate::team(&mut one, team);
        errors.extend(
            one.into_iter()
                .map(|e| FieldError::new(format!("teams[{i}]"), e.reason)),
        );
    }
}

fn check_name(errors: &mut Vec<FieldError>, name: &str) {
    // The name becomes the certificate's CN (ub-common-name is 64).
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        errors.push(FieldError::new("name", "must be 1-64 printable characters"));
    }
}

/// The agent use cases. Cheap to clone; clones share the authentication cache.
#[derive(Clone)]
pub struct Agents {
    services: Services,
    store: Arc<dyn AgentStore>,
    settings: Arc<AgentSettings>,
    cache: Arc<AgentCache>,
    changes: Option<Arc<dyn AgentChanges>>,
}

impl Agents {
    /// The agent use cases over `store`, sharing the CA key backends of `services`.
    pub fn new(services: &Services, store: Arc<dyn AgentStore>, settings: AgentSettings) -> Self {
        Self {
            services: services.clone(),
            store,
            settings: Arc::new(settings),
            cache: Arc::new(AgentCache::default()),
            changes: None,
        }
    }

    /// Announces agent changes to other replicas through `changes`.
    pub fn with_changes(mut self, changes: Arc<dyn AgentChanges>) -> Self {
        self.changes = Some(changes);
        self
    }

    /// Applies a change-feed topic from any replica: `agent:<id>` drops that
    /// agent from the authentication cache, `*` (anything may have changed,
    /// e.g. after the feed reconnected) drops them all; other topics are
    /// not about agents.
    pub fn apply_change(&self, topic: &str) {
        if topic == "*" {
            self.cache.forget(None);
        } else if let Some(id) = topic.strip_prefix(AGENT_TOPIC_PREFIX) {
            match Uuid::parse_str(id) {
                Ok(id) => self.cache.forget(Some(id)),
                Err(_) => self.cache.forget(None),
            }
        }
    }

    /// Drops every cached agent (the periodic safety net for lost notifications).
    pub fn forget_cached(&self) {
        self.cache.forget(None);
    }

    /// How many agents the authentication cache holds.
    pub fn cached_agents(&self) -> usize {
        self.cache.len()
    }

    /// After a committed change of agent `id`: dropped here at once, then
    /// announced to the other replicas (a lost announcement is caught by
    /// their periodic refresh, so it only warns).
    async fn changed(&self, id: Uuid) {
        self.cache.forget(Some(id));
        if let Some(changes) = &self.changes {
            changes.agent_changed(id).await;
        }
    }

    /// The agent store.
    pub fn store(&self) -> &Arc<dyn AgentStore> {
        &self.store
    }

    /// Returns the agent-identity CA, creating it on first start (its keys
    /// in the configured CA key backend, like the issuers'); on later starts
    /// checks its key once, so a wrong master key or a missing token stops
    /// the server. Returns whether it was created.
    pub async fn ensure_ca(&self, now: OffsetDateTime) -> DomainResult<(AgentCaRecord, bool)> {
        if let Some(ca) = self.store.get_agent_ca().await? {
            self.check_key(&ca).await?;
            return Ok((ca, false));
        }
        let s = &self.settings;
        let id = Uuid::now_v7();
        let keys = self
            .services
            .create_ca_keys(
                &crate::CaSettings {
                    name: s.ca_name.clone(),
                    key_type: s.ca_key_type,
                    root_validity_days: 3650,
                    intermediate_validity_days: 1825,
                },
                now,
                &format!("agent-ca/{id}"),
                &format!("certflow-agent-ca-{id}"),
                [CaKeyRole::AgentRoot, CaKeyRole::AgentIssuing],
                |which| key_context(id, which),
            )
            .await?;
        let info = certflow_pki::inspect(&keys.issuing_cert_der)?;
        let record = AgentCaRecord {
            id,
            issuing_cert_pem: certflow_pki::cert_to_pem(&keys.issuing_cert_der),
            chain_pem: keys
                .chain_der
                .iter()
                .map(|d| certflow_pki::cert_to_pem(d))
                .collect(),
            key_blob: keys.key_ref.clone(),
            root_key_blob: keys.root_key_ref.clone(),
            not_after: info.not_after,
            created_at: now,
        };
        let backend = CaKeyRef::parse(&record.key_blob).backend();
        let audit = AuditEvent::success(
            now,
            &Actor::system(),
            "agent-ca.create",
            format!("agent-ca/{id}"),
            json!({ "subject": info.subject, "key_backend": backend.as_str(), "not_after": info.not_after.unix_timestamp() }),
        );
        match self.store.insert_agent_ca(&record, &audit).await {
            Ok(()) => Ok((record, true)),
            Err(DomainError::Conflict(_)) => {
                // Another replica created it first: adopt theirs.
                self.services.abandon_ca_keys(&keys).await;
                let ca = self.store.get_agent_ca().await?.ok_or_else(|| {
                    DomainError::Internal("the agent-identity CA vanished".into())
                })?;
                self.check_key(&ca).await?;
                Ok((ca, false))
            }
            Err(e) => {
                self.services.abandon_ca_keys(&keys).await;
                Err(e)
            }
        }
    }

    async fn ca(&self) -> DomainResult<AgentCaRecord> {
        self.store
            .get_agent_ca()
            .await?
            .ok_or_else(|| DomainError::Conflict("the agent-identity CA is not created yet".into()))
    }

    /// The agent-identity CA's signer (unsealed, or its token or KMS).
    async fn signer(&self, ca: &AgentCaRecord) -> DomainResult<crate::issuing::CaSigner> {
        self.services
            .backends
            .internal
            .signer(
                &ca.key_blob,
                &key_context(ca.id, "issuing"),
                "the agent-identity CA",
            )
            .await
    }

    /// Checks that the agent-identity CA's key is usable and is its certificate's.
    async fn check_key(&self, ca: &AgentCaRecord) -> DomainResult<()> {
        let cert = certflow_pki::parse_pem_certs("issuing_cert_pem", &ca.issuing_cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::Internal("the agent CA has no certificate".into()))?;
        self.services
            .backends
            .internal
            .check_key(
                &ca.key_blob,
                &key_context(ca.id, "issuing"),
                "the agent-identity CA",
                &cert,
            )
            .await
    }

    /// Re-seals the agent-identity CA's keys under the current master key
    /// (part of `certflow keys rewrap`); returns (keys, re-wrapped).
    pub async fn rewrap_keys(&self) -> DomainResult<(usize, usize)> {
        let Some(ca) = self.store.get_agent_ca().await? else {
            return Ok((0, 0));
        };
        // A key in a token or KMS is not sealed under the master key.
        if CaKeyRef::parse(&ca.key_blob).blob().is_none() {
            return Ok((0, 0));
        }
        let mut blobs = vec![(ca.key_blob.clone(), key_context(ca.id, "issuing"))];
        if let Some(root) = &ca.root_key_blob {
            blobs.push((root.clone(), key_context(ca.id, "root")));
        }
        let (mut keys, mut rewrapped) = (0, 0);
        for (blob, context) in &blobs {
            keys += 1;
            if self.services.rewrap_one(blob, context).await? {
                rewrapped += 1;
            }
        }
        Ok((keys, rewrapped))
    }

    /// DER of the agent-identity CA certificates (issuing first, then up to
    /// the root): the trust anchors client certificates are verified against.
    pub async fn ca_certificates_der(&self) -> DomainResult<Vec<Vec<u8>>> {
        let ca = self.ca().await?;
        let mut all = certflow_pki::parse_pem_certs("issuing_cert_pem", &ca.issuing_cert_pem)?;
        if !ca.chain_pem.is_empty() {
            all.extend(certflow_pki::parse_pem_certs("chain_pem", &ca.chain_pem)?);
        }
        Ok(all)
    }

    /// Creates a join token; its text is returned once, only its hash is kept.
    pub async fn create_join_token(
        &self,
        actor: &Actor,
        req: &NewJoinToken,
        now: OffsetDateTime,
    ) -> DomainResult<CreatedJoinToken> {
        let mut errors = Vec::new();
        let name = req.name.trim();
        check_name(&mut errors, name);
        check_teams(&mut errors, &req.teams);
        if req.ttl_minutes == 0 || req.ttl_minutes > MAX_JOIN_TOKEN_MINUTES {
            errors.push(FieldError::new(
                "ttl_minutes",
                format!("must be between 1 and {MAX_JOIN_TOKEN_MINUTES}"),
            ));
        }
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors));
        }
        let mut raw = [0u8; 32];
        rand::fill(&mut raw).map_err(|_| DomainError::Internal("random source failed".into()))?;
        let token = format!("{JOIN_TOKEN_PREFIX}{}", base64url(&raw));
        let mut teams = req.teams.clone();
        teams.sort();
        teams.dedup();
        let record = JoinToken {
            id: Uuid::now_v7(),
            token_sha256: join_token_sha256(&token),
            name: name.to_owned(),
            teams,
            expires_at: now + Duration::minutes(i64::from(req.ttl_minutes)),
            created_by: actor.subject.clone(),
            created_at: now,
            used_at: None,
            agent_id: None,
        };
        let audit = AuditEvent::success(
            now,
            actor,
            "agent.join-token.create",
            format!("agent-join-token/{}", record.id),
            json!({ "name": record.name, "teams": record.teams, "expires_at": record.expires_at.unix_timestamp() }),
        );
        self.store.insert_join_token(&record, &audit).await?;
        Ok(CreatedJoinToken { token, record })
    }

    async fn sign(
        &self,
        agent_id: Uuid,
        name: &str,
        csr: &[u8],
        now: OffsetDateTime,
    ) -> DomainResult<(Vec<u8>, certflow_pki::CertInfo, String)> {
        let csr = certflow_pki::parse_csr("csr", csr)?;
        let ca = self.ca().await?;
        let signer = self.signer(&ca).await?;
        let ca_der = certflow_pki::parse_pem_certs("issuing_cert_pem", &ca.issuing_cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::Internal("the agent CA has no certificate".into()))?;
        let uri = agent_uri(agent_id);
        let tbs = certflow_pki::agent_identity_tbs(
            &ca_der,
            &AgentIdentityRequest {
                uri: &uri,
                common_name: name,
                spki_der: &csr.spki_der,
                key_type: csr.key_type,
                validity_secs: self.settings.identity_validity_secs,
                now,
            },
        )?;
        let der = signer.sign(tbs).await?;
        let info = certflow_pki::inspect(&der)?;
        Ok((
            der,
            info,
            format!("{}{}", ca.issuing_cert_pem, ca.chain_pem),
        ))
    }

    /// Enrols a new agent with a join token and a CSR (PEM or DER): the token is consumed
    /// in the same transaction that stores the agent, so it enrols at most one.
    /// An unknown, used or expired token is `Forbidden`.
    pub async fn enroll(
        &self,
        token: &str,
        csr: &[u8],
        proposed_name: Option<&str>,
        source: Option<String>,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedIdentity> {
        let refused =
            || DomainError::Forbidden("the join token is unknown, used or expired".into());
        if !token.starts_with(JOIN_TOKEN_PREFIX) {
            return Err(refused());
        }
        let hash = join_token_sha256(token);
        // A read ahead of the transaction: it saves a signature for a bad
        // token and supplies name and teams; the transaction re-checks.
        let Some(record) = self.store.get_join_token(&hash).await? else {
            return Err(refused());
        };
        if record.used_at.is_some() || record.expires_at <= now {
            return Err(refused());
        }
        let name = proposed_name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(&record.name)
            .to_owned();
        let mut errors = Vec::new();
        check_name(&mut errors, &name);
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors));
        }
        let id = Uuid::now_v7();
        let (der, info, ca_chain_pem) = self.sign(id, &name, csr, now).await?;
        let agent = Agent {
            id,
            name,
            teams: record.teams.clone(),
            status: AgentStatus::Active,
            cert_serial: info.serial_hex.clone(),
            cert_fingerprint_sha256: info.fingerprint_sha256.clone(),
            cert_not_after: info.not_after,
            created_at: now,
            last_seen: Some(now),
            subject: None,
        };
        let audit = AuditEvent::success(
            now,
            &Actor {
                subject: id.to_string(),
                source,
            },
            "agent.enroll",
            format!("agent/{id}"),
            json!({
                "name": agent.name,
                "teams": agent.teams,
                "join_token": record.id,
                "serial": info.serial_hex,
                "not_after": info.not_after.unix_timestamp(),
            }),
        );
        self.store.enroll_agent(&hash, now, &agent, &audit).await?;
        tracing::info!(agent = %id, name = %agent.name, "agent enrolled");
        Ok(IssuedIdentity {
            agent,
            certificate_pem: certflow_pki::cert_to_pem(&der),
            ca_chain_pem,
        })
    }

    /// Enrols an agent with a validated OIDC client-credentials token and a
    /// CSR. The first enrolment of a subject creates the agent (named
    /// `proposed_name` or the client id, with the client's teams); a later
    /// one — the host was off and its identity expired — gives the same
    /// agent (id, name, teams) a new identity certificate, unless it was
    /// disabled or revoked (`Forbidden`).
    pub async fn enroll_with_token(
        &self,
        who: &TokenEnrolment,
        csr: &[u8],
        proposed_name: Option<&str>,
        source: Option<String>,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedIdentity> {
        let mut errors = Vec::new();
        if who.teams.is_empty() {
            return Err(DomainError::Forbidden(format!(
                "client {} has no teams configured for agents",
                who.client_id
            )));
        }
        check_teams(&mut errors, &who.teams);
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors));
        }
        if let Some(existing) = self.store.get_agent_by_subject(&who.subject).await? {
            return self.reenroll(existing, who, csr, source, now).await;
        }
        let name = proposed_name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(&who.client_id)
            .to_owned();
        check_name(&mut errors, &name);
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors));
        }
        let id = Uuid::now_v7();
        let (der, info, ca_chain_pem) = self.sign(id, &name, csr, now).await?;
        let mut teams = who.teams.clone();
        teams.sort();
        teams.dedup();
        let agent = Agent {
            id,
            name,
            teams,
            status: AgentStatus::Active,
            cert_serial: info.serial_hex.clone(),
            cert_fingerprint_sha256: info.fingerprint_sha256.clone(),
            cert_not_after: info.not_after,
            created_at: now,
            last_seen: Some(now),
            subject: Some(who.subject.clone()),
        };
        let audit = AuditEvent::success(
            now,
            &Actor {
                subject: id.to_string(),
                source: source.clone(),
            },
            "agent.enroll",
            format!("agent/{id}"),
            json!({
                "name": agent.name,
                "teams": agent.teams,
                "client_id": who.client_id,
                "token_subject": who.subject,
                "serial": info.serial_hex,
                "not_after": info.not_after.unix_timestamp(),
            }),
        );
        match self.store.insert_token_agent(&agent, &audit).await {
            Ok(()) => {}
            Err(DomainError::Conflict(_)) => {
                // Another enrolment of this subject won the race: re-enrol its agent.
                let existing = self
                    .store
                    .get_agent_by_subject(&who.subject)
                    .await?
                    .ok_or_else(|| DomainError::Internal("the racing agent vanished".into()))?;
                return self.reenroll(existing, who, csr, source, now).await;
            }
            Err(e) => return Err(e),
        }
        tracing::info!(agent = %id, name = %agent.name, client = %who.client_id, "agent enrolled with a token");
        Ok(IssuedIdentity {
            agent,
            certificate_pem: certflow_pki::cert_to_pem(&der),
            ca_chain_pem,
        })
    }

    async fn reenroll(
        &self,
        existing: Agent,
        who: &TokenEnrolment,
        csr: &[u8],
        source: Option<String>,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedIdentity> {
        let refused = || {
            DomainError::Forbidden(format!(
                "agent {} is {}; it cannot enrol again",
                existing.id,
                existing.status.as_str()
            ))
        };
        if existing.status != AgentStatus::Active {
            return Err(refused());
        }
        let (der, info, ca_chain_pem) = self.sign(existing.id, &existing.name, csr, now).await?;
        let audit = AuditEvent::success(
            now,
            &Actor {
                subject: existing.id.to_string(),
                source,
            },
            "agent.reenroll",
            format!("agent/{}", existing.id),
            json!({
                "client_id": who.client_id,
                "token_subject": who.subject,
                "previous_serial": existing.cert_serial,
                "serial": info.serial_hex,
                "not_after": info.not_after.unix_timestamp(),
            }),
        );
        let result = self
            .store
            .reenroll_agent(
                existing.id,
                &who.subject,
                &info.serial_hex,
                &info.fingerprint_sha256,
                info.not_after,
                &audit,
            )
            .await;
        // Whatever happened, what this replica cached may be stale now.
        self.changed(existing.id).await;
        let agent = result?;
        tracing::info!(agent = %agent.id, client = %who.client_id, "agent enrolled again with its token");
        Ok(IssuedIdentity {
            agent,
            certificate_pem: certflow_pki::cert_to_pem(&der),
            ca_chain_pem,
        })
    }

    /// The agent behind a verified identity certificate, if it may call the
    /// agent API: it exists, is active, and `serial` is its current identity.
    /// Anything else is `Forbidden` (the caller says no more than that).
    ///
    /// Answered from the authentication cache when it holds the agent (the
    /// cache drops an agent whenever its status or identity changes), so a
    /// busy agent costs a database write once a minute (`last_seen`) and no read.
    pub async fn authenticate(
        &self,
        agent_id: Uuid,
        serial: &str,
        now: OffsetDateTime,
    ) -> DomainResult<Agent> {
        let refused = |why: &str| DomainError::Forbidden(format!("agent {agent_id}: {why}"));
        let agent = match self.cache.get(agent_id) {
            Ok(agent) => agent,
            Err(epoch) => {
                let agent = self
                    .store
                    .get_agent(agent_id)
                    .await?
                    .ok_or_else(|| refused("unknown agent"))?;
                self.cache.put(epoch, &agent);
                agent
            }
        };
        if agent.status != AgentStatus::Active {
            return Err(refused(agent.status.as_str()));
        }
        if agent.cert_serial != serial {
            return Err(refused("not the agent's current identity certificate"));
        }
        if agent
            .last_seen
            .is_none_or(|seen| now - seen >= LAST_SEEN_GRANULARITY)
        {
            // Marked in the cache first, so concurrent requests do not all write.
            self.cache.seen(agent_id, now);
            if let Err(e) = self.store.touch_agent(agent_id, now).await {
                tracing::warn!(agent = %agent_id, error = %e, "could not record last_seen");
            }
        }
        Ok(agent)
    }

    /// A new identity certificate for an authenticated agent (before its
    /// current one expires); the old one stops being honoured at once.
    pub async fn renew(
        &self,
        agent: &Agent,
        csr: &[u8],
        source: Option<String>,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedIdentity> {
        let (der, info, ca_chain_pem) = self.sign(agent.id, &agent.name, csr, now).await?;
        let audit = AuditEvent::success(
            now,
            &Actor {
                subject: agent.id.to_string(),
                source,
            },
            "agent.identity.renew",
            format!("agent/{}", agent.id),
            json!({
                "previous_serial": agent.cert_serial,
                "serial": info.serial_hex,
                "not_after": info.not_after.unix_timestamp(),
            }),
        );
        let result = self
            .store
            .replace_agent_identity(
                agent.id,
                &agent.cert_serial,
                &info.serial_hex,
                &info.fingerprint_sha256,
                info.not_after,
                &audit,
            )
            .await;
        self.changed(agent.id).await;
        result?;
        let mut agent = agent.clone();
        agent.cert_serial = info.serial_hex;
        agent.cert_fingerprint_sha256 = info.fingerprint_sha256;
        agent.cert_not_after = info.not_after;
        Ok(IssuedIdentity {
            agent,
            certificate_pem: certflow_pki::cert_to_pem(&der),
            ca_chain_pem,
        })
    }

    /// A serverAuth certificate for the agent listener's `names`, issued by
    /// the default internal CA with a fresh key held only in memory: it is
    /// not a managed certificate, just this process's TLS identity.
    pub async fn issue_listener_certificate(
        &self,
        names: &[String],
        validity_days: u32,
        now: OffsetDateTime,
    ) -> DomainResult<ListenerCertificate> {
        let names =
            certflow_core::validate_names("server_names", names).map_err(DomainError::Invalid)?;
        let issuers = self.services.store.list_issuers().await?;
        let issuer = issuers
            .iter()
            .find(|i| i.is_default && i.kind == certflow_core::model::IssuerKind::Internal)
            .or_else(|| {
                issuers
                    .iter()
                    .find(|i| i.kind == certflow_core::model::IssuerKind::Internal)
            })
            .ok_or_else(|| DomainError::Conflict("there is no internal CA yet".into()))?;
        let signer = self.services.signer(issuer).await?;
        let ca_der = certflow_pki::parse_pem_certs("issuing_cert_pem", &issuer.issuing_cert_pem)?;
        let leaf_key = PrivateKey::generate(KeyType::EcdsaP256)?;
        let spki = leaf_key.public_key_der();
        let tbs = certflow_pki::prepare_leaf(
            ca_der
                .first()
                .ok_or_else(|| DomainError::Internal("issuer has no certificate".into()))?,
            &certflow_pki::LeafRequest {
                profile: certflow_core::Profile::TlsServer,
                names: &names,
                spki_der: &spki,
                key_type: KeyType::EcdsaP256,
                validity_days,
                validity_secs: None,
                now,
                urls: None,
            },
        )?
        .map_err(|refusal| DomainError::Conflict(refusal.to_string()))?;
        let leaf = signer.sign(tbs).await?;
        let not_after = certflow_pki::inspect(&leaf)?.not_after;
        let mut chain_der = vec![leaf];
        chain_der.extend(ca_der);
        if !issuer.chain_pem.is_empty() {
            chain_der.extend(certflow_pki::parse_pem_certs(
                "chain_pem",
                &issuer.chain_pem,
            )?);
        }
        Ok(ListenerCertificate {
            chain_der,
            key_pkcs8_der: zeroize::Zeroizing::new(leaf_key.pkcs8_der().to_vec()),
            not_after,
        })
    }

    /// All agents.
    pub async fn list(&self) -> DomainResult<Vec<Agent>> {
        self.store.list_agents().await
    }

    /// One agent.
    pub async fn get(&self, id: Uuid) -> DomainResult<Agent> {
        self.store
            .get_agent(id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("agent {id}")))
    }

    /// Disables (or revokes) an agent; it is refused from its next request on.
    pub async fn set_status(
        &self,
        actor: &Actor,
        id: Uuid,
        status: AgentStatus,
        now: OffsetDateTime,
    ) -> DomainResult<Agent> {
        let action = match status {
            AgentStatus::Active => "agent.enable",
            AgentStatus::Disabled => "agent.disable",
            AgentStatus::Revoked => "agent.revoke",
        };
        let audit = AuditEvent::success(now, actor, action, format!("agent/{id}"), json!({}));
        let result = self.store.set_agent_status(id, status, &audit).await;
        // Refused at once here, within the change feed's latency elsewhere.
        self.changed(id).await;
        let agent = result?;
        tracing::info!(agent = %id, status = status.as_str(), "agent status changed");
        Ok(agent)
    }

    /// Join tokens, newest first, at most `limit` (1-500).
    pub async fn join_tokens(&self, limit: u32) -> DomainResult<Vec<JoinToken>> {
        if !(1..=500).contains(&limit) {
            return Err(DomainError::invalid("limit", "must be 1-500"));
        }
        self.store.list_join_tokens(limit).await
    }

    /// Revokes a join token that has not enrolled an agent yet: it expires
    /// now, so an enrolment with it is refused from here on. Audited;
    /// `Conflict` if it was used (act on its agent instead) or has expired.
    pub async fn revoke_join_token(
        &self,
        actor: &Actor,
        id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<JoinToken> {
        let audit = AuditEvent::success(
            now,
            actor,
            "agent.join-token.revoke",
            format!("agent-join-token/{id}"),
            json!({}),
        );
        let token = self.store.revoke_join_token(id, now, &audit).await?;
        tracing::info!(join_token = %id, name = %token.name, "join token revoked");
        Ok(token)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_the_rfc_4648_vectors_without_padding() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), want);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[0u8; 32]).len(), 43);
    }

    fn agent(id: Uuid, serial: &str) -> Agent {
        let t = OffsetDateTime::UNIX_EPOCH;
        Agent {
            id,
            name: "a".into(),
            teams: vec!["t".into()],
            status: AgentStatus::Active,
            cert_serial: serial.into(),
            cert_fingerprint_sha256: String::new(),
            cert_not_after: t,
            created_at: t,
            last_seen: None,
            subject: None,
        }
    }

    #[test]
    fn cache_forgets_one_agent_or_all_and_drops_reads_that_raced_an_invalidation() {
        let cache = AgentCache::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let epoch = cache.get(a).unwrap_err();
        cache.put(epoch, &agent(a, "01"));
        cache.put(epoch, &agent(b, "02"));
        assert_eq!(cache.get(a).unwrap().cert_serial, "01");
        cache.forget(Some(a));
        assert!(cache.get(a).is_err());
        assert_eq!(
            cache.get(b).unwrap().cert_serial,
            "02",
            "only the changed agent"
        );

        // A read that started before an invalidation must not refill the
        // cache with what it read: the change may have committed after it.
        let before = cache.get(a).unwrap_err();
        cache.forget(Some(a));
        cache.put(before, &agent(a, "stale"));
        assert!(cache.get(a).is_err(), "a stale read was cached");
        // Even an invalidation of another agent (or all) counts: cheap and safe.
        let before = cache.get(a).unwrap_err();
        cache.forget(None);
        cache.put(before, &agent(a, "stale"));
        assert!(cache.get(a).is_err());
        assert!(cache.get(b).is_err(), "forget(None) drops everyone");

        // last_seen is marked in place.
        let epoch = cache.get(a).unwrap_err();
        cache.put(epoch, &agent(a, "03"));
        let t = OffsetDateTime::UNIX_EPOCH + Duration::days(1);
        cache.seen(a, t);
        assert_eq!(cache.get(a).unwrap().last_seen, Some(t));
        assert_eq!(cache.len(), 1);
    }
}
