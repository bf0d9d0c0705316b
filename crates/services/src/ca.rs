//! Issuers: the internal CA created at first start, imported CAs, their
//! signing keys (sealed in the blob store); CRLs are in `revocation.rs`.

use bytes::Bytes;
use certflow_api::ImportCaRequest;
use certflow_core::model::{Actor, AuditEvent, Issuer, IssuerKind, KeyType};
use certflow_core::{DomainError, error::DomainResult};
use certflow_pki::{CaMaterial, PrivateKey};
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

pub(crate) fn key_context(issuer_id: Uuid, which: &str) -> EncryptionContext {
    EncryptionContext::new(
        DEFAULT_TENANT,
        "ca-key",
        &format!("issuer/{issuer_id}/{which}"),
        0,
    )
}

impl Services {
    /// Returns the default issuer, creating the internal CA on first start. On
    /// later starts it unseals the issuing key once, so a wrong master key stops
    /// the server at start instead of failing the first request.
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
            self.signing_key(default).await?;
            return Ok((default.clone(), false));
        }
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
        let created = self
            .store_issuer(
                &Actor::system(),
                &settings.name,
                material,
                true,
                now,
                "issuer.create",
            )
            .await;
        match created {
            Ok(issuer) => Ok((issuer, true)),
            // Replicas starting together race to create the CA; the store allows one
            // default issuer, so the loser adopts the winner's (its own blobs are removed).
            Err(DomainError::Conflict(_)) => {
                let issuers = self.store.list_issuers().await?;
                let default = issuers
                    .into_iter()
                    .find(|i| i.is_default)
                    .ok_or_else(|| DomainError::Internal("default issuer vanished".into()))?;
                self.signing_key(&default).await?;
                Ok((default, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Imports an existing CA (certificate + key) as a new issuer.
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
        let issuer = self
            .store_issuer(actor, name, material, false, now, "issuer.import")
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
            return self.issuer(issuer.id).await;
        }
        Ok(issuer)
    }

    /// Blob first, then the metadata commit; blobs are removed if the commit fails.
    async fn store_issuer(
        &self,
        actor: &Actor,
        name: &str,
        material: CaMaterial,
        is_default: bool,
        now: OffsetDateTime,
        action: &str,
    ) -> DomainResult<Issuer> {
        let id = Uuid::now_v7();
        let info = certflow_pki::inspect(&material.issuing_cert_der)?;
        let (key_blob, root_key_blob, written) = self
            .seal_ca_keys(&material, &format!("issuers/{id}"), |which| {
                key_context(id, which)
            })
            .await?;
        let chain_pem: String = material
            .chain_der
            .iter()
            .map(|d| certflow_pki::cert_to_pem(d))
            .collect();
        let issuer = Issuer {
            id,
            name: name.to_owned(),
            kind: IssuerKind::Internal,
            is_default,
            key_type: material.issuing_key.key_type(),
            issuing_cert_pem: certflow_pki::cert_to_pem(&material.issuing_cert_der),
            chain_pem,
            key_blob,
            root_key_blob,
            subject: info.subject.clone(),
            not_after: info.not_after,
            created_at: now,
        };
        let audit = AuditEvent::success(
            now,
            actor,
            action,
            format!("issuer/{id}"),
            json!({ "subject": info.subject, "key_type": issuer.key_type.as_str(), "not_after": info.not_after.unix_timestamp() }),
        );
        if let Err(e) = self.store.insert_issuer(&issuer, &audit).await {
            self.remove_blobs(&written).await;
            return Err(e);
        }
        tracing::info!(issuer = %id, subject = %issuer.subject, action, "issuer stored");
        Ok(issuer)
    }

    /// Seals a CA's issuing (and root, if any) key into `<prefix>/issuing-key.enc`
    /// and `<prefix>/root-key.enc`, `context("issuing" | "root")` bound to each;
    /// returns the blob keys and the list written. On failure nothing stays written.
    pub(crate) async fn seal_ca_keys(
        &self,
        material: &CaMaterial,
        prefix: &str,
        context: impl Fn(&str) -> EncryptionContext,
    ) -> DomainResult<(String, Option<String>, Vec<String>)> {
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
        Ok((key_blob, root_key_blob, written))
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

    /// The issuer's signing key, unsealed for the duration of one operation.
    pub(crate) async fn signing_key(&self, issuer: &Issuer) -> DomainResult<PrivateKey> {
        self.backends.internal.signing_key(issuer).await
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
            Ok(()) => Ok((issuer, true)),
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
