//! The renewal queue on Amazon SQS.
//!
//! SQS carries the deliveries (leases are visibility timeouts, receipts are SQS
//! receipt handles, backoff is a changed visibility); the metadata store's
//! renewal ledger stays the record of every job. The ledger's unique
//! `(certificate_id, version)` key is what makes enqueueing idempotent (SQS
//! standard queues cannot deduplicate), and it is where the API reads a job's
//! state, attempts and last error. Messages carry ids only, never key material.
//!
//! Delivery is at least once: a message whose job is missing or done is deleted
//! on receipt, and workers make a duplicate delivery harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    Message, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use certflow_core::ports::RenewalLedger;
use certflow_core::renewal::{JobDelivery, JobState, QueueStats, RenewalJob, RenewalQueue};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The backend name in `DomainError::Unavailable`.
const BACKEND: &str = "SQS";
/// SQS's longest long poll.
const MAX_WAIT_SECS: u64 = 20;
/// SQS's largest receive batch.
const MAX_BATCH: u32 = 10;
/// SQS's longest visibility timeout (12 h).
const MAX_VISIBILITY_SECS: u64 = 43_200;
/// SQS's longest message delay (15 min).
const MAX_DELAY_SECS: i64 = 900;
/// SQS's longest retention (14 days): the default 4 days could drop a job that
/// is still backing off after a long CA outage.
const RETENTION_SECS: &str = "1209600";
/// Longest error text copied into a dead-letter message attribute.
const MAX_ERROR_ATTR: usize = 1024;

fn default_max_receive_count() -> u32 {
    10
}

fn default_resend_after_secs() -> u64 {
    3600
}

/// Where the SQS queues are (the `[renewal.sqs]` table of the server's config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsOptions {
    /// URL of the renewal queue.
    pub queue_url: String,
    /// URL of its dead-letter queue: `dead_letter` moves messages there itself
    /// and `depth` reports it. Without it, dead-lettering relies on the queue's
    /// redrive policy.
    #[serde(default)]
    pub dead_letter_queue_url: Option<String>,
    /// AWS region; the environment's (`AWS_REGION`, profile) when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override (VPC endpoints, emulators such as moto).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The redrive policy's `maxReceiveCount`. SQS moves a message to the
    /// dead-letter queue when it is received once more, so deliveries cap the
    /// job's `max_attempts` at this: the worker then dead-letters the job itself
    /// (recording why) on the last delivery SQS will make.
    #[serde(default = "default_max_receive_count")]
    pub max_receive_count: u32,
    /// Seconds after which a job still queued and never delivered is taken to
    /// have lost its message (the process stopped between the ledger insert and
    /// SendMessage) and is sent again by the next `enqueue` of its version.
    #[serde(default = "default_resend_after_secs")]
    pub resend_after_secs: u64,
}

impl SqsOptions {
    /// Options for `queue_url` with every default.
    pub fn new(queue_url: impl Into<String>) -> Self {
        Self {
            queue_url: queue_url.into(),
            dead_letter_queue_url: None,
            region: None,
            endpoint_url: None,
            max_receive_count: default_max_receive_count(),
            resend_after_secs: default_resend_after_secs(),
        }
    }
}

/// Approximate message counts as SQS reports them (eventually consistent,
/// for dashboards; `stats` reports the ledger's exact counts instead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SqsDepth {
    /// Messages ready for delivery (`ApproximateNumberOfMessages`).
    pub visible: u64,
    /// Messages leased or backing off (`ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: u64,
    /// Messages sent with a delay not yet over (`ApproximateNumberOfMessagesDelayed`).
    pub delayed: u64,
    /// Messages in the dead-letter queue, when its URL is configured.
    pub dead_letter: Option<u64>,
}

/// What a message says: which job, nothing secret.
#[derive(Debug, Serialize, Deserialize)]
struct JobMessage {
    job_id: Uuid,
    certificate_id: Uuid,
    version: u32,
}

