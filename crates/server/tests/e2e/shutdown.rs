//! Graceful shutdown of the real binary: on SIGTERM `/readyz` turns 503 at
//! once while `/healthz` stays 200, the listener keeps accepting for
//! `[server] drain_delay_secs` and then closes, and a request already in
//! flight (its body still arriving after the listener closed) is answered
//! before the process exits 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Api, key_and_csr, require, start};

#[test]
fn sigterm_drains_the_request_in_flight_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start(
        &tmp.path().join("data"),
        &[("CERTFLOW_SERVER__DRAIN_DELAY_SECS", "2")],
    )
    .expect("certflow starts");
    let token = server.token_line.clone().unwrap();
    let addr = server.url.trim_start_matches("http://").to_owned();

    // A slow client: the request head now, the body later.
    let body = json!({"team": "payments", "names": ["slow.example.com"]}).to_string();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        slow,
        "POST /console/api/v1/certificates HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nx-request-id: slow-client\r\n\r\n",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    Command::new("kill")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Readiness fails at once (the load balancer stops sending), liveness does not.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let r = http.get(format!("{}/readyz", server.url)).send().unwrap();
        if r.status() == 503 {
            // A problem document naming the failed check.
            assert_eq!(
                r.headers()["content-type"].to_str().unwrap(),
                "application/problem+json"
            );
            let v: serde_json::Value = r.json().unwrap();
            assert_eq!(v["errors"][0]["field"], "process", "{v}");
            assert_eq!(v["errors"][0]["reason"], "draining", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {}", r.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    let live = http.get(format!("{}/healthz", server.url)).send().unwrap();
    assert_eq!(live.status(), 200);

    // After the drain delay the listener is closed...
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&addr).is_ok() {
        assert!(Instant::now() < deadline, "the listener never closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and the request in flight still gets its answer.
    slow.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "in-flight request cut short: {answer:?}\n{}",
        server.log()
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-request-id: slow-client"),
        "{answer}"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status}:\n{}", server.log());
    let log = server.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        log.contains("slow-client"),
        "the access line has the id: {log}"
    );
}

/// The agent listener drains too: on SIGTERM it stops accepting at once
/// (no drain delay here), an agent's long poll already waiting is answered
/// when its wait ends, and only then does the process exit 0.
#[test]
fn sigterm_lets_an_agent_long_poll_finish() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let listen = format!("127.0.0.1:{}", certflow_testkit::free_port());
    let mut server = start(
        &dir.join("data"),
        &[("CERTFLOW_AGENT__LISTEN", listen.as_str())],
    )
    .expect("certflow starts");
    let api = Api::new(&server, server.token_line.as_deref().unwrap());
    let issuers: serde_json::Value = api.get("/console/api/v1/issuers").json().unwrap();
    let ca =
        reqwest::Certificate::from_pem(issuers[0]["issuing_cert_pem"].as_str().unwrap().as_bytes())
            .unwrap();
    let client = |identity: Option<&str>| {
        let mut b = reqwest::blocking::Client::builder()
            .no_proxy()
            .tls_certs_only([ca.clone()])
            .timeout(Duration::from_secs(30));
        if let Some(pem) = identity {
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let (status, jt) = api.post(
        "/console/api/v1/agents/join-tokens",
        json!({ "name": "web-01", "teams": ["web"], "ttl_minutes": 10 }),
    );
    assert_eq!(status, 201, "{jt}");
    let (key, csr) = key_and_csr(dir, "agent");
    let base = format!("https://{listen}");
    let r = client(None)
        .post(format!("{base}/agent/v1/enroll"))
        .bearer_auth(jt["token"].as_str().unwrap())
        .json(&json!({ "csr": csr }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let identity: serde_json::Value = r.json().unwrap();
    let agent = client(Some(&format!(
        "{}{key}",
        identity["certificate_pem"].as_str().unwrap()
    )));
    let r = agent
        .get(format!("{base}/agent/v1/assignments"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();

    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let r = agent
            .get(format!("{base}/agent/v1/assignments?wait=4"))
            .header("if-none-match", tag)
            .send()
            .unwrap();
        (r.status().as_u16(), started.elapsed(), Instant::now())
    });
    std::thread::sleep(Duration::from_millis(1000));
    Command::new("kill")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    // The agent listener stops accepting at once.
    let deadline = Instant::now() + Duration::from_secs(3);
    while TcpStream::connect(&listen).is_ok() {
        assert!(Instant::now() < deadline, "the agent listener never closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, waited, answered) = poll.join().unwrap();
    assert_eq!(status, 304, "the long poll was answered, unchanged");
    assert!(waited >= Duration::from_millis(3500), "{waited:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit {status}:\n{}", server.log());
    assert!(answered.elapsed() < Duration::from_secs(15));
}
