//! `certflow-agent`: runs on customer hosts, keeps the certificates assigned
//! to it installed and current, reloads the service, verifies what it
//! serves and reports back. It depends on the wire types (`certflow-api`)
//! and general crates only, never on server crates.

mod agent;
mod client;
mod config;
mod deploy;
mod discover;
mod install;
mod pki;
mod report;
mod state;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::agent::{Agent, backoff, poll_pause, random_unit};
use crate::config::{Config, LogFormat};

/// certflow agent: keeps this host's certificates installed and current.
#[derive(Parser)]
#[command(name = "certflow-agent", version, about)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = "/etc/certflow-agent/agent.toml")]
    config: PathBuf,
    /// Show what would change and change nothing (one cycle, then exit).
    #[arg(long, global = true)]
    dry_run: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a daemon: long-poll, install, reload, verify, report; stops
    /// on SIGTERM/SIGINT after the install in progress.
    Run,
    /// One cycle (for cron); exit status 0 when every certificate is served
    /// at its current version, 1 otherwise, 2 for a configuration error.
    Once,
    /// Show what is installed, from the state directory and the stores.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inventory the certificates under the `[discovery]` paths and at its
    /// endpoints (no server contact unless `--report`); exit status 1 when a
    /// source could not be read or the report failed, 2 without a
    /// `[discovery]` section or, with `--report`, without an identity.
    Discover {
        /// JSON (`{"items": [...]}`) instead of text.
        #[arg(long)]
        json: bool,
        /// Also send the inventory to the server (needs an enrolled
        /// identity; not with `--dry-run`).
        #[arg(long)]
        report: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("certflow-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(cfg.log_format);
    if let Command::Status { json } = cli.command {
        return status(&cfg, json);
    }
    // One thread: the agent waits on the network most of the time, and an
    // idle agent should cost as little memory as possible.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certflow-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Discover { json, report } = cli.command {
        return rt.block_on(discover(&cfg, json, report && !cli.dry_run));
    }
    rt.block_on(async move {
        let mut agent = match Agent::new(cfg, cli.dry_run) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot start");
                return ExitCode::from(2);
            }
        };
        let (tx, rx) = watch::channel(false);
        tokio::spawn(signals(tx));
        match cli.command {
            Command::Run if !cli.dry_run => {
                // Discovery runs beside the cycles, on its own schedule.
                tokio::spawn(discover::report_loop(
                    agent.config().clone(),
                    agent.state().clone(),
                    rx.clone(),
                ));
                run(&mut agent, rx).await
            }
            _ => once(&mut agent, rx).await,
        }
    })
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// Turns SIGTERM and SIGINT into a shutdown request.
async fn signals(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown requested: finishing the current step");
    let _ = tx.send(true);
}

