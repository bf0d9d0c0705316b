//! The web console in a real browser (signed out, as an administrator, an
//! operator of two teams and a viewer; at 1280 and 390 px wide): the OpenID
//! provider of the login tests
//! (oidc-provider, `testdata/oidc/provider.mjs`) and the real `certflow serve`,
//! driven by Debian's chromium through playwright-core
//! (`tests/browser/console.spec.mjs`, which also runs axe-core on every page
//! and saves screenshots under `target/console-screenshots/`, and rewrites
//! the documentation's pictures of the console in `docs/img/`). The agent
//! listener is on too: the script enrols an agent over mTLS with a join token
//! made on the agents page, and its reports show on the console's pages.
//!
//! The session cookie is `__Host-` and `Secure`; chromium keeps it on
//! `http://127.0.0.1` because loopback is a potentially trustworthy origin,
//! so no TLS is needed here and the production cookie stays as it is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{require, start};

struct Op(Child);

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the provider on `port` for a console at `console`; returns it and its issuer URL.
fn start_op(dir: &Path, port: u16, console: &str) -> (Op, String) {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = manifest.join("../../testdata/oidc");
    assert!(
        fixture.join("node_modules/oidc-provider").exists(),
        "oidc-provider is required: scripts/peers.sh (npm ci in {})",
        fixture.display()
    );
    let log = dir.join("op.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("node")
        .arg(fixture.join("provider.mjs"))
        .env("OP_PORT", port.to_string())
        .env("OP_ACCESS_TOKEN_ALG", "RS256")
        .env(
            "CONSOLE_REDIRECT_URI",
            format!("{console}/console/callback"),
        )
        .env(
            "CONSOLE_POST_LOGOUT_URI",
            format!("{console}/console/signed-out"),
        )
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    let op = Op(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(issuer) = text.lines().find_map(|l| l.strip_prefix("READY ")) {
            return (op, issuer.to_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "oidc-provider did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn console_in_chromium_request_find_renew_download_revoke_audit_and_viewer() {
    require("node", "apt-get install nodejs (scripts/peers.sh)");
    require("chromium", "apt-get install chromium (scripts/peers.sh)");
    require("openssl", "apt-get install openssl");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = manifest.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists()
            && browser_dir.join("node_modules/axe-core").exists(),
        "playwright-core and axe-core are required: scripts/peers.sh (npm ci in {})",
        browser_dir.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let op_port = certflow_testkit::free_port();
    let port = certflow_testkit::free_port();
    let console = format!("http://127.0.0.1:{port}");
    let (_op, issuer) = start_op(tmp.path(), op_port, &console);
    let config = tmp.path().join("certflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[auth.oidc]
issuer = "{issuer}"
client_id = "console"
client_secret = "console-secret"
redirect_uri = "{console}/console/callback"
post_logout_redirect_uri = "{console}/console/signed-out"
display_name = "Example SSO"
scopes = ["groups"]
team_group_prefix = "team-"

[auth.oidc.roles]
admin = ["certflow-admins"]
operator = ["certflow-operators"]
viewer = ["certflow-viewers"]
"#
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port}");
    let agent_listen = format!("127.0.0.1:{}", certflow_testkit::free_port());
    let server = start(
        &tmp.path().join("data"),
        &[
            ("CERTFLOW_SERVER__LISTEN", listen.as_str()),
            ("CERTFLOW_CONFIG", config.to_str().unwrap()),
            ("CERTFLOW_AGENT__LISTEN", agent_listen.as_str()),
        ],
    )
    .expect("certflow starts with [auth.oidc]");
    // The agent listener's certificate comes from the internal CA: the test
    // agent (in the browser script) trusts its chain, read with the bootstrap token.
    let token = server
        .token_line
        .clone()
        .expect("first start prints the bootstrap token");
    let issuers: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("{console}/console/api/v1/issuers"))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ca = tmp.path().join("agent-ca.pem");
    std::fs::write(
        &ca,
        format!(
            "{}{}",
            issuers[0]["issuing_cert_pem"].as_str().unwrap(),
            issuers[0]["chain_pem"].as_str().unwrap()
        ),
    )
    .unwrap();
    let shots = manifest.join("../../target/console-screenshots");
    // The README's pictures are retaken on every run, so they show the
    // console as it is; the run must have written each of them anew.
    let docs_img = manifest.join("../../docs/img");
    let started = std::time::SystemTime::now();
    let out = Command::new("node")
        .arg(browser_dir.join("console.spec.mjs"))
        .current_dir(&browser_dir)
        .env("CERTFLOW_URL", &console)
        .env("SCREENSHOT_DIR", &shots)
        .env("DOCS_IMG_DIR", &docs_img)
        .env("AGENT_URL", format!("https://{agent_listen}"))
        .env("AGENT_CA", &ca)
        .env("WORK_DIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console.spec.mjs failed ({}):\n{stdout}\n{stderr}\n--- certflow log ---\n{}",
        out.status,
        server.log()
    );
    println!("{stdout}");
    for page in [
        "sign-in",
        "dashboard",
        "inventory",
        "certificate",
        "audit",
        "agents",
        "certificate-viewer",
        "inventory-narrow",
        "inventory-two-teams",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "screenshot of {page}"
        );
    }
    for page in ["sign-in", "dashboard", "certificate", "inventory"] {
        let written = std::fs::metadata(docs_img.join(format!("console-{page}.png")))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        assert!(
            written >= started,
            "docs/img/console-{page}.png was not retaken by this run"
        );
    }
}
