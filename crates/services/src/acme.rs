//! The ACME server's use cases (RFC 8555, RFC 9773, issue 15), behind the
//! protocol layer: it verifies JWS signatures and EAB MACs and passes in
//! what they proved (a JWK and its RFC 7638 thumbprint, identifiers, a CSR);
//! these use cases bind accounts to teams, hold orders to the team's and
//! the issuer's issuance policies, keep authorizations and challenges in the
//! shared store (validated by a worker task on any replica), and issue
//! through the normal issuance path: an ACME certificate is a certflow
//! certificate of the account's team labelled `acme_account=<id>`, issued
//! with the usual lint and audit, that certflow never renews itself (the
//! client does, told when by renewal information).
//!
//! Every write is audited with the account as actor (`acme-account:<id>`).
//! Errors are [`AcmeError`]s, one to one with ACME problem documents.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use certflow_api::CreateCertificateRequest;
use certflow_core::acme::{
    ACME_ACCOUNT_LABEL, AccountStatus, AcmeAccount, AcmeAuthorization, AcmeCertificate,
    AcmeChallenge, AcmeError, AcmeErrorKind, AcmeIdentifier, AcmeOrder, AcmePurge, AcmeResult,
    AcmeStore, AcmeSubproblem, AuthzStatus, ChallengeStatus, ChallengeType, ChallengeValidator,
    EabKey, IdentifierType, OrderStatus, ValidationOutcome, key_authorization,
};
use certflow_core::model::{Actor, AuditEvent, Issuer, IssuerKind, Outcome};
use certflow_core::names::parse_name;
use certflow_core::policy::IssuanceRequest;
use certflow_core::renewal::SuggestedWindow;
use certflow_core::{DomainError, DomainResult, Profile, SubjectName};
use certflow_seal::EncryptionContext;
use serde_json::json;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{DEFAULT_TENANT, DownloadKind, Services};

mod keys;
#[cfg(test)]
mod tests;

pub use keys::ari_cert_id;

/// Most identifiers in one order.
pub const MAX_IDENTIFIERS: usize = 100;

/// How the ACME server behaves (`[acme_server]`).
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// `eab = "required"`: a new account must carry an EAB key.
    pub eab_required: bool,
    /// The team of accounts created without EAB (when it is optional).
    pub default_team: Option<String>,
    /// How long a valid authorization is reused for the account's new orders (0: never).
    pub authz_reuse: Duration,
    /// Lifetime of a new order (pending/ready).
    pub order_lifetime: Duration,
    /// Lifetime of a new authorization.
    pub authz_lifetime: Duration,
    /// Lifetime of a replay nonce.
    pub nonce_lifetime: Duration,
    /// Most unfinished orders an account may hold.
    pub max_open_orders: u32,
    /// Validation attempts per answered challenge before it is invalid.
    pub validation_attempts: u32,
    /// Delay before the second attempt; doubled for each later one.
    pub validation_backoff: StdDuration,
    /// How long a worker holds a claimed challenge.
    pub validation_lease: Duration,
    /// Lifetime of a new EAB key.
    pub eab_key_lifetime: Duration,
    /// How long finished orders are kept.
    pub finished_order_retention: Duration,
}

impl Default for AcmeSettings {
    fn default() -> Self {
        Self {
            eab_required: true,
            default_team: None,
            authz_reuse: Duration::hours(24),
            order_lifetime: Duration::hours(24),
            authz_lifetime: Duration::hours(24),
            nonce_lifetime: Duration::hours(1),
            max_open_orders: 300,
            validation_attempts: 4,
            validation_backoff: StdDuration::from_secs(2),
            validation_lease: Duration::seconds(60),
            eab_key_lifetime: Duration::days(30),
            finished_order_retention: Duration::days(30),
        }
    }
}

/// A newAccount request, its JWS verified by the protocol layer.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// The account's public key (public members only).
    pub jwk: serde_json::Value,
    /// Its RFC 7638 thumbprint, base64url.
    pub thumbprint: String,
    /// `contact` URLs.
    pub contact: Vec<String>,
    /// `onlyReturnExisting`.
    pub only_return_existing: bool,
    /// The EAB JWS's `kid`, its MAC verified with [`AcmeService::eab_key`]'s key.
    pub eab_key_id: Option<String>,
}

/// Who asks to revoke a certificate.
#[derive(Debug, Clone, Copy)]
pub enum RevokeBy<'a> {
    /// An account (by `kid`): allowed for the account that ordered it.
    Account(&'a AcmeAccount),
    /// The certificate's own key: the protocol layer checked that the JWS
    /// `jwk` is the certificate's subject public key.
    CertificateKey,
}

/// RFC 9773 renewal information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalInfo {
    /// `suggestedWindow`.
    pub window: SuggestedWindow,
    /// `Retry-After`, in seconds.
    pub retry_after_secs: u64,
}

/// A new EAB key: its HMAC key is shown this once.
#[derive(Debug, Clone)]
pub struct CreatedEabKey {
    /// The key as stored.
    pub key: EabKey,
    /// The HMAC key, base64url without padding.
    pub hmac_key: String,
}

/// The ACME use cases, cheap to clone.
#[derive(Clone)]
pub struct AcmeService {
    services: Services,
    store: Arc<dyn AcmeStore>,
    settings: Arc<AcmeSettings>,
}

fn account_actor(account_id: Uuid, source: Option<String>) -> Actor {
    Actor {
        subject: format!("acme-account:{account_id}"),
        source,
    }
}

fn eab_context(key_id: &str) -> EncryptionContext {
    EncryptionContext::new(
        DEFAULT_TENANT,
        "acme-eab-key",
        &format!("acme-eab/{key_id}"),
        0,
    )
}

/// `n` random bytes.
fn random(n: usize) -> DomainResult<Zeroizing<Vec<u8>>> {
    let mut bytes = Zeroizing::new(vec![0_u8; n]);
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| DomainError::Internal("the system random generator failed".into()))?;
    Ok(bytes)
}

/// 128 random bits, base64url (tokens, nonces, key ids).
fn random_token() -> DomainResult<String> {
    Ok(B64URL.encode(random(16)?.as_slice()))
}

fn problem(kind: &str, detail: &str) -> serde_json::Value {
    json!({
        "type": format!("{}{kind}", certflow_core::acme::ACME_ERROR_PREFIX),
        "detail": detail,
        "status": 400,
    })
}

