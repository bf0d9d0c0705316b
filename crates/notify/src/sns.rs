//! Amazon SNS: the notification JSON published to the channel's topic, with
//! the event kind and team as message attributes so subscriptions can filter.

use async_trait::async_trait;
use aws_sdk_sns::error::DisplayErrorContext;
use aws_sdk_sns::types::MessageAttributeValue;
use certflow_core::notify::{Channel, Notification, Notifier};

use crate::text::subject;

/// Message attribute carrying [`certflow_core::notify::EventKind::as_str`].
pub const ATTRIBUTE_EVENT: &str = "certflow.event";
/// Message attribute carrying the owning team.
pub const ATTRIBUTE_TEAM: &str = "certflow.team";

/// Delivers [`Channel::Sns`] notifications.
#[derive(Debug, Clone)]
pub struct SnsNotifier {
    client: aws_sdk_sns::Client,
}

impl SnsNotifier {
    /// A notifier over a configured SNS client.
    pub fn new(client: aws_sdk_sns::Client) -> Self {
        Self { client }
    }

    /// A notifier with a client built from shared AWS configuration
    /// (credentials, region, endpoint).
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Self {
        Self::new(aws_sdk_sns::Client::new(config))
    }
}

/// SNS subjects are ASCII without control characters, under 100 characters.
fn sns_subject(n: &Notification) -> String {
    subject(n)
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .take(99)
        .collect()
}

fn string_attribute(value: &str) -> Result<MessageAttributeValue, String> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| format!("SNS message attribute: {e}"))
}

#[async_trait]
impl Notifier for SnsNotifier {
    fn kind(&self) -> &'static str {
        "sns"
    }

    async fn deliver(&self, channel: &Channel, n: &Notification) -> Result<(), String> {
        let Channel::Sns { topic_arn } = channel else {
            return Err(format!("not an SNS channel: {}", channel.kind()));
        };
        let message =
            serde_json::to_string(n).map_err(|e| format!("cannot encode the notification: {e}"))?;
        let mut publish = self
            .client
            .publish()
            .topic_arn(topic_arn)
            .subject(sns_subject(n))
            .message(message)
            .message_attributes(ATTRIBUTE_EVENT, string_attribute(n.kind.as_str())?);
        // SNS refuses empty attribute values.
        if !n.team.is_empty() {
            publish = publish.message_attributes(ATTRIBUTE_TEAM, string_attribute(&n.team)?);
        }
        publish
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("SNS publish to {topic_arn}: {}", DisplayErrorContext(&e)))
    }
}
