//! `certflow ca ...`: inspect and import certificate authorities through the
//! API; `ca show` also says where relying parties fetch each CA's
//! certificates (the trust anchor to configure is the root).

use std::path::PathBuf;

use certflow_api::{ImportCaRequest, IssuerView};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use uuid::Uuid;

use super::*;

/// `certflow ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Show the issuers (certificate authorities) and where their root and
    /// CA certificates are published.
    Show {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Import an existing CA certificate and key as an issuer.
    Import {
        #[command(flatten)]
        client: ClientArgs,
        /// Issuer name.
        #[arg(long)]
        name: String,
        /// PEM file of the issuing CA certificate.
        #[arg(long)]
        cert: PathBuf,
        /// PEM file of its private key (PKCS#8).
        #[arg(long)]
        key: PathBuf,
        /// PEM file of the chain above it.
        #[arg(long)]
        chain: Option<PathBuf>,
        /// Make it the default issuer.
        #[arg(long)]
        default: bool,
    },
}

impl CaCommand {
    fn output(&self) -> Output {
        match self {
            CaCommand::Show { client } | CaCommand::Import { client, .. } => client.output,
        }
    }
}

/// Runs a `certflow ca` sub-command.
pub async fn run_ca(cmd: CaCommand) -> ExitCode {
    let output = cmd.output();
    finish(output, ca(cmd).await)
}

/// The public URLs of an issuer's certificates under `server`, as
/// `(what, url)`; none but for certflow's own CAs (created or imported):
/// it holds no certificate of an ACME CA, and maybe not the root of a CA
/// known from imported certificates.
pub(super) fn published(server: &str, i: &IssuerView) -> Vec<(&'static str, String)> {
    if i.kind != "internal" {
        return Vec::new();
    }
    let base = format!("{server}/pki/{}", i.id);
    vec![
        ("root (DER): the trust anchor", format!("{base}/root.crt")),
        (
            "CA bundle (PEM): issuing CA + root",
            format!("{base}/ca-bundle.pem"),
        ),
        ("issuing CA (DER)", format!("{base}/ca.crt")),
    ]
}

async fn ca(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Show { client } => {
            let c = Client::new(&client)?;
            let issuers: Vec<IssuerView> = c.json(c.http.get(c.url("/issuers"))).await?;
            if c.output == Output::Json {
                return print_json(&issuers);
            }
            let mut t = Table::new();
            t.load_preset(UTF8_BORDERS_ONLY);
            t.set_header(vec!["id", "name", "default", "key", "subject", "not after"]);
            for i in &issuers {
                t.add_row(vec![
                    i.id.to_string(),
                    i.name.clone(),
                    if i.is_default {
                        "yes".into()
                    } else {
                        String::new()
                    },
                    i.key_type.clone(),
                    i.subject.clone(),
                    i.not_after.date().to_string(),
                ]);
            }
            out(&t)?;
            for i in &issuers {
                let urls = published(c.server_url(), i);
                if urls.is_empty() {
                    continue;
                }
                out(format!("\n{} ({}):", i.name, i.id))?;
                for (what, url) in urls {
                    out(format!("  {what:<36} {url}"))?;
                }
            }
            Ok(())
        }
        CaCommand::Import {
            client,
            name,
            cert,
            key,
            chain,
            default,
        } => {
            let c = Client::new(&client)?;
            let body = ImportCaRequest {
                name,
                certificate_pem: read(&cert)?,
                private_key_pem: read(&key)?,
                chain_pem: chain.as_ref().map(read).transpose()?,
                make_default: default,
            };
            let issuer: IssuerView = c
                .json(c.http.post(c.url("/issuers/import")).json(&body))
                .await?;
            if c.output == Output::Json {
                return print_json(&issuer);
            }
            out(format!(
                "imported issuer {} ({}), subject {}",
                issuer.id, issuer.name, issuer.subject
            ))
        }
    }
}

/// The id of the issuer `s` names (an id, or an issuer's name).
pub(super) async fn issuer_id(c: &Client, s: &str) -> anyhow::Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(s.trim()) {
        return Ok(id);
    }
    let issuers: Vec<IssuerView> = c.json(c.http.get(c.url("/issuers"))).await?;
    issuers
        .iter()
        .find(|i| i.name == s.trim())
        .map(|i| i.id)
        .ok_or_else(|| {
            Failure::NotFound(format!(
                "expected an issuer id or name: no issuer is named {s:?} (`certflow ca show` lists them)"
            ))
            .into()
        })
}
