//! Issuers: the internal CA created at first start, imported CAs, their
//! signing keys (sealed in the blob store, or held by a PKCS#11 token or AWS
//! KMS: `[ca] key_backend`); CRLs are in `revocation.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;
use certflow_api::ImportCaRequest;
use certflow_core::ca_keys::{CaKeyRef, CaKeyRole};
use certflow_core::model::{Actor, AuditEvent, Issuer, IssuerKind, KeyType};
use certflow_core::{DomainError, error::DomainResult};
use certflow_pki::{CaMaterial, CaPublicKey};
use certflow_seal::EncryptionContext;

use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{DEFAULT_TENANT, Services};

/// How to create the internal CA on first start.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// Organisation name shown in the CA subjects.
    pub name: String,
    /// Key type of root and issuing CA.
    pub key_type: KeyType,
    /// Root validity in days.
    pub root_validity_days: u32,
    /// Issuing CA validity in days.
    pub intermediate_validity_days: u32,
}

/// A new CA's certificates and where its keys went: key references as the
/// issuer row stores them, and what to remove if the row is not stored.
pub(crate) struct NewCaKeys {
    /// The issuing certificate.
    pub(crate) issuing_cert_der: Vec<u8>,
    /// Above it, up to the root.
    pub(crate) chain_der: Vec<Vec<u8>>,
    /// The issuing key's type.
    pub(crate) key_type: KeyType,
    /// The issuing key (`CaKeyRef` as stored).
    pub(crate) key_ref: String,
    /// The root key, when certflow holds it.
    pub(crate) root_key_ref: Option<String>,
    /// Sealed blobs written.
    pub(crate) written: Vec<String>,
    /// Keys generated in the token or KMS.
    pub(crate) generated: Vec<CaKeyRef>,
}

pub(crate) fn key_context(issuer_id: Uuid, which: &str) -> EncryptionContext {
    EncryptionContext::new(
        DEFAULT_TENANT,
        "ca-key",
        &format!("issuer/{issuer_id}/{which}"),
        0,
    )
}

