//! When to renew, and the renewal job's life: the window maths (fraction of
//! lifetime, fixed lead time, jitter, ACME Renewal Information), retry backoff,
//! and the queue port the scheduler and workers share.
//!
//! Randomness comes in as a number in `[0, 1)` so that the maths stays pure and
//! testable; callers derive it from the certificate (see `jitter_seed`) so every
//! replica computes the same renewal time for the same version.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::error::{DomainError, DomainResult, FieldError};

/// When to renew a certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalPolicy {
    /// Renew once this fraction of the lifetime has elapsed (0 < f < 1).
    pub renew_at_fraction: f64,
    /// Or this many days before expiry, whichever comes first.
    pub renew_before_days: Option<u32>,
    /// Spread renewals over this fraction of the time left between the window
    /// start and expiry (0 ≤ j ≤ 0.5), so a fleet issued together does not renew together.
    #[serde(default = "default_jitter")]
    pub jitter_fraction: f64,
}

fn default_jitter() -> f64 {
    0.1
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            renew_at_fraction: 2.0 / 3.0,
            renew_before_days: None,
            jitter_fraction: default_jitter(),
        }
    }
}

/// The span in which a version should be renewed: `start` is the policy's
/// moment, `end` the latest moment jitter may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    /// Earliest renewal time.
    pub start: OffsetDateTime,
    /// Latest renewal time (`start <= end < not_after`).
    pub end: OffsetDateTime,
}

/// A CA's suggested renewal window (RFC 9773 `suggestedWindow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuggestedWindow {
    /// `start`.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// `end`.
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

