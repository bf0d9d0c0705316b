//! Test-only helpers shared by the crates' integration tests: real peers
//! (moto_server, PostgreSQL databases, pebble) started per test and cleaned up on drop.
//! A missing peer panics with how to install it: tests never skip silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod pebble;

/// Region every AWS test uses.
pub const AWS_REGION: &str = "eu-west-1";
const MOTO_HINT: &str = "run scripts/peers.sh / pip install 'moto[server]'";

/// A free loopback TCP port (the kernel's pick; a race with another process
/// shows up as the peer failing to start, which the starters report).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP client that ignores proxy variables (tests talk to loopback only).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A moto_server child process on a free loopback port; killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    dir: TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto_server and waits until it answers (under a second usually).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = File::create(dir.path().join("moto.log")).unwrap();
        let port = free_port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("moto_server is not installed: {MOTO_HINT}")
            }
            Err(e) => panic!("cannot start moto_server ({e}): {MOTO_HINT}"),
        };
        let mut moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let ready = format!("{}/moto-api/", moto.endpoint);
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = client.get(&ready).send().await
                && resp.status() == reqwest::StatusCode::OK
            {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}): {}", moto.log());
            }
            assert!(
                Instant::now() < deadline,
                "moto_server not ready after 30 s: {}",
                moto.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// moto's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// An AWS SDK configuration pointing at this moto with test credentials
    /// (set explicitly so the SDK never reaches for the cloud metadata address).
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(AWS_REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_credential_types::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .load()
            .await
    }
}

/// A fresh PostgreSQL database on the local server (127.0.0.1:5432, trust
/// auth), dropped with `FORCE` on drop. Made with `psql` so the helper needs
/// no database driver.
pub struct PgDatabase {
    name: String,
}

impl PgDatabase {
    /// Creates `certflow_test_<random>`; panics with how to start PostgreSQL if it is down.
    pub fn create() -> Self {
        let name = format!("certflow_test_{}", uuid::Uuid::new_v4().simple());
        let out = psql(&format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "PostgreSQL on 127.0.0.1:5432 is required (start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    /// `postgres://postgres@127.0.0.1:5432/<name>`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn psql(sql: &str) -> std::process::Output {
    match Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
        ])
        .arg(sql)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!(
            "psql is required for the PostgreSQL tests ({e}): apt-get install postgresql-client"
        ),
    }
}
