//! `certflow ca ...`: inspect and import certificate authorities through the API.

use std::path::PathBuf;

use certflow_api::{ImportCaRequest, IssuerView};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};

/// Output format.
use super::*;

/// `certflow ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Show the issuers (certificate authorities).
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

/// Runs a `certflow ca` sub-command.
pub async fn run_ca(cmd: CaCommand) -> anyhow::Result<()> {
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
            println!("{t}");
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
            println!(
                "imported issuer {} ({}), subject {}",
                issuer.id, issuer.name, issuer.subject
            );
            Ok(())
        }
    }
}
