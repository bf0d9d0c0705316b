//! HTTP webhooks: the notification as JSON (or a Slack message), signed with
//! HMAC-SHA256 when the channel has a secret. See the crate docs for the
//! receiver's verification recipe.
//!
//! The URL is a team operator's choice, so every request goes through
//! `certflow-outbound`: only addresses the outbound policy allows are
//! connected to, no redirect is followed, and a failure is reported by class
//! (status code, "connection refused", the policy's refusal), never with the
//! receiver's body.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::hmac;
use certflow_core::notify::{Channel, Notification, Notifier, WebhookFormat, WebhookSecret};
use certflow_core::outbound::OutboundPolicy;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::SetupError;
use crate::text::{error_chain, one_line};

/// Unix seconds at signing time; part of the signed string.
pub const HEADER_TIMESTAMP: &str = "X-Certflow-Timestamp";
/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const HEADER_SIGNATURE: &str = "X-Certflow-Signature";
/// The notification id (UUIDv7): receivers de-duplicate retries on it.
pub const HEADER_NOTIFICATION: &str = "X-Certflow-Notification";
/// The event kind (`expiring`, `renewal-failing`, ...).
pub const HEADER_EVENT: &str = "X-Certflow-Event";

/// Webhook client settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Whole-request timeout, seconds.
    pub timeout_secs: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self { timeout_secs: 10 }
    }
}

/// Delivers [`Channel::Webhook`] notifications.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    client: reqwest::Client,
    policy: Arc<OutboundPolicy>,
}

impl WebhookNotifier {
    /// A notifier with its own HTTP client under `policy` (rustls, names
    /// resolved and checked by the policy, no redirects, no proxy).
    pub fn new(
        settings: &WebhookSettings,
        policy: Arc<OutboundPolicy>,
    ) -> Result<Self, SetupError> {
        let client = certflow_outbound::client_builder(Arc::clone(&policy))
            .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(settings.timeout_secs.clamp(1, 5)))
            .user_agent(concat!("certflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError(format!("webhook client: {}", error_chain(&e))))?;
        Ok(Self { client, policy })
    }
}

/// `sha256=<hex>` over `"<timestamp>.<body>"`, as sent in [`HEADER_SIGNATURE`].
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// The request body for `format`.
pub fn render(format: WebhookFormat, n: &Notification) -> Result<Vec<u8>, String> {
    let value = match format {
        WebhookFormat::Json => serde_json::to_value(n),
        WebhookFormat::Slack => Ok(serde_json::json!({ "text": one_line(n) })),
    };
    value
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(|e| format!("cannot encode the notification: {e}"))
}

/// Scheme, host and port only: webhook URLs often carry a token in their path
/// (Slack's do), and errors are shown to users.
fn redacted(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{}://{h}:{p}", url.scheme()),
        (Some(h), None) => format!("{}://{h}", url.scheme()),
        _ => url.scheme().to_owned(),
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&self, channel: &Channel, n: &Notification) -> Result<(), String> {
        let Channel::Webhook {
            url,
            secret,
            format,
        } = channel
        else {
            return Err(format!("not a webhook channel: {}", channel.kind()));
        };
        let url = reqwest::Url::parse(url).map_err(|e| format!("invalid webhook URL: {e}"))?;
        // IP literals never reach the policy's resolver: judge them here.
        certflow_outbound::check_url(&self.policy, &url).map_err(|e| e.to_string())?;
        let target = redacted(&url);
        let body = render(*format, n)?;
        let mut req = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(HEADER_NOTIFICATION, n.id.to_string())
            .header(HEADER_EVENT, n.kind.as_str());
        match secret {
            Some(WebhookSecret::Plain(secret)) => {
                let ts = OffsetDateTime::now_utc().unix_timestamp();
                req = req
                    .header(HEADER_TIMESTAMP, ts.to_string())
                    .header(HEADER_SIGNATURE, signature(secret.as_bytes(), ts, &body));
            }
            // The dispatcher opens sealed secrets before handing the channel over.
            Some(WebhookSecret::Sealed(_)) => {
                return Err(
                    "the webhook secret is sealed and this dispatcher cannot open it".into(),
                );
            }
            None => {}
        }
        let resp = req.body(body).send().await.map_err(|e| {
            let class = certflow_outbound::failure(&e);
            tracing::debug!(target = %target, error = %error_chain(&e.without_url()), "webhook request failed");
            match class {
                // The refusal names the host already.
                class if class.starts_with("refused by outbound policy") => class,
                class => format!("{target}: {class}"),
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        // The status only: what the receiver wrote back is not shown to the
        // subscriber (an internal service's answer must not leak through
        // GET /deliveries), and the reason phrase is the standard one.
        Err(if status.is_redirection() {
            format!("{target}: HTTP {status} (redirects are not followed)")
        } else {
            format!("{target}: HTTP {status}")
        })
    }
}
