//! Deployments end to end: the real `certflow serve` with its agent listener;
//! an agent enrolled with a join token talks mTLS with reqwest. Assignment →
//! the agent sees it → 304 from memory → a renewal wakes a long poll within
//! seconds → the bundle (server-held key, audited) → reports → the console's
//! deployment view, a failure notification on a webhook, and refusals.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::peers::Receiver;
use crate::support::{ALLOW_LOOPBACK_WEBHOOKS, Api, key_and_csr, require, start};

fn client(ca: &reqwest::Certificate, identity: Option<&str>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_certs_only([ca.clone()])
        .timeout(Duration::from_secs(60));
    if let Some(pem) = identity {
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn etag(r: &reqwest::blocking::Response) -> String {
    r.headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn assignments_long_poll_bundle_reports_and_notifications() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let listen = format!("127.0.0.1:{}", certflow_testkit::free_port());
    let hook_port = certflow_testkit::free_port();
    let hook = Receiver::listen(hook_port).bodies;
    let server = start(
        &dir.join("data"),
        &[
            ("CERTFLOW_AGENT__LISTEN", listen.as_str()),
            ("CERTFLOW_NOTIFICATIONS__DELIVERY__POLL_INTERVAL_SECS", "1"),
            // The idle-poll loop below is faster than an agent's default allowance.
            ("CERTFLOW_AGENT__RATE_LIMIT_PER_SEC", "1000"),
            ("CERTFLOW_AGENT__RATE_LIMIT_BURST", "1000"),
            ALLOW_LOOPBACK_WEBHOOKS,
        ],
    )
    .unwrap_or_else(|e| panic!("server did not start: {e}"));
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let base = format!("https://{listen}");
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let ca_pem = issuers[0]["issuing_cert_pem"].as_str().unwrap().to_owned();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();

    let (status, sub) = api.post(
        "/console/api/v1/subscriptions",
        json!({ "team": "web", "events": ["deployment-failed"],
                "channel": { "type": "webhook", "url": format!("http://127.0.0.1:{hook_port}/hook"), "format": "json" } }),
    );
    assert_eq!(status, 201, "{sub}");
    let (status, cert) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "names": ["www.example.com"] }),
    );
    assert_eq!(status, 201, "{cert}");
    let cert_id = cert["id"].as_str().unwrap().to_owned();
    let (status, other) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "names": ["other.example.com"] }),
    );
    assert_eq!(status, 201, "{other}");
    let other_id = other["id"].as_str().unwrap().to_owned();

    // Enrol an agent of team "web".
    let (status, jt) = api.post(
        "/console/api/v1/agents/join-tokens",
        json!({ "name": "web-01", "teams": ["web"], "ttl_minutes": 10 }),
    );
    assert_eq!(status, 201, "{jt}");
    let (key, csr) = key_and_csr(dir, "agent");
    let r = client(&ca, None)
        .post(format!("{base}/agent/v1/enroll"))
        .bearer_auth(jt["token"].as_str().unwrap())
        .json(&json!({ "csr": csr }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let identity: Value = r.json().unwrap();
    let agent_id = identity["agent_id"].as_str().unwrap().to_owned();
    let agent = client(
        &ca,
        Some(&format!(
            "{}{key}",
            identity["certificate_pem"].as_str().unwrap()
        )),
    );

    // Nothing assigned yet.
    let r = agent
        .get(format!("{base}/agent/v1/assignments"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let empty_tag = etag(&r);
    assert_eq!(r.json::<Value>().unwrap(), json!({ "items": [] }));

    // A certificate of another team is refused; of its team, assigned.
    let (status, c) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "payments", "names": ["pay.example.com"] }),
    );
    assert_eq!(status, 201, "{c}");
    let (status, p) = api.post(
        &format!("/console/api/v1/agents/{agent_id}/assignments"),
        json!({ "certificate_id": c["id"] }),
    );
    assert_eq!(status, 400, "{p}");
    assert_eq!(p["errors"][0]["field"], "certificate_id", "{p}");
    let (status, a) = api.post(
        &format!("/console/api/v1/agents/{agent_id}/assignments"),
        json!({ "certificate_id": cert_id }),
    );
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["status"], "pending");

    // The agent sees it at once (the assignment dropped its cached answer).
    let r = agent
        .get(format!("{base}/agent/v1/assignments"))
        .header("if-none-match", &empty_tag)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let tag = etag(&r);
    assert!(tag.starts_with('"') && tag != empty_tag, "{tag}");
    let list: Value = r.json().unwrap();
    assert_eq!(list["items"][0]["certificate_id"], cert_id.as_str());
    assert_eq!(list["items"][0]["version"], 1);
    assert_eq!(list["items"][0]["key_source"], "server");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Unchanged: 304 with the same ETag, many times over.
    let t = Instant::now();
    for _ in 0..50 {
        let r = agent
            .get(format!("{base}/agent/v1/assignments"))
            .header("if-none-match", &tag)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 304);
        assert_eq!(etag(&r), tag);
    }
    let per_poll = t.elapsed() / 50;

    // A long poll wakes within seconds of a renewal.
    let poll = {
        let agent = agent.clone();
        let url = format!("{base}/agent/v1/assignments?wait=30");
        let tag = tag.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = agent.get(url).header("if-none-match", tag).send().unwrap();
            let status = r.status().as_u16();
            (
                status,
                t.elapsed(),
                etag(&r),
                r.json::<Value>().unwrap_or(Value::Null),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let renewed_at = Instant::now();
    let (status, renewed) = api.post(
        &format!("/console/api/v1/certificates/{cert_id}/renew"),
        json!({}),
    );
    assert_eq!(status, 200, "{renewed}");
    let (status, waited, new_tag, list) = poll.join().unwrap();
    assert_eq!(status, 200, "{list}");
    assert!(
        waited >= Duration::from_millis(1400),
        "answered before the change: {waited:?}"
    );
    assert!(
        renewed_at.elapsed() < Duration::from_secs(5),
        "the long poll took {:?} after the renewal",
        renewed_at.elapsed()
    );
    assert_ne!(new_tag, tag);
    assert_eq!(list["items"][0]["version"], 2);
    let fingerprint = list["items"][0]["fingerprint_sha256"]
        .as_str()
        .unwrap()
        .to_owned();

    // A long poll with nothing new answers 304 after its wait.
    let t = Instant::now();
    let r = agent
        .get(format!("{base}/agent/v1/assignments?wait=1"))
        .header("if-none-match", &new_tag)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 304);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    // The bundle: version 2 with the server-held key, audited as the agent's download.
    let r = agent
        .get(format!("{base}/agent/v1/certificates/{cert_id}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let bundle: Value = r.json().unwrap();
    assert_eq!(bundle["version"], 2);
    assert_eq!(bundle["fingerprint_sha256"], fingerprint.as_str());
    assert!(bundle["key_pem"].as_str().unwrap().contains("PRIVATE KEY"));
    assert!(
        bundle["certificate_pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        bundle["chain_pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let audit: Value = api
        .get(&format!(
            "/console/api/v1/audit?target=certificate/{cert_id}&action=certificate.key.download"
        ))
        .json()
        .unwrap();
    assert_eq!(audit["items"][0]["subject"], agent_id.as_str(), "{audit}");
    let all_audit = api.text("/console/api/v1/audit?limit=500");
    assert!(
        !all_audit.contains("PRIVATE KEY"),
        "key material in the audit trail"
    );

    // Another certificate of its team, not assigned: 404 problem.
    let r = agent
        .get(format!("{base}/agent/v1/certificates/{other_id}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // Report installed → the console shows it.
    let report = |body: Value| {
        agent
            .post(format!("{base}/agent/v1/reports"))
            .json(&body)
            .send()
            .unwrap()
    };
    let r = report(json!({ "agent_version": "0.1.0", "items": [
        { "certificate_id": cert_id, "version": 2, "fingerprint_sha256": fingerprint, "status": "installed" } ] }));
    assert_eq!(r.status().as_u16(), 204);
    let deployments = |api: &Api| -> Value {
        api.get(&format!(
            "/console/api/v1/certificates/{cert_id}/deployments"
        ))
        .json()
        .unwrap()
    };
    let d = deployments(&api);
    assert_eq!(d[0]["agent_id"], agent_id.as_str(), "{d}");
    assert_eq!(d[0]["status"], "installed", "{d}");
    assert_eq!(d[0]["deployed_version"], 2);
    assert_eq!(d[0]["current_version"], 2);
    assert_eq!(d[0]["drift"], false);

    // Bad reports: a problem naming the field, nothing recorded.
    for (body, field) in [
        (
            json!({ "items": [{ "certificate_id": cert_id, "version": 2, "fingerprint_sha256": "zz", "status": "failed" }] }),
            Some("items[0].fingerprint_sha256"),
        ),
        (
            json!({ "items": [{ "certificate_id": other_id, "version": 1, "fingerprint_sha256": fingerprint, "status": "failed" }] }),
            Some("items[0].certificate_id"),
        ),
        (
            json!({ "items": [{ "certificate_id": cert_id, "version": 2, "fingerprint_sha256": fingerprint, "status": "weird" }] }),
            None,
        ),
        (json!({ "items": "nope" }), None),
    ] {
        let r = report(body.clone());
        let status = r.status().as_u16();
        assert!(status == 400 || status == 422, "{body}: {status}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().unwrap();
        if let Some(field) = field {
            assert_eq!(p["errors"][0]["field"], field, "{p}");
        }
    }
    assert_eq!(deployments(&api)[0]["status"], "installed");

    // A failed install: recorded, and the team's webhook hears about it.
    let r = report(json!({ "items": [
        { "certificate_id": cert_id, "version": 1, "fingerprint_sha256": "0".repeat(64), "status": "failed",
          "attempted_version": 2, "error": "nginx -s reload: exit status 1" } ] }));
    assert_eq!(r.status().as_u16(), 204);
    let d = deployments(&api);
    assert_eq!(d[0]["status"], "failed", "{d}");
    assert_eq!(d[0]["error"], "nginx -s reload: exit status 1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let event = loop {
        let found = hook
            .lock()
            .unwrap()
            .iter()
            .find(|b| b["kind"] == "deployment-failed")
            .cloned();
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no deployment-failed webhook\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(event["certificate_id"], cert_id.as_str(), "{event}");
    assert_eq!(event["details"]["agent_name"], "web-01", "{event}");
    assert_eq!(event["reason"], "nginx -s reload: exit status 1");

    // Unassigned: the agent no longer sees it.
    let r = reqwest::blocking::Client::new()
        .delete(format!(
            "{}/console/api/v1/agents/{agent_id}/assignments/{cert_id}",
            server.url
        ))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = agent
        .get(format!("{base}/agent/v1/assignments"))
        .header("if-none-match", &new_tag)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().unwrap(), json!({ "items": [] }));
    eprintln!("idle poll (304) over mTLS keep-alive: {per_poll:?} per request");
}