impl JobMessage {
    fn of(job: &RenewalJob) -> Self {
        Self {
            job_id: job.id,
            certificate_id: job.certificate_id,
            version: job.version,
        }
    }
}

/// Renewal queue on Amazon SQS, with the metadata store's ledger as the record
/// of every job.
pub struct SqsRenewalQueue {
    client: Client,
    options: SqsOptions,
    ledger: Arc<dyn RenewalLedger>,
}

impl std::fmt::Debug for SqsRenewalQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsRenewalQueue")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Client settings over `sdk`: bounded waits (a black-holed endpoint must not
/// hold a scheduler tick for minutes) that still fit the longest long poll.
fn client(sdk: &SdkConfig, region: Option<&str>, endpoint: Option<&str>) -> Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(StdDuration::from_secs(3))
        .operation_attempt_timeout(StdDuration::from_secs(MAX_WAIT_SECS + 10))
        .operation_timeout(StdDuration::from_secs(90))
        .build();
    let mut builder = aws_sdk_sqs::config::Builder::from(sdk).timeout_config(timeouts);
    if let Some(region) = region {
        builder = builder.region(Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Client::from_conf(builder.build())
}

fn unavailable<E, R>(op: &str, e: SdkError<E, R>) -> DomainError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    DomainError::Unavailable {
        backend: BACKEND,
        reason: format!("{op}: {}", DisplayErrorContext(e)),
    }
}

/// Whether SQS refused a receipt handle because the delivery is over: the
/// message was deleted, or its lease expired and it went to another worker.
fn receipt_refused<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    let code = e.code().unwrap_or_default();
    let message = e.message().unwrap_or_default().to_ascii_lowercase();
    code.contains("MessageNotInflight")
        || code.contains("ReceiptHandleIsInvalid")
        || code.contains("InvalidIdFormat")
        || (code.contains("InvalidParameterValue") && message.contains("receipt handle"))
}

fn lease_lost(job: Uuid) -> DomainError {
    DomainError::Conflict(format!(
        "lease lost: SQS no longer holds renewal job {job} for this delivery"
    ))
}

/// Whole seconds covering `d` (a lease never ends early), at least 1, at most
/// `max`, as SQS's `i32`.
fn secs_i32(d: StdDuration, max: u64) -> i32 {
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(whole.clamp(1, max)).unwrap_or(i32::MAX)
}

