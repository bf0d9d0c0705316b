//! End to end: the real `certflow` binary on a free loopback port, driven over
//! HTTP and through its own CLI, with what it issues checked by tools certflow
//! did not write (openssl, pkilint). Missing tools fail the test loudly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod agent_nginx;
mod agent_paths;
mod agents;
mod console_ui;
mod deployments;
mod discovery;
mod import;
mod login;
mod prometheus;
mod renewal;
mod replacement;
mod revocation;
mod shutdown;

const BIN: &str = env!("CARGO_BIN_EXE_certflow");

struct Server {
    child: Child,
    url: String,
    token_line: Option<String>,
    /// The process's stderr (logs), kept in a file so a chatty process never
    /// blocks on a full pipe.
    log: PathBuf,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require(tool: &str, hint: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is required by this test and is missing: {hint}");
}

/// Starts `certflow serve` on an OS-chosen port and waits for its "listening" line.
fn start(data: &Path, env: &[(&str, &str)]) -> Result<Server, String> {
    start_with(&["serve"], data, env)
}

/// Starts `certflow <args>` and waits for its "listening" line (or, for a
/// process without the API role, its "running" line; `url` is then empty).
fn start_with(args: &[&str], data: &Path, env: &[(&str, &str)]) -> Result<Server, String> {
    std::fs::create_dir_all(data).unwrap();
    let log = test_logs().join(format!("{}-{}.log", args.join("-"), uuid_like()));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CERTFLOW_DATA_DIR", data)
        .env("CERTFLOW_SERVER__LISTEN", "127.0.0.1:0")
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
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("export CERTFLOW_TOKEN=") {
            token_line = Some(t.to_owned());
        }
        if let Some(url) = line.strip_prefix("certflow: listening on ") {
            return Ok(Server {
                child,
                url: url.to_owned(),
                token_line,
                log,
            });
        }
        if line.starts_with("certflow: running ") {
            return Ok(Server {
                child,
                url: String::new(),
                token_line,
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
fn test_logs() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A name part unique within this test run (no RNG crate needed).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn stop(mut s: Server) {
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

struct Api {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(server: &Server, token: &str) -> Self {
        Self {
            http: reqwest::blocking::Client::new(),
            base: server.url.clone(),
            token: token.to_owned(),
        }
    }
    fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap()
    }
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
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
    fn post_keyed(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
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
    fn download(&self, id: &str, format: &str) -> String {
        self.text(&format!(
            "/console/api/v1/certificates/{id}/download?format={format}"
        ))
    }
    fn text(&self, path: &str) -> String {
        let r = self.get(path);
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.text().unwrap()
    }
}

/// An HTTP receiver on a fixed loopback port that records each request body
/// and answers 204; it can be started after a subscription points at it, so
/// the first deliveries find the port closed.
pub(crate) struct Receiver {
    /// The bodies received so far.
    pub(crate) bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    /// Listens on loopback `port` from now on.
    pub(crate) fn listen(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let sink = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                let body = loop {
                    let n = stream.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let n = stream.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break Some(buf[end + 4..].to_vec());
                };
                if let Some(Ok(v)) = body.map(|b| serde_json::from_slice(&b)) {
                    sink.lock().unwrap().push(v);
                }
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            }
        });
        Self { bodies }
    }

    /// The `kind` of every body received, in order.
    pub(crate) fn events(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| b["kind"].as_str().map(str::to_owned))
            .collect()
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

fn sh(dir: &Path, args: &[&str]) -> (bool, String) {
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

/// pkilint findings at ERROR or FATAL (the exit code also counts warnings, so parse the JSON).
fn pkilint_errors(linter: &str, file: &Path) -> Vec<String> {
    // The CA/B linter needs -d (detect the certificate type); the PKIX one has no such flag.
    let detect: &[&str] = if linter == "lint_cabf_serverauth_cert" {
        &["-d"]
    } else {
        &[]
    };
    let out = Command::new(linter)
        .arg("lint")
        .args(detect)
        .args(["-f", "JSON"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "{linter} gave no JSON: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut errs = Vec::new();
    collect_findings(&v, &mut errs);
    errs
}

fn collect_findings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(sev) = m.get("severity").and_then(Value::as_str)
                && matches!(sev, "ERROR" | "FATAL")
            {
                out.push(v.to_string());
            }
            m.values().for_each(|x| collect_findings(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_findings(x, out)),
        _ => {}
    }
}

fn cli(server: &Server, token: &str, args: &[&str]) -> (bool, String) {
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

#[test]
fn embedded_server_issues_verifiable_certificates_and_survives_restart() {
    require("openssl", "apt-get install openssl");
    require(
        "lint_pkix_cert",
        "pip install pkilint (scripts/peers.sh does it)",
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let work: PathBuf = tmp.path().to_path_buf();

    // A public base URL: the CA/B lint refuses loopback AIA/CRL URLs as internal names.
    // And an issuance policy from the environment, for team "capped" only.
    let public = [
        ("CERTFLOW_SERVER__PUBLIC_URL", "http://pki.example.com:8080"),
        ("CERTFLOW_POLICY__TEAMS__CAPPED__MAX_NAMES", "1"),
    ];
    let server = start(&data, &public).expect("first start");
    let token = server
        .token_line
        .clone()
        .expect("first start prints the bootstrap token");
    let api = Api::new(&server, &token);
    let health: Value = reqwest::blocking::get(format!("{}/readyz", server.url))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let issuer = &issuers[0];
    let chain = issuer["chain_pem"].as_str().unwrap();
    std::fs::write(work.join("root.pem"), chain).unwrap();
    std::fs::write(
        work.join("intermediate.pem"),
        issuer["issuing_cert_pem"].as_str().unwrap(),
    )
    .unwrap();
    for ca in ["root.pem", "intermediate.pem"] {
        let errs = pkilint_errors("lint_pkix_cert", &work.join(ca));
        assert!(errs.is_empty(), "{ca}: {errs:?}");
    }

    // One certificate of every key type, server-generated keys.
    let mut ids = Vec::new();
    for kt in [
        "ecdsa-p256",
        "ecdsa-p384",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "ed25519",
    ] {
        let (status, c) = api.post(
            "/console/api/v1/certificates",
            json!({ "team": "payments", "names": [format!("{kt}.example.com")], "key_type": kt, "labels": { "kt": kt } }),
        );
        assert_eq!(status, 201, "{kt}: {c}");
        let id = c["id"].as_str().unwrap().to_owned();
        let leaf = work.join(format!("{kt}.pem"));
        std::fs::write(&leaf, api.download(&id, "certificate")).unwrap();
        let (ok, out) = sh(
            &work,
            &[
                "openssl",
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "intermediate.pem",
                leaf.to_str().unwrap(),
            ],
        );
        assert!(ok && out.contains(": OK"), "{kt}: {out}");
        // The CA/B Forum profile allows only RSA and ECDSA keys: Ed25519 is for private PKI.
        let linters: &[&str] = if kt == "ed25519" {
            &["lint_pkix_cert"]
        } else {
            &["lint_pkix_cert", "lint_cabf_serverauth_cert"]
        };
        for linter in linters {
            let errs = pkilint_errors(linter, &leaf);
            assert!(errs.is_empty(), "{kt} {linter}: {errs:?}");
        }
        // The tls-client profile of the same key type: RFC 5280 lint only
        // (the CA/B profile is for TLS server certificates).
        let (status, client) = api.post(
            "/console/api/v1/certificates",
            json!({ "team": "clients", "name": format!("{kt}-client"), "names": [format!("{kt}-client.example.com")], "key_type": kt, "profile": "tls-client" }),
        );
        assert_eq!(status, 201, "{kt} tls-client: {client}");
        let client_leaf = work.join(format!("{kt}-client.pem"));
        std::fs::write(
            &client_leaf,
            api.download(client["id"].as_str().unwrap(), "certificate"),
        )
        .unwrap();
        let errs = pkilint_errors("lint_pkix_cert", &client_leaf);
        assert!(errs.is_empty(), "{kt} tls-client: {errs:?}");
        // The private key matches the certificate.
        let key = work.join(format!("{kt}.key"));
        std::fs::write(&key, api.download(&id, "key")).unwrap();
        let (_, cert_pub) = sh(
            &work,
            &[
                "openssl",
                "x509",
                "-in",
                leaf.to_str().unwrap(),
                "-noout",
                "-pubkey",
            ],
        );
        let (_, key_pub) = sh(
            &work,
            &["openssl", "pkey", "-in", key.to_str().unwrap(), "-pubout"],
        );
        assert_eq!(cert_pub, key_pub, "{kt}: key does not match certificate");
        ids.push(id);
    }

    // The configured policy refuses with a problem naming field, rule and value.
    let (status, problem) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "capped", "names": ["a.example.com", "b.example.com"] }),
    );
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "names");
    let reason = problem["errors"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("'2' violates policy.teams.capped.max_names"),
        "{reason}"
    );

    // From a CSR made by openssl: proof of possession, the key never leaves.
    let (ok, out) = sh(
        &work,
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
            "csr.key",
            "-out",
            "req.csr",
            "-subj",
            "/CN=csr.example.com",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
    assert!(ok, "{out}");
    let (status, c) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "names": ["csr.example.com"], "csr": std::fs::read_to_string(work.join("req.csr")).unwrap() }),
    );
    assert_eq!(status, 201, "{c}");
    let csr_id = c["id"].as_str().unwrap().to_owned();
    std::fs::write(
        work.join("csr-leaf.pem"),
        api.download(&csr_id, "certificate"),
    )
    .unwrap();
    let (_, text) = sh(
        &work,
        &["openssl", "x509", "-in", "csr-leaf.pem", "-noout", "-text"],
    );
    assert!(
        text.contains("CA:FALSE") && !text.contains("CA:TRUE"),
        "{text}"
    );

    // PKCS#12 opens with openssl and holds the key.
    let resp = api
        .http
        .post(format!(
            "{}/console/api/v1/certificates/{}/pkcs12",
            api.base, ids[0]
        ))
        .bearer_auth(&token)
        .json(&json!({ "password": "correct horse" }))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    std::fs::write(work.join("bundle.p12"), resp.bytes().unwrap()).unwrap();
    let (ok, out) = sh(
        &work,
        &[
            "openssl",
            "pkcs12",
            "-in",
            "bundle.p12",
            "-passin",
            "pass:correct horse",
            "-nodes",
            "-info",
        ],
    );
    assert!(ok && out.contains("PRIVATE KEY"), "{out}");

    // Revoke one; the issuer's CRL (served publicly) lists it and openssl agrees.
    let (status, r) = api.post(
        &format!("/console/api/v1/certificates/{}/revoke", ids[0]),
        json!({ "reason": "keyCompromise" }),
    );
    assert_eq!(status, 200, "{r}");
    let crl = reqwest::blocking::get(format!(
        "{}/pki/{}/crl",
        server.url,
        issuer["id"].as_str().unwrap()
    ))
    .unwrap()
    .bytes()
    .unwrap();
    std::fs::write(work.join("crl.der"), &crl).unwrap();
    let (ok, out) = sh(
        &work,
        &[
            "openssl", "crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = sh(
        &work,
        &[
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
            "-CRLfile",
            "crl.pem",
            "ecdsa-p256.pem",
        ],
    );
    assert!(!ok && out.contains("revoked"), "{out}");

    // The CLI speaks to the same API.
    let (ok, out) = cli(
        &server,
        &token,
        &["cert", "list", "--team", "payments", "--output", "json"],
    );
    assert!(ok, "{out}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["total"], 6);
    let (ok, out) = cli(
        &server,
        &token,
        &[
            "cert",
            "create",
            "--team",
            "ops",
            "--san",
            "cli.example.com",
            "--label",
            "env=dev",
        ],
    );
    assert!(ok && out.contains("cli.example.com"), "{out}");
    let (ok, out) = cli(
        &server,
        &token,
        &[
            "cert",
            "create",
            "--team",
            "ops",
            "--san",
            "bad_name.example.com",
        ],
    );
    assert!(
        !ok && out.contains("names[0]") && out.contains("LDH"),
        "{out}"
    );
    let (ok, out) = cli(&server, &token, &["cert", "renew", &ids[1]]);
    assert!(ok && out.contains("superseded"), "{out}");
    let (ok, out) = cli(&server, &token, &["ca", "show"]);
    assert!(ok && out.contains("Issuing CA"), "{out}");
    let (ok, out) = cli(&server, "cfb_wrong", &["cert", "list"]);
    assert!(!ok && out.contains("401"), "{out}");

    let before: Value = api
        .get(&format!("/console/api/v1/certificates/{}", ids[1]))
        .json()
        .unwrap();
    stop(server);

    // Restart: same CA, same certificates, keys still decrypt, no new token printed.
    let server = start(&data, &public).expect("restart");
    assert!(
        server.token_line.is_none(),
        "the bootstrap token is printed only once"
    );
    let api = Api::new(&server, &token);
    let after: Value = api
        .get(&format!("/console/api/v1/certificates/{}", ids[1]))
        .json()
        .unwrap();
    assert_eq!(before["versions"], after["versions"]);
    let issuers_after: Value = api.get("/console/api/v1/issuers").json().unwrap();
    assert_eq!(issuers_after[0]["chain_pem"], issuer["chain_pem"]);
    assert!(api.download(&ids[1], "key").contains("PRIVATE KEY"));
    let audit: Value = api
        .get("/console/api/v1/audit?action=certificate.key.download")
        .json()
        .unwrap();
    assert!(audit["total"].as_u64().unwrap() >= 8, "{audit}");
    stop(server);

    // The master key is required: a wrong one or none stops the server with a clear message.
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let err = start(&data, &[("CERTFLOW_MASTER_KEY", wrong)])
        .err()
        .expect("wrong master key must stop the server");
    assert!(err.contains("master key"), "{err}");
    let key_file = data.join("master.key");
    std::fs::rename(&key_file, tmp.path().join("saved.key")).unwrap();
    let err = start(&data, &[])
        .err()
        .expect("missing master key must stop the server");
    assert!(err.contains("no master key"), "{err}");
    // The key from a file elsewhere works (mode 600 required).
    let saved = tmp.path().join("saved.key");
    let server = start(
        &data,
        &[("CERTFLOW_MASTER_KEY_FILE", saved.to_str().unwrap())],
    )
    .expect("start with key file");
    let api = Api::new(&server, &token);
    assert!(api.download(&ids[1], "key").contains("PRIVATE KEY"));
}

#[test]
fn imported_ca_issues_and_bad_config_is_refused() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    // An existing CA made with openssl.
    let (ok, out) = sh(
        work,
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "365",
            "-subj",
            "/CN=Corp Imported CA/O=Corp",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    assert!(ok, "{out}");
    let server = start(&work.join("data"), &[]).expect("start");
    let token = server.token_line.clone().unwrap();
    let (ok, out) = cli(
        &server,
        &token,
        &[
            "ca",
            "import",
            "--name",
            "corp",
            "--cert",
            work.join("ca.pem").to_str().unwrap(),
            "--key",
            work.join("ca.key").to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    assert!(ok, "{out}");
    let imported: Value = serde_json::from_str(&out).unwrap();
    let api = Api::new(&server, &token);
    let (status, c) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "corp", "names": ["imported.example.com"], "issuer_id": imported["id"] }),
    );
    assert_eq!(status, 201, "{c}");
    std::fs::write(
        work.join("leaf.pem"),
        api.download(c["id"].as_str().unwrap(), "certificate"),
    )
    .unwrap();
    let (ok, out) = sh(
        work,
        &["openssl", "verify", "-CAfile", "ca.pem", "leaf.pem"],
    );
    assert!(ok, "{out}");
    // A key that does not belong to the certificate is refused, nothing imported.
    let (_, _) = sh(
        work,
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "other.key",
        ],
    );
    let (ok, out) = cli(
        &server,
        &token,
        &[
            "ca",
            "import",
            "--name",
            "bad",
            "--cert",
            work.join("ca.pem").to_str().unwrap(),
            "--key",
            work.join("other.key").to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("key"), "{out}");
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    assert_eq!(issuers.as_array().unwrap().len(), 2);

    // Bad configuration stops the server with the key named.
    let err = start(&work.join("data2"), &[("CERTFLOW_CA__KEY_TYPE", "dsa")])
        .err()
        .unwrap();
    assert!(err.contains("ca.key_type"), "{err}");
    let err = start(&work.join("data3"), &[("CERTFLOW_SERVER__LISTNE", "x")])
        .err()
        .unwrap();
    assert!(err.contains("listne"), "{err}");
}

/// moto_server (S3 + KMS emulator) on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Self {
        require(
            "moto_server",
            "pip install 'moto[server]' (scripts/peers.sh does it)",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::blocking::get(format!("{}/moto-api/", moto.endpoint))
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "moto_server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    fn create_bucket(&self, bucket: &str) {
        let body = "<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>";
        let r = reqwest::blocking::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .body(body)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// KMS CreateKey over the JSON protocol (moto does not check signatures).
    fn create_key(&self) -> String {
        let r: Value = reqwest::blocking::Client::new()
            .post(&self.endpoint)
            .header("X-Amz-Target", "TrentService.CreateKey")
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("Authorization", "AWS4-HMAC-SHA256 Credential=test/20261129/eu-west-1/kms/aws4_request, SignedHeaders=host, Signature=0")
            .body("{}")
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap_or_else(|| panic!("CreateKey: {r}"))
            .to_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_replicas_on_postgres_s3_and_kms_never_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let db = certflow_testkit::PgDatabase::create();
    let moto = Moto::start();
    moto.create_bucket("certflow-e2e");
    let kms_key = moto.create_key();
    let url = db.url();
    // The production shape: PostgreSQL, S3 and KMS, credentials from the environment.
    let env = [
        ("CERTFLOW_DATABASE__URL", url.as_str()),
        ("CERTFLOW_BLOB__KIND", "s3"),
        ("CERTFLOW_BLOB__BUCKET", "certflow-e2e"),
        ("CERTFLOW_BLOB__PREFIX", "prod"),
        ("CERTFLOW_BLOB__REGION", "eu-west-1"),
        ("CERTFLOW_BLOB__ENDPOINT", moto.endpoint.as_str()),
        ("CERTFLOW_BLOB__PATH_STYLE", "true"),
        ("CERTFLOW_BLOB__ALLOW_HTTP", "true"),
        ("CERTFLOW_MASTER_KEY__PROVIDER", "kms"),
        ("CERTFLOW_MASTER_KEY__KMS_KEY_ID", kms_key.as_str()),
        ("CERTFLOW_MASTER_KEY__KMS_REGION", "eu-west-1"),
        ("CERTFLOW_MASTER_KEY__KMS_ENDPOINT", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    // An unreachable S3 stops the server with the backend named.
    let mut bad = env.to_vec();
    bad[5] = ("CERTFLOW_BLOB__ENDPOINT", "http://127.0.0.1:9");
    let err = start(&tmp.path().join("x"), &bad)
        .err()
        .expect("unreachable S3 must stop the server");
    assert!(
        err.contains("blob store") && err.contains("certflow-e2e"),
        "{err}"
    );
    // So does an unreachable database, naming it and never a password.
    let mut bad = env.to_vec();
    bad[0] = (
        "CERTFLOW_DATABASE__URL",
        "postgres://postgres:hunter2@127.0.0.1:9/certflow",
    );
    let err = start(&tmp.path().join("y"), &bad)
        .err()
        .expect("unreachable database must stop the server");
    assert!(
        err.contains("PostgreSQL") && err.contains("127.0.0.1:9") && !err.contains("hunter2"),
        "{err}"
    );
    // Without a configured master key, a PostgreSQL deployment refuses to mint one per host.
    let err = start(&tmp.path().join("x"), &env[..1])
        .err()
        .expect("no key with PostgreSQL must be refused");
    assert!(err.contains("every replica needs the same key"), "{err}");

    let a = start(&tmp.path().join("a"), &env).expect("replica a");
    let token = a
        .token_line
        .clone()
        .expect("first replica prints the token");
    let b = start(&tmp.path().join("b"), &env).expect("replica b");
    assert!(b.token_line.is_none());
    let (api_a, api_b) = (Api::new(&a, &token), Api::new(&b, &token));
    let ia: Value = api_a.get("/console/api/v1/issuers").json().unwrap();
    let ib: Value = api_b.get("/console/api/v1/issuers").json().unwrap();
    assert_eq!(ia, ib, "both replicas use the one CA");
    assert_eq!(ia.as_array().unwrap().len(), 1);

    // Eight concurrent creates of the same name across both replicas: exactly one wins.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = if i % 2 == 0 { &api_a } else { &api_b };
                s.spawn(move || {
                    api.post(
                        "/console/api/v1/certificates",
                        json!({ "team": "payments", "names": ["race.example.com"] }),
                    )
                    .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );

    // Concurrent renewals: every success is a distinct next version; no duplicate serials.
    let page: Value = api_b
        .get("/console/api/v1/certificates?search=race")
        .json()
        .unwrap();
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = if i % 2 == 0 { &api_a } else { &api_b };
                let path = format!("/console/api/v1/certificates/{id}/renew");
                s.spawn(move || api.post(&path, json!({})).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wins = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        wins >= 1 && statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let detail: Value = api_a
        .get(&format!("/console/api/v1/certificates/{id}"))
        .json()
        .unwrap();
    let versions = detail["versions"].as_array().unwrap();
    assert_eq!(
        versions.len(),
        wins + 1,
        "one version per successful renewal"
    );
    let mut numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=versions.len() as u64).collect::<Vec<_>>());
    let mut serials: Vec<&str> = versions
        .iter()
        .map(|v| v["serial"].as_str().unwrap())
        .collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), versions.len(), "duplicate serials");
    assert_eq!(
        versions.iter().filter(|v| v["status"] == "current").count(),
        1
    );
    // Nothing was written locally: blob.kind = "s3" keeps every blob in the bucket.
    for replica in ["a", "b"] {
        assert!(
            !tmp.path().join(replica).join("blobs").exists(),
            "replica {replica} wrote local blobs"
        );
    }
    // The key sealed by one replica opens on the other.
    assert!(api_b.download(&id, "key").contains("PRIVATE KEY"));

    // Duplicate delivery: eight concurrent creates with one Idempotency-Key and
    // one body, spread across both replicas. Several may sign, exactly one
    // commits, and every response is that certificate.
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = if i % 2 == 0 { &api_a } else { &api_b };
                s.spawn(move || {
                    api.post_keyed(
                        "/console/api/v1/certificates",
                        "create-once",
                        json!({ "team": "payments", "names": ["once.example.com"] }),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        results.iter().all(|(status, _)| *status == 201),
        "{results:?}"
    );
    let mut ids: Vec<&str> = results
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one certificate for one key: {results:?}");
    let once = ids[0].to_owned();
    let page: Value = api_a
        .get("/console/api/v1/certificates?search=once.example.com")
        .json()
        .unwrap();
    assert_eq!(page["total"], 1, "{page}");
    let detail: Value = api_b
        .get(&format!("/console/api/v1/certificates/{once}"))
        .json()
        .unwrap();
    assert_eq!(detail["versions"].as_array().unwrap().len(), 1, "{detail}");

    // And eight concurrent renewals with one key: exactly one new version.
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = if i % 2 == 0 { &api_a } else { &api_b };
                let path = format!("/console/api/v1/certificates/{once}/renew");
                s.spawn(move || api.post_keyed(&path, "renew-once", json!({})))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        results
            .iter()
            .all(|(status, v)| *status == 200 && v["current_version"] == 2),
        "{results:?}"
    );
    let detail: Value = api_a
        .get(&format!("/console/api/v1/certificates/{once}"))
        .json()
        .unwrap();
    let versions = detail["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{detail}");
    let serial2 = versions[0]["serial"].as_str().unwrap();
    assert!(
        results
            .iter()
            .all(|(_, v)| v["versions"][0]["serial"] == serial2),
        "{results:?}"
    );

    // Every losing issuance (the races above) removed its own blobs: a sweep
    // with no grace period finds no orphan.
    let out = Command::new(BIN)
        .args(["admin", "sweep-blobs", "--grace-hours", "0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CERTFLOW_DATA_DIR", tmp.path().join("sweep"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deleted 0 orphans"), "{stdout}");

    // Cross-replica invalidation: rotating the bootstrap token (a third process)
    // reaches both running replicas' in-memory copies through LISTEN/NOTIFY.
    let out = Command::new(BIN)
        .args(["admin", "rotate-bootstrap-token"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CERTFLOW_DATABASE__URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let new_token = stdout
        .trim()
        .strip_prefix("export CERTFLOW_TOKEN=")
        .expect("new token printed")
        .to_owned();
    let status = |server: &Server, token: &str| {
        reqwest::blocking::Client::new()
            .get(format!("{}/console/api/v1/issuers", server.url))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = [
            status(&a, &new_token),
            status(&b, &new_token),
            status(&a, &token),
            status(&b, &token),
        ];
        if seen == [200, 200, 401, 401] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not pick up the rotated token: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `certflow healthcheck` is the container image's health probe (no shell or
/// curl in it): 0 when the server answers, non-zero with the reason otherwise.
#[test]
fn healthcheck_command_tells_up_from_down() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).unwrap();
    let probe = |url: &str| {
        Command::new(BIN)
            .args(["healthcheck", "--url", url])
            .env_clear()
            .output()
            .unwrap()
    };
    let up = probe(&format!("{}/healthz", server.url));
    assert!(up.status.success(), "{up:?}");
    let missing = probe(&format!("{}/no-such-probe", server.url));
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{missing:?}"
    );
    stop(server);
    let closed = format!("http://127.0.0.1:{}/healthz", certflow_testkit::free_port());
    assert!(!probe(&closed).status.success());
}
