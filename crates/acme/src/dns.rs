//! DNS-01 record publication: the [`DnsProvider`] port and an exec hook
//! (Route 53 is in `route53.rs`, behind the `route53` feature).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use certflow_core::{DomainError, DomainResult};

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

pub(crate) fn unavailable(backend: &'static str, reason: String) -> DomainError {
    DomainError::Unavailable { backend, reason }
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
