//! The agent's configuration file (TOML), validated as a whole at start so that
//! every mistake is reported at once, each naming its field.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

/// Everything `certflow-agent` reads from its configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the server's agent listener (`https://host:port`).
    pub server: String,
    /// PEM bundle of the CA(s) that issued the agent listener's certificate.
    pub ca_file: PathBuf,
    /// Directory for the identity, locally generated keys and install records.
    pub state_dir: PathBuf,
    /// Name proposed at enrolment (the join token's name otherwise).
    #[serde(default)]
    pub agent_name: Option<String>,
    /// Seconds between polls when long-polling is off or the server is quiet.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// `?wait=` seconds for long-polling (0 turns it off).
    #[serde(default = "default_long_poll")]
    pub long_poll_secs: u64,
    /// Cap of the exponential backoff while the server is unreachable.
    #[serde(default = "default_backoff_cap")]
    pub backoff_cap_secs: u64,
    /// `text` (default) or `json` log lines on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// How the agent proves who it is when it enrols.
    pub auth: AuthConfig,
    /// The certificates this host installs.
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<CertConfig>,
    /// Where discovery looks for certificates not managed here (reported to
    /// the server by `run` and `once`, printed by `certflow-agent discover`).
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
}

/// `[discovery]`: certificate files and TLS endpoints to inventory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Files or directories (not descended into) holding `*.pem`/`*.crt`/`*.cer` files.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// `host:port` or `host:port,sni` endpoints whose served leaf is read.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Files larger than this are skipped (certificates are small; logs and archives are not).
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Seconds allowed for one endpoint's connect and handshake.
    #[serde(default = "default_endpoint_timeout")]
    pub timeout_secs: u64,
    /// Seconds between discovery reports while `run`s (one at start).
    #[serde(default = "default_report_interval")]
    pub report_interval_secs: u64,
}

impl DiscoveryConfig {
    /// Time between discovery reports.
    pub fn report_interval(&self) -> Duration {
        Duration::from_secs(self.report_interval_secs)
    }
}

fn default_max_file_bytes() -> u64 {
    256 * 1024
}
fn default_endpoint_timeout() -> u64 {
    5
}
/// Hourly: what a host holds changes slowly, and each report is a full scan.
fn default_report_interval() -> u64 {
    3600
}

fn default_poll_interval() -> u64 {
    300
}
fn default_long_poll() -> u64 {
    55
}
fn default_backoff_cap() -> u64 {
    300
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Enrolment credentials: a one-time join token, or OIDC client credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// File holding a one-time join token (`cfj_...`).
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    /// OAuth 2.0 token endpoint for the client-credentials grant.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Client id at the token endpoint.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Client secret, inline (the config file must then be private, as always).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// File holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// `resource` parameter (RFC 8707), when the provider wants one.
    #[serde(default)]
    pub resource: Option<String>,
    /// `audience` parameter (Auth0, Okta custom servers), when wanted.
    #[serde(default)]
    pub audience: Option<String>,
    /// `scope` parameter, when wanted.
    #[serde(default)]
    pub scope: Option<String>,
    /// CA bundle for the token endpoint (the platform's roots otherwise).
    #[serde(default)]
    pub token_ca_file: Option<PathBuf>,
}

/// Where the private key comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    /// Generated on this host; only a CSR leaves it (default).
    #[default]
    Agent,
    /// Generated by the server and fetched with the bundle (shared keys).
    Server,
}

