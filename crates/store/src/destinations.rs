//! [`DestinationStore`] written once for every [`Backend`]: a certificate's
//! destinations (each its own outbox row, see migration 0016) and every
//! delivery attempt.

use async_trait::async_trait;
use certflow_core::DomainError;
use certflow_core::destinations::{
    AttemptOutcome, AwsTarget, Destination, DestinationAttempt, DestinationKind, DestinationStats,
    DestinationStatus, DestinationStore, DueDestination,
};
use certflow_core::error::DomainResult;
use certflow_core::model::{AuditEvent, CertificateStatus};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::insert_audit;
use crate::codec::{ceil_secs, get_enum, get_opt_time, get_time, get_u32, get_uuid, id, secs};
use crate::error::{Violation, conflict, corrupt, map};
use crate::query::{Backend, Columns, Sql};
use crate::store::{SqlStore, execute, fetch_all, fetch_optional};

/// Most destinations one claim leases.
const MAX_CLAIM: u32 = 100;

macro_rules! destination_columns {
    () => {
        "d.id, d.certificate_id, d.kind, d.region, d.role_arn, d.role_external_id, \
         d.listener_arn, d.default_certificate, d.status, d.external_id, d.delivered_version, \
         d.delivered_serial, d.attempts, d.next_attempt_at, d.last_error, d.verified_at, \
         d.created_by, d.created_at, d.updated_at"
    };
}

fn opt_u32(row: &impl Columns, col: &str) -> DomainResult<Option<u32>> {
    row.opt_int(col)?
        .map(|v| u32::try_from(v).map_err(|e| corrupt(col, e)))
        .transpose()
}

