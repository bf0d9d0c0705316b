//! Agents: join tokens, enrolment, identity renewal, and the dedicated
//! agent-identity CA that signs their short-lived clientAuth certificates.
//!
//! The agent-identity CA is separate from every certificate issuer: it lives
//! in its own table (never listed as an issuer, never chosen as the default)
//! and its keys are sealed under their own encryption context, so an
//! identity certificate can never be mistaken for a managed certificate and
//! vice versa. Its key is unsealed per signature, like the internal CA's.

use std::sync::Arc;

use aws_lc_rs::{digest, rand};
use certflow_blob::{EncryptionContext, Sealer};
use certflow_core::agents::{Agent, AgentCaRecord, AgentStatus, JoinToken, agent_uri};
use certflow_core::model::{Actor, AuditEvent};
use certflow_core::ports::{AgentStore, BlobStore};
use certflow_core::{DomainError, DomainResult, FieldError, KeyType};
use certflow_pki::{AgentIdentityRequest, PrivateKey};
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

/// The agent use cases. Cheap to clone.
#[derive(Clone)]
pub struct Agents {
    services: Services,
    store: Arc<dyn AgentStore>,
    blobs: Arc<dyn BlobStore>,
    sealer: Sealer,
    settings: Arc<AgentSettings>,
}

impl Agents {
    /// The agent use cases over `store`, sharing the blob store and sealer of `services`.
    pub fn new(services: &Services, store: Arc<dyn AgentStore>, settings: AgentSettings) -> Self {
        Self {
            services: services.clone(),
            store,
            blobs: services.blobs.clone(),
            sealer: services.sealer.clone(),
            settings: Arc::new(settings),
        }
    }

    /// The agent store.
    pub fn store(&self) -> &Arc<dyn AgentStore> {
        &self.store
    }

    /// Returns the agent-identity CA, creating it on first start; on later
    /// starts unseals its key once so a wrong master key stops the server.
    /// Returns whether it was created.
    pub async fn ensure_ca(&self, now: OffsetDateTime) -> DomainResult<(AgentCaRecord, bool)> {
        if let Some(ca) = self.store.get_agent_ca().await? {
            self.signing_key(&ca).await?;
            return Ok((ca, false));
        }
        let s = &self.settings;
        let material = certflow_pki::create_ca(&s.ca_name, s.ca_key_type, now, 3650, 1825)?;
        let id = Uuid::now_v7();
        let (key_blob, root_key_blob, written) = self
            .services
            .seal_ca_keys(&material, &format!("agent-ca/{id}"), |which| {
                key_context(id, which)
            })
            .await?;
        let info = certflow_pki::inspect(&material.issuing_cert_der)?;
        let record = AgentCaRecord {
            id,
            issuing_cert_pem: certflow_pki::cert_to_pem(&material.issuing_cert_der),
            chain_pem: material
                .chain_der
                .iter()
                .map(|d| certflow_pki::cert_to_pem(d))
                .collect(),
            key_blob,
            root_key_blob,
            not_after: info.not_after,
            created_at: now,
        };
        let audit = AuditEvent::success(
            now,
            &Actor::system(),
            "agent-ca.create",
            format!("agent-ca/{id}"),
            json!({ "subject": info.subject, "not_after": info.not_after.unix_timestamp() }),
        );
        match self.store.insert_agent_ca(&record, &audit).await {
            Ok(()) => Ok((record, true)),
            Err(DomainError::Conflict(_)) => {
                // Another replica created it first: adopt theirs.
                self.services.remove_blobs(&written).await;
                let ca = self.store.get_agent_ca().await?.ok_or_else(|| {
                    DomainError::Internal("the agent-identity CA vanished".into())
                })?;
                self.signing_key(&ca).await?;
                Ok((ca, false))
            }
            Err(e) => {
                self.services.remove_blobs(&written).await;
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

    async fn signing_key(&self, ca: &AgentCaRecord) -> DomainResult<PrivateKey> {
        let sealed = self.blobs.get(&ca.key_blob).await.map_err(|e| match e {
            DomainError::NotFound(_) => DomainError::Integrity(
                "the agent-identity CA key is missing from the blob store".into(),
            ),
            other => other,
        })?;
        let der = self
            .sealer
            .open(&sealed, &key_context(ca.id, "issuing"))
            .await
            .map_err(|e| {
                DomainError::Integrity(format!(
                    "cannot unseal the agent-identity CA key ({e}); is this the master key it was created with?"
                ))
            })?;
        PrivateKey::from_pkcs8_der(&der)
    }

    /// Re-seals the agent-identity CA's keys under the current master key
    /// (part of `certflow keys rewrap`); returns (keys, re-wrapped).
    pub async fn rewrap_keys(&self) -> DomainResult<(usize, usize)> {
        let Some(ca) = self.store.get_agent_ca().await? else {
            return Ok((0, 0));
        };
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
        let key = self.signing_key(&ca).await?;
        let ca_der = certflow_pki::parse_pem_certs("issuing_cert_pem", &ca.issuing_cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::Internal("the agent CA has no certificate".into()))?;
        let uri = agent_uri(agent_id);
        let der = certflow_pki::issue_agent_identity(
            &ca_der,
            &key,
            &AgentIdentityRequest {
                uri: &uri,
                common_name: name,
                spki_der: &csr.spki_der,
                key_type: csr.key_type,
                validity_secs: self.settings.identity_validity_secs,
                now,
            },
        )?;
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

    /// The agent behind a verified identity certificate, if it may call the
    /// agent API: it exists, is active, and `serial` is its current identity.
    /// Anything else is `Forbidden` (the caller says no more than that).
    pub async fn authenticate(
        &self,
        agent_id: Uuid,
        serial: &str,
        now: OffsetDateTime,
    ) -> DomainResult<Agent> {
        let refused = |why: &str| DomainError::Forbidden(format!("agent {agent_id}: {why}"));
        let agent = self
            .store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| refused("unknown agent"))?;
        if agent.status != AgentStatus::Active {
            return Err(refused(agent.status.as_str()));
        }
        if agent.cert_serial != serial {
            return Err(refused("not the agent's current identity certificate"));
        }
        if agent
            .last_seen
            .is_none_or(|seen| now - seen >= LAST_SEEN_GRANULARITY)
            && let Err(e) = self.store.touch_agent(agent_id, now).await
        {
            tracing::warn!(agent = %agent_id, error = %e, "could not record last_seen");
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
        self.store
            .replace_agent_identity(
                agent.id,
                &agent.cert_serial,
                &info.serial_hex,
                &info.fingerprint_sha256,
                info.not_after,
                &audit,
            )
            .await?;
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
        let ca_key = self.services.signing_key(issuer).await?;
        let ca_der = certflow_pki::parse_pem_certs("issuing_cert_pem", &issuer.issuing_cert_pem)?;
        let leaf_key = PrivateKey::generate(KeyType::EcdsaP256)?;
        let spki = leaf_key.public_key_der();
        let leaf = certflow_pki::issue_leaf(
            ca_der
                .first()
                .ok_or_else(|| DomainError::Internal("issuer has no certificate".into()))?,
            &ca_key,
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
        )?;
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
        let agent = self.store.set_agent_status(id, status, &audit).await?;
        tracing::info!(agent = %id, status = status.as_str(), "agent status changed");
        Ok(agent)
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
}