/// One managed certificate on this host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// Display name of the certificate (matches the assignment's name).
    #[serde(default)]
    pub name: Option<String>,
    /// Certificate id, when the name is ambiguous or not chosen by the agent.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Names (SANs) to request, for agent-generated keys.
    #[serde(default)]
    pub names: Vec<String>,
    /// `agent` (default) or `server`.
    #[serde(default)]
    pub key: KeySource,
    /// Key type for agent-generated keys.
    #[serde(default)]
    pub key_type: KeyType,
    /// Owning team for agent requests (the agent's only team otherwise).
    #[serde(default)]
    pub team: Option<String>,
    /// Issuer name for agent requests (the default issuer otherwise).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Profile for agent requests (`tls-server` otherwise).
    #[serde(default)]
    pub profile: Option<String>,
    /// Validity in days for agent requests.
    #[serde(default)]
    pub validity_days: Option<u32>,
    /// Validity in seconds for agent requests (short-lived certificates).
    #[serde(default)]
    pub validity_seconds: Option<u32>,
    /// Files to write.
    pub install: InstallConfig,
    /// Command that makes the service load the new files.
    #[serde(default)]
    pub reload: Option<ReloadConfig>,
    /// Where the served certificate is checked after a reload.
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
    /// What to do when the server says the certificate was revoked (and not
    /// replaced): `keep` (default) or `remove`.
    #[serde(default)]
    pub on_revoked: OnRevoked,
}

/// What the agent does with a certificate the server revoked without a
/// replacement (the assignment's status `revoked`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRevoked {
    /// Leave the files in place and warn once per version: removing files
    /// breaks a server that still references them (the default).
    #[default]
    Keep,
    /// Remove the targets the agent linked and its store's version links,
    /// then run the reload command, once.
    Remove,
}

impl CertConfig {
    /// The handle used in logs, file names and the state directory.
    pub fn label(&self) -> String {
        match (&self.name, &self.id) {
            (Some(n), _) => n.clone(),
            (None, Some(id)) => id.to_string(),
            (None, None) => String::from("unnamed"),
        }
    }
}

/// Key types the agent generates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on P-256 (default).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA 2048.
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096.
    Rsa4096,
    /// Ed25519.
    Ed25519,
}

/// Install targets, ownership and modes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallConfig {
    /// Leaf certificate (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Issuing chain without the leaf (PEM).
    #[serde(default)]
    pub chain: Option<PathBuf>,
    /// Leaf followed by the chain (PEM).
    #[serde(default)]
    pub fullchain: Option<PathBuf>,
    /// Private key (PKCS#8 PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PKCS#12 bundle of key, leaf and chain.
    #[serde(default)]
    pub pkcs12: Option<PathBuf>,
    /// File holding the PKCS#12 password (required with `pkcs12`).
    #[serde(default)]
    pub pkcs12_password_file: Option<PathBuf>,
    /// Directory of the versioned copies the targets link to
    /// (`<first target's directory>/.certflow/<name>` by default).
    #[serde(default)]
    pub store_dir: Option<PathBuf>,
    /// Owner of the installed files (user name or uid).
    #[serde(default)]
    pub owner: Option<String>,
    /// Group of the installed files (group name or gid).
    #[serde(default)]
    pub group: Option<String>,
    /// Mode of certificate files, octal (`"0644"` by default).
    #[serde(default)]
    pub mode: Option<String>,
    /// Mode of the key and PKCS#12 files (`"0600"` by default, never world-readable).
    #[serde(default)]
    pub key_mode: Option<String>,
}

impl InstallConfig {
    /// The configured targets, by the file name they have in a version directory.
    pub fn targets(&self) -> Vec<(&'static str, &Path)> {
        [
            ("cert.pem", &self.cert),
            ("chain.pem", &self.chain),
            ("fullchain.pem", &self.fullchain),
            ("key.pem", &self.key),
            ("bundle.p12", &self.pkcs12),
        ]
        .into_iter()
        .filter_map(|(f, p)| p.as_deref().map(|p| (f, p)))
        .collect()
    }
}

/// The reload command.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Run with `sh -c`.
    pub command: String,
    /// Killed and counted as failed after this long.
    #[serde(default = "default_reload_timeout")]
    pub timeout_secs: u64,
}

fn default_reload_timeout() -> u64 {
    30
}

