//! `certflow acme eab create|list|revoke`: External Account Binding keys of
//! the ACME server, through the console API. A new key's HMAC key is the one
//! secret printed: `key_id hmac_key` alone on stdout (what a client's
//! `--eab-kid`/`--eab-hmac-key` take), what it is for on stderr; the server
//! shows it once and keeps it sealed.

use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};

use super::*;

/// `certflow acme ...`
#[derive(Debug, Subcommand)]
pub enum AcmeCommand {
    /// External Account Binding keys that bind ACME accounts to a team.
    #[command(subcommand)]
    Eab(EabCommand),
}

/// `certflow acme eab ...`
#[derive(Debug, Subcommand)]
pub enum EabCommand {
    /// Create an EAB key for a team (its HMAC key is printed once).
    Create(CreateEabArgs),
    /// List the EAB keys of your teams, newest first (never their HMAC keys).
    List(ListEabArgs),
    /// Revoke an EAB key: it binds no account from now on.
    Revoke(RevokeEabArgs),
}

/// Arguments of `certflow acme eab create`.
#[derive(Debug, Args)]
pub struct CreateEabArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The team whose accounts the key binds.
    #[arg(long)]
    team: String,
}

/// Arguments of `certflow acme eab list`.
#[derive(Debug, Args)]
pub struct ListEabArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// Arguments of `certflow acme eab revoke`.
#[derive(Debug, Args)]
pub struct RevokeEabArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The key id (`certflow acme eab list`).
    #[arg(value_name = "KEY_ID")]
    key_id: String,
}

impl AcmeCommand {
    fn output(&self) -> Output {
        match self {
            AcmeCommand::Eab(EabCommand::Create(a)) => a.client.output,
            AcmeCommand::Eab(EabCommand::List(a)) => a.client.output,
            AcmeCommand::Eab(EabCommand::Revoke(a)) => a.client.output,
        }
    }
}

/// Runs a `certflow acme` sub-command.
pub async fn run_acme(cmd: AcmeCommand) -> ExitCode {
    let output = cmd.output();
    finish(output, acme(cmd).await)
}

async fn acme(cmd: AcmeCommand) -> anyhow::Result<()> {
    match cmd {
        AcmeCommand::Eab(EabCommand::Create(a)) => create(a).await,
        AcmeCommand::Eab(EabCommand::List(a)) => list(a).await,
        AcmeCommand::Eab(EabCommand::Revoke(a)) => revoke(a).await,
    }
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn table(keys: &[Value]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "key id",
        "team",
        "state",
        "expires",
        "created by",
        "account",
    ]);
    for k in keys {
        t.add_row(vec![
            text(k, "key_id"),
            text(k, "team"),
            text(k, "state"),
            text(k, "expires_at"),
            text(k, "created_by"),
            text(k, "account_id"),
        ]);
    }
    t
}

/// `certflow acme eab create`.
async fn create(args: CreateEabArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let k: Value = c
        .json(
            c.http
                .post(c.url("/acme/eab-keys"))
                .json(&json!({"team": args.team})),
        )
        .await?;
    if c.output == Output::Json {
        return print_json(&k);
    }
    eprintln!(
        "EAB key for team {} (key id, then HMAC key), expires {}; shown once:",
        text(&k, "team"),
        text(&k, "expires_at")
    );
    out(format!("{} {}", text(&k, "key_id"), text(&k, "hmac_key")))
}

/// `certflow acme eab list`.
async fn list(args: ListEabArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let list: Value = c.json(c.http.get(c.url("/acme/eab-keys"))).await?;
    if c.output == Output::Json {
        return print_json(&list);
    }
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return out("no EAB keys yet: `certflow acme eab create --team TEAM` makes one");
    }
    out(table(&items))
}

/// `certflow acme eab revoke`.
async fn revoke(args: RevokeEabArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let k: Value = c
        .json(
            c.http
                .delete(c.url(&format!("/acme/eab-keys/{}", args.key_id))),
        )
        .await?;
    if c.output == Output::Json {
        return print_json(&k);
    }
    out(table(std::slice::from_ref(&k)))
}
