//! Notification subscriptions (per team and event kind) and the record of
//! their deliveries, for the API; webhook secrets sealed at rest.
//!
//! A webhook's HMAC secret is sealed like a private key (envelope encryption
//! under the master key, bound to its subscription) before the subscription
//! is stored; deliveries copy the sealed channel, and the dispatcher opens it
//! just before signing ([`SealedSecrets`]). Rows written before secrets were
//! sealed are sealed in place at start ([`Services::seal_webhook_secrets`]),
//! and `keys rewrap` re-seals them after a master-key rotation.

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use certflow_api::CreateSubscriptionRequest;
use certflow_core::model::{Actor, AuditEvent, Page};
use certflow_core::notify::{
    Channel, Delivery, DeliveryAttempt, DeliveryQuery, EventKind, SecretOpener, Subscription,
    WebhookFormat, WebhookSecret,
};
use certflow_core::outbound::OutboundPolicy;
use certflow_core::ports::NotificationStore;
use certflow_core::{DomainError, FieldError, error::DomainResult};
use certflow_seal::{EncryptionContext, Sealer};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{DEFAULT_TENANT, Services, validate};

/// What sealing stored webhook secrets did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WebhookSecretReport {
    /// Distinct stored channels whose secret was in clear, now sealed.
    pub sealed: usize,
    /// Rows (subscriptions and deliveries) rewritten.
    pub rows: u64,
}

/// The encryption context of subscription `id`'s webhook secret: an envelope
/// copied to another subscription does not open.
fn secret_context(id: Uuid) -> EncryptionContext {
    EncryptionContext::new(
        DEFAULT_TENANT,
        "webhook-secret",
        &format!("subscription/{id}"),
        0,
    )
}

async fn seal_secret(sealer: &Sealer, id: Uuid, plain: &str) -> DomainResult<WebhookSecret> {
    let envelope = sealer.seal(plain.as_bytes(), &secret_context(id)).await?;
    Ok(WebhookSecret::Sealed(B64.encode(envelope)))
}

fn envelope_bytes(envelope: &str) -> DomainResult<Vec<u8>> {
    B64.decode(envelope.as_bytes())
        .map_err(|_| DomainError::Integrity("webhook secret envelope is not base64".into()))
}

/// `channel` with its secret sealed for subscription `id` (unchanged if it
/// has none or it is sealed already).
async fn sealed_channel(sealer: &Sealer, id: Uuid, channel: Channel) -> DomainResult<Channel> {
    match channel {
        Channel::Webhook {
            url,
            secret: Some(WebhookSecret::Plain(plain)),
            format,
        } => Ok(Channel::Webhook {
            url,
            secret: Some(seal_secret(sealer, id, &plain).await?),
            format,
        }),
        other => Ok(other),
    }
}

/// Opens webhook secrets sealed by [`Services::create_subscription`], for the
/// dispatcher.
#[derive(Debug, Clone)]
pub struct SealedSecrets {
    sealer: Sealer,
}

impl SealedSecrets {
    /// An opener over the server's sealer.
    pub fn new(sealer: Sealer) -> Self {
        Self { sealer }
    }
}

#[async_trait]
impl SecretOpener for SealedSecrets {
    async fn open(&self, subscription_id: Uuid, envelope: &str) -> DomainResult<String> {
        let plain = self
            .sealer
            .open(&envelope_bytes(envelope)?, &secret_context(subscription_id))
            .await?;
        String::from_utf8(plain.to_vec())
            .map_err(|_| DomainError::Integrity("webhook secret is not UTF-8".into()))
    }
}

impl Services {
    fn notification_store(&self) -> DomainResult<&dyn NotificationStore> {
        self.notifications.as_deref().ok_or_else(|| {
            DomainError::Conflict(
                "notifications are disabled on this server ([notifications] enabled = false)"
                    .into(),
            )
        })
    }

