//! `certflow cert destination add|list|remove`: a certificate's AWS
//! destinations (ACM, ELBv2 listeners) through the console API.

use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{CertRef, certificate_id};
use crate::cli::{Client, ClientArgs, Output, out, print_json};

/// `certflow cert destination ...`
#[derive(Debug, Subcommand)]
pub enum DestinationCommand {
    /// Attach a destination: ACM in a region, or an ELBv2 listener.
    Add(AddArgs),
    /// List a certificate's destinations and where each delivery stands.
    List(ListArgs),
    /// Detach a destination.
    Remove(RemoveArgs),
}

impl DestinationCommand {
    /// The output format asked for.
    pub fn output(&self) -> Output {
        match self {
            Self::Add(a) => a.client.output,
            Self::List(a) => a.client.output,
            Self::Remove(a) => a.client.output,
        }
    }
}

/// Arguments of `certflow cert destination add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    cert: CertRef,
    /// aws-acm or aws-elbv2-listener.
    #[arg(long)]
    kind: String,
    /// AWS region, e.g. eu-west-1.
    #[arg(long)]
    region: String,
    /// The listener ARN (aws-elbv2-listener).
    #[arg(long)]
    listener_arn: Option<String>,
    /// Make it the listener's default certificate instead of adding it to the SNI list.
    #[arg(long)]
    default: bool,
    /// IAM role to assume for this destination.
    #[arg(long)]
    role_arn: Option<String>,
    /// External id to send with AssumeRole.
    #[arg(long)]
    role_external_id: Option<String>,
}

/// Arguments of `certflow cert destination list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    cert: CertRef,
}

/// Arguments of `certflow cert destination remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    cert: CertRef,
    /// The destination's id (`certflow cert destination list`).
    destination: Uuid,
    /// Also delete the ACM certificate (aws-acm destinations).
    #[arg(long)]
    delete_certificate: bool,
}

fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(items: &[Value]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "id",
        "kind",
        "region",
        "status",
        "version",
        "ACM ARN",
        "listener",
        "last error",
    ]);
    for d in items {
        let status = match d["attempts"].as_u64() {
            Some(n) if n > 0 => format!("{} ({n} attempts)", text(d, "status")),
            _ => text(d, "status"),
        };
        t.add_row(vec![
            text(d, "id"),
            text(d, "kind"),
            text(d, "region"),
            status,
            text(d, "delivered_version"),
            text(d, "external_id"),
            text(d, "listener_arn"),
            text(d, "last_error"),
        ]);
    }
    t
}

/// Runs a `certflow cert destination` sub-command.
pub async fn run(cmd: DestinationCommand) -> anyhow::Result<()> {
    match cmd {
        DestinationCommand::Add(a) => {
            let c = Client::new(&a.client)?;
            let id = certificate_id(&c, &a.cert).await?;
            let body = json!({
                "kind": a.kind, "region": a.region, "listener_arn": a.listener_arn,
                "default": a.default, "role_arn": a.role_arn,
                "role_external_id": a.role_external_id,
            });
            let d: Value = c
                .json(
                    c.http
                        .post(c.url(&format!("/certificates/{id}/destinations")))
                        .json(&body),
                )
                .await?;
            match c.output {
                Output::Json => print_json(&d),
                Output::Table => out(table(std::slice::from_ref(&d))),
            }
        }
        DestinationCommand::List(a) => {
            let c = Client::new(&a.client)?;
            let id = certificate_id(&c, &a.cert).await?;
            let list: Value = c
                .json(
                    c.http
                        .get(c.url(&format!("/certificates/{id}/destinations"))),
                )
                .await?;
            match c.output {
                Output::Json => print_json(&list),
                Output::Table => out(table(list["items"].as_array().map_or(&[], Vec::as_slice))),
            }
        }
        DestinationCommand::Remove(a) => {
            let c = Client::new(&a.client)?;
            let id = certificate_id(&c, &a.cert).await?;
            let mut req = c.http.delete(c.url(&format!(
                "/certificates/{id}/destinations/{}",
                a.destination
            )));
            if a.delete_certificate {
                req = req.query(&[("delete_certificate", "true")]);
            }
            c.send(req).await?;
            match c.output {
                Output::Json => print_json(&json!({ "removed": a.destination })),
                Output::Table => out(format!("destination {} removed", a.destination)),
            }
        }
    }
}
