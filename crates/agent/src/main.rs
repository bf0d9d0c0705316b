//! `certflow-agent`: runs on customer hosts, installs the certificates assigned
//! to it and reports back. This is the stub of the foundation issue: the binary,
//! its command-line surface and its dependency rule (API types only, never
//! server crates) exist; polling, install and reload arrive with the agent issue.

// Wired into the commands by the next commit (client, polling).
#[allow(dead_code)]
mod config;
#[allow(dead_code)]
mod install;
#[allow(dead_code)]
mod pki;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// certflow agent: keeps this host's certificates installed and current.
#[derive(Parser)]
#[command(name = "certflow-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a daemon (not implemented yet).
    Run,
    /// Poll once and exit (not implemented yet).
    Once,
    /// Show what is installed (not implemented yet).
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let what = match cli.command {
        Command::Run => "run",
        Command::Once => "once",
        Command::Status => "status",
    };
    eprintln!(
        "certflow-agent {}: `{what}` is not implemented yet; it arrives with the agent issue (API {})",
        env!("CARGO_PKG_VERSION"),
        certflow_api::PROBLEM_BASE
    );
    ExitCode::from(2)
}
