//! Notification subscriptions (per team and event kind) and the record of
//! their deliveries, for the API.

use certflow_api::CreateSubscriptionRequest;
use certflow_core::model::{Actor, AuditEvent, Page};
use certflow_core::notify::{
    Channel, Delivery, DeliveryAttempt, DeliveryQuery, EventKind, Subscription, WebhookFormat,
};
use certflow_core::ports::NotificationStore;
use certflow_core::{DomainError, FieldError, error::DomainResult};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Services, validate};

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
                check_channel(&mut errors, &c);
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
        let sub = Subscription {
            id: Uuid::now_v7(),
            team: req.team.clone(),
            events,
            channel,
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

    /// Removes a subscription.
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

fn check_channel(errors: &mut Vec<FieldError>, channel: &Channel) {
    match channel {
        Channel::Webhook { url, secret, .. } => {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
                errors.push(FieldError::new(
                    "channel.url",
                    "must be an http(s) URL of at most 2048 characters",
                ));
            }
            if secret
                .as_ref()
                .is_some_and(|s| s.len() < 16 || s.len() > 256)
            {
                errors.push(FieldError::new(
                    "channel.secret",
                    "must be 16-256 characters",
                ));
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