/// The TLS endpoint that must serve the new certificate after the reload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// `host:port` to connect to.
    pub address: String,
    /// Server name sent in SNI and checked against the certificate (the host otherwise).
    #[serde(default)]
    pub sni: Option<String>,
    /// How long to keep trying until the new certificate is served.
    #[serde(default = "default_verify_timeout")]
    pub timeout_secs: u64,
}

fn default_verify_timeout() -> u64 {
    15
}

/// A configuration problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted path of the field (`certificate[0].install.key`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML or not the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message (line, column, field).
        message: String,
    },
    /// One or more fields are wrong.
    #[error("{path}: invalid configuration:\n  {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Invalid>,
    },
}

impl Config {
    /// Reads, parses and validates the file, checking that it and every
    /// secret file it names are not world-readable.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut problems = cfg.validate();
        if let Err(reason) = private_file(path) {
            problems.insert(
                0,
                Invalid {
                    field: String::from("(config file)"),
                    reason,
                },
            );
        }
        for (field, file) in cfg.secret_files() {
            if let Err(reason) = private_file(&file) {
                problems.push(Invalid { field, reason });
            }
        }
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Files holding secrets, by field.
    fn secret_files(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        if let Some(f) = &self.auth.join_token_file {
            out.push(("auth.join_token_file".into(), f.clone()));
        }
        if let Some(f) = &self.auth.client_secret_file {
            out.push(("auth.client_secret_file".into(), f.clone()));
        }
        for (i, c) in self.certificates.iter().enumerate() {
            if let Some(f) = &c.install.pkcs12_password_file {
                out.push((
                    format!("certificate[{i}].install.pkcs12_password_file"),
                    f.clone(),
                ));
            }
        }
        out
    }

    /// Every problem in the configuration's content (files are not opened).
    pub fn validate(&self) -> Vec<Invalid> {
        let mut p = Vec::new();
        let mut bad = |field: &str, reason: &str| {
            p.push(Invalid {
                field: field.to_owned(),
                reason: reason.to_owned(),
            })
        };
        match self.server.strip_prefix("https://") {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
            _ => bad(
                "server",
                "must be an https:// URL of the agent listener (all agent traffic is mTLS)",
            ),
        }
        if !self.ca_file.is_absolute() {
            bad("ca_file", "must be an absolute path");
        }
        if !self.state_dir.is_absolute() {
            bad("state_dir", "must be an absolute path");
        }
        if self.poll_interval_secs < 5 || self.poll_interval_secs > 86_400 {
            bad("poll_interval_secs", "must be between 5 and 86400");
        }
        if self.long_poll_secs > 300 {
            bad(
                "long_poll_secs",
                "must be at most 300 (0 turns long-polling off)",
            );
        }
        if self.backoff_cap_secs < 1 || self.backoff_cap_secs > 86_400 {
            bad("backoff_cap_secs", "must be between 1 and 86400");
        }
        check_auth(&self.auth, &mut bad);
        // A discovery-only agent (an inventory of a host certflow does not
        // manage yet) needs no certificate; an agent with neither does nothing.
        if self.certificates.is_empty() && self.discovery.is_none() {
            bad(
                "certificate",
                "at least one [[certificate]] or a [discovery] section is required",
            );
        }
        if let Some(d) = &self.discovery {
            check_discovery(d, &mut bad);
        }
        // Labels (the state directory is kept by them) and install targets
        // must not repeat across certificates.
        let mut labels = HashSet::new();
        let mut targets = HashSet::new();
        for (i, c) in self.certificates.iter().enumerate() {
            check_certificate(i, c, &mut labels, &mut targets, &mut bad);
        }
        p
    }

    /// Poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_secs)
    }
}

