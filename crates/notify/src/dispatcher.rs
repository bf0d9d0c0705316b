//! The delivery loop: claims due deliveries, hands each to the notifier of its
//! channel type, records every attempt, and retries with capped exponential
//! backoff until the maximum attempts.
//!
//! Deliveries run concurrently, each under a timeout, so a receiver that hangs
//! or is down costs at most that timeout and only its own delivery: the rest of
//! the batch, and in [`Dispatcher::run`] the following batches, go on.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use certflow_core::notify::{Channel, Delivery, Notifier, SecretOpener, WebhookSecret};
use certflow_core::ports::NotificationStore;
use certflow_core::renewal::backoff;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Dispatcher tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherSettings {
    /// How often [`Dispatcher::run`] looks for due deliveries, seconds.
    pub poll_interval_secs: u64,
    /// Deliveries in flight at once (also the claim size).
    pub concurrency: u32,
    /// One attempt's limit, seconds; a slower receiver counts as a failure.
    pub delivery_timeout_secs: u64,
    /// Attempts before giving up (state `failed`).
    pub max_attempts: u32,
    /// Wait after the first failure, seconds; doubles each further failure.
    pub backoff_base_secs: u64,
    /// Longest wait between attempts, seconds.
    pub backoff_cap_secs: u64,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        // 30 s doubling to an hour: ten attempts span roughly 3 to 6 hours.
        Self {
            poll_interval_secs: 5,
            concurrency: 32,
            delivery_timeout_secs: 30,
            max_attempts: 10,
            backoff_base_secs: 30,
            backoff_cap_secs: 3600,
        }
    }
}

impl DispatcherSettings {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.delivery_timeout_secs.max(1))
    }

    /// How long a claim keeps other dispatchers off a delivery: its timeout
    /// plus room to record the attempt.
    fn lease(&self) -> Duration {
        self.timeout() + Duration::from_secs(30)
    }
}

/// The notifiers, one per channel type.
#[derive(Clone, Default)]
pub struct Notifiers {
    by_kind: BTreeMap<&'static str, Arc<dyn Notifier>>,
}

impl std::fmt::Debug for Notifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_kind.keys()).finish()
    }
}

impl Notifiers {
    /// No notifiers: every delivery fails with "no notifier" until one is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the notifier for its [`Notifier::kind`].
    pub fn with(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.insert(notifier);
        self
    }

    /// Adds (or replaces) the notifier for its [`Notifier::kind`].
    pub fn insert(&mut self, notifier: Arc<dyn Notifier>) {
        self.by_kind.insert(notifier.kind(), notifier);
    }

    /// The notifier for a channel type.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Notifier>> {
        self.by_kind.get(kind)
    }
}

/// Channel types the counters are kept for ([`certflow_core::notify::Channel::kind`]).
pub const CHANNEL_KINDS: [&str; 3] = ["webhook", "sns", "email"];

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    gave_up: AtomicU64,
}

/// Cumulative outcome counters per channel type (exported as metrics).
#[derive(Debug, Default)]
pub struct DispatchMetrics {
    by_kind: [Counters; CHANNEL_KINDS.len()],
}

/// Counts of one channel type at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ChannelCounts {
    /// Channel type.
    pub kind: &'static str,
    /// Attempts the channel accepted.
    pub delivered: u64,
    /// Attempts that failed (including the last one of a delivery given up).
    pub failed: u64,
    /// Deliveries given up after the maximum attempts.
    pub gave_up: u64,
}

