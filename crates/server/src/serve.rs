//! Start-up: the one place that reads configuration and wires implementations
//! to ports. Every backend is opened and checked before the listener binds, so
//! a bad database path or master key stops the server with a message naming it.

use std::future::IntoFuture as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use certflow_blob::{
    KeyProvider, KmsKeyProvider, LocalKeyProvider, MasterKey, ObjectBlobStore, S3Options, Sealer,
};
use certflow_core::model::Actor;
use certflow_services::{CaSettings, Services};
use std::time::Duration;

use certflow_core::ports::{
    AgentStore, MetadataStore, NotificationStore, RenewalLedger, SessionStore,
};
use certflow_core::renewal::RenewalQueue;
use certflow_notify::{
    Dispatcher, EmailNotifier, ExpiryWatcher, Notifiers, SnsNotifier, WebhookNotifier,
};
use certflow_renewal::{Scheduler, SchedulerSettings, SqsRenewalQueue, Worker, WorkerSettings};
use certflow_store::{ChangeFeed, DbQueueOptions, PgOptions, PgStore, SqliteStore};
use secrecy::ExposeSecret;
use std::sync::RwLock;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, DatabaseKind};
use crate::http::{self, AppState, auth};

/// Installs the tracing subscriber (text or JSON, filter from config or `RUST_LOG`).
pub fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn read_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("master key file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "master key file {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading master key file {}", path.display()))?;
    MasterKey::from_base64(&text).with_context(|| format!("master key file {}", path.display()))
}

/// Resolves the master key: configured key, configured file, or the embedded
/// `<data_dir>/master.key`, generated only when the data directory is new.
fn master_key(config: &Config) -> anyhow::Result<MasterKey> {
    if let Some(key) = &config.master_key.key {
        return MasterKey::from_base64(key.expose_secret())
            .context("master_key.key (CERTFLOW_MASTER_KEY)");
    }
    if let Some(file) = &config.master_key.file {
        return read_key_file(file);
    }
    if matches!(config.database(), DatabaseKind::Postgres(_)) {
        // Replicas share the database, so they must share the key: never mint one per host.
        bail!(
            "with a PostgreSQL database, set master_key.key, master_key.file or CERTFLOW_MASTER_KEY(_FILE): every replica needs the same key"
        );
    }
    let path = config.data_dir.join("master.key");
    if path.exists() {
        return read_key_file(&path);
    }
    if config.database_path().is_some_and(|p| p.exists()) {
        bail!(
            "{} holds data but there is no master key: set master_key.key, master_key.file or CERTFLOW_MASTER_KEY to the key it was created with (expected {})",
            config.data_dir.display(),
            path.display()
        );
    }
    let key = MasterKey::generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key.to_base64().as_bytes())?;
    file.sync_all()?;
    tracing::warn!(
        path = %path.display(),
        "generated a new master key; back it up: without it the CA and private keys cannot be read"
    );
    Ok(key)
}

/// Everything `serve` and the admin commands work with, opened and checked.
pub struct Opened {
    /// The use cases.
    pub services: Services,
    /// Change notifications between replicas.
    pub feed: ChangeFeed,
    /// The metadata store's ports.
    pub store: StorePorts,
    /// ACME HTTP-01 tokens this process answers for.
    pub http01: certflow_acme::Http01Tokens,
}

/// The metadata store behind each of its ports.
#[derive(Clone)]
pub struct StorePorts {
    /// Certificates, issuers, audit, settings.
    pub metadata: Arc<dyn MetadataStore>,
    /// Renewal jobs' ledger.
    pub ledger: Arc<dyn RenewalLedger>,
    /// Subscriptions and deliveries.
    pub notifications: Arc<dyn NotificationStore>,
    /// The embedded renewal queue on the same database.
    pub db_queue: Arc<dyn RenewalQueue>,
    /// Console logins and browser sessions.
    pub sessions: Arc<dyn certflow_core::ports::SessionStore>,
    /// Agents, join tokens and the agent-identity CA.
    pub agents: Arc<dyn certflow_core::ports::AgentStore>,
    /// Certificates assigned to agents and their reports.
    pub deployments: Arc<dyn certflow_core::ports::DeploymentStore>,
    /// Certificates agents discovered on their hosts.
    pub discovery: Arc<dyn certflow_core::ports::DiscoveryStore>,
}

