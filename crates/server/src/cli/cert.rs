//! `certflow cert ...`: request, list, show, renew, revoke, download, import and
//! manage certificates, their discovery and agent take-over, through the API.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use certflow_api::agent::{DiscoveredList, TakeOverRequest};
use certflow_api::{
    AuditEventView, CertificateDetail, CertificatePage, CreateCertificateRequest, Pkcs12Request,
    RenewRequest, RevokeRequest,
};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use uuid::Uuid;

use super::*;

mod destination;

/// `certflow cert ...`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Request a certificate.
    Create(CreateArgs),
    /// Import an existing certificate (PEM bundle or PKCS#12), of a certflow issuer or another CA.
    Import(ImportArgs),
    /// Take over management of an inventory-only (imported) certificate.
    Manage(ManageArgs),
    /// List the certificates agents discovered on their hosts.
    Discovered(DiscoveredArgs),
    /// Take over a discovered certificate: certflow issues one for the same
    /// names, assigned to the agent that found it, and renews it.
    TakeOver(TakeOverArgs),
    /// List certificates.
    List(ListArgs),
    /// Show one certificate with versions and history.
    Show(ShowArgs),
    /// Download certificate, chain, fullchain, key (PEM) or PKCS#12.
    Download(DownloadArgs),
    /// Renew now.
    Renew(RenewArgs),
    /// Revoke a version.
    Revoke(RevokeArgs),
    /// Archive: stop renewing and delivering.
    Archive(ArchiveArgs),
    /// A certificate's destinations: AWS Certificate Manager, ELBv2 listeners.
    #[command(subcommand)]
    Destination(destination::DestinationCommand),
}

/// Which certificate a command acts on: its id, or its name (unique in its
/// team; `--team` picks one when several teams use the name).
#[derive(Debug, Args)]
pub struct CertRef {
    /// Certificate id or name.
    #[arg(value_name = "ID|NAME")]
    cert: String,
    /// The owning team, when the name is used in more than one team.
    #[arg(long)]
    team: Option<String>,
}

/// Arguments of `certflow cert create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Owning team.
    #[arg(long)]
    team: String,
    /// Subject alternative name (repeat for several).
    #[arg(long = "san")]
    names: Vec<String>,
    /// Display name (defaults to the first SAN).
    #[arg(long)]
    name: Option<String>,
    /// Label key=value (repeat for several).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// tls-server or tls-client.
    #[arg(long)]
    profile: Option<String>,
    /// Key type for a server-generated key.
    #[arg(long)]
    key_type: Option<String>,
    /// Validity in days.
    #[arg(long)]
    validity_days: Option<u32>,
    /// Exact lifetime in seconds (short-lived certificates; overrides --validity-days).
    #[arg(long)]
    validity_seconds: Option<u32>,
    /// Issuer id or name (`certflow ca show`; the default issuer when absent).
    #[arg(long, value_name = "ID|NAME")]
    issuer: Option<String>,
    /// PEM CSR file: the key stays with you.
    #[arg(long)]
    csr: Option<PathBuf>,
}

/// Arguments of `certflow cert import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Owning team.
    #[arg(long)]
    team: String,
    /// Display name (defaults to the first SAN).
    #[arg(long)]
    name: Option<String>,
    /// Label key=value (repeat for several).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// PEM file: the certificate first, then optionally its chain and key.
    #[arg(long, conflicts_with = "pkcs12", required_unless_present = "pkcs12")]
    file: Option<PathBuf>,
    /// PEM private key file, appended to --file's bundle.
    #[arg(long, requires = "file")]
    key: Option<PathBuf>,
    /// PKCS#12 file.
    #[arg(long, requires = "password_file")]
    pkcs12: Option<PathBuf>,
    /// File holding the PKCS#12 password (first line).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Take over management: renew through certflow from now on.
    #[arg(long)]
    manage: bool,
    /// With --manage: the certflow issuer (name) that renews it; required
    /// for a certificate of another CA.
    #[arg(long, requires = "manage")]
    issuer: Option<String>,
}

/// Arguments of `certflow cert manage`.
#[derive(Debug, Args)]
pub struct ManageArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    cert: CertRef,
    /// The certflow issuer (name) that renews it; required for a
    /// certificate of another CA.
    #[arg(long)]
    issuer: Option<String>,
}

/// Arguments of `certflow cert discovered`.
#[derive(Debug, Args)]
pub struct DiscoveredArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// unmanaged (default), managed or all.
    #[arg(long)]
    status: Option<String>,
    /// Only this agent's (id or name).
    #[arg(long, value_name = "ID|NAME")]
    agent: Option<String>,
}

