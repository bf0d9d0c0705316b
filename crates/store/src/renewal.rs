//! The renewal ledger ([`RenewalLedger`]) and the claim/lease statements of
//! the database renewal queue ([`crate::DbRenewalQueue`]), over the
//! `renewal_jobs` table, written once for every [`Backend`].
//!
//! A delivery is a lease: claiming sets a fresh random `lease_token` (the
//! delivery's receipt) and `lease_until`; heartbeat, complete, retry and
//! dead-letter only change a running job whose token is still the receipt's,
//! so a worker whose lease expired and was handed to another cannot touch the
//! job any more. Claims lock the rows they take (`SKIP_LOCKED` on PostgreSQL,
//! the write lock on SQLite), so two workers never claim one job.

use std::time::Duration as StdDuration;

use async_trait::async_trait;
use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use certflow_core::model::AuditEvent;
use certflow_core::model::CertificateStatus;
use certflow_core::ports::RenewalLedger;
use certflow_core::renewal::{DueVersion, JobDelivery, JobState, QueueStats, RenewalJob};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::insert_audit;
use crate::codec::{self, get_time, get_u32, get_uuid, id, job_columns, secs};
use crate::error::{Violation, conflict, map};
use crate::query::{Backend, Columns, Sql};
use crate::store::{SqlStore, execute, fetch_all, fetch_optional};

/// Most jobs one `receive` hands out.
const MAX_RECEIVE: u32 = 100;

/// Jobs per multi-row `INSERT` (13 placeholders each, far below either
/// backend's limit on a statement's parameters).
const INSERT_CHUNK: usize = 500;

/// Most due versions one `due_without_job` page returns.
const MAX_DUE_PAGE: u32 = 1000;

/// `INSERT` of `renewal_jobs` rows, before their values.
const JOB_INSERT: &str = concat!(
    "INSERT INTO renewal_jobs (",
    job_columns!(),
    ", expires_at)"
);

/// Whole seconds covering `d`, rounded up so a lease never ends early.
fn ceil_secs(d: StdDuration) -> i64 {
    let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    if d.subsec_nanos() > 0 {
        whole.saturating_add(1)
    } else {
        whole
    }
}

/// Column value of `now + d`.
fn after(now: OffsetDateTime, d: StdDuration) -> i64 {
    secs(now).saturating_add(ceil_secs(d))
}

pub(crate) fn lease_lost(job: Uuid) -> DomainError {
    DomainError::Conflict(format!(
        "lease lost: renewal job {job} is no longer leased to this delivery"
    ))
}

#[async_trait]
impl<B: Backend> RenewalLedger for SqlStore<B> {
    async fn insert_renewal_job(&self, job: &RenewalJob) -> DomainResult<bool> {
        // The certificate's notAfter is the replaced version's: the queue's
        // urgency (see `claim_jobs`).
        let sql = Sql::new(concat!(
            "INSERT INTO renewal_jobs (",
            job_columns!(),
            ", expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             COALESCE((SELECT c.not_after FROM certificates c WHERE c.id = $2), \
             9223372036854775807)) \
             ON CONFLICT (certificate_id, version) DO NOTHING RETURNING id"
        ))
        .bind(id(job.id))
        .bind(id(job.certificate_id))
        .bind(i64::from(job.version))
        .bind(job.state.as_str())
        .bind(i64::from(job.attempts))
        .bind(i64::from(job.max_attempts))
        .bind(secs(job.run_at))
        .bind(job.lease_until.map(secs))
        .bind(job.last_attempt_at.map(secs))
        .bind(job.last_error.as_deref())
        .bind(secs(job.created_at))
        .bind(secs(job.updated_at));
        let mut conn = self.writer().acquire().await.map_err(map)?;
        let inserted = B::fetch_optional(&mut conn, sql).await.map_err(|e| {
            conflict(e, |v| {
                (v == Violation::PrimaryKey)
                    .then(|| format!("renewal job {} already exists", job.id))
            })
        })?;
        Ok(inserted.is_some())
    }

