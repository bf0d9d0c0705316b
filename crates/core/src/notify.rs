//! Notifications: what happened to a certificate, who subscribed to hear
//! about it, and the record of every attempt to tell them. Users of other CLMs
//! complain most that expiry mail fails silently; here every attempt and its
//! failure reason is stored and visible.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Expiry warnings go out this many days before `not_after`, once per version each.
pub const EXPIRY_THRESHOLDS_DAYS: [u32; 4] = [30, 14, 7, 1];

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// First version issued.
    Issued,
    /// A new version replaced the previous one.
    Renewed,
    /// A renewal attempt failed; it will be retried.
    RenewalFailing,
    /// Renewal gave up after its maximum attempts.
    DeadLettered,
    /// The current version expires within a threshold.
    Expiring,
    /// A version was revoked.
    Revoked,
    /// Daily summary of what expires soon (per team).
    Digest,
    /// An agent reported that installing a version failed.
    DeploymentFailed,
    /// A new version was not reported installed by an agent in time.
    DeploymentDrift,
    /// Issuance was refused: a renewal against an issuance policy tightened
    /// since the certificate was issued, or a certificate that failed
    /// pre-issuance linting. Not retried: someone must act.
    PolicyViolation,
    /// The current version has less time left than a renewal is expected to
    /// take and no new version is stored yet, whatever the cause (no live
    /// worker, the CA down, a job stuck): it is about to expire.
    RenewalAtRisk,
}

impl EventKind {
    /// Every kind, for validation and listings.
    pub const ALL: [EventKind; 11] = [
        EventKind::Issued,
        EventKind::Renewed,
        EventKind::RenewalFailing,
        EventKind::DeadLettered,
        EventKind::Expiring,
        EventKind::Revoked,
        EventKind::Digest,
        EventKind::DeploymentFailed,
        EventKind::DeploymentDrift,
        EventKind::PolicyViolation,
        EventKind::RenewalAtRisk,
    ];

    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Issued => "issued",
            EventKind::Renewed => "renewed",
            EventKind::RenewalFailing => "renewal-failing",
            EventKind::DeadLettered => "dead-lettered",
            EventKind::Expiring => "expiring",
            EventKind::Revoked => "revoked",
            EventKind::Digest => "digest",
            EventKind::DeploymentFailed => "deployment-failed",
            EventKind::DeploymentDrift => "deployment-drift",
            EventKind::PolicyViolation => "policy-violation",
            EventKind::RenewalAtRisk => "renewal-at-risk",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event to tell subscribers about. Never carries key material.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable identifier (UUIDv7); receivers can de-duplicate on it.
    pub id: Uuid,
    /// What happened.
    pub kind: EventKind,
    /// Owning team (subscriptions match on it).
    pub team: String,
    /// The certificate, if the event is about one (digests are not).
    pub certificate_id: Option<Uuid>,
    /// Its name.
    pub certificate_name: Option<String>,
    /// The version concerned.
    pub version: Option<u32>,
    /// Its expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// Whole days left, for expiry warnings.
    pub days_left: Option<u32>,
    /// Failure reason (renewal failing, dead-lettered).
    pub reason: Option<String>,
    /// Human summary, one line.
    pub summary: String,
    /// Extra structured data (digest entries, serials).
    pub details: serde_json::Value,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl Notification {
    /// An event of `kind` about `version` of `cert`, dated `now`: summary,
    /// reason and details empty, for the caller to fill in.
    pub fn about(
        kind: EventKind,
        cert: &crate::model::Certificate,
        version: u32,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind,
            team: cert.team.clone(),
            certificate_id: Some(cert.id),
            certificate_name: Some(cert.name.clone()),
            version: Some(version),
            not_after: Some(cert.not_after),
            days_left: None,
            reason: None,
            summary: String::new(),
            details: serde_json::Value::Null,
            at: now,
        }
    }
}

/// Body format of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookFormat {
    /// The [`Notification`] as JSON.
    Json,
    /// A Slack incoming-webhook message (`{"text": ...}`).
    Slack,
}

/// A webhook's HMAC key: in clear as a request brings it and as the notifier
/// signs with it, sealed (envelope encryption under the master key) wherever
/// it is stored. It is serialised as a string in clear and as
/// `{"sealed": "<base64 envelope>"}` sealed, so rows written before secrets
/// were sealed still read (and are sealed in place at start). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum WebhookSecret {
    /// The key itself.
    Plain(String),
    /// The key's envelope (base64), bound to its subscription.
    Sealed(String),
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WebhookSecret::Plain(_) => "WebhookSecret::Plain(..)",
            WebhookSecret::Sealed(_) => "WebhookSecret::Sealed(..)",
        })
    }
}

