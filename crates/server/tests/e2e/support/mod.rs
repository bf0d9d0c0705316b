//! The harness of the end-to-end tests: the real `certflow` process (start on
//! a free port, its log under `target/test-logs/`, SIGTERM), clients of its
//! console API and its CLI, shell commands, and in submodules the agent
//! binary ([`agent`]) and the peers the tests start or check with ([`peers`]).

pub(crate) mod agent;
pub(crate) mod peers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `certflow` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_certflow");

/// A running `certflow` process, killed on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    /// `http://127.0.0.1:<port>` of the console listener (empty without the API role).
    pub(crate) url: String,
    /// The bootstrap token a first start printed.
    pub(crate) token_line: Option<String>,
    /// `http://127.0.0.1:<port>/metrics` of the metrics listener, when it has one.
    pub(crate) metrics_url: Option<String>,
    /// The process's stderr (logs), kept in a file so a chatty process never
    /// blocks on a full pipe.
    pub(crate) log: PathBuf,
}

impl Server {
    /// Everything the process logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails the test with `hint` when `tool` is not on PATH.
pub(crate) fn require(tool: &str, hint: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is required by this test and is missing: {hint}");
}

/// Starts `certflow serve` on an OS-chosen port and waits for its "listening" line.
pub(crate) fn start(data: &Path, env: &[(&str, &str)]) -> Result<Server, String> {
    start_with(&["serve"], data, env)
}

/// Starts `certflow <args>` and waits for its "listening" line (or, for a
/// process without the API role, its "running" line; `url` is then empty).
pub(crate) fn start_with(
    args: &[&str],
    data: &Path,
    env: &[(&str, &str)],
) -> Result<Server, String> {
    std::fs::create_dir_all(data).unwrap();
    let log = test_logs().join(format!("{}-{}.log", args.join("-"), uuid_like()));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CERTFLOW_DATA_DIR", data)
        .env("CERTFLOW_SERVER__LISTEN", "127.0.0.1:0")
        // The metrics listener too (127.0.0.1:9464 by default).
        .env("CERTFLOW_METRICS__LISTEN", "127.0.0.1:0")
        // The agent listener is on by default at 127.0.0.1:8443: tests run
        // in parallel, so each server gets an OS-chosen port unless the
        // test names one.
        .env("CERTFLOW_AGENT__LISTEN", "127.0.0.1:0")
        // Info: access lines and every event, so scripts/scan-logs.sh sees
        // what a production log would hold.
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut token_line = None;
    let mut metrics_url = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("export CERTFLOW_TOKEN=") {
            token_line = Some(t.to_owned());
        }
        if let Some(u) = line.strip_prefix("certflow: metrics on ") {
            metrics_url = Some(u.to_owned());
        }
        if let Some(url) = line.strip_prefix("certflow: listening on ") {
            return Ok(Server {
                child,
                url: url.to_owned(),
                token_line,
                metrics_url,
                log,
            });
        }
        if line.starts_with("certflow: running ") {
            return Ok(Server {
                child,
                url: String::new(),
                token_line,
                metrics_url,
                log,
            });
        }
    }
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    Err(format!("exited with {status}: {err}"))
}