    async fn insert_renewal_jobs(&self, jobs: &[RenewalJob]) -> DomainResult<Vec<bool>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut inserted = std::collections::HashSet::with_capacity(jobs.len());
        for chunk in jobs.chunks(INSERT_CHUNK) {
            let rows = B::fetch_all(&mut tx, insert_jobs_sql(chunk))
                .await
                .map_err(|e| {
                    conflict(e, |v| {
                        (v == Violation::PrimaryKey)
                            .then(|| "a renewal job of this batch already exists".to_owned())
                    })
                })?;
            for row in rows {
                inserted.insert(row.text("id")?);
            }
        }
        tx.commit().await.map_err(map)?;
        Ok(jobs.iter().map(|j| inserted.contains(&id(j.id))).collect())
    }

    async fn due_without_job(
        &self,
        now: OffsetDateTime,
        after: Option<&DueVersion>,
        limit: u32,
    ) -> DomainResult<Vec<DueVersion>> {
        let rows = self.fetch_all(due_page_sql(now, after, limit)).await?;
        rows.iter()
            .map(|row| {
                Ok(DueVersion {
                    certificate_id: get_uuid(row, "id")?,
                    version: get_u32(row, "current_version")?,
                    renew_after: get_time(row, "renew_after")?,
                })
            })
            .collect()
    }

    async fn delete_renewal_job(&self, job_id: Uuid) -> DomainResult<()> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        execute::<B>(
            &mut conn,
            Sql::new("DELETE FROM renewal_jobs WHERE id = $1").bind(id(job_id)),
        )
        .await
    }

    async fn update_renewal_job(
        &self,
        job: &RenewalJob,
        audit: Option<&AuditEvent>,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        // A job leaving `running` through the ledger drops its lease, so a
        // database-queue worker still holding the receipt gets "lease lost".
        let sql = Sql::new(
            "UPDATE renewal_jobs SET state = $1, attempts = $2, max_attempts = $3, run_at = $4, \
             lease_until = $5, last_attempt_at = $6, last_error = $7, updated_at = $8, \
             lease_token = CASE WHEN $1 = 'running' THEN lease_token ELSE NULL END \
             WHERE id = $9 RETURNING id",
        )
        .bind(job.state.as_str())
        .bind(i64::from(job.attempts))
        .bind(i64::from(job.max_attempts))
        .bind(secs(job.run_at))
        .bind(job.lease_until.map(secs))
        .bind(job.last_attempt_at.map(secs))
        .bind(job.last_error.as_deref())
        .bind(secs(job.updated_at))
        .bind(id(job.id));
        if fetch_optional::<B>(&mut tx, sql).await?.is_none() {
            return Err(DomainError::NotFound(format!("renewal job {}", job.id)));
        }
        if let Some(event) = audit {
            insert_audit::<B>(&mut tx, event).await?;
        }
        tx.commit().await.map_err(map)
    }

    async fn get_renewal_job(&self, job_id: Uuid) -> DomainResult<Option<RenewalJob>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                job_columns!(),
                " FROM renewal_jobs WHERE id = $1"
            ))
            .bind(id(job_id)),
        )
        .await?
        .as_ref()
        .map(codec::renewal_job)
        .transpose()
    }

    async fn latest_renewal_job(&self, certificate_id: Uuid) -> DomainResult<Option<RenewalJob>> {
        // The (certificate_id, version) unique key serves the order.
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                job_columns!(),
                " FROM renewal_jobs WHERE certificate_id = $1 ORDER BY version DESC LIMIT 1"
            ))
            .bind(id(certificate_id)),
        )
        .await?
        .as_ref()
        .map(codec::renewal_job)
        .transpose()
    }

    async fn stale_renewal_jobs(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<RenewalJob>> {
        // The (state, run_at) index narrows to unfinished jobs, a small set.
        let rows = self
            .fetch_all(
                Sql::new(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM renewal_jobs WHERE state IN ('queued', 'running') AND updated_at < $1 \
                     ORDER BY updated_at, id LIMIT $2"
                ))
                .bind(secs(before))
                .bind(i64::from(limit.clamp(1, 1000))),
            )
            .await?;
        rows.iter().map(codec::renewal_job).collect()
    }

    async fn renewal_job_stats(&self, now: OffsetDateTime) -> DomainResult<QueueStats> {
        let mut tx = self.begin_read().await?;
        // Done jobs are never counted: the state index answers the rest.
        let counts = fetch_all::<B>(
            &mut tx,
            Sql::new(
                "SELECT state, COUNT(*) AS n, \
                 SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) AS retried \
                 FROM renewal_jobs WHERE state IN ('queued', 'running', 'dead') GROUP BY state",
            ),
        )
        .await?;
        // Dead jobs are finished too (an operator's matter, counted apart);
        // counting them here would make the backlog age grow forever.
        let oldest = fetch_optional::<B>(
            &mut tx,
            Sql::new(
                "SELECT MIN(created_at) AS oldest FROM renewal_jobs \
                 WHERE state IN ('queued', 'running')",
            ),
        )
        .await?;
        tx.commit().await.map_err(map)?;
        let mut stats = QueueStats::default();
        for row in counts {
            let n = u64::try_from(row.int("n")?).unwrap_or(0);
            match JobState::parse(&row.text("state")?) {
                Some(JobState::Queued) => {
                    stats.queued = n;
                    // Queued after an attempt: waiting out a failure's backoff.
                    stats.failing =
                        u64::try_from(row.opt_int("retried")?.unwrap_or(0)).unwrap_or(0);
                }
                Some(JobState::Running) => stats.running = n,
                Some(JobState::Dead) => stats.dead = n,
                _ => {}
            }
        }
        if let Some(created) = oldest.map(|r| r.opt_int("oldest")).transpose()?.flatten() {
            stats.oldest_age_secs = u64::try_from(secs(now).saturating_sub(created)).unwrap_or(0);
        }
        Ok(stats)
    }
}

