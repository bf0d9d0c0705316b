//! [`NotificationStore`] written once for every [`Backend`]: subscriptions,
//! notifications, their deliveries (one per matching subscription, with a
//! snapshot of its channel) and every delivery attempt.

use std::collections::HashSet;

use async_trait::async_trait;
use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use certflow_core::model::{AuditEvent, Page};
use certflow_core::notify::{
    Channel, Delivery, DeliveryAttempt, DeliveryQuery, DeliveryState, Notification, StoredChannel,
    Subscription,
};
use certflow_core::ports::NotificationStore;
use sqlx::Pool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::insert_audit;
use crate::codec::{self, delivery_columns, id, secs, subscription_columns, to_json};
use crate::error::{Violation, conflict, map};
use crate::group_commit::together_or_alone;
use crate::query::{Backend, Columns, Param, Sql};
use crate::store::{SqlStore, execute, fetch_all, fetch_optional, page_bounds, total};

/// Most deliveries one claim leases.
const MAX_CLAIM: u32 = 500;

fn push_delivery_filters(sql: &mut Sql, q: &DeliveryQuery) {
    sql.push(" WHERE 1 = 1");
    if let Some(team) = q.team.as_deref() {
        sql.push(" AND n.team = ").push_bind(team);
    }
    if let Some(certificate_id) = q.certificate_id {
        sql.push(" AND n.certificate_id = ")
            .push_bind(id(certificate_id));
    }
    if let Some(state) = q.state {
        sql.push(" AND d.state = ").push_bind(state.as_str());
    }
}

/// `SELECT` of deliveries with their notification, by id, in claim order.
fn deliveries_by_id(ids: &[String]) -> Sql {
    let mut sql = Sql::new(concat!(
        "SELECT ",
        delivery_columns!(),
        " FROM deliveries d JOIN notifications n ON n.id = d.notification_id WHERE d.id IN ("
    ));
    for (i, key) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push_bind(key.as_str());
    }
    sql.push(") ORDER BY d.next_attempt_at, d.id");
    sql
}