impl RenewalPolicy {
    /// Checks the bounds; `field` prefixes the field names in errors.
    pub fn validate(&self, field: &str) -> DomainResult<()> {
        let mut errors = Vec::new();
        if !(self.renew_at_fraction > 0.0 && self.renew_at_fraction < 1.0) {
            errors.push(FieldError::new(
                format!("{field}.renew_at_fraction"),
                "must be strictly between 0 and 1",
            ));
        }
        if !(0.0..=0.5).contains(&self.jitter_fraction) {
            errors.push(FieldError::new(
                format!("{field}.jitter_fraction"),
                "must be between 0 and 0.5",
            ));
        }
        if self.renew_before_days == Some(0) {
            errors.push(FieldError::new(
                format!("{field}.renew_before_days"),
                "must be at least 1 (omit it to renew by fraction only)",
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(errors))
        }
    }

    /// The renewal window of a version valid over `[not_before, not_after]`:
    /// the fraction of lifetime or the fixed lead time, whichever is earlier
    /// (never before `not_before`), widened by the jitter share of what is left.
    pub fn window(&self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> RenewalWindow {
        let lifetime = (not_after - not_before).max(Duration::ZERO);
        let by_fraction = not_before + lifetime * self.renew_at_fraction.clamp(0.0, 1.0);
        let start = match self.renew_before_days {
            Some(days) => by_fraction.min(not_after - Duration::days(i64::from(days))),
            None => by_fraction,
        }
        .max(not_before);
        let left = (not_after - start).max(Duration::ZERO);
        let end = start + left * self.jitter_fraction.clamp(0.0, 0.5);
        RenewalWindow { start, end }
    }

    /// The moment a version becomes due: a point of its window chosen by `u`
    /// (in `[0, 1)`), unless the CA suggests a window (ARI), which is followed
    /// as long as it ends before the policy's own window does — a CA may ask
    /// for earlier renewal (e.g. before a mass revocation), not for later than
    /// the operator allows.
    pub fn renew_after(
        &self,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        ari: Option<SuggestedWindow>,
        u: f64,
    ) -> OffsetDateTime {
        let own = self.window(not_before, not_after);
        let window = match ari {
            Some(s) if s.start <= s.end && s.end <= own.end => RenewalWindow {
                start: s.start,
                end: s.end,
            },
            _ => own,
        };
        pick(window, u)
    }
}

/// A point of `window` chosen by `u` in `[0, 1)`, rounded down to whole seconds
/// (the store keeps seconds) but never before `start`.
pub fn pick(window: RenewalWindow, u: f64) -> OffsetDateTime {
    let span = window.end - window.start;
    let at = window.start + span * u.clamp(0.0, 1.0);
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.max(window.start.replace_nanosecond(0).unwrap_or(window.start))
}

/// A deterministic number in `[0, 1)` for a version: every replica picks the
/// same renewal time, yet versions issued together spread out.
pub fn jitter_seed(certificate_id: Uuid, version: u32) -> f64 {
    // FNV-1a over the id and version: uniform enough for spreading load and
    // stable across platforms and releases (std's hasher is neither).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in certificate_id
        .as_bytes()
        .iter()
        .chain(version.to_be_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Defaults per team and per issuer, resolved when a certificate is created
/// without its own policy: team first, then issuer, then the global default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalDefaults {
    /// Global default.
    #[serde(default)]
    pub default: RenewalPolicy,
    /// By team name.
    #[serde(default)]
    pub teams: BTreeMap<String, RenewalPolicy>,
    /// By issuer name.
    #[serde(default)]
    pub issuers: BTreeMap<String, RenewalPolicy>,
}

impl RenewalDefaults {
    /// The policy for a new certificate of `team` from issuer `issuer_name`.
    pub fn resolve(&self, team: &str, issuer_name: &str) -> RenewalPolicy {
        self.teams
            .get(team)
            .or_else(|| self.issuers.get(issuer_name))
            .unwrap_or(&self.default)
            .clone()
    }

    /// Checks every policy.
    pub fn validate(&self) -> DomainResult<()> {
        self.default.validate("renewal.default")?;
        for (k, p) in &self.teams {
            p.validate(&format!("renewal.teams.{k}"))?;
        }
        for (k, p) in &self.issuers {
            p.validate(&format!("renewal.issuers.{k}"))?;
        }
        Ok(())
    }
}

impl RenewalPolicy {
    /// The least time a version whose lifetime (from issuance) is `lifetime`
    /// has left when it is renewed: at the end of its window, the latest point
    /// jitter may pick. (A CA's suggested window can only move it earlier.)
    pub fn least_left_at_renewal(&self, lifetime: Duration) -> Duration {
        let start = OffsetDateTime::UNIX_EPOCH;
        let not_after = start + lifetime.max(Duration::ZERO);
        not_after - self.window(start, not_after).end
    }

    /// The shortest lifetime that leaves at least `needed` at renewal, to the
    /// second; `None` when none up to ten years does.
    pub fn shortest_lifetime_leaving(&self, needed: Duration) -> Option<Duration> {
        // What is left grows with the lifetime: bisect on whole seconds.
        let (mut short, mut long) = (0i64, 10 * 366 * 86_400);
        if self.least_left_at_renewal(Duration::seconds(long)) < needed {
            return None;
        }
        while long - short > 1 {
            let mid = short + (long - short) / 2;
            if self.least_left_at_renewal(Duration::seconds(mid)) >= needed {
                long = mid;
            } else {
                short = mid;
            }
        }
        Some(Duration::seconds(long))
    }
}

/// The worst-case time a renewal takes from the moment a version is due, in
/// the terms of the server's `[renewal]` settings, and whether a certificate
/// with so much time left at renewal can afford it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalMargin {
    /// Longest wait for the scheduler to see a due version
    /// (`scheduler_interval_secs`).
    pub scan_interval: StdDuration,
    /// Longest wait before a job whose worker died is taken over by another
    /// (`lease_secs`: the lease lapses once heartbeats stop).
    pub takeover: StdDuration,
    /// How long one renewal attempt normally takes (`expected_renewal_secs`).
    pub renewal: StdDuration,
    /// Longest wait before the first retry of a failed attempt
    /// (`backoff_base_secs`).
    pub retry: StdDuration,
}

/// How a certificate's time left at renewal compares with a [`RenewalMargin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarginFit {
    /// A worker dying mid-renewal and a failed attempt on top of it still
    /// leave time to renew.
    Fits,
    /// A dead worker is ridden out; a failed attempt after it is not.
    NoRetry,
    /// A worker dying mid-renewal (or the scan's wait alone) lets the version expire.
    NoTakeover,
}

impl RenewalMargin {
    /// Due, seen by the scheduler, leased by a worker that dies, taken over,
    /// renewed.
    pub fn through_takeover(&self) -> StdDuration {
        self.scan_interval + self.takeover + self.renewal
    }