fn std_to_time(d: StdDuration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What `receive` does with one message.
enum Received {
    Deliver(JobDelivery),
    Skip,
}

impl SqsRenewalQueue {
    /// A queue over `sdk` (credentials, retry policy); `options.region` and
    /// `options.endpoint_url` override the SDK configuration's when given.
    pub fn new(sdk: &SdkConfig, options: SqsOptions, ledger: Arc<dyn RenewalLedger>) -> Self {
        Self {
            client: client(
                sdk,
                options.region.as_deref(),
                options.endpoint_url.as_deref(),
            ),
            options,
            ledger,
        }
    }

    /// A queue with the standard AWS credential chain (environment, profile,
    /// web identity, container, instance metadata).
    pub async fn from_options(options: SqsOptions, ledger: Arc<dyn RenewalLedger>) -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Self::new(&sdk, options, ledger)
    }

    /// The options in force.
    pub fn options(&self) -> &SqsOptions {
        &self.options
    }

    /// SQS's approximate message counts of the queue and its dead-letter queue
    /// (also a cheap readiness probe: it fails when SQS is unreachable).
    pub async fn depth(&self) -> DomainResult<SqsDepth> {
        let main = self
            .queue_attributes(
                &self.options.queue_url,
                &[
                    QueueAttributeName::ApproximateNumberOfMessages,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                ],
            )
            .await?;
        let count = |attrs: &HashMap<QueueAttributeName, String>, name| {
            attrs
                .get(&name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let dead_letter = match &self.options.dead_letter_queue_url {
            Some(url) => {
                let attrs = self
                    .queue_attributes(url, &[QueueAttributeName::ApproximateNumberOfMessages])
                    .await?;
                Some(count(
                    &attrs,
                    QueueAttributeName::ApproximateNumberOfMessages,
                ))
            }
            None => None,
        };
        Ok(SqsDepth {
            visible: count(&main, QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(
                &main,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ),
            delayed: count(
                &main,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ),
            dead_letter,
        })
    }

    async fn queue_attributes(
        &self,
        url: &str,
        names: &[QueueAttributeName],
    ) -> DomainResult<HashMap<QueueAttributeName, String>> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| unavailable("GetQueueAttributes", e))?;
        Ok(out.attributes().cloned().unwrap_or_default())
    }

    async fn send(&self, job: &RenewalJob, now: OffsetDateTime) -> DomainResult<()> {
        let body = serde_json::to_string(&JobMessage::of(job))
            .map_err(|e| DomainError::Internal(format!("renewal job message: {e}")))?;
        // A job scheduled a little ahead waits in SQS (at most 15 minutes);
        // a later one is delivered early and its worker sees `run_at`.
        let delay = (job.run_at - now).whole_seconds().clamp(0, MAX_DELAY_SECS);
        self.client
            .send_message()
            .queue_url(&self.options.queue_url)
            .message_body(body)
            .delay_seconds(i32::try_from(delay).unwrap_or(0))
            .send()
            .await
            .map_err(|e| unavailable("SendMessage", e))?;
        Ok(())
    }

    /// Removes the ledger row of a job whose message was not sent: without
    /// its message the row would block every later enqueue of this version,
    /// so the scheduler's next tick tries again instead.
    async fn undo_enqueue(&self, job: &RenewalJob) {
        if let Err(undo) = self.ledger.delete_renewal_job(job.id).await {
            tracing::error!(job = %job.id, error = %undo, "could not remove a renewal job whose SQS message was not sent");
        }
    }

    /// Sends `job`'s message again if it looks lost (see
    /// [`Self::resend_if_stale`]). `updated_at` records the resend so that a
    /// backlog (workers down) gets one extra message per period, not one per
    /// scheduler tick.
    async fn resend_if_lost(&self, certificate_id: Uuid, version: u32) -> DomainResult<()> {
        let Some(job) = self.ledger.latest_renewal_job(certificate_id).await? else {
            return Ok(());
        };
        if job.version != version {
            return Ok(());
        }
        self.resend_if_stale(job).await.map(|_| ())
    }

    /// A job still queued or running that nobody has touched for
    /// `resend_after_secs` (past its backoff) has lost its message: never sent
    /// (the process stopped between the ledger insert and SendMessage), or
    /// moved to the dead-letter queue by the redrive policy behind the
    /// ledger's back (the worker holding the last delivery SQS would make
    /// died, or receives that never reached a worker used the count up).
    /// With attempts left, its message is sent again; without, the job is
    /// dead-lettered with the reason. Returns whether it did either.
    async fn resend_if_stale(&self, mut job: RenewalJob) -> DomainResult<bool> {
        let now = OffsetDateTime::now_utc();
        let stale = now - job.updated_at.max(job.run_at)
            >= time::Duration::seconds(
                i64::try_from(self.options.resend_after_secs).unwrap_or(i64::MAX),
            );
        if !matches!(job.state, JobState::Queued | JobState::Running) || !stale {
            return Ok(false);
        }
        job.lease_until = None;
        job.updated_at = now;
        if job.attempts >= job.max_attempts {
            let reason = format!(
                "its SQS message was moved to the dead-letter queue after {} deliveries \
                 (the last worker stopped mid-attempt)",
                job.attempts
            );
            tracing::warn!(job = %job.id, certificate = %job.certificate_id, version = job.version, "renewal job dead-lettered: {reason}");
            job.state = JobState::Dead;
            job.last_error = Some(reason);
            self.ledger.update_renewal_job(&job, None).await?;
            return Ok(true);
        }
        tracing::warn!(
            job = %job.id,
            certificate = %job.certificate_id,
            version = job.version,
            attempts = job.attempts,
            "renewal job {} but its SQS message is gone; sending it again",
            job.state.as_str()
        );
        self.send(&job, now).await?;
        job.state = JobState::Queued;
        self.ledger.update_renewal_job(&job, None).await?;
        Ok(true)
    }

    /// Hides a message for `secs` (best effort: on failure it simply comes
    /// back when its current visibility ends).
    async fn hide(&self, receipt: &str, secs: i32) {
        if let Err(e) = self
            .client
            .change_message_visibility()
            .queue_url(&self.options.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
            .await
        {
            tracing::warn!(error = %DisplayErrorContext(e), "SQS ChangeMessageVisibility failed");
        }
    }

    async fn delete_message(&self, receipt: &str) -> DomainResult<()> {
        self.client
            .delete_message()
            .queue_url(&self.options.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| unavailable("DeleteMessage", e))?;
        Ok(())
    }

    /// Copies `body` to the dead-letter queue with the reason as attributes.
    async fn send_to_dlq(
        &self,
        dlq: &str,
        body: &str,
        job: Option<Uuid>,
        error: &str,
    ) -> DomainResult<()> {
        let string = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| DomainError::Internal(format!("SQS message attribute: {e}")))
        };
        let mut send = self
            .client
            .send_message()
            .queue_url(dlq)
            .message_body(body)
            .message_attributes("error", string(truncate(error, MAX_ERROR_ATTR))?);
        if let Some(job) = job {
            send = send.message_attributes("job_id", string(&job.to_string())?);
        }
        send.send()
            .await
            .map_err(|e| unavailable("SendMessage (dead-letter queue)", e))?;
        Ok(())
    }

    /// A message that is not a renewal job of ours: to the dead-letter queue if
    /// there is one, else hidden for `hide_secs` until the redrive policy takes it.
    async fn discard(&self, message: &Message, reason: &str, hide_secs: i32) {
        let Some(receipt) = message.receipt_handle() else {
            return;
        };
        tracing::warn!(
            message = message.message_id().unwrap_or("?"),
            reason,
            "unusable SQS renewal message"
        );
        if let Some(dlq) = &self.options.dead_letter_queue_url {
            let moved = self
                .send_to_dlq(dlq, message.body().unwrap_or_default(), None, reason)
                .await;
            if moved.is_ok() && self.delete_message(receipt).await.is_ok() {
                return;
            }
        }
        self.hide(receipt, hide_secs).await;
    }

    async fn take(
        &self,
        message: &Message,
        lease: StdDuration,
        now: OffsetDateTime,
    ) -> DomainResult<Received> {
        let lease_secs = secs_i32(lease, MAX_VISIBILITY_SECS);
        let Some(receipt) = message.receipt_handle() else {
            return Ok(Received::Skip);
        };
        let parsed = message
            .body()
            .and_then(|b| serde_json::from_str::<JobMessage>(b).ok());
        let Some(msg) = parsed else {
            self.discard(message, "not a renewal job message", lease_secs)
                .await;
            return Ok(Received::Skip);
        };
        let job = match self.ledger.get_renewal_job(msg.job_id).await? {
            Some(job) if job.certificate_id == msg.certificate_id && job.version == msg.version => {
                job
            }
            // Its enqueue failed after all (the row was removed), or a
            // duplicate of finished work: nothing to run.
            _ => {
                tracing::debug!(job = %msg.job_id, "SQS message for a missing renewal job; deleting it");
                self.delete_message(receipt).await?;
                return Ok(Received::Skip);
            }
        };
        match job.state {
            JobState::Done => {
                self.delete_message(receipt).await?;
                return Ok(Received::Skip);
            }
            JobState::Dead => {
                // dead_letter's move failed half-way, or there is no DLQ URL
                // and the redrive policy has not taken it yet.
                self.discard(
                    message,
                    job.last_error.as_deref().unwrap_or("dead"),
                    lease_secs,
                )
                .await;
                return Ok(Received::Skip);
            }
            JobState::Queued | JobState::Running => {}
        }
        let receive_count = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        let mut job = job;
        // SQS counts this message's receives; a message sent again (its first
        // was lost) starts from one, and the attempts go on from the ledger's.
        job.attempts = receive_count.max(job.attempts.saturating_add(1));
        job.max_attempts = job.max_attempts.min(self.options.max_receive_count.max(1));
        job.state = JobState::Running;
        job.last_attempt_at = Some(now);
        job.lease_until = Some(now + std_to_time(lease));
        job.updated_at = now;
        self.ledger.update_renewal_job(&job, None).await?;
        Ok(Received::Deliver(JobDelivery {
            job,
            receipt: receipt.to_owned(),
        }))
    }

    /// The visibility change that hides a delivered message for `d`, or
    /// `Conflict` when the delivery no longer holds it.
    async fn set_visibility(&self, delivery: &JobDelivery, secs: i32) -> DomainResult<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.options.queue_url)
            .receipt_handle(&delivery.receipt)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| {
                if receipt_refused(&e) {
                    lease_lost(delivery.job.id)
                } else {
                    unavailable("ChangeMessageVisibility", e)
                }
            })?;
        Ok(())
    }
}

