//! CA keys that never leave their backend (issue 20): the real server with
//! `[ca] key_backend = "pkcs11"` on a fresh SoftHSM2 token, and with
//! `"aws-kms"` on moto. For each: the first start creates the CAs inside the
//! backend; certificates, the CRL and OCSP responses verify with openssl and
//! pass pkilint; no CA key is sealed in the blob store; the backend taken away
//! while the server runs gives 503 problems naming it, failing renewals that
//! back off and retry, and `certflow_issuer_up` 0; back again, issuance and
//! renewal resume without a restart.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::peers::Moto;
use crate::support::{Api, FAST_RENEWAL, Server, require, sh, start, wait_for};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const HSM_HINT: &str = "apt-get install softhsm2 opensc (scripts/peers.sh does it)";
const PUBLIC_URL: &str = "http://pki.example.com:8080";

fn ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out) = sh(dir, args);
    assert!(ok, "{args:?}: {out}");
    out
}

/// pkilint findings at ERROR or FATAL of `tool lint <args> file`.
fn pkilint(dir: &Path, tool: &str, args: &[&str], file: &str) -> Vec<String> {
    let out = Command::new(tool)
        .arg("lint")
        .args(args)
        .args(["-f", "JSON", file])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}: pip install pkilint"));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "{tool} gave no JSON: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if m.get("severity")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s == "ERROR" || s == "FATAL")
                {
                    out.push(v.to_string());
                }
                m.values().for_each(|x| collect(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    let mut errors = Vec::new();
    collect(&v, &mut errors);
    errors
}

/// The backend taken away and brought back while the server runs.
trait Outage {
    fn down(&self);
    fn up(&self);
}

/// A SoftHSM2 token in a directory of its own.
struct SoftHsm {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    tokens: PathBuf,
    pin_file: PathBuf,
}

const TOKEN: &str = "certflow-e2e";
const PIN: &str = "4321";

impl SoftHsm {
    fn init() -> Self {
        require("softhsm2-util", HSM_HINT);
        require("pkcs11-tool", HSM_HINT);
        assert!(Path::new(MODULE).exists(), "{MODULE}: {HSM_HINT}");
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                TOKEN,
                "--pin",
                PIN,
                "--so-pin",
                "87654321",
            ])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self {
            _dir: dir,
            conf,
            tokens,
            pin_file,
        }
    }

    /// `pkcs11-tool <args>` on the token.
    fn tool(&self, args: &[&str]) -> String {
        let out = Command::new("pkcs11-tool")
            .args(["--module", MODULE, "--token-label", TOKEN])
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

impl Outage for SoftHsm {
    // Moving the token's directory away stops the module even for root,
    // whom chmod would not stop.
    fn down(&self) {
        std::fs::rename(&self.tokens, self.tokens.with_extension("away")).unwrap();
    }
    fn up(&self) {
        std::fs::rename(self.tokens.with_extension("away"), &self.tokens).unwrap();
    }
}

/// A TCP relay in front of moto that can refuse and cut every connection:
/// KMS unreachable (moto itself keeps its keys in memory, so it must not stop).
struct Relay {
    port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let target = target.trim_start_matches("http://").to_owned();
        let (d, o) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                o.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Self { port, down, open }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Outage for Relay {
    fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// KMS over its JSON protocol (moto checks no signatures).
fn kms(moto: &Moto, target: &str, body: Value) -> Value {
    let r = reqwest::blocking::Client::new()
        .post(&moto.endpoint)
        .header("X-Amz-Target", format!("TrentService.{target}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261206/eu-west-1/kms/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert!(status.is_success(), "KMS {target}: {v}");
    v
}

/// `certflow_issuer_up{issuer="<name>"}` from `/metrics`, if present.
fn issuer_up(server: &Server, name: &str) -> Option<f64> {
    let url = server
        .metrics_url
        .clone()
        .unwrap_or_else(|| format!("{}/metrics", server.url));
    let text = reqwest::blocking::get(url).ok()?.text().ok()?;
    let prefix = format!("certflow_issuer_up{{issuer=\"{name}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn detail(api: &Api, id: &str) -> Value {
    api.get(&format!("/console/api/v1/certificates/{id}"))
        .json()
        .unwrap()
}

/// PEM public key of a certificate file, as openssl prints it.
fn cert_pubkey(dir: &Path, file: &str) -> String {
    ok(dir, &["openssl", "x509", "-in", file, "-noout", "-pubkey"])
}

/// The checks both backends must pass, on a server just started on a fresh
/// backend (`display` is how problems name it). Returns the issuer.
// Long: one scenario in order (issue, revoke, CRL, OCSP, outage, recovery); splitting it
// would only pass the same dozen values between functions.
fn exercise(
    server: &Server,
    work: &Path,
    backend: &str,
    display: &str,
    outage: &dyn Outage,
) -> Value {
    require("openssl", "apt-get install openssl");
    require(
        "lint_pkix_cert",
        "pip install pkilint (scripts/peers.sh does it)",
    );
    let token = server.token_line.clone().unwrap();
    let api = Api::new(server, &token);

    // The CA was created inside the backend, and says so.
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let issuer = issuers[0].clone();
    assert_eq!(issuer["key_backend"], backend, "{issuer}");
    let id = issuer["id"].as_str().unwrap().to_owned();
    let intermediate = issuer["issuing_cert_pem"].as_str().unwrap();
    let root = issuer["chain_pem"].as_str().unwrap();
    std::fs::write(work.join("root.pem"), root).unwrap();
    std::fs::write(work.join("intermediate.pem"), intermediate).unwrap();
    std::fs::write(work.join("chain.pem"), format!("{root}{intermediate}")).unwrap();
    let out = ok(
        work,
        &[
            "openssl",
            "verify",
            "-CAfile",
            "root.pem",
            "intermediate.pem",
        ],
    );
    assert!(out.contains("intermediate.pem: OK"), "{out}");
    for ca in ["root.pem", "intermediate.pem"] {
        let errs = pkilint(work, "lint_pkix_cert", &[], ca);
        assert!(errs.is_empty(), "{backend} {ca}: {errs:?}");
    }

    // Certificates: ECDSA and RSA subjects, checked by openssl and pkilint.
    let mut ids = Vec::new();
    for (name, kt) in [
        ("good", "ecdsa-p256"),
        ("bad", "ecdsa-p256"),
        ("rsa", "rsa-2048"),
    ] {
        let (status, c) = api.post(
            "/console/api/v1/certificates",
            json!({ "team": "payments", "names": [format!("{name}.example.com")], "key_type": kt }),
        );
        assert_eq!(status, 201, "{backend} {name}: {c}");
        let cid = c["id"].as_str().unwrap().to_owned();
        let file = format!("{name}.pem");
        std::fs::write(work.join(&file), api.download(&cid, "certificate")).unwrap();
        let out = ok(
            work,
            &[
                "openssl",
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "intermediate.pem",
                &file,
            ],
        );
        assert!(out.contains(": OK"), "{out}");
        for (tool, args) in [
            ("lint_pkix_cert", &[][..]),
            ("lint_cabf_serverauth_cert", &["-d"][..]),
        ] {
            let errs = pkilint(work, tool, args, &file);
            assert!(errs.is_empty(), "{backend} {name} {tool}: {errs:?}");
        }
        ids.push(cid);
    }

    // Revocation: the CRL and OCSP, signed through the backend.
    let (status, r) = api.post(
        &format!("/console/api/v1/certificates/{}/revoke", ids[1]),
        json!({ "reason": "keyCompromise" }),
    );
    assert_eq!(status, 200, "{r}");
    let pki = format!("{}/pki/{id}", server.url);
    let crl = reqwest::blocking::get(format!("{pki}/crl")).unwrap();
    assert_eq!(crl.status(), 200);
    std::fs::write(work.join("crl.der"), crl.bytes().unwrap()).unwrap();
    ok(
        work,
        &[
            "openssl", "crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem",
        ],
    );
    let text = ok(
        work,
        &[
            "openssl",
            "crl",
            "-in",
            "crl.pem",
            "-CAfile",
            "chain.pem",
            "-verify",
            "-noout",
            "-text",
        ],
    );
    assert!(
        text.contains("verify OK") && text.contains("Key Compromise"),
        "{text}"
    );
    for profile in ["PKIX", "BR"] {
        let errs = pkilint(work, "lint_crl", &["-t", "CRL", "-p", profile], "crl.der");
        assert!(errs.is_empty(), "{backend} CRL {profile}: {errs:?}");
    }
    let verify = |file: &str| {
        sh(
            work,
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
                file,
            ],
        )
    };
    let (passed, out) = verify("bad.pem");
    assert!(!passed && out.contains("certificate revoked"), "{out}");
    assert!(verify("good.pem").0);
    let url = format!("{pki}/ocsp");
    for (file, want) in [
        ("good.pem", "good.pem: good"),
        ("bad.pem", "bad.pem: revoked"),
    ] {
        let resp = format!("{file}.ocsp.der");
        let (_, out) = sh(
            work,
            &[
                "openssl",
                "ocsp",
                "-issuer",
                "intermediate.pem",
                "-cert",
                file,
                "-url",
                &url,
                "-CAfile",
                "chain.pem",
                "-respout",
                &resp,
            ],
        );
        assert!(
            out.contains("Response verify OK") && out.contains(want),
            "{backend}: {out}"
        );
        let errs = pkilint(work, "lint_ocsp_response", &[], &resp);
        assert!(errs.is_empty(), "{backend} OCSP {file}: {errs:?}");
    }

    // No CA key is sealed in the blob store: only certificates' keys are.
    let files = crate::support::blob_keys(&work.join("data"));
    assert!(
        files.iter().any(|f| f.starts_with("certificates/")),
        "{files:?}"
    );
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("issuers/") || f.starts_with("agent-ca/")),
        "a CA key in the blob store: {files:?}"
    );

    // A certificate that renews 30 s from now, then the backend goes away.
    let (status, c) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "payments", "names": ["short.example.com"], "validity_seconds": 120,
                "renewal": { "renew_at_fraction": 0.5, "jitter_fraction": 0.0 } }),
    );
    assert_eq!(status, 201, "{c}");
    let short = c["id"].as_str().unwrap().to_owned();
    assert_eq!(issuer_up(server, "certflow"), Some(1.0));
    outage.down();

    // Issuance: 503, a problem document naming the backend.
    let r = api
        .http
        .post(format!("{}/console/api/v1/certificates", server.url))
        .bearer_auth(&token)
        .json(&json!({ "team": "payments", "names": ["during.example.com"] }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503, "{backend}");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains(display),
        "{problem}"
    );

    // The renewal fails, backs off and retries (attempts grow), naming the backend.
    let failing = wait_for(server, Duration::from_secs(90), "renewal failing", || {
        let d = detail(&api, &short);
        let attempts = d["renewal"]["attempts"].as_u64().unwrap_or(0);
        (d["renewal"]["state"] == "failing" && attempts >= 2).then_some(d)
    });
    let reason = failing["renewal"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains(display), "{failing}");
    assert_eq!(failing["current_version"], 1);
    wait_for(
        server,
        Duration::from_secs(80),
        "certflow_issuer_up 0",
        || (issuer_up(server, "certflow") == Some(0.0)).then_some(()),
    );

    // Back: issuance and the renewal resume, without a restart.
    outage.up();
    let (status, c) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "payments", "names": ["after.example.com"] }),
    );
    assert_eq!(status, 201, "{backend} after recovery: {c}");
    wait_for(
        server,
        Duration::from_secs(60),
        "the renewal after recovery",
        || (detail(&api, &short)["current_version"].as_u64() >= Some(2)).then_some(()),
    );
    wait_for(
        server,
        Duration::from_secs(80),
        "certflow_issuer_up 1",
        || (issuer_up(server, "certflow") == Some(1.0)).then_some(()),
    );
    issuer
}