/// The `[auth]` section: a join token, or complete client credentials.
fn check_auth(a: &AuthConfig, bad: &mut impl FnMut(&str, &str)) {
    let oidc = a.token_endpoint.is_some()
        || a.client_id.is_some()
        || a.client_secret.is_some()
        || a.client_secret_file.is_some();
    if a.join_token_file.is_none() && !oidc {
        bad(
            "auth",
            "set join_token_file, or token_endpoint + client_id + client_secret(_file)",
        );
    }
    if oidc {
        match &a.token_endpoint {
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => {}
            Some(_) => bad("auth.token_endpoint", "must be an http(s):// URL"),
            None => bad("auth.token_endpoint", "is required with client credentials"),
        }
        if a.client_id.as_deref().is_none_or(str::is_empty) {
            bad("auth.client_id", "is required with client credentials");
        }
        match (&a.client_secret, &a.client_secret_file) {
            (Some(_), Some(_)) => bad(
                "auth.client_secret",
                "set either client_secret or client_secret_file, not both",
            ),
            (None, None) => bad(
                "auth.client_secret_file",
                "is required with client credentials (or client_secret)",
            ),
            _ => {}
        }
    }
}

/// The `[discovery]` section.
fn check_discovery(d: &DiscoveryConfig, bad: &mut impl FnMut(&str, &str)) {
    if d.paths.is_empty() && d.endpoints.is_empty() {
        bad(
            "discovery",
            "name at least one of paths or endpoints to look at",
        );
    }
    for (i, path) in d.paths.iter().enumerate() {
        if !path.is_absolute() {
            bad(&format!("discovery.paths[{i}]"), "must be an absolute path");
        }
    }
    for (i, e) in d.endpoints.iter().enumerate() {
        let addr = e.split_once(',').map_or(e.as_str(), |(a, _)| a);
        if split_host_port(addr).is_none() {
            bad(
                &format!("discovery.endpoints[{i}]"),
                "must be host:port or host:port,sni",
            );
        }
    }
    if d.max_file_bytes == 0 {
        bad("discovery.max_file_bytes", "must be at least 1");
    }
    if d.timeout_secs == 0 || d.timeout_secs > 600 {
        bad("discovery.timeout_secs", "must be between 1 and 600");
    }
    if d.report_interval_secs < 60 || d.report_interval_secs > 604_800 {
        bad(
            "discovery.report_interval_secs",
            "must be between 60 and 604800 (one week)",
        );
    }
}

/// The `i`th `[[certificate]]`; `labels` and `targets` hold those of the
/// certificates before it.
fn check_certificate(
    i: usize,
    c: &CertConfig,
    labels: &mut HashSet<String>,
    targets: &mut HashSet<PathBuf>,
    bad: &mut impl FnMut(&str, &str),
) {
    let f = |s: &str| format!("certificate[{i}].{s}");
    match &c.name {
        Some(n) if !valid_label(n) => bad(
            &f("name"),
            "1 to 64 letters, digits, '.', '_' or '-', not starting with '.'",
        ),
        None if c.id.is_none() => bad(&f("name"), "set name or id"),
        None if c.key == KeySource::Agent => bad(
            &f("name"),
            "is required for agent-generated keys (it names the request)",
        ),
        _ => {}
    }
    if !labels.insert(c.label()) {
        bad(&f("name"), "is used by another certificate");
    }
    match c.key {
        KeySource::Agent if c.names.is_empty() && c.id.is_none() => bad(
            &f("names"),
            "at least one name is required for an agent-generated key",
        ),
        KeySource::Server if !c.names.is_empty() => bad(
            &f("names"),
            "names come from the server for server-generated keys; remove them",
        ),
        _ => {}
    }
    for (j, n) in c.names.iter().enumerate() {
        if n.is_empty() || n.len() > 253 || n.chars().any(|ch| ch.is_whitespace()) {
            bad(&f(&format!("names[{j}]")), "not a DNS name or IP address");
        }
    }
    if c.validity_seconds.is_some_and(|s| s < 60) {
        bad(&f("validity_seconds"), "must be at least 60");
    }
    check_install(i, c, targets, bad);
    if let Some(r) = &c.reload {
        if r.command.trim().is_empty() {
            bad(&f("reload.command"), "must not be empty");
        }
        if r.timeout_secs == 0 || r.timeout_secs > 3600 {
            bad(&f("reload.timeout_secs"), "must be between 1 and 3600");
        }
    }
    if let Some(v) = &c.verify {
        if split_host_port(&v.address).is_none() {
            bad(&f("verify.address"), "must be host:port");
        }
        if v.timeout_secs == 0 || v.timeout_secs > 600 {
            bad(&f("verify.timeout_secs"), "must be between 1 and 600");
        }
    }
}

