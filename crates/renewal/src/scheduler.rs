//! The scheduler: finds what is due and enqueues one job per (certificate,
//! version). Several schedulers on one database are safe: the ledger's unique
//! key turns the second enqueue of a job into a no-op.

use std::sync::Arc;
use std::time::Duration;

use certflow_core::error::DomainResult;
use certflow_core::ports::MetadataStore;
use certflow_core::renewal::{RenewalJob, RenewalQueue};
use time::OffsetDateTime;
use tokio::sync::watch;

/// Scheduler knobs.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// Time between scans.
    pub interval: Duration,
    /// Certificates read per query.
    pub batch: u32,
    /// Attempts before a job is dead-lettered.
    pub max_attempts: u32,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            batch: 500,
            max_attempts: 8,
        }
    }
}

/// What one scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Due certificates seen.
    pub due: u64,
    /// Jobs this scan enqueued (the rest were already queued).
    pub enqueued: u64,
    /// Jobs handed to the queue again because their first hand-off was lost.
    pub recovered: u64,
}

/// Finds due certificates and enqueues their renewal.
pub struct Scheduler {
    store: Arc<dyn MetadataStore>,
    queue: Arc<dyn RenewalQueue>,
    settings: SchedulerSettings,
}

impl Scheduler {
    /// A scheduler over `store`'s due index, feeding `queue`.
    pub fn new(
        store: Arc<dyn MetadataStore>,
        queue: Arc<dyn RenewalQueue>,
        settings: SchedulerSettings,
    ) -> Self {
        Self {
            store,
            queue,
            settings,
        }
    }

    /// One scan at `now`: pages through everything due and enqueues it.
    pub async fn scan(&self, now: OffsetDateTime) -> DomainResult<ScanReport> {
        let mut report = ScanReport::default();
        loop {
            let batch = self.store.due_for_renewal(now, self.settings.batch).await?;
            let mut fresh = 0;
            for cert in &batch {
                let job = RenewalJob::new(
                    cert.id,
                    cert.current_version,
                    self.settings.max_attempts,
                    now,
                );
                if self.queue.enqueue(&job).await? {
                    fresh += 1;
                }
            }
            report.due += batch.len() as u64;
            report.enqueued += fresh;
            // The due query leaves out certificates whose job exists, so a
            // full batch means more may follow; a batch that enqueued nothing
            // would only repeat itself (another scheduler got there first).
            if batch.len() < self.settings.batch as usize || fresh == 0 {
                break;
            }
        }
        // A job whose hand-off to an external queue was lost (a crash between
        // the ledger insert and the send) would otherwise never run: the due
        // query skips versions that have a job.
        report.recovered = self.queue.recover().await?;
        Ok(report)
    }

    /// Scans every `interval` until `shutdown` turns true. Errors are logged
    /// and the next scan retries: a database outage delays renewal, it does not
    /// stop the scheduler.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            match self.scan(OffsetDateTime::now_utc()).await {
                Ok(r) if r.enqueued > 0 => {
                    tracing::info!(
                        due = r.due,
                        enqueued = r.enqueued,
                        queue = self.queue.kind(),
                        "renewals enqueued"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "renewal scan failed; retrying next interval"),
            }
        }
    }
}
