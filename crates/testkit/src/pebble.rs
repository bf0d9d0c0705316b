//! pebble, Let's Encrypt's test ACME CA, started per test on free loopback
//! ports with a TLS certificate made here (signed by a private CA written to
//! [`Pebble::ca_bundle_path`]). With [`PebbleOptions::real_validation`],
//! pebble-challtestsrv runs as pebble's DNS server and answers `127.0.0.1` for
//! every name, so HTTP-01 reaches [`Pebble::http_port`] on loopback and DNS-01
//! TXT records are set through [`Pebble::challtestsrv_url`].
//!
//! ```ignore
//! let pebble = Pebble::start(PebbleOptions::default()).await;
//! settings.directory_url = pebble.directory_url().to_owned();
//! settings.ca_bundle = Some(pebble.ca_bundle_path().to_owned());
//! ```

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tempfile::TempDir;

use crate::free_port;

const PEBBLE_HINT: &str = "apt-get install pebble (scripts/peers.sh)";

/// How to run pebble; `PebbleOptions::default()` is an always-valid CA with
/// pebble's default leaf validity, no EAB and free validation ports.
#[derive(Clone, Debug, Default)]
pub struct PebbleOptions {
    /// Leaf certificate lifetime in seconds (`certificateValidityPeriod`);
    /// `None` keeps pebble's default (about five years).
    pub leaf_validity_secs: Option<u64>,
    /// `(key id, base64url HMAC key)` pairs (`externalAccountMACKeys`);
    /// non-empty makes external account binding required.
    pub eab_keys: Vec<(String, String)>,
    /// Validate challenges for real (pebble-challtestsrv as pebble's DNS,
    /// every name resolving to 127.0.0.1); `false` sets `PEBBLE_VA_ALWAYS_VALID=1`.
    pub real_validation: bool,
    /// Port pebble fetches HTTP-01 tokens from (`httpPort`); `None` picks a free one.
    pub http_port: Option<u16>,
    /// Port pebble connects to for TLS-ALPN-01 (`tlsPort`); `None` picks a free one.
    pub tls_port: Option<u16>,
    /// Keep pebble's random `badNonce` rejections (`PEBBLE_WFE_NONCEREJECT`
    /// left at pebble's default, 5 % of requests) instead of turning them
    /// off: clients must retry them (RFC 8555 §6.5).
    pub reject_nonces: bool,
}

