//! The agent side of the harness: the `certflow-agent` binary next to the
//! server's, a server with its agent listener, join tokens, and one agent run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Api, BIN, Server, start};

/// `target/<profile>/certflow-agent`, next to the server binary under test
/// (`CERTFLOW_AGENT_BIN` overrides it, e.g. to measure the release build).
pub(crate) fn agent_bin() -> PathBuf {
    let p = std::env::var_os("CERTFLOW_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(BIN).with_file_name("certflow-agent"));
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p certflow-agent`; `cargo nextest run --workspace` does)",
        p.display()
    );
    p
}

/// Writes `text` to `path` with mode 0600 (what the agent requires of secrets).
pub(crate) fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A server with its agent listener on a free port, and the listener's CA
/// written to `dir/server-ca.pem` for the agent's `ca_file`: the server, its
/// API as the bootstrap admin, and the listener's address.
pub(crate) fn agent_server(dir: &Path, env: &[(&str, &str)]) -> (Server, Api, String) {
    let listen = format!("127.0.0.1:{}", certflow_testkit::free_port());
    let mut all = vec![("CERTFLOW_AGENT__LISTEN", listen.as_str())];
    all.extend_from_slice(env);
    let server =
        start(&dir.join("data"), &all).unwrap_or_else(|e| panic!("server did not start: {e}"));
    let api = Api::new(&server, server.token_line.as_deref().unwrap());
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    std::fs::write(
        dir.join("server-ca.pem"),
        issuers[0]["issuing_cert_pem"].as_str().unwrap(),
    )
    .unwrap();
    (server, api, listen)
}

/// A join token for an agent `name` of team `team`, written (0600) to
/// `dir/join-token` for the agent's `join_token_file`.
pub(crate) fn join_token(api: &Api, dir: &Path, name: &str, team: &str) {
    let (status, jt) = api.post(
        "/console/api/v1/agents/join-tokens",
        json!({ "name": name, "teams": [team], "ttl_minutes": 10 }),
    );
    assert_eq!(status, 201, "{jt}");
    private(&dir.join("join-token"), jt["token"].as_str().unwrap());
}

/// What an agent run printed, and the server log, for an assertion message.
pub(crate) fn run_context(server: &Server, what: &str, out: &str, err: &str) -> String {
    format!(
        "{what}\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n--- server log ---\n{}",
        server.log()
    )
}

/// Exit code, stdout and stderr of `certflow-agent <args> --config <config>`,
/// killed (and the test failed) if it runs longer than a minute.
pub(crate) fn agent(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = config.parent().unwrap();
    let (out, err) = (
        dir.join(format!("{}.out", args.join("-"))),
        dir.join(format!("{}.err", args.join("-"))),
    );
    let mut child = Command::new(agent_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "certflow-agent {args:?} still running after 60 s:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code(),
        std::fs::read_to_string(&out).unwrap(),
        std::fs::read_to_string(&err).unwrap(),
    )
}
