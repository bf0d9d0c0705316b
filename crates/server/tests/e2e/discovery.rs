//! Discovery end to end: a discovery-only `certflow-agent` scans a directory
//! and a local TLS endpoint (`openssl s_server`) holding certificates of an
//! external CA certflow never ran, plus one certflow issued, and reports them;
//! the console lists the external ones as unmanaged and the certflow one as
//! managed, takes one over, rates the other in the compliance report, and a
//! second report without the file drops its row. No private key reaches the
//! server's log or answers.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::agent::{agent, agent_bin, agent_server, join_token, private, run_context};
use crate::support::{Api, cli, require, sh, stop};

fn openssl(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["openssl"];
    all.extend_from_slice(args);
    let (ok, out) = sh(dir, &all);
    assert!(ok, "openssl {args:?}: {out}");
    out
}

/// `openssl s_server`, killed when dropped (also when the test fails).
struct TlsEndpoint(Child);

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `cert` with `key` on 127.0.0.1:`port` and waits until it accepts.
fn serve_tls(dir: &Path, port: u16, cert: &str, key: &str) -> TlsEndpoint {
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", cert, "-key", key])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = TlsEndpoint(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    endpoint
}

/// A leaf for `name` signed by the external CA in `dir`: `<stem>.pem` and its key `<stem>.key`.
fn external_leaf(dir: &Path, out: &Path, stem: &str, name: &str) {
    let (pem, key) = (
        out.join(format!("{stem}.pem")),
        out.join(format!("{stem}.key")),
    );
    let csr = dir.join(format!("{stem}.csr"));
    let ext = dir.join(format!("{stem}.ext"));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:{name}\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            "ext-ca.pem",
            "-CAkey",
            "ext-ca.key",
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            pem.to_str().unwrap(),
        ],
    );
}

/// `openssl x509 -fingerprint -sha256` as lower-case hex without colons.
fn fingerprint(dir: &Path, pem: &Path) -> String {
    let out = openssl(
        dir,
        &[
            "x509",
            "-in",
            pem.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    let hex = out.trim().rsplit('=').next().unwrap();
    hex.replace(':', "").to_lowercase()
}

/// The base64 lines of a PEM key: none may appear anywhere server-side.
fn key_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(str::to_owned)
        .collect()
}

fn discovered(api: &Api, query: &str) -> (String, Vec<Value>) {
    let r = api.get(&format!("/console/api/v1/discovered{query}"));
    assert_eq!(r.status().as_u16(), 200, "discovered{query}");
    let text = r.text().unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let items = v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    (text, items)
}

fn by_source<'a>(items: &'a [Value], source: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["source"] == source)
        .unwrap_or_else(|| panic!("{source} not in {items:?}"))
}

