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

use super::start;

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
            let v: serde_json::Value = r.json().unwrap();
            assert_eq!(v["status"], "draining", "{v}");
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