    /// [`Self::through_takeover`], then that attempt fails and its retry renews.
    pub fn through_retry(&self) -> StdDuration {
        self.through_takeover() + self.retry + self.renewal
    }

    /// Whether `left` (time left at renewal) affords the worst cases.
    pub fn fit(&self, left: Duration) -> MarginFit {
        let covers = |d: StdDuration| left >= Duration::try_from(d).unwrap_or(Duration::MAX);
        if covers(self.through_retry()) {
            MarginFit::Fits
        } else if covers(self.through_takeover()) {
            MarginFit::NoRetry
        } else {
            MarginFit::NoTakeover
        }
    }

    /// The sum behind [`Self::through_retry`], naming the `[renewal]` keys.
    pub fn explain(&self) -> String {
        format!(
            "{} s = scheduler_interval_secs {} + lease_secs {} + expected_renewal_secs {} \
             + backoff_base_secs {} + expected_renewal_secs {} (a scan's wait, a dead \
             worker's takeover, an attempt that fails, its retry)",
            self.through_retry().as_secs(),
            self.scan_interval.as_secs(),
            self.takeover.as_secs(),
            self.renewal.as_secs(),
            self.retry.as_secs(),
            self.renewal.as_secs(),
        )
    }
}

/// Capped exponential backoff with jitter ("full jitter" of the AWS
/// architecture blog, floored at half the step so retries never stampede at 0):
/// attempt 1 waits about `base`, each further attempt doubles, never above `cap`.
pub fn backoff(attempt: u32, base: StdDuration, cap: StdDuration, u: f64) -> StdDuration {
    let exp = attempt.saturating_sub(1).min(30);
    let step = base.saturating_mul(1u32 << exp).min(cap);
    step.mul_f64(0.5 + 0.5 * u.clamp(0.0, 1.0))
}

/// Where a renewal job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting to run (first time, or after a failure's backoff).
    Queued,
    /// Leased by a worker.
    Running,
    /// The new version is stored (or was already).
    Done,
    /// Gave up after the maximum attempts; an operator must look.
    Dead,
}

impl JobState {
    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::Running, Self::Done, Self::Dead]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One renewal of one certificate version. At most one exists per
/// `(certificate_id, version)`: the store enforces it, so schedulers racing on
/// one database enqueue it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewalJob {
    /// Stable identifier (UUIDv7).
    pub id: Uuid,
    /// The certificate.
    pub certificate_id: Uuid,
    /// The version being replaced: the job is done once a later one exists.
    pub version: u32,
    /// State.
    pub state: JobState,
    /// Deliveries so far (a lease that expired counts).
    pub attempts: u32,
    /// Dead-lettered once `attempts` reaches this.
    pub max_attempts: u32,
    /// Not before this time (backoff).
    pub run_at: OffsetDateTime,
    /// When the current lease ends, while `Running`.
    pub lease_until: Option<OffsetDateTime>,
    /// Last attempt time.
    pub last_attempt_at: Option<OffsetDateTime>,
    /// Last failure reason (the CA's words), cleared on success.
    pub last_error: Option<String>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