/// The job-level statements of the database queue.
impl<B: Backend> SqlStore<B> {
    /// Claims up to `max` runnable jobs at `now`, leasing each for `lease`:
    /// running jobs whose lease expired (their worker died or stalled)
    /// first, then queued jobs, soonest-expiring certificate first (a
    /// short-lived certificate's renewal goes ahead of a backlog), then by
    /// `run_at`. A job that already had `max_attempts` deliveries goes to
    /// `dead` instead.
    pub(crate) async fn claim_jobs(
        &self,
        now: OffsetDateTime,
        max: u32,
        lease: StdDuration,
    ) -> DomainResult<Vec<JobDelivery>> {
        let max = i64::from(max.clamp(1, MAX_RECEIVE));
        let mut tx = self.begin_write().await?;
        let mut claimed = Vec::new();

        let mut expired = Sql::new(
            "SELECT id, attempts, max_attempts, last_error FROM renewal_jobs \
             WHERE state = 'running' AND lease_until < $1 ORDER BY lease_until, id LIMIT $2",
        )
        .bind(secs(now))
        .bind(max);
        expired.push(B::SKIP_LOCKED);
        for row in fetch_all::<B>(&mut tx, expired).await? {
            let job = row.text("id")?;
            let attempts = row.int("attempts")?;
            let max_attempts = row.int("max_attempts")?;
            if attempts >= max_attempts {
                let error = format!(
                    "lease expired on attempt {attempts} of {max_attempts} without an \
                     acknowledgement (worker lost); giving up"
                );
                bury::<B>(&mut tx, &job, now, &error).await?;
            } else {
                let error = format!(
                    "lease expired on attempt {attempts} without an acknowledgement (worker lost)"
                );
                claimed.push(claim::<B>(&mut tx, &job, now, lease, Some(&error)).await?);
            }
        }

        let remaining = max - i64::try_from(claimed.len()).unwrap_or(max);
        if remaining > 0 {
            let mut queued = Sql::new(
                "SELECT id, attempts, max_attempts, last_error FROM renewal_jobs \
                 WHERE state = 'queued' AND run_at <= $1 \
                 ORDER BY expires_at, run_at, id LIMIT $2",
            )
            .bind(secs(now))
            .bind(remaining);
            queued.push(B::SKIP_LOCKED);
            let mut take = Vec::new();
            for row in fetch_all::<B>(&mut tx, queued).await? {
                let job = row.text("id")?;
                let attempts = row.int("attempts")?;
                let max_attempts = row.int("max_attempts")?;
                if attempts >= max_attempts {
                    // Retried after its last allowed attempt: never deliver it again.
                    let last = row.opt_text("last_error")?.unwrap_or_default();
                    let error = format!("gave up after {attempts} attempts; last error: {last}");
                    bury::<B>(&mut tx, &job, now, &error).await?;
                } else {
                    take.push(job);
                }
            }
            claimed.extend(claim_queued::<B>(&mut tx, &take, now, lease).await?);
        }
        tx.commit().await.map_err(map)?;
        Ok(claimed)
    }

