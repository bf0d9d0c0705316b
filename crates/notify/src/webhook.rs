//! HTTP webhooks: the notification as JSON (or a Slack message), signed with
//! HMAC-SHA256 when the channel has a secret. See the crate docs for the
//! receiver's verification recipe.

use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::hmac;
use certflow_core::notify::{Channel, Notification, Notifier, WebhookFormat};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::SetupError;
use crate::text::{error_chain, first_line, one_line};

/// Unix seconds at signing time; part of the signed string.
pub const HEADER_TIMESTAMP: &str = "X-Certflow-Timestamp";
/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const HEADER_SIGNATURE: &str = "X-Certflow-Signature";
/// The notification id (UUIDv7): receivers de-duplicate retries on it.
pub const HEADER_NOTIFICATION: &str = "X-Certflow-Notification";
/// The event kind (`expiring`, `renewal-failing`, ...).
pub const HEADER_EVENT: &str = "X-Certflow-Event";

/// How much of a refusing receiver's body goes into the error.
const BODY_EXCERPT: usize = 200;

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
}

impl WebhookNotifier {
    /// A notifier with its own HTTP client (rustls, no redirects, proxy from the environment).
    pub fn new(settings: &WebhookSettings) -> Result<Self, SetupError> {
        let client = Self::client_builder(settings)
            .build()
            .map_err(|e| SetupError(format!("webhook client: {}", error_chain(&e))))?;
        Ok(Self { client })
    }

    /// The builder [`WebhookNotifier::new`] uses, for callers that adjust it
    /// (tests disable proxies for loopback receivers).
    pub fn client_builder(settings: &WebhookSettings) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(settings.timeout_secs.clamp(1, 5)))
            // A redirect would re-send the signed body to a place nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("certflow/", env!("CARGO_PKG_VERSION")))
    }

    /// A notifier over a caller-built client.
    pub fn with_client(client: reqwest::Client) -> Self {
        Self { client }
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
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "webhook URL must be http or https, not {}",
                url.scheme()
            ));
        }
        let target = redacted(&url);
        let body = render(*format, n)?;
        let mut req = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(HEADER_NOTIFICATION, n.id.to_string())
            .header(HEADER_EVENT, n.kind.as_str());
        if let Some(secret) = secret {
            let ts = OffsetDateTime::now_utc().unix_timestamp();
            req = req
                .header(HEADER_TIMESTAMP, ts.to_string())
                .header(HEADER_SIGNATURE, signature(secret.as_bytes(), ts, &body));
        }
        let mut resp = req.body(body).send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "request failed"
            };
            format!("{target}: {what}: {}", error_chain(&e.without_url()))
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let mut excerpt = Vec::new();
        while excerpt.len() < BODY_EXCERPT * 4 {
            match resp.chunk().await {
                Ok(Some(c)) => excerpt.extend_from_slice(&c),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&excerpt);
        let excerpt = first_line(
            &text.split_whitespace().collect::<Vec<_>>().join(" "),
            BODY_EXCERPT,
        );
        Err(if excerpt.is_empty() {
            format!("{target}: HTTP {status}")
        } else {
            format!("{target}: HTTP {status}: {excerpt}")
        })
    }
}