impl Services {
    /// Returns the default issuer, creating the internal CA on first start
    /// (its keys in the configured key backend). On later starts it checks
    /// the issuing key once (unsealed, or asked of its token or KMS), so a
    /// wrong master key or a missing token stops the server at start instead
    /// of failing the first request.
    pub async fn ensure_ca(
        &self,
        settings: &CaSettings,
        now: OffsetDateTime,
    ) -> DomainResult<(Issuer, bool)> {
        let issuers = self.store.list_issuers().await?;
        if let Some(default) = issuers
            .iter()
            .filter(|i| i.kind == IssuerKind::Internal)
            .find(|i| i.is_default)
            .or(issuers.iter().find(|i| i.kind == IssuerKind::Internal))
        {
            self.check_issuer_key(default).await?;
            self.note_key_backend(default);
            return Ok((default.clone(), false));
        }
        let id = Uuid::now_v7();
        let keys = self
            .create_ca_keys(
                settings,
                now,
                &format!("issuers/{id}"),
                &format!("certflow-issuer-{id}"),
                [CaKeyRole::Root, CaKeyRole::Issuing],
                |which| key_context(id, which),
            )
            .await?;
        let created = self
            .store_issuer(
                &Actor::system(),
                id,
                &settings.name,
                keys,
                true,
                now,
                "issuer.create",
            )
            .await;
        match created {
            Ok(issuer) => Ok((issuer, true)),
            // Replicas starting together race to create the CA; the store allows one
            // default issuer, so the loser adopts the winner's (its own keys are removed).
            Err(DomainError::Conflict(_)) => {
                let issuers = self.store.list_issuers().await?;
                let default = issuers
                    .into_iter()
                    .find(|i| i.is_default)
                    .ok_or_else(|| DomainError::Internal("default issuer vanished".into()))?;
                self.check_issuer_key(&default).await?;
                Ok((default, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Says at start when an existing CA's key lives elsewhere than
    /// `[ca] key_backend` puts new keys: changing the setting never moves a
    /// key (switching is a re-issuance of the issuing CA, see the docs).
    fn note_key_backend(&self, issuer: &Issuer) {
        let held = CaKeyRef::parse(&issuer.key_blob).backend();
        let configured = self
            .backends
            .internal
            .key_store()
            .map_or(certflow_core::ca_keys::CaKeyBackend::Local, |s| s.backend());
        if held != configured {
            tracing::warn!(
                issuer = %issuer.name,
                key_backend = held.as_str(),
                configured = configured.as_str(),
                "the CA's key stays where it was created; [ca] key_backend applies to CAs created from now on (docs/ca-keys.md: moving to a token is a re-issuance of the issuing CA)"
            );
        }
    }

    /// Imports an existing CA (certificate + key) as a new issuer. Its key
    /// was handed over, so it is sealed in the blob store whatever the key
    /// backend: a key that existed outside a token cannot become one that
    /// never left it.
    pub async fn import_ca(
        &self,
        actor: &Actor,
        req: &ImportCaRequest,
        now: OffsetDateTime,
    ) -> DomainResult<Issuer> {
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                "name",
                "must be 1-128 printable characters",
            ));
        }
        let material = certflow_pki::import_ca(
            &req.certificate_pem,
            &req.private_key_pem,
            req.chain_pem.as_deref(),
            now,
        )?;
        let id = Uuid::now_v7();
        let keys = self
            .seal_ca_keys(&material, &format!("issuers/{id}"), |which| {
                key_context(id, which)
            })
            .await?;
        let issuer = self
            .store_issuer(actor, id, name, keys, false, now, "issuer.import")
            .await?;
        if req.make_default {
            let audit = AuditEvent::success(
                now,
                actor,
                "issuer.set-default",
                format!("issuer/{}", issuer.id),
                json!({}),
            );
            self.store.set_default_issuer(issuer.id, &audit).await?;
            self.forget_issuers();
            return self.issuer(issuer.id).await;
        }
        Ok(issuer)
    }

    /// Keys first (sealed blobs, or keys in the token or KMS), then the
    /// metadata commit; the keys are removed if the commit fails.
    #[allow(clippy::too_many_arguments)]
    async fn store_issuer(
        &self,
        actor: &Actor,
        id: Uuid,
        name: &str,
        keys: NewCaKeys,
        is_default: bool,
        now: OffsetDateTime,
        action: &str,
    ) -> DomainResult<Issuer> {
        let info = certflow_pki::inspect(&keys.issuing_cert_der)?;
        let chain_pem: String = keys
            .chain_der
            .iter()
            .map(|d| certflow_pki::cert_to_pem(d))
            .collect();
        let backend = CaKeyRef::parse(&keys.key_ref).backend();
        let issuer = Issuer {
            id,
            name: name.to_owned(),
            kind: IssuerKind::Internal,
            is_default,
            key_type: keys.key_type,
            issuing_cert_pem: certflow_pki::cert_to_pem(&keys.issuing_cert_der),
            chain_pem,
            key_blob: keys.key_ref.clone(),
            root_key_blob: keys.root_key_ref.clone(),
            subject: info.subject.clone(),
            not_after: info.not_after,
            created_at: now,
        };
        let audit = AuditEvent::success(
            now,
            actor,
            action,
            format!("issuer/{id}"),
            json!({ "subject": info.subject, "key_type": issuer.key_type.as_str(), "key_backend": backend.as_str(), "not_after": info.not_after.unix_timestamp() }),
        );
        if let Err(e) = self.store.insert_issuer(&issuer, &audit).await {
            self.abandon_ca_keys(&keys).await;
            return Err(e);
        }
        self.forget_issuers();
        tracing::info!(issuer = %id, subject = %issuer.subject, key_backend = backend.as_str(), action, "issuer stored");
        Ok(issuer)
    }

    /// Makes a two-tier CA (root and issuing intermediate, as
    /// `certflow_pki::create_ca`) with its keys in the configured backend:
    /// generated here and sealed under `prefix` (`context("issuing" | "root")`
    /// bound to each), or generated inside the token or KMS as
    /// `<label>-root` / `<label>-issuing`, which then sign the two certificates.
    pub(crate) async fn create_ca_keys(
        &self,
        settings: &CaSettings,
        now: OffsetDateTime,
        prefix: &str,
        label: &str,
        roles: [CaKeyRole; 2],
        context: impl Fn(&str) -> EncryptionContext,
    ) -> DomainResult<NewCaKeys> {
        let Some(store) = self.backends.internal.key_store().cloned() else {
            // Two keys (RSA-4096 takes up to a second each) and two signatures.
            let s = settings.clone();
            let material = self
                .cpu
                .run("CA creation", move || {
                    certflow_pki::create_ca(
                        &s.name,
                        s.key_type,
                        now,
                        s.root_validity_days,
                        s.intermediate_validity_days,
                    )
                })
                .await?;
            return self.seal_ca_keys(&material, prefix, context).await;
        };
        let mut keys = NewCaKeys {
            issuing_cert_der: Vec::new(),
            chain_der: Vec::new(),
            key_type: settings.key_type,
            key_ref: String::new(),
            root_key_ref: None,
            written: Vec::new(),
            generated: Vec::new(),
        };
        let made = async {
            let (root_ref, root_spki) = store
                .generate(roles[0], &format!("{label}-root"), settings.key_type)
                .await?;
            keys.generated.push(root_ref.clone());
            let root_public = CaPublicKey::from_spki_der("root key", &root_spki)?;
            let root_tbs = certflow_pki::root_ca_tbs(
                &settings.name,
                &root_public,
                now,
                settings.root_validity_days,
                settings.intermediate_validity_days,
            )?;
            let root = crate::issuing::CaSigner::Remote {
                store: store.clone(),
                key: root_ref.clone(),
            };
            let root_der = root.sign(root_tbs).await?;
            let (issuing_ref, issuing_spki) = store
                .generate(roles[1], &format!("{label}-issuing"), settings.key_type)
                .await?;
            keys.generated.push(issuing_ref.clone());
            let issuing_public = CaPublicKey::from_spki_der("issuing key", &issuing_spki)?;
            let issuing_tbs = certflow_pki::issuing_ca_tbs(
                &settings.name,
                &root_der,
                &issuing_public,
                now,
                settings.intermediate_validity_days,
            )?;
            let issuing_der = root.sign(issuing_tbs).await?;
            DomainResult::Ok((root_ref, root_der, issuing_ref, issuing_der))
        }
        .await;
        match made {
            Ok((root_ref, root_der, issuing_ref, issuing_der)) => {
                keys.issuing_cert_der = issuing_der;
                keys.chain_der = vec![root_der];
                keys.key_ref = issuing_ref.to_stored();
                keys.root_key_ref = Some(root_ref.to_stored());
                Ok(keys)
            }
            Err(e) => {
                self.abandon_ca_keys(&keys).await;
                Err(e)
            }
        }
    }

    /// Removes what `create_ca_keys` or `seal_ca_keys` made, after the CA
    /// was not stored. Best effort: a key left behind is only logged.
    pub(crate) async fn abandon_ca_keys(&self, keys: &NewCaKeys) {
        self.remove_blobs(&keys.written).await;
        for key in &keys.generated {
            let discarded = match self.backends.internal.key_store() {
                Some(store) => store.discard(key).await,
                None => Ok(()),
            };
            if let Err(e) = discarded {
                tracing::warn!(key = %key, error = %e, "could not remove an unused CA key");
            }
        }
    }

    /// Seals a CA's issuing (and root, if any) key into `<prefix>/issuing-key.enc`
    /// and `<prefix>/root-key.enc`, `context("issuing" | "root")` bound to each.
    /// On failure nothing stays written.
    pub(crate) async fn seal_ca_keys(
        &self,
        material: &CaMaterial,
        prefix: &str,
        context: impl Fn(&str) -> EncryptionContext,
    ) -> DomainResult<NewCaKeys> {
        let key_blob = format!("{prefix}/issuing-key.enc");
        let sealed = self
            .sealer
            .seal(material.issuing_key.pkcs8_der(), &context("issuing"))
            .await?;
        self.blobs.put(&key_blob, Bytes::from(sealed)).await?;
        let mut written = vec![key_blob.clone()];
        let root_key_blob = match &material.root_key {
            Some(root) => {
                let blob = format!("{prefix}/root-key.enc");
                let put = match self.sealer.seal(root.pkcs8_der(), &context("root")).await {
                    Ok(sealed) => self.blobs.put(&blob, Bytes::from(sealed)).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = put {
                    self.remove_blobs(&written).await;
                    return Err(e);
                }
                written.push(blob.clone());
                Some(blob)
            }
            None => None,
        };
        Ok(NewCaKeys {
            issuing_cert_der: material.issuing_cert_der.clone(),
            chain_der: material.chain_der.clone(),
            key_type: material.issuing_key.key_type(),
            key_ref: key_blob,
            root_key_ref: root_key_blob,
            written,
            generated: Vec::new(),
        })
    }

    pub(crate) async fn remove_blobs(&self, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.blobs.delete(key).await {
                // The orphan sweeper (production-backends issue) collects what this misses.
                tracing::warn!(blob = %key, error = %e, "could not remove blob after a failed commit");
            }
        }
    }

    /// All issuers.
    pub async fn issuers(&self) -> DomainResult<Vec<Issuer>> {
        self.store.list_issuers().await
    }

    /// The id of the issuer named `name` (`None` for none given), or a 400
    /// naming the `issuer` field.
    pub async fn issuer_id_named(&self, name: Option<&str>) -> DomainResult<Option<Uuid>> {
        let Some(name) = name else {
            return Ok(None);
        };
        self.issuers()
            .await?
            .into_iter()
            .find(|i| i.name == name)
            .map(|i| Some(i.id))
            .ok_or_else(|| DomainError::invalid("issuer", format!("no issuer named '{name}'")))
    }

    /// One issuer.
    pub async fn issuer(&self, id: Uuid) -> DomainResult<Issuer> {
        self.store
            .get_issuer(id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("issuer {id}")))
    }

    /// The issuer a renewal signs with, from memory after its first read:
    /// a stored issuer's row never changes but for `is_default`, which this
    /// copy may have stale, and which signing does not look at.
    pub(crate) async fn issuer_to_sign_with(&self, id: Uuid) -> DomainResult<Issuer> {
        if let Some(issuer) = self.issuers.get(id) {
            return Ok(issuer);
        }
        let issuer = self.issuer(id).await?;
        self.issuers.remember(&issuer);
        Ok(issuer)
    }

    /// The signer of an issuer's issuing key (unsealed for one operation,
    /// or its token or KMS).
    pub(crate) async fn signer(&self, issuer: &Issuer) -> DomainResult<crate::issuing::CaSigner> {
        self.backends.internal.issuer_signer(issuer).await
    }

    /// Checks that an internal issuer's issuing key is usable and is the
    /// key of its certificate.
    pub(crate) async fn check_issuer_key(&self, issuer: &Issuer) -> DomainResult<()> {
        let cert = certflow_pki::parse_pem_certs("issuing_cert_pem", &issuer.issuing_cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::Internal("issuer has no certificate".into()))?;
        self.backends
            .internal
            .check_key(
                &issuer.key_blob,
                &key_context(issuer.id, "issuing"),
                &format!("issuer '{}'", issuer.name),
                &cert,
            )
            .await
    }

    /// Whether an internal issuer's key can be reached now, cheaply (the
    /// issuer probe behind `certflow_issuer_up`): its sealed blob is there,
    /// or its token or KMS answers for it.
    pub async fn probe_issuer_key(&self, issuer: &Issuer) -> DomainResult<()> {
        self.backends
            .internal
            .probe_key(&issuer.key_blob, &format!("issuer '{}'", issuer.name))
            .await
    }

    /// Where an issuer's key is kept (`local`, `pkcs11`, `aws-kms`); `None`
    /// for issuers whose keys certflow does not hold (ACME, external CAs).
    pub fn key_backend(issuer: &Issuer) -> Option<&'static str> {
        (issuer.kind == IssuerKind::Internal)
            .then(|| CaKeyRef::parse(&issuer.key_blob).backend().as_str())
    }