#[async_trait]
impl RenewalQueue for SqsRenewalQueue {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    async fn recover(&self) -> DomainResult<u64> {
        let cutoff = OffsetDateTime::now_utc()
            - time::Duration::seconds(
                i64::try_from(self.options.resend_after_secs).unwrap_or(i64::MAX / 2),
            );
        let mut resent = 0;
        for job in self.ledger.stale_renewal_jobs(cutoff, 100).await? {
            if self.resend_if_stale(job).await? {
                resent += 1;
            }
        }
        Ok(resent)
    }

    async fn enqueue(&self, job: &RenewalJob) -> DomainResult<bool> {
        if !self.ledger.insert_renewal_job(job).await? {
            self.resend_if_lost(job.certificate_id, job.version).await?;
            return Ok(false);
        }
        if let Err(e) = self.send(job, OffsetDateTime::now_utc()).await {
            self.undo_enqueue(job).await;
            return Err(e);
        }
        Ok(true)
    }

    /// The ledger rows in one transaction, then one message per new job; a
    /// failure removes the rows of the batch's unsent jobs (as `enqueue`
    /// does for its one) so the next scan enqueues them again.
    async fn enqueue_batch(&self, jobs: &[RenewalJob]) -> DomainResult<Vec<bool>> {
        let inserted = self.ledger.insert_renewal_jobs(jobs).await?;
        let now = OffsetDateTime::now_utc();
        for (i, (job, &new)) in jobs.iter().zip(&inserted).enumerate() {
            let sent = if new {
                self.send(job, now).await
            } else {
                self.resend_if_lost(job.certificate_id, job.version).await
            };
            if let Err(e) = sent {
                let unsent = jobs[i..].iter().zip(&inserted[i..]);
                for (job, _) in unsent.filter(|(_, new)| **new) {
                    self.undo_enqueue(job).await;
                }
                return Err(e);
            }
        }
        Ok(inserted)
    }

