//! [`DiscoveryStore`] written once for every [`Backend`]: certificates
//! agents found on their hosts.
//!
//! "Managed" is not stored: it is whether a certflow version has the same
//! fingerprint, decided by the query (both columns are indexed), so a
//! renewal or an import changes it without touching these rows.

use std::collections::HashSet;

use async_trait::async_trait;
use certflow_core::DomainError;
use certflow_core::discovery::{
    Discovered, DiscoveredItem, DiscoveryQuery, DiscoveryStatus, DiscoverySync,
    kept_while_unreadable,
};
use certflow_core::error::DomainResult;
use certflow_core::model::AuditEvent;
use certflow_core::ports::DiscoveryStore;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::insert_audit;
use crate::codec::{get_json, get_time, get_uuid, id, secs, to_json};
use crate::error::{corrupt, map};
use crate::query::{Backend, Columns, Sql};
use crate::store::{SqlStore, execute, fetch_all, fetch_optional};

/// The columns [`row`] decodes, from `discovered_certificates d JOIN agents ag`.
/// The managed version is the first (by certificate id, version) with the
/// same fingerprint: the same DER in two certificates is an import oddity,
/// and either one answers "managed".
macro_rules! discovered_select {
    () => {
        "SELECT d.id, d.agent_id, ag.name AS agent_name, ag.teams AS agent_teams, d.source, \
         d.fingerprint_sha256, d.serial, d.subject, d.issuer, d.names, d.not_after, \
         d.certificate_der, d.first_seen, d.last_seen, d.taken_over_certificate_id, \
         (SELECT v.certificate_id FROM certificate_versions v \
           WHERE v.fingerprint_sha256 = d.fingerprint_sha256 \
           ORDER BY v.certificate_id, v.version LIMIT 1) AS managed_certificate_id, \
         (SELECT v.version FROM certificate_versions v \
           WHERE v.fingerprint_sha256 = d.fingerprint_sha256 \
           ORDER BY v.certificate_id, v.version LIMIT 1) AS managed_version \
         FROM discovered_certificates d JOIN agents ag ON ag.id = d.agent_id "
    };
}

/// The condition "a certflow version has this fingerprint".
const MANAGED: &str = "EXISTS (SELECT 1 FROM certificate_versions v WHERE v.fingerprint_sha256 = d.fingerprint_sha256)";

/// Decodes a row of [`discovered_select`].
fn row(r: &impl Columns) -> DomainResult<Discovered> {
    let managed = match r.opt_text("managed_certificate_id")? {
        None => None,
        Some(c) => {
            let version = r
                .opt_int("managed_version")?
                .ok_or_else(|| corrupt("managed_version", "NULL beside a certificate"))?;
            Some((
                Uuid::parse_str(&c).map_err(|e| corrupt("managed_certificate_id", e))?,
                u32::try_from(version).map_err(|e| corrupt("managed_version", e))?,
            ))
        }
    };
    Ok(Discovered {
        id: get_uuid(r, "id")?,
        agent_id: get_uuid(r, "agent_id")?,
        agent_name: r.text("agent_name")?,
        agent_teams: get_json(r, "agent_teams")?,
        item: DiscoveredItem {
            source: r.text("source")?,
            fingerprint_sha256: r.text("fingerprint_sha256")?,
            serial: r.text("serial")?,
            subject: r.text("subject")?,
            issuer: r.text("issuer")?,
            names: get_json(r, "names")?,
            not_after: get_time(r, "not_after")?,
            certificate_der: r.opt_bytes("certificate_der")?,
        },
        first_seen: get_time(r, "first_seen")?,
        last_seen: get_time(r, "last_seen")?,
        taken_over_certificate_id: r
            .opt_text("taken_over_certificate_id")?
            .map(|t| Uuid::parse_str(&t).map_err(|e| corrupt("taken_over_certificate_id", e)))
            .transpose()?,
        managed,
    })
}

