//! `certflow serve`: the roles of this process (API, scheduler, worker), the
//! console and agent listeners, and graceful shutdown. Adapters are opened in
//! [`wiring`], periodic jobs live in [`tasks`], offline admin commands in
//! [`admin`].

pub mod admin;
mod console_tls;
mod files;
mod margins;
mod tasks;
pub mod wiring;

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use certflow_services::{CaSettings, Services};
use std::time::Duration;

use certflow_notify::{Dispatcher, ExpiryWatcher};
use certflow_renewal::{Scheduler, SchedulerSettings, Worker, WorkerSettings};
use std::sync::RwLock;
use tokio::sync::watch;

use crate::auth;
use crate::config::Config;
use crate::state::{AppState, RenewalView};
use tasks::{
    FeedAgentChanges, spawn_agent_watch, spawn_crl_refresh, spawn_destination_delivery,
    spawn_drift_check, spawn_issuer_watch, spawn_settings_watch, spawn_sweeper,
};
use wiring::{
    Opened, bearer_authenticators, deployments, notifiers, open_services, renewal_queue,
    token_validator,
};

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

    /// Refuses a worker without the api role while an ACME issuer uses
    /// HTTP-01: the process that orders a certificate publishes its tokens
    /// in its own memory and only its own console listener serves them, so
    /// the CA would find nothing at the names' port 80.
    pub fn check_http01(
        &self,
        acme: &std::collections::BTreeMap<String, certflow_acme::AcmeSettings>,
    ) -> anyhow::Result<()> {
        if !self.worker || self.api {
            return Ok(());
        }
        if let Some(name) = acme
            .iter()
            .find(|(_, a)| a.challenge == certflow_acme::ChallengeKind::Http01)
            .map(|(name, _)| name)
        {
            bail!(
                "[acme.{name}] uses challenge = \"http-01\", but this process is a worker without \
                 the api role: the worker would publish the HTTP-01 tokens in its own memory, where \
                 no listener serves them to the CA. Run workers as `certflow serve --roles api,worker` \
                 (reached by the names' port 80), or set challenge = \"dns-01\" for [acme.{name}]"
            );
        }
        Ok(())
    }
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
        let mut scheduler = Scheduler::new(
            opened.store.metadata.clone(),
            queue.clone(),
            SchedulerSettings {
                interval: Duration::from_secs(r.scheduler_interval_secs),
                batch: 500,
                max_attempts: r.max_attempts,
            },
        )
        .with_ledger(opened.store.ledger.clone());
        if config.notifications.enabled {
            scheduler = scheduler.with_at_risk(
                opened.store.notifications.clone(),
                opened.store.ledger.clone(),
                Duration::from_secs(r.expected_renewal_secs),
            );
        }
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
                work_timeout: Duration::from_secs(r.work_timeout_secs),
                wait: Duration::from_secs(5),
                backoff_base: Duration::from_secs(r.backoff_base_secs),
                backoff_cap: Duration::from_secs(r.backoff_cap_secs),
                // Then jobs still in hand go back to the queue (well inside
                // the 30 s the process waits for its roles).
                shutdown_grace: Duration::from_secs(5),
            },
        );
        tasks.push(tokio::spawn(worker.run(shutdown.clone())));
        if config.acme_server.enabled {
            tasks.push(tasks::spawn_acme_validation(
                wiring::acme_service(config, opened),
                wiring::acme_validators(config)?,
                shutdown.clone(),
            ));
        }
        if config.destinations.enabled {
            tasks.push(spawn_destination_delivery(
                opened.services.clone(),
                Duration::from_secs(config.destinations.poll_interval_secs),
                shutdown.clone(),
            ));
        }
        if config.notifications.enabled {
            let dispatcher = Dispatcher::new(
                opened.store.notifications.clone(),
                notifiers(config).await?,
                config.notifications.delivery.clone(),
            )
            .with_secrets(Arc::new(opened.services.secret_opener()));
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

/// Seals webhook secrets still stored in clear (written before secrets were
/// sealed); the server does not start while it cannot.
async fn seal_webhook_secrets(services: &Services) -> anyhow::Result<()> {
    let actor = certflow_core::model::Actor {
        subject: "system:start".into(),
        source: None,
    };
    let report = services
        .seal_webhook_secrets(&actor, time::OffsetDateTime::now_utc())
        .await
        .context("sealing stored webhook secrets")?;
    if report.sealed > 0 {
        tracing::info!(
            channels = report.sealed,
            rows = report.rows,
            "sealed webhook secrets stored in clear"
        );
    }
    Ok(())
}

/// A future that completes when `rx` turns true (or its sender is gone).
pub(super) async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// `certflow serve` (all roles unless `--roles` narrows them) and `certflow worker`.
pub async fn serve(config: Config, roles: Roles) -> anyhow::Result<()> {
    roles.check_http01(&config.acme)?;
    let opened = open_services(&config).await?;
    margins::check(&config.renewal, opened.store.metadata.as_ref()).await;
    seal_webhook_secrets(&opened.services).await?;
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
    let draining = crate::telemetry::observe::Draining::default();
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

async fn serve_api(
    config: &Config,
    opened: &Opened,
    services: Services,
    draining: crate::telemetry::observe::Draining,
    stop: watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let bootstrap_hash = bootstrap_admin(config, opened, &services).await?;
    spawn_sweeper(services.clone(), config);
    spawn_issuer_watch(services.clone(), &opened.feed);
    let deploy =
        crate::deploy_cache::DeployState::new(deployments(config, opened), opened.feed.clone());
    crate::deploy_cache::watch::spawn_cache_watch(deploy.cache.clone(), &opened.feed);
    let (agents, agent_listener) = start_agents(config, opened, &services, deploy.clone()).await?;
    let console_tls = match &config.server.tls {
        Some(t) => {
            let ca_file = config.data_dir.join("console-ca.pem");
            let (tls, renewal) =
                console_tls::tls_config(t, &agents, &ca_file, stop.clone()).await?;
            tasks.extend(renewal);
            Some(tls)
        }
        None => None,
    };
    let limits = Arc::new(crate::rate_limit::ConsoleLimits::new(&config.console)?);
    let console = crate::web::login::ConsoleAuth::from_config(
        config,
        opened.store.sessions.clone(),
        services.store().clone(),
        limits.clone(),
    )?;
    let domain_metrics = domain_gauges(config, opened, &services, &stop, tasks);
    let state = AppState::from(crate::state::AppShared {
        services,
        bootstrap_hash,
        renewal: Arc::new(RenewalView {
            queue: renewal_queue(config, &opened.store).await?,
            ledger: opened.store.ledger.clone(),
            notifications: opened.store.notifications.clone(),
        }),
        authenticators: Arc::new(bearer_authenticators(config)?),
        sessions: console.as_ref().map(|c| c.sessions().clone()),
        sign_in_provider: config.auth.oidc.as_ref().map(|o| o.provider_name()),
        limits,
        deploy,
        agents,
        // EAB keys can be managed before the ACME server is switched on.
        acme: Some(wiring::acme_service(config, opened)),
    });
    tasks.extend(crate::ops::emf::spawn(
        config.log.emf,
        state.clone(),
        domain_metrics.clone(),
        stop.clone(),
    ));
    let metrics_token = config.metrics.token()?.map(crate::ops::MetricsToken::new);
    if let Some(addr) = config.metrics.listen {
        let app = crate::router::metrics_app(
            state.clone(),
            domain_metrics.clone(),
            metrics_token.clone(),
        );
        tasks.push(serve_metrics(addr, app, stop.clone()).await?);
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if console_tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("certflow: listening on {scheme}://{addr}");
    tracing::info!(%addr, public_url = %config.public_url(), "console API listening");
    // ACME HTTP-01 challenges are answered on this listener: route port 80 of
    // the certified names here (or use DNS-01).
    if let Some(addr) = config.server.tls.as_ref().and_then(|t| t.http_listen) {
        let plain = crate::router::plain_http_app(state.clone())
            .merge(certflow_acme::http01_router(opened.http01.clone()));
        tasks.push(serve_plain_http(addr, plain, stop.clone()).await?);
    }
    let state_for_metrics = state.clone();
    let app = crate::router::app(state).merge(certflow_acme::http01_router(opened.http01.clone()));
    let app = with_acme_server(app, config, opened);
    // Browser login to the console, when [auth.oidc] is configured.
    let app = match console {
        Some(console) => app.merge(crate::web::login::router(console)),
        None => app,
    };
    // With a bearer token, scrapers may also use the console listener.
    let app = match metrics_token {
        Some(token) => {
            app.merge(crate::ops::metrics_router(Some(token)).with_state(state_for_metrics))
        }
        None => app,
    };
    // Outermost, over every merged router: request id and access log.
    let app = app
        .layer(axum::Extension(domain_metrics))
        .layer(axum::Extension(draining))
        .layer(axum::middleware::from_fn(
            crate::telemetry::observe::access_log,
        ))
        // The merged routers' errors (login, ACME, metrics) are problem documents too.
        .layer(axum::middleware::from_fn(crate::errors::problem_responses));
    let listeners = Listeners {
        console: listener,
        console_tls,
        agent: agent_listener,
    };
    serve_until_stopped(config, listeners, app, stop, tasks).await
}

/// `app` with the ACME server's routes when `[acme_server]` enables them.
fn with_acme_server(app: axum::Router, config: &Config, opened: &Opened) -> axum::Router {
    if !config.acme_server.enabled {
        return app;
    }
    let api = crate::acme_api::AcmeApi::new(
        wiring::acme_service(config, opened),
        crate::acme_api::AcmeApiSettings {
            base_url: config.public_url(),
            eab_required: config.acme_server.eab_required(),
            body_limit: config.acme_server.body_limit_bytes,
            per_account_per_minute: config.acme_server.per_account_per_minute,
            per_address_per_minute: config.acme_server.per_address_per_minute,
        },
    );
    crate::router::with_acme_server(app, api)
}

/// The sockets `serve_until_stopped` serves.
struct Listeners {
    console: tokio::net::TcpListener,
    /// `[server.tls]`: the console listener speaks HTTPS.
    console_tls: Option<Arc<rustls::ServerConfig>>,
    agent: Option<crate::agent_api::AgentListener>,
}

/// Binds the plain-HTTP listener beside an HTTPS console
/// (`[server.tls] http_listen`) and serves `app` on it until `stop`.
async fn serve_plain_http(
    addr: SocketAddr,
    app: axum::Router,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // The merged http-01 router's errors are problem documents too.
    let app = app
        .layer(axum::middleware::from_fn(
            crate::telemetry::observe::access_log,
        ))
        .layer(axum::middleware::from_fn(crate::errors::problem_responses));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding server.tls.http_listen {addr}"))?;
    let bound = listener.local_addr()?;
    // Logged, not printed: a supervisor may stop reading stdout after the
    // "listening on" line, and printing to a closed pipe panics.
    tracing::info!(addr = %bound, "plain-HTTP listener (/pki, ACME http-01) listening");
    Ok(tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopped(stop))
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "plain-HTTP listener failed");
        }
    }))
}