/// Arguments of `certflow cert take-over`.
#[derive(Debug, Args)]
pub struct TakeOverArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Discovered certificate id (`cert discovered`).
    #[arg(value_parser = discovered_id)]
    id: Uuid,
    /// Owning team (one of the discovering agent's teams).
    #[arg(long)]
    team: String,
    /// Issuer name (the default issuer otherwise).
    #[arg(long)]
    issuer: Option<String>,
    /// Display name (the first discovered name otherwise).
    #[arg(long)]
    name: Option<String>,
}

/// Arguments of `certflow cert list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Substring of name or SAN.
    #[arg(long)]
    search: Option<String>,
    /// Team.
    #[arg(long)]
    team: Option<String>,
    /// Label key=value (repeat; all must match).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// active, revoked or archived.
    #[arg(long)]
    status: Option<String>,
    /// Expiring within N days.
    #[arg(long)]
    expiring_within_days: Option<u32>,
    /// name, not_after or created_at.
    #[arg(long)]
    sort: Option<String>,
    /// Sort descending.
    #[arg(long)]
    desc: bool,
    /// Page size.
    #[arg(long)]
    limit: Option<u32>,
    /// Rows to skip.
    #[arg(long)]
    offset: Option<u64>,
}

/// Arguments of `certflow cert show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    cert: CertRef,
}

/// Arguments of `certflow cert download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    cert: CertRef,
    /// certificate, chain, fullchain, key or pkcs12.
    #[arg(long, default_value = "fullchain")]
    format: String,
    /// Version (default: current).
    #[arg(long)]
    version: Option<u32>,
    /// File holding the PKCS#12 password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Write to this file (mode 600 for keys) instead of stdout.
    #[arg(long, short = 'f')]
    out: Option<PathBuf>,
}

/// Arguments of `certflow cert renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    cert: CertRef,
    /// New CSR for a CSR-keyed certificate.
    #[arg(long)]
    csr: Option<PathBuf>,
}

/// Arguments of `certflow cert revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    cert: CertRef,
    /// RFC 5280 reason, e.g. keyCompromise, superseded, cessationOfOperation.
    #[arg(long, default_value = "unspecified")]
    reason: String,
    /// Version (default: current).
    #[arg(long)]
    version: Option<u32>,
    /// Issue a replacement at once (agents install it on their next
    /// poll); refused for keyCompromise of a requester-held key.
    #[arg(long)]
    replace: bool,
}

/// Arguments of `certflow cert archive`.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    cert: CertRef,
}

fn label_pairs(labels: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("label {l:?} is not key=value"))
        })
        .collect()
}

fn print_detail(output: Output, d: &CertificateDetail) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(d);
    }
    let s = &d.summary;
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (k, v) in [
        ("id", s.id.to_string()),
        ("name", s.name.clone()),
        ("team", s.team.clone()),
        ("status", s.status.clone()),
        ("names", s.names.join(", ")),
        ("labels", labels.join(", ")),
        ("profile", s.profile.clone()),
        ("key", format!("{} ({})", s.key_type, s.key_source)),
        ("version", s.current_version.to_string()),
        ("not after", fmt_time(s.not_after)),
        (
            "renew after",
            if s.managed {
                fmt_time(s.renew_after)
            } else {
                "never: inventory only (certflow cert manage takes it over)".to_owned()
            },
        ),
        (
            "renewal",
            match (&d.renewal.last_error, d.renewal.attempts) {
                (Some(e), n) => format!("{} after {n} attempts: {e}", d.renewal.state),
                (None, 0) => d.renewal.state.clone(),
                (None, n) => format!("{} ({n} attempts)", d.renewal.state),
            },
        ),
        ("issuer", s.issuer_id.to_string()),
    ] {
        t.add_row(vec![k.to_owned(), v]);
    }
    out(&t)?;
    let mut v = Table::new();
    v.load_preset(UTF8_BORDERS_ONLY);
    v.set_header(vec![
        "version",
        "serial",
        "status",
        "not after",
        "fingerprint (sha-256)",
    ]);
    for ver in &d.versions {
        v.add_row(vec![
            ver.version.to_string(),
            ver.serial.clone(),
            ver.status.clone()
                + &ver
                    .revocation_reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
            fmt_time(ver.not_after),
            ver.fingerprint_sha256.clone(),
        ]);
    }
    out(&v)?;
    print_history(&d.history)
}

