//! The admin CLI: sub-commands that call the console API over HTTP with the
//! same wire types the server uses. Human tables by default, `--output json`.
//! One module per noun: [`cert`], [`ca`], [`agent`].
//!
//! How a command ends is decided here, once: the exit code says what kind of
//! failure it was (documented in docs/cli.md: 0 done, 1 failed, 2 usage or
//! input refused before anything was sent, 3 refused by the server, 4 not
//! found, 5 not authenticated or not allowed), and with `--output json` the
//! error on stderr is an RFC 9457 problem document, the server's own when it
//! sent one. Everything goes to stdout through [`out`], so a reader that
//! goes away early (`| head`) ends the command quietly instead of a panic.

pub mod acme;
pub mod agent;
pub mod ca;
pub mod cert;

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use certflow_api::PROBLEM_BASE;
use clap::{Args, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

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
    /// PEM CA certificates to trust besides the system's, for an HTTPS
    /// console listener (`[server.tls]`) whose certificate certflow issued.
    #[arg(long, env = "CERTFLOW_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// Output format (errors too: a problem document on stderr).
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

/// Why a command failed, when the kind matters to the exit code or the
/// problem document; any other error is a plain failure (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// The arguments or a local file were refused before anything was sent.
    Usage(String),
    /// Something named on the command line does not exist.
    NotFound(String),
    /// The server answered with an error status; `problem` is its problem
    /// document (or one made of its status and text).
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem document as the server sent it.
        problem: Value,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) | Failure::NotFound(m) => f.write_str(m),
            Failure::Refused { status, problem } => {
                let text = |k: &str| problem.get(k).and_then(Value::as_str).unwrap_or("");
                write!(f, "{status} {}", text("title"))?;
                let fields = problem
                    .get("errors")
                    .and_then(Value::as_array)
                    .filter(|e| !e.is_empty());
                match fields {
                    // The detail joins the same field reasons: print them once.
                    Some(fields) => {
                        f.write_str(":")?;
                        for e in fields {
                            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
                            write!(f, "\n  {}: {}", s("field"), s("reason"))?;
                        }
                        Ok(())
                    }
                    None if text("detail").is_empty() => Ok(()),
                    None => write!(f, ": {}", text("detail")),
                }
            }
        }
    }
}

impl std::error::Error for Failure {}

/// stdout was closed by its reader: the command stops writing, quietly.
#[derive(Debug)]
struct ClosedPipe;

impl std::fmt::Display for ClosedPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for ClosedPipe {}

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        ClosedPipe.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// Prints `text` and a newline on stdout.
fn out(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}

/// Writes `bytes` to stdout as they are.
fn out_raw(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(stdout_error)
}

/// The exit code of a failed command (see the module header).
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Failure>() {
        Some(Failure::Usage(_)) => 2,
        Some(Failure::NotFound(_)) => 4,
        Some(Failure::Refused { status, .. }) => match status {
            404 => 4,
            401 | 403 => 5,
            400..=499 => 3,
            _ => 1,
        },
        None => 1,
    }
}

/// The problem document of a failed command, for `--output json`.
fn problem_of(e: &anyhow::Error) -> Value {
    let local = |code: &str, title: &str, detail: String| json!({ "type": format!("{PROBLEM_BASE}{code}"), "title": title, "detail": detail });
    match e.downcast_ref::<Failure>() {
        Some(Failure::Refused { problem, .. }) => problem.clone(),
        Some(Failure::Usage(m)) => local(
            "cli-usage",
            "The command was refused before anything was sent",
            m.clone(),
        ),
        Some(Failure::NotFound(m)) => local("not-found", "Not found", m.clone()),
        None => local("cli-error", "The command failed", format!("{e:#}")),
    }
}

/// Ends a command: its exit code, and its error on stderr (a problem
/// document with `--output json`).
pub fn finish(output: Output, result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    if e.downcast_ref::<ClosedPipe>().is_some() {
        return ExitCode::SUCCESS;
    }
    if output == Output::Json {
        eprintln!("{}", problem_of(&e));
    } else {
        eprintln!("certflow: {e:#}");
    }
    ExitCode::from(exit_code(&e))
}

/// Whether the raw arguments ask for JSON output (for errors found while
/// parsing them, before clap has read `--output`).
pub fn wants_json(args: impl IntoIterator<Item = OsString>) -> bool {
    let mut prev_is_flag = false;
    for a in args {
        let a = a.to_string_lossy().into_owned();
        if (prev_is_flag && a == "json")
            || ["--output=json", "-ojson", "-o=json"].contains(&a.as_str())
        {
            return true;
        }
        prev_is_flag = a == "--output" || a == "-o";
    }
    false
}