impl DispatchMetrics {
    fn counters(&self, kind: &str) -> Option<&Counters> {
        CHANNEL_KINDS
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.by_kind.get(i))
    }

    /// Current counts, one entry per channel type in [`CHANNEL_KINDS`] order.
    pub fn snapshot(&self) -> Vec<ChannelCounts> {
        CHANNEL_KINDS
            .iter()
            .zip(&self.by_kind)
            .map(|(kind, c)| ChannelCounts {
                kind,
                delivered: c.delivered.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                gave_up: c.gave_up.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// What one [`Dispatcher::tick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DispatchReport {
    /// Deliveries claimed.
    pub claimed: u32,
    /// Accepted by their channel.
    pub delivered: u32,
    /// Failed and scheduled for another attempt.
    pub retrying: u32,
    /// Failed for the last time (state `failed`).
    pub gave_up: u32,
    /// Attempts whose outcome could not be recorded (the lease expires and
    /// another tick tries again; receivers de-duplicate on the notification id).
    pub unrecorded: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Retrying,
    GaveUp,
    Unrecorded,
}

struct Inner {
    store: Arc<dyn NotificationStore>,
    notifiers: Notifiers,
    settings: DispatcherSettings,
    metrics: Arc<DispatchMetrics>,
    secrets: Option<Arc<dyn SecretOpener>>,
}

/// Delivers pending notifications; cheap to clone (shared state).
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("notifiers", &self.inner.notifiers)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// A number in `[0, 1)` from the delivery and attempt, so that retries of
/// different deliveries spread out without a random source.
fn jitter(delivery: &Delivery, attempt: u32) -> f64 {
    let mut x =
        (delivery.id.as_u128() as u64) ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl Dispatcher {
    /// A dispatcher over `store` with these notifiers.
    pub fn new(
        store: Arc<dyn NotificationStore>,
        notifiers: Notifiers,
        settings: DispatcherSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                notifiers,
                settings,
                metrics: Arc::default(),
                secrets: None,
            }),
        }
    }

    /// Opens sealed webhook secrets with `secrets` before delivery (without
    /// it, a delivery with a sealed secret fails).
    pub fn with_secrets(self, secrets: Arc<dyn SecretOpener>) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                store: Arc::clone(&i.store),
                notifiers: i.notifiers.clone(),
                settings: i.settings.clone(),
                metrics: Arc::clone(&i.metrics),
                secrets: Some(secrets),
            }),
        }
    }

    /// The delivery's channel with its webhook secret opened.
    async fn opened(&self, d: &Delivery) -> Result<Channel, String> {
        match (&d.channel, &self.inner.secrets) {
            (
                Channel::Webhook {
                    url,
                    secret: Some(WebhookSecret::Sealed(envelope)),
                    format,
                },
                Some(secrets),
            ) => {
                let plain = secrets
                    .open(d.subscription_id, envelope)
                    .await
                    .map_err(|e| format!("cannot open the webhook secret: {e}"))?;
                Ok(Channel::Webhook {
                    url: url.clone(),
                    secret: Some(WebhookSecret::Plain(plain)),
                    format: *format,
                })
            }
            (channel, _) => Ok(channel.clone()),
        }
    }

    /// The counters (shared; keep the `Arc` for a metrics exporter).
    pub fn metrics(&self) -> Arc<DispatchMetrics> {
        Arc::clone(&self.inner.metrics)
    }

    /// The settings in force.
    pub fn settings(&self) -> &DispatcherSettings {
        &self.inner.settings
    }

    /// One pass: claims up to `concurrency` deliveries due at `now`, attempts
    /// them all concurrently and records each outcome. Attempts are stamped
    /// `now` plus the time they took, so tests can drive time.
    pub async fn tick(
        &self,
        now: OffsetDateTime,
    ) -> Result<DispatchReport, certflow_core::DomainError> {
        let s = &self.inner.settings;
        let limit = s.concurrency.max(1);
        let lease_until = now + s.lease();
        let claimed = self
            .inner
            .store
            .claim_deliveries(now, lease_until, limit)
            .await?;
        let origin = Instant::now();
        let mut report = DispatchReport {
            claimed: u32::try_from(claimed.len()).unwrap_or(u32::MAX),
            ..DispatchReport::default()
        };
        let outcomes: Vec<Outcome> = futures::stream::iter(claimed)
            .map(|d| self.attempt(d, now, origin))
            .buffer_unordered(limit as usize)
            .collect()
            .await;
        for o in outcomes {
            match o {
                Outcome::Delivered => report.delivered += 1,
                Outcome::Retrying => report.retrying += 1,
                Outcome::GaveUp => report.gave_up += 1,
                Outcome::Unrecorded => report.unrecorded += 1,
            }
        }
        Ok(report)
    }

    /// Delivers until `shutdown` completes, then waits for the attempts in
    /// flight (each bounded by the delivery timeout). New deliveries are
    /// claimed whenever a slot frees, so one slow receiver holds one slot only.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) {
        let s = &self.inner.settings;
        let slots = Arc::new(Semaphore::new(s.concurrency.max(1) as usize));
        let poll = Duration::from_secs(s.poll_interval_secs.max(1));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "notification delivery task failed");
                }
            }
            let free = slots.available_permits();
            let mut full = false;
            if free > 0 {
                let now = OffsetDateTime::now_utc();
                let limit = u32::try_from(free).unwrap_or(u32::MAX);
                match self
                    .inner
                    .store
                    .claim_deliveries(now, now + s.lease(), limit)
                    .await
                {
                    Ok(batch) => {
                        full = batch.len() >= free;
                        let origin = Instant::now();
                        for d in batch {
                            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                                break;
                            };
                            let this = self.clone();
                            tasks.spawn(async move {
                                let _slot = permit;
                                this.attempt(d, now, origin).await
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim notification deliveries");
                    }
                }
            } else {
                full = true;
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(poll) => {}
                // More may be due: claim again as soon as a slot frees.
                Some(_) = tasks.join_next(), if full && !tasks.is_empty() => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn attempt(&self, d: Delivery, now: OffsetDateTime, origin: Instant) -> Outcome {
        let s = &self.inner.settings;
        let kind = d.channel.kind();
        let attempt = d.attempts.saturating_add(1);
        let result = match (self.inner.notifiers.get(kind), self.opened(&d).await) {
            (None, _) => Err(format!("no {kind} notifier is configured on this server")),
            (Some(_), Err(e)) => Err(e),
            (Some(n), Ok(channel)) => {
                match tokio::time::timeout(s.timeout(), n.deliver(&channel, &d.notification)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(format!("timed out after {} s", s.timeout().as_secs())),
                }
            }
        };
        let at = now + origin.elapsed();
        let counters = self.inner.metrics.counters(kind);
        let (error, retry_at, outcome) = match &result {
            Ok(()) => (None, None, Outcome::Delivered),
            Err(e) if attempt >= s.max_attempts.max(1) => (Some(e.as_str()), None, Outcome::GaveUp),
            Err(e) => {
                let wait = backoff(
                    attempt,
                    Duration::from_secs(s.backoff_base_secs),
                    Duration::from_secs(s.backoff_cap_secs),
                    jitter(&d, attempt),
                );
                (Some(e.as_str()), Some(at + wait), Outcome::Retrying)
            }
        };
        if let Some(c) = counters {
            match outcome {
                Outcome::Delivered => c.delivered.fetch_add(1, Ordering::Relaxed),
                _ => c.failed.fetch_add(1, Ordering::Relaxed),
            };
            if outcome == Outcome::GaveUp {
                c.gave_up.fetch_add(1, Ordering::Relaxed);
            }
        }
        match &result {
            Ok(()) => tracing::debug!(delivery = %d.id, kind, attempt, "notification delivered"),
            Err(e) => {
                tracing::warn!(delivery = %d.id, kind, attempt, error = %e, gave_up = retry_at.is_none(), "notification delivery failed")
            }
        }
        match self
            .inner
            .store
            .record_attempt(d.id, at, error, retry_at)
            .await
        {
            Ok(()) => outcome,
            Err(e) => {
                tracing::error!(delivery = %d.id, error = %e, "cannot record a notification attempt");
                Outcome::Unrecorded
            }
        }
    }
}
