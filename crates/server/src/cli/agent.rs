//! `certflow agent ...`: join tokens (create, list, revoke) and the agents
//! they enrolled (list, disable, enable, revoke), through the API.
//!
//! A new join token is the one secret this CLI prints: alone on stdout (so
//! `> join-token` or `--out` stores it and nothing else), with what it is
//! for on stderr; the server shows it once and keeps only its hash.

use std::path::PathBuf;

use certflow_api::agent::{
    AgentList, AgentView, CreateJoinTokenRequest, JoinTokenInfo, JoinTokenList, JoinTokenView,
};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use uuid::Uuid;

use super::*;

/// `certflow agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List the enrolled agents.
    List(ClientOnly),
    /// Disable an agent: refused from its next request on (enable undoes it).
    Disable(AgentArgs),
    /// Re-enable a disabled agent.
    Enable(AgentArgs),
    /// Revoke an agent for good (it enrols again with a new join token).
    Revoke(AgentArgs),
    /// One-time join tokens that enrol agents.
    #[command(subcommand)]
    JoinToken(JoinTokenCommand),
}

/// `certflow agent join-token ...`
#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a join token (printed once) for an agent with its name and teams.
    Create(CreateTokenArgs),
    /// List join tokens, newest first (never their text).
    List(ListTokensArgs),
    /// Revoke an unused join token: it expires at once.
    Revoke(RevokeTokenArgs),
}

/// Arguments of commands with no others.
#[derive(Debug, Args)]
pub struct ClientOnly {
    #[command(flatten)]
    client: ClientArgs,
}

/// Arguments of `certflow agent disable|enable|revoke`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Agent id or name.
    #[arg(value_name = "ID|NAME")]
    agent: String,
}

/// Arguments of `certflow agent join-token create`.
#[derive(Debug, Args)]
pub struct CreateTokenArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Name of the agent it enrols.
    #[arg(long)]
    name: String,
    /// A team of that agent (repeat for several): it may hold certificates of these teams.
    #[arg(long = "team")]
    teams: Vec<String>,
    /// Minutes until the token expires (1-1440).
    #[arg(long, default_value_t = 60)]
    ttl_minutes: u32,
    /// Write the token to this file (mode 600) instead of stdout.
    #[arg(long, short = 'f')]
    out: Option<PathBuf>,
}

/// Arguments of `certflow agent join-token list`.
#[derive(Debug, Args)]
pub struct ListTokensArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// At most this many (1-500).
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

/// Arguments of `certflow agent join-token revoke`.
#[derive(Debug, Args)]
pub struct RevokeTokenArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Join token id (`certflow agent join-token list`).
    #[arg(value_parser = token_id)]
    id: Uuid,
}

fn token_id(s: &str) -> Result<Uuid, String> {
    parse_id(s, "a join token", "`certflow agent join-token list`")
}

impl AgentCommand {
    fn output(&self) -> Output {
        match self {
            AgentCommand::List(a) => a.client.output,
            AgentCommand::Disable(a) | AgentCommand::Enable(a) | AgentCommand::Revoke(a) => {
                a.client.output
            }
            AgentCommand::JoinToken(JoinTokenCommand::Create(a)) => a.client.output,
            AgentCommand::JoinToken(JoinTokenCommand::List(a)) => a.client.output,
            AgentCommand::JoinToken(JoinTokenCommand::Revoke(a)) => a.client.output,
        }
    }
}

/// Runs a `certflow agent` sub-command.
pub async fn run_agent(cmd: AgentCommand) -> ExitCode {
    let output = cmd.output();
    finish(output, agent(cmd).await)
}

async fn agent(cmd: AgentCommand) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::List(a) => list(a).await,
        AgentCommand::Disable(a) => set_status(a, "disable").await,
        AgentCommand::Enable(a) => set_status(a, "enable").await,
        AgentCommand::Revoke(a) => set_status(a, "revoke").await,
        AgentCommand::JoinToken(JoinTokenCommand::Create(a)) => create_token(a).await,
        AgentCommand::JoinToken(JoinTokenCommand::List(a)) => list_tokens(a).await,
        AgentCommand::JoinToken(JoinTokenCommand::Revoke(a)) => revoke_token(a).await,
    }
}

fn agent_table(agents: &[AgentView]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "id",
        "name",
        "teams",
        "status",
        "last seen",
        "identity expires",
    ]);
    for a in agents {
        t.add_row(vec![
            a.id.to_string(),
            a.name.clone(),
            a.teams.join(", "),
            a.status.clone(),
            a.last_seen.map(fmt_time).unwrap_or_else(|| "never".into()),
            fmt_time(a.certificate_not_after),
        ]);
    }
    t
}