fn print_history(events: &[AuditEventView]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["at", "who", "action", "outcome"]);
    for e in events {
        t.add_row(vec![
            fmt_time(e.at),
            e.subject.clone(),
            e.action.clone(),
            e.outcome.clone(),
        ]);
    }
    out(&t)
}

impl CertCommand {
    fn output(&self) -> Output {
        match self {
            CertCommand::Create(a) => a.client.output,
            CertCommand::Import(a) => a.client.output,
            CertCommand::Manage(a) => a.client.output,
            CertCommand::Discovered(a) => a.client.output,
            CertCommand::TakeOver(a) => a.client.output,
            CertCommand::List(a) => a.client.output,
            CertCommand::Show(a) => a.client.output,
            CertCommand::Download(a) => a.client.output,
            CertCommand::Renew(a) => a.client.output,
            CertCommand::Revoke(a) => a.client.output,
            CertCommand::Archive(a) => a.client.output,
            CertCommand::Destination(d) => d.output(),
        }
    }
}

/// Runs a `certflow cert` sub-command.
pub async fn run_cert(cmd: CertCommand) -> ExitCode {
    let output = cmd.output();
    finish(output, cert(cmd).await)
}

async fn cert(cmd: CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Create(args) => create(args).await,
        CertCommand::Import(args) => import(args).await,
        CertCommand::List(args) => list(args).await,
        CertCommand::Show(args) => show(args).await,
        CertCommand::Download(args) => download(args).await,
        CertCommand::Discovered(args) => discovered(args).await,
        CertCommand::TakeOver(args) => take_over(args).await,
        CertCommand::Manage(args) => manage(args).await,
        CertCommand::Renew(args) => renew(args).await,
        CertCommand::Revoke(args) => revoke(args).await,
        CertCommand::Archive(args) => archive(args).await,
        CertCommand::Destination(cmd) => destination::run(cmd).await,
    }
}

/// `certflow cert create`.
async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let CreateArgs {
        client,
        team,
        names,
        name,
        labels,
        profile,
        key_type,
        validity_days,
        validity_seconds,
        issuer,
        csr,
    } = args;
    // Local input first: a private key given as the CSR is never sent.
    let csr = csr.as_ref().map(read_csr).transpose()?;
    let labels = label_pairs(&labels)?.into_iter().collect();
    let c = Client::new(&client)?;
    let issuer_id = match issuer {
        Some(i) => Some(super::ca::issuer_id(&c, &i).await?),
        None => None,
    };
    let body = CreateCertificateRequest {
        name,
        names,
        team,
        labels,
        profile,
        key_type,
        validity_days,
        csr,
        issuer_id,
        validity_seconds,
        renewal: None,
    };
    let d: CertificateDetail = c
        .json(c.http.post(c.url("/certificates")).json(&body))
        .await?;
    print_detail(c.output, &d)
}

/// `certflow cert import`.
async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let ImportArgs {
        client,
        team,
        name,
        labels,
        file,
        key,
        pkcs12,
        password_file,
        manage,
        issuer,
    } = args;
    let c = Client::new(&client)?;
    let mut body = serde_json::json!({
        "team": team,
        "name": name,
        "labels": label_pairs(&labels)?.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "manage": manage,
        "issuer": issuer,
    });
    if let Some(file) = &file {
        // The key file's text joins the bundle in memory only.
        let mut pem = read(file)?;
        if let Some(key) = &key {
            pem.push('\n');
            pem.push_str(&read(key)?);
        }
        body["pem"] = pem.into();
    }
    if let Some(p12) = &pkcs12 {
        let der = std::fs::read(p12).with_context(|| format!("reading {}", p12.display()))?;
        body["pkcs12_base64"] = base64::engine::general_purpose::STANDARD.encode(der).into();
        if let Some(pw) = &password_file {
            let text = read(pw)?;
            body["password"] = text.lines().next().unwrap_or("").into();
        }
    }
    let d: CertificateDetail = c
        .json(c.http.post(c.url("/certificates/import")).json(&body))
        .await?;
    print_detail(c.output, &d)
}