    /// Runs `set` (an `UPDATE renewal_jobs SET ...` whose last two
    /// placeholders are the job id and the receipt) on the delivery's job if
    /// its lease is still this delivery's.
    async fn on_lease(
        &self,
        delivery: &JobDelivery,
        mut set: Sql,
        next: usize,
    ) -> DomainResult<()> {
        set.push(&format!(
            " WHERE id = ${next} AND lease_token = ${} AND state = 'running' RETURNING id",
            next + 1
        ));
        let set = set
            .bind(id(delivery.job.id))
            .bind(delivery.receipt.as_str());
        if self.write_returning(set).await?.is_empty() {
            return Err(lease_lost(delivery.job.id));
        }
        Ok(())
    }

    pub(crate) async fn heartbeat_job(
        &self,
        delivery: &JobDelivery,
        now: OffsetDateTime,
        lease: StdDuration,
    ) -> DomainResult<()> {
        let set = Sql::new("UPDATE renewal_jobs SET lease_until = $1, updated_at = $2")
            .bind(after(now, lease))
            .bind(secs(now));
        self.on_lease(delivery, set, 3).await
    }

    pub(crate) async fn complete_job(
        &self,
        delivery: &JobDelivery,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let set = Sql::new(
            "UPDATE renewal_jobs SET state = 'done', lease_token = NULL, lease_until = NULL, \
             last_error = NULL, updated_at = $1",
        )
        .bind(secs(now));
        self.on_lease(delivery, set, 2).await
    }

    /// Completes each of `deliveries` whose lease is still its own, in one
    /// statement; returns, in order, whether each was (else its lease was
    /// lost). The database queue's acknowledgements, committed in groups.
    pub(crate) async fn complete_jobs(
        &self,
        deliveries: &[JobDelivery],
        now: OffsetDateTime,
    ) -> DomainResult<Vec<bool>> {
        let ids: std::collections::HashSet<Uuid> = deliveries.iter().map(|d| d.job.id).collect();
        if ids.len() < deliveries.len() {
            // Two deliveries of one job (one of them stale): the rows
            // returned could not tell which held the lease, so one by one.
            let mut done = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                done.push(match self.complete_job(delivery, now).await {
                    Ok(()) => true,
                    Err(DomainError::Conflict(_)) => false,
                    Err(e) => return Err(e),
                });
            }
            return Ok(done);
        }
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let sql = complete_jobs_sql(deliveries.iter(), now);
        let done = completed(&self.write_returning(sql).await?)?;
        Ok(deliveries
            .iter()
            .map(|d| done.contains(&id(d.job.id)))
            .collect())
    }

    pub(crate) async fn retry_job(
        &self,
        delivery: &JobDelivery,
        now: OffsetDateTime,
        error: &str,
        retry_in: StdDuration,
    ) -> DomainResult<()> {
        let set = Sql::new(
            "UPDATE renewal_jobs SET state = 'queued', run_at = $1, lease_token = NULL, \
             lease_until = NULL, last_error = $2, updated_at = $3",
        )
        .bind(after(now, retry_in))
        .bind(error)
        .bind(secs(now));
        self.on_lease(delivery, set, 4).await
    }

    /// Hands a running job back: queued, runnable at `now`, lease dropped,
    /// and the interrupted delivery not counted as an attempt.
    pub(crate) async fn release_job(
        &self,
        delivery: &JobDelivery,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let set = Sql::new(
            "UPDATE renewal_jobs SET state = 'queued', run_at = $1, lease_token = NULL, \
             lease_until = NULL, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, \
             updated_at = $1",
        )
        .bind(secs(now));
        self.on_lease(delivery, set, 2).await
    }

    pub(crate) async fn dead_letter_job(
        &self,
        delivery: &JobDelivery,
        now: OffsetDateTime,
        error: &str,
    ) -> DomainResult<()> {
        let set = Sql::new(
            "UPDATE renewal_jobs SET state = 'dead', lease_token = NULL, lease_until = NULL, \
             last_error = $1, updated_at = $2",
        )
        .bind(error)
        .bind(secs(now));
        self.on_lease(delivery, set, 3).await
    }
}

