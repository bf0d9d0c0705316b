//! DNS-01 record publication: Route 53 through the AWS SDK, or an exec hook.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_route53::error::DisplayErrorContext;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use certflow_core::{DomainError, DomainResult};

use crate::settings::PropagationSettings;

/// One DNS-01 TXT value to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns01Record {
    /// The name being validated, without any `*.` (e.g. `example.com`).
    pub domain: String,
    /// The TXT record name, `_acme-challenge.<domain>` (no trailing dot).
    pub txt_name: String,
    /// The TXT value: base64url SHA-256 of the key authorization.
    pub txt_value: String,
}

impl Dns01Record {
    /// The record for `domain` (a leading `*.` is dropped, as RFC 8555 §8.4 says).
    pub fn new(domain: &str, txt_value: String) -> Self {
        let domain = domain.strip_prefix("*.").unwrap_or(domain).to_owned();
        Self {
            txt_name: format!("_acme-challenge.{domain}"),
            domain,
            txt_value,
        }
    }
}

/// Publishes and removes DNS-01 TXT records. Several records may share one
/// name (`example.com` and `*.example.com`): both values must be served at once.
#[async_trait]
pub trait DnsProvider: Send + Sync {
    /// Publishes `records` and returns once the provider reports them live.
    async fn present(&self, records: &[Dns01Record]) -> DomainResult<()>;
    /// Removes `records` (absent ones are fine).
    async fn cleanup(&self, records: &[Dns01Record]) -> DomainResult<()>;
}

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
            poll_interval: propagation.poll_interval(),
            timeout: propagation.timeout(),
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

fn unavailable(backend: &'static str, reason: String) -> DomainError {
    DomainError::Unavailable { backend, reason }
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

const HOOK: &str = "ACME DNS hook";
const STDERR_TAIL: usize = 512;

/// Runs a command once per record and action, with `CERTFLOW_ACME_ACTION`
/// (`present` or `cleanup`), `CERTFLOW_ACME_DOMAIN`, `CERTFLOW_ACME_TXT_NAME`
/// and `CERTFLOW_ACME_TXT_VALUE` in its environment. `present` must return
/// once the record is visible; a non-zero exit fails the step with the tail of
/// its stderr.
#[derive(Debug, Clone)]
pub struct ExecHook {
    command: PathBuf,
    args: Vec<String>,
    timeout: Duration,
}

impl ExecHook {
    /// A hook running `command args...`, killed after `timeout`.
    pub fn new(command: impl Into<PathBuf>, args: Vec<String>, timeout: Duration) -> Self {
        Self {
            command: command.into(),
            args,
            timeout,
        }
    }

    async fn run(&self, action: &str, record: &Dns01Record) -> DomainResult<()> {
        let child = tokio::process::Command::new(&self.command)
            .args(&self.args)
            .env("CERTFLOW_ACME_ACTION", action)
            .env("CERTFLOW_ACME_DOMAIN", &record.domain)
            .env("CERTFLOW_ACME_TXT_NAME", &record.txt_name)
            .env("CERTFLOW_ACME_TXT_VALUE", &record.txt_value)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                unavailable(HOOK, format!("cannot run {}: {e}", self.command.display()))
            })?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(unavailable(
                    HOOK,
                    format!("{} ({action}): {e}", self.command.display()),
                ));
            }
            // Dropping the future drops the child, which kill_on_drop kills.
            Err(_) => {
                return Err(unavailable(
                    HOOK,
                    format!(
                        "{} ({action} {}) timed out after {}s",
                        self.command.display(),
                        record.domain,
                        self.timeout.as_secs()
                    ),
                ));
            }
        };
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        let tail = match stderr.char_indices().rev().nth(STDERR_TAIL) {
            Some((i, _)) => format!("...{}", &stderr[i..]),
            None => stderr.to_owned(),
        };
        Err(unavailable(
            HOOK,
            format!(
                "{} ({action} {}) exited with {}: {tail}",
                self.command.display(),
                record.domain,
                output.status
            ),
        ))
    }
}

#[async_trait]
impl DnsProvider for ExecHook {
    async fn present(&self, records: &[Dns01Record]) -> DomainResult<()> {
        for r in records {
            self.run("present", r).await?;
        }
        Ok(())
    }

    async fn cleanup(&self, records: &[Dns01Record]) -> DomainResult<()> {
        let mut first_error = None;
        for r in records {
            if let Err(e) = self.run("cleanup", r).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
