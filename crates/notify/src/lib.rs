//! certflow notifications: channel notifiers, the delivery [`Dispatcher`] and
//! the [`ExpiryWatcher`].
//!
//! Events are recorded through [`certflow_core::ports::NotificationStore::publish`]
//! (one pending delivery per matching subscription); the dispatcher claims due
//! deliveries, hands each to the [`certflow_core::notify::Notifier`] of its
//! channel type, and records every attempt with its error, retrying with
//! capped exponential backoff until it gives up.
//!
//! | channel | notifier | what is sent |
//! | --- | --- | --- |
//! | `webhook` | [`WebhookNotifier`] | `POST` of the [`Notification`](certflow_core::notify::Notification) JSON, or `{"text": "..."}` for Slack |
//! | `sns` | [`SnsNotifier`] | `Publish` of the notification JSON, subject `[certflow] ...`, attributes `certflow.event` and `certflow.team` |
//! | `email` | [`EmailNotifier`] | plain-text mail over SMTP, subject `[certflow] api.example.com renewal failing` |
//!
//! # Webhook headers and signature verification
//!
//! Every webhook request carries `Content-Type: application/json`,
//! `X-Certflow-Notification: <notification id>` (identical on retries: de-duplicate
//! on it) and `X-Certflow-Event: <event kind>`. When the channel has a secret it
//! also carries
//!
//! ```text
//! X-Certflow-Timestamp: <unix seconds when signed>
//! X-Certflow-Signature: sha256=<lower-case hex of HMAC-SHA256(secret, "<timestamp>.<raw body>")>
//! ```
//!
//! To verify, a receiver:
//! 1. reads the raw body bytes (before any JSON parsing);
//! 2. computes `HMAC-SHA256(key = secret, message = timestamp + "." + body)` and
//!    hex-encodes it;
//! 3. compares `"sha256=" + hex` with the header in constant time;
//! 4. rejects timestamps more than a few minutes from its own clock (replays).
//!
//! In Python:
//!
//! ```python
//! mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
//! ok = hmac.compare_digest("sha256=" + mac, sig) and abs(time.time() - int(ts)) < 300
//! ```
//!
//! [`signature`] computes the same value. Redirects are not followed; any status
//! outside 2xx is a failed attempt whose reason shows the status, never the
//! body. Webhook URLs are under the outbound policy (`certflow-outbound`):
//! an address that is loopback, private, link-local... is refused unless an
//! administrator allow-lists it. The secret is stored sealed; the dispatcher
//! opens it ([`Dispatcher::with_secrets`]) just before signing.

mod dispatcher;
mod email;
mod expiry;
mod sns;
pub mod text;
mod webhook;

pub use dispatcher::{
    CHANNEL_KINDS, ChannelCounts, DispatchMetrics, DispatchReport, Dispatcher, DispatcherSettings,
    Notifiers,
};
pub use email::{EmailNotifier, SmtpSettings, SmtpTls};
pub use expiry::{ExpiryReport, ExpirySettings, ExpiryWatcher, crossed_threshold, expiring_key};
pub use sns::{ATTRIBUTE_EVENT, ATTRIBUTE_TEAM, SnsNotifier};
pub use webhook::{
    HEADER_EVENT, HEADER_NOTIFICATION, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookNotifier,
    WebhookSettings, render, signature,
};

/// A notifier could not be set up from its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("notification setup: {0}")]
pub struct SetupError(pub String);