    /// Registers (or finds) the ACME issuer `name`, whose settings live in the
    /// server configuration; its `key_blob` is where the account credentials
    /// are kept (sealed). Returns the issuer and whether it was created.
    pub async fn ensure_acme_issuer(
        &self,
        name: &str,
        directory_url: &str,
        now: OffsetDateTime,
    ) -> DomainResult<(Issuer, bool)> {
        let issuers = self.store.list_issuers().await?;
        if let Some(existing) = issuers.iter().find(|i| i.name == name) {
            if existing.kind != IssuerKind::Acme {
                return Err(DomainError::Conflict(format!(
                    "issuer '{name}' exists and is not an ACME issuer; rename the ACME issuer in the configuration"
                )));
            }
            return Ok((existing.clone(), false));
        }
        let id = Uuid::now_v7();
        let issuer = Issuer {
            id,
            name: name.to_owned(),
            kind: IssuerKind::Acme,
            is_default: false,
            key_type: KeyType::EcdsaP256,
            issuing_cert_pem: String::new(),
            chain_pem: String::new(),
            key_blob: format!("issuers/{id}/acme-account.enc"),
            root_key_blob: None,
            subject: directory_url.to_owned(),
            // The CA's own certificates are not known here; ACME CAs cap leaf lifetimes themselves.
            not_after: now + time::Duration::days(365 * 100),
            created_at: now,
        };
        let audit = AuditEvent::success(
            now,
            &Actor::system(),
            "issuer.create",
            format!("issuer/{id}"),
            json!({ "kind": "acme", "directory_url": directory_url }),
        );
        match self.store.insert_issuer(&issuer, &audit).await {
            Ok(()) => {
                self.forget_issuers();
                Ok((issuer, true))
            }
            // Another replica registered it first.
            Err(DomainError::Conflict(_)) => {
                let issuers = self.store.list_issuers().await?;
                issuers
                    .into_iter()
                    .find(|i| i.name == name)
                    .map(|i| (i, false))
                    .ok_or_else(|| DomainError::Internal(format!("issuer '{name}' vanished")))
            }
            Err(e) => Err(e),
        }
    }

