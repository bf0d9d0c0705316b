//! Peers the end-to-end tests start or check with: a webhook receiver,
//! moto_server (S3 + KMS) and pkilint.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::require;

/// An HTTP receiver on a fixed loopback port that records each request body
/// and answers 204; it can be started after a subscription points at it, so
/// the first deliveries find the port closed.
pub(crate) struct Receiver {
    /// The bodies received so far.
    pub(crate) bodies: Arc<Mutex<Vec<Value>>>,
    /// Each request's head (lower case) and raw body, for signature checks.
    pub(crate) raw: RawRequests,
}

/// Requests as received: head (lower case) and body.
pub(crate) type RawRequests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

impl Receiver {
    /// Listens on loopback `port` from now on.
    pub(crate) fn listen(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let raw = RawRequests::default();
        let sink = bodies.clone();
        let raw_sink = raw.clone();
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
                    let body = buf[end + 4..].to_vec();
                    raw_sink.lock().unwrap().push((head, body.clone()));
                    break Some(body);
                };
                if let Some(Ok(v)) = body.map(|b| serde_json::from_slice(&b)) {
                    sink.lock().unwrap().push(v);
                }
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            }
        });
        Self { bodies, raw }
    }

    /// How many requests carried an `X-Certflow-Signature` that openssl
    /// computes the same from `secret` (HMAC-SHA256 of "<timestamp>.<body>"),
    /// and how many carried one at all.
    pub(crate) fn signatures_verified(&self, secret: &str) -> (usize, usize) {
        let raw = self.raw.lock().unwrap().clone();
        let header = |head: &str, name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let mut signed = 0;
        let mut verified = 0;
        for (head, body) in raw {
            let (Some(ts), Some(sig)) = (
                header(&head, "x-certflow-timestamp:"),
                header(&head, "x-certflow-signature:"),
            ) else {
                continue;
            };
            signed += 1;
            let mut child = Command::new("openssl")
                .args(["dgst", "-sha256", "-hex", "-hmac", secret])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("openssl (apt-get install openssl)");
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(ts.as_bytes()).unwrap();
            stdin.write_all(b".").unwrap();
            stdin.write_all(&body).unwrap();
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let mac = text.trim().rsplit(' ').next().unwrap_or_default();
            if sig == format!("sha256={mac}") {
                verified += 1;
            }
        }
        (verified, signed)
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

/// moto_server (S3 + KMS emulator) on a free loopback port, killed on drop.
pub(crate) struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub(crate) endpoint: String,
}

impl Moto {
    /// Starts moto_server and waits until it answers (30 s at most).
    pub(crate) fn start() -> Self {
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

    /// Creates S3 bucket `bucket` in eu-west-1.
    pub(crate) fn create_bucket(&self, bucket: &str) {
        let body = "<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>";
        let r = reqwest::blocking::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .body(body)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// KMS CreateKey over the JSON protocol (moto does not check signatures): the key ARN.
    pub(crate) fn create_key(&self) -> String {
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

/// pkilint findings at ERROR or FATAL (the exit code also counts warnings, so parse the JSON).
pub(crate) fn pkilint_errors(linter: &str, file: &Path) -> Vec<String> {
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
