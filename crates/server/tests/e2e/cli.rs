//! The `certflow` CLI end to end, against the real server: exit codes and
//! errors (RFC 9457 problem documents with `--output json`, docs/cli.md's
//! table of exit codes), certificates named by name, a private key given as
//! a CSR refused before anything is sent, a reader that closes the pipe
//! early; the root and CA bundle the server publishes, checked with
//! `openssl verify`; join tokens made by the CLI enrolling the real agent,
//! which the CLI then lists, disables and enables.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::support::agent::{agent, agent_server, private, run_context};
use crate::support::{Api, BIN, Server, key_and_csr, require, sh, start, stop};

/// What a CLI run ended with.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// stderr as a problem document (what `--output json` prints on failure).
    fn problem(&self) -> Value {
        serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not one JSON document ({e}): {}", self.stderr))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `certflow <args>` against `url` as `token`, in `dir`.
fn run_at(url: &str, token: &str, dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CERTFLOW_URL", url)
        .env("CERTFLOW_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(server: &Server, token: &str, dir: &Path, args: &[&str]) -> Run {
    run_at(&server.url, token, dir, args)
}

/// A loopback listener that counts the connections it accepts (and answers
/// none): where a command that must send nothing is pointed.
fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            // Close at once: the client sees an error, not a hang.
            drop(conn);
        }
    });
    (url, accepted)
}

