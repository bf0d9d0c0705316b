//! Renewal workers: take a job, renew through the services layer (which asks
//! the certificate's issuer and stores the new version), acknowledge. A job
//! that fails is retried with capped exponential backoff and jitter, and
//! dead-lettered after its maximum attempts; either way the team is told.
//!
//! Exactly one new version per job, whatever the delivery: the version is
//! stored under the job's idempotency key, so a duplicate delivery, or a retry
//! after a worker died mid-job, finds the first one's result instead of
//! issuing again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use certflow_core::renewal::{JobDelivery, RenewalQueue, backoff, jitter_seed};
use certflow_services::{JobOutcome, Services};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

/// Worker knobs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs worked on at once.
    pub concurrency: u32,
    /// Lease (visibility timeout) per delivery; heartbeats renew it every
    /// third while the job runs. It is how long a job whose worker died (no
    /// more heartbeats) stays hidden before another worker takes it over, so
    /// it is kept short; how long a job may run is `work_timeout`.
    pub lease: Duration,
    /// Longest a renewal attempt may run in a live worker: then it is cut
    /// short and counted as a failed attempt (retried with backoff, the team
    /// told), so a stuck attempt neither holds its job nor its worker forever.
    pub work_timeout: Duration,
    /// Longest wait for a job in one receive.
    pub wait: Duration,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// On shutdown, how long jobs in hand may run on before they are cut
    /// short and handed back to the queue for another worker.
    pub shutdown_grace: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            lease: Duration::from_secs(15),
            work_timeout: Duration::from_secs(300),
            wait: Duration::from_secs(10),
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The jobs a worker has in hand: their tasks, and each task's delivery (to
/// hand back a job whose task was cut short).
#[derive(Default)]
struct InHand {
    tasks: JoinSet<()>,
    deliveries: HashMap<tokio::task::Id, JobDelivery>,
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Versions stored.
    pub renewed: AtomicU64,
    /// Jobs found already done (duplicates, manual renewals).
    pub already_renewed: AtomicU64,
    /// Failed attempts that will be retried.
    pub retried: AtomicU64,
    /// Jobs given up.
    pub dead_lettered: AtomicU64,
}

/// Takes jobs from a queue and renews.
#[derive(Clone)]
pub struct Worker {
    services: Services,
    queue: Arc<dyn RenewalQueue>,
    settings: WorkerSettings,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// A worker renewing through `services`, fed by `queue`.
    pub fn new(services: Services, queue: Arc<dyn RenewalQueue>, settings: WorkerSettings) -> Self {
        Self {
            services,
            queue,
            settings,
            stats: Arc::new(WorkerStats::default()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Receives up to `concurrency` jobs (waiting up to `wait`) and works on
    /// them concurrently; returns how many it took.
    pub async fn run_once(&self) -> DomainResult<usize> {
        let deliveries = self
            .queue
            .receive(
                self.settings.concurrency,
                self.settings.lease,
                self.settings.wait,
            )
            .await?;
        let n = deliveries.len();
        let mut hand = InHand::default();
        for delivery in deliveries {
            self.spawn(&mut hand, delivery);
        }
        self.drain(&mut hand, None).await;
        Ok(n)
    }

    /// Starts working on `delivery`.
    fn spawn(&self, hand: &mut InHand, delivery: JobDelivery) {
        let worker = self.clone();
        let task = delivery.clone();
        let handle = hand.tasks.spawn(async move { worker.process(task).await });
        hand.deliveries.insert(handle.id(), delivery);
    }

    /// Forgets a finished job; hands a cancelled one back to the queue.
    async fn reap(&self, hand: &mut InHand, done: Result<(tokio::task::Id, ()), JoinError>) {
        match done {
            Ok((id, ())) => {
                hand.deliveries.remove(&id);
            }
            Err(e) => {
                let delivery = hand.deliveries.remove(&e.id());
                if e.is_cancelled() {
                    if let Some(delivery) = delivery {
                        self.hand_back(&delivery).await;
                    }
                } else {
                    tracing::error!(error = %e, "renewal task panicked; its job is retried after its lease");
                }
            }
        }
    }

    /// Waits for every job in hand. With a `grace` (shutting down), the jobs
    /// still running when it ends are cut short and handed back to the queue
    /// (another worker takes them at once; the idempotency key keeps a
    /// half-done issuance from issuing twice).
    async fn drain(&self, hand: &mut InHand, grace: Option<Duration>) {
        if let Some(grace) = grace {
            tracing::info!(
                jobs = hand.deliveries.len(),
                ?grace,
                "shutting down: finishing the renewal jobs in hand"
            );
        }
        let mut deadline = grace.map(|g| tokio::time::Instant::now() + g);
        loop {
            let cut = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                done = hand.tasks.join_next_with_id() => match done {
                    None => return,
                    Some(done) => self.reap(hand, done).await,
                },
                () = cut => {
                    // Grace over: each is handed back as its cancellation is
                    // collected above.
                    hand.tasks.abort_all();
                    deadline = None;
                }
            }
        }
    }

    /// Returns an unfinished job to the queue.
    async fn hand_back(&self, delivery: &JobDelivery) {
        let job = &delivery.job;
        match self.queue.release(delivery).await {
            Ok(()) => {
                tracing::info!(job = %job.id, certificate = %job.certificate_id, version = job.version, "renewal job handed back (shutting down)");
            }
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "could not hand a renewal job back; it is retried after its lease");
            }
        }
    }