#[test]
fn pkcs11_token_holds_the_ca_keys_and_outages_are_survived() {
    let hsm = SoftHsm::init();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let pin_file = hsm.pin_file.display().to_string();
    let conf = hsm.conf.display().to_string();
    let mut env: Vec<(&str, &str)> = FAST_RENEWAL.to_vec();
    env.extend([
        ("SOFTHSM2_CONF", conf.as_str()),
        ("CERTFLOW_SERVER__PUBLIC_URL", PUBLIC_URL),
        ("CERTFLOW_CA__KEY_BACKEND", "pkcs11"),
        ("CERTFLOW_CA__PKCS11__MODULE", MODULE),
        ("CERTFLOW_CA__PKCS11__TOKEN_LABEL", TOKEN),
        ("CERTFLOW_CA__PKCS11__PIN_FILE", pin_file.as_str()),
    ]);
    let server = start(&work.join("data"), &env).expect("start with a PKCS#11 token");
    let log = server.log();
    assert_eq!(
        log.matches("CA key pair generated in the PKCS#11 token")
            .count(),
        4,
        "{log}"
    );

    // OpenSC's view of the token: four private keys (issuer root and
    // issuing CA, agent-identity root and issuing CA), each sensitive and
    // never extractable; the issuing CA certificate certifies the token's key.
    let listing = hsm.tool(&[
        "--login",
        "--pin",
        PIN,
        "--list-objects",
        "--type",
        "privkey",
    ]);
    let keys: Vec<&str> = listing.split("Private Key Object").skip(1).collect();
    assert_eq!(keys.len(), 4, "{listing}");
    for k in &keys {
        assert!(
            k.contains("never extractable") && k.contains("always sensitive"),
            "{k}"
        );
        assert!(
            !k.contains("decrypt") && !k.contains("unwrap"),
            "a CA key only signs: {k}"
        );
    }
    let issuer = exercise(&server, work, "pkcs11", "PKCS#11 token", &hsm);
    let issuing_label = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("label:"))
        .map(str::trim)
        .find(|l| l.starts_with("certflow-issuer-") && l.ends_with("-issuing"))
        .unwrap()
        .to_owned();
    assert!(
        issuing_label.contains(issuer["id"].as_str().unwrap()),
        "{issuing_label}"
    );
    hsm.tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        &issuing_label,
        "-o",
        &work.join("token-pub.der").display().to_string(),
    ]);
    let token_pub = ok(
        work,
        &[
            "openssl",
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            "token-pub.der",
        ],
    );
    assert_eq!(token_pub, cert_pubkey(work, "intermediate.pem"));
}