    async fn receive(
        &self,
        max: u32,
        lease: StdDuration,
        wait: StdDuration,
    ) -> DomainResult<Vec<JobDelivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .receive_message()
            .queue_url(&self.options.queue_url)
            .max_number_of_messages(i32::try_from(max.min(MAX_BATCH)).unwrap_or(1))
            .visibility_timeout(secs_i32(lease, MAX_VISIBILITY_SECS))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(MAX_WAIT_SECS)).unwrap_or(0))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| unavailable("ReceiveMessage", e))?;
        let now = OffsetDateTime::now_utc();
        let mut deliveries = Vec::new();
        let mut failure = None;
        for message in out.messages() {
            if failure.is_some() {
                // The ledger is failing: hand the rest back at once rather
                // than leave them invisible for a whole lease.
                if let Some(receipt) = message.receipt_handle() {
                    self.hide(receipt, 0).await;
                }
                continue;
            }
            match self.take(message, lease, now).await {
                Ok(Received::Deliver(d)) => deliveries.push(d),
                Ok(Received::Skip) => {}
                Err(e) => {
                    if let Some(receipt) = message.receipt_handle() {
                        self.hide(receipt, 0).await;
                    }
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) if deliveries.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "some SQS renewal messages were handed back");
                Ok(deliveries)
            }
            None => Ok(deliveries),
        }
    }

    async fn heartbeat(&self, delivery: &JobDelivery, lease: StdDuration) -> DomainResult<()> {
        self.set_visibility(delivery, secs_i32(lease, MAX_VISIBILITY_SECS))
            .await?;
        let now = OffsetDateTime::now_utc();
        let mut job = delivery.job.clone();
        job.lease_until = Some(now + std_to_time(lease));
        job.updated_at = now;
        self.ledger.update_renewal_job(&job, None).await
    }

    async fn complete(&self, delivery: &JobDelivery) -> DomainResult<()> {
        // Ledger first: if the delete then fails, the message comes back, finds
        // the job done and is deleted then — never run again.
        let now = OffsetDateTime::now_utc();
        let mut job = delivery.job.clone();
        job.state = JobState::Done;
        job.lease_until = None;
        job.last_error = None;
        job.updated_at = now;
        self.ledger.update_renewal_job(&job, None).await?;
        if let Err(e) = self.delete_message(&delivery.receipt).await {
            tracing::warn!(job = %job.id, error = %e, "renewal job done but its SQS message not deleted; it will be dropped on redelivery");
        }
        Ok(())
    }

    async fn retry(
        &self,
        delivery: &JobDelivery,
        error: &str,
        retry_in: StdDuration,
    ) -> DomainResult<()> {
        // SQS refuses a visibility beyond 12 h after the receive: a longer
        // backoff comes back early and the worker sees `run_at`.
        let now = OffsetDateTime::now_utc();
        let held = delivery.job.last_attempt_at.map_or(0, |at| {
            u64::try_from((now - at).whole_seconds()).unwrap_or(0)
        });
        let cap = MAX_VISIBILITY_SECS.saturating_sub(held + 60).max(1);
        // Visibility first: it proves this delivery still holds the message.
        self.set_visibility(delivery, secs_i32(retry_in, cap))
            .await?;
        let mut job = delivery.job.clone();
        job.state = JobState::Queued;
        job.last_error = Some(error.to_owned());
        job.run_at = now + std_to_time(retry_in);
        job.lease_until = None;
        job.updated_at = now;
        self.ledger.update_renewal_job(&job, None).await
    }

    async fn dead_letter(&self, delivery: &JobDelivery, error: &str) -> DomainResult<()> {
        let body = serde_json::to_string(&JobMessage::of(&delivery.job))
            .map_err(|e| DomainError::Internal(format!("renewal job message: {e}")))?;
        if let Some(dlq) = &self.options.dead_letter_queue_url {
            // Copy before marking: a failed copy leaves the job to be retried.
            self.send_to_dlq(dlq, &body, Some(delivery.job.id), error)
                .await?;
        }
        let now = OffsetDateTime::now_utc();
        let mut job = delivery.job.clone();
        job.state = JobState::Dead;
        job.last_error = Some(error.to_owned());
        job.lease_until = None;
        job.updated_at = now;
        self.ledger.update_renewal_job(&job, None).await?;
        if self.options.dead_letter_queue_url.is_some() {
            if let Err(e) = self.delete_message(&delivery.receipt).await {
                // The copy is in the DLQ; the original is discarded when it
                // comes back and finds its job dead.
                tracing::warn!(job = %job.id, error = %e, "dead-lettered renewal job's SQS message not deleted");
            }
        } else {
            // Make it visible so SQS's redrive policy moves it on the next
            // receives (it counts receives, not time).
            self.hide(&delivery.receipt, 0).await;
        }
        Ok(())
    }

    /// Makes the message visible at once and puts the ledger row back to
    /// queued. SQS still counts the receive towards the redrive policy's
    /// `maxReceiveCount`.
    async fn release(&self, delivery: &JobDelivery) -> DomainResult<()> {
        // Visibility first: it proves this delivery still holds the message.
        self.set_visibility(delivery, 0).await?;
        let now = OffsetDateTime::now_utc();
        let mut job = delivery.job.clone();
        job.state = JobState::Queued;
        job.attempts = job.attempts.saturating_sub(1);
        job.run_at = now;
        job.lease_until = None;
        job.updated_at = now;
        self.ledger.update_renewal_job(&job, None).await
    }

    /// The ledger's exact counts (SQS's own are approximate and cannot tell
    /// running from backing off; see [`SqsRenewalQueue::depth`] for them).
    async fn stats(&self) -> DomainResult<QueueStats> {
        self.ledger
            .renewal_job_stats(OffsetDateTime::now_utc())
            .await
    }
}

