//! [`DeploymentStore`] written once for every [`Backend`]: certificates
//! assigned to agents and the agents' last report about each.
//!
//! Every read joins the assignment with its agent, its certificate, the
//! certificate's current version and the last report, in one statement, so
//! the agent's poll (on a cache miss) and the console's views are one round
//! trip each.

use async_trait::async_trait;
use certflow_core::DomainError;
use certflow_core::deployments::{
    AssignedCertificate, Assignment, Deployment, DeploymentState, DeploymentStatus,
};
use certflow_core::error::DomainResult;
use certflow_core::model::{AuditEvent, CertificateStatus, FleetStats, KeySource};
use certflow_core::ports::DeploymentStore;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::insert_audit;
use crate::codec::{get_enum, get_time, get_u32, get_uuid, id, secs};
use crate::error::{corrupt, map};
use crate::query::{Backend, Columns, Sql};
use crate::store::{SqlStore, execute, fetch_all, fetch_optional};

/// The `SELECT` and `FROM` of the joined rows [`state`] decodes.
macro_rules! state_select {
    () => {
        "SELECT a.agent_id, ag.name AS agent_name, a.created_at AS assigned_at, \
         a.drift_notified_version, c.id AS certificate_id, c.name, c.team, c.key_source, \
         c.status, c.current_version, v.serial, v.fingerprint_sha256, v.names, v.not_after, \
         v.created_at AS issued_at, d.version AS d_version, \
         d.fingerprint_sha256 AS d_fingerprint, d.status AS d_status, \
         d.attempted_version AS d_attempted, d.error AS d_error, d.reported_at AS d_reported_at, \
         d.agent_version AS d_agent_version \
         FROM agent_assignments a \
         JOIN agents ag ON ag.id = a.agent_id \
         JOIN certificates c ON c.id = a.certificate_id \
         JOIN certificate_versions v ON v.certificate_id = c.id AND v.version = c.current_version \
         LEFT JOIN agent_deployments d \
           ON d.agent_id = a.agent_id AND d.certificate_id = a.certificate_id "
    };
}

fn opt_u32(row: &impl Columns, col: &str) -> DomainResult<Option<u32>> {
    row.opt_int(col)?
        .map(|v| u32::try_from(v).map_err(|e| corrupt(col, e)))
        .transpose()
}

/// Decodes a row of [`state_select`].
fn state(row: &impl Columns) -> DomainResult<DeploymentState> {
    let agent_id = get_uuid(row, "agent_id")?;
    let certificate_id = get_uuid(row, "certificate_id")?;
    let last_report = match row.opt_int("d_reported_at")? {
        None => None,
        Some(at) => {
            let status = row.opt_text("d_status")?.unwrap_or_default();
            Some(Deployment {
                agent_id,
                certificate_id,
                version: opt_u32(row, "d_version")?.unwrap_or(0),
                fingerprint_sha256: row.opt_text("d_fingerprint")?.unwrap_or_default(),
                status: DeploymentStatus::parse(&status)
                    .ok_or_else(|| corrupt("status", format!("unknown value '{status}'")))?,
                attempted_version: opt_u32(row, "d_attempted")?,
                error: row.opt_text("d_error")?,
                reported_at: OffsetDateTime::from_unix_timestamp(at)
                    .map_err(|e| corrupt("reported_at", e))?,
                agent_version: row.opt_text("d_agent_version")?,
            })
        }
    };
    Ok(DeploymentState {
        agent_id,
        agent_name: row.text("agent_name")?,
        assigned: AssignedCertificate {
            certificate_id,
            name: row.text("name")?,
            team: row.text("team")?,
            key_source: get_enum(row, "key_source", KeySource::parse)?,
            status: get_enum(row, "status", CertificateStatus::parse)?,
            version: get_u32(row, "current_version")?,
            serial: row.text("serial")?,
            fingerprint_sha256: row.text("fingerprint_sha256")?,
            names: serde_json::from_str(&row.text("names")?).map_err(|e| corrupt("names", e))?,
            not_after: get_time(row, "not_after")?,
            issued_at: get_time(row, "issued_at")?,
            assigned_at: get_time(row, "assigned_at")?,
        },
        last_report,
        drift_notified_version: opt_u32(row, "drift_notified_version")?,
    })
}

impl<B: Backend> SqlStore<B> {
    async fn states(&self, sql: Sql) -> DomainResult<Vec<DeploymentState>> {
        self.fetch_all(sql).await?.iter().map(state).collect()
    }
}