#[test]
fn aws_kms_holds_the_ca_keys_and_outages_are_survived() {
    let moto = Moto::start();
    let relay = Relay::start(&moto.endpoint);
    let endpoint = relay.url();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let mut env: Vec<(&str, &str)> = FAST_RENEWAL.to_vec();
    env.extend([
        ("CERTFLOW_SERVER__PUBLIC_URL", PUBLIC_URL),
        ("CERTFLOW_CA__KEY_BACKEND", "aws-kms"),
        ("CERTFLOW_CA__AWS_KMS__REGION", "eu-west-1"),
        ("CERTFLOW_CA__AWS_KMS__ENDPOINT", endpoint.as_str()),
        // moto ignores MessageType=DIGEST (it hashes the digest again), so
        // it gets the TBS itself; AWS KMS takes the default, digest.
        ("CERTFLOW_CA__AWS_KMS__MESSAGE_TYPE", "raw"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    let server = start(&work.join("data"), &env).expect("start with AWS KMS");

    // Four SIGN_VERIFY P-256 keys made by KMS (nothing to export: KMS has no
    // operation that returns an asymmetric private key).
    let listed = kms(&moto, "ListKeys", json!({}));
    let arns: Vec<String> = listed["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["KeyArn"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(arns.len(), 4, "{listed}");
    for arn in &arns {
        let meta = kms(&moto, "DescribeKey", json!({ "KeyId": arn }))["KeyMetadata"].clone();
        assert_eq!(meta["KeySpec"], "ECC_NIST_P256", "{meta}");
        assert_eq!(meta["KeyUsage"], "SIGN_VERIFY", "{meta}");
        assert_eq!(meta["Origin"], "AWS_KMS", "{meta}");
    }
    exercise(&server, work, "aws-kms", "AWS KMS", &relay);
    // The issuing CA certificate certifies one of those keys.
    let cert_pub = cert_pubkey(work, "intermediate.pem");
    let found = arns.iter().any(|arn| {
        let v = kms(&moto, "GetPublicKey", json!({ "KeyId": arn }));
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(v["PublicKey"].as_str().unwrap())
            .unwrap();
        std::fs::write(work.join("kms-pub.der"), der).unwrap();
        ok(
            work,
            &[
                "openssl",
                "pkey",
                "-pubin",
                "-inform",
                "DER",
                "-in",
                "kms-pub.der",
            ],
        ) == cert_pub
    });
    assert!(found, "no KMS key matches the issuing CA certificate");
}