/// `certflow agent list`.
async fn list(args: ClientOnly) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let list: AgentList = c.json(c.http.get(c.url("/agents"))).await?;
    if c.output == Output::Json {
        return print_json(&list);
    }
    if list.items.is_empty() {
        return out(
            "no agents enrolled yet: `certflow agent join-token create --name NAME --team TEAM` \
             makes the one-time token that enrols one",
        );
    }
    out(agent_table(&list.items))
}

/// `certflow agent disable|enable|revoke`.
async fn set_status(args: AgentArgs, action: &str) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let id = agent_id(&c, &args.agent).await?;
    let a: AgentView = c
        .json(c.http.post(c.url(&format!("/agents/{id}/{action}"))))
        .await?;
    if c.output == Output::Json {
        return print_json(&a);
    }
    out(agent_table(std::slice::from_ref(&a)))
}

/// `certflow agent join-token create`.
async fn create_token(args: CreateTokenArgs) -> anyhow::Result<()> {
    let CreateTokenArgs {
        client,
        name,
        teams,
        ttl_minutes,
        out: out_file,
    } = args;
    let c = Client::new(&client)?;
    let body = CreateJoinTokenRequest {
        name,
        teams,
        ttl_minutes,
    };
    let t: JoinTokenView = c
        .json(c.http.post(c.url("/agents/join-tokens")).json(&body))
        .await?;
    let about = format!(
        "join token {} for agent {} (teams: {}), expires {}; shown once",
        t.id,
        t.name,
        if t.teams.is_empty() {
            "none".to_owned()
        } else {
            t.teams.join(", ")
        },
        fmt_time(t.expires_at)
    );
    match out_file {
        Some(path) => {
            write_private(&path, format!("{}\n", t.token).as_bytes(), true)?;
            if c.output == Output::Json {
                // The token is in the file; the answer without it.
                let mut v = serde_json::to_value(&t)?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("token");
                }
                return print_json(&v);
            }
            eprintln!("{about}");
            Ok(())
        }
        None if c.output == Output::Json => print_json(&t),
        None => {
            eprintln!("{about}:");
            out(&t.token)
        }
    }
}

/// `certflow agent join-token list`.
async fn list_tokens(args: ListTokensArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let list: JoinTokenList = c
        .json(
            c.http
                .get(c.url("/agents/join-tokens"))
                .query(&[("limit", args.limit)]),
        )
        .await?;
    if c.output == Output::Json {
        return print_json(&list);
    }
    out(token_table(&list.items))
}

fn token_table(tokens: &[JoinTokenInfo]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "id",
        "agent name",
        "teams",
        "state",
        "expires",
        "created by",
        "agent",
    ]);
    for i in tokens {
        t.add_row(vec![
            i.id.to_string(),
            i.name.clone(),
            i.teams.join(", "),
            i.state.clone(),
            fmt_time(i.expires_at),
            i.created_by.clone(),
            i.agent_id.map(|a| a.to_string()).unwrap_or_default(),
        ]);
    }
    t
}

/// `certflow agent join-token revoke`.
async fn revoke_token(args: RevokeTokenArgs) -> anyhow::Result<()> {
    let c = Client::new(&args.client)?;
    let info: JoinTokenInfo = c
        .json(
            c.http
                .post(c.url(&format!("/agents/join-tokens/{}/revoke", args.id))),
        )
        .await?;
    if c.output == Output::Json {
        return print_json(&info);
    }
    out(token_table(std::slice::from_ref(&info)))
}

/// The id of the agent `s` names: an id as it is, or an agent's name (a
/// revoked agent yields to one enrolled again under its name).
pub(super) async fn agent_id(c: &Client, s: &str) -> anyhow::Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(s.trim()) {
        return Ok(id);
    }
    let name = s.trim();
    let list: AgentList = c.json(c.http.get(c.url("/agents"))).await?;
    let mut hits: Vec<&AgentView> = list.items.iter().filter(|a| a.name == name).collect();
    if hits.len() > 1 {
        hits.retain(|a| a.status != "revoked");
    }
    match hits.as_slice() {
        [one] => Ok(one.id),
        [] => Err(Failure::NotFound(format!(
            "expected an agent id or name: no agent is named {name:?} (`certflow agent list` lists them)"
        ))
        .into()),
        many => Err(Failure::Usage(format!(
            "{} agents are named {name:?}: pass the id (`certflow agent list`)",
            many.len()
        ))
        .into()),
    }
}