    /// DER of the issuing certificate (served at the AIA caIssuers URL).
    pub async fn issuer_certificate_der(&self, id: Uuid) -> DomainResult<Vec<u8>> {
        let issuer = self.issuer(id).await?;
        // An external CA recorded by its DN only has no certificate to serve.
        if issuer.issuing_cert_pem.is_empty() {
            return Err(DomainError::NotFound(format!("certificate of issuer {id}")));
        }
        let certs = certflow_pki::parse_pem_certs("issuing_cert_pem", &issuer.issuing_cert_pem)?;
        certs
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::Internal("issuer has no certificate".into()))
    }

    /// The issuer's issuing certificate followed by the chain above it up to
    /// and including the root, DER each. A CA certflow created or imported
    /// always has its root on record (import checks the chain ends at one);
    /// a CA known from imported certificates may have only part of its
    /// chain, or none: not found, rather than a bundle without its anchor.
    async fn issuer_chain_der(&self, id: Uuid) -> DomainResult<Vec<Vec<u8>>> {
        let issuer = self.issuer(id).await?;
        // ACME issuers and CAs recorded by their DN only have no
        // certificates of their own on record.
        if issuer.issuing_cert_pem.is_empty() {
            return Err(DomainError::NotFound(format!(
                "CA certificates of issuer '{}'",
                issuer.name
            )));
        }
        let mut certs =
            certflow_pki::parse_pem_certs("issuing_cert_pem", &issuer.issuing_cert_pem)?;
        if !issuer.chain_pem.trim().is_empty() {
            certs.extend(certflow_pki::parse_pem_certs(
                "chain_pem",
                &issuer.chain_pem,
            )?);
        }
        let last = certflow_pki::inspect(
            certs
                .last()
                .ok_or_else(|| DomainError::Internal("issuer has no certificate".into()))?,
        )?;
        if last.subject != last.issuer {
            return Err(DomainError::NotFound(format!(
                "root certificate of issuer '{}' (its chain on record ends below the root, at '{}')",
                issuer.name, last.subject
            )));
        }
        Ok(certs)
    }

    /// DER of the issuer's root: the trust anchor relying parties configure
    /// (the last certificate of its chain; the issuing certificate itself
    /// when that is self-signed).
    pub async fn issuer_root_der(&self, id: Uuid) -> DomainResult<Vec<u8>> {
        self.issuer_chain_der(id)
            .await?
            .pop()
            .ok_or_else(|| DomainError::Internal("issuer has no certificate".into()))
    }

    /// PEM of the issuing certificate and every certificate above it up to
    /// and including the root: a CA bundle for `openssl verify -CAfile`,
    /// curl's `--cacert` or a trust store.
    pub async fn issuer_ca_bundle_pem(&self, id: Uuid) -> DomainResult<String> {
        Ok(self
            .issuer_chain_der(id)
            .await?
            .iter()
            .map(|d| certflow_pki::cert_to_pem(d))
            .collect())
    }
}