/// [`NotificationStore::record_attempt`] on a cancelled delivery: the attempt
/// is kept; success makes it delivered, a failure leaves it cancelled.
async fn record_cancelled<B: Backend>(
    mut tx: sqlx::Transaction<'static, B>,
    delivery_id: Uuid,
    attempt: i64,
    at: OffsetDateTime,
    error: Option<&str>,
) -> DomainResult<()> {
    execute::<B>(
        &mut tx,
        Sql::new(
            "INSERT INTO delivery_attempts (delivery_id, attempt, at, error) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id(delivery_id))
        .bind(attempt)
        .bind(secs(at))
        .bind(error),
    )
    .await?;
    let update = match error {
        None => Sql::new(
            "UPDATE deliveries SET state = $1, attempts = $2, delivered_at = $3, \
             lease_until = NULL WHERE id = $4",
        )
        .bind(DeliveryState::Delivered.as_str())
        .bind(attempt)
        .bind(secs(at)),
        Some(error) => Sql::new(
            "UPDATE deliveries SET attempts = $1, last_error = $2, lease_until = NULL \
             WHERE id = $3",
        )
        .bind(attempt)
        .bind(error),
    };
    execute::<B>(&mut tx, update.bind(id(delivery_id))).await?;
    tx.commit().await.map_err(map)
}

/// A notification waiting for its group commit: what
/// [`NotificationStore::publish`] was given.
pub(crate) struct Publication {
    notification: Notification,
    dedupe_key: Option<String>,
}

/// The values of a `notifications` row, in [`NOTIFICATION_INSERT`]'s order.
fn notification_row(n: &Notification, dedupe_key: Option<&str>) -> DomainResult<Vec<Param>> {
    Ok(vec![
        id(n.id).into(),
        n.kind.as_str().into(),
        n.team.as_str().into(),
        n.certificate_id.map(id).as_deref().into(),
        to_json("notification", n)?.into(),
        dedupe_key.into(),
        secs(n.at).into(),
    ])
}

const NOTIFICATION_INSERT: &str =
    "INSERT INTO notifications (id, kind, team, certificate_id, payload, dedupe_key, at)";
const DELIVERY_INSERT: &str = "INSERT INTO deliveries (id, notification_id, subscription_id, \
     channel, state, attempts, next_attempt_at, lease_until, last_error, delivered_at, created_at)";

/// The values of a pending delivery of `n` to `sub`, in [`DELIVERY_INSERT`]'s order.
fn delivery_row(n: &Notification, sub: &Subscription) -> DomainResult<Vec<Param>> {
    Ok(vec![
        id(Uuid::now_v7()).into(),
        id(n.id).into(),
        id(sub.id).into(),
        to_json("channel", &sub.channel)?.into(),
        DeliveryState::Pending.as_str().into(),
        0_i64.into(),
        secs(n.at).into(),
        None::<i64>.into(),
        None::<&str>.into(),
        None::<i64>.into(),
        secs(n.at).into(),
    ])
}

/// Publishes a batch of notifications: together, in one transaction; should
/// that fail, each in its own. Each answer says whether the notification
/// was recorded (`false`: its dedupe key was taken).
pub(crate) async fn commit_publications<B: Backend>(
    pool: Pool<B>,
    batch: Vec<Publication>,
) -> Vec<DomainResult<bool>> {
    let pool = &pool;
    together_or_alone(
        "notifications",
        &batch,
        |all| publish_together::<B>(pool, all),
        |p| publish_one::<B>(pool, &p.notification, p.dedupe_key.as_deref()),
    )
    .await
}

/// Every notification of `batch` and its deliveries in one transaction: a
/// statement a table. A dedupe key already taken (or taken twice in the
/// batch) records nothing for the later notification, as one at a time.
async fn publish_together<B: Backend>(
    pool: &Pool<B>,
    batch: &[Publication],
) -> DomainResult<Vec<bool>> {
    let mut rows = Vec::with_capacity(batch.len());
    for p in batch {
        rows.push(notification_row(&p.notification, p.dedupe_key.as_deref())?);
    }
    let mut tx = pool.begin_with(B::BEGIN_WRITE).await.map_err(map)?;
    let mut sql = Sql::new(NOTIFICATION_INSERT);
    sql.push_values(rows);
    sql.push(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id");
    let inserted: HashSet<String> = fetch_all::<B>(&mut tx, sql)
        .await?
        .iter()
        .map(|r| r.text("id"))
        .collect::<DomainResult<_>>()?;
    let recorded: Vec<bool> = batch
        .iter()
        .map(|p| inserted.contains(&id(p.notification.id)))
        .collect();
    let recorded_ones = batch
        .iter()
        .zip(&recorded)
        .filter(|(_, r)| **r)
        .map(|(p, _)| &p.notification);
    if let Some(sql) = deliveries_sql::<B>(&mut tx, recorded_ones).await? {
        execute::<B>(&mut tx, sql).await?;
    }
    tx.commit().await.map_err(map)?;
    Ok(recorded)
}

/// The `INSERT` of the pending deliveries of `notifications`, one per
/// subscription of its team that wants its kind, read in the write
/// transaction `tx`; `None` when nobody wants them.
async fn deliveries_sql<'a, B: Backend>(
    tx: &mut B::Connection,
    notifications: impl IntoIterator<Item = &'a Notification> + Clone,
) -> DomainResult<Option<Sql>> {
    let mut teams: Vec<&str> = notifications
        .clone()
        .into_iter()
        .map(|n| n.team.as_str())
        .collect();
    teams.sort_unstable();
    teams.dedup();
    if teams.is_empty() {
        return Ok(None);
    }
    let mut sql = Sql::new(concat!(
        "SELECT ",
        subscription_columns!(),
        " FROM subscriptions WHERE team IN "
    ));
    sql.push_list(teams.iter().map(|t| Param::from(*t)))
        .push(" ORDER BY id");
    let subscriptions = fetch_all::<B>(tx, sql)
        .await?
        .iter()
        .map(codec::subscription)
        .collect::<DomainResult<Vec<_>>>()?;
    let mut deliveries = Vec::new();
    for n in notifications {
        for sub in subscriptions
            .iter()
            .filter(|s| s.team == n.team && s.events.contains(&n.kind))
        {
            deliveries.push(delivery_row(n, sub)?);
        }
    }
    Ok(Sql::insert(DELIVERY_INSERT, deliveries))
}

/// The writes that record `announcements` (notifications without a dedupe
/// key: each is recorded) and their pending deliveries, for the caller's
/// write transaction `tx` to run with its own: the subscriptions are read
/// here, the rows are left to the caller.
pub(crate) async fn announcement_writes<'a, B: Backend>(
    tx: &mut B::Connection,
    announcements: impl IntoIterator<Item = &'a Notification> + Clone,
) -> DomainResult<Vec<Sql>> {
    let rows = announcements
        .clone()
        .into_iter()
        .map(|n| notification_row(n, None))
        .collect::<DomainResult<Vec<_>>>()?;
    let deliveries = deliveries_sql::<B>(tx, announcements).await?;
    Ok(Sql::insert(NOTIFICATION_INSERT, rows)
        .into_iter()
        .chain(deliveries)
        .collect())
}