/// One cycle, then (with `[discovery]`) one discovery report: the cycle has
/// enrolled the agent by then. Either failing makes the exit status 1.
async fn once(agent: &mut Agent, mut rx: watch::Receiver<bool>) -> ExitCode {
    let mut ok = match agent.cycle(0, &mut rx).await {
        Ok(good) => good,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cycle failed");
            false
        }
    };
    if let Err(e) = agent.discovery().await {
        tracing::error!(error = %format!("{e:#}"), "discovery report failed");
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(agent: &mut Agent, mut rx: watch::Receiver<bool>) -> ExitCode {
    let interval = agent.config().poll_interval();
    let wait = agent.config().long_poll_secs;
    let cap = Duration::from_secs(agent.config().backoff_cap_secs);
    tracing::info!(server = %agent.config().server, long_poll_secs = wait, "certflow-agent running");
    let mut failures = 0u32;
    while !*rx.borrow() {
        let started = Instant::now();
        let pause = match agent.cycle(wait, &mut rx).await {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(after = failures, "server reachable again");
                }
                failures = 0;
                // A long poll that the server held, or that brought a change,
                // is followed at once by the next (within a second of jitter);
                // a 304 that came back at once (a server without long-polling)
                // waits the interval so the agent never spins.
                if wait > 0
                    && (agent.changed() || started.elapsed() >= Duration::from_secs(wait / 2))
                {
                    Duration::from_millis((random_unit() * 1000.0) as u64)
                } else {
                    poll_pause(interval, random_unit())
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let d = backoff(failures, cap, random_unit());
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = d.as_millis() as u64, attempt = failures, "cycle failed");
                d
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = rx.changed() => {}
        }
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// `certflow-agent discover`: prints what the discovery pass found (errors go
/// to stderr), then with `send` reports it to the server.
async fn discover(cfg: &Config, json: bool, send: bool) -> ExitCode {
    let Some(d) = &cfg.discovery else {
        eprintln!("certflow-agent: no [discovery] section in the configuration");
        return ExitCode::from(2);
    };
    // The identity is checked before scanning so a host that was never
    // enrolled is told at once, not after a scan that cannot be sent.
    let mut client = None;
    if send {
        match client::Client::new(cfg, state::StateDir::existing(&cfg.state_dir)) {
            Ok(c) if c.enrolled() => client = Some(c),
            Ok(_) => {
                eprintln!(
                    "certflow-agent: --report needs an enrolled identity and there is none in {}: run `certflow-agent once` first",
                    cfg.state_dir.display()
                );
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("certflow-agent: --report: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    let out = discover::discover(d).await;
    let report = out.report();
    if json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("certflow-agent: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        for i in &report.items {
            println!(
                "{}: {} issuer {} serial {} until {} sha256 {}",
                i.source, i.subject, i.issuer, i.serial, i.not_after, i.fingerprint_sha256
            );
        }
    }
    for e in &out.errors {
        eprintln!("certflow-agent: {e}");
    }
    if let Some(mut c) = client {
        if let Err(e) = c.report_discovered(&report).await {
            eprintln!("certflow-agent: sending the discovery report: {e:#}");
            return ExitCode::FAILURE;
        }
        eprintln!(
            "certflow-agent: reported {} discovered certificate(s)",
            report.items.len()
        );
    }
    if out.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn status(cfg: &Config, json: bool) -> ExitCode {
    let st = state::StateDir::existing(&cfg.state_dir);
    let identity = client::Client::new(cfg, st.clone())
        .ok()
        .and_then(|c| c.identity_summary());
    let mut rows = Vec::new();
    let mut ok = true;
    for c in &cfg.certificates {
        let label = c.label();
        let rec = st.cert_state(&label);
        let inst = install::Installer::new(c).ok();
        let cur = inst.as_ref().and_then(install::Installer::current);
        ok &=
            cur.is_some() && rec.last_status != Some(certflow_api::agent::DeploymentStatus::Broken);
        rows.push(serde_json::json!({
            "name": label,
            "certificate_id": rec.certificate_id,
            "installed_version": cur.as_ref().map(|m| m.version),
            "serial": cur.as_ref().map(|m| m.serial.clone()),
            "fingerprint_sha256": cur.as_ref().map(|m| m.fingerprint_sha256.clone()),
            "not_after": cur.as_ref().map(|m| m.not_after.to_string()),
            "previous_version": inst.as_ref().and_then(install::Installer::previous).map(|m| m.version),
            "last_status": rec.last_status,
            "last_error": rec.last_error,
            "attempted_version": rec.attempted_version,
            "store": inst.as_ref().map(|i| i.store().display().to_string()),
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "identity": identity, "certificates": rows })
        );
    } else {
        println!(
            "identity: {}",
            identity.as_deref().unwrap_or("none (not enrolled)")
        );
        for r in &rows {
            let s = |k: &str| match &r[k] {
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            println!(
                "{}: version {} serial {} until {} (previous {}), last {}{}",
                s("name"),
                s("installed_version"),
                s("serial"),
                s("not_after"),
                s("previous_version"),
                s("last_status"),
                r["last_error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