/// `certflow cert list`.
async fn list(args: ListArgs) -> anyhow::Result<()> {
    let ListArgs {
        client,
        search,
        team,
        labels,
        status,
        expiring_within_days,
        sort,
        desc,
        limit,
        offset,
    } = args;
    let c = Client::new(&client)?;
    let mut q: Vec<(String, String)> = Vec::new();
    let opt = |k: &str, v: Option<String>| v.map(|v| (k.to_owned(), v));
    q.extend(opt("search", search));
    q.extend(opt("team", team));
    q.extend(
        label_pairs(&labels)?
            .into_iter()
            .map(|(k, v)| ("label".to_owned(), format!("{k}={v}"))),
    );
    q.extend(opt("status", status));
    q.extend(opt(
        "expiring_within_days",
        expiring_within_days.map(|d| d.to_string()),
    ));
    q.extend(opt("sort", sort));
    if desc {
        q.push(("order".into(), "desc".into()));
    }
    q.extend(opt("limit", limit.map(|d| d.to_string())));
    q.extend(opt("offset", offset.map(|d| d.to_string())));
    let page: CertificatePage = c.json(c.http.get(c.url("/certificates")).query(&q)).await?;
    if c.output == Output::Json {
        return print_json(&page);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "id",
        "name",
        "team",
        "status",
        "v",
        "not after",
        "names",
    ]);
    for s in &page.items {
        t.add_row(vec![
            s.id.to_string(),
            s.name.clone(),
            s.team.clone(),
            if s.managed {
                s.status.clone()
            } else {
                format!("{} (inventory)", s.status)
            },
            s.current_version.to_string(),
            s.not_after.date().to_string(),
            s.names.join(", "),
        ]);
    }
    out(&t)?;
    out(format!("{} of {} shown", page.items.len(), page.total))
}

/// `certflow cert show`.
async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let ShowArgs { client, cert } = args;
    let c = Client::new(&client)?;
    let id = certificate_id(&c, &cert).await?;
    let d: CertificateDetail = c
        .json(c.http.get(c.url(&format!("/certificates/{id}"))))
        .await?;
    print_detail(c.output, &d)
}

/// `certflow cert download`.
async fn download(args: DownloadArgs) -> anyhow::Result<()> {
    let DownloadArgs {
        client,
        cert,
        format,
        version,
        password_file,
        out: out_file,
    } = args;
    // Refused before the download, which is audited for keys.
    if format == "pkcs12" && out_file.is_none() {
        return Err(Failure::Usage("PKCS#12 is binary: pass --out FILE".into()).into());
    }
    let c = Client::new(&client)?;
    let id = certificate_id(&c, &cert).await?;
    let bytes = if format == "pkcs12" {
        let Some(pw) = password_file else {
            return Err(Failure::Usage("--password-file is required for pkcs12".into()).into());
        };
        let password = read(&pw)?.trim_end_matches(['\r', '\n']).to_owned();
        let body = Pkcs12Request { password, version };
        c.send(
            c.http
                .post(c.url(&format!("/certificates/{id}/pkcs12")))
                .json(&body),
        )
        .await?
        .bytes()
        .await?
    } else {
        let mut q = vec![("format".to_owned(), format.clone())];
        q.extend(version.map(|v| ("version".to_owned(), v.to_string())));
        c.send(
            c.http
                .get(c.url(&format!("/certificates/{id}/download")))
                .query(&q),
        )
        .await?
        .bytes()
        .await?
    };
    match out_file {
        Some(path) => write_private(&path, &bytes, matches!(format.as_str(), "key" | "pkcs12")),
        None => out_raw(&bytes),
    }
}

/// `certflow cert discovered`.
async fn discovered(args: DiscoveredArgs) -> anyhow::Result<()> {
    let DiscoveredArgs {
        client,
        status,
        agent,
    } = args;
    let c = Client::new(&client)?;
    let mut q: Vec<(&str, String)> = Vec::new();
    q.extend(status.map(|s| ("status", s)));
    if let Some(a) = agent {
        q.push(("agent", super::agent::agent_id(&c, &a).await?.to_string()));
    }
    let list: DiscoveredList = c.json(c.http.get(c.url("/discovered")).query(&q)).await?;
    if c.output == Output::Json {
        return print_json(&list);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec![
        "id",
        "agent",
        "source",
        "names",
        "issuer",
        "not after",
        "state",
    ]);
    for d in &list.items {
        let state = match (d.managed_certificate_id, d.taken_over_certificate_id) {
            (Some(c), _) => format!("managed {c}"),
            (None, Some(c)) => format!("taken over by {c}"),
            (None, None) => "unmanaged".to_owned(),
        };
        t.add_row(vec![
            d.id.to_string(),
            d.agent_name.clone(),
            d.source.clone(),
            d.names.join(", "),
            d.issuer.clone(),
            d.not_after.date().to_string(),
            state,
        ]);
    }
    out(&t)
}

