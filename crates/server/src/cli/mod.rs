//! The admin CLI: sub-commands that call the console API over HTTP with the
//! same wire types the server uses. Human tables by default, `--output json`.
//! One module per noun: [`cert`], [`ca`].

pub mod ca;
pub mod cert;

use std::path::PathBuf;

use anyhow::{Context, bail};
use certflow_api::Problem;
use clap::{Args, ValueEnum};
use serde::de::DeserializeOwned;

/// Output format.

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// The API's JSON.
    Json,
}

/// How to reach the API.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server base URL.
    #[arg(
        long,
        env = "CERTFLOW_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Bearer token (the bootstrap admin token printed at first start).
    #[arg(long, env = "CERTFLOW_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    output: Output,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let Some(token) = args.token.clone() else {
            bail!(
                "no token: pass --token or set CERTFLOW_TOKEN (printed by `certflow serve` at first start)"
            );
        };
        Ok(Self {
            http: reqwest::Client::builder().build().context("HTTP client")?,
            base: format!("{}/console/api/v1", args.url.trim_end_matches('/')),
            token,
            output: args.output,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<Problem>(&text) {
            Ok(p) => {
                let mut msg = format!("{} {}: {}", p.status, p.title, p.detail);
                for f in &p.errors {
                    msg.push_str(&format!("\n  {}: {}", f.field, f.reason));
                }
                bail!(msg)
            }
            Err(_) => bail!("{status}: {text}"),
        }
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        self.send(req)
            .await?
            .json()
            .await
            .context("decoding the response")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// RFC 3339 to the second: what people paste into tickets.
fn fmt_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn write_private(path: &PathBuf, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
