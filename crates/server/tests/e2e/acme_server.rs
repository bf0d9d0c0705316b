//! The ACME server (issue 15) end to end, with clients certflow did not
//! write: certbot (Debian) over http-01 with External Account Binding,
//! lego over tls-alpn-01 and dns-01 (TXT records in pebble-challtestsrv, the
//! DNS certflow validates through), python `acme` sending what RFC 8555 says a
//! server must refuse, certbot >= 4.1 following renewalInfo (RFC 9773), and
//! two replicas on PostgreSQL with validation in a separate worker process.
//! Each test runs its own server on its own ports; peers come from
//! scripts/peers.sh and their absence fails the test, naming the fix.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Api, Server, require, sh, start_with};

/// Where the helper scripts live.
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/acme");
/// pebble-challtestsrv, started by scripts/peers.sh: DNS and management API.
const CHALLTESTSRV_DNS: &str = "127.0.0.1:8053";
const CHALLTESTSRV_MGMT: &str = "127.0.0.1:8055";
/// The team of the tests' accounts and the suffix its policy allows.
const DOMAIN: &str = "web.example.com";

/// The venv with python `acme`, josepy and certbot >= 4.1 (scripts/peers.sh).
fn venv() -> PathBuf {
    let dir = std::env::var_os("CERTFLOW_ACME_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/certflow-peers/acme-venv")
        });
    assert!(
        dir.join("bin/python").exists() && dir.join("bin/certbot").exists(),
        "the ACME test venv (python acme, josepy, certbot>=4.1) is missing at {}: run scripts/peers.sh",
        dir.display()
    );
    dir
}

/// Fails loudly unless pebble-challtestsrv answers on its management port.
fn require_challtestsrv() {
    assert!(
        std::net::TcpStream::connect(CHALLTESTSRV_MGMT).is_ok(),
        "pebble-challtestsrv is not running on {CHALLTESTSRV_MGMT} (DNS {CHALLTESTSRV_DNS}): run scripts/peers.sh"
    );
}

/// A certflow process serving ACME over HTTPS on `https://localhost:<port>`.
struct AcmeServer {
    server: Server,
    /// `https://localhost:<port>`: the public URL, and where it listens.
    base: String,
    /// The directory of the default internal CA.
    directory: String,
    /// Root and issuing CA certificates (PEM): what clients trust.
    ca: PathBuf,
    /// The issuing CA alone (PEM), for OCSP requests.
    issuing: PathBuf,
    /// The console API over HTTPS as the bootstrap admin.
    api: Api,
}

/// Ports of one test's server and of its clients' challenge responders.
struct Ports {
    listen: u16,
    /// The plain-HTTP listener for `/pki/*` (`[server.tls] http_listen`).
    pki: u16,
    http01: u16,
    tls_alpn01: u16,
}

impl Ports {
    fn new() -> Self {
        Self {
            listen: certflow_testkit::free_port(),
            pki: certflow_testkit::free_port(),
            http01: certflow_testkit::free_port(),
            tls_alpn01: certflow_testkit::free_port(),
        }
    }
}

/// The configuration every test's server shares: ACME on, EAB required,
/// challenges validated on the clients' ports through pebble-challtestsrv,
/// HTTPS with a certificate for `localhost` from the internal CA, and team
/// policies for `web` (web.example.com, wildcards, IP addresses) and `other`.
fn write_config(dir: &Path, ports: &Ports) -> PathBuf {
    let path = dir.join("certflow.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server.tls]
server_names = ["localhost"]

[acme_server]
enabled = true
eab = "required"
http01_port = {http01}
tls_alpn01_port = {alpn}
dns_resolver = "{CHALLTESTSRV_DNS}"

# Validators reach the clients on loopback, which the outbound policy refuses by default.
[outbound]
allow = ["127.0.0.1"]

[policy.teams.web]
allowed_domains = ["{DOMAIN}"]
allow_wildcards = true
allow_ip_addresses = true

[policy.teams.other]
allowed_domains = ["other.example.com"]
"#,
            http01 = ports.http01,
            alpn = ports.tls_alpn01,
        ),
    )
    .unwrap();
    path
}