/// Opens every backend and checks it answers, so a bad setting stops the server
/// at start with a message naming the backend.
pub async fn open_services(config: &Config) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let provider = key_provider(config).await?;
    let (store, feed) = open_store(config).await?;
    let blobs = open_blobs(config).await?;
    tracing::info!(
        blobs = blobs.description(),
        master_key = provider.current_key_id(),
        "backends open"
    );
    // Writes through the use cases announce certificate changes, which
    // invalidate the agents' assignment answers on every replica.
    let announcing = Arc::new(crate::agent::watch::AnnouncingStore::new(
        store.metadata.clone(),
        feed.clone(),
    ));
    let mut services = Services::new(
        announcing,
        Arc::new(blobs),
        Sealer::new(provider),
        Some(config.public_url()),
    )
    .with_renewal_defaults(config.renewal.policy.clone())
    .with_issuance_policies(config.policy.compile().map_err(anyhow::Error::msg)?);
    if config.notifications.enabled {
        services = services.with_notifications(store.notifications.clone());
    }
    let http01 = certflow_acme::Http01Tokens::new();
    for (name, settings) in &config.acme {
        let (issuer, created) = services
            .ensure_acme_issuer(
                name,
                &settings.directory_url,
                time::OffsetDateTime::now_utc(),
            )
            .await
            .with_context(|| format!("[acme.{name}]"))?;
        if created {
            tracing::info!(issuer = %issuer.id, name, directory = %settings.directory_url, "registered ACME issuer");
        }
        let accounts = certflow_acme::SealedAccountStore::for_issuer(
            services.blobs().clone(),
            services.sealer().clone(),
            &issuer,
        );
        let backend =
            certflow_acme::AcmeIssuer::new(settings.clone(), Arc::new(accounts), http01.clone())
                .await
                .with_context(|| format!("[acme.{name}]"))?;
        services = services.with_issuer_backend(issuer.id, Arc::new(backend));
    }
    Ok(Opened {
        services,
        feed,
        store,
        http01,
    })
}

async fn key_provider(config: &Config) -> anyhow::Result<Arc<dyn KeyProvider>> {
    let mk = &config.master_key;
    if mk.provider == "kms" {
        let key_id = mk.kms_key_id.clone().context("master_key.kms_key_id")?;
        let provider = KmsKeyProvider::new(
            key_id,
            mk.kms_previous_key_ids.clone(),
            mk.kms_region.clone(),
            mk.kms_endpoint.clone(),
        )
        .await
        .context("AWS KMS master key")?;
        return Ok(Arc::new(provider));
    }
    let key = master_key(config)?;
    let previous = mk
        .previous
        .iter()
        .map(|k| MasterKey::from_base64(k.expose_secret()))
        .collect::<Result<Vec<_>, _>>()
        .context("master_key.previous")?;
    Ok(Arc::new(LocalKeyProvider::new(key, previous)))
}

async fn open_blobs(config: &Config) -> anyhow::Result<ObjectBlobStore> {
    let b = &config.blob;
    let blobs = if b.kind == "s3" {
        let options = S3Options {
            bucket: b.bucket.clone().unwrap_or_default(),
            prefix: b.prefix.clone(),
            region: b.region.clone().unwrap_or_default(),
            endpoint: b.endpoint.clone(),
            path_style: b.path_style,
            allow_http: b.allow_http,
            sse_kms_key_id: b.sse_kms_key_id.clone(),
        };
        ObjectBlobStore::s3(&options).context("S3 blob store")?
    } else {
        ObjectBlobStore::local(&config.blob_path()).context("blob store")?
    };
    blobs
        .check()
        .await
        .with_context(|| format!("blob store {}", blobs.description()))?;
    Ok(blobs)
}

