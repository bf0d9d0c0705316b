//! DNS-01 through Amazon Route 53 (AWS SDK), behind the `route53` feature so
//! that certflow-acme links the AWS SDK only where a binary wires Route 53.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_route53::error::DisplayErrorContext;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use certflow_core::{DomainError, DomainResult};

use crate::dns::{Dns01Record, DnsProvider, unavailable};
use crate::settings::PropagationSettings;

/// TXT values grouped by record name, in a stable order.
fn by_name(records: &[Dns01Record]) -> BTreeMap<&str, Vec<&str>> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in records {
        let values = map.entry(r.txt_name.as_str()).or_default();
        if !values.contains(&r.txt_value.as_str()) {
            values.push(r.txt_value.as_str());
        }
    }
    map
}

const ROUTE53: &str = "Route 53";
const TXT_TTL: i64 = 60;

/// Route 53: `UPSERT` of the TXT records in one change batch, waits for the
/// change to be `INSYNC` (`GetChange`), `DELETE` on cleanup.
#[derive(Debug, Clone)]
pub struct Route53Provider {
    client: aws_sdk_route53::Client,
    hosted_zone_id: String,
    poll_interval: Duration,
    timeout: Duration,
}

impl Route53Provider {
    /// A provider over an SDK client, for the zone `hosted_zone_id`.
    pub fn new(
        client: aws_sdk_route53::Client,
        hosted_zone_id: impl Into<String>,
        propagation: &PropagationSettings,
    ) -> Self {
        let id: String = hosted_zone_id.into();
        Self {
            client,
            hosted_zone_id: id.trim_start_matches("/hostedzone/").to_owned(),
            // At least a second between GetChange calls, whatever is configured.
            poll_interval: Duration::from_secs(propagation.poll_interval_secs.max(1)),
            timeout: Duration::from_secs(propagation.timeout_secs),
        }
    }

    /// A provider with the default AWS configuration (environment, profile,
    /// instance role), optionally at another endpoint.
    pub async fn from_env(
        hosted_zone_id: impl Into<String>,
        endpoint_url: Option<&str>,
        propagation: &PropagationSettings,
    ) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        Self::new(
            aws_sdk_route53::Client::new(&config),
            hosted_zone_id,
            propagation,
        )
    }

    fn change_batch(
        action: ChangeAction,
        records: &[Dns01Record],
    ) -> DomainResult<Option<ChangeBatch>> {
        let mut changes = Vec::new();
        for (name, values) in by_name(records) {
            let mut set = ResourceRecordSet::builder()
                .name(name)
                .r#type(RrType::Txt)
                .ttl(TXT_TTL);
            for v in values {
                set = set.resource_records(
                    ResourceRecord::builder()
                        .value(format!("\"{v}\""))
                        .build()
                        .map_err(build_error)?,
                );
            }
            changes.push(
                Change::builder()
                    .action(action.clone())
                    .resource_record_set(set.build().map_err(build_error)?)
                    .build()
                    .map_err(build_error)?,
            );
        }
        if changes.is_empty() {
            return Ok(None);
        }
        ChangeBatch::builder()
            .comment("certflow ACME dns-01")
            .set_changes(Some(changes))
            .build()
            .map(Some)
            .map_err(build_error)
    }

    async fn wait_insync(&self, change_id: &str) -> DomainResult<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let out = self
                .client
                .get_change()
                .id(change_id)
                .send()
                .await
                .map_err(|e| unavailable(ROUTE53, DisplayErrorContext(e).to_string()))?;
            if out
                .change_info()
                .is_some_and(|c| c.status() == &ChangeStatus::Insync)
            {
                return Ok(());
            }
            if Instant::now() + self.poll_interval > deadline {
                return Err(unavailable(
                    ROUTE53,
                    format!(
                        "change {change_id} not INSYNC after {}s",
                        self.timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }
}

fn build_error(e: aws_sdk_route53::error::BuildError) -> DomainError {
    DomainError::Internal(format!("Route 53 request: {e}"))
}

#[async_trait]
impl DnsProvider for Route53Provider {
    async fn present(&self, records: &[Dns01Record]) -> DomainResult<()> {
        let Some(batch) = Self::change_batch(ChangeAction::Upsert, records)? else {
            return Ok(());
        };
        let out = self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(&self.hosted_zone_id)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| unavailable(ROUTE53, DisplayErrorContext(e).to_string()))?;
        match out.change_info() {
            Some(info) => self.wait_insync(info.id()).await,
            None => Ok(()),
        }
    }

    async fn cleanup(&self, records: &[Dns01Record]) -> DomainResult<()> {
        let Some(batch) = Self::change_batch(ChangeAction::Delete, records)? else {
            return Ok(());
        };
        match self
            .client
            .change_resource_record_sets()
            .hosted_zone_id(&self.hosted_zone_id)
            .change_batch(batch)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = DisplayErrorContext(&e).to_string();
                // Deleting a record that is already gone is what cleanup wants.
                if text.contains("not found") || text.contains("InvalidChangeBatch") {
                    tracing::debug!(error = %text, "Route 53 cleanup: records already absent");
                    Ok(())
                } else {
                    Err(unavailable(ROUTE53, text))
                }
            }
        }
    }
}