/// The `install` table of the `i`th certificate; `targets` holds the files
/// the certificates before it install.
fn check_install(
    i: usize,
    c: &CertConfig,
    targets: &mut HashSet<PathBuf>,
    bad: &mut impl FnMut(&str, &str),
) {
    let f = |s: &str| format!("certificate[{i}].{s}");
    let ins = &c.install;
    let t = ins.targets();
    if t.is_empty() {
        bad(
            &f("install"),
            "name at least one of cert, chain, fullchain, key, pkcs12",
        );
    }
    if ins.key.is_none() && ins.pkcs12.is_none() && c.key == KeySource::Agent {
        bad(
            &f("install.key"),
            "an agent-generated key exists only on this host: install it (key or pkcs12)",
        );
    }
    for (file, path) in &t {
        let field = f(&format!("install.{}", field_of(file)));
        if !path.is_absolute() {
            bad(&field, "must be an absolute path");
        } else if path.file_name().is_none() || path.parent().is_none() {
            bad(&field, "must name a file");
        } else if !targets.insert(path.to_path_buf()) {
            bad(&field, "is also the target of another file");
        }
    }
    if ins.pkcs12.is_some() != ins.pkcs12_password_file.is_some() {
        bad(
            &f("install.pkcs12_password_file"),
            "pkcs12 and pkcs12_password_file go together",
        );
    }
    if let Some(d) = &ins.store_dir
        && !d.is_absolute()
    {
        bad(&f("install.store_dir"), "must be an absolute path");
    }
    if let Some(m) = &ins.mode
        && parse_mode(m).is_none()
    {
        bad(&f("install.mode"), "an octal mode such as \"0644\"");
    }
    if let Some(m) = &ins.key_mode {
        match parse_mode(m) {
            None => bad(&f("install.key_mode"), "an octal mode such as \"0600\""),
            Some(m) if m & 0o007 != 0 => bad(
                &f("install.key_mode"),
                "a private key must not be accessible to others (use 0600 or 0640)",
            ),
            _ => {}
        }
    }
}

fn field_of(file: &str) -> &'static str {
    match file {
        "cert.pem" => "cert",
        "chain.pem" => "chain",
        "fullchain.pem" => "fullchain",
        "key.pem" => "key",
        _ => "pkcs12",
    }
}

/// Names that are safe as file names in the state and store directories.
fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Parses an octal mode (`"0644"`, `"644"`).
pub fn parse_mode(s: &str) -> Option<u32> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8).ok()?;
    (m <= 0o777).then_some(m)
}

/// Splits `host:port` (`[v6]:port` too).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse().ok()?;
    (!h.is_empty() && !h.contains(':')).then(|| (h.to_owned(), port))
}