impl RenewalJob {
    /// A fresh job for `version` of `certificate_id`, runnable at `now`.
    pub fn new(certificate_id: Uuid, version: u32, max_attempts: u32, now: OffsetDateTime) -> Self {
        Self {
            id: Uuid::now_v7(),
            certificate_id,
            version,
            state: JobState::Queued,
            attempts: 0,
            max_attempts: max_attempts.max(1),
            run_at: now,
            lease_until: None,
            last_attempt_at: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// The idempotency key of the issuance this job performs.
    pub fn idempotency_key(&self) -> String {
        format!("renewal:{}:v{}", self.certificate_id, self.version)
    }
}

/// A due certificate's current version that has no renewal job yet: what
/// the scheduler enqueues. Pages of them are ordered by `(renew_after,
/// certificate_id)`, and the last one of a page is where the next one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueVersion {
    /// The certificate.
    pub certificate_id: Uuid,
    /// Its current version, the one to replace.
    pub version: u32,
    /// When it became due (whole seconds).
    pub renew_after: OffsetDateTime,
}

/// A job handed to one worker, with the queue's handle for acknowledging it.
#[derive(Debug, Clone)]
pub struct JobDelivery {
    /// The job, `attempts` counting this delivery.
    pub job: RenewalJob,
    /// Opaque per-delivery handle (lease token, SQS receipt handle): only the
    /// holder of the current delivery can extend, complete or fail it.
    pub receipt: String,
}

/// Queue depth for dashboards and alarms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Jobs waiting (including those in backoff).
    pub queued: u64,
    /// Jobs leased by a worker.
    pub running: u64,
    /// Dead-lettered jobs.
    pub dead: u64,
    /// Queued jobs waiting for a retry after a failed attempt (`attempts >
    /// 0`), a subset of `queued`.
    pub failing: u64,
    /// Age in seconds of the oldest job not yet done, 0 if none.
    pub oldest_age_secs: u64,
}

/// The renewal queue: a database table (embedded) or Amazon SQS. Delivery is
/// at least once; workers make duplicates harmless (one issuance per job).
#[async_trait]
pub trait RenewalQueue: Send + Sync {
    /// Which implementation, for logs and metrics (`database`, `sqs`).
    fn kind(&self) -> &'static str;
    /// Enqueues `job` unless a job for its `(certificate_id, version)` exists;
    /// returns whether this call enqueued it.
    async fn enqueue(&self, job: &RenewalJob) -> DomainResult<bool>;
    /// Enqueues each of `jobs` as [`enqueue`](Self::enqueue) does; returns,
    /// in order, whether this call enqueued it. The default enqueues one by
    /// one; a queue on a database inserts the batch in one transaction.
    async fn enqueue_batch(&self, jobs: &[RenewalJob]) -> DomainResult<Vec<bool>> {
        let mut fresh = Vec::with_capacity(jobs.len());
        for job in jobs {
            fresh.push(self.enqueue(job).await?);
        }
        Ok(fresh)
    }
    /// Up to `max` runnable jobs, each leased for `lease` (invisible to other
    /// workers until it ends), waiting up to `wait` for one to arrive.
    async fn receive(
        &self,
        max: u32,
        lease: StdDuration,
        wait: StdDuration,
    ) -> DomainResult<Vec<JobDelivery>>;
    /// Extends the lease of a long-running job (heartbeat). `Conflict` if the
    /// lease was lost (expired and handed to another worker).
    async fn heartbeat(&self, delivery: &JobDelivery, lease: StdDuration) -> DomainResult<()>;
    /// Acknowledges success: the job will not be delivered again.
    async fn complete(&self, delivery: &JobDelivery) -> DomainResult<()>;
    /// Whether the jobs are rows of the metadata database, so that a
    /// renewal's version can acknowledge its job in its own transaction
    /// ([`crate::ports::VersionCommit::completes`]).
    fn in_metadata_database(&self) -> bool {
        false
    }
    /// Records a failure and makes the job runnable again after `retry_in`.
    async fn retry(
        &self,
        delivery: &JobDelivery,
        error: &str,
        retry_in: StdDuration,
    ) -> DomainResult<()>;
    /// Gives up on the job: it moves to the dead-letter state (or queue).
    async fn dead_letter(&self, delivery: &JobDelivery, error: &str) -> DomainResult<()>;
    /// Depth and age.
    async fn stats(&self) -> DomainResult<QueueStats>;
    /// Hands a leased job back unfinished (the worker is shutting down): it
    /// becomes runnable at once for another worker instead of after its
    /// lease, and the interrupted delivery does not count as an attempt.
    /// `Conflict` if the lease was lost meanwhile. The default lets the lease
    /// run out, for queues that cannot do better.
    async fn release(&self, delivery: &JobDelivery) -> DomainResult<()> {
        let _ = delivery;
        Ok(())
    }
    /// Hands over again the jobs whose hand-off may have been lost; returns
    /// how many. Nothing to do for a queue that is its own ledger.
    async fn recover(&self) -> DomainResult<u64> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests;