/// One multi-row insert of `jobs`, returning the ids inserted. Each row's
/// `expires_at` is its certificate's notAfter, as in `insert_renewal_job`.
fn insert_jobs_sql(jobs: &[RenewalJob]) -> Sql {
    let mut sql = Sql::new(JOB_INSERT);
    sql.push(" VALUES ");
    for (i, job) in jobs.iter().enumerate() {
        sql.push(if i == 0 { "(" } else { ", (" });
        let values: [crate::query::Param; 12] = [
            id(job.id).into(),
            id(job.certificate_id).into(),
            i64::from(job.version).into(),
            job.state.as_str().into(),
            i64::from(job.attempts).into(),
            i64::from(job.max_attempts).into(),
            secs(job.run_at).into(),
            job.lease_until.map(secs).into(),
            job.last_attempt_at.map(secs).into(),
            job.last_error.as_deref().into(),
            secs(job.created_at).into(),
            secs(job.updated_at).into(),
        ];
        for value in values {
            sql.push_bind(value).push(", ");
        }
        sql.push("COALESCE((SELECT c.not_after FROM certificates c WHERE c.id = ")
            .push_bind(id(job.certificate_id))
            .push("), 9223372036854775807))");
    }
    sql.push(" ON CONFLICT (certificate_id, version) DO NOTHING RETURNING id");
    sql
}

/// The scheduler's page: `due_query`'s conditions and order, plus the keyset
/// bound after `after`, so each page starts where the last ended instead of
/// walking the due index again past every version that has a job by now.
fn due_page_sql(now: OffsetDateTime, after: Option<&DueVersion>, limit: u32) -> Sql {
    let mut sql = Sql::new(
        "SELECT c.id, c.current_version, c.renew_after FROM certificates c \
         WHERE c.status = $1 AND c.renew_after <= $2 AND c.managed = TRUE",
    )
    .bind(CertificateStatus::Active.as_str())
    // Whole seconds, rounded down, as `due_query`.
    .bind(secs(now));
    if let Some(after) = after {
        // Spelled out rather than as a row value: both planners turn the
        // first term into the start of the index range.
        let renew_after = secs(after.renew_after);
        sql.push(" AND c.renew_after >= ")
            .push_bind(renew_after)
            .push(" AND (c.renew_after > ")
            .push_bind(renew_after)
            .push(" OR c.id > ")
            .push_bind(id(after.certificate_id))
            .push(")");
    }
    sql.push(
        " AND NOT EXISTS (SELECT 1 FROM renewal_jobs j \
         WHERE j.certificate_id = c.id AND j.version = c.current_version) \
         ORDER BY c.renew_after, c.id LIMIT ",
    )
    .push_bind(i64::from(limit.clamp(1, MAX_DUE_PAGE)));
    sql
}

/// Leases one locked job to a new delivery.
async fn claim<B: Backend>(
    conn: &mut B::Connection,
    job: &str,
    now: OffsetDateTime,
    lease: StdDuration,
    error: Option<&str>,
) -> DomainResult<JobDelivery> {
    let receipt = Uuid::new_v4().simple().to_string();
    let sql = Sql::new(concat!(
        "UPDATE renewal_jobs SET state = 'running', attempts = attempts + 1, lease_token = $1, \
         lease_until = $2, last_attempt_at = $3, updated_at = $3, \
         last_error = COALESCE($4, last_error) WHERE id = $5 RETURNING ",
        job_columns!()
    ))
    .bind(receipt.as_str())
    .bind(after(now, lease))
    .bind(secs(now))
    .bind(error)
    .bind(job);
    let row = fetch_optional::<B>(conn, sql)
        .await?
        .ok_or_else(|| DomainError::Internal(format!("claimed renewal job {job} vanished")))?;
    Ok(JobDelivery {
        job: codec::renewal_job(&row)?,
        receipt,
    })
}