/// Keeps the in-memory bootstrap-token hash current: at once when any replica
/// (or the admin CLI) announces a settings change over the change feed, and every
/// 30 s regardless, for SQLite (no feed between processes) and lost notifications.
fn spawn_settings_watch(services: Services, feed: ChangeFeed, hash: Arc<RwLock<Option<String>>>) {
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

/// Sweeps orphan blobs now and then; every replica may run it (deletes are idempotent).
fn spawn_sweeper(services: Services, config: &Config) {
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

/// `certflow admin sweep-blobs`: one sweep now, with the configured grace period.
pub async fn sweep_blobs(config: &Config, grace_hours: Option<u64>) -> anyhow::Result<()> {
    let services = open_services(config).await?.services;
    let hours = grace_hours.unwrap_or(config.blob.orphan_grace_hours);
    let r = services
        .sweep_orphan_blobs(
            time::Duration::hours(i64::try_from(hours).unwrap_or(i64::MAX / 3600)),
            time::OffsetDateTime::now_utc(),
        )
        .await?;
    println!(
        "scanned {} blobs, deleted {} orphans, kept {} younger than {hours} h; \
         purged {} idempotency keys older than 24 h",
        r.scanned,
        r.deleted.len(),
        r.young_orphans,
        r.idempotency_keys_purged
    );
    for key in r.deleted {
        println!("deleted {key}");
    }
    Ok(())
}

/// `certflow admin verify-audit`: walks the audit hash chain; an error (so a
/// non-zero exit) if it is broken.
pub async fn verify_audit(config: &Config) -> anyhow::Result<()> {
    let (store, _) = open_store(config).await?;
    let report = store.metadata.verify_audit_chain().await?;
    print!("{}", audit_report_text(&report));
    match report.first_break {
        None => Ok(()),
        Some(b) => bail!(
            "the audit chain is broken at seq {} ({})",
            b.seq,
            b.reason.as_str()
        ),
    }
}

/// `certflow admin agent-ca`: prints the agent-identity CA chain (issuing CA
/// first, then up to the root) as PEM, for a TLS-terminating gateway's trust
/// store (an ALB trust store, API Gateway's truststore).
pub async fn print_agent_ca(config: &Config) -> anyhow::Result<()> {
    let (store, _) = open_store(config).await?;
    let Some(ca) = store.agents.get_agent_ca().await? else {
        bail!(
            "no agent-identity CA yet: it is created when `certflow serve` first starts with [agent] listen set"
        );
    };
    print!("{}", ca.issuing_cert_pem);
    if !ca.issuing_cert_pem.ends_with('\n') {
        println!();
    }
    print!("{}", ca.chain_pem);
    Ok(())
}

/// What `verify-audit` prints: the rows checked, the last link (to record
/// elsewhere, so a rewritten chain shows later) and the first break, if any.
fn audit_report_text(r: &certflow_core::model::AuditChainReport) -> String {
    let mut out = format!(
        "checked {} audit events; last seq {} hash {}\n",
        r.checked, r.last_seq, r.last_hash
    );
    match &r.first_break {
        None => out.push_str("audit chain OK\n"),
        Some(b) => out.push_str(&format!(
            "audit chain BROKEN at seq {}: {} (event {})\n",
            b.seq,
            b.reason.as_str(),
            b.id.map_or_else(|| "missing".to_owned(), |id| id.to_string())
        )),
    }
    out
}

/// `certflow keys rewrap`: re-seal every private key under the current master key.
pub async fn rewrap_keys(config: &Config) -> anyhow::Result<()> {
    let opened = open_services(config).await?;
    let services = opened.services.clone();
    let actor = Actor {
        subject: "admin-cli".into(),
        source: None,
    };
    let r = services
        .rewrap_keys(&actor, time::OffsetDateTime::now_utc())
        .await?;
    // The agent-identity CA's keys are sealed under the same master key.
    let agents = certflow_services::agents::Agents::new(
        &services,
        opened.store.agents.clone(),
        certflow_services::agents::AgentSettings::default(),
    );
    let (agent_keys, agent_rewrapped) = agents.rewrap_keys().await?;
    println!(
        "{} sealed keys, {} re-wrapped under the current master key",
        r.keys + agent_keys,
        r.rewrapped + agent_rewrapped
    );
    Ok(())
}

/// Opens the configured metadata store (migrating it), or says which and why not.
/// One store behind each of its ports.
fn ports<S>(store: Arc<S>, db_queue: Arc<dyn RenewalQueue>) -> StorePorts
where
    S: MetadataStore
        + RenewalLedger
        + AgentStore
        + SessionStore
        + NotificationStore
        + certflow_core::ports::DeploymentStore
        + certflow_core::ports::DiscoveryStore
        + 'static,
{
    StorePorts {
        metadata: store.clone(),
        ledger: store.clone(),
        agents: store.clone(),
        deployments: store.clone(),
        discovery: store.clone(),
        sessions: store.clone(),
        notifications: store,
        db_queue,
    }
}

async fn open_store(config: &Config) -> anyhow::Result<(StorePorts, ChangeFeed)> {
    match config.database() {
        DatabaseKind::Sqlite(path) => {
            let store = SqliteStore::open(&path)
                .await
                .with_context(|| format!("database {}", path.display()))?;
            tracing::info!(database = %path.display(), "SQLite metadata store");
            let db_queue = Arc::new(store.renewal_queue(DbQueueOptions::default()));
            Ok((ports(Arc::new(store), db_queue), ChangeFeed::local()))
        }
        DatabaseKind::Postgres(url) => {
            let timeout = config.database.statement_timeout_secs;
            let options = PgOptions {
                max_connections: config.database.max_connections,
                statement_timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
                connect_timeout: Duration::from_secs(config.database.connect_timeout_secs),
            };
            // The store's errors name host, port and database but never the password.
            let store = PgStore::connect(&url, options)
                .await
                .context("PostgreSQL database")?;
            let feed = store
                .change_feed()
                .await
                .context("PostgreSQL change feed")?;
            tracing::info!("PostgreSQL metadata store");
            let db_queue = Arc::new(store.renewal_queue(DbQueueOptions::default()));
            Ok((ports(Arc::new(store), db_queue), feed))
        }
    }
}

/// What a process runs: any mix of the console API, the renewal scheduler
/// (with the expiry watcher) and renewal workers (with notification delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// The HTTP API.
    pub api: bool,
    /// Scheduler and expiry watcher.
    pub scheduler: bool,
    /// Renewal workers and notification dispatcher.
    pub worker: bool,
}

impl Roles {
    /// Parses `api,scheduler,worker`.
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        let mut roles = Roles {
            api: false,
            scheduler: false,
            worker: false,
        };
        for role in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "api" => roles.api = true,
                "scheduler" => roles.scheduler = true,
                "worker" => roles.worker = true,
                other => bail!("unknown role {other:?}; roles are api, scheduler, worker"),
            }
        }
        if roles
            == (Roles {
                api: false,
                scheduler: false,
                worker: false,
            })
        {
            bail!("--roles needs at least one of api, scheduler, worker");
        }
        Ok(roles)
    }
}

