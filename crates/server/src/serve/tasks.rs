//! The background tasks a serving process runs besides its listeners, one
//! function each: settings and agent watches on the change feed, the blob
//! sweeper, the deployment drift check and the CRL refresh.

use std::sync::Arc;

use certflow_services::Services;
use std::time::Duration;

use certflow_store::ChangeFeed;
use std::sync::RwLock;
use tokio::sync::watch;

use super::stopped;
use crate::auth;
use crate::config::Config;

/// Keeps the in-memory bootstrap-token hash current: at once when any replica
/// (or the admin CLI) announces a settings change over the change feed, and every
/// 30 s regardless, for SQLite (no feed between processes) and lost notifications.
pub(super) fn spawn_settings_watch(
    services: Services,
    feed: ChangeFeed,
    hash: Arc<RwLock<Option<String>>>,
) {
    let mut changes = feed.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                topic = changes.recv() => match topic {
                    Ok(t) if t != "settings" && t != "*" => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    _ => {}
                },
                _ = tick.tick() => {}
            }
            if let Err(e) = auth::refresh_bootstrap_hash(services.store().as_ref(), &hash).await {
                tracing::warn!(error = %e, "cannot refresh the bootstrap token hash");
            }
        }
    });
}

/// Drops the default issuer the services keep in memory when any replica
/// adds an issuer or changes the default (or the feed lost track).
pub(super) fn spawn_issuer_watch(services: Services, feed: &ChangeFeed) {
    let mut changes = feed.subscribe();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(t) if t != crate::deploy_cache::watch::ISSUERS_TOPIC && t != "*" => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                _ => services.forget_issuers(),
            }
        }
    });
}

/// Sweeps orphan blobs now and then; every replica may run it (deletes are idempotent).
pub(super) fn spawn_sweeper(services: Services, config: &Config) {
    let every = config.blob.sweep_interval_minutes;
    if every == 0 {
        return;
    }
    let grace = time::Duration::hours(
        i64::try_from(config.blob.orphan_grace_hours).unwrap_or(i64::MAX / 3600),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(every * 60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match services
                .sweep_orphan_blobs(grace, time::OffsetDateTime::now_utc())
                .await
            {
                Ok(r)
                    if !r.deleted.is_empty()
                        || r.young_orphans > 0
                        || r.idempotency_keys_purged > 0 =>
                {
                    tracing::info!(
                        scanned = r.scanned,
                        deleted = r.deleted.len(),
                        young = r.young_orphans,
                        idempotency_keys_purged = r.idempotency_keys_purged,
                        "orphan sweep"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "orphan sweep failed; will retry"),
            }
        }
    });
}

/// Announces deployment drift now and then (scheduler role; several
/// schedulers announce each drift once, by the notification's key).
pub(super) fn spawn_drift_check(
    deployments: certflow_services::deployments::Deployments,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let every = drift_interval(
        Duration::try_from(deployments.drift_after()).unwrap_or(Duration::from_secs(60)),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = stopped(shutdown);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            match deployments
                .check_drift(time::OffsetDateTime::now_utc())
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(announced = n, "deployment drift announced"),
                Err(e) => tracing::warn!(error = %e, "deployment drift check failed; will retry"),
            }
        }
    })
}

/// Signs a fresh CRL for every internal issuer before its nextUpdate
/// (scheduler role; several schedulers only publish a few extra numbers).
pub(super) fn spawn_crl_refresh(
    services: certflow_services::Services,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = stopped(shutdown);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            match services.refresh_crls(time::OffsetDateTime::now_utc()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(published = n, "CRLs refreshed"),
                Err(e) => tracing::warn!(error = %e, "CRL refresh failed; will retry"),
            }
        }
    })
}

/// Pushes new versions to their AWS destinations and reads delivered ones
/// back (worker role). Every worker may run it: a claimed destination is
/// leased to one of them.
pub(super) fn spawn_destination_delivery(
    services: certflow_services::Services,
    every: Duration,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = stopped(shutdown);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            let now = time::OffsetDateTime::now_utc();
            match services.deliver_destinations(now).await {
                Ok(r) if r.delivered + r.failed > 0 => tracing::info!(
                    delivered = r.delivered,
                    failed = r.failed,
                    "destination deliveries"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "destination delivery failed; will retry"),
            }
            match services.verify_destinations(now).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(drifted = n, "destination drift found; pushing again"),
                Err(e) => tracing::warn!(error = %e, "destination read-back failed; will retry"),
            }
        }
    })
}

/// Announces agent changes on the change feed (`agent:<id>`).
pub(super) struct FeedAgentChanges(pub(super) ChangeFeed);

#[async_trait::async_trait]
impl certflow_services::agents::AgentChanges for FeedAgentChanges {
    async fn agent_changed(&self, id: uuid::Uuid) {
        let topic = format!("{}{id}", certflow_services::agents::AGENT_TOPIC_PREFIX);
        if let Err(e) = self.0.publish(&topic).await {
            // Other replicas' periodic refresh catches up; this one already forgot it.
            tracing::warn!(agent = %id, error = %e, "cannot announce an agent change");
        }
    }
}

/// Keeps the agent authentication cache honest: drops an agent when any
/// replica announces a change of it, everything when the feed reconnected
/// (`*`), and everything every 30 s regardless (lost notifications; SQLite
/// has no feed between processes).
pub(super) fn spawn_agent_watch(agents: certflow_services::agents::Agents, feed: ChangeFeed) {
    let mut changes = feed.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                topic = changes.recv() => match topic {
                    Ok(t) => agents.apply_change(&t),
                    // Missed topics: anything may have changed.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => agents.forget_cached(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => agents.forget_cached(),
            }
        }
    });
}

/// How often the drift check runs: often enough to announce drift within a
/// small fraction of the tolerance, at most once a minute.
pub fn drift_interval(drift_after: Duration) -> Duration {
    (drift_after / 10).clamp(Duration::from_secs(5), Duration::from_secs(60))
}

/// Validates answered ACME challenges (worker role): claims due ones with a
/// lease, so several workers never validate the same challenge at once, and
/// retries with backoff inside the use case.
pub(super) fn spawn_acme_validation(
    service: certflow_services::acme::AcmeService,
    validators: certflow_acme_server::ChallengeValidators,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = stopped(shutdown);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            match service
                .run_due_validations(&validators, 20, time::OffsetDateTime::now_utc())
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::debug!(attempts = n, "ACME challenge validations"),
                Err(e) => {
                    tracing::warn!(error = %e, "ACME challenge validation failed; will retry")
                }
            }
        }
    })
}