#[async_trait]
impl<B: Backend> DiscoveryStore for SqlStore<B> {
    async fn replace_discovered(
        &self,
        agent_id: Uuid,
        items: &[DiscoveredItem],
        unreadable: &[String],
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<DiscoverySync> {
        let mut tx = self.begin_write().await?;
        // Locking the agent's row queues two reports of one agent behind
        // each other, so the second sees the first's rows when it counts.
        let mut lock = Sql::new("SELECT id FROM agents WHERE id = $1").bind(id(agent_id));
        lock.push(B::FOR_UPDATE);
        if fetch_optional::<B>(&mut tx, lock).await?.is_none() {
            return Err(DomainError::NotFound(format!("agent {agent_id}")));
        }
        let stored: HashSet<String> = fetch_all::<B>(
            &mut tx,
            Sql::new("SELECT source FROM discovered_certificates WHERE agent_id = $1")
                .bind(id(agent_id)),
        )
        .await?
        .iter()
        .map(|r| r.text("source"))
        .collect::<DomainResult<_>>()?;
        let reported: HashSet<&str> = items.iter().map(|i| i.source.as_str()).collect();
        let mut sync = DiscoverySync {
            items: items.len() as u64,
            ..DiscoverySync::default()
        };
        for gone in stored.iter().filter(|s| !reported.contains(s.as_str())) {
            if kept_while_unreadable(gone, unreadable) {
                sync.kept += 1;
                continue;
            }
            execute::<B>(
                &mut tx,
                Sql::new("DELETE FROM discovered_certificates WHERE agent_id = $1 AND source = $2")
                    .bind(id(agent_id))
                    .bind(gone.as_str()),
            )
            .await?;
            sync.removed += 1;
        }
        for item in items {
            if !stored.contains(&item.source) {
                sync.new += 1;
            }
            // id and first_seen are not in the update: a source seen
            // before keeps them (and its take-over record).
            execute::<B>(
                &mut tx,
                Sql::new(
                    "INSERT INTO discovered_certificates (id, agent_id, source, fingerprint_sha256, \
                     serial, subject, issuer, names, not_after, certificate_der, first_seen, \
                     last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
                     ON CONFLICT (agent_id, source) DO UPDATE SET \
                     fingerprint_sha256 = excluded.fingerprint_sha256, serial = excluded.serial, \
                     subject = excluded.subject, issuer = excluded.issuer, names = excluded.names, \
                     not_after = excluded.not_after, certificate_der = excluded.certificate_der, \
                     last_seen = excluded.last_seen",
                )
                .bind(id(Uuid::now_v7()))
                .bind(id(agent_id))
                .bind(item.source.as_str())
                .bind(item.fingerprint_sha256.as_str())
                .bind(item.serial.as_str())
                .bind(item.subject.as_str())
                .bind(item.issuer.as_str())
                .bind(to_json("names", &item.names)?)
                .bind(secs(item.not_after))
                .bind(item.certificate_der.as_deref())
                .bind(secs(now)),
            )
            .await?;
        }
        let mut event = audit.clone();
        let counts = serde_json::json!({ "items": sync.items, "new": sync.new, "removed": sync.removed, "kept": sync.kept });
        match &mut event.details {
            serde_json::Value::Object(map) => {
                if let serde_json::Value::Object(c) = counts {
                    map.extend(c);
                }
            }
            other => *other = counts,
        }
        insert_audit::<B>(&mut tx, &event).await?;
        tx.commit().await.map_err(map)?;
        Ok(sync)
    }

    async fn list_discovered(&self, query: &DiscoveryQuery) -> DomainResult<Vec<Discovered>> {
        let mut sql = Sql::new(concat!(discovered_select!(), "WHERE 1 = 1"));
        if let Some(agent) = query.agent_id {
            sql.push(" AND d.agent_id = ").push_bind(id(agent));
        }
        match query.status {
            DiscoveryStatus::All => {}
            DiscoveryStatus::Managed => {
                sql.push(" AND ").push(MANAGED);
            }
            DiscoveryStatus::Unmanaged => {
                sql.push(" AND NOT ").push(MANAGED);
            }
        }
        sql.push(" ORDER BY ag.name, d.agent_id, d.source");
        let rows: Vec<Discovered> = self
            .fetch_all(sql)
            .await?
            .iter()
            .map(row)
            .collect::<DomainResult<_>>()?;
        // Agents' teams are a JSON list: intersected here rather than in
        // two SQL dialects of JSON. Rows are few per agent.
        Ok(match &query.teams {
            None => rows,
            Some(teams) => rows
                .into_iter()
                .filter(|d| d.agent_teams.iter().any(|t| teams.contains(t)))
                .collect(),
        })
    }

    async fn get_discovered(&self, discovered: Uuid) -> DomainResult<Option<Discovered>> {
        self.fetch_optional(
            Sql::new(concat!(discovered_select!(), "WHERE d.id = $1")).bind(id(discovered)),
        )
        .await?
        .as_ref()
        .map(row)
        .transpose()
    }

    async fn set_discovered_taken_over(
        &self,
        discovered: Uuid,
        certificate_id: Uuid,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let mut lock =
            Sql::new("SELECT taken_over_certificate_id FROM discovered_certificates WHERE id = $1")
                .bind(id(discovered));
        lock.push(B::FOR_UPDATE);
        let Some(current) = fetch_optional::<B>(&mut tx, lock).await? else {
            return Err(DomainError::NotFound(format!(
                "discovered certificate {discovered}"
            )));
        };
        if let Some(existing) = current.opt_text("taken_over_certificate_id")? {
            return Err(DomainError::Conflict(format!(
                "discovered certificate {discovered} was already taken over by certificate {existing}"
            )));
        }
        execute::<B>(
            &mut tx,
            Sql::new(
                "UPDATE discovered_certificates SET taken_over_certificate_id = $1, \
                 take_over_claimed_at = NULL WHERE id = $2",
            )
            .bind(id(certificate_id))
            .bind(id(discovered)),
        )
        .await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn claim_discovered_take_over(
        &self,
        discovered: Uuid,
        now: OffsetDateTime,
        stale_before: OffsetDateTime,
    ) -> DomainResult<bool> {
        let mut tx = self.begin_write().await?;
        let mut lock = Sql::new(
            "SELECT taken_over_certificate_id, take_over_claimed_at \
             FROM discovered_certificates WHERE id = $1",
        )
        .bind(id(discovered));
        lock.push(B::FOR_UPDATE);
        let Some(current) = fetch_optional::<B>(&mut tx, lock).await? else {
            return Err(DomainError::NotFound(format!(
                "discovered certificate {discovered}"
            )));
        };
        let held = current
            .opt_int("take_over_claimed_at")?
            .is_some_and(|at| at >= secs(stale_before));
        if current.opt_text("taken_over_certificate_id")?.is_some() || held {
            return Ok(false);
        }
        execute::<B>(
            &mut tx,
            Sql::new("UPDATE discovered_certificates SET take_over_claimed_at = $1 WHERE id = $2")
                .bind(secs(now))
                .bind(id(discovered)),
        )
        .await?;
        tx.commit().await.map_err(map)?;
        Ok(true)
    }

    async fn release_discovered_take_over(&self, discovered: Uuid) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        execute::<B>(
            &mut tx,
            Sql::new(
                "UPDATE discovered_certificates SET take_over_claimed_at = NULL WHERE id = $1",
            )
            .bind(id(discovered)),
        )
        .await?;
        tx.commit().await.map_err(map)
    }
}