/// The renewal queue the configuration selects.
async fn renewal_queue(
    config: &Config,
    store: &StorePorts,
) -> anyhow::Result<Arc<dyn RenewalQueue>> {
    match (config.renewal.queue.as_str(), &config.renewal.sqs) {
        ("sqs", Some(options)) => {
            let queue = SqsRenewalQueue::from_options(options.clone(), store.ledger.clone()).await;
            Ok(Arc::new(queue))
        }
        _ => Ok(store.db_queue.clone()),
    }
}

/// The notifiers the configuration enables (webhook always; SNS and email when configured).
async fn notifiers(config: &Config) -> anyhow::Result<Notifiers> {
    let n = &config.notifications;
    let mut notifiers = Notifiers::new()
        .with(Arc::new(WebhookNotifier::new(&n.webhook).map_err(|e| {
            anyhow::anyhow!("notifications.webhook: {}", e.0)
        })?));
    if let Some(sns) = &n.sns {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(sns.region.clone()));
        if let Some(url) = &sns.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        notifiers.insert(Arc::new(SnsNotifier::from_sdk_config(&loader.load().await)));
    }
    if let Some(smtp) = &n.smtp {
        notifiers.insert(Arc::new(
            EmailNotifier::new(smtp).map_err(|e| anyhow::anyhow!("notifications.smtp: {}", e.0))?,
        ));
    }
    Ok(notifiers)
}

