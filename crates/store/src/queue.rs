//! [`DbRenewalQueue`]: the embedded [`RenewalQueue`], on the `renewal_jobs`
//! table of the metadata database (see [`crate::renewal`] for the leases).
//! Enqueueing is the ledger insert, so the queue and the ledger are one row.

use std::fmt;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use certflow_core::error::DomainResult;
use certflow_core::ports::RenewalLedger;
use certflow_core::renewal::{JobDelivery, QueueStats, RenewalJob, RenewalQueue};
use sqlx::{Postgres, Sqlite};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::group_commit::GroupCommit;
use crate::renewal::lease_lost;
use crate::store::SqlStore;

/// The time source of a queue.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// Settings of a [`DbRenewalQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbQueueOptions {
    /// How often a waiting `receive` looks for runnable jobs again.
    pub poll_interval: StdDuration,
}

impl Default for DbQueueOptions {
    fn default() -> Self {
        Self {
            poll_interval: StdDuration::from_millis(150),
        }
    }
}

/// The store a queue runs on. [`DbRenewalQueue`] stays one type for both
/// backends (callers hold it without naming one), so it carries either
/// [`SqlStore`]; the job statements themselves are written once, generically.
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlStore<Sqlite>),
    Postgres(SqlStore<Postgres>),
}

/// Runs `$body` with `$s` bound to `$backend`'s `SqlStore`, whichever it
/// is: the one place the enum is matched, instead of a match in every method.
macro_rules! on_backend {
    ($backend:expr, $s:ident => $body:expr) => {
        match &$backend {
            Backend::Sqlite($s) => $body,
            Backend::Postgres($s) => $body,
        }
    };
}

/// [`on_backend!`] on a queue's own backend.
macro_rules! on_store {
    ($self:expr, $s:ident => $body:expr) => {
        on_backend!($self.backend, $s => $body)
    };
}

/// An acknowledgement waiting for its group: the delivery and the time it
/// was made at.
type Completion = (JobDelivery, OffsetDateTime);

/// The renewal queue on the metadata database (SQLite or PostgreSQL).
#[derive(Clone)]
pub struct DbRenewalQueue {
    backend: Backend,
    options: DbQueueOptions,
    clock: Clock,
    /// Acknowledgements, committed in groups (a worker's jobs finish
    /// together: one statement and one commit for all that wait).
    completions: Arc<GroupCommit<Completion>>,
}

impl fmt::Debug for DbRenewalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbRenewalQueue")
            .field("backend", &self.backend)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl DbRenewalQueue {
    fn new(backend: Backend, options: DbQueueOptions) -> Self {
        let completer = backend.clone();
        Self {
            completions: GroupCommit::new(Arc::new(move |batch| {
                Box::pin(complete_all(completer.clone(), batch))
            })),
            backend,
            options,
            clock: Arc::new(OffsetDateTime::now_utc),
        }
    }

    pub(crate) fn sqlite(store: SqlStore<Sqlite>, options: DbQueueOptions) -> Self {
        Self::new(Backend::Sqlite(store), options)
    }

    pub(crate) fn postgres(store: SqlStore<Postgres>, options: DbQueueOptions) -> Self {
        Self::new(Backend::Postgres(store), options)
    }

    /// The same queue reading `clock` instead of the system time (tests
    /// move time forward to expire leases and reach `run_at`).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> OffsetDateTime {
        (self.clock)()
    }
}

/// Completes a group of deliveries in one statement, at the latest of their
/// times; should it fail, each alone, so each gets its own answer. A
/// delivery whose lease was lost gets its `Conflict`.
async fn complete_all(backend: Backend, batch: Vec<Completion>) -> Vec<DomainResult<()>> {
    let lost = |d: &JobDelivery, done: bool| {
        if done {
            Ok(())
        } else {
            Err(lease_lost(d.job.id))
        }
    };
    if let [(delivery, now)] = batch.as_slice() {
        return vec![on_backend!(backend, s => s.complete_job(delivery, *now).await)];
    }
    let now = batch.iter().map(|(_, at)| *at).max();
    let deliveries: Vec<JobDelivery> = batch.iter().map(|(d, _)| d.clone()).collect();
    let together = match now {
        Some(now) => on_backend!(backend, s => s.complete_jobs(&deliveries, now).await),
        None => Ok(Vec::new()),
    };
    match together {
        Ok(done) if done.len() == deliveries.len() => deliveries
            .iter()
            .zip(done)
            .map(|(d, done)| lost(d, done))
            .collect(),
        _ => {
            let mut alone = Vec::with_capacity(batch.len());
            for (delivery, now) in &batch {
                alone.push(on_backend!(backend, s => s.complete_job(delivery, *now).await));
            }
            alone
        }
    }
}

#[async_trait]
impl RenewalQueue for DbRenewalQueue {
    fn kind(&self) -> &'static str {
        "database"
    }

    async fn enqueue(&self, job: &RenewalJob) -> DomainResult<bool> {
        on_store!(self, s => s.insert_renewal_job(job).await)
    }

    async fn enqueue_batch(&self, jobs: &[RenewalJob]) -> DomainResult<Vec<bool>> {
        on_store!(self, s => s.insert_renewal_jobs(jobs).await)
    }

    async fn receive(
        &self,
        max: u32,
        lease: StdDuration,
        wait: StdDuration,
    ) -> DomainResult<Vec<JobDelivery>> {
        let deadline = Instant::now() + wait;
        loop {
            let now = self.now();
            let claimed = on_store!(self, s => s.claim_jobs(now, max, lease).await)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !claimed.is_empty() || left.is_zero() {
                return Ok(claimed);
            }
            tokio::time::sleep(self.options.poll_interval.min(left)).await;
        }
    }

    async fn heartbeat(&self, delivery: &JobDelivery, lease: StdDuration) -> DomainResult<()> {
        let now = self.now();
        on_store!(self, s => s.heartbeat_job(delivery, now, lease).await)
    }

    async fn complete(&self, delivery: &JobDelivery) -> DomainResult<()> {
        let now = self.now();
        self.completions.submit((delivery.clone(), now)).await
    }

    fn in_metadata_database(&self) -> bool {
        true
    }

    async fn retry(
        &self,
        delivery: &JobDelivery,
        error: &str,
        retry_in: StdDuration,
    ) -> DomainResult<()> {
        let now = self.now();
        on_store!(self, s => s.retry_job(delivery, now, error, retry_in).await)
    }

    async fn dead_letter(&self, delivery: &JobDelivery, error: &str) -> DomainResult<()> {
        let now = self.now();
        on_store!(self, s => s.dead_letter_job(delivery, now, error).await)
    }

    async fn release(&self, delivery: &JobDelivery) -> DomainResult<()> {
        let now = self.now();
        on_store!(self, s => s.release_job(delivery, now).await)
    }

    async fn stats(&self) -> DomainResult<QueueStats> {
        let now = self.now();
        on_store!(self, s => s.renewal_job_stats(now).await)
    }
}
