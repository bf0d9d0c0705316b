//! `certflow`: the server (`serve`) and the admin CLI that calls its API.

mod acme_api;
mod agent_api;
mod auth;
mod cli;
mod config;
mod deploy_cache;
mod errors;
mod extract;
mod http;
mod ops;
mod pki_api;
mod rate_limit;
mod router;
mod serve;
mod session;
mod state;
mod telemetry;
mod views;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's malloc, for the whole process (the C
/// libraries' `malloc` too). Measured on agent polls and on memory
/// (BENCHMARKS.md, "Agent polls: goal 5" and "Memory: goal 6"): glibc's
/// `malloc`, `free` and `malloc_consolidate` were about 16% of a poll's CPU,
/// and glibc keeps freed memory in its per-thread arenas (RSS stayed at its
/// peak after 10,000 agents disconnected). jemalloc took less CPU per poll
/// and less resident memory with 10,000 connected agents than both glibc and
/// mimalloc (`bench/memory.sh`), and returns freed pages to the system.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// certflow: certificate lifecycle manager.
#[derive(Parser)]
#[command(name = "certflow", version, about)]
struct Cli {
    /// Configuration file (TOML). Without one, embedded defaults apply.
    #[arg(long, short, env = "CERTFLOW_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: console API, renewal scheduler and renewal workers.
    Serve {
        /// Roles of this process, comma-separated: api, scheduler, worker (default: all).
        #[arg(long, default_value = "api,scheduler,worker")]
        roles: String,
    },
    /// Run renewal workers only (same as `serve --roles worker`).
    Worker,
    /// Manage certificates through the API.
    #[command(subcommand)]
    Cert(cli::cert::CertCommand),
    /// Inspect or import certificate authorities through the API.
    #[command(subcommand)]
    Ca(cli::ca::CaCommand),
    /// Enrol and manage agents (join tokens, list, disable) through the API.
    #[command(subcommand)]
    Agent(cli::agent::AgentCommand),
    /// ACME server administration: External Account Binding keys, through the API.
    #[command(subcommand)]
    Acme(cli::acme::AcmeCommand),
    /// Offline administration on the server's own data (run where the server runs).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Master-key maintenance on the server's own data.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the console API's OpenAPI document.
    Openapi,
    /// Exit 0 when the server answers 200 at `url` (container health checks:
    /// the runtime image has no shell or curl).
    Healthcheck {
        /// The probe to ask.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Re-encrypt every private key and webhook secret under the current master key (after a rotation).
    Rewrap,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Replace the bootstrap admin token and print the new one (break-glass).
    RotateBootstrapToken,
    /// Delete blobs no metadata references (crash leftovers) older than the grace period.
    SweepBlobs {
        /// Grace period in hours (default: blob.orphan_grace_hours).
        #[arg(long)]
        grace_hours: Option<u64>,
    },
    /// Check the audit trail's hash chain; exits non-zero where it is broken.
    VerifyAudit,
    /// Check that metadata and blobs agree (versions in order, blobs readable,
    /// keys open and match); exits non-zero on any problem or stale orphan blob.
    VerifyStore,
    /// Print the agent-identity CA chain (PEM) for a gateway's mTLS trust store.
    AgentCa,
}

async fn healthcheck(url: &str) -> anyhow::Result<()> {
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(url)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "{url} answered {}",
        resp.status()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors of a command asked for JSON are problem documents too.
        Err(e) if e.use_stderr() && cli::wants_json(std::env::args_os()) => {
            eprintln!("{}", cli::usage_problem(&e.render().to_string()));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("certflow: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { roles } => {
                let roles = serve::Roles::parse(&roles)?;
                let config = config::Config::load(cli.config.as_deref())?;
                serve::wiring::init_logging(&config);
                serve::serve(config, roles).await
            }
            Command::Worker => {
                let config = config::Config::load(cli.config.as_deref())?;
                serve::wiring::init_logging(&config);
                let roles = serve::Roles {
                    api: false,
                    scheduler: false,
                    worker: true,
                };
                serve::serve(config, roles).await
            }
            Command::Admin(AdminCommand::RotateBootstrapToken) => {
                let config = config::Config::load(cli.config.as_deref())?;
                serve::admin::rotate_bootstrap_token(&config).await
            }
            Command::Admin(AdminCommand::SweepBlobs { grace_hours }) => {
                let config = config::Config::load(cli.config.as_deref())?;
                serve::admin::sweep_blobs(&config, grace_hours).await
            }
            Command::Admin(AdminCommand::AgentCa) => {
                let config = config::Config::load(cli.config.as_deref())?;
                serve::admin::print_agent_ca(&config).await
            }
            Command::Admin(AdminCommand::VerifyAudit) => {
                let config = config::Config::load(cli.config.as_deref())?;
                serve::admin::verify_audit(&config).await
            }
            Command::Admin(AdminCommand::VerifyStore) => {
                let config = config::Config::load(cli.config.as_deref())?;
                serve::admin::verify_store(&config).await
            }
            Command::Keys(KeysCommand::Rewrap) => {
                let config = config::Config::load(cli.config.as_deref())?;
                serve::admin::rewrap_keys(&config).await
            }
            // The API commands decide their own exit codes and error format.
            Command::Cert(cmd) => return Ok(cli::cert::run_cert(cmd).await),
            Command::Ca(cmd) => return Ok(cli::ca::run_ca(cmd).await),
            Command::Agent(cmd) => return Ok(cli::agent::run_agent(cmd).await),
            Command::Acme(cmd) => return Ok(cli::acme::run_acme(cmd).await),
            Command::Openapi => {
                println!("{}", http::openapi_json());
                Ok(())
            }
            Command::Healthcheck { url } => healthcheck(&url).await,
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}
