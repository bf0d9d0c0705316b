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

/// Body format of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookFormat {
    /// The [`Notification`] as JSON.
    Json,
    /// A Slack incoming-webhook message (`{"text": ...}`).
    Slack,
}

/// Where to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Channel {
    /// HTTP POST, signed with HMAC-SHA256 when a secret is set.
    Webhook {
        /// Target URL (http or https).
        url: String,
        /// HMAC key; write-only through the API.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
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
}

impl DeliveryState {
    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|v| v.as_str() == s)
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