    /// Subscribes a team to some event kinds on one channel.
    pub async fn create_subscription(
        &self,
        actor: &Actor,
        req: &CreateSubscriptionRequest,
        now: OffsetDateTime,
    ) -> DomainResult<Subscription> {
        let store = self.notification_store()?;
        let mut errors = Vec::new();
        validate::team(&mut errors, &req.team);
        let mut events = Vec::new();
        if req.events.is_empty() {
            errors.push(FieldError::new(
                "events",
                "at least one event kind is required",
            ));
        }
        for (i, e) in req.events.iter().enumerate() {
            match EventKind::parse(e) {
                Some(k) if !events.contains(&k) => events.push(k),
                Some(_) => {}
                None => {
                    let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    errors.push(FieldError::new(
                        format!("events[{i}]"),
                        format!("unknown event '{e}'; one of {}", all.join(", ")),
                    ));
                }
            }
        }
        let channel = match serde_json::from_value::<Channel>(req.channel.clone()) {
            Ok(c) => {
                check_channel(&mut errors, &c, &self.outbound);
                Some(c)
            }
            Err(e) => {
                errors.push(FieldError::new(
                    "channel",
                    format!("{e}; expected {{\"type\":\"webhook\",\"url\":..}}, {{\"type\":\"sns\",\"topic_arn\":..}} or {{\"type\":\"email\",\"to\":[..]}}"),
                ));
                None
            }
        };
        let (true, Some(channel)) = (errors.is_empty(), channel) else {
            return Err(DomainError::Invalid(errors));
        };
        let id = Uuid::now_v7();
        let sub = Subscription {
            id,
            team: req.team.clone(),
            events,
            channel: sealed_channel(&self.sealer, id, channel).await?,
            created_at: now,
        };
        let audit = AuditEvent::success(
            now,
            actor,
            "subscription.create",
            format!("subscription/{}", sub.id),
            // The channel without its secret.
            json!({ "team": sub.team, "events": req.events, "channel": redacted(&sub.channel) }),
        );
        store.insert_subscription(&sub, &audit).await?;
        Ok(sub)
    }

    /// Subscriptions, optionally of one team.
    pub async fn subscriptions(&self, team: Option<&str>) -> DomainResult<Vec<Subscription>> {
        self.notification_store()?.list_subscriptions(team).await
    }

    /// Removes a subscription and cancels its pending deliveries.
    pub async fn delete_subscription(
        &self,
        actor: &Actor,
        id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let audit = AuditEvent::success(
            now,
            actor,
            "subscription.delete",
            format!("subscription/{id}"),
            json!({}),
        );
        self.notification_store()?
            .delete_subscription(id, &audit)
            .await
    }

    /// The opener of the webhook secrets this server seals, for the dispatcher.
    pub fn secret_opener(&self) -> SealedSecrets {
        SealedSecrets::new(self.sealer.clone())
    }