/// Decodes a row selected with [`destination_columns`].
fn destination(row: &impl Columns) -> DomainResult<Destination> {
    Ok(Destination {
        id: get_uuid(row, "id")?,
        certificate_id: get_uuid(row, "certificate_id")?,
        kind: get_enum(row, "kind", DestinationKind::parse)?,
        target: AwsTarget {
            region: row.text("region")?,
            role_arn: row.opt_text("role_arn")?,
            role_external_id: row.opt_text("role_external_id")?,
        },
        listener_arn: row.opt_text("listener_arn")?,
        default_certificate: row.int("default_certificate")? != 0,
        status: get_enum(row, "status", DestinationStatus::parse)?,
        external_id: row.opt_text("external_id")?,
        delivered_version: opt_u32(row, "delivered_version")?,
        delivered_serial: row.opt_text("delivered_serial")?,
        attempts: get_u32(row, "attempts")?,
        next_attempt_at: get_time(row, "next_attempt_at")?,
        last_error: row.opt_text("last_error")?,
        verified_at: get_opt_time(row, "verified_at")?,
        created_by: row.text("created_by")?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

fn due(row: &impl Columns) -> DomainResult<DueDestination> {
    Ok(DueDestination {
        destination: destination(row)?,
        version: get_u32(row, "current_version")?,
    })
}

fn in_list(sql: &mut Sql, ids: &[String]) {
    for (i, key) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push_bind(key.as_str());
    }
    sql.push(")");
}

#[async_trait]
impl<B: Backend> DestinationStore for SqlStore<B> {
    async fn insert_destination(&self, d: &Destination, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        if fetch_optional::<B>(
            &mut tx,
            Sql::new("SELECT 1 AS found FROM certificates WHERE id = $1")
                .bind(id(d.certificate_id)),
        )
        .await?
        .is_none()
        {
            return Err(DomainError::NotFound(format!(
                "certificate {}",
                d.certificate_id
            )));
        }
        let sql = Sql::new(
            "INSERT INTO destinations (id, certificate_id, kind, region, role_arn, \
             role_external_id, listener_arn, default_certificate, status, external_id, \
             delivered_version, delivered_serial, target_version, attempts, total_attempts, \
             next_attempt_at, lease_until, last_error, verified_at, created_by, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, NULL, NULL, \
             0, 0, $10, NULL, NULL, NULL, $11, $12, $12)",
        )
        .bind(id(d.id))
        .bind(id(d.certificate_id))
        .bind(d.kind.as_str())
        .bind(d.target.region.as_str())
        .bind(d.target.role_arn.as_deref())
        .bind(d.target.role_external_id.as_deref())
        .bind(d.listener_arn.as_deref())
        .bind(i64::from(d.default_certificate))
        .bind(d.status.as_str())
        .bind(secs(d.next_attempt_at))
        .bind(d.created_by.as_str())
        .bind(secs(d.created_at));
        B::execute(&mut tx, sql).await.map_err(|e| {
            conflict(e, |v| {
                Some(match v {
                    Violation::PrimaryKey => format!("destination {} already exists", d.id),
                    _ => format!(
                        "certificate {} already has this {} destination",
                        d.certificate_id,
                        d.kind.as_str()
                    ),
                })
            })
        })?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn certificate_destinations(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<Destination>> {
        self.fetch_all(
            Sql::new(concat!(
                "SELECT ",
                destination_columns!(),
                " FROM destinations d WHERE d.certificate_id = $1 ORDER BY d.created_at, d.id"
            ))
            .bind(id(certificate_id)),
        )
        .await?
        .iter()
        .map(destination)
        .collect()
    }

    async fn get_destination(&self, key: Uuid) -> DomainResult<Option<Destination>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                destination_columns!(),
                " FROM destinations d WHERE d.id = $1"
            ))
            .bind(id(key)),
        )
        .await?
        .as_ref()
        .map(destination)
        .transpose()
    }

    async fn delete_destination(&self, key: Uuid, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        // Explicitly rather than by cascade: SQLite enforces foreign keys
        // only when the connection enables them.
        execute::<B>(
            &mut tx,
            Sql::new("DELETE FROM destination_attempts WHERE destination_id = $1").bind(id(key)),
        )
        .await?;
        let removed = fetch_optional::<B>(
            &mut tx,
            Sql::new("DELETE FROM destinations WHERE id = $1 RETURNING id").bind(id(key)),
        )
        .await?;
        if removed.is_none() {
            return Err(DomainError::NotFound(format!("destination {key}")));
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn claim_destinations(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<DueDestination>> {
        let mut tx = self.begin_write().await?;
        // ACM destinations sort before listener ones ('aws-acm' <
        // 'aws-elbv2-listener'): a certificate's ARN exists before a
        // listener of the same claim binds it.
        let mut select = Sql::new(
            "SELECT d.id FROM destinations d JOIN certificates c ON c.id = d.certificate_id \
             WHERE c.status = $1 \
             AND (d.delivered_version IS NULL OR d.delivered_version <> c.current_version) \
             AND (d.next_attempt_at <= $2 OR d.target_version IS NULL \
                  OR d.target_version <> c.current_version) \
             AND (d.lease_until IS NULL OR d.lease_until <= $2) \
             ORDER BY d.certificate_id, d.kind, d.id LIMIT $3",
        )
        .bind(CertificateStatus::Active.as_str())
        .bind(secs(now))
        .bind(i64::from(limit.clamp(1, MAX_CLAIM)));
        select.push(B::SKIP_LOCKED);
        let ids = fetch_all::<B>(&mut tx, select)
            .await?
            .iter()
            .map(|row| row.text("id"))
            .collect::<DomainResult<Vec<_>>>()?;
        if ids.is_empty() {
            tx.commit().await.map_err(map)?;
            return Ok(Vec::new());
        }
        let mut lease = Sql::new("UPDATE destinations SET lease_until = $1 WHERE id IN (")
            .bind(ceil_secs(lease_until));
        in_list(&mut lease, &ids);
        execute::<B>(&mut tx, lease).await?;
        let mut rows = Sql::new(concat!(
            "SELECT ",
            destination_columns!(),
            ", c.current_version FROM destinations d JOIN certificates c \
             ON c.id = d.certificate_id WHERE d.id IN ("
        ));
        in_list(&mut rows, &ids);
        rows.push(" ORDER BY d.certificate_id, d.kind, d.id");
        let rows = fetch_all::<B>(&mut tx, rows).await?;
        tx.commit().await.map_err(map)?;
        rows.iter().map(due).collect()
    }

    async fn record_destination_attempt(
        &self,
        key: Uuid,
        version: u32,
        at: OffsetDateTime,
        outcome: &AttemptOutcome,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let mut lock = Sql::new("SELECT attempts, total_attempts FROM destinations WHERE id = $1")
            .bind(id(key));
        lock.push(B::FOR_UPDATE);
        let row = fetch_optional::<B>(&mut tx, lock)
            .await?
            // Detached while the attempt was in flight: nothing to record.
            .ok_or_else(|| DomainError::NotFound(format!("destination {key}")))?;
        let attempt = row.int("total_attempts")?.saturating_add(1);
        let failures = row.int("attempts")?.saturating_add(1);
        let error = match outcome {
            AttemptOutcome::Delivered { .. } => None,
            AttemptOutcome::Failed { error, .. } => Some(error.as_str()),
        };
        execute::<B>(
            &mut tx,
            Sql::new(
                "INSERT INTO destination_attempts (destination_id, attempt, version, at, error) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id(key))
            .bind(attempt)
            .bind(i64::from(version))
            .bind(secs(at))
            .bind(error),
        )
        .await?;
        let update = match outcome {
            AttemptOutcome::Delivered {
                external_id,
                serial,
            } => Sql::new(
                "UPDATE destinations SET status = $1, external_id = $2, delivered_version = $3, \
                 delivered_serial = $4, target_version = $3, attempts = 0, total_attempts = $5, \
                 last_error = NULL, lease_until = NULL, verified_at = $6, updated_at = $6 \
                 WHERE id = $7",
            )
            .bind(DestinationStatus::Delivered.as_str())
            .bind(external_id.as_str())
            .bind(i64::from(version))
            .bind(serial.as_str())
            .bind(attempt)
            .bind(secs(at)),
            AttemptOutcome::Failed {
                external_id,
                error,
                retry_at,
            } => Sql::new(
                "UPDATE destinations SET status = $1, external_id = COALESCE($2, external_id), \
                 target_version = $3, attempts = $4, total_attempts = $5, last_error = $6, \
                 next_attempt_at = $7, lease_until = NULL, updated_at = $8 WHERE id = $9",
            )
            .bind(DestinationStatus::Failed.as_str())
            .bind(external_id.as_deref())
            .bind(i64::from(version))
            .bind(failures)
            .bind(attempt)
            .bind(error.as_str())
            .bind(secs(*retry_at))
            .bind(secs(at)),
        };
        execute::<B>(&mut tx, update.bind(id(key))).await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn destination_attempts(
        &self,
        key: Uuid,
        limit: u32,
    ) -> DomainResult<Vec<DestinationAttempt>> {
        let rows = self
            .fetch_all(
                Sql::new(
                    "SELECT destination_id, attempt, version, at, error FROM destination_attempts \
                     WHERE destination_id = $1 ORDER BY attempt DESC LIMIT $2",
                )
                .bind(id(key))
                .bind(i64::from(limit.clamp(1, 1000))),
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DestinationAttempt {
                    destination_id: get_uuid(row, "destination_id")?,
                    attempt: get_u32(row, "attempt")?,
                    version: get_u32(row, "version")?,
                    at: get_time(row, "at")?,
                    error: row.opt_text("error")?,
                })
            })
            .collect()
    }

    async fn verify_candidates(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<DueDestination>> {
        self.fetch_all(
            Sql::new(concat!(
                "SELECT ",
                destination_columns!(),
                ", c.current_version FROM destinations d JOIN certificates c \
                 ON c.id = d.certificate_id WHERE c.status = $1 AND d.status = $2 \
                 AND d.delivered_version = c.current_version \
                 AND (d.verified_at IS NULL OR d.verified_at < $3) \
                 AND (d.lease_until IS NULL OR d.lease_until <= $3) \
                 ORDER BY d.verified_at, d.id LIMIT $4"
            ))
            .bind(CertificateStatus::Active.as_str())
            .bind(DestinationStatus::Delivered.as_str())
            .bind(secs(before))
            .bind(i64::from(limit.clamp(1, MAX_CLAIM))),
        )
        .await?
        .iter()
        .map(due)
        .collect()
    }

    async fn record_verification(
        &self,
        key: Uuid,
        at: OffsetDateTime,
        drift: Option<&str>,
    ) -> DomainResult<()> {
        let sql = match drift {
            None => {
                Sql::new("UPDATE destinations SET verified_at = $1 WHERE id = $2").bind(secs(at))
            }
            // Due again at once: the next claim re-imports the current version.
            Some(reason) => Sql::new(
                "UPDATE destinations SET verified_at = $1, status = $2, delivered_version = NULL, \
                 attempts = 0, next_attempt_at = $1, last_error = $3, updated_at = $1 \
                 WHERE id = $4",
            )
            .bind(secs(at))
            .bind(DestinationStatus::Pending.as_str())
            .bind(reason),
        };
        let mut tx = self.begin_write().await?;
        execute::<B>(&mut tx, sql.bind(id(key))).await?;
        tx.commit().await.map_err(map)
    }

    async fn destination_stats(&self) -> DomainResult<DestinationStats> {
        let rows = self
            .fetch_all(Sql::new(
                "SELECT kind, status, COUNT(*) AS n FROM destinations GROUP BY kind, status \
                 ORDER BY kind, status",
            ))
            .await?;
        let mut stats = DestinationStats::default();
        for row in &rows {
            stats.by_status.push((
                get_enum(row, "kind", DestinationKind::parse)?,
                get_enum(row, "status", DestinationStatus::parse)?,
                u64::try_from(row.int("n")?).map_err(|e| corrupt("n", e))?,
            ));
        }
        Ok(stats)
    }

    async fn undelivered_destinations(
        &self,
        teams: Option<&[String]>,
    ) -> DomainResult<Vec<DueDestination>> {
        let mut sql = Sql::new(concat!(
            "SELECT ",
            destination_columns!(),
            ", c.current_version FROM destinations d JOIN certificates c \
             ON c.id = d.certificate_id WHERE c.status = $1 \
             AND (d.status <> $2 OR d.delivered_version IS NULL \
                  OR d.delivered_version <> c.current_version)"
        ))
        .bind(CertificateStatus::Active.as_str())
        .bind(DestinationStatus::Delivered.as_str());
        if let Some(teams) = teams {
            if teams.is_empty() {
                return Ok(Vec::new());
            }
            sql.push(" AND c.team IN (");
            in_list(&mut sql, teams);
        }
        sql.push(" ORDER BY d.certificate_id, d.created_at, d.id");
        self.fetch_all(sql).await?.iter().map(due).collect()
    }
}