#[test]
fn discovery_end_to_end_with_an_agent_scanning_a_directory_and_a_tls_endpoint() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (server, api, listen) = agent_server(dir, &[]);

    // An external CA (certflow never saw it) and two of its leaves: one as
    // a file with its key beside it, one served by a TLS endpoint.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ext-ca.key",
            "-out",
            "ext-ca.pem",
            "-days",
            "30",
            "-subj",
            "/O=Elsewhere Ltd/CN=Elsewhere Root CA",
        ],
    );
    let found = dir.join("found");
    std::fs::create_dir_all(&found).unwrap();
    external_leaf(dir, &found, "legacy", "legacy.example.test");
    // The key also under a name the scan opens: only CERTIFICATE blocks count.
    std::fs::copy(found.join("legacy.key"), found.join("legacy-key.pem")).unwrap();
    external_leaf(dir, dir, "edge", "edge.example.test");
    let tls_port = certflow_testkit::free_port();
    let endpoint = serve_tls(dir, tls_port, "edge.pem", "edge.key");
    let legacy_source = format!("file:{}", found.join("legacy.pem").display());
    let edge_spec = format!("127.0.0.1:{tls_port},edge.example.test");
    let edge_source = format!("tls:{edge_spec}");
    let legacy_fp = fingerprint(dir, &found.join("legacy.pem"));
    let edge_fp = fingerprint(dir, &dir.join("edge.pem"));

    // A certificate certflow issued, copied into the scanned directory.
    let (status, known) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "name": "known", "names": ["known.example.test"], "key_type": "ecdsa-p256" }),
    );
    assert_eq!(status, 201, "{known}");
    let known_id = known["id"].as_str().unwrap().to_owned();
    std::fs::write(
        found.join("known.pem"),
        api.download(&known_id, "certificate"),
    )
    .unwrap();
    let known_source = format!("file:{}", found.join("known.pem").display());

    // A discovery-only agent: no [[certificate]].
    join_token(&api, dir, "scanner-01", "web");
    let config = dir.join("agent.toml");
    private(
        &config,
        &format!(
            r#"server = "https://{listen}"
ca_file = "{d}/server-ca.pem"
state_dir = "{d}/state"
agent_name = "scanner-01"

[auth]
join_token_file = "{d}/join-token"

[discovery]
paths = ["{f}"]
endpoints = ["{edge_spec}"]
report_interval_secs = 60
"#,
            d = dir.display(),
            f = found.display(),
        ),
    );
    let ctx = |what: &str, out: &str, err: &str| run_context(&server, what, out, err);

    // Before enrolment `discover --report` has no identity to send with.
    let (code, out, err) = agent(&config, &["discover", "--report"]);
    assert_eq!(code, Some(2), "{}", ctx("discover --report", &out, &err));
    assert!(
        err.contains("enrolled identity"),
        "{}",
        ctx("discover --report", &out, &err)
    );

    // A dry run says what it would report and sends nothing.
    let (code, out, err) = agent(&config, &["once", "--dry-run"]);
    assert_eq!(code, Some(1), "{}", ctx("once --dry-run", &out, &err));
    assert!(
        out.contains("would report 3 discovered certificate(s)"),
        "{}",
        ctx("once --dry-run", &out, &err)
    );
    assert!(!dir.join("state").exists(), "the dry run made a state dir");

    // One cycle enrols and reports.
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("once", &out, &err));
    assert!(
        err.contains("discovery report sent"),
        "{}",
        ctx("once", &out, &err)
    );
    let agents: Value = api.get("/console/api/v1/agents").json().unwrap();
    let agent_id = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "scanner-01")
        .unwrap_or_else(|| panic!("scanner-01 not enrolled: {agents}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Unmanaged (the default): exactly the two external certificates.
    let (unmanaged_text, unmanaged) = discovered(&api, "");
    let mut sources: Vec<&str> = unmanaged
        .iter()
        .map(|i| i["source"].as_str().unwrap())
        .collect();
    sources.sort_unstable();
    let mut want = vec![legacy_source.as_str(), edge_source.as_str()];
    want.sort_unstable();
    assert_eq!(sources, want, "{unmanaged_text}");
    for (source, fp, name) in [
        (&legacy_source, &legacy_fp, "legacy.example.test"),
        (&edge_source, &edge_fp, "edge.example.test"),
    ] {
        let i = by_source(&unmanaged, source);
        assert_eq!(i["fingerprint_sha256"], fp.as_str(), "{i}");
        let issuer = i["issuer"].as_str().unwrap();
        assert!(
            issuer.contains("CN=Elsewhere Root CA") && issuer.contains("O=Elsewhere Ltd"),
            "{i}"
        );
        assert!(i["subject"].as_str().unwrap().contains(name), "{i}");
        assert_eq!(i["names"], json!([name]), "{i}");
        assert_eq!(i["agent_id"], agent_id.as_str(), "{i}");
        assert_eq!(i["agent_name"], "scanner-01", "{i}");
        assert!(i["managed_certificate_id"].is_null(), "{i}");
        assert!(i["taken_over_certificate_id"].is_null(), "{i}");
    }
    let (text, by_agent) = discovered(&api, &format!("?agent={agent_id}"));
    assert_eq!(by_agent.len(), 2, "{text}");

    // Managed: the certflow certificate, matched to its id by fingerprint.
    let (managed_text, managed) = discovered(&api, "?status=managed");
    assert_eq!(managed.len(), 1, "{managed_text}");
    assert_eq!(
        managed[0]["source"],
        known_source.as_str(),
        "{managed_text}"
    );
    assert_eq!(
        managed[0]["managed_certificate_id"],
        known_id.as_str(),
        "{managed_text}"
    );
    let (all_text, all) = discovered(&api, "?status=all");
    assert_eq!(all.len(), 3, "{all_text}");

    // No private key text in the server's answers or log.
    let keys: Vec<String> = [found.join("legacy.key"), dir.join("edge.key")]
        .iter()
        .flat_map(|k| key_lines(k))
        .collect();
    assert!(!keys.is_empty());
    for text in [&unmanaged_text, &managed_text, &all_text] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        for l in &keys {
            assert!(!text.contains(l.as_str()), "key text in an answer: {text}");
        }
    }
    let log = server.log();
    for l in &keys {
        assert!(!log.contains(l.as_str()), "key text in the server log");
    }
    assert!(!log.contains("legacy.key"), "the key file was mentioned");

    // Take-over of the file: a certflow certificate for the same names,
    // assigned to the discovering agent; a second take-over is a conflict.
    let legacy_id = by_source(&unmanaged, &legacy_source)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let take_over = format!("/console/api/v1/discovered/{legacy_id}/take-over");
    let (status, taken) = api.post(&take_over, json!({ "team": "web" }));
    assert_eq!(status, 201, "{taken}\n{}", server.log());
    let new_id = taken["id"].as_str().unwrap().to_owned();
    assert_eq!(taken["names"], json!(["legacy.example.test"]), "{taken}");
    let assignments: Value = api
        .get(&format!("/console/api/v1/agents/{agent_id}/assignments"))
        .json()
        .unwrap();
    assert!(
        assignments
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["certificate_id"] == new_id.as_str()),
        "{assignments}"
    );
    let (_, all) = discovered(&api, "?status=all");
    assert_eq!(
        by_source(&all, &legacy_source)["taken_over_certificate_id"],
        new_id.as_str()
    );
    let (status, problem) = api.post(&take_over, json!({ "team": "web" }));
    assert_eq!(status, 409, "{problem}");
    // The CLI lists the same view and gets the same refusal.
    let token = server.token_line.as_deref().unwrap();
    let (done, out) = cli(
        &server,
        token,
        &["cert", "discovered", "--status", "all", "--output", "json"],
    );
    assert!(done, "{out}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        by_source(listed["items"].as_array().unwrap(), &legacy_source)["taken_over_certificate_id"],
        new_id.as_str(),
        "{out}"
    );
    let (done, out) = cli(
        &server,
        token,
        &["cert", "take-over", &legacy_id, "--team", "web"],
    );
    assert!(
        !done && out.contains("409") && out.contains("already taken over"),
        "{out}"
    );

    // The compliance report rates the endpoint's certificate: certflow does
    // not know its issuer.
    let r = api.get("/console/api/v1/compliance");
    assert_eq!(r.status().as_u16(), 200);
    let report: Value = r.json().unwrap();
    let rated = report["discovered"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"));
    // Only the remaining one: the taken-over file is rated through its
    // replacement (a certflow certificate in `items`).
    let sources: Vec<&str> = rated
        .iter()
        .map(|i| i["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, [edge_source.as_str()], "{report}");
    let edge = &rated[0];
    assert_eq!(edge["fingerprint_sha256"], edge_fp.as_str(), "{edge}");
    assert_eq!(edge["agent_id"], agent_id.as_str(), "{edge}");
    assert!(
        edge["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "unknown-issuer"),
        "{edge}"
    );
    assert!(!report.to_string().contains("PRIVATE KEY"));

    // The file is gone: the next report replaces the agent's view.
    std::fs::remove_file(found.join("legacy.pem")).unwrap();
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("once (file removed)", &out, &err));
    let (text, all) = discovered(&api, "?status=all");
    let mut sources: Vec<&str> = all.iter().map(|i| i["source"].as_str().unwrap()).collect();
    sources.sort_unstable();
    let mut want = vec![edge_source.as_str(), known_source.as_str()];
    want.sort_unstable();
    assert_eq!(sources, want, "{text}");

    // The endpoint stops answering: the agent names it unreadable, and the
    // server keeps what it knew (same row, last seen unchanged) instead of
    // forgetting it over an outage.
    let edge_before = by_source(&all, &edge_source).clone();
    drop(endpoint);
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("once (endpoint down)", &out, &err));
    let (text, all) = discovered(&api, "?status=all");
    let edge_after = by_source(&all, &edge_source);
    assert_eq!(
        (&edge_after["id"], &edge_after["last_seen"]),
        (&edge_before["id"], &edge_before["last_seen"]),
        "{text}"
    );

    // The daemon reports at start (its identity exists), beside its polls:
    // a CA certificate dropped into the directory shows up without a cycle
    // of certificate work; SIGTERM stops it cleanly.
    std::fs::copy(dir.join("ext-ca.pem"), found.join("elsewhere-ca.crt")).unwrap();
    let ca_source = format!("file:{}", found.join("elsewhere-ca.crt").display());
    let run_log = dir.join("run.err");
    let mut daemon = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&run_log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let (_, all) = discovered(&api, "?status=all");
        if all.iter().any(|i| i["source"] == ca_source.as_str()) {
            break true;
        }
        if Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Command::new("kill")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    let status = daemon.wait().unwrap();
    let run_err = std::fs::read_to_string(&run_log).unwrap_or_default();
    assert!(seen, "run did not report {ca_source}:\n{run_err}");
    assert!(status.success(), "{status}:\n{run_err}");

    stop(server);
}