/// Creates (or updates) the queue `name` and its dead-letter queue
/// `<name>-dlq`, with a redrive policy moving a message to the dead-letter
/// queue after `max_receive_count` receives and 14 days' retention on both;
/// returns `(queue_url, dead_letter_queue_url)`. Safe to run again.
pub async fn ensure_queues(
    sdk: &SdkConfig,
    name: &str,
    max_receive_count: u32,
) -> DomainResult<(String, String)> {
    let client = client(sdk, None, None);
    let dlq_url = ensure_queue(
        &client,
        &format!("{name}-dlq"),
        vec![(
            QueueAttributeName::MessageRetentionPeriod,
            RETENTION_SECS.to_owned(),
        )],
    )
    .await?;
    let arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| unavailable("GetQueueAttributes", e))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| DomainError::Unavailable {
            backend: BACKEND,
            reason: format!("GetQueueAttributes: no QueueArn for {dlq_url}"),
        })?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": arn,
        "maxReceiveCount": max_receive_count.max(1).to_string(),
    })
    .to_string();
    let url = ensure_queue(
        &client,
        name,
        vec![
            (
                QueueAttributeName::MessageRetentionPeriod,
                RETENTION_SECS.to_owned(),
            ),
            (QueueAttributeName::RedrivePolicy, redrive),
        ],
    )
    .await?;
    Ok((url, dlq_url))
}

/// Creates `name` with `attributes`, or sets them on the existing queue (SQS
/// refuses CreateQueue for an existing name with other attributes).
async fn ensure_queue(
    client: &Client,
    name: &str,
    attributes: Vec<(QueueAttributeName, String)>,
) -> DomainResult<String> {
    let attrs: HashMap<_, _> = attributes.into_iter().collect();
    match client
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attrs.clone()))
        .send()
        .await
    {
        Ok(out) => out
            .queue_url()
            .map(str::to_owned)
            .ok_or_else(|| DomainError::Unavailable {
                backend: BACKEND,
                reason: format!("CreateQueue {name}: no queue URL returned"),
            }),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_queue_name_exists()) =>
        {
            let url = client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| unavailable("GetQueueUrl", e))?
                .queue_url()
                .map(str::to_owned)
                .ok_or_else(|| DomainError::Unavailable {
                    backend: BACKEND,
                    reason: format!("GetQueueUrl {name}: no queue URL returned"),
                })?;
            client
                .set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(attrs))
                .send()
                .await
                .map_err(|e| unavailable("SetQueueAttributes", e))?;
            Ok(url)
        }
        Err(e) => Err(unavailable("CreateQueue", e)),
    }
}