#[async_trait]
impl<B: Backend> DeploymentStore for SqlStore<B> {
    async fn assign(&self, a: &Assignment, audit: &AuditEvent) -> DomainResult<bool> {
        let mut tx = self.begin_write().await?;
        for (table, key, what) in [
            ("agents", a.agent_id, "agent"),
            ("certificates", a.certificate_id, "certificate"),
        ] {
            let sql = match table {
                "agents" => Sql::new("SELECT 1 AS found FROM agents WHERE id = $1"),
                _ => Sql::new("SELECT 1 AS found FROM certificates WHERE id = $1"),
            };
            if fetch_optional::<B>(&mut tx, sql.bind(id(key)))
                .await?
                .is_none()
            {
                return Err(DomainError::NotFound(format!("{what} {key}")));
            }
        }
        let inserted = fetch_optional::<B>(
            &mut tx,
            Sql::new(
                "INSERT INTO agent_assignments (agent_id, certificate_id, created_by, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (agent_id, certificate_id) DO NOTHING \
                 RETURNING agent_id",
            )
            .bind(id(a.agent_id))
            .bind(id(a.certificate_id))
            .bind(a.created_by.as_str())
            .bind(secs(a.created_at)),
        )
        .await?;
        if inserted.is_none() {
            // Already assigned: nothing changed, so nothing to audit.
            return Ok(false);
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)?;
        Ok(true)
    }

