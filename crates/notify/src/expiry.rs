//! Expiry warnings and the daily digest.
//!
//! Each tick scans the active certificates whose current version expires
//! within the largest threshold of [`EXPIRY_THRESHOLDS_DAYS`] and publishes one
//! [`EventKind::Expiring`] notification per certificate for the **smallest**
//! threshold it has crossed, with dedupe key
//! `expiring:<certificate id>:v<version>:<threshold days>`. So each warning goes
//! out once per version and threshold, and a certificate first seen with 5 days
//! left (imported late, or the watcher was down) gets the 7-day warning only,
//! not the 30-, 14- and 7-day ones at once. A renewal makes a new version and
//! starts the series afresh. An active certificate already expired counts as
//! having crossed the 1-day threshold: it gets one "has expired" warning.
//!
//! With the digest on, the first tick of each UTC day also publishes, per team
//! with something expiring within the largest threshold, one
//! [`EventKind::Digest`] listing it (dedupe key `digest:<team>:<YYYY-MM-DD>`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use certflow_core::DomainResult;
use certflow_core::model::{Certificate, CertificateQuery, CertificateStatus, SortKey};
use certflow_core::notify::{EXPIRY_THRESHOLDS_DAYS, EventKind, Notification};
use certflow_core::ports::{MetadataStore, NotificationStore};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::text::{DigestDetails, DigestEntry, human_time};

const PAGE: u32 = 500;
const DAY_SECS: i64 = 86_400;

/// Expiry watcher settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpirySettings {
    /// How often [`ExpiryWatcher::run`] scans, seconds.
    pub interval_secs: u64,
    /// Publish the daily per-team digest.
    pub digest: bool,
}

impl Default for ExpirySettings {
    fn default() -> Self {
        Self {
            interval_secs: 3600,
            digest: true,
        }
    }
}

/// What one [`ExpiryWatcher::tick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ExpiryReport {
    /// Certificates expiring within the largest threshold.
    pub expiring: u32,
    /// Warnings published by this tick.
    pub published: u32,
    /// Warnings already published earlier (same version and threshold).
    pub already_sent: u32,
    /// Digests published by this tick.
    pub digests: u32,
}

/// Publishes expiry warnings (and digests) into the notification store; the
/// [`crate::Dispatcher`] delivers them.
#[derive(Clone)]
pub struct ExpiryWatcher {
    metadata: Arc<dyn MetadataStore>,
    notifications: Arc<dyn NotificationStore>,
    settings: ExpirySettings,
}

impl std::fmt::Debug for ExpiryWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiryWatcher")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Whole days from `now` to `not_after`, 0 once expired.
fn days_left(now: OffsetDateTime, not_after: OffsetDateTime) -> u32 {
    let secs = (not_after - now).whole_seconds().max(0);
    u32::try_from(secs / DAY_SECS).unwrap_or(u32::MAX)
}

/// The smallest threshold `not_after` is within at `now`, if any.
pub fn crossed_threshold(now: OffsetDateTime, not_after: OffsetDateTime) -> Option<u32> {
    let left = (not_after - now).whole_seconds();
    EXPIRY_THRESHOLDS_DAYS
        .into_iter()
        .filter(|t| left <= i64::from(*t) * DAY_SECS)
        .min()
}

/// Dedupe key of a certificate version's warning at one threshold.
pub fn expiring_key(cert: &Certificate, threshold_days: u32) -> String {
    format!(
        "expiring:{}:v{}:{threshold_days}",
        cert.id, cert.current_version
    )
}

impl ExpiryWatcher {
    /// A watcher reading certificates from `metadata` and publishing into `notifications`.
    pub fn new(
        metadata: Arc<dyn MetadataStore>,
        notifications: Arc<dyn NotificationStore>,
        settings: ExpirySettings,
    ) -> Self {
        Self {
            metadata,
            notifications,
            settings,
        }
    }