    /// Works until `shutdown` turns true; a queue outage is retried with
    /// backoff. Whenever fewer than `concurrency` jobs are in hand it asks
    /// the queue for more, so a job that hangs (until its work timeout)
    /// holds one slot, not the worker. Jobs in hand at shutdown get the
    /// grace period, then go back to the queue.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut hand = InHand::default();
        let mut failures = 0u32;
        loop {
            while let Some(done) = hand.tasks.try_join_next_with_id() {
                self.reap(&mut hand, done).await;
            }
            if *shutdown.borrow_and_update() {
                break;
            }
            let in_hand = u32::try_from(hand.tasks.len()).unwrap_or(u32::MAX);
            let free = self.settings.concurrency.saturating_sub(in_hand);
            if free == 0 {
                tokio::select! {
                    Some(done) = hand.tasks.join_next_with_id() => self.reap(&mut hand, done).await,
                    changed = shutdown.changed() => if changed.is_err() { break },
                }
                continue;
            }
            let received = tokio::select! {
                r = self.queue.receive(free, self.settings.lease, self.settings.wait) => r,
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
            };
            match received {
                Ok(deliveries) => {
                    failures = 0;
                    for delivery in deliveries {
                        self.spawn(&mut hand, delivery);
                    }
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff(
                        failures,
                        Duration::from_secs(1),
                        Duration::from_secs(60),
                        0.5,
                    );
                    tracing::warn!(error = %e, retry_in = ?delay, queue = self.queue.kind(), "cannot receive renewal jobs");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        changed = shutdown.changed() => if changed.is_err() { break },
                    }
                }
            }
        }
        if !hand.deliveries.is_empty() {
            self.drain(&mut hand, Some(self.settings.shutdown_grace))
                .await;
        }
    }

    /// One delivery, from heartbeat to acknowledgement.
    async fn process(&self, delivery: JobDelivery) {
        let job = &delivery.job;
        // Aborted on every way out, cancellation included: a heartbeat
        // outliving its job would keep a handed-back job hidden.
        let heartbeat = AbortOnDrop({
            let queue = self.queue.clone();
            let delivery = delivery.clone();
            let lease = self.settings.lease;
            tokio::spawn(async move {
                let every = (lease / 3).max(Duration::from_millis(200));
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = queue.heartbeat(&delivery, lease).await {
                        tracing::warn!(job = %delivery.job.id, error = %e, "heartbeat failed");
                        if matches!(e, DomainError::Conflict(_)) {
                            return;
                        }
                    }
                }
            })
        });
        let attempt = async {
            let now = OffsetDateTime::now_utc();
            if self.queue.in_metadata_database() {
                // One commit for the version, its event and this ack.
                self.services.run_renewal_delivery(&delivery, now).await
            } else {
                let outcome = self.services.run_renewal_job(job, now).await?;
                Ok((outcome, false))
            }
        };
        let Ok(result) = tokio::time::timeout(self.settings.work_timeout, attempt).await else {
            drop(heartbeat);
            // The attempt is dropped where it stood; the idempotency key keeps
            // a retry from issuing twice if the CA had answered meanwhile.
            let error = format!(
                "renewal attempt cut short after {} s without an outcome (work timeout)",
                self.settings.work_timeout.as_secs_f64()
            );
            if let Err(e) = self.failed(&delivery, &error).await {
                tracing::warn!(job = %job.id, error = %e, "could not record a timed-out renewal job");
            }
            return;
        };
        drop(heartbeat);
        let ack = match result {
            // A policy refusal is permanent: retrying the same certificate
            // against the same policy only repeats it. Dead-letter at once with
            // the reason (the job's `last_error`); the services already audited
            // it and told the team.
            Ok((JobOutcome::PolicyRefused { reason }, _)) => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::error!(certificate = %job.certificate_id, version = job.version, %reason, "renewal refused by issuance policy; dead-lettered");
                self.queue.dead_letter(&delivery, &reason).await
            }
            Ok((outcome, acknowledged)) => {
                match outcome {
                    JobOutcome::Renewed { version } => {
                        self.stats.renewed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(certificate = %job.certificate_id, version, attempt = job.attempts, "renewed");
                    }
                    JobOutcome::AlreadyRenewed => {
                        self.stats.already_renewed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(certificate = %job.certificate_id, version = job.version, "already renewed; duplicate job acknowledged");
                    }
                    JobOutcome::NotRenewable => {
                        tracing::info!(certificate = %job.certificate_id, "not active any more; job dropped");
                    }
                    JobOutcome::PolicyRefused { .. } => {}
                }
                if acknowledged {
                    Ok(())
                } else {
                    self.queue.complete(&delivery).await
                }
            }
            // A deleted certificate will never renew: nothing to retry.
            Err(DomainError::NotFound(what)) => {
                tracing::warn!(job = %job.id, %what, "renewal target vanished; job dropped");
                self.queue.complete(&delivery).await
            }
            Err(e) => self.failed(&delivery, &e.to_string()).await,
        };
        if let Err(e) = ack {
            // The lease runs out and the job comes back; the idempotency key
            // keeps that from issuing twice.
            tracing::warn!(job = %job.id, error = %e, "could not acknowledge a renewal job");
        }
    }

    async fn failed(&self, delivery: &JobDelivery, error: &str) -> DomainResult<()> {
        let job = &delivery.job;
        let now = OffsetDateTime::now_utc();
        let dead = job.attempts >= job.max_attempts;
        let ack = if dead {
            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::error!(certificate = %job.certificate_id, version = job.version, attempts = job.attempts, error, "renewal dead-lettered");
            self.queue.dead_letter(delivery, error).await
        } else {
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            // Seeded by job and attempt: retries of a fleet spread out.
            let u = jitter_seed(job.id, job.attempts);
            let delay = backoff(
                job.attempts,
                self.settings.backoff_base,
                self.settings.backoff_cap,
                u,
            );
            tracing::warn!(certificate = %job.certificate_id, version = job.version, attempt = job.attempts, retry_in = ?delay, error, "renewal failed; will retry");
            self.queue.retry(delivery, error, delay).await
        };
        // The attempt failed whether or not the queue took the acknowledgement
        // (a lost lease means another worker has the job): audit and alert anyway.
        self.services.renewal_failed(job, error, dead, now).await?;
        ack
    }
}