impl Serialize for WebhookSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            WebhookSecret::Plain(text) => s.serialize_str(text),
            WebhookSecret::Sealed(envelope) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("sealed", envelope)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for WebhookSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WebhookSecret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WebhookSecret::Plain(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                let mut sealed = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "sealed" if sealed.is_none() => sealed = Some(map.next_value()?),
                        other => return Err(A::Error::unknown_field(other, &["sealed"])),
                    }
                }
                sealed
                    .map(WebhookSecret::Sealed)
                    .ok_or_else(|| A::Error::missing_field("sealed"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Where to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Channel {
    /// HTTP POST, signed with HMAC-SHA256 when a secret is set.
    Webhook {
        /// Target URL (http or https).
        url: String,
        /// HMAC key; write-only through the API, sealed at rest.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<WebhookSecret>,
        /// Body format.
        format: WebhookFormat,
    },
    /// Amazon SNS topic.
    Sns {
        /// Topic ARN.
        topic_arn: String,
    },
    /// Email over SMTP (server configured globally).
    Email {
        /// Recipients.
        to: Vec<String>,
    },
}

impl Channel {
    /// Stable identifier of the channel type.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Webhook { .. } => "webhook",
            Channel::Sns { .. } => "sns",
            Channel::Email { .. } => "email",
        }
    }
}

/// A team's wish to hear about some kinds of events on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// Stable identifier.
    pub id: Uuid,
    /// Team whose certificates it covers.
    pub team: String,
    /// Event kinds it wants (non-empty).
    pub events: Vec<EventKind>,
    /// Where to deliver.
    pub channel: Channel,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// A webhook channel as the store holds it, for sealing its secret in place.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChannel {
    /// The subscription it belongs to (the secret's envelope is bound to it).
    pub subscription_id: Uuid,
    /// The channel.
    pub channel: Channel,
    /// Its stored text, compared when it is replaced.
    pub stored: String,
}

/// State of one delivery (one notification to one subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not yet delivered; will be (re)tried at `next_attempt_at`.
    Pending,
    /// The channel accepted it.
    Delivered,
    /// Gave up after the maximum attempts.
    Failed,
    /// Not attempted again: its subscription was deleted while it was pending.
    Cancelled,
}

impl DeliveryState {
    /// Every state, for validation and listings.
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Cancelled,
    ];

    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Cancelled => "cancelled",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One notification on its way to one subscription, with its attempt history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Stable identifier.
    pub id: Uuid,
    /// The notification.
    pub notification: Notification,
    /// The subscription (its channel as it was when the delivery was created).
    pub subscription_id: Uuid,
    /// The channel.
    pub channel: Channel,
    /// State.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: u32,
    /// Next try, while pending.
    pub next_attempt_at: OffsetDateTime,
    /// Last failure reason.
    pub last_error: Option<String>,
    /// When the channel accepted it.
    pub delivered_at: Option<OffsetDateTime>,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// One attempt to deliver, kept for the API and for post-mortems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// The delivery.
    pub delivery_id: Uuid,
    /// 1-based attempt number.
    pub attempt: u32,
    /// When.
    pub at: OffsetDateTime,
    /// Error, or `None` on success.
    pub error: Option<String>,
}

/// Filters for listing deliveries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryQuery {
    /// Only this team's.
    pub team: Option<String>,
    /// Only about this certificate.
    pub certificate_id: Option<Uuid>,
    /// Only in this state.
    pub state: Option<DeliveryState>,
    /// Page size (clamped by the store).
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}

/// Delivers a notification on one channel type.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Channel type this notifier serves (`webhook`, `sns`, `email`).
    fn kind(&self) -> &'static str;
    /// Delivers `notification` to `channel`; the error is the reason shown to users
    /// (no secrets in it).
    async fn deliver(&self, channel: &Channel, notification: &Notification) -> Result<(), String>;
}

/// Opens sealed webhook secrets just before delivery (the server's envelope
/// encryption; the notifier never sees a sealed secret).
#[async_trait]
pub trait SecretOpener: Send + Sync {
    /// The secret of subscription `subscription_id`, from its envelope.
    async fn open(&self, subscription_id: Uuid, envelope: &str) -> crate::DomainResult<String>;
}