/// Binds the metrics listener (`[metrics] listen`) and serves `app` on it
/// until `stop`; the task ends when the listener has closed.
async fn serve_metrics(
    addr: SocketAddr,
    app: axum::Router,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr} ([metrics] listen)"))?;
    let bound = listener.local_addr()?;
    println!("certflow: metrics on http://{bound}/metrics");
    tracing::info!(addr = %bound, "metrics listener");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped(stop))
            .await
        {
            tracing::error!(error = %e, "metrics listener failed");
        }
    }))
}

/// With `[auth] bootstrap_token`, the bootstrap admin token: created and
/// printed at first start, its hash loaded and kept current by the settings
/// watch. Without, the hash stays empty.
async fn bootstrap_admin(
    config: &Config,
    opened: &Opened,
    services: &Services,
) -> anyhow::Result<Arc<RwLock<Option<String>>>> {
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
    Ok(bootstrap_hash)
}

/// The domain gauges the metrics endpoint and EMF report, with the issuer
/// probe (one of `tasks`) that keeps issuer health current.
fn domain_gauges(
    config: &Config,
    opened: &Opened,
    services: &Services,
    stop: &watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> crate::ops::gauges::DomainMetrics {
    let issuers = crate::ops::gauges::IssuerHealth::default();
    let acme_probes = config
        .acme
        .iter()
        .map(|(name, a)| {
            (
                name.clone(),
                crate::ops::gauges::AcmeProbe {
                    directory_url: a.directory_url.clone(),
                    ca_bundle: a.ca_bundle.clone(),
                },
            )
        })
        .collect();
    tasks.push(crate::ops::gauges::spawn_issuer_probe(
        services.clone(),
        acme_probes,
        issuers.clone(),
        stop.clone(),
    ));
    crate::ops::gauges::DomainMetrics {
        deployments: opened.store.deployments.clone(),
        drift_after: time::Duration::seconds(
            i64::try_from(config.agent.drift_after_seconds).unwrap_or(i64::MAX / 2),
        ),
        issuers,
    }
}

/// Serves `app` on `listener` until `stop`, then drains it (and the agent
/// listener, when there is one): still accepting for the drain delay, then
/// waiting for requests in flight up to the drain timeout.
async fn serve_until_stopped(
    config: &Config,
    listeners: Listeners,
    app: axum::Router,
    stop: watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let Listeners {
        console: listener,
        console_tls,
        agent: agent_listener,
    } = listeners;
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
    let server: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
        match console_tls {
            None => Box::pin(
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(closing)
                .into_future(),
            ),
            Some(tls) => {
                let (close, closed) = watch::channel(false);
                tokio::spawn(async move {
                    closing.await;
                    let _ = close.send(true);
                });
                Box::pin(async move {
                    console_tls::serve(listener, tls, app, closed).await;
                    Ok(())
                })
            }
        };
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
    deploy: crate::deploy_cache::DeployState,
) -> anyhow::Result<(
    certflow_services::agents::Agents,
    Option<crate::agent_api::AgentListener>,
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
    let tokens: Option<Arc<dyn crate::agent_api::token::AgentTokenVerifier>> =
        match token_validator(config)? {
            Some(v) => Some(Arc::new(crate::agent_api::token::OidcAgentTokens(
                Arc::new(v),
            ))),
            None => None,
        };
    let listener = crate::agent_api::start(&config.agent, agents.clone(), tokens, deploy).await?;
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