/// Refuses a file that others can read (or that cannot be inspected).
pub fn private_file(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "{} is world-readable (mode {:04o}); it holds secrets: chmod o-rwx {}",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server = "https://certflow.example.com:8443"
ca_file = "/etc/certflow-agent/ca.pem"
state_dir = "/var/lib/certflow-agent"
[auth]
join_token_file = "/etc/certflow-agent/join-token"
[[certificate]]
name = "www"
names = ["www.example.com"]
[certificate.install]
fullchain = "/etc/nginx/tls/www.pem"
key = "/etc/nginx/tls/www.key"
[certificate.reload]
command = "systemctl reload nginx"
[certificate.verify]
address = "127.0.0.1:443"
sni = "www.example.com"
"#;

    fn parse(s: &str) -> Config {
        toml::from_str(s).unwrap()
    }

    fn fields(s: &str) -> Vec<String> {
        parse(s).validate().into_iter().map(|i| i.field).collect()
    }

    #[test]
    fn a_good_config_has_no_problem_and_takes_defaults() {
        let c = parse(GOOD);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.poll_interval_secs, 300);
        assert_eq!(c.long_poll_secs, 55);
        assert_eq!(c.certificates[0].key, KeySource::Agent);
        assert_eq!(c.certificates[0].key_type, KeyType::EcdsaP256);
        assert_eq!(c.certificates[0].reload.as_ref().unwrap().timeout_secs, 30);
    }

    #[test]
    fn discovery_is_optional_and_takes_defaults() {
        assert!(parse(GOOD).discovery.is_none());
        let c = parse(&format!(
            "{GOOD}[discovery]\npaths = [\"/etc/ssl/certs\"]\nendpoints = [\"127.0.0.1:443,www.example.com\"]\n"
        ));
        let d = c.discovery.unwrap();
        assert_eq!(d.paths, [PathBuf::from("/etc/ssl/certs")]);
        assert_eq!(d.endpoints, ["127.0.0.1:443,www.example.com"]);
        assert_eq!((d.max_file_bytes, d.timeout_secs), (256 * 1024, 5));
        assert_eq!(d.report_interval(), Duration::from_secs(3600));
        let e = toml::from_str::<Config>(&format!("{GOOD}[discovery]\npath = []\n")).unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
    }

    /// GOOD without its `[[certificate]]` (and everything after it).
    fn without_certificates() -> String {
        GOOD.split("[[certificate]]").next().unwrap().to_owned()
    }

    #[test]
    fn a_discovery_only_agent_needs_no_certificate_but_an_empty_agent_is_refused() {
        let bare = without_certificates();
        assert_eq!(fields(&bare), ["certificate"]);
        let e = parse(&bare).validate()[0].reason.clone();
        assert!(e.contains("[discovery]"), "{e}");
        let only = format!("{bare}[discovery]\npaths = [\"/etc/ssl/private-certs\"]\n");
        let c = parse(&only);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert!(c.certificates.is_empty());
        // A [discovery] that looks nowhere is a mistake, not a discovery-only agent.
        assert_eq!(fields(&format!("{bare}[discovery]\n")), ["discovery"]);
    }

    #[test]
    fn discovery_fields_are_checked() {
        let base = format!(
            "{}[discovery]\npaths = [\"/etc/ssl\"]\n",
            without_certificates()
        );
        let cases: &[(&str, &str)] = &[
            (
                "report_interval_secs = 59",
                "discovery.report_interval_secs",
            ),
            ("report_interval_secs = 0", "discovery.report_interval_secs"),
            (
                "report_interval_secs = 604801",
                "discovery.report_interval_secs",
            ),
            ("timeout_secs = 0", "discovery.timeout_secs"),
            ("max_file_bytes = 0", "discovery.max_file_bytes"),
            ("endpoints = [\"nowhere\"]", "discovery.endpoints[0]"),
        ];
        for (line, field) in cases {
            assert_eq!(fields(&format!("{base}{line}\n")), [*field], "{line}");
        }
        let relative = base.replace("\"/etc/ssl\"", "\"/etc/ssl\", \"certs\"");
        assert_eq!(fields(&relative), ["discovery.paths[1]"]);
        let r = parse(&format!("{base}report_interval_secs = 59\n")).validate();
        assert!(r[0].reason.contains("60"), "{r:?}");
        let ok = format!(
            "{base}report_interval_secs = 60\nendpoints = [\"127.0.0.1:443,www.example.com\", \"[::1]:8443\"]\n"
        );
        assert!(fields(&ok).is_empty(), "{:?}", fields(&ok));
    }

    #[test]
    fn misspelt_keys_are_refused_with_their_name() {
        let e = toml::from_str::<Config>(&GOOD.replace("ca_file", "ca_fil")).unwrap_err();
        assert!(e.to_string().contains("ca_fil"), "{e}");
        let e = toml::from_str::<Config>(&GOOD.replace("fullchain =", "fulchain =")).unwrap_err();
        assert!(e.to_string().contains("fulchain"), "{e}");
        let e = toml::from_str::<Config>(&GOOD.replace(
            "[certificate.install]",
            "key_type = \"dsa\"\n[certificate.install]",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("dsa"), "{e}");
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("https://certflow.example.com:8443", "http://x", "server"),
            ("\"/etc/certflow-agent/ca.pem\"", "\"ca.pem\"", "ca_file"),
            ("\"/var/lib/certflow-agent\"", "\"state\"", "state_dir"),
            (
                "\"/etc/nginx/tls/www.key\"",
                "\"www.key\"",
                "certificate[0].install.key",
            ),
            ("name = \"www\"", "name = \"../x\"", "certificate[0].name"),
            (
                "names = [\"www.example.com\"]",
                "names = []",
                "certificate[0].names",
            ),
            (
                "address = \"127.0.0.1:443\"",
                "address = \"nowhere\"",
                "certificate[0].verify.address",
            ),
            (
                "command = \"systemctl reload nginx\"",
                "command = \" \"",
                "certificate[0].reload.command",
            ),
            (
                "join_token_file = \"/etc/certflow-agent/join-token\"",
                "client_id = \"a\"",
                "auth.token_endpoint",
            ),
        ];
        for (from, to, field) in cases {
            let got = fields(&GOOD.replace(from, to));
            assert!(got.iter().any(|f| f == field), "{field}: {got:?}");
        }
    }

    #[test]
    fn key_rules() {
        let s = GOOD.replace("key = \"/etc/nginx/tls/www.key\"", "key_mode = \"0644\"");
        let got = fields(&s);
        assert!(
            got.contains(&"certificate[0].install.key".to_owned()),
            "{got:?}"
        );
        assert!(
            got.contains(&"certificate[0].install.key_mode".to_owned()),
            "{got:?}"
        );
        let s = GOOD.replace(
            "[certificate.install]",
            "key = \"server\"\n[certificate.install]",
        );
        assert_eq!(fields(&s), vec!["certificate[0].names".to_owned()]);
        let s = GOOD.replace(
            "key = \"/etc/nginx/tls/www.key\"",
            "key = \"/etc/nginx/tls/www.key\"\npkcs12 = \"/etc/x.p12\"",
        );
        assert_eq!(
            fields(&s),
            vec!["certificate[0].install.pkcs12_password_file".to_owned()]
        );
    }

    #[test]
    fn two_files_on_one_path_and_duplicate_names_are_refused() {
        let s = GOOD.replace("/etc/nginx/tls/www.pem", "/etc/nginx/tls/www.key");
        assert!(fields(&s).contains(&"certificate[0].install.key".to_owned()));
        let two = format!(
            "{GOOD}\n[[certificate]]\nname = \"www\"\nnames = [\"a.example.com\"]\n[certificate.install]\nkey = \"/k\"\n"
        );
        assert!(fields(&two).contains(&"certificate[1].name".to_owned()));
    }

    #[test]
    fn world_readable_config_and_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("join-token");
        std::fs::write(&token, "cfj_x").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = dir.path().join("agent.toml");
        std::fs::write(
            &cfg,
            GOOD.replace("/etc/certflow-agent/join-token", token.to_str().unwrap()),
        )
        .unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::load(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("(config file)") && e.contains("world-readable"),
            "{e}"
        );
        assert!(e.contains("auth.join_token_file"), "{e}");
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        Config::load(&cfg).unwrap();
    }

    #[test]
    fn host_port_and_modes() {
        assert_eq!(split_host_port("[::1]:443"), Some(("::1".into(), 443)));
        assert_eq!(split_host_port("web:8443"), Some(("web".into(), 8443)));
        assert_eq!(split_host_port("web"), None);
        assert_eq!(parse_mode("0640"), Some(0o640));
        assert_eq!(parse_mode("999"), None);
    }
}