fn not_found(what: &str, id: Uuid) -> AcmeError {
    AcmeError::not_found(format!("no {what} {id}"))
}

fn audit(
    now: OffsetDateTime,
    actor: &Actor,
    action: &str,
    target: String,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent::success(now, actor, action, target, details)
}

impl AcmeService {
    /// Wires the use cases to the services (issuance, policies, sealer) and the ACME store.
    pub fn new(services: &Services, store: Arc<dyn AcmeStore>, settings: AcmeSettings) -> Self {
        Self {
            services: services.clone(),
            store,
            settings: Arc::new(settings),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &AcmeSettings {
        &self.settings
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn AcmeStore> {
        &self.store
    }

    /// The issuer whose directory is `/acme/<name>/`: 404 if unknown or one
    /// certflow cannot issue from (an external CA recorded for imports).
    pub async fn issuer_by_name(&self, name: &str) -> AcmeResult<Issuer> {
        self.services
            .store
            .list_issuers()
            .await?
            .into_iter()
            .find(|i| i.name == name && i.kind != IssuerKind::External)
            .ok_or_else(|| AcmeError::not_found(format!("no issuer named '{name}'")))
    }

    /// A fresh replay nonce, stored so any replica accepts it once.
    pub async fn new_nonce(&self, now: OffsetDateTime) -> AcmeResult<String> {
        let nonce = random_token()?;
        self.store
            .insert_nonce(&nonce, now + self.settings.nonce_lifetime)
            .await?;
        Ok(nonce)
    }

    /// Consumes a nonce: `badNonce` if unknown, used or expired.
    pub async fn consume_nonce(&self, nonce: &str, now: OffsetDateTime) -> AcmeResult<()> {
        if nonce.is_empty() || nonce.len() > 64 || !self.store.take_nonce(nonce, now).await? {
            return Err(AcmeError::new(
                AcmeErrorKind::BadNonce,
                "the nonce is unknown, used or expired: retry with the Replay-Nonce of this response",
            ));
        }
        Ok(())
    }

    /// An EAB key that may bind an account now, with its HMAC key (for the
    /// protocol layer to verify the EAB JWS MAC).
    pub async fn eab_key(
        &self,
        key_id: &str,
        now: OffsetDateTime,
    ) -> AcmeResult<(EabKey, Zeroizing<Vec<u8>>)> {
        let key = self
            .store
            .get_eab_key(key_id)
            .await?
            .filter(|k| k.usable(now))
            .ok_or_else(|| {
                AcmeError::unauthorized(format!(
                    "the external account binding key '{key_id}' is unknown, revoked, expired or \
                     already bound to an account"
                ))
            })?;
        let sealed = B64
            .decode(key.hmac_sealed.as_bytes())
            .map_err(|_| DomainError::Integrity("EAB key envelope is not base64".into()))?;
        let hmac = self
            .services
            .sealer
            .open(&sealed, &eab_context(&key.key_id))
            .await?;
        Ok((key, hmac))
    }

    /// The account of `id` (a `kid` URL): `accountDoesNotExist` if unknown,
    /// `unauthorized` if deactivated or revoked.
    pub async fn account(&self, id: Uuid) -> AcmeResult<AcmeAccount> {
        Self::usable_account(self.store.get_account(id).await?)
    }

    /// The account of a key (a `jwk` JWS), with the errors of [`Self::account`].
    pub async fn account_by_thumbprint(&self, thumbprint: &str) -> AcmeResult<AcmeAccount> {
        Self::usable_account(self.store.get_account_by_thumbprint(thumbprint).await?)
    }

    fn usable_account(account: Option<AcmeAccount>) -> AcmeResult<AcmeAccount> {
        let account = account.ok_or_else(|| {
            AcmeError::new(
                AcmeErrorKind::AccountDoesNotExist,
                "no account has this key",
            )
        })?;
        if account.status != AccountStatus::Valid {
            return Err(AcmeError::unauthorized(format!(
                "account {} is {}",
                account.id, account.status
            )));
        }
        Ok(account)
    }

    /// newAccount: the existing account of the key (`false`), or a new one
    /// bound to its EAB key's team (or `default_team` when EAB is optional).
    pub async fn new_account(
        &self,
        req: NewAccount,
        source: Option<String>,
        now: OffsetDateTime,
    ) -> AcmeResult<(AcmeAccount, bool)> {
        if let Some(existing) = self
            .store
            .get_account_by_thumbprint(&req.thumbprint)
            .await?
        {
            return Self::usable_account(Some(existing)).map(|a| (a, false));
        }
        if req.only_return_existing {
            return Err(AcmeError::new(
                AcmeErrorKind::AccountDoesNotExist,
                "no account has this key",
            ));
        }
        check_contact(&req.contact)?;
        if !req.jwk.is_object() || req.thumbprint.is_empty() {
            return Err(AcmeError::malformed("the account key is not a JWK"));
        }
        let team = match &req.eab_key_id {
            Some(key_id) => self.eab_key(key_id, now).await?.0.team,
            None if self.settings.eab_required => {
                return Err(AcmeError::new(
                    AcmeErrorKind::ExternalAccountRequired,
                    "this server requires external account binding: ask an operator of your \
                     team for an EAB key (certflow acme eab create --team <team>)",
                ));
            }
            None => self.settings.default_team.clone().ok_or_else(|| {
                AcmeError::new(
                    AcmeErrorKind::ExternalAccountRequired,
                    "no default team is configured: an EAB key names the team",
                )
            })?,
        };
        let account = AcmeAccount {
            id: Uuid::now_v7(),
            team,
            jwk: req.jwk,
            thumbprint: req.thumbprint,
            status: AccountStatus::Valid,
            contact: req.contact,
            eab_key_id: req.eab_key_id,
            created_at: now,
            updated_at: now,
        };
        let actor = account_actor(account.id, source);
        let event = audit(
            now,
            &actor,
            "acme.account.create",
            format!("acme-account/{}", account.id),
            json!({"team": account.team, "eab_key_id": account.eab_key_id,
                   "thumbprint": account.thumbprint, "contact": account.contact}),
        );
        match self.store.create_account(&account, now, &event).await {
            Ok(()) => Ok((account, true)),
            Err(DomainError::Conflict(_)) => {
                // The same key registered concurrently on another replica: that account is ours.
                let existing = self
                    .store
                    .get_account_by_thumbprint(&account.thumbprint)
                    .await?;
                Self::usable_account(existing).map(|a| (a, false))
            }
            Err(DomainError::Forbidden(why)) => Err(AcmeError::unauthorized(why)),
            Err(e) => Err(e.into()),
        }
    }

    /// Updates the contact and/or deactivates the account (RFC 8555 §7.3.2, §7.3.6).
    pub async fn update_account(
        &self,
        account: &AcmeAccount,
        contact: Option<Vec<String>>,
        deactivate: bool,
        source: Option<String>,
        now: OffsetDateTime,
    ) -> AcmeResult<AcmeAccount> {
        if let Some(contact) = &contact {
            check_contact(contact)?;
        }
        let mut updated = account.clone();
        if let Some(contact) = contact {
            updated.contact = contact;
        }
        if deactivate {
            updated.status = AccountStatus::Deactivated;
        }
        updated.updated_at = now;
        let action = if deactivate {
            "acme.account.deactivate"
        } else {
            "acme.account.update"
        };
        let event = audit(
            now,
            &account_actor(account.id, source),
            action,
            format!("acme-account/{}", account.id),
            json!({"status": updated.status.as_str(), "contact": updated.contact}),
        );
        self.store
            .update_account(&updated, AccountStatus::Valid, &event)
            .await?;
        Ok(updated)
    }

    /// keyChange (RFC 8555 §7.3.5): the old key is refused from then on.
    pub async fn key_change(
        &self,
        account: &AcmeAccount,
        new_jwk: serde_json::Value,
        new_thumbprint: String,
        source: Option<String>,
        now: OffsetDateTime,
    ) -> AcmeResult<AcmeAccount> {
        if let Some(other) = self
            .store
            .get_account_by_thumbprint(&new_thumbprint)
            .await?
        {
            return Err(AcmeError::malformed(format!(
                "the new key is already the key of account {}",
                other.id
            ))
            .with_status(409));
        }
        let event = audit(
            now,
            &account_actor(account.id, source),
            "acme.account.key-change",
            format!("acme-account/{}", account.id),
            json!({"old_thumbprint": account.thumbprint, "new_thumbprint": new_thumbprint}),
        );
        self.store
            .change_account_key(
                account.id,
                &account.thumbprint,
                &new_jwk,
                &new_thumbprint,
                now,
                &event,
            )
            .await
            .map_err(|e| match e {
                DomainError::Conflict(why) => AcmeError::malformed(why).with_status(409),
                e => e.into(),
            })?;
        Ok(AcmeAccount {
            jwk: new_jwk,
            thumbprint: new_thumbprint,
            updated_at: now,
            ..account.clone()
        })
    }

    /// The team's and the issuer's policy verdict on the order's names, one
    /// subproblem per refused identifier naming the rule.
    fn policy_subproblems(
        &self,
        team: &str,
        issuer: &Issuer,
        identifiers: &[AcmeIdentifier],
        names: &[SubjectName],
    ) -> Vec<AcmeSubproblem> {
        let profile = Profile::TlsServer;
        let violations = self.services.policies.evaluate(&IssuanceRequest {
            team,
            issuer: &issuer.name,
            profile,
            key_type: certflow_core::model::KeyType::EcdsaP256,
            names,
            validity_days: profile.default_validity_days(),
            validity_secs: None,
        });
        // Key type and lifetime are the CSR's and the CA's business at
        // finalize; here only what the names break counts.
        violations
            .iter()
            .filter(|v| v.field.starts_with("names"))
            .map(|v| AcmeSubproblem {
                kind: AcmeErrorKind::RejectedIdentifier,
                detail: v.to_string(),
                identifier: v
                    .field
                    .strip_prefix("names[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|i| i.parse::<usize>().ok())
                    .and_then(|i| identifiers.get(i).cloned()),
            })
            .collect()
    }

    /// newOrder: identifiers checked (syntax, wildcard rules, team and issuer
    /// policy), authorizations reused or created, the order stored.
    pub async fn new_order(
        &self,
        account: &AcmeAccount,
        issuer: &Issuer,
        identifiers: Vec<AcmeIdentifier>,
        replaces: Option<String>,
        source: Option<String>,
        now: OffsetDateTime,
    ) -> AcmeResult<AcmeOrder> {
        let (identifiers, names) = normalise_identifiers(identifiers)?;
        let refused = self.policy_subproblems(&account.team, issuer, &identifiers, &names);
        if !refused.is_empty() {
            let detail = format!(
                "team '{}' may not have {} from issuer '{}': {}",
                account.team,
                if refused.len() == 1 {
                    "this name"
                } else {
                    "these names"
                },
                issuer.name,
                refused
                    .iter()
                    .map(|s| s.detail.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            return Err(
                AcmeError::new(AcmeErrorKind::RejectedIdentifier, detail).with_subproblems(refused)
            );
        }
        if let Some(r) = &replaces {
            self.check_replaces(account, r, &identifiers).await?;
        }
        let mut authz_ids = Vec::with_capacity(identifiers.len());
        let mut new_authzs = Vec::new();
        let mut all_valid = true;
        for identifier in &identifiers {
            match self.reusable(account, identifier, now).await? {
                Some(a) => {
                    all_valid &= a.status == AuthzStatus::Valid;
                    authz_ids.push(a.id);
                }
                None => {
                    let a = new_authorization(
                        account.id,
                        identifier,
                        now + self.settings.authz_lifetime,
                        now,
                    )?;
                    all_valid = false;
                    authz_ids.push(a.id);
                    new_authzs.push(a);
                }
            }
        }
        let order = AcmeOrder {
            id: Uuid::now_v7(),
            account_id: account.id,
            issuer_id: issuer.id,
            status: if all_valid {
                OrderStatus::Ready
            } else {
                OrderStatus::Pending
            },
            identifiers,
            authorization_ids: authz_ids,
            expires: now + self.settings.order_lifetime,
            certificate_id: None,
            certificate_version: None,
            error: None,
            replaces,
            created_at: now,
            updated_at: now,
        };
        let event = audit(
            now,
            &account_actor(account.id, source),
            "acme.order.create",
            format!("acme-order/{}", order.id),
            json!({"account": account.id, "team": account.team, "issuer": issuer.name,
                   "identifiers": order.identifiers, "reused_authorizations":
                   order.authorization_ids.len() - new_authzs.len(), "replaces": order.replaces}),
        );
        self.store
            .create_order(&order, &new_authzs, self.settings.max_open_orders, &event)
            .await
            .map_err(|e| match e {
                DomainError::Conflict(why) => AcmeError::new(AcmeErrorKind::RateLimited, why),
                e => e.into(),
            })?;
        Ok(order)
    }

    async fn reusable(
        &self,
        account: &AcmeAccount,
        identifier: &AcmeIdentifier,
        now: OffsetDateTime,
    ) -> AcmeResult<Option<AcmeAuthorization>> {
        if self.settings.authz_reuse <= Duration::ZERO {
            return Ok(None);
        }
        let found = self
            .store
            .find_reusable_authorization(
                account.id,
                &identifier.authorization_identifier(),
                identifier.is_wildcard(),
                now,
            )
            .await?;
        Ok(found.filter(|a| a.created_at + self.settings.authz_reuse > now))
    }

    /// `replaces` must name a certificate this account ordered, sharing at
    /// least one identifier with the new order (RFC 9773 §5).
    async fn check_replaces(
        &self,
        account: &AcmeAccount,
        ari_id: &str,
        identifiers: &[AcmeIdentifier],
    ) -> AcmeResult<()> {
        let serial = keys::serial_of_ari_id(ari_id).ok_or_else(|| {
            AcmeError::malformed("replaces is not an RFC 9773 certificate identifier")
        })?;
        let origin = self
            .store
            .get_acme_certificate(&serial)
            .await?
            .filter(|o| o.account_id == account.id)
            .ok_or_else(|| {
                AcmeError::malformed("replaces names no certificate this account ordered")
            })?;
        let replaced = self.store.get_order(origin.order_id).await?;
        let shares =
            replaced.is_some_and(|o| o.identifiers.iter().any(|i| identifiers.contains(i)));
        if shares {
            Ok(())
        } else {
            Err(AcmeError::malformed(
                "replaces names a certificate that shares no identifier with this order",
            ))
        }
    }

    /// An order of the account, its status brought up to date (RFC 8555 §7.1.6).
    pub async fn order(
        &self,
        account: &AcmeAccount,
        id: Uuid,
        now: OffsetDateTime,
    ) -> AcmeResult<AcmeOrder> {
        let order = self
            .store
            .get_order(id)
            .await?
            .filter(|o| o.account_id == account.id)
            .ok_or_else(|| not_found("order", id))?;
        self.refresh(order, now).await
    }

    /// Moves a pending order to ready or invalid from its authorizations,
    /// and an unfinished expired one to invalid; a lost race re-reads.
    async fn refresh(&self, order: AcmeOrder, now: OffsetDateTime) -> AcmeResult<AcmeOrder> {
        let next = match order.status {
            OrderStatus::Pending | OrderStatus::Ready if order.expires <= now => Some((
                OrderStatus::Invalid,
                Some(problem(
                    "malformed",
                    "the order expired before it was finalized",
                )),
            )),
            OrderStatus::Pending => self.pending_verdict(&order, now).await?,
            _ => None,
        };
        let Some((status, error)) = next else {
            return Ok(order);
        };
        let updated = AcmeOrder {
            status,
            error,
            updated_at: now,
            ..order.clone()
        };
        match self.store.update_order(&updated, order.status, None).await {
            Ok(()) => Ok(updated),
            Err(DomainError::Conflict(_)) => self
                .store
                .get_order(order.id)
                .await?
                .ok_or_else(|| not_found("order", order.id)),
            Err(e) => Err(e.into()),
        }
    }

    async fn pending_verdict(
        &self,
        order: &AcmeOrder,
        now: OffsetDateTime,
    ) -> AcmeResult<Option<(OrderStatus, Option<serde_json::Value>)>> {
        let mut all_valid = true;
        let mut failed = Vec::new();
        for id in &order.authorization_ids {
            let Some(a) = self.store.get_authorization(*id).await? else {
                failed.push(
                    json!({"type": format!("{}malformed", certflow_core::acme::ACME_ERROR_PREFIX),
                                   "detail": format!("authorization {id} is gone")}),
                );
                continue;
            };
            match a.status_at(now) {
                AuthzStatus::Valid => {}
                AuthzStatus::Pending => all_valid = false,
                other => {
                    let cause = a
                        .challenges
                        .iter()
                        .find_map(|c| c.error.clone())
                        .unwrap_or_else(|| {
                            problem("unauthorized", &format!("authorization is {other}"))
                        });
                    let mut sub = cause;
                    if let Some(fields) = sub.as_object_mut() {
                        fields.insert("identifier".into(), json!(a.identifier));
                    }
                    failed.push(sub);
                }
            }
        }
        Ok(if !failed.is_empty() {
            let mut error = problem(
                "unauthorized",
                "an authorization of the order failed: see the subproblems",
            );
            error["status"] = json!(403);
            error["subproblems"] = json!(failed);
            Some((OrderStatus::Invalid, Some(error)))
        } else if all_valid {
            Some((OrderStatus::Ready, None))
        } else {
            None
        })
    }

    /// An authorization of the account, its status as of `now`.
    pub async fn authorization(
        &self,
        account: &AcmeAccount,
        id: Uuid,
        now: OffsetDateTime,
    ) -> AcmeResult<AcmeAuthorization> {
        let mut a = self
            .store
            .get_authorization(id)
            .await?
            .filter(|a| a.account_id == account.id)
            .ok_or_else(|| not_found("authorization", id))?;
        a.status = a.status_at(now);
        Ok(a)
    }

    /// Deactivates a pending or valid authorization (RFC 8555 §7.5.2).
    pub async fn deactivate_authorization(
        &self,
        account: &AcmeAccount,
        id: Uuid,
        source: Option<String>,
        now: OffsetDateTime,
    ) -> AcmeResult<AcmeAuthorization> {
        let a = self.authorization(account, id, now).await?;
        if !matches!(a.status, AuthzStatus::Pending | AuthzStatus::Valid) {
            return Err(AcmeError::malformed(format!(
                "authorization {id} is {} and cannot be deactivated",
                a.status
            )));
        }
        let event = audit(
            now,
            &account_actor(account.id, source),
            "acme.authorization.deactivate",
            format!("acme-authorization/{id}"),
            json!({"identifier": a.identifier}),
        );
        self.store
            .set_authorization_status(id, a.status, AuthzStatus::Deactivated, &event)
            .await?;
        Ok(AcmeAuthorization {
            status: AuthzStatus::Deactivated,
            ..a
        })
    }

    /// A challenge of the account, with its authorization.
    pub async fn challenge(
        &self,
        account: &AcmeAccount,
        id: Uuid,
        now: OffsetDateTime,
    ) -> AcmeResult<(AcmeChallenge, AcmeAuthorization)> {
        let c = self
            .store
            .get_challenge(id)
            .await?
            .ok_or_else(|| not_found("challenge", id))?;
        let a = self
            .authorization(account, c.authz_id, now)
            .await
            .map_err(|_| not_found("challenge", id))?;
        Ok((c, a))
    }

    /// The client says it is ready: the challenge becomes processing and a
    /// validation worker takes it (never this request). Idempotent.
    pub async fn respond_challenge(
        &self,
        account: &AcmeAccount,
        id: Uuid,
        source: Option<String>,
        now: OffsetDateTime,
    ) -> AcmeResult<(AcmeChallenge, AcmeAuthorization)> {
        let (c, a) = self.challenge(account, id, now).await?;
        if c.status == ChallengeStatus::Pending {
            if a.status != AuthzStatus::Pending {
                return Err(AcmeError::malformed(format!(
                    "the authorization of challenge {id} is {}",
                    a.status
                )));
            }
            let event = audit(
                now,
                &account_actor(account.id, source),
                "acme.challenge.respond",
                format!("acme-challenge/{id}"),
                json!({"type": c.kind.as_str(), "identifier": a.identifier}),
            );
            if !self.store.start_challenge(id, now, &event).await? {
                return Err(AcmeError::malformed(format!(
                    "another challenge of authorization {} is being validated",
                    a.id
                )));
            }
        }
        self.challenge(account, id, now).await
    }

    /// The validation task's body: claims up to `limit` due challenges,
    /// validates each through `validator`, and records the outcome: valid,
    /// a retry after a doubling backoff, or invalid after the last attempt.
    /// Returns the attempts made. Safe on any number of replicas.
    pub async fn run_due_validations(
        &self,
        validator: &dyn ChallengeValidator,
        limit: u32,
        now: OffsetDateTime,
    ) -> DomainResult<u32> {
        let claimed = self
            .store
            .claim_due_challenges(now, now + self.settings.validation_lease, limit)
            .await?;
        // Concurrently: each validation may wait out its network timeouts,
        // and one after another a batch would outlast its lease and be
        // claimed again by another worker.
        let made = u32::try_from(claimed.len()).unwrap_or(u32::MAX);
        futures::future::join_all(claimed.iter().map(|c| async move {
            if let Err(e) = self.validate_one(validator, c, now).await {
                tracing::warn!(challenge = %c.id, error = %e, "recording a validation failed");
            }
        }))
        .await;
        Ok(made)
    }

    async fn validate_one(
        &self,
        validator: &dyn ChallengeValidator,
        c: &AcmeChallenge,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let authz = self
            .store
            .get_authorization(c.authz_id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("authorization {}", c.authz_id)))?;
        let account = self
            .store
            .get_account(authz.account_id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("account {}", authz.account_id)))?;
        let key_auth = key_authorization(&c.token, &account.thumbprint);
        let result = if authz.status_at(now) != AuthzStatus::Pending {
            Err(certflow_core::acme::AcmeValidationError {
                problem_type: "unauthorized",
                detail: format!("the authorization is {}", authz.status_at(now)),
            })
        } else {
            validator
                .validate(c.kind, &authz.identifier, &c.token, &key_auth)
                .await
        };
        let (outcome, event_outcome) = match &result {
            Ok(()) => (ValidationOutcome::Valid, Outcome::Success),
            Err(e) if c.attempts < self.settings.validation_attempts => {
                let delay = self
                    .settings
                    .validation_backoff
                    .saturating_mul(1 << c.attempts.saturating_sub(1).min(8));
                (
                    ValidationOutcome::Retry {
                        next_attempt_at: now + delay,
                        error: problem(e.problem_type, &e.detail),
                    },
                    Outcome::Failure,
                )
            }
            Err(e) => (
                ValidationOutcome::Invalid {
                    error: problem(e.problem_type, &e.detail),
                },
                Outcome::Failure,
            ),
        };
        let mut event = audit(
            now,
            &Actor::system(),
            "acme.challenge.validate",
            format!("acme-challenge/{}", c.id),
            json!({"type": c.kind.as_str(), "identifier": authz.identifier,
                   "account": account.id, "attempt": c.attempts,
                   "result": match &outcome { ValidationOutcome::Valid => "valid",
                       ValidationOutcome::Retry { .. } => "retry", ValidationOutcome::Invalid { .. } => "invalid" },
                   "error": result.as_ref().err().map(|e| e.to_string())}),
        );
        event.outcome = event_outcome;
        self.store
            .finish_challenge(c.id, c.attempts, &outcome, now, &event)
            .await
    }

    /// Deletes expired nonces, orders and authorizations (maintenance task).
    pub async fn purge_expired(&self, now: OffsetDateTime) -> DomainResult<AcmePurge> {
        self.store
            .purge_expired_acme(now, now - self.settings.finished_order_retention)
            .await
    }
}

/// Contact URLs: `mailto:` only, one address each, no header fields.
fn check_contact(contact: &[String]) -> AcmeResult<()> {
    if contact.len() > 10 {
        return Err(AcmeError::new(
            AcmeErrorKind::InvalidContact,
            "at most 10 contact URLs are accepted",
        ));
    }
    for c in contact {
        let Some(address) = c.strip_prefix("mailto:") else {
            return Err(AcmeError::new(
                AcmeErrorKind::UnsupportedContact,
                format!("'{c}': only mailto: contact URLs are supported"),
            ));
        };
        if address.is_empty()
            || address.len() > 254
            || address.contains(['?', ',', ' '])
            || !address.contains('@')
            || address.chars().any(char::is_control)
        {
            return Err(AcmeError::new(
                AcmeErrorKind::InvalidContact,
                format!("'{c}' is not a single email address without header fields"),
            ));
        }
    }
    Ok(())
}

/// Identifiers in the form certflow certifies (lower-case A-labels, canonical
/// addresses), deduplicated in request order, with their subject names;
/// `rejectedIdentifier` with one subproblem per bad identifier otherwise.
fn normalise_identifiers(
    identifiers: Vec<AcmeIdentifier>,
) -> AcmeResult<(Vec<AcmeIdentifier>, Vec<SubjectName>)> {
    if identifiers.is_empty() || identifiers.len() > MAX_IDENTIFIERS {
        return Err(AcmeError::malformed(format!(
            "an order needs 1 to {MAX_IDENTIFIERS} identifiers"
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut names = Vec::new();
    let mut bad = Vec::new();
    for i in identifiers {
        let parsed = match parse_name(&i.value) {
            Ok(SubjectName::Dns(d)) if i.kind == IdentifierType::Dns => {
                if d.strip_prefix("*.").is_some_and(|rest| rest.contains('*')) {
                    Err("only one leftmost wildcard label is allowed".to_owned())
                } else {
                    Ok(SubjectName::Dns(d))
                }
            }
            Ok(SubjectName::Ip(a)) if i.kind == IdentifierType::Ip => Ok(SubjectName::Ip(a)),
            Ok(_) => Err(format!("is not a valid {} identifier", i.kind)),
            Err(e) => Err(e),
        };
        match parsed {
            Ok(name) => {
                let normal = AcmeIdentifier {
                    kind: i.kind,
                    value: name.to_text(),
                };
                if seen.insert(normal.clone()) {
                    out.push(normal);
                    names.push(name);
                }
            }
            Err(why) => bad.push(AcmeSubproblem {
                kind: AcmeErrorKind::RejectedIdentifier,
                detail: format!("'{}' {why}", i.value),
                identifier: Some(i),
            }),
        }
    }
    if !bad.is_empty() {
        let detail = bad
            .iter()
            .map(|s| s.detail.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(AcmeError::new(AcmeErrorKind::RejectedIdentifier, detail).with_subproblems(bad));
    }
    Ok((out, names))
}

/// A new pending authorization for `identifier` with its challenges: a
/// wildcard only through dns-01, an IP address not through dns-01 (RFC 8738).
fn new_authorization(
    account_id: Uuid,
    identifier: &AcmeIdentifier,
    expires: OffsetDateTime,
    now: OffsetDateTime,
) -> DomainResult<AcmeAuthorization> {
    let id = Uuid::now_v7();
    let kinds: &[ChallengeType] = match (identifier.kind, identifier.is_wildcard()) {
        (IdentifierType::Dns, true) => &[ChallengeType::Dns01],
        (IdentifierType::Dns, false) => &[
            ChallengeType::Http01,
            ChallengeType::Dns01,
            ChallengeType::TlsAlpn01,
        ],
        (IdentifierType::Ip, _) => &[ChallengeType::Http01, ChallengeType::TlsAlpn01],
    };
    let mut challenges = Vec::with_capacity(kinds.len());
    for kind in kinds {
        challenges.push(AcmeChallenge {
            id: Uuid::now_v7(),
            authz_id: id,
            kind: *kind,
            token: random_token()?,
            status: ChallengeStatus::Pending,
            attempts: 0,
            next_attempt_at: None,
            lease_until: None,
            error: None,
            validated_at: None,
        });
    }
    Ok(AcmeAuthorization {
        id,
        account_id,
        identifier: identifier.authorization_identifier(),
        wildcard: identifier.is_wildcard(),
        status: AuthzStatus::Pending,
        expires,
        challenges,
        created_at: now,
    })
}

/// PEM of a DER certificate signing request.
fn csr_pem(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    pem
}

impl AcmeService {
    /// finalize (RFC 8555 §7.4): the CSR's names must be the order's
    /// identifiers and its key not the account's; the certificate is issued
    /// through the normal path (policy, lint, audit, notifications) for the
    /// account's team, labelled `acme_account=<id>`. The order is valid on return.
    pub async fn finalize(
        &self,
        account: &AcmeAccount,
        order_id: Uuid,
        csr_der: &[u8],
        source: Option<String>,
        now: OffsetDateTime,
    ) -> AcmeResult<AcmeOrder> {
        let order = self.order(account, order_id, now).await?;
        if order.status != OrderStatus::Ready {
            return Err(AcmeError::new(
                AcmeErrorKind::OrderNotReady,
                format!("order {order_id} is {}, not ready", order.status),
            ));
        }
        let info = certflow_pki::parse_csr("csr", csr_der).map_err(|e| match e {
            DomainError::Invalid(_) => AcmeError::new(AcmeErrorKind::BadCsr, e.to_string()),
            e => e.into(),
        })?;
        check_csr_names(&order, &info)?;
        if keys::same_key(&account.jwk, &info.spki_der) {
            return Err(AcmeError::new(
                AcmeErrorKind::BadCsr,
                "the CSR's key is the account key: a certificate needs a key of its own",
            ));
        }
        let processing = AcmeOrder {
            status: OrderStatus::Processing,
            updated_at: now,
            ..order.clone()
        };
        self.store
            .update_order(&processing, OrderStatus::Ready, None)
            .await
            .map_err(|e| match e {
                DomainError::Conflict(_) => AcmeError::new(
                    AcmeErrorKind::OrderNotReady,
                    format!("order {order_id} is being finalized already"),
                ),
                e => e.into(),
            })?;
        let actor = account_actor(account.id, source);
        match self.issue(account, &order, &info, &actor, now).await {
            Ok((certificate_id, version)) => {
                let valid = AcmeOrder {
                    status: OrderStatus::Valid,
                    certificate_id: Some(certificate_id),
                    certificate_version: Some(version),
                    updated_at: now,
                    ..order
                };
                let event = audit(
                    now,
                    &actor,
                    "acme.order.finalize",
                    format!("acme-order/{order_id}"),
                    json!({"certificate": certificate_id, "version": version}),
                );
                self.store
                    .update_order(&valid, OrderStatus::Processing, Some(&event))
                    .await?;
                // The certificate is issued and the order valid whatever
                // happens here: a failure only leaves the old entry active.
                if let Err(e) = self
                    .supersede(account, &valid, certificate_id, &actor, now)
                    .await
                {
                    tracing::warn!(order = %order_id, error = %e,
                        "archiving the certificates this order replaces failed");
                }
                Ok(valid)
            }
            Err(e) => {
                let invalid = AcmeOrder {
                    status: OrderStatus::Invalid,
                    error: Some(e.to_problem()),
                    updated_at: now,
                    ..order
                };
                let mut event = audit(
                    now,
                    &actor,
                    "acme.order.finalize",
                    format!("acme-order/{order_id}"),
                    json!({"error": e.to_string()}),
                );
                event.outcome = Outcome::Failure;
                self.store
                    .update_order(&invalid, OrderStatus::Processing, Some(&event))
                    .await?;
                Err(e)
            }
        }
    }

    /// Archives what a new ACME certificate replaces, so the inventory keeps
    /// one active entry per client certificate and the old one raises no
    /// expiry notice: the certificate `replaces` names (RFC 9773), and, for
    /// clients that do not send it, the account's active certificates for
    /// exactly the same names. The client renews, so the inventory follows.
    async fn supersede(
        &self,
        account: &AcmeAccount,
        order: &AcmeOrder,
        new_id: Uuid,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let mut old = BTreeSet::new();
        if let Some(serial) = order.replaces.as_deref().and_then(keys::serial_of_ari_id)
            && let Some(origin) = self.store.get_acme_certificate(&serial).await?
            && origin.account_id == account.id
        {
            old.insert(origin.certificate_id);
        }
        let names: BTreeSet<String> = order.identifiers.iter().map(|i| i.value.clone()).collect();
        // Narrowed in the store by one of the names (a substring match),
        // so a finalize reads the few candidates, not the account's all.
        let query = certflow_core::model::CertificateQuery {
            search: names.iter().next().cloned(),
            team: Some(account.team.clone()),
            labels: [(ACME_ACCOUNT_LABEL.to_owned(), account.id.to_string())].into(),
            status: Some(certflow_core::model::CertificateStatus::Active),
            limit: 500,
            ..Default::default()
        };
        let page = self.services.list(&query).await?;
        for c in &page.items {
            let theirs: BTreeSet<String> = c.names.iter().map(ToString::to_string).collect();
            if theirs == names {
                old.insert(c.id);
            }
        }
        old.remove(&new_id);
        for id in old {
            match self.services.archive(actor, id, now).await {
                Ok(_) | Err(DomainError::Conflict(_)) => {
                    tracing::info!(certificate = %id, replacement = %new_id,
                        "ACME certificate archived: its client replaced it");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn issue(
        &self,
        account: &AcmeAccount,
        order: &AcmeOrder,
        info: &certflow_pki::CsrInfo,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> AcmeResult<(Uuid, u32)> {
        let first: String = order
            .identifiers
            .first()
            .map(|i| i.value.chars().take(180).collect())
            .unwrap_or_default();
        let req = CreateCertificateRequest {
            name: Some(format!("{first} (acme order {})", order.id)),
            names: order.identifiers.iter().map(|i| i.value.clone()).collect(),
            team: account.team.clone(),
            labels: [(ACME_ACCOUNT_LABEL.to_owned(), account.id.to_string())].into(),
            csr: Some(csr_pem(&info.der)),
            issuer_id: Some(order.issuer_id),
            ..Default::default()
        };
        let view = self
            .services
            .create_certificate_as(actor, &req, None, false, now)
            .await
            .map(|created| created.view)
            .map_err(|e| match e {
                DomainError::Invalid(fields) => {
                    let text = fields
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                    let kind = if fields.iter().any(|f| f.field.starts_with("names")) {
                        AcmeErrorKind::RejectedIdentifier
                    } else {
                        AcmeErrorKind::BadCsr
                    };
                    AcmeError::new(kind, text)
                }
                e => e.into(),
            })?;
        let version = view
            .versions
            .first()
            .ok_or_else(|| AcmeError::internal("the issued certificate has no version"))?;
        self.store
            .insert_acme_certificate(&AcmeCertificate {
                certificate_id: view.certificate.id,
                version: version.version,
                serial: version.serial.clone(),
                order_id: order.id,
                account_id: account.id,
                renew_now_at: None,
            })
            .await?;
        Ok((view.certificate.id, version.version))
    }

    /// The certificate of a valid order as a PEM chain (leaf first).
    pub async fn certificate_chain(
        &self,
        account: &AcmeAccount,
        order_id: Uuid,
    ) -> AcmeResult<String> {
        let order = self
            .store
            .get_order(order_id)
            .await?
            .filter(|o| o.account_id == account.id)
            .ok_or_else(|| not_found("certificate", order_id))?;
        let (Some(id), Some(version)) = (order.certificate_id, order.certificate_version) else {
            return Err(not_found("certificate", order_id));
        };
        Ok(self
            .services
            .download(id, Some(version), DownloadKind::FullChain)
            .await?)
    }

    /// revokeCert (RFC 8555 §7.6): by the account that ordered the
    /// certificate or by its key; `alreadyRevoked` the second time.
    pub async fn revoke(
        &self,
        by: RevokeBy<'_>,
        cert_der: &[u8],
        reason: Option<u8>,
        source: Option<String>,
        now: OffsetDateTime,
    ) -> AcmeResult<()> {
        let code = reason.unwrap_or(0);
        let reason = certflow_core::model::RevocationReason::ALL
            .into_iter()
            .find(|r| r.code() == code && r.applies_to_end_entity())
            .ok_or_else(|| {
                AcmeError::new(
                    AcmeErrorKind::BadRevocationReason,
                    format!(
                        "reason {code} is not a reason an end-entity certificate is revoked for"
                    ),
                )
            })?;
        let (serial, fingerprint) = keys::serial_and_fingerprint(cert_der)
            .ok_or_else(|| AcmeError::malformed("certificate is not a DER X.509 certificate"))?;
        let origin = self
            .store
            .get_acme_certificate(&serial)
            .await?
            .ok_or_else(|| {
                AcmeError::not_found("certflow issued no such certificate through ACME")
            })?;
        let view = self.services.certificate(origin.certificate_id).await?;
        let version = view
            .versions
            .iter()
            .find(|v| v.version == origin.version && v.fingerprint_sha256 == fingerprint)
            .ok_or_else(|| {
                AcmeError::not_found("certflow issued no such certificate through ACME")
            })?;
        let (actor, by_what) = match by {
            RevokeBy::Account(a) if a.id == origin.account_id => {
                (account_actor(a.id, source), "account")
            }
            RevokeBy::Account(a) => {
                return Err(AcmeError::unauthorized(format!(
                    "account {} did not order this certificate",
                    a.id
                )));
            }
            RevokeBy::CertificateKey => (
                Actor {
                    subject: format!("acme-certificate-key:{serial}"),
                    source,
                },
                "certificate key",
            ),
        };
        if version.revoked_at.is_some() {
            return Err(AcmeError::new(
                AcmeErrorKind::AlreadyRevoked,
                format!("certificate {serial} is already revoked"),
            ));
        }
        tracing::info!(serial = %serial, by = by_what, "ACME revocation");
        self.services
            .revoke(
                &actor,
                origin.certificate_id,
                Some(origin.version),
                reason.as_str(),
                now,
            )
            .await
            .map_err(|e| match e {
                DomainError::Conflict(why) if why.contains("revoked") => {
                    AcmeError::new(AcmeErrorKind::AlreadyRevoked, why)
                }
                e => e.into(),
            })?;
        Ok(())
    }

    /// renewalInfo (RFC 9773) of an ACME-issued certificate: the renewal
    /// policy's window, or a window ending at "renew now" once that was asked.
    pub async fn renewal_info(
        &self,
        ari_id: &str,
        _now: OffsetDateTime,
    ) -> AcmeResult<RenewalInfo> {
        let serial = keys::serial_of_ari_id(ari_id)
            .ok_or_else(|| AcmeError::malformed("not an RFC 9773 certificate identifier"))?;
        let origin = self
            .store
            .get_acme_certificate(&serial)
            .await?
            .ok_or_else(|| {
                AcmeError::not_found("certflow issued no such certificate through ACME")
            })?;
        let view = self.services.certificate(origin.certificate_id).await?;
        let version = view
            .versions
            .iter()
            .find(|v| v.version == origin.version)
            .ok_or_else(|| {
                AcmeError::not_found("certflow issued no such certificate through ACME")
            })?;
        let window = match (origin.renew_now_at, version.revoked_at) {
            // Ending at the moment asked: every time a client picks in it is past.
            (Some(at), _) | (None, Some(at)) => SuggestedWindow {
                start: at - Duration::minutes(1),
                end: at,
            },
            (None, None) => {
                let w = view
                    .certificate
                    .renewal
                    .window(version.not_before, version.not_after);
                SuggestedWindow {
                    start: w.start,
                    end: w.end,
                }
            }
        };
        Ok(RenewalInfo {
            window,
            retry_after_secs: 6 * 3600,
        })
    }

    /// "Renew now" on an ACME certificate: its renewal window moves to
    /// `now`, so a client polling renewal information renews on its next
    /// run. `false` if the certificate was not issued through ACME.
    pub async fn renew_now(
        &self,
        actor: &Actor,
        certificate_id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<bool> {
        let event = audit(
            now,
            actor,
            "acme.certificate.renew-now",
            format!("certificate/{certificate_id}"),
            json!({}),
        );
        Ok(self
            .store
            .set_renew_now(certificate_id, now, &event)
            .await?
            > 0)
    }

    /// Creates an EAB key for `team`; its HMAC key is returned this once and
    /// stored sealed.
    pub async fn create_eab_key(
        &self,
        actor: &Actor,
        team: &str,
        now: OffsetDateTime,
    ) -> DomainResult<CreatedEabKey> {
        let mut errors = Vec::new();
        crate::validate::team(&mut errors, team);
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors));
        }
        // Hex, so that no key id starts with '-' on a command line.
        let key_id = hex::encode(random(16)?.as_slice());
        let hmac = random(32)?;
        let sealed = self
            .services
            .sealer
            .seal(hmac.as_slice(), &eab_context(&key_id))
            .await?;
        let key = EabKey {
            key_id: key_id.clone(),
            team: team.to_owned(),
            hmac_sealed: B64.encode(sealed),
            created_by: actor.subject.clone(),
            created_at: now,
            expires_at: now + self.settings.eab_key_lifetime,
            revoked_at: None,
            account_id: None,
        };
        let event = audit(
            now,
            actor,
            "acme.eab-key.create",
            format!("acme-eab-key/{key_id}"),
            json!({"team": team, "expires_at": key.expires_at.unix_timestamp()}),
        );
        self.store.insert_eab_key(&key, &event).await?;
        Ok(CreatedEabKey {
            key,
            hmac_key: B64URL.encode(hmac.as_slice()),
        })
    }

    /// EAB keys of `teams` (all when `None`), newest first; no secrets.
    pub async fn list_eab_keys(&self, teams: Option<&[String]>) -> DomainResult<Vec<EabKey>> {
        self.store.list_eab_keys(teams, 500).await
    }

    /// One EAB key (for permission checks before revoking).
    pub async fn get_eab_key(&self, key_id: &str) -> DomainResult<EabKey> {
        self.store
            .get_eab_key(key_id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("EAB key {key_id}")))
    }

    /// Revokes an EAB key: it binds no account from now on (an account bound
    /// already stays).
    pub async fn revoke_eab_key(
        &self,
        actor: &Actor,
        key_id: &str,
        now: OffsetDateTime,
    ) -> DomainResult<EabKey> {
        let event = audit(
            now,
            actor,
            "acme.eab-key.revoke",
            format!("acme-eab-key/{key_id}"),
            json!({}),
        );
        self.store.revoke_eab_key(key_id, now, &event).await
    }
}

/// The CSR's dNSName/iPAddress SANs (and commonName, if any) must be exactly
/// the order's identifiers (RFC 8555 §7.4).
fn check_csr_names(order: &AcmeOrder, info: &certflow_pki::CsrInfo) -> AcmeResult<()> {
    let mut raw = info.names.clone();
    raw.extend(info.common_name.iter().cloned());
    let mut csr = BTreeSet::new();
    for r in &raw {
        match parse_name(r) {
            Ok(n) => {
                csr.insert(n.to_text());
            }
            Err(e) => {
                return Err(AcmeError::new(
                    AcmeErrorKind::BadCsr,
                    format!("CSR name '{r}': {e}"),
                ));
            }
        }
    }
    let ordered: BTreeSet<String> = order.identifiers.iter().map(|i| i.value.clone()).collect();
    if csr != ordered {
        return Err(AcmeError::new(
            AcmeErrorKind::BadCsr,
            format!(
                "the CSR names {} but the order's identifiers are {}",
                csr.into_iter().collect::<Vec<_>>().join(", "),
                ordered.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(())
}
