//! The scheduler: finds what is due and enqueues one job per (certificate,
//! version). Several schedulers on one database are safe: the ledger's unique
//! key turns the second enqueue of a job into a no-op.
//!
//! Each scan also looks for certificates at risk: a current version with less
//! time left than a renewal is expected to take, whatever the cause (no live
//! worker, the CA down, a job stuck). Each is announced once per version
//! (`renewal-at-risk`, dedupe key `renewal-at-risk:<certificate id>:v<version>`),
//! so several schedulers announce it once.

use std::sync::Arc;
use std::time::Duration;

use certflow_core::error::DomainResult;
use certflow_core::model::{Certificate, CertificateQuery, CertificateStatus, SortKey};
use certflow_core::notify::{EventKind, Notification};
use certflow_core::ports::{MetadataStore, NotificationStore, RenewalLedger};
use certflow_core::renewal::{DueVersion, RenewalJob, RenewalQueue};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

/// Certificates read per page when looking for those at risk.
const AT_RISK_PAGE: u32 = 500;

/// The most due versions one ledger page holds (`due_without_job`'s cap).
const MAX_DUE_PAGE: u32 = 1000;

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
    /// Certificates at risk (less time left than a renewal takes), announced
    /// now or before; 0 when at-risk announcements are off.
    pub at_risk: u64,
}

/// Where at-risk certificates are announced, and from when on.
struct AtRisk {
    notifications: Arc<dyn NotificationStore>,
    ledger: Arc<dyn RenewalLedger>,
    /// A current version with less time left than this is at risk.
    within: Duration,
}