    /// One scan at `now`.
    pub async fn tick(&self, now: OffsetDateTime) -> DomainResult<ExpiryReport> {
        let horizon_days = EXPIRY_THRESHOLDS_DAYS.into_iter().max().unwrap_or(30);
        let expiring = self.expiring_within(now, horizon_days).await?;
        let mut report = ExpiryReport {
            expiring: u32::try_from(expiring.len()).unwrap_or(u32::MAX),
            ..ExpiryReport::default()
        };
        for cert in &expiring {
            let Some(threshold) = crossed_threshold(now, cert.not_after) else {
                continue;
            };
            let n = warning(cert, threshold, now);
            if self
                .notifications
                .publish(&n, Some(&expiring_key(cert, threshold)))
                .await?
            {
                report.published += 1;
            } else {
                report.already_sent += 1;
            }
        }
        if self.settings.digest {
            let mut by_team: BTreeMap<&str, Vec<&Certificate>> = BTreeMap::new();
            for cert in &expiring {
                by_team.entry(cert.team.as_str()).or_default().push(cert);
            }
            let date = now.to_offset(time::UtcOffset::UTC).date();
            for (team, certs) in by_team {
                let n = digest(team, &certs, horizon_days, now);
                if self
                    .notifications
                    .publish(&n, Some(&format!("digest:{team}:{date}")))
                    .await?
                {
                    report.digests += 1;
                }
            }
        }
        Ok(report)
    }

    /// Scans every `interval_secs` until `shutdown` completes; errors are logged
    /// and the next scan tries again.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) {
        let interval = Duration::from_secs(self.settings.interval_secs.max(1));
        tokio::pin!(shutdown);
        loop {
            match self.tick(OffsetDateTime::now_utc()).await {
                Ok(r) if r.published > 0 || r.digests > 0 => {
                    tracing::info!(
                        published = r.published,
                        digests = r.digests,
                        "expiry warnings published"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "expiry scan failed"),
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Active certificates whose current version expires within `days` of
    /// `now`, soonest first.
    async fn expiring_within(
        &self,
        now: OffsetDateTime,
        days: u32,
    ) -> DomainResult<Vec<Certificate>> {
        // `expires_before` is exclusive and thresholds inclusive.
        let before = now + time::Duration::days(i64::from(days)) + time::Duration::seconds(1);
        let mut out: Vec<Certificate> = Vec::new();
        let mut offset = 0u64;
        loop {
            let page = self
                .metadata
                .list_certificates(&CertificateQuery {
                    status: Some(CertificateStatus::Active),
                    expires_before: Some(before),
                    sort: SortKey::NotAfter,
                    limit: PAGE,
                    offset,
                    ..CertificateQuery::default()
                })
                .await?;
            let n = page.items.len();
            out.extend(page.items);
            offset += n as u64;
            if n < PAGE as usize || offset >= page.total {
                break;
            }
        }
        // A certificate renewed between pages can shift the rest by one; the
        // next tick sees it.
        out.sort_by_key(|c| c.id);
        out.dedup_by_key(|c| c.id);
        out.sort_by_key(|c| (c.not_after, c.id));
        Ok(out)
    }
}

fn warning(cert: &Certificate, threshold: u32, now: OffsetDateTime) -> Notification {
    let left = days_left(now, cert.not_after);
    let summary = if cert.not_after <= now {
        format!(
            "Certificate {} (team {}) expired on {} and has not been renewed.",
            cert.name,
            cert.team,
            human_time(cert.not_after)
        )
    } else {
        format!(
            "Certificate {} (team {}) expires on {}, in {} day{}.",
            cert.name,
            cert.team,
            human_time(cert.not_after),
            left,
            if left == 1 { "" } else { "s" }
        )
    };
    Notification {
        id: Uuid::now_v7(),
        kind: EventKind::Expiring,
        team: cert.team.clone(),
        certificate_id: Some(cert.id),
        certificate_name: Some(cert.name.clone()),
        version: Some(cert.current_version),
        not_after: Some(cert.not_after),
        days_left: Some(left),
        reason: None,
        summary,
        details: serde_json::json!({ "threshold_days": threshold }),
        at: now,
    }
}

fn digest(
    team: &str,
    certs: &[&Certificate],
    within_days: u32,
    now: OffsetDateTime,
) -> Notification {
    let details = DigestDetails {
        within_days,
        certificates: certs
            .iter()
            .map(|c| DigestEntry {
                certificate_id: c.id,
                name: c.name.clone(),
                version: c.current_version,
                not_after: c.not_after,
                days_left: days_left(now, c.not_after),
            })
            .collect(),
    };
    Notification {
        id: Uuid::now_v7(),
        kind: EventKind::Digest,
        team: team.to_owned(),
        certificate_id: None,
        certificate_name: None,
        version: None,
        not_after: None,
        days_left: None,
        reason: None,
        summary: format!(
            "{} certificate{} of team {team} expire within {within_days} days.",
            certs.len(),
            if certs.len() == 1 { "" } else { "s" }
        ),
        details: serde_json::to_value(details).unwrap_or(serde_json::Value::Null),
        at: now,
    }
}