/// One notification and its deliveries in a transaction of its own.
async fn publish_one<B: Backend>(
    pool: &Pool<B>,
    notification: &Notification,
    dedupe_key: Option<&str>,
) -> DomainResult<bool> {
    let mut tx = pool.begin_with(B::BEGIN_WRITE).await.map_err(map)?;
    // A concurrent publisher of the same key waits on the unique index
    // (PostgreSQL) or the write lock (SQLite), then inserts nothing.
    let mut sql = Sql::new(NOTIFICATION_INSERT);
    sql.push_values([notification_row(notification, dedupe_key)?]);
    sql.push(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id");
    let inserted = B::fetch_optional(&mut tx, sql).await.map_err(|e| {
        conflict(e, |v| {
            (v == Violation::PrimaryKey)
                .then(|| format!("notification {} already exists", notification.id))
        })
    })?;
    if inserted.is_none() {
        return Ok(false);
    }
    if let Some(sql) = deliveries_sql::<B>(&mut tx, [notification]).await? {
        execute::<B>(&mut tx, sql).await?;
    }
    tx.commit().await.map_err(map)?;
    Ok(true)
}

#[async_trait]
impl<B: Backend> NotificationStore for SqlStore<B> {
    async fn insert_subscription(
        &self,
        sub: &Subscription,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let sql = Sql::new(concat!(
            "INSERT INTO subscriptions (",
            subscription_columns!(),
            ") VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(id(sub.id))
        .bind(sub.team.as_str())
        .bind(to_json("subscription events", &sub.events)?)
        .bind(to_json("subscription channel", &sub.channel)?)
        .bind(secs(sub.created_at));
        B::execute(&mut tx, sql).await.map_err(|e| {
            conflict(e, |v| {
                (v == Violation::PrimaryKey)
                    .then(|| format!("subscription {} already exists", sub.id))
            })
        })?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn list_subscriptions(&self, team: Option<&str>) -> DomainResult<Vec<Subscription>> {
        let mut sql = Sql::new(concat!(
            "SELECT ",
            subscription_columns!(),
            " FROM subscriptions"
        ));
        if let Some(team) = team {
            sql.push(" WHERE team = ").push_bind(team);
        }
        sql.push(" ORDER BY created_at, id");
        self.fetch_all(sql)
            .await?
            .iter()
            .map(codec::subscription)
            .collect()
    }

    async fn get_subscription(&self, sub_id: Uuid) -> DomainResult<Option<Subscription>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                subscription_columns!(),
                " FROM subscriptions WHERE id = $1"
            ))
            .bind(id(sub_id)),
        )
        .await?
        .as_ref()
        .map(codec::subscription)
        .transpose()
    }

    async fn delete_subscription(&self, sub_id: Uuid, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let deleted = fetch_optional::<B>(
            &mut tx,
            Sql::new("DELETE FROM subscriptions WHERE id = $1 RETURNING id").bind(id(sub_id)),
        )
        .await?;
        if deleted.is_none() {
            return Err(DomainError::NotFound(format!("subscription {sub_id}")));
        }
        // Nobody wants them any more: a deleted subscription must stop calling
        // its URL now, not after its pending deliveries run out of retries.
        execute::<B>(
            &mut tx,
            Sql::new(
                "UPDATE deliveries SET state = $1, lease_until = NULL \
                 WHERE subscription_id = $2 AND state = $3",
            )
            .bind(DeliveryState::Cancelled.as_str())
            .bind(id(sub_id))
            .bind(DeliveryState::Pending.as_str()),
        )
        .await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn channels_with_secrets(&self, sealed: bool) -> DomainResult<Vec<StoredChannel>> {
        // Channels are serde_json's compact text: a secret in clear is the
        // string after `"secret":`, a sealed one the object `{"sealed":...}`.
        // Inside a JSON string a quote is escaped, so a URL cannot fake the key.
        let pattern = if sealed {
            "%\"secret\":{%"
        } else {
            "%\"secret\":\"%"
        };
        let rows = self
            .fetch_all(
                Sql::new(
                    "SELECT id AS subscription_id, channel FROM subscriptions WHERE channel LIKE $1 \
                     UNION SELECT subscription_id, channel FROM deliveries WHERE channel LIKE $1",
                )
                .bind(pattern),
            )
            .await?;
        rows.iter()
            .map(|row| {
                let stored = row.text("channel")?;
                Ok(StoredChannel {
                    subscription_id: codec::get_uuid(row, "subscription_id")?,
                    channel: serde_json::from_str(&stored)
                        .map_err(|e| crate::error::corrupt("channel", e))?,
                    stored,
                })
            })
            .collect()
    }

    async fn replace_channel(
        &self,
        subscription_id: Uuid,
        stored: &str,
        channel: &Channel,
    ) -> DomainResult<u64> {
        let text = to_json("channel", channel)?;
        let mut tx = self.begin_write().await?;
        let mut replaced = 0;
        for sql in [
            "UPDATE subscriptions SET channel = $1 WHERE id = $2 AND channel = $3 RETURNING id",
            "UPDATE deliveries SET channel = $1 WHERE subscription_id = $2 AND channel = $3 \
             RETURNING id",
        ] {
            let rows = fetch_all::<B>(
                &mut tx,
                Sql::new(sql)
                    .bind(text.as_str())
                    .bind(id(subscription_id))
                    .bind(stored),
            )
            .await?;
            replaced += rows.len() as u64;
        }
        tx.commit().await.map_err(map)?;
        Ok(replaced)
    }

    fn in_metadata_database(&self) -> bool {
        true
    }

    async fn publish(
        &self,
        notification: &Notification,
        dedupe_key: Option<&str>,
    ) -> DomainResult<bool> {
        self.publications
            .submit(Publication {
                notification: notification.clone(),
                dedupe_key: dedupe_key.map(str::to_owned),
            })
            .await
    }

    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<Delivery>> {
        let mut tx = self.begin_write().await?;
        let mut due = Sql::new(
            "SELECT d.id FROM deliveries d WHERE d.state = $1 AND d.next_attempt_at <= $2 \
             AND (d.lease_until IS NULL OR d.lease_until <= $2) \
             ORDER BY d.next_attempt_at, d.id LIMIT $3",
        )
        .bind(DeliveryState::Pending.as_str())
        .bind(secs(now))
        .bind(i64::from(limit.clamp(1, MAX_CLAIM)));
        due.push(B::SKIP_LOCKED);
        let ids = fetch_all::<B>(&mut tx, due)
            .await?
            .iter()
            .map(|row| row.text("id"))
            .collect::<DomainResult<Vec<_>>>()?;
        if ids.is_empty() {
            tx.commit().await.map_err(map)?;
            return Ok(Vec::new());
        }
        let mut lease = Sql::new("UPDATE deliveries SET lease_until = $1 WHERE id IN (")
            .bind(codec::ceil_secs(lease_until));
        for (i, key) in ids.iter().enumerate() {
            if i > 0 {
                lease.push(", ");
            }
            lease.push_bind(key.as_str());
        }
        lease.push(")");
        execute::<B>(&mut tx, lease).await?;
        let rows = fetch_all::<B>(&mut tx, deliveries_by_id(&ids)).await?;
        tx.commit().await.map_err(map)?;
        rows.iter().map(codec::delivery).collect()
    }

    async fn record_attempt(
        &self,
        delivery_id: Uuid,
        at: OffsetDateTime,
        error: Option<&str>,
        retry_at: Option<OffsetDateTime>,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let mut lock =
            Sql::new("SELECT state, attempts FROM deliveries WHERE id = $1").bind(id(delivery_id));
        lock.push(B::FOR_UPDATE);
        let row = fetch_optional::<B>(&mut tx, lock)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("delivery {delivery_id}")))?;
        let state = row.text("state")?;
        let attempt = row.int("attempts")?.saturating_add(1);
        if state == DeliveryState::Cancelled.as_str() {
            // An attempt in flight when its subscription was deleted: keep
            // what happened, but a failure is not retried.
            return record_cancelled::<B>(tx, delivery_id, attempt, at, error).await;
        }
        if state != DeliveryState::Pending.as_str() {
            return Err(DomainError::Conflict(format!(
                "delivery {delivery_id} is already {state}"
            )));
        }
        execute::<B>(
            &mut tx,
            Sql::new(
                "INSERT INTO delivery_attempts (delivery_id, attempt, at, error) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id(delivery_id))
            .bind(attempt)
            .bind(secs(at))
            .bind(error),
        )
        .await?;
        let update = match (error, retry_at) {
            (None, _) => Sql::new(
                "UPDATE deliveries SET state = $1, attempts = $2, delivered_at = $3, \
                 lease_until = NULL WHERE id = $4",
            )
            .bind(DeliveryState::Delivered.as_str())
            .bind(attempt)
            .bind(secs(at)),
            (Some(error), Some(retry_at)) => Sql::new(
                "UPDATE deliveries SET state = $1, attempts = $2, next_attempt_at = $3, \
                 last_error = $4, lease_until = NULL WHERE id = $5",
            )
            .bind(DeliveryState::Pending.as_str())
            .bind(attempt)
            .bind(secs(retry_at))
            .bind(error),
            (Some(error), None) => Sql::new(
                "UPDATE deliveries SET state = $1, attempts = $2, last_error = $3, \
                 lease_until = NULL WHERE id = $4",
            )
            .bind(DeliveryState::Failed.as_str())
            .bind(attempt)
            .bind(error),
        };
        execute::<B>(&mut tx, update.bind(id(delivery_id))).await?;
        tx.commit().await.map_err(map)
    }

    async fn list_deliveries(&self, q: &DeliveryQuery) -> DomainResult<Page<Delivery>> {
        let (limit, offset) = page_bounds(q.limit, q.offset);
        let mut tx = self.begin_read().await?;
        let mut count = Sql::new(
            "SELECT COUNT(*) AS n FROM deliveries d JOIN notifications n ON n.id = d.notification_id",
        );
        push_delivery_filters(&mut count, q);
        let matching = total(fetch_optional::<B>(&mut tx, count).await?)?;
        let mut select = Sql::new(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
        ));
        push_delivery_filters(&mut select, q);
        select
            .push(" ORDER BY d.created_at DESC, d.id DESC LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = fetch_all::<B>(&mut tx, select).await?;
        tx.commit().await.map_err(map)?;
        Ok(Page {
            items: rows
                .iter()
                .map(codec::delivery)
                .collect::<DomainResult<_>>()?,
            total: matching,
        })
    }

    async fn list_attempts(&self, delivery_id: Uuid) -> DomainResult<Vec<DeliveryAttempt>> {
        self.fetch_all(
            Sql::new(
                "SELECT delivery_id, attempt, at, error FROM delivery_attempts \
                 WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind(id(delivery_id)),
        )
        .await?
        .iter()
        .map(codec::delivery_attempt)
        .collect()
    }
}