/// Finds due certificates and enqueues their renewal.
pub struct Scheduler {
    store: Arc<dyn MetadataStore>,
    queue: Arc<dyn RenewalQueue>,
    settings: SchedulerSettings,
    /// The due scan's keyset pages, when given; else `store`'s
    /// `due_for_renewal`, which starts at the front of the due index on every page.
    ledger: Option<Arc<dyn RenewalLedger>>,
    at_risk: Option<AtRisk>,
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
            ledger: None,
            at_risk: None,
        }
    }

    /// The same scheduler paging through what is due with `ledger`'s
    /// keyset scan (`due_without_job`), on the same database as the store: a
    /// pass reads each due certificate once, however many pages it takes.
    #[must_use]
    pub fn with_ledger(mut self, ledger: Arc<dyn RenewalLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// The same scheduler announcing, on each scan, every active managed
    /// certificate whose current version has less than `within` left
    /// (`renewal-at-risk` into `notifications`, with the state of its renewal
    /// job from `ledger`).
    #[must_use]
    pub fn with_at_risk(
        mut self,
        notifications: Arc<dyn NotificationStore>,
        ledger: Arc<dyn RenewalLedger>,
        within: Duration,
    ) -> Self {
        self.at_risk = Some(AtRisk {
            notifications,
            ledger,
            within,
        });
        self
    }

    /// One scan at `now`: pages through everything due and enqueues it, a
    /// page's jobs in one batch.
    pub async fn scan(&self, now: OffsetDateTime) -> DomainResult<ScanReport> {
        let mut report = ScanReport::default();
        match &self.ledger {
            Some(ledger) => {
                self.enqueue_keyset(ledger.as_ref(), now, &mut report)
                    .await?
            }
            None => self.enqueue_from_front(now, &mut report).await?,
        }
        // A job whose hand-off to an external queue was lost (a crash between
        // the ledger insert and the send) would otherwise never run: the due
        // query skips versions that have a job.
        report.recovered = self.queue.recover().await?;
        // Renewal goes on whether or not the announcement can be made.
        match self.announce_at_risk(now).await {
            Ok(n) => report.at_risk = n,
            Err(e) => tracing::warn!(error = %e, "cannot look for renewals at risk"),
        }
        Ok(report)
    }

    /// Pages through the ledger's due versions, each page after the last row
    /// of the one before, until a short page.
    async fn enqueue_keyset(
        &self,
        ledger: &dyn RenewalLedger,
        now: OffsetDateTime,
        report: &mut ScanReport,
    ) -> DomainResult<()> {
        let limit = self.settings.batch.clamp(1, MAX_DUE_PAGE);
        let mut after: Option<DueVersion> = None;
        loop {
            let page = ledger.due_without_job(now, after.as_ref(), limit).await?;
            let jobs: Vec<RenewalJob> = page
                .iter()
                .map(|due| {
                    RenewalJob::new(
                        due.certificate_id,
                        due.version,
                        self.settings.max_attempts,
                        now,
                    )
                })
                .collect();
            self.enqueue_page(&jobs, report).await?;
            // A page shorter than asked for is the end.
            if page.len() < limit as usize {
                return Ok(());
            }
            after = page.last().copied();
        }
    }

    /// Pages through the store's due certificates from the front of the due
    /// index each time (the version of a certificate enqueued by the page
    /// before drops out of the next).
    async fn enqueue_from_front(
        &self,
        now: OffsetDateTime,
        report: &mut ScanReport,
    ) -> DomainResult<()> {
        loop {
            let batch = self.store.due_for_renewal(now, self.settings.batch).await?;
            let jobs: Vec<RenewalJob> = batch
                .iter()
                .map(|c| RenewalJob::new(c.id, c.current_version, self.settings.max_attempts, now))
                .collect();
            let fresh = self.enqueue_page(&jobs, report).await?;
            // The due query leaves out certificates whose job exists, so a
            // full batch means more may follow; a batch that enqueued nothing
            // would only repeat itself (another scheduler got there first).
            if batch.len() < self.settings.batch as usize || fresh == 0 {
                return Ok(());
            }
        }
    }

    /// Enqueues one page's jobs in one batch; returns how many were new.
    async fn enqueue_page(
        &self,
        jobs: &[RenewalJob],
        report: &mut ScanReport,
    ) -> DomainResult<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let fresh = self.queue.enqueue_batch(jobs).await?;
        let fresh = fresh.iter().filter(|&&new| new).count() as u64;
        report.due += jobs.len() as u64;
        report.enqueued += fresh;
        Ok(fresh)
    }

    /// Announces the certificates at risk at `now` (once per version);
    /// returns how many there are.
    async fn announce_at_risk(&self, now: OffsetDateTime) -> DomainResult<u64> {
        let Some(at_risk) = &self.at_risk else {
            return Ok(0);
        };
        let within = time::Duration::try_from(at_risk.within).unwrap_or(time::Duration::MAX);
        let mut found = 0;
        let mut offset = 0u64;
        loop {
            let page = self
                .store
                .list_certificates(&CertificateQuery {
                    status: Some(CertificateStatus::Active),
                    managed: Some(true),
                    expires_before: Some(now.saturating_add(within)),
                    sort: SortKey::NotAfter,
                    limit: AT_RISK_PAGE,
                    offset,
                    ..CertificateQuery::default()
                })
                .await?;
            for cert in &page.items {
                let job = at_risk.ledger.latest_renewal_job(cert.id).await?;
                let job = job.filter(|j| j.version == cert.current_version);
                let n = at_risk_notice(cert, job.as_ref(), at_risk.within, now);
                let key = format!("renewal-at-risk:{}:v{}", cert.id, cert.current_version);
                if at_risk.notifications.publish(&n, Some(&key)).await? {
                    tracing::warn!(
                        certificate = %cert.id,
                        name = %cert.name,
                        version = cert.current_version,
                        seconds_left = (cert.not_after - now).whole_seconds(),
                        job = job.as_ref().map_or("none", |j| j.state.as_str()),
                        "renewal at risk: the current version expires before a renewal is expected to finish"
                    );
                }
            }
            found += page.items.len() as u64;
            offset += page.items.len() as u64;
            if page.items.len() < AT_RISK_PAGE as usize || offset >= page.total {
                return Ok(found);
            }
        }
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

/// The `renewal-at-risk` notification of `cert` at `now`.
fn at_risk_notice(
    cert: &Certificate,
    job: Option<&RenewalJob>,
    within: Duration,
    now: OffsetDateTime,
) -> Notification {
    let left = (cert.not_after - now).whole_seconds();
    let state = match job {
        None => "no renewal job yet (is a scheduler running?)".to_owned(),
        Some(j) => {
            let mut s = format!("renewal job {}, attempt {}", j.state.as_str(), j.attempts);
            if let Some(e) = &j.last_error {
                s.push_str(&format!(", last error: {e}"));
            }
            s
        }
    };
    let summary = if left <= 0 {
        format!(
            "Certificate {} (team {}) expired at {} before it was renewed; {state}.",
            cert.name, cert.team, cert.not_after
        )
    } else {
        format!(
            "Certificate {} (team {}) expires at {}, in {left} s, less than a renewal is \
             expected to take ({} s), and is not renewed yet; {state}.",
            cert.name,
            cert.team,
            cert.not_after,
            within.as_secs()
        )
    };
    Notification {
        id: Uuid::now_v7(),
        kind: EventKind::RenewalAtRisk,
        team: cert.team.clone(),
        certificate_id: Some(cert.id),
        certificate_name: Some(cert.name.clone()),
        version: Some(cert.current_version),
        not_after: Some(cert.not_after),
        days_left: None,
        reason: job.and_then(|j| j.last_error.clone()),
        summary,
        details: json!({
            "seconds_left": left,
            "expected_renewal_secs": within.as_secs(),
            "job": job.map(|j| json!({
                "state": j.state.as_str(),
                "attempts": j.attempts,
                "last_error": j.last_error,
            })),
        }),
        at: now,
    }
}