    /// Seals every stored webhook secret still in clear (rows written before
    /// secrets were sealed), in subscriptions and their deliveries. Run at
    /// start; safe on several replicas at once (a row changed meanwhile is
    /// left to the replica that changed it).
    pub async fn seal_webhook_secrets(
        &self,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> DomainResult<WebhookSecretReport> {
        let mut report = WebhookSecretReport::default();
        let Some(store) = self.notifications.as_deref() else {
            return Ok(report);
        };
        for stored in store.channels_with_secrets(false).await? {
            let channel =
                sealed_channel(&self.sealer, stored.subscription_id, stored.channel).await?;
            report.rows += store
                .replace_channel(stored.subscription_id, &stored.stored, &channel)
                .await?;
            report.sealed += 1;
        }
        if report.sealed > 0 {
            self.store
                .append_audit(&AuditEvent::success(
                    now,
                    actor,
                    "webhook-secrets.seal",
                    "subscriptions",
                    json!({ "channels": report.sealed, "rows": report.rows, "master_key": self.sealer.current_key_id() }),
                ))
                .await?;
        }
        Ok(report)
    }

    /// Re-seals stored webhook secrets not sealed under the current master
    /// key; returns (secrets found, secrets re-sealed). Part of `keys rewrap`.
    pub(crate) async fn rewrap_webhook_secrets(&self) -> DomainResult<(usize, usize)> {
        let Some(store) = self.notifications.as_deref() else {
            return Ok((0, 0));
        };
        let (mut found, mut rewrapped) = (0, 0);
        for stored in store.channels_with_secrets(true).await? {
            let Channel::Webhook {
                url,
                secret: Some(WebhookSecret::Sealed(envelope)),
                format,
            } = stored.channel
            else {
                continue;
            };
            found += 1;
            let bytes = envelope_bytes(&envelope)?;
            if Sealer::key_id_of(&bytes)? == self.sealer.current_key_id() {
                continue;
            }
            let context = secret_context(stored.subscription_id);
            let plain = self.sealer.open(&bytes, &context).await.map_err(|e| {
                DomainError::Integrity(format!(
                    "cannot open the webhook secret of subscription {} for re-wrapping: {e}",
                    stored.subscription_id
                ))
            })?;
            let resealed = B64.encode(self.sealer.seal(&plain, &context).await?);
            let channel = Channel::Webhook {
                url,
                secret: Some(WebhookSecret::Sealed(resealed)),
                format,
            };
            store
                .replace_channel(stored.subscription_id, &stored.stored, &channel)
                .await?;
            rewrapped += 1;
        }
        Ok((found, rewrapped))
    }

    /// Deliveries, newest first.
    pub async fn deliveries(&self, query: &DeliveryQuery) -> DomainResult<Page<Delivery>> {
        self.notification_store()?.list_deliveries(query).await
    }

    /// Attempts of one delivery.
    pub async fn delivery_attempts(&self, id: Uuid) -> DomainResult<Vec<DeliveryAttempt>> {
        self.notification_store()?.list_attempts(id).await
    }
}

/// A channel as shown to users: the webhook secret replaced by whether one is set.
pub fn redacted(channel: &Channel) -> serde_json::Value {
    match channel {
        Channel::Webhook {
            url,
            secret,
            format,
        } => {
            json!({ "type": "webhook", "url": url, "format": match format { WebhookFormat::Json => "json", WebhookFormat::Slack => "slack" }, "signed": secret.is_some() })
        }
        other => serde_json::to_value(other).unwrap_or_default(),
    }
}

/// A webhook URL: http(s), parseable, and not naming an address the outbound
/// policy refuses (names are checked again, address by address, at delivery).
fn check_webhook_url(errors: &mut Vec<FieldError>, url: &str, outbound: &OutboundPolicy) {
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
        errors.push(FieldError::new(
            "channel.url",
            "must be an http(s) URL of at most 2048 characters",
        ));
        return;
    }
    let host = match url::Url::parse(url) {
        Ok(parsed) => parsed.host_str().map(str::to_owned),
        Err(e) => {
            errors.push(FieldError::new(
                "channel.url",
                format!("is not a valid URL: {e}"),
            ));
            return;
        }
    };
    match host.map(|h| outbound.check_literal(&h)) {
        None => errors.push(FieldError::new("channel.url", "has no host")),
        Some(Err(refusal)) => errors.push(FieldError::new(
            "channel.url",
            format!("{refusal} (an administrator can allow it in [outbound] allow)"),
        )),
        Some(Ok(())) => {}
    }
}

fn check_channel(errors: &mut Vec<FieldError>, channel: &Channel, outbound: &OutboundPolicy) {
    match channel {
        Channel::Webhook { url, secret, .. } => {
            check_webhook_url(errors, url, outbound);
            match secret {
                Some(WebhookSecret::Plain(s)) if s.len() < 16 || s.len() > 256 => errors.push(
                    FieldError::new("channel.secret", "must be 16-256 characters"),
                ),
                Some(WebhookSecret::Sealed(_)) => errors.push(FieldError::new(
                    "channel.secret",
                    "must be a string of 16-256 characters",
                )),
                _ => {}
            }
        }
        Channel::Sns { topic_arn } => {
            if !topic_arn.starts_with("arn:") || topic_arn.split(':').count() < 6 {
                errors.push(FieldError::new(
                    "channel.topic_arn",
                    "must be an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>)",
                ));
            }
        }
        Channel::Email { to } => {
            if to.is_empty() || to.len() > 50 {
                errors.push(FieldError::new("channel.to", "must list 1-50 addresses"));
            }
            for (i, a) in to.iter().enumerate() {
                let ok = a.len() <= 254
                    && a.split_once('@')
                        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
                    && !a
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
                if !ok {
                    errors.push(FieldError::new(
                        format!("channel.to[{i}]"),
                        "is not an email address",
                    ));
                }
            }
        }
    }
}
