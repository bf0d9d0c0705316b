//! The agent end to end: the real `certflow serve` (agent listener, fast
//! renewal), the real `certflow-agent run` and a real nginx on a loopback
//! port. The agent enrols with a join token, requests its certificate for a
//! key it generated, installs it over nginx's bootstrap files, reloads and
//! verifies; renewals of one-minute certificates then rotate nginx's
//! certificate several times while a client handshakes throughout (zero
//! failures); finally a reload that fails is rolled back, nginx keeps serving
//! the previous certificate, the server records the failure and notifies.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::agent::{agent_bin, private};
use crate::support::peers::Receiver;
use crate::support::{
    ALLOW_LOOPBACK_WEBHOOKS, Api, FAST_RENEWAL, Server, require, sh, start, stop,
};

const NGINX: &str = "/usr/sbin/nginx";
const HOST: &str = "www.example.test";

/// nginx under its own prefix: config, pid, logs and temp paths in `dir`.
struct Nginx {
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, port: u16) -> Self {
        assert!(
            Path::new(NGINX).exists(),
            "nginx is required by this test and is missing: apt-get install nginx (scripts/peers.sh does it)"
        );
        let d = dir.display();
        for sub in ["logs", "tmp", "tls"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "pid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\nworker_processes 1;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
                   fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
                   server {{\n    listen 127.0.0.1:{port} ssl;\n    server_name {HOST};\n\
                     ssl_certificate {d}/tls/www.pem;\n    ssl_certificate_key {d}/tls/www.key;\n\
                     location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        // Bootstrap files, as a host has before the agent takes over.
        let (ok, out) = sh(
            dir,
            &[
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "tls/www.key",
                "-out",
                "tls/www.pem",
                "-days",
                "1",
                "-subj",
                &format!("/CN={HOST}"),
            ],
        );
        assert!(ok, "{out}");
        let n = Self {
            dir: dir.to_path_buf(),
            port,
        };
        let (ok, out) = sh(dir, &n.cmd(&[]));
        assert!(ok, "nginx did not start: {out}");
        n
    }

    fn cmd<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![NGINX, "-p", self.dir.to_str().unwrap(), "-c", "nginx.conf"];
        v.extend_from_slice(extra);
        v
    }

    /// The shell command that reloads this nginx.
    fn reload_command(&self) -> String {
        format!("{NGINX} -p {} -c nginx.conf -s reload", self.dir.display())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(NGINX)
            .args([
                "-p",
                self.dir.to_str().unwrap(),
                "-c",
                "nginx.conf",
                "-s",
                "stop",
            ])
            .output();
    }
}

/// A running `certflow-agent run`, killed on drop.
struct AgentProc {
    child: Child,
    log: PathBuf,
}

impl AgentProc {
    fn start(config: &Path, log: &Path) -> Self {
        let child = Command::new(agent_bin())
            .args(["run", "--config", config.to_str().unwrap()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .unwrap();
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (graceful shutdown).
    fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent_config(dir: &Path, listen: &str, nginx: &Nginx, reload: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    private(
        &path,
        &format!(
            r#"server = "https://{listen}"
ca_file = "{d}/server-ca.pem"
state_dir = "{d}/state"
agent_name = "web-01"
poll_interval_secs = 5
long_poll_secs = 10
backoff_cap_secs = 4

[auth]
join_token_file = "{d}/join-token"

[[certificate]]
name = "www"
names = ["{HOST}"]
validity_seconds = 60

[certificate.install]
fullchain = "{n}/tls/www.pem"
key = "{n}/tls/www.key"

[certificate.reload]
command = "{reload}"
timeout_secs = 20

[certificate.verify]
address = "127.0.0.1:{port}"
sni = "{HOST}"
timeout_secs = 10
"#,
            d = dir.display(),
            n = nginx.dir.display(),
            port = nginx.port,
        ),
    );
    path
}

/// An HTTPS client that opens a new connection (a full handshake) per
/// request and trusts only certflow's CA.
fn handshaker(root: &str, port: u16) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .resolve(HOST, ([127, 0, 0, 1], port).into())
        .pool_max_idle_per_host(0)
        .tls_info(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// SHA-256 (hex) of the leaf nginx serves, through a verified handshake.
fn served(client: &reqwest::blocking::Client, port: u16) -> Result<String, String> {
    let r = client
        .get(format!("https://{HOST}:{port}/"))
        .send()
        .map_err(|e| format!("{e:?}"))?;
    let der = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .ok_or("no peer certificate")?
        .to_vec();
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    Ok(hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &der,
    )))
}

fn wait<T>(
    limit: Duration,
    what: &str,
    ctx: &dyn Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n{}",
            ctx()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn agent_keeps_nginx_serving_current_certificates() {
    require("openssl", "apt-get install openssl");
    let agent_bin = agent_bin();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let listen = format!("127.0.0.1:{}", certflow_testkit::free_port());
    let mut env: Vec<(&str, &str)> = FAST_RENEWAL.to_vec();
    env.extend([
        ("CERTFLOW_AGENT__LISTEN", listen.as_str()),
        // 60 s certificates due 3 s after issuance: several rotations in 20 s.
        (
            "CERTFLOW_RENEWAL__POLICY__DEFAULT__RENEW_AT_FRACTION",
            "0.05",
        ),
        ("CERTFLOW_RENEWAL__POLICY__DEFAULT__JITTER_FRACTION", "0.0"),
        ALLOW_LOOPBACK_WEBHOOKS,
    ]);
    let server: Server =
        start(&dir.join("data"), &env).unwrap_or_else(|e| panic!("server did not start: {e}"));
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let issuing = issuers[0]["issuing_cert_pem"].as_str().unwrap().to_owned();
    let root = issuers[0]["chain_pem"].as_str().unwrap().to_owned();
    std::fs::write(dir.join("server-ca.pem"), &issuing).unwrap();

    // Failures reach the team by webhook.
    let hook_port = certflow_testkit::free_port();
    let hooks = Receiver::listen(hook_port).bodies;
    let (status, sub) = api.post(
        "/console/api/v1/subscriptions",
        json!({ "team": "web", "events": ["deployment-failed"],
                "channel": { "type": "webhook", "url": format!("http://127.0.0.1:{hook_port}/"), "format": "json" } }),
    );
    assert_eq!(status, 201, "{sub}");

    let (status, jt) = api.post(
        "/console/api/v1/agents/join-tokens",
        json!({ "name": "web-01", "teams": ["web"], "ttl_minutes": 10 }),
    );
    assert_eq!(status, 201, "{jt}");
    private(&dir.join("join-token"), jt["token"].as_str().unwrap());

    let nginx = Nginx::start(&dir.join("nginx"), certflow_testkit::free_port());
    let config = agent_config(dir, &listen, &nginx, &nginx.reload_command());

    // A world-readable secret is refused before anything happens.
    std::fs::set_permissions(
        dir.join("join-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = Command::new(&agent_bin)
        .args(["once", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("auth.join_token_file") && err.contains("world-readable"),
        "{err}"
    );
    std::fs::set_permissions(
        dir.join("join-token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // First install: enrol, request, install over the bootstrap files, reload, verify.
    let agent = AgentProc::start(&config, &dir.join("agent.log"));
    let ctx = || {
        format!(
            "--- agent log ---\n{}\n--- server log ---\n{}",
            agent.log(),
            server.log()
        )
    };
    let id = wait(
        Duration::from_secs(60),
        "the agent's certificate",
        &ctx,
        || {
            let page: Value = api
                .get("/console/api/v1/certificates?search=www.example.test")
                .json()
                .ok()?;
            page["items"][0]["id"].as_str().map(str::to_owned)
        },
    );
    let deployed = |min_version: u64| {
        let d: Value = api
            .get(&format!("/console/api/v1/certificates/{id}/deployments"))
            .json()
            .ok()?;
        let d = &d[0];
        (d["status"] == "installed" && d["deployed_version"].as_u64()? >= min_version)
            .then(|| d.clone())
    };
    let first = wait(Duration::from_secs(60), "version 1 installed", &ctx, || {
        deployed(1)
    });
    assert_eq!(first["agent_name"], "web-01", "{first}");
    let client = handshaker(&root, nginx.port);
    // nginx's reload is graceful: for a moment after the agent's own check
    // saw the new certificate, the old worker may still take a connection
    // and serve the bootstrap one (self-signed, untrusted here).
    let want = first["fingerprint_sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no fingerprint in {first}"));
    let fp1 = wait(
        Duration::from_secs(10),
        "nginx serving version 1",
        &ctx,
        || served(&client, nginx.port).ok().filter(|fp| fp == want),
    );
    // The key was generated on this host and never sent: the server has none for it.
    let key_dl = api.get(&format!(
        "/console/api/v1/certificates/{id}/download?format=key"
    ));
    assert!(
        !key_dl.status().is_success(),
        "the server holds the agent's key"
    );
    let key_mode = std::fs::metadata(nginx.dir.join("tls/www.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    // Idle memory once settled (long-polling).
    std::thread::sleep(Duration::from_secs(3));
    eprintln!(
        "agent idle RSS: {} KiB ({})",
        agent.rss_kib(),
        agent_bin.display()
    );

    // Renewals rotate nginx's certificate while a client handshakes throughout.
    let stop_loop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let seen = Arc::new(Mutex::new(vec![fp1.clone()]));
    let looper = {
        let (stop_loop, ok, failed, seen) =
            (stop_loop.clone(), ok.clone(), failed.clone(), seen.clone());
        let client = handshaker(&root, nginx.port);
        let port = nginx.port;
        std::thread::spawn(move || {
            while !stop_loop.load(Ordering::Relaxed) {
                match served(&client, port) {
                    Ok(fp) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let mut s = seen.lock().unwrap();
                        if s.last() != Some(&fp) {
                            s.push(fp);
                        }
                    }
                    Err(e) => failed.lock().unwrap().push(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // At least 20 s of handshakes, and at least three rotations served.
    let loop_start = Instant::now();
    wait(
        Duration::from_secs(150),
        "three rotations served by nginx",
        &ctx,
        || {
            (seen.lock().unwrap().len() >= 4 && loop_start.elapsed() >= Duration::from_secs(20))
                .then_some(())
        },
    );
    stop_loop.store(true, Ordering::Relaxed);
    looper.join().unwrap();
    let failed = failed.lock().unwrap().clone();
    let handshakes = ok.load(Ordering::Relaxed);
    eprintln!(
        "rotation: {handshakes} handshakes, {} failed, {} certificates served",
        failed.len(),
        seen.lock().unwrap().len()
    );
    assert!(
        failed.is_empty(),
        "{} failed handshakes during rotation: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(handshakes > 100, "{handshakes}\n{}", ctx());

    // Graceful stop.
    let status = agent.stop();
    assert!(status.success(), "{status}");

    // A reload that fails: the service refuses anything but the files it had
    // (the agent's reload command checks against a copy). The next version is
    // installed, the reload fails, the agent rolls back and reloads again.
    let good = served(&client, nginx.port).unwrap();
    std::fs::copy(nginx.dir.join("tls/www.pem"), dir.join("good.pem")).unwrap();
    let picky = format!(
        "cmp -s {n}/tls/www.pem {d}/good.pem || {{ echo 'nginx: [emerg] certificate refused' >&2; exit 1; }}; {r}",
        n = nginx.dir.display(),
        d = dir.display(),
        r = nginx.reload_command()
    );
    let config = agent_config(dir, &listen, &nginx, &picky);
    let agent = AgentProc::start(&config, &dir.join("agent2.log"));
    let ctx = || {
        format!(
            "--- agent log ---\n{}\n--- server log ---\n{}",
            agent.log(),
            server.log()
        )
    };
    let failed_view = wait(
        Duration::from_secs(90),
        "a failed deployment reported",
        &ctx,
        || {
            let d: Value = api
                .get(&format!("/console/api/v1/certificates/{id}/deployments"))
                .json()
                .ok()?;
            (d[0]["status"] == "failed").then(|| d[0].clone())
        },
    );
    assert_eq!(
        failed_view["fingerprint_sha256"].as_str(),
        Some(good.as_str()),
        "{failed_view}"
    );
    let error = failed_view["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("certificate refused") && error.contains("rolled back"),
        "{failed_view}"
    );
    // nginx still serves the previous certificate, and the files on disk are that pair.
    assert_eq!(served(&client, nginx.port).unwrap(), good);
    assert_eq!(
        std::fs::read(nginx.dir.join("tls/www.pem")).unwrap(),
        std::fs::read(dir.join("good.pem")).unwrap()
    );
    wait(
        Duration::from_secs(60),
        "a deployment-failed notification",
        &ctx,
        || {
            hooks
                .lock()
                .unwrap()
                .iter()
                .any(|b| b.to_string().contains("deployment-failed"))
                .then_some(())
        },
    );
    let out = Command::new(&agent_bin)
        .args(["status", "--json", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        st["certificates"][0]["fingerprint_sha256"].as_str(),
        Some(good.as_str()),
        "{st}"
    );
    assert_eq!(st["certificates"][0]["last_status"], "failed", "{st}");
    assert!(agent.stop().success());
    stop(server);
}