/// A command-line error clap found, as a problem document (exit 2).
pub fn usage_problem(rendered: &str) -> Value {
    let detail = rendered
        .trim()
        .trim_start_matches("error: ")
        .split("\n\n")
        .next()
        .unwrap_or("")
        .to_owned();
    problem_of(&Failure::Usage(detail).into())
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
            return Err(Failure::Usage(
                "no token: pass --token or set CERTFLOW_TOKEN (printed by `certflow serve` at first start)"
                    .into(),
            )
            .into());
        };
        let mut http = reqwest::Client::builder();
        if let Some(path) = &args.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --ca-file {}", path.display()))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
            http = http.tls_certs_merge(roots);
        }
        Ok(Self {
            http: http.build().context("HTTP client")?,
            base: format!("{}/console/api/v1", args.url.trim_end_matches('/')),
            token,
            output: args.output,
        })
    }

    /// The server's base URL (without the API path).
    fn server_url(&self) -> &str {
        self.base.trim_end_matches("/console/api/v1")
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.server_url()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let problem = match serde_json::from_str::<Value>(&text) {
            Ok(p) if p.get("title").is_some() => p,
            // Not a problem document (a proxy's page, say): one in its
            // spirit, RFC 9457 §4.2's about:blank with the status phrase.
            _ => json!({
                "type": "about:blank",
                "title": status.canonical_reason().unwrap_or("Error"),
                "status": status.as_u16(),
                "detail": text.chars().take(300).collect::<String>(),
            }),
        };
        Err(Failure::Refused {
            status: status.as_u16(),
            problem,
        }
        .into())
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

/// A CSR file's text; a file holding a private key is refused here, so the
/// key never leaves the machine (the server would refuse it too, after
/// receiving it).
fn read_csr(path: &PathBuf) -> anyhow::Result<String> {
    let text = read(path)?;
    if text.contains("PRIVATE KEY-----") {
        return Err(Failure::Usage(format!(
            "{p} holds a private key, not a certificate signing request; nothing was sent. \
             Make a CSR from the key and pass that: openssl req -new -key {p} -out request.csr",
            p = path.display()
        ))
        .into());
    }
    Ok(text)
}

/// RFC 3339 to the second: what people paste into tickets.
fn fmt_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    out(serde_json::to_string_pretty(v)?)
}

/// Parses `s` as a UUID, or says what was expected.
fn parse_id(s: &str, what: &str, listed_by: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(s.trim())
        .map_err(|_| format!("expected {what} id ({listed_by} lists them), got {s:?}"))
}

fn write_private(path: &PathBuf, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn json_output_is_found_in_every_spelling() {
        for a in [
            &["cert", "show", "x", "--output", "json"][..],
            &["cert", "show", "-o", "json", "x"],
            &["--output=json", "cert"],
            &["-ojson"],
        ] {
            assert!(wants_json(args(a)), "{a:?}");
        }
        for a in [&["cert", "show", "json"][..], &["-o", "table", "json"]] {
            assert!(!wants_json(args(a)), "{a:?}");
        }
    }

    #[test]
    fn field_errors_are_printed_once() {
        let e = Failure::Refused {
            status: 400,
            problem: json!({
                "type": "https://certflow.dev/problems/invalid-request",
                "title": "The request is invalid",
                "status": 400,
                "detail": "names[0]: not a valid DNS name",
                "errors": [{ "field": "names[0]", "reason": "not a valid DNS name" }],
            }),
        };
        let text = e.to_string();
        assert_eq!(text.matches("not a valid DNS name").count(), 1, "{text}");
        assert_eq!(
            text,
            "400 The request is invalid:\n  names[0]: not a valid DNS name"
        );
    }

    #[test]
    fn exit_codes_follow_the_kind_of_failure() {
        let refused = |status| {
            anyhow::Error::from(Failure::Refused {
                status,
                problem: json!({}),
            })
        };
        assert_eq!(exit_code(&refused(400)), 3);
        assert_eq!(exit_code(&refused(409)), 3);
        assert_eq!(exit_code(&refused(404)), 4);
        assert_eq!(exit_code(&refused(401)), 5);
        assert_eq!(exit_code(&refused(403)), 5);
        assert_eq!(exit_code(&refused(503)), 1);
        assert_eq!(exit_code(&Failure::Usage(String::new()).into()), 2);
        assert_eq!(exit_code(&Failure::NotFound(String::new()).into()), 4);
        assert_eq!(exit_code(&anyhow::anyhow!("cannot reach")), 1);
    }
}