/// `certflow cert take-over`.
async fn take_over(args: TakeOverArgs) -> anyhow::Result<()> {
    let TakeOverArgs {
        client,
        id,
        team,
        issuer,
        name,
    } = args;
    let c = Client::new(&client)?;
    let body = TakeOverRequest { team, issuer, name };
    let d: CertificateDetail = c
        .json(
            c.http
                .post(c.url(&format!("/discovered/{id}/take-over")))
                .json(&body),
        )
        .await?;
    print_detail(c.output, &d)
}

/// `certflow cert manage`.
async fn manage(args: ManageArgs) -> anyhow::Result<()> {
    let ManageArgs {
        client,
        cert,
        issuer,
    } = args;
    let c = Client::new(&client)?;
    let id = certificate_id(&c, &cert).await?;
    let body = serde_json::json!({ "issuer": issuer });
    let d: CertificateDetail = c
        .json(
            c.http
                .post(c.url(&format!("/certificates/{id}/manage")))
                .json(&body),
        )
        .await?;
    print_detail(c.output, &d)
}

/// `certflow cert renew`.
async fn renew(args: RenewArgs) -> anyhow::Result<()> {
    let RenewArgs { client, cert, csr } = args;
    let csr = csr.as_ref().map(read_csr).transpose()?;
    let c = Client::new(&client)?;
    let id = certificate_id(&c, &cert).await?;
    let body = RenewRequest { csr };
    let d: CertificateDetail = c
        .json(
            c.http
                .post(c.url(&format!("/certificates/{id}/renew")))
                .json(&body),
        )
        .await?;
    print_detail(c.output, &d)
}

/// `certflow cert revoke`.
async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let RevokeArgs {
        client,
        cert,
        reason,
        version,
        replace,
    } = args;
    let c = Client::new(&client)?;
    let id = certificate_id(&c, &cert).await?;
    let body = RevokeRequest {
        reason,
        version,
        replace,
    };
    let d: CertificateDetail = c
        .json(
            c.http
                .post(c.url(&format!("/certificates/{id}/revoke")))
                .json(&body),
        )
        .await?;
    print_detail(c.output, &d)?;
    match &d.replacement {
        // The revocation stands: say so, and fail the command.
        Some(r) if r.status != "issued" => anyhow::bail!(
            "version {} was revoked, but its replacement was not issued: {}; \
             renew the certificate (certflow cert renew {id})",
            r.revoked_version,
            r.error.as_deref().unwrap_or("unknown error")
        ),
        _ => Ok(()),
    }
}

/// `certflow cert archive`.
async fn archive(args: ArchiveArgs) -> anyhow::Result<()> {
    let ArchiveArgs { client, cert } = args;
    let c = Client::new(&client)?;
    let id = certificate_id(&c, &cert).await?;
    let d: CertificateDetail = c
        .json(c.http.post(c.url(&format!("/certificates/{id}/archive"))))
        .await?;
    print_detail(c.output, &d)
}

/// The id of the certificate `r` names: an id as it is, a name looked up
/// (exactly, in `--team` when given).
async fn certificate_id(c: &Client, r: &CertRef) -> anyhow::Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(r.cert.trim()) {
        return Ok(id);
    }
    let name = r.cert.trim();
    let mut q = vec![("search", name.to_owned()), ("limit", "500".to_owned())];
    q.extend(r.team.clone().map(|t| ("team", t)));
    let page: CertificatePage = c.json(c.http.get(c.url("/certificates")).query(&q)).await?;
    let hits: Vec<_> = page.items.iter().filter(|s| s.name == name).collect();
    let in_team = r
        .team
        .as_deref()
        .map(|t| format!(" in team {t}"))
        .unwrap_or_default();
    match hits.as_slice() {
        [one] => Ok(one.id),
        [] => Err(Failure::NotFound(format!(
            "expected a certificate id or name: no certificate{in_team} is named {name:?} \
             (`certflow cert list --search {name}` lists those whose names contain it)"
        ))
        .into()),
        many => Err(Failure::Usage(format!(
            "{} certificates are named {name:?} (teams {}): pass the id, or --team",
            many.len(),
            many.iter()
                .map(|s| s.team.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

fn discovered_id(s: &str) -> Result<Uuid, String> {
    parse_id(s, "a discovered certificate", "`certflow cert discovered`")
}