/// Starts `certflow <args>` with the ACME configuration on `ports.listen`,
/// announcing `public` (its own URL unless a replica shares another's).
fn start_acme(
    args: &[&str],
    data: &Path,
    config: &Path,
    ports: &Ports,
    public: Option<&str>,
    env: &[(&str, &str)],
) -> Server {
    let listen = format!("127.0.0.1:{}", ports.listen);
    let own = format!("https://localhost:{}", ports.listen);
    let pki = format!("127.0.0.1:{}", ports.pki);
    let config = config.display().to_string();
    let mut all = vec![
        ("CERTFLOW_CONFIG", config.as_str()),
        ("CERTFLOW_SERVER__LISTEN", listen.as_str()),
        ("CERTFLOW_SERVER__TLS__HTTP_LISTEN", pki.as_str()),
        ("CERTFLOW_SERVER__PUBLIC_URL", public.unwrap_or(&own)),
    ];
    all.extend_from_slice(env);
    start_with(args, data, &all).unwrap_or_else(|e| {
        panic!("certflow with [acme_server] and [server.tls] did not start (issue 15 not in this build?): {e}")
    })
}

/// Trusts the internal CA that signed the listener's certificate, checks the
/// listener with openssl, and finds the ACME directory.
fn connect(server: Server, work: &Path, port: u16) -> AcmeServer {
    let base = format!("https://localhost:{port}");
    let token = server
        .token_line
        .clone()
        .expect("first start prints the token");
    // The CA is not trusted yet: read it once without verification, then
    // verify the listener against it with openssl.
    let blind = reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let issuers: Value = blind
        .get(format!("{base}/console/api/v1/issuers"))
        .bearer_auth(&token)
        .send()
        .unwrap_or_else(|e| {
            panic!(
                "no HTTPS on the console listener ([server.tls]): {e}\n{}",
                server.log()
            )
        })
        .json()
        .unwrap();
    let root = issuers[0]["chain_pem"]
        .as_str()
        .expect("issuer chain")
        .to_owned();
    let issuing_pem = issuers[0]["issuing_cert_pem"].as_str().unwrap().to_owned();
    let ca = work.join("ca.pem");
    let issuing = work.join("issuing.pem");
    std::fs::write(&ca, format!("{root}{issuing_pem}")).unwrap();
    std::fs::write(&issuing, &issuing_pem).unwrap();
    let (ok, out) = sh(
        work,
        &[
            "sh",
            "-c",
            &format!(
                "openssl s_client -connect 127.0.0.1:{port} -servername localhost -verify_hostname localhost -verify_return_error -CAfile ca.pem </dev/null"
            ),
        ],
    );
    assert!(
        ok && out.contains("Verify return code: 0 (ok)"),
        "the console listener's certificate does not verify for localhost against the internal CA: {out}"
    );
    let mut roots = Vec::new();
    for pem in [&root, &issuing_pem] {
        roots.push(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_certs_only(roots)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let api = Api {
        http,
        base: base.clone(),
        token,
    };
    let directory = format!("{base}/acme/certflow/directory");
    let r = api.http.get(&directory).send().unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(
        status, 200,
        "GET {directory}: the ACME server is not served (issue 15): {body}"
    );
    for k in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
        "renewalInfo",
    ] {
        assert!(
            body[k].as_str().is_some_and(|u| u.starts_with(&base)),
            "directory {k}: {body}"
        );
    }
    assert_eq!(body["meta"]["externalAccountRequired"], true, "{body}");
    AcmeServer {
        server,
        base,
        directory,
        ca,
        issuing,
        api,
    }
}

impl AcmeServer {
    /// A fresh EAB key of `team` from the console API: (key id, HMAC key).
    fn eab(&self, team: &str) -> (String, String) {
        let (status, v) = self
            .api
            .post("/console/api/v1/acme/eab-keys", json!({ "team": team }));
        assert_eq!(status, 201, "POST /console/api/v1/acme/eab-keys: {v}");
        assert_eq!(v["team"], team, "{v}");
        let hmac = v["hmac_key"].as_str().expect("hmac_key").to_owned();
        assert!(
            hmac.len() >= 43
                && hmac
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "hmac_key is base64url of at least 256 bits: {v}"
        );
        (v["key_id"].as_str().expect("key_id").to_owned(), hmac)
    }

    /// The inventory entry of the certificate named `name`.
    fn inventory(&self, name: &str) -> Value {
        let page: Value = self
            .api
            .get(&format!("/console/api/v1/certificates?search={name}"))
            .json()
            .unwrap();
        page["items"]
            .as_array()
            .and_then(|items| items.iter().find(|c| c["names"][0] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in the inventory: {page}"))
    }

    /// OCSP status of `cert` (PEM file in `dir`), asked of the responder named in it.
    fn ocsp(&self, dir: &Path, cert: &Path) -> String {
        let cert = cert.display().to_string();
        let issuing = self.issuing.display().to_string();
        let uri = ok(
            dir,
            &["openssl", "x509", "-in", &cert, "-noout", "-ocsp_uri"],
        );
        let uri = uri.trim();
        // RFC 5280 relying parties fetch OCSP over plain HTTP: the responder
        // is on the plain listener beside the HTTPS one.
        assert!(uri.starts_with("http://127.0.0.1:"), "OCSP URL {uri}");
        ok(
            dir,
            &[
                "openssl",
                "ocsp",
                "-issuer",
                &issuing,
                "-cert",
                &cert,
                "-no_nonce",
                "-reqout",
                "ocsp-req.der",
            ],
        );
        let resp = self
            .api
            .http
            .post(uri)
            .header("Content-Type", "application/ocsp-request")
            .body(std::fs::read(dir.join("ocsp-req.der")).unwrap())
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "OCSP POST {uri}");
        std::fs::write(dir.join("ocsp-resp.der"), resp.bytes().unwrap()).unwrap();
        let ca = self.ca.display().to_string();
        ok(
            dir,
            &[
                "openssl",
                "ocsp",
                "-respin",
                "ocsp-resp.der",
                "-issuer",
                &issuing,
                "-cert",
                &cert,
                "-CAfile",
                &ca,
            ],
        )
    }
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out) = sh(dir, args);
    assert!(ok, "{args:?}: {out}");
    out
}

/// The serial of a PEM certificate file, as openssl prints it.
fn serial(path: &Path) -> String {
    ok(
        path.parent().unwrap(),
        &[
            "openssl",
            "x509",
            "-in",
            &path.display().to_string(),
            "-noout",
            "-serial",
        ],
    )
    .trim()
    .to_owned()
}

/// Subject alternative names of a PEM certificate file, as openssl prints them.
fn sans(path: &Path) -> String {
    ok(
        path.parent().unwrap(),
        &[
            "openssl",
            "x509",
            "-in",
            &path.display().to_string(),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    )
}

/// Runs `program args` with `env`: success, and stdout followed by stderr.
fn run(program: &Path, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// certbot (`program`) with its state in `dir` against `acme`'s directory.
fn certbot(program: &Path, acme: &AcmeServer, dir: &Path, args: &[&str]) -> (bool, String) {
    std::fs::create_dir_all(dir).unwrap();
    let state = |sub: &str| dir.join(sub).display().to_string();
    let (config, work, logs) = (state("config"), state("work"), state("logs"));
    let mut all = vec![
        "--non-interactive",
        "--server",
        acme.directory.as_str(),
        "--config-dir",
        config.as_str(),
        "--work-dir",
        work.as_str(),
        "--logs-dir",
        logs.as_str(),
    ];
    all.extend_from_slice(args);
    let ca = acme.ca.display().to_string();
    let (done, out) = run(program, &all, &[("REQUESTS_CA_BUNDLE", &ca)], dir);
    if done {
        return (done, out);
    }
    // certbot prints one line of an unexpected error; its log has the traceback.
    let log = std::fs::read_to_string(dir.join("logs/letsencrypt.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    (
        done,
        format!("{out}\n--- certbot log (tail) ---\n{}", tail.join("\n")),
    )
}

#[test]
fn certbot_registers_with_eab_issues_renews_revokes_and_unregisters() {
    require(
        "certbot",
        "apt-get install certbot (scripts/peers.sh does it)",
    );
    require("openssl", "apt-get install openssl");
    require_challtestsrv();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let ports = Ports::new();
    let config = write_config(work, &ports);
    let server = start_acme(&["serve"], &work.join("data"), &config, &ports, None, &[]);
    let acme = connect(server, work, ports.listen);
    // The CA of the listener's certificate, written where the CLI and local
    // clients can trust it: it verifies the listener.
    let (ok_ca, out) = sh(
        work,
        &[
            "sh",
            "-c",
            &format!(
                "openssl s_client -connect 127.0.0.1:{} -servername localhost -verify_hostname localhost -verify_return_error -CAfile data/console-ca.pem </dev/null",
                ports.listen
            ),
        ],
    );
    assert!(
        ok_ca && out.contains("Verify return code: 0 (ok)"),
        "data/console-ca.pem does not verify the console listener: {out}"
    );
    let certbot_bin = Path::new("/usr/bin/certbot");
    let cb = work.join("certbot");
    let http01 = ports.http01.to_string();
    let standalone = [
        "--standalone",
        "--http-01-address",
        "127.0.0.1",
        "--http-01-port",
        http01.as_str(),
    ];

    // Without EAB: refused (certbot reads externalAccountRequired from the directory).
    let (done, out) = certbot(
        certbot_bin,
        &acme,
        &cb,
        &[
            "register",
            "--agree-tos",
            "--register-unsafely-without-email",
        ],
    );
    assert!(!done, "registration without EAB must be refused: {out}");
    assert!(out.to_lowercase().contains("external account"), "{out}");

    // With a key of team web.
    let (kid, hmac) = acme.eab("web");
    let (done, out) = certbot(
        certbot_bin,
        &acme,
        &cb,
        &[
            "register",
            "--agree-tos",
            "-m",
            "ops@web.example.com",
            &format!("--eab-kid={kid}"),
            // One argument with '=': a base64url key may start with '-',
            // which argparse would take for an option (1 key in 64).
            &format!("--eab-hmac-key={hmac}"),
        ],
    );
    assert!(done, "certbot register with EAB: {out}");

    // certonly over http-01, answered by certbot's own standalone server.
    let name = format!("a.{DOMAIN}");
    let mut args = vec!["certonly", "--cert-name", "a", "-d", name.as_str()];
    args.extend_from_slice(&standalone);
    let (done, out) = certbot(certbot_bin, &acme, &cb, &args);
    assert!(done, "certbot certonly: {out}");
    let live = cb.join("config/live/a");
    let cert = live.join("cert.pem");
    assert!(sans(&cert).contains(&format!("DNS:{name}")));
    let ca = acme.ca.display().to_string();
    let verified = ok(
        work,
        &[
            "openssl",
            "verify",
            "-CAfile",
            &ca,
            "-untrusted",
            &live.join("chain.pem").display().to_string(),
            &cert.display().to_string(),
        ],
    );
    assert!(verified.contains(": OK"), "{verified}");
    let first = serial(&cert);
    // In team web's inventory, labelled with the account.
    let entry = acme.inventory(&name);
    assert_eq!(entry["team"], "web", "{entry}");
    assert!(entry["labels"]["acme_account"].is_string(), "{entry}");

    // renew --force-renewal: a new serial.
    let (done, out) = certbot(
        certbot_bin,
        &acme,
        &cb,
        &[
            "renew",
            "--cert-name",
            "a",
            "--force-renewal",
            "--no-random-sleep-on-renew",
        ],
    );
    assert!(done, "certbot renew: {out}");
    let second = serial(&cert);
    assert_ne!(first, second, "renewal must give a new serial");
    // One active inventory entry for the name: certbot 2.1 sends no
    // `replaces`, and the entry it renewed is archived, not left to expire.
    let page: Value = acme
        .api
        .get(&format!("/console/api/v1/certificates?search={name}"))
        .json()
        .unwrap();
    let statuses: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["names"][0] == name.as_str())
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["active", "archived"], "{page}");

    // revoke: then OCSP says revoked; a second revoke fails.
    let before = acme.ocsp(work, &cert);
    assert!(before.contains(": good"), "{before}");
    let cert_path = cert.display().to_string();
    let revoke = [
        "revoke",
        "--cert-path",
        cert_path.as_str(),
        "--reason",
        "keycompromise",
        "--no-delete-after-revoke",
    ];
    let (done, out) = certbot(certbot_bin, &acme, &cb, &revoke);
    assert!(done, "certbot revoke: {out}");
    let after = acme.ocsp(work, &cert);
    assert!(after.contains(": revoked"), "{after}");
    assert!(after.to_lowercase().contains("keycompromise"), "{after}");
    let (done, out) = certbot(certbot_bin, &acme, &cb, &revoke);
    assert!(!done, "a second revoke must fail: {out}");
    assert!(
        out.contains("alreadyRevoked") || out.to_lowercase().contains("already revoked"),
        "{out}"
    );

    // A name outside team web's policy.
    let mut args = vec!["certonly", "--cert-name", "x", "-d", "x.other.example.com"];
    args.extend_from_slice(&standalone);
    let (done, out) = certbot(certbot_bin, &acme, &cb, &args);
    assert!(!done, "a name outside the team's policy must fail: {out}");
    assert!(out.contains("rejectedIdentifier"), "{out}");

    // unregister: deactivated.
    let (done, out) = certbot(certbot_bin, &acme, &cb, &["unregister"]);
    assert!(done, "certbot unregister: {out}");
    assert!(out.to_lowercase().contains("deactivated"), "{out}");
    drop(acme);
}

#[test]
fn lego_over_tls_alpn_01_and_over_dns_01_for_a_wildcard() {
    require("lego", "apt-get install lego (scripts/peers.sh does it)");
    require("curl", "apt-get install curl");
    require_challtestsrv();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let ports = Ports::new();
    let config = write_config(work, &ports);
    let server = start_acme(&["serve"], &work.join("data"), &config, &ports, None, &[]);
    let acme = connect(server, work, ports.listen);
    let (kid, hmac) = acme.eab("web");
    // '=' keeps a key that starts with '-' one value (see the certbot test).
    let (kid_arg, hmac_arg) = (format!("--kid={kid}"), format!("--hmac={hmac}"));
    let lego_dir = work.join("lego").display().to_string();
    let hook = format!("{SCRIPTS}/lego-dns-hook.sh");
    let hook_log = work.join("hook.log").display().to_string();
    let ca = acme.ca.display().to_string();
    let env = [
        ("LEGO_CA_CERTIFICATES", ca.as_str()),
        ("EXEC_PATH", hook.as_str()),
        ("EXEC_PROPAGATION_TIMEOUT", "20"),
        ("EXEC_POLLING_INTERVAL", "1"),
        ("HOOK_LOG", hook_log.as_str()),
    ];
    let lego = |extra: &[&str]| {
        let mut args = vec![
            "--server",
            acme.directory.as_str(),
            "--accept-tos",
            "--email",
            "ops@web.example.com",
            "--path",
            lego_dir.as_str(),
            "--eab",
            kid_arg.as_str(),
            hmac_arg.as_str(),
        ];
        args.extend_from_slice(extra);
        args.push("run");
        run(Path::new("/usr/bin/lego"), &args, &env, work)
    };
    let certs = work.join("lego/certificates");

    // tls-alpn-01 (RFC 8737), answered by lego. (lego 4.9 sends an IP
    // address as a dns identifier, so IP identifiers are the python table's.)
    let tls_port = format!("127.0.0.1:{}", ports.tls_alpn01);
    let name = format!("t.{DOMAIN}");
    let (done, out) = lego(&["--domains", &name, "--tls", "--tls.port", &tls_port]);
    assert!(done, "lego tls-alpn-01: {out}");
    let san = sans(&certs.join(format!("{name}.crt")));
    assert!(san.contains(&format!("DNS:{name}")), "{san}");

    // dns-01 for a wildcard: lego's exec provider sets the TXT record in
    // pebble-challtestsrv, which certflow's resolver asks.
    let wildcard = format!("*.w.{DOMAIN}");
    let (done, out) = lego(&[
        "--domains",
        &wildcard,
        "--dns",
        "exec",
        "--dns.resolvers",
        CHALLTESTSRV_DNS,
        "--dns.disable-cp",
    ]);
    assert!(done, "lego dns-01: {out}");
    let san = sans(&certs.join(format!("_.w.{DOMAIN}.crt")));
    assert!(san.contains(&format!("DNS:{wildcard}")), "{san}");
    let calls = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert!(
        calls.contains(&format!("present _acme-challenge.w.{DOMAIN}.")),
        "the hook was not called: {calls}"
    );
    let entry = acme.inventory(&wildcard);
    assert_eq!(entry["team"], "web", "{entry}");
    drop(acme);
}

/// Runs `script` with the venv's python; panics with its output unless every case passed.
fn python_table(script: &str, args: &[&str]) -> String {
    let python = venv().join("bin/python");
    let path = format!("{SCRIPTS}/{script}");
    let (done, out) = run(
        &python,
        &[&["-B", path.as_str()][..], args].concat(),
        &[],
        Path::new(SCRIPTS),
    );
    assert!(done, "{script}:\n{out}");
    out
}

#[test]
fn python_acme_protocol_strictness_table() {
    require_challtestsrv();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let ports = Ports::new();
    let config = write_config(work, &ports);
    let server = start_acme(&["serve"], &work.join("data"), &config, &ports, None, &[]);
    let acme = connect(server, work, ports.listen);
    let web: Vec<String> = (0..3)
        .map(|_| {
            let (k, h) = acme.eab("web");
            format!("{k}:{h}")
        })
        .collect();
    let (k, h) = acme.eab("other");
    let other = format!("{k}:{h}");
    let (k, h) = acme.eab("web");
    let revoked = format!("{k}:{h}");
    let r = acme
        .api
        .http
        .delete(format!("{}/console/api/v1/acme/eab-keys/{k}", acme.base))
        .bearer_auth(&acme.api.token)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "revoke EAB key: {}", r.status());
    let listed: Value = acme
        .api
        .get("/console/api/v1/acme/eab-keys")
        .json()
        .unwrap();
    assert!(
        !listed.to_string().contains(&h)
            && !web
                .iter()
                .any(|w| listed.to_string().contains(w.split(':').nth(1).unwrap())),
        "the list shows an HMAC key: {listed}"
    );
    let ca = acme.ca.display().to_string();
    let http01 = ports.http01.to_string();
    let out = python_table(
        "negative.py",
        &[
            "--directory",
            &acme.directory,
            "--ca",
            &ca,
            "--http01-port",
            &http01,
            "--eab-web",
            &web.join(","),
            "--eab-other",
            &other,
            "--eab-revoked",
            &revoked,
        ],
    );
    assert!(out.contains("all cases passed"), "{out}");
    // No HMAC key in the server's log.
    let log = acme.server.log();
    for secret in web
        .iter()
        .map(|w| w.split(':').nth(1).unwrap())
        .chain([h.as_str()])
    {
        assert!(!log.contains(secret), "an EAB HMAC key is in the log");
    }
}

#[test]
fn two_replicas_on_postgres_share_acme_state_and_a_worker_validates() {
    require_challtestsrv();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let db = certflow_testkit::PgDatabase::create();
    let url = db.url();
    let (pa, pb) = (Ports::new(), Ports::new());
    // Both replicas validate on A's challenge ports (one configuration).
    let config = write_config(work, &pa);
    let public = format!("https://localhost:{}", pa.listen);
    let env = [
        ("CERTFLOW_DATABASE__URL", url.as_str()),
        (
            "CERTFLOW_MASTER_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
    ];
    let blobs = work.join("blobs").display().to_string();
    let mut env = env.to_vec();
    env.push(("CERTFLOW_BLOB__PATH", blobs.as_str()));
    // Replica A (api + scheduler), replica B (api): neither validates.
    let a = start_acme(
        &["serve", "--roles", "api,scheduler"],
        &work.join("a"),
        &config,
        &pa,
        Some(public.as_str()),
        &env,
    );
    let acme = connect(a, work, pa.listen);
    let b = start_acme(
        &["serve", "--roles", "api"],
        &work.join("b"),
        &config,
        &pb,
        Some(public.as_str()),
        &env,
    );
    let (kid, hmac) = acme.eab("web");
    let go = work.join("go");
    let python = venv().join("bin/python");
    let ca = acme.ca.display().to_string();
    let http01 = pa.http01.to_string();
    let eab = format!("{kid}:{hmac}");
    let b_url = format!("https://localhost:{}", pb.listen);
    let go_s = go.display().to_string();
    let mut child = Command::new(&python)
        .arg("-B")
        .arg(format!("{SCRIPTS}/replicas.py"))
        .args(["--public", public.as_str(), "--a", acme.base.as_str()])
        .args(["--b", b_url.as_str(), "--ca", ca.as_str()])
        .args(["--http01-port", http01.as_str(), "--eab", eab.as_str()])
        .args(["--go", go_s.as_str()])
        .current_dir(SCRIPTS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in stdout.by_ref() {
        let line = line.unwrap();
        let responded = line == "RESPONDED";
        lines.push(line);
        if responded {
            break;
        }
    }
    // Only now a worker process: it validates the challenge.
    let worker_ports = Ports::new();
    let worker = start_acme(
        &["worker"],
        &work.join("w"),
        &config,
        &worker_ports,
        Some(public.as_str()),
        &env,
    );
    std::fs::write(&go, b"").unwrap();
    lines.extend(stdout.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let out = lines.join("\n");
    assert!(
        status.success() && out.contains("all cases passed"),
        "replicas.py:\n{out}\n{stderr}\n--- worker log ---\n{}\n--- replica B log ---\n{}",
        worker.log(),
        b.log()
    );
    drop((worker, b, acme));
}

#[test]
fn certbot_follows_renewal_info_and_renews_only_after_renew_now() {
    require("openssl", "apt-get install openssl");
    require_challtestsrv();
    let certbot_bin = venv().join("bin/certbot");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let ports = Ports::new();
    let config = write_config(work, &ports);
    let server = start_acme(&["serve"], &work.join("data"), &config, &ports, None, &[]);
    let acme = connect(server, work, ports.listen);
    let (kid, hmac) = acme.eab("web");
    let cb = work.join("certbot");
    let http01 = ports.http01.to_string();
    let name = format!("ari.{DOMAIN}");
    let (done, out) = certbot(
        &certbot_bin,
        &acme,
        &cb,
        &[
            "certonly",
            "--agree-tos",
            "--register-unsafely-without-email",
            &format!("--eab-kid={kid}"),
            &format!("--eab-hmac-key={hmac}"),
            "--cert-name",
            "ari",
            "-d",
            &name,
            "--standalone",
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            &http01,
        ],
    );
    assert!(done, "certbot (venv) certonly: {out}");
    let cert = cb.join("config/live/ari/cert.pem");
    let first = serial(&cert);
    let renewal_conf = cb.join("config/renewal/ari.conf");
    // certbot keeps the server's Retry-After and skips ARI until then: each
    // run below stands for a run after that time has passed.
    let forget_retry_after = || {
        let conf = std::fs::read_to_string(&renewal_conf).unwrap();
        let kept: Vec<&str> = conf
            .lines()
            .filter(|l| !l.trim_start().starts_with("ari_retry_after"))
            .collect();
        std::fs::write(&renewal_conf, kept.join("\n") + "\n").unwrap();
    };
    let renew = |cb: &Path| {
        forget_retry_after();
        let (done, out) = certbot(
            &certbot_bin,
            &acme,
            cb,
            // Without a TTY certbot sleeps up to 8 minutes before renewing.
            &[
                "renew",
                "--cert-name",
                "ari",
                "-v",
                "--no-random-sleep-on-renew",
            ],
        );
        assert!(done, "certbot renew: {out}");
        out
    };

    // Fresh certificate: renewalInfo says later, so nothing happens.
    let out = renew(&cb);
    assert_eq!(serial(&cert), first, "renewed before its window: {out}");
    assert!(
        out.contains("not due for renewal") || out.contains("not yet due"),
        "{out}"
    );

    // "Renew now" on it in the console API moves the window: the next run renews.
    let entry = acme.inventory(&name);
    let id = entry["id"].as_str().unwrap();
    let (status, v) = acme.api.post(
        &format!("/console/api/v1/acme/certificates/{id}/renew-now"),
        json!({}),
    );
    assert!((200..300).contains(&status), "renew now: {status} {v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = renew(&cb);
        if serial(&cert) != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certbot did not renew after renew now: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(acme);
}