/// Starts the background roles; they stop when `shutdown` turns true.
async fn spawn_roles(
    config: &Config,
    roles: Roles,
    opened: &Opened,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let queue = renewal_queue(config, &opened.store).await?;
    let r = &config.renewal;
    if roles.scheduler {
        let scheduler = Scheduler::new(
            opened.store.metadata.clone(),
            queue.clone(),
            SchedulerSettings {
                interval: Duration::from_secs(r.scheduler_interval_secs),
                batch: 500,
                max_attempts: r.max_attempts,
            },
        );
        tasks.push(tokio::spawn(scheduler.run(shutdown.clone())));
        tasks.push(spawn_crl_refresh(opened.services.clone(), shutdown.clone()));
        if config.notifications.enabled {
            let watcher = ExpiryWatcher::new(
                opened.store.metadata.clone(),
                opened.store.notifications.clone(),
                config.notifications.expiry.clone(),
            );
            let stop = stopped(shutdown.clone());
            tasks.push(tokio::spawn(async move { watcher.run(stop).await }));
            tasks.push(spawn_drift_check(
                deployments(config, opened),
                shutdown.clone(),
            ));
        }
        tracing::info!(queue = queue.kind(), "renewal scheduler running");
    }
    if roles.worker {
        let worker = Worker::new(
            opened.services.clone(),
            queue.clone(),
            WorkerSettings {
                concurrency: r.concurrency,
                lease: Duration::from_secs(r.lease_secs),
                wait: Duration::from_secs(5),
                backoff_base: Duration::from_secs(r.backoff_base_secs),
                backoff_cap: Duration::from_secs(r.backoff_cap_secs),
                // Then jobs still in hand go back to the queue (well inside
                // the 30 s the process waits for its roles).
                shutdown_grace: Duration::from_secs(5),
            },
        );
        tasks.push(tokio::spawn(worker.run(shutdown.clone())));
        if config.notifications.enabled {
            let dispatcher = Dispatcher::new(
                opened.store.notifications.clone(),
                notifiers(config).await?,
                config.notifications.delivery.clone(),
            );
            let stop = stopped(shutdown.clone());
            tasks.push(tokio::spawn(async move { dispatcher.run(stop).await }));
        }
        tracing::info!(
            queue = queue.kind(),
            concurrency = r.concurrency,
            "renewal workers running"
        );
    }
    Ok(tasks)
}

/// The deployment use cases.
fn deployments(config: &Config, opened: &Opened) -> certflow_services::deployments::Deployments {
    certflow_services::deployments::Deployments::new(
        &opened.services,
        opened.store.deployments.clone(),
        opened.store.agents.clone(),
        certflow_services::deployments::DeploymentSettings {
            drift_after: time::Duration::seconds(
                i64::try_from(config.agent.drift_after_seconds).unwrap_or(i64::MAX),
            ),
        },
    )
    .with_discovery(opened.store.discovery.clone())
}