/// Where every server log of the suite goes (`target/test-logs/`), kept
/// after the run so scripts/scan-logs.sh can look for leaked secrets.
pub(crate) fn test_logs() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A name part unique within this test run (no RNG crate needed).
pub(crate) fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// SIGTERM, then waits (10 s at most) for the process to exit.
pub(crate) fn stop(mut s: Server) {
    // SIGTERM for a graceful shutdown, as systemd or ECS would.
    Command::new("kill")
        .arg(s.child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if s.child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server did not stop on SIGTERM");
}

/// The webhook receivers of the tests listen on loopback, which the outbound
/// policy refuses: a test that delivers to one allows it, as an
/// administrator would (`[outbound] allow = ["127.0.0.1"]`).
pub(crate) const ALLOW_LOOPBACK_WEBHOOKS: (&str, &str) =
    ("CERTFLOW_OUTBOUND__ALLOW", "[\"127.0.0.1\"]");

/// Settings that make a server renew within seconds: a scan every second,
/// retries from one second, notifications polled every second and retried
/// at most 4 s apart (for as long as a test keeps a channel down).
pub(crate) const FAST_RENEWAL: [(&str, &str); 7] = [
    ("CERTFLOW_RENEWAL__SCHEDULER_INTERVAL_SECS", "1"),
    ("CERTFLOW_RENEWAL__BACKOFF_BASE_SECS", "1"),
    ("CERTFLOW_RENEWAL__BACKOFF_CAP_SECS", "4"),
    ("CERTFLOW_NOTIFICATIONS__DELIVERY__POLL_INTERVAL_SECS", "1"),
    ("CERTFLOW_NOTIFICATIONS__DELIVERY__BACKOFF_BASE_SECS", "1"),
    ("CERTFLOW_NOTIFICATIONS__DELIVERY__BACKOFF_CAP_SECS", "4"),
    ("CERTFLOW_NOTIFICATIONS__DELIVERY__MAX_ATTEMPTS", "200"),
];

/// A console API client with a bearer token.
pub(crate) struct Api {
    pub(crate) http: reqwest::blocking::Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

impl Api {
    /// A client of `server` as `token`.
    pub(crate) fn new(server: &Server, token: &str) -> Self {
        Self {
            http: reqwest::blocking::Client::new(),
            base: server.url.clone(),
            token: token.to_owned(),
        }
    }
    /// GET `path` (under the server URL).
    pub(crate) fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap()
    }
    /// POST `body` as JSON: the status and the JSON answer (null when none).
    pub(crate) fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
    /// POST with an `Idempotency-Key` header.
    pub(crate) fn post_keyed(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
    /// A version's PEM download (`certificate`, `chain`, `fullchain` or `key`).
    pub(crate) fn download(&self, id: &str, format: &str) -> String {
        self.text(&format!(
            "/console/api/v1/certificates/{id}/download?format={format}"
        ))
    }
    /// GET `path`, asserting success: the body as text.
    pub(crate) fn text(&self, path: &str) -> String {
        let r = self.get(path);
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.text().unwrap()
    }
}

/// A fresh P-256 key (PKCS#8 PEM) and a CSR for it, made by openssl in `dir`.
pub(crate) fn key_and_csr(dir: &Path, name: &str) -> (String, String) {
    let (ok, out) = sh(
        dir,
        &[
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    assert!(ok, "openssl: {out}");
    (
        std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap(),
        std::fs::read_to_string(dir.join(format!("{name}.csr"))).unwrap(),
    )
}

/// Runs `args` in `dir`: success, and stdout followed by stderr.
pub(crate) fn sh(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs the `certflow` CLI against `server` as `token`: success, and stdout followed by stderr.
pub(crate) fn cli(server: &Server, token: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("CERTFLOW_URL", &server.url)
        .env("CERTFLOW_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Polls `f` until it returns `Some`, or panics with `what` (and the server log) after `limit`.
pub fn wait_for<T>(
    server: &Server,
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n--- server log ---\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every blob key of the server whose data directory is `data`, whichever
/// store holds them: files under `blobs/`, else the database's `blobs` table
/// (the default, read with Python's sqlite3 while the server runs).
pub(crate) fn blob_keys(data: &Path) -> Vec<String> {
    let dir = data.join("blobs");
    let mut keys = Vec::new();
    if dir.is_dir() {
        let mut dirs = vec![dir.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else {
                    keys.push(e.path().strip_prefix(&dir).unwrap().display().to_string());
                }
            }
        }
    } else {
        let db = data.join("certflow.db");
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1])\n\
                      print('\\n'.join(k for (k,) in c.execute('SELECT key FROM blobs ORDER BY key')))";
        let (ok, out) = sh(data, &["python3", "-c", script, &db.display().to_string()]);
        assert!(ok, "reading the blobs table of {}: {out}", db.display());
        keys.extend(out.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    keys.sort();
    keys
}