/// Exit codes and error output of the CLI for each kind of failure, and a
/// certificate named by its name; docs/cli.md lists the codes.
#[test]
fn cli_errors_have_exit_codes_and_json_problem_documents() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = start(&dir.join("data"), &[]).expect("server start");
    let token = server.token_line.clone().unwrap();

    // A certificate, then `cert show` by its name (the table) and by id.
    let r = run(
        &server,
        &token,
        dir,
        &[
            "cert",
            "create",
            "--team",
            "payments",
            "--san",
            "www.example.com",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, Some(0), "{r}");
    let id = serde_json::from_str::<Value>(&r.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = run(&server, &token, dir, &["cert", "show", "www.example.com"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stdout.contains(&id), "{r}");
    let r = run(
        &server,
        &token,
        dir,
        &[
            "cert",
            "show",
            "www.example.com",
            "--team",
            "payments",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["id"],
        id.as_str()
    );

    // Not found: a name nobody uses, then an unknown id (the server's 404). Exit 4.
    let r = run(&server, &token, dir, &["cert", "show", "payments-api"]);
    assert_eq!(r.code, Some(4), "{r}");
    assert!(
        r.stderr.contains("expected a certificate id or name")
            && r.stderr.contains("\"payments-api\""),
        "{r}"
    );
    assert!(!r.stderr.contains("invalid character"), "{r}");
    let r = run(
        &server,
        &token,
        dir,
        &["cert", "show", "payments-api", "-o", "json"],
    );
    assert_eq!(r.code, Some(4), "{r}");
    assert!(r.stdout.is_empty(), "{r}");
    let p = r.problem();
    assert_eq!(p["type"], "https://certflow.dev/problems/not-found", "{r}");
    assert!(
        p["detail"].as_str().unwrap().contains("payments-api"),
        "{r}"
    );
    let unknown = "01900000-0000-7000-8000-000000000000";
    let r = run(
        &server,
        &token,
        dir,
        &["cert", "show", unknown, "-o", "json"],
    );
    assert_eq!(r.code, Some(4), "{r}");
    assert_eq!(r.problem()["status"], 404, "{r}");

    // The server refuses a bad name: exit 3, the reason printed once.
    let bad = [
        "cert",
        "create",
        "--team",
        "ops",
        "--san",
        "bad_name.example.com",
    ];
    let r = run(&server, &token, dir, &bad);
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stderr.contains("names[0]"), "{r}");
    assert_eq!(r.stderr.matches("is not LDH").count(), 1, "{r}");
    let r = run(
        &server,
        &token,
        dir,
        &[&bad[..], &["--output", "json"]].concat(),
    );
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stdout.is_empty(), "{r}");
    let p = r.problem();
    assert_eq!(p["status"], 400, "{r}");
    assert_eq!(p["type"], "https://certflow.dev/problems/invalid-request");
    assert_eq!(p["errors"][0]["field"], "names[0]", "{r}");

    // The key of a CSR-keyed certificate: certflow never had it. A 409
    // with a sentence that says so (exit 3), not a garbled 404.
    let (_key, _csr) = key_and_csr(dir, "web");
    let r = run(
        &server,
        &token,
        dir,
        &[
            "cert",
            "create",
            "--team",
            "web",
            "--san",
            "web.example.com",
            "--csr",
            "web.csr",
        ],
    );
    assert_eq!(r.code, Some(0), "{r}");
    let r = run(
        &server,
        &token,
        dir,
        &[
            "cert",
            "download",
            "web.example.com",
            "--format",
            "key",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, Some(3), "{r}");
    let p = r.problem();
    assert_eq!(p["status"], 409, "{r}");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("certflow does not hold the private key of version 1")
            && !detail.contains("not found"),
        "{r}"
    );

    // A bad token: exit 5. A usage error with --output json: a problem
    // document too, exit 2. A server that cannot be reached: exit 1.
    let r = run(&server, "cfb_wrong", dir, &["cert", "list"]);
    assert_eq!(r.code, Some(5), "{r}");
    assert!(r.stderr.contains("401"), "{r}");
    let r = run(
        &server,
        &token,
        dir,
        &["cert", "show", "x", "--bogus", "-o", "json"],
    );
    assert_eq!(r.code, Some(2), "{r}");
    assert!(
        r.problem()["detail"].as_str().unwrap().contains("--bogus"),
        "{r}"
    );
    // A port that was free a moment ago (its listener is dropped at once).
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let r = run_at(&closed, &token, dir, &["cert", "list", "-o", "json"]);
    assert_eq!(r.code, Some(1), "{r}");
    assert_eq!(
        r.problem()["type"],
        "https://certflow.dev/problems/cli-error"
    );

    // `--csr` given the private key: refused before any connection (exit
    // 2); the same listener does see the CLI when the CSR is one.
    let (url, accepted) = counting_listener();
    for args in [
        &["cert", "create", "--team", "web", "--csr", "web.key"][..],
        &["cert", "renew", "web.example.com", "--csr", "web.key"],
    ] {
        let r = run_at(&url, &token, dir, args);
        assert_eq!(r.code, Some(2), "{r}");
        assert!(
            r.stderr.contains("web.key holds a private key")
                && r.stderr.contains("nothing was sent"),
            "{r}"
        );
        assert!(!r.stderr.contains("BEGIN"), "{r}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the CLI connected");
    let r = run_at(
        &url,
        &token,
        dir,
        &["cert", "create", "--team", "web", "--csr", "web.csr"],
    );
    assert_eq!(r.code, Some(1), "{r}");
    assert!(
        accepted.load(Ordering::SeqCst) > 0,
        "the listener saw nothing"
    );

    // stdout closed by its reader before the answer (`| head`): a quiet
    // exit 0, no panic, for a table and for a download.
    for args in [
        &["cert", "show", "www.example.com"][..],
        &["cert", "download", &id, "--format", "fullchain"],
        &["cert", "list", "-o", "json"],
    ] {
        let mut child = Command::new(BIN)
            .args(args)
            .env("CERTFLOW_URL", &server.url)
            .env("CERTFLOW_TOKEN", &token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {status}\n{stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    stop(server);
}

/// `GET /pki/<issuer>/root.crt` (DER) and `/ca-bundle.pem` (PEM, issuing
/// CA + root), where `certflow ca show` says they are: `openssl verify`
/// accepts an issued certificate with the root as the trust anchor, and not
/// with the issuing CA of `ca.crt` alone.
#[test]
fn the_published_root_verifies_issued_certificates_with_openssl() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = start(&dir.join("data"), &[]).expect("server start");
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let issuer = issuers[0]["id"].as_str().unwrap().to_owned();

    // `ca show` names the URLs; fetch them as a relying party would (no token).
    let r = run(&server, &token, dir, &["ca", "show"]);
    assert_eq!(r.code, Some(0), "{r}");
    let root_url = format!("{}/pki/{issuer}/root.crt", server.url);
    let bundle_url = format!("{}/pki/{issuer}/ca-bundle.pem", server.url);
    assert!(
        r.stdout.contains(&root_url) && r.stdout.contains(&bundle_url),
        "{r}"
    );
    let get = |url: &str| {
        let resp = reqwest::blocking::get(url).unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        (ct, resp.bytes().unwrap().to_vec())
    };
    let (ct, root) = get(&root_url);
    assert_eq!(ct, "application/pkix-cert", "RFC 2585 §4.1");
    std::fs::write(dir.join("root.crt"), &root).unwrap();
    let (ct, bundle) = get(&bundle_url);
    assert_eq!(ct, "application/pem-certificate-chain", "RFC 8555 §9.1");
    std::fs::write(dir.join("ca-bundle.pem"), &bundle).unwrap();
    let (_, issuing) = get(&format!("{}/pki/{issuer}/ca.crt", server.url));
    std::fs::write(dir.join("ca.crt"), &issuing).unwrap();

    let openssl = |args: &[&str]| {
        let mut all = vec!["openssl"];
        all.extend_from_slice(args);
        sh(dir, &all)
    };
    // The root is self-signed DER; the bundle is the issuing CA, then the root.
    let (ok, out) = openssl(&[
        "x509", "-inform", "der", "-in", "root.crt", "-out", "root.pem",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = openssl(&["verify", "-CAfile", "root.pem", "root.pem"]);
    assert!(ok, "the root is not self-signed: {out}");
    let (ok, out) = openssl(&["x509", "-inform", "der", "-in", "ca.crt", "-out", "ca.pem"]);
    assert!(ok, "{out}");
    let text = String::from_utf8(bundle).unwrap();
    assert_eq!(
        text.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "{text}"
    );
    let root_pem = std::fs::read_to_string(dir.join("root.pem")).unwrap();
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    assert_eq!(text, format!("{ca_pem}{root_pem}"));

    // An issued certificate verifies against the root, the issuing CA coming
    // from the bundle or the full chain; against ca.crt alone it does not
    // (that was the stumble: it is not a trust anchor).
    let r = run(
        &server,
        &token,
        dir,
        &[
            "cert",
            "create",
            "--team",
            "web",
            "--san",
            "www.example.test",
            "-o",
            "json",
        ],
    );
    assert_eq!(r.code, Some(0), "{r}");
    for (format, file) in [("certificate", "leaf.pem"), ("fullchain", "www.pem")] {
        let r = run(
            &server,
            &token,
            dir,
            &[
                "cert",
                "download",
                "www.example.test",
                "--format",
                format,
                "--out",
                file,
            ],
        );
        assert_eq!(r.code, Some(0), "{r}");
    }
    for args in [
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "ca-bundle.pem",
            "leaf.pem",
        ][..],
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "www.pem",
            "www.pem",
        ],
        &["verify", "-CAfile", "ca-bundle.pem", "leaf.pem"],
    ] {
        let (ok, out) = openssl(args);
        assert!(ok && out.contains(": OK"), "openssl {args:?}: {out}");
    }
    let (ok, out) = openssl(&["verify", "-CAfile", "ca.pem", "leaf.pem"]);
    assert!(
        !ok && out.contains("unable to get issuer certificate"),
        "{out}"
    );

    // An unknown issuer: a problem document, 404.
    let resp = reqwest::blocking::get(format!(
        "{}/pki/01900000-0000-7000-8000-000000000000/root.crt",
        server.url
    ))
    .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    stop(server);
}

/// A join token from `certflow agent join-token create --out` enrols the
/// real agent, which trusts the listener through the published root; the
/// CLI lists the agent, disables it (the agent is refused), enables it (it
/// is served again), and shows the token used, never its text.
#[test]
fn a_cli_join_token_enrols_the_agent_which_the_cli_lists_and_disables() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (server, _api, listen) = agent_server(dir, &[]);
    let token = server.token_line.clone().unwrap();
    let cli = |args: &[&str]| run(&server, &token, dir, args);

    let r = cli(&[
        "agent",
        "join-token",
        "create",
        "--name",
        "web-01",
        "--team",
        "web",
        "--out",
        "join-token",
    ]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.stdout.is_empty() && r.stderr.contains("shown once"),
        "{r}"
    );
    let join = std::fs::read_to_string(dir.join("join-token")).unwrap();
    assert!(join.trim().starts_with("cfj_"), "{join}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("join-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(!r.stderr.contains(join.trim()), "{r}");

    // The agent trusts the listener through the root published at root.crt.
    let issuers: Value = serde_json::from_str(&cli(&["ca", "show", "-o", "json"]).stdout).unwrap();
    let root = reqwest::blocking::get(format!(
        "{}/pki/{}/root.crt",
        server.url,
        issuers[0]["id"].as_str().unwrap()
    ))
    .unwrap()
    .bytes()
    .unwrap();
    std::fs::write(dir.join("root.crt"), &root).unwrap();
    let (ok, out) = sh(
        dir,
        &[
            "openssl", "x509", "-inform", "der", "-in", "root.crt", "-out", "root.pem",
        ],
    );
    assert!(ok, "{out}");
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let config = dir.join("agent.toml");
    private(
        &config,
        &format!(
            r#"server = "https://{listen}"
ca_file = "{d}/root.pem"
state_dir = "{d}/state"

[auth]
join_token_file = "{d}/join-token"

[[certificate]]
name = "app"
names = ["app.example.test"]

[certificate.install]
fullchain = "{t}/app.pem"
key = "{t}/app.key"
"#,
            d = dir.display(),
            t = tls.display(),
        ),
    );
    let ctx = |what: &str, out: &str, err: &str| run_context(&server, what, out, err);
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("once", &out, &err));
    assert!(tls.join("app.pem").exists());

    // The CLI lists it, by name in the table and whole in JSON.
    let r = cli(&["agent", "list"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(
        r.stdout.contains("web-01") && r.stdout.contains("active"),
        "{r}"
    );
    let list: Value = serde_json::from_str(&cli(&["agent", "list", "-o", "json"]).stdout).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["name"], "web-01");
    assert_eq!(items[0]["teams"], serde_json::json!(["web"]));
    let agent_id = items[0]["id"].as_str().unwrap().to_owned();

    // The token is used now: listed with its agent, never its text; it
    // cannot be revoked any more (409, exit 3).
    let r = cli(&["agent", "join-token", "list", "-o", "json"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(!r.stdout.contains(join.trim()), "{r}");
    let tokens: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(tokens["items"][0]["state"], "used", "{tokens}");
    assert_eq!(tokens["items"][0]["agent_id"], agent_id.as_str());
    let token_id = tokens["items"][0]["id"].as_str().unwrap().to_owned();
    let r = cli(&["agent", "join-token", "revoke", &token_id]);
    assert_eq!(r.code, Some(3), "{r}");
    assert!(r.stderr.contains("409"), "{r}");

    // Disabled by name: the agent is refused; enabled by id: served again.
    let r = cli(&["agent", "disable", "web-01", "-o", "json"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["status"],
        "disabled"
    );
    let (code, out, err) = agent(&config, &["once"]);
    assert_ne!(code, Some(0), "{}", ctx("once (disabled)", &out, &err));
    assert!(
        err.contains("403") || err.contains("disabled"),
        "{}",
        ctx("once (disabled)", &out, &err)
    );
    let r = cli(&["agent", "enable", &agent_id]);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stdout.contains("active"), "{r}");
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("once (enabled)", &out, &err));

    // An agent name nobody has: exit 4.
    let r = cli(&["agent", "disable", "web-99"]);
    assert_eq!(r.code, Some(4), "{r}");
    assert!(r.stderr.contains("no agent is named \"web-99\""), "{r}");

    // A second token printed on stdout alone (for `> file`), its context on stderr.
    let r = cli(&[
        "agent",
        "join-token",
        "create",
        "--name",
        "web-02",
        "--team",
        "web",
    ]);
    assert_eq!(r.code, Some(0), "{r}");
    let printed = r.stdout.trim();
    assert!(printed.starts_with("cfj_") && !printed.contains(' '), "{r}");
    assert!(
        r.stderr.contains("web-02") && !r.stderr.contains(printed),
        "{r}"
    );
    let jt_id = r.stderr.split_whitespace().nth(2).unwrap().to_owned();
    let r = cli(&["agent", "join-token", "revoke", &jt_id, "-o", "json"]);
    assert_eq!(r.code, Some(0), "{r}");
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["state"],
        "expired"
    );
    stop(server);
}