/// Announces deployment drift now and then (scheduler role; several
/// schedulers announce each drift once, by the notification's key).
fn spawn_drift_check(
    deployments: certflow_services::deployments::Deployments,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let every = crate::agent::watch::drift_interval(
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
fn spawn_crl_refresh(
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

/// A future that completes when `rx` turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// `certflow serve` (all roles unless `--roles` narrows them) and `certflow worker`.
pub async fn serve(config: Config, roles: Roles) -> anyhow::Result<()> {
    let opened = open_services(&config).await?;
    let services = opened.services.clone();
    let settings = CaSettings {
        name: config.ca.name.clone(),
        key_type: config.ca_key_type()?,
        root_validity_days: config.ca.root_validity_days,
        intermediate_validity_days: config.ca.intermediate_validity_days,
    };
    let (issuer, created) = services
        .ensure_ca(&settings, time::OffsetDateTime::now_utc())
        .await
        .context("internal CA")?;
    if created {
        tracing::info!(issuer = %issuer.id, subject = %issuer.subject, "created the internal CA");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = http::observe::Draining::default();
    // SIGTERM (or Ctrl-C): readiness fails at once, workers start handing
    // back, the listener drains (see serve_api).
    {
        let draining = draining.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: draining");
            draining.start();
            let _ = stop_tx.send(true);
        });
    }
    let mut tasks = spawn_roles(&config, roles, &opened, &stop_rx).await?;
    if roles.api {
        serve_api(
            &config,
            &opened,
            services,
            draining,
            stop_rx.clone(),
            &mut tasks,
        )
        .await?;
    } else {
        println!("certflow: running {roles:?} (no API listener)");
        stopped(stop_rx.clone()).await;
    }
    for task in tasks {
        // Workers finish the jobs in hand within their grace, or hand them back.
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A validator for the configured `[[auth.issuers]]`, if any.
fn token_validator(config: &Config) -> anyhow::Result<Option<certflow_auth::TokenValidator>> {
    if config.auth.issuers.is_empty() {
        return Ok(None);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client for JWKS")?;
    let validator = certflow_auth::TokenValidator::new(config.auth.issuers.clone(), http)
        .map_err(|e| anyhow::anyhow!("[[auth.issuers]]: {e}"))?;
    Ok(Some(validator))
}

/// The bearer-token authenticators the configuration enables.
fn bearer_authenticators(
    config: &Config,
) -> anyhow::Result<Vec<Arc<dyn auth::BearerAuthenticator>>> {
    Ok(match token_validator(config)? {
        Some(validator) => vec![Arc::new(auth::OidcBearer(validator))],
        None => Vec::new(),
    })
}

/// Announces agent changes on the change feed (`agent:<id>`).
struct FeedAgentChanges(ChangeFeed);

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
fn spawn_agent_watch(agents: certflow_services::agents::Agents, feed: ChangeFeed) {
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

async fn serve_api(
    config: &Config,
    opened: &Opened,
    services: Services,
    draining: http::observe::Draining,
    stop: watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let bootstrap_hash = Arc::new(RwLock::new(None));
    if config.auth.bootstrap_token {
        if let Some(token) = auth::ensure_bootstrap_token(services.store().as_ref()).await? {
            // Printed once on stdout, never logged: logs are shipped, stdout of a first start is not.
            println!("certflow: bootstrap admin token (shown once; it is stored only as a hash):");
            println!("export CERTFLOW_TOKEN={token}");
        }
        auth::refresh_bootstrap_hash(services.store().as_ref(), &bootstrap_hash).await?;
        spawn_settings_watch(
            services.clone(),
            opened.feed.clone(),
            bootstrap_hash.clone(),
        );
    }
    spawn_sweeper(services.clone(), config);
    let deploy =
        crate::agent::deploy::DeployState::new(deployments(config, opened), opened.feed.clone());
    crate::agent::watch::spawn_cache_watch(deploy.cache.clone(), &opened.feed);
    let (agents, agent_listener) = start_agents(config, opened, &services, deploy.clone()).await?;
    let limits = Arc::new(http::limit::ConsoleLimits::new(&config.console)?);
    let console = http::login::ConsoleAuth::from_config(
        config,
        opened.store.sessions.clone(),
        services.store().clone(),
        limits.clone(),
    )?;
    let issuers = http::metrics::IssuerHealth::default();
    let acme_probes = config
        .acme
        .iter()
        .map(|(name, a)| {
            (
                name.clone(),
                http::metrics::AcmeProbe {
                    directory_url: a.directory_url.clone(),
                    ca_bundle: a.ca_bundle.clone(),
                },
            )
        })
        .collect();
    tasks.push(http::metrics::spawn_issuer_probe(
        services.clone(),
        acme_probes,
        issuers.clone(),
        stop.clone(),
    ));
    let domain_metrics = http::metrics::DomainMetrics {
        deployments: opened.store.deployments.clone(),
        drift_after: time::Duration::seconds(
            i64::try_from(config.agent.drift_after_seconds).unwrap_or(i64::MAX / 2),
        ),
        issuers,
    };
    let state = AppState {
        services,
        bootstrap_hash,
        renewal: Arc::new(http::RenewalView {
            queue: renewal_queue(config, &opened.store).await?,
            ledger: opened.store.ledger.clone(),
            notifications: opened.store.notifications.clone(),
        }),
        authenticators: Arc::new(bearer_authenticators(config)?),
        sessions: console.as_ref().map(|c| c.sessions().clone()),
        limits,
    };
    tasks.extend(crate::emf::spawn(
        config.log.emf,
        state.clone(),
        domain_metrics.clone(),
        stop.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    println!("certflow: listening on http://{addr}");
    tracing::info!(%addr, public_url = %config.public_url(), "console API listening");
    // ACME HTTP-01 challenges are answered on this listener: route port 80 of
    // the certified names here (or use DNS-01).
    let app = http::app(state)
        .merge(certflow_acme::http01_router(opened.http01.clone()))
        .layer(axum::Extension(agents))
        .layer(axum::Extension(deploy));
    // Browser login to the console, when [auth.oidc] is configured.
    let app = match console {
        Some(console) => app.merge(http::login::router(console)),
        None => app,
    };
    // Outermost, over every merged router: request id and access log.
    let app = app
        .layer(axum::Extension(domain_metrics))
        .layer(axum::Extension(draining))
        .layer(axum::middleware::from_fn(http::observe::access_log));
    let delay = Duration::from_secs(config.server.drain_delay_secs);
    let bound = Duration::from_secs(config.server.drain_timeout_secs);
    if let Some(listener) = agent_listener {
        // Closes with the console listener and drains alongside it.
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            stopped(stop).await;
            tokio::time::sleep(delay).await;
            listener.drain(bound).await;
        }));
    }
    let closing = {
        let stop = stop.clone();
        async move {
            stopped(stop).await;
            // Still accepting, /readyz at 503: load balancers take us out.
            tokio::time::sleep(delay).await;
            tracing::info!(timeout = ?bound, "listener closed; waiting for requests in flight");
        }
    };
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(closing)
    .into_future();
    tokio::pin!(server);
    let cut_off = async {
        stopped(stop).await;
        tokio::time::sleep(delay + bound).await;
    };
    tokio::select! {
        served = &mut server => served.context("server")?,
        () = cut_off => {
            tracing::warn!(timeout = ?bound, "requests still in flight after the drain timeout; cut short");
        }
    }
    Ok(())
}

/// The agent use cases, the agent-identity CA (created on first start) and,
/// when `[agent] listen` is set, the agent listener.
async fn start_agents(
    config: &Config,
    opened: &Opened,
    services: &Services,
    deploy: crate::agent::deploy::DeployState,
) -> anyhow::Result<(
    certflow_services::agents::Agents,
    Option<crate::agent::AgentListener>,
)> {
    let settings = certflow_services::agents::AgentSettings {
        identity_validity_secs: config.agent.identity_validity_secs,
        ca_key_type: config.ca_key_type()?,
        ..Default::default()
    };
    let agents =
        certflow_services::agents::Agents::new(services, opened.store.agents.clone(), settings);
    let (ca, created) = agents
        .ensure_ca(time::OffsetDateTime::now_utc())
        .await
        .context("agent-identity CA")?;
    if created {
        tracing::info!(agent_ca = %ca.id, "created the agent-identity CA");
    }
    let agents = agents.with_changes(Arc::new(FeedAgentChanges(opened.feed.clone())));
    spawn_agent_watch(agents.clone(), opened.feed.clone());
    let tokens: Option<Arc<dyn crate::agent::token::AgentTokenVerifier>> =
        match token_validator(config)? {
            Some(v) => Some(Arc::new(crate::agent::token::OidcAgentTokens(Arc::new(v)))),
            None => None,
        };
    let listener = crate::agent::start(&config.agent, agents.clone(), tokens, Some(deploy)).await?;
    if let Some(listener) = &listener {
        println!("certflow: agent listener on https://{}", listener.addr);
        tracing::info!(addr = %listener.addr, "agent listener (mTLS) listening");
    }
    Ok((agents, listener))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// `certflow admin rotate-bootstrap-token`: works on the data directly, for
/// when the token is lost. Restart the server to pick up the new hash.
pub async fn rotate_bootstrap_token(config: &Config) -> anyhow::Result<()> {
    let (store, feed) = open_store(config).await?;
    let token = auth::rotate_bootstrap_token(store.metadata.as_ref()).await?;
    feed.publish("settings").await?;
    println!("export CERTFLOW_TOKEN={token}");
    if matches!(config.database(), DatabaseKind::Sqlite(_)) {
        eprintln!("certflow: a running server accepts the new token within 30 seconds");
    }
    Ok(())
}

#[cfg(test)]
mod verify_audit_tests {
    use certflow_core::model::{AuditChainBreak, AuditChainFault, AuditChainReport};

    use super::audit_report_text;

    #[test]
    fn report_names_the_last_link_and_the_break() {
        let mut report = AuditChainReport {
            checked: 41,
            last_seq: 41,
            last_hash: "ab".repeat(32),
            first_break: None,
        };
        let ok = audit_report_text(&report);
        assert!(ok.contains("checked 41 audit events"), "{ok}");
        assert!(ok.contains(&"ab".repeat(32)), "{ok}");
        assert!(ok.contains("audit chain OK"), "{ok}");
        report.first_break = Some(AuditChainBreak {
            seq: 42,
            id: None,
            reason: AuditChainFault::SeqGap,
        });
        let broken = audit_report_text(&report);
        assert!(
            broken.contains("BROKEN at seq 42: seq_gap (event missing)"),
            "{broken}"
        );
    }
}