/// A running pebble (and pebble-challtestsrv with real validation); both are
/// killed on drop.
pub struct Pebble {
    child: Option<Child>,
    challtestsrv: Option<Child>,
    dir: TempDir,
    directory_url: String,
    management_url: String,
    ca_bundle: PathBuf,
    http_port: u16,
    tls_port: u16,
    challtestsrv_url: Option<String>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOPped) process too.
        self.stop();
        if let Some(mut c) = self.challtestsrv.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pebble {
    /// Starts pebble with `options` and returns once its directory answers
    /// (well under a second usually). Panics with an install hint if pebble
    /// (or pebble-challtestsrv) is missing.
    pub async fn start(options: PebbleOptions) -> Self {
        // A free port is found by binding and letting go, so another process
        // may take it before pebble binds it: pebble then exits with "address
        // already in use", and a fresh set of ports is tried.
        for _ in 0..3 {
            match Self::start_once(options.clone()).await {
                Ok(pebble) => return pebble,
                Err(log) => eprintln!("pebble lost a port to another process; retrying:\n{log}"),
            }
        }
        panic!("pebble could not bind free ports three times in a row");
    }

    /// [`Self::start`] on one set of free ports; `Err` with pebble's log when
    /// a port was taken before pebble bound it.
    async fn start_once(options: PebbleOptions) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let (ca_bundle, cert, key) = write_tls(dir.path());
        let (port, mgmt) = (free_port(), free_port());
        let http_port = options.http_port.unwrap_or_else(free_port);
        let tls_port = options.tls_port.unwrap_or_else(free_port);
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": !options.eab_keys.is_empty(),
            }
        });
        if let Some(secs) = options.leaf_validity_secs {
            config["pebble"]["certificateValidityPeriod"] = secs.into();
        }
        if !options.eab_keys.is_empty() {
            config["pebble"]["externalAccountMACKeys"] = options
                .eab_keys
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();

        let mut cmd = Command::new("pebble");
        cmd.arg("-config").arg(&config_path);
        // No validation sleeps, no authorization reuse and, unless asked
        // for, no random nonce rejections: fast, deterministic orders.
        cmd.env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0");
        if options.reject_nonces {
            cmd.env_remove("PEBBLE_WFE_NONCEREJECT");
        } else {
            cmd.env("PEBBLE_WFE_NONCEREJECT", "0");
        }
        let mut challtestsrv = None;
        let mut challtestsrv_url = None;
        if options.real_validation {
            let (dns, cmgmt) = (free_port(), free_port());
            let child = match spawn_logged(
                Command::new("pebble-challtestsrv").args([
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    &format!("127.0.0.1:{dns}"),
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    &format!("127.0.0.1:{cmgmt}"),
                ]),
                &dir.path().join("challtestsrv.log"),
            ) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    panic!("pebble-challtestsrv is not installed: {PEBBLE_HINT}")
                }
                Err(e) => panic!("cannot start pebble-challtestsrv ({e}): {PEBBLE_HINT}"),
            };
            challtestsrv = Some(child);
            challtestsrv_url = Some(format!("http://127.0.0.1:{cmgmt}"));
            wait_port(cmgmt, "pebble-challtestsrv", dir.path()).await;
            cmd.arg("-dnsserver").arg(format!("127.0.0.1:{dns}"));
        } else {
            cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
        }
        let child = match spawn_logged(&mut cmd, &dir.path().join("pebble.log")) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("pebble is not installed: {PEBBLE_HINT}")
            }
            Err(e) => panic!("cannot start pebble ({e}): {PEBBLE_HINT}"),
        };
        let pebble = Self {
            child: Some(child),
            challtestsrv,
            dir,
            directory_url: format!("https://127.0.0.1:{port}/dir"),
            management_url: format!("https://127.0.0.1:{mgmt}"),
            ca_bundle,
            http_port,
            tls_port,
            challtestsrv_url,
        };
        pebble.ready().await
    }

    /// Waits for pebble's directory and roots to answer; `Err` with its log
    /// when it exited because a port was taken.
    async fn ready(mut self) -> Result<Self, String> {
        let client = self.https_client();
        let roots = format!("{}/roots/0", self.management_url);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if answers(&client, &self.directory_url).await && answers(&client, &roots).await {
                return Ok(self);
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = self.log();
                if log.contains("address already in use") {
                    return Err(log);
                }
                panic!("pebble exited ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "pebble not ready after 15 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The ACME directory, `https://127.0.0.1:<port>/dir`.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// PEM file of the private CA that signed pebble's TLS certificate (for
    /// the acme `ca_bundle` setting); not the CA that issues ACME certificates.
    pub fn ca_bundle_path(&self) -> &Path {
        &self.ca_bundle
    }

    /// pebble's management API, `https://127.0.0.1:<port>` (same TLS CA).
    pub fn management_url(&self) -> &str {
        &self.management_url
    }

    /// Port pebble fetches HTTP-01 tokens from on 127.0.0.1 (serve them there).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Port pebble connects to for TLS-ALPN-01 on 127.0.0.1.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// pebble-challtestsrv's management API (`/set-txt`, `/clear-txt`, …),
    /// `Some` only with [`PebbleOptions::real_validation`].
    pub fn challtestsrv_url(&self) -> Option<&str> {
        self.challtestsrv_url.as_deref()
    }

    /// An HTTP client trusting only [`Self::ca_bundle_path`], without proxies.
    pub fn https_client(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.ca_bundle).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// PEM of the root that issues this run's ACME certificates
    /// (`GET /roots/0` on the management port; pebble makes a new one per start).
    pub async fn root_pem(&self) -> String {
        self.https_client()
            .get(format!("{}/roots/0", self.management_url))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// pebble's log (one line per request), for assertions and failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Freezes pebble (SIGSTOP): connections are still accepted by the kernel
    /// but nothing answers, so requests time out, as with a hung CA. Its
    /// state (accounts, orders) survives until [`Self::resume`].
    pub fn pause(&self) {
        self.signal("STOP", true);
    }

    /// Lets a [`Self::pause`]d pebble run again (SIGCONT); it answers at once.
    pub fn resume(&self) {
        self.signal("CONT", false);
    }

    /// Kills pebble for good (the CA is down; its state is lost);
    /// pebble-challtestsrv keeps running until drop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` and waits until the kernel shows pebble `stopped` (or
    /// not): the signal is delivered asynchronously.
    fn signal(&self, signal: &str, stopped: bool) {
        let pid = self.child.as_ref().expect("pebble was stopped").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -{signal}: {e}"));
        assert!(status.success(), "kill -{signal} {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_stopped(pid) != stopped {
            assert!(
                Instant::now() < deadline,
                "pebble {pid} still {} after SIG{signal}",
                if stopped { "running" } else { "stopped" }
            );
            // Test support called from synchronous test code (never on a
            // runtime): the signal lands within milliseconds.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether `pid` is in state `T` (stopped by a signal), per /proc/<pid>/stat.
fn is_stopped(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name in parentheses may contain spaces: the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "T")
}

async fn answers(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
    let file = File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
}

async fn wait_port(port: u16, what: &str, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {port}:\n{}",
            std::fs::read_to_string(dir.join("challtestsrv.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private CA and a `localhost`/`127.0.0.1` certificate for pebble's
/// listeners: (CA PEM, certificate PEM, key PEM) paths.
fn write_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "certflow test pebble TLS CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let leaf = leaf.signed_by(&leaf_key, &ca).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("tls-ca.pem"),
        dir.join("tls-cert.pem"),
        dir.join("tls-key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}