/// Issuers as last read: by id for [`Services::issuer_to_sign_with`], and
/// the default for requests that name none.
#[derive(Default)]
pub(crate) struct IssuerCache {
    by_id: RwLock<HashMap<Uuid, Issuer>>,
    default: RwLock<Option<Issuer>>,
    /// Counts [`IssuerCache::forget`]s, so that a default read before one
    /// is not remembered after it.
    generation: AtomicU64,
}

/// Issuers a cache keeps before it starts over: far more than any
/// deployment has, so only a flood of imports ever empties it.
const ISSUER_CACHE_LIMIT: usize = 1024;

impl IssuerCache {
    fn get(&self, id: Uuid) -> Option<Issuer> {
        let map = self.by_id.read().unwrap_or_else(PoisonError::into_inner);
        map.get(&id).cloned()
    }

    fn remember(&self, issuer: &Issuer) {
        let mut map = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= ISSUER_CACHE_LIMIT {
            map.clear();
        }
        map.insert(issuer.id, issuer.clone());
    }

    /// The default if known, and the generation to remember a fresh read under.
    pub(crate) fn default(&self) -> (Option<Issuer>, u64) {
        let generation = self.generation.load(Ordering::Acquire);
        let default = self.default.read().unwrap_or_else(PoisonError::into_inner);
        (default.clone(), generation)
    }

    pub(crate) fn remember_default(&self, issuer: &Issuer, read_at: u64) {
        let mut default = self.default.write().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock `forget` takes too: a forget after the read
        // wins over it.
        if self.generation.load(Ordering::Acquire) == read_at {
            *default = Some(issuer.clone());
        }
    }

    fn forget(&self) {
        let mut default = self.default.write().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        *default = None;
    }
}

impl Services {
    /// Drops the default issuer kept in memory: issuers were added or the
    /// default changed, here or on another replica (the change feed's
    /// `issuers` topic).
    pub fn forget_issuers(&self) {
        self.issuers.forget();
    }
}