/// Leases the locked queued jobs `ids` to new deliveries in one statement,
/// in the order given. They share one fresh receipt: every statement on a
/// lease names the job as well, so the receipt only has to tell this claim
/// from every other.
async fn claim_queued<B: Backend>(
    conn: &mut B::Connection,
    ids: &[String],
    now: OffsetDateTime,
    lease: StdDuration,
) -> DomainResult<Vec<JobDelivery>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let receipt = Uuid::new_v4().simple().to_string();
    let mut sql = Sql::new(
        "UPDATE renewal_jobs SET state = 'running', attempts = attempts + 1, lease_token = $1, \
         lease_until = $2, last_attempt_at = $3, updated_at = $3 WHERE id IN (",
    )
    .bind(receipt.as_str())
    .bind(after(now, lease))
    .bind(secs(now));
    for (i, job) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push_bind(job.as_str());
    }
    sql.push(concat!(") RETURNING ", job_columns!()));
    let mut leased = std::collections::HashMap::with_capacity(ids.len());
    for row in fetch_all::<B>(conn, sql).await? {
        let job = codec::renewal_job(&row)?;
        leased.insert(id(job.id), job);
    }
    ids.iter()
        .map(|job| {
            let job = leased.remove(job).ok_or_else(|| {
                DomainError::Internal(format!("claimed renewal job {job} vanished"))
            })?;
            Ok(JobDelivery {
                job,
                receipt: receipt.clone(),
            })
        })
        .collect()
}

/// Moves one locked job to `dead`.
async fn bury<B: Backend>(
    conn: &mut B::Connection,
    job: &str,
    now: OffsetDateTime,
    error: &str,
) -> DomainResult<()> {
    tracing::warn!(job, error, "renewal job dead-lettered by the queue");
    execute::<B>(
        conn,
        Sql::new(
            "UPDATE renewal_jobs SET state = 'dead', lease_token = NULL, lease_until = NULL, \
             last_error = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(secs(now))
        .bind(job),
    )
    .await
}

/// Marks done each of `deliveries` (of distinct jobs, at least one) whose
/// lease is still its own, at `now`; returns the ids of those it marked.
pub(crate) fn complete_jobs_sql<'a>(
    deliveries: impl Iterator<Item = &'a JobDelivery>,
    now: OffsetDateTime,
) -> Sql {
    let mut sql = Sql::new(
        "UPDATE renewal_jobs SET state = 'done', lease_token = NULL, lease_until = NULL, \
         last_error = NULL, updated_at = $1 WHERE state = 'running' AND (",
    )
    .bind(secs(now));
    // Pair by pair: a job is done only by the delivery holding its lease.
    for (i, delivery) in deliveries.enumerate() {
        sql.push(if i == 0 { "(id = " } else { " OR (id = " })
            .push_bind(id(delivery.job.id))
            .push(" AND lease_token = ")
            .push_bind(delivery.receipt.as_str())
            .push(")");
    }
    sql.push(") RETURNING id");
    sql
}

/// The job ids [`complete_jobs_sql`]'s rows name.
pub(crate) fn completed(rows: &[impl Columns]) -> DomainResult<std::collections::HashSet<String>> {
    rows.iter().map(|row| row.text("id")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_up_to_whole_seconds() {
        assert_eq!(ceil_secs(StdDuration::from_secs(30)), 30);
        assert_eq!(ceil_secs(StdDuration::from_millis(1)), 1);
        assert_eq!(ceil_secs(StdDuration::from_millis(1500)), 2);
        assert_eq!(ceil_secs(StdDuration::MAX), i64::MAX);
    }
}