    async fn unassign(
        &self,
        agent_id: Uuid,
        certificate_id: Uuid,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        // Explicitly rather than by cascade: SQLite enforces foreign keys
        // only when the connection enables them.
        execute::<B>(
            &mut tx,
            Sql::new("DELETE FROM agent_deployments WHERE agent_id = $1 AND certificate_id = $2")
                .bind(id(agent_id))
                .bind(id(certificate_id)),
        )
        .await?;
        let removed = fetch_optional::<B>(
            &mut tx,
            Sql::new(
                "DELETE FROM agent_assignments WHERE agent_id = $1 AND certificate_id = $2 \
                 RETURNING agent_id",
            )
            .bind(id(agent_id))
            .bind(id(certificate_id)),
        )
        .await?;
        if removed.is_none() {
            return Err(DomainError::NotFound(format!(
                "assignment of certificate {certificate_id} to agent {agent_id}"
            )));
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn assigned_certificates(
        &self,
        agent_id: Uuid,
    ) -> DomainResult<Vec<AssignedCertificate>> {
        let states = self
            .states(
                Sql::new(concat!(
                    state_select!(),
                    "WHERE a.agent_id = $1 ORDER BY c.id"
                ))
                .bind(id(agent_id)),
            )
            .await?;
        Ok(states.into_iter().map(|s| s.assigned).collect())
    }

    async fn record_deployments(
        &self,
        reports: &[Deployment],
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        for r in reports {
            let assigned = fetch_optional::<B>(
                &mut tx,
                Sql::new(
                    "SELECT 1 AS found FROM agent_assignments \
                     WHERE agent_id = $1 AND certificate_id = $2",
                )
                .bind(id(r.agent_id))
                .bind(id(r.certificate_id)),
            )
            .await?;
            if assigned.is_none() {
                return Err(DomainError::NotFound(format!(
                    "assignment of certificate {} to agent {}",
                    r.certificate_id, r.agent_id
                )));
            }
            execute::<B>(
                &mut tx,
                Sql::new(
                    "INSERT INTO agent_deployments (agent_id, certificate_id, version, \
                     fingerprint_sha256, status, attempted_version, error, reported_at, \
                     agent_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (agent_id, certificate_id) DO UPDATE SET \
                     version = excluded.version, fingerprint_sha256 = excluded.fingerprint_sha256, \
                     status = excluded.status, attempted_version = excluded.attempted_version, \
                     error = excluded.error, reported_at = excluded.reported_at, \
                     agent_version = excluded.agent_version",
                )
                .bind(id(r.agent_id))
                .bind(id(r.certificate_id))
                .bind(i64::from(r.version))
                .bind(r.fingerprint_sha256.as_str())
                .bind(r.status.as_str())
                .bind(r.attempted_version.map(i64::from))
                .bind(r.error.as_deref())
                .bind(secs(r.reported_at))
                .bind(r.agent_version.as_deref()),
            )
            .await?;
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn certificate_deployments(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<DeploymentState>> {
        self.states(
            Sql::new(concat!(
                state_select!(),
                "WHERE a.certificate_id = $1 ORDER BY a.agent_id"
            ))
            .bind(id(certificate_id)),
        )
        .await
    }

    async fn agent_deployments(&self, agent_id: Uuid) -> DomainResult<Vec<DeploymentState>> {
        self.states(
            Sql::new(concat!(
                state_select!(),
                "WHERE a.agent_id = $1 ORDER BY c.id"
            ))
            .bind(id(agent_id)),
        )
        .await
    }

    async fn drift_candidates(
        &self,
        issued_before: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<DeploymentState>> {
        self.states(
            Sql::new(concat!(
                state_select!(),
                "WHERE ag.status = 'active' AND c.status = 'active' AND v.created_at <= $1 \
                 AND (a.drift_notified_version IS NULL \
                      OR a.drift_notified_version < c.current_version) \
                 AND (d.status IS NULL OR d.status <> 'installed' \
                      OR d.version <> c.current_version) \
                 ORDER BY v.created_at, a.agent_id, c.id LIMIT $2"
            ))
            .bind(secs(issued_before))
            .bind(i64::from(limit.clamp(1, 1000))),
        )
        .await
    }

    async fn fleet_stats(
        &self,
        seen_since: OffsetDateTime,
        drift_issued_before: OffsetDateTime,
    ) -> DomainResult<FleetStats> {
        self.fleet_counts(seen_since, drift_issued_before).await
    }

    async fn mark_drift_notified(
        &self,
        agent_id: Uuid,
        certificate_id: Uuid,
        version: u32,
    ) -> DomainResult<()> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        execute::<B>(
            &mut conn,
            Sql::new(
                "UPDATE agent_assignments SET drift_notified_version = $1 \
                 WHERE agent_id = $2 AND certificate_id = $3 \
                 AND (drift_notified_version IS NULL OR drift_notified_version < $1)",
            )
            .bind(i64::from(version))
            .bind(id(agent_id))
            .bind(id(certificate_id)),
        )
        .await
    }
}

/// A count column as `u64` (SUM of no rows is NULL).
fn count(row: &impl Columns, col: &str) -> DomainResult<u64> {
    let n = row.opt_int(col)?.unwrap_or(0);
    u64::try_from(n).map_err(|e| corrupt(col, e))
}

impl<B: Backend> SqlStore<B> {
    /// [`DeploymentStore::fleet_stats`]: two grouped statements in one snapshot.
    async fn fleet_counts(
        &self,
        seen_since: OffsetDateTime,
        drift_issued_before: OffsetDateTime,
    ) -> DomainResult<FleetStats> {
        let mut tx = self.begin_read().await?;
        // An agent never seen since enrolment counts from its enrolment.
        let agents = fetch_all::<B>(
            &mut tx,
            Sql::new(
                "SELECT status, COUNT(*) AS n, \
                 SUM(CASE WHEN COALESCE(last_seen, created_at) < $1 THEN 1 ELSE 0 END) AS stale \
                 FROM agents GROUP BY status",
            )
            .bind(secs(seen_since)),
        )
        .await?;
        // Only what someone waits for: active agents and active certificates
        // (a disabled agent's failed report is not an incident). Drift is
        // the condition of `drift_candidates`, without the announced-once part.
        let deployments = fetch_all::<B>(
            &mut tx,
            Sql::new(
                "SELECT COALESCE(d.status, 'pending') AS status, COUNT(*) AS n, \
                 SUM(CASE WHEN v.created_at <= $1 AND (d.status IS NULL \
                   OR d.status <> 'installed' OR d.version <> c.current_version) \
                   THEN 1 ELSE 0 END) AS drift \
                 FROM agent_assignments a \
                 JOIN agents ag ON ag.id = a.agent_id \
                 JOIN certificates c ON c.id = a.certificate_id \
                 JOIN certificate_versions v \
                   ON v.certificate_id = c.id AND v.version = c.current_version \
                 LEFT JOIN agent_deployments d \
                   ON d.agent_id = a.agent_id AND d.certificate_id = a.certificate_id \
                 WHERE ag.status = 'active' AND c.status = 'active' \
                 GROUP BY COALESCE(d.status, 'pending')",
            )
            .bind(secs(drift_issued_before)),
        )
        .await?;
        tx.commit().await.map_err(map)?;
        let mut stats = FleetStats::default();
        for row in agents {
            let n = count(&row, "n")?;
            match row.text("status")?.as_str() {
                "active" => {
                    stats.agents_active = n;
                    stats.agents_not_seen = count(&row, "stale")?;
                }
                "disabled" => stats.agents_disabled = n,
                "revoked" => stats.agents_revoked = n,
                other => return Err(corrupt("status", format!("unknown value '{other}'"))),
            }
        }
        for row in deployments {
            let n = count(&row, "n")?;
            stats.deployments_drift += count(&row, "drift")?;
            match row.text("status")?.as_str() {
                "installed" => stats.deployments_installed = n,
                "failed" => stats.deployments_failed = n,
                "broken" => stats.deployments_broken = n,
                "pending" => stats.deployments_pending = n,
                other => return Err(corrupt("status", format!("unknown value '{other}'"))),
            }
        }
        Ok(stats)
    }
}
