//! Revoke with replacement end to end: the real `certflow serve` with its
//! agent listener and an agent enrolled with a join token (reqwest over
//! mTLS). After a revocation with `replace` (API body and `certflow cert
//! revoke --replace`) the agent's next poll shows the replacement as an
//! active new version and the bundle is the replacement; without replace
//! the assignment says `revoked`. A requester-held key revoked for
//! keyCompromise cannot be replaced: 409 and nothing revoked. And the real
//! `certflow-agent` installs a replacement with its usual machinery and
//! follows its certificates' `on_revoked` (remove and reload, or keep and
//! warn), once per revoked version.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Api, cli, key_and_csr, require, start};

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

#[test]
fn agents_see_a_replacement_as_the_next_active_version() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let listen = format!("127.0.0.1:{}", certflow_testkit::free_port());
    let server = start(
        &dir.join("data"),
        &[("CERTFLOW_AGENT__LISTEN", listen.as_str())],
    )
    .unwrap_or_else(|e| panic!("server did not start: {e}"));
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let base = format!("https://{listen}");
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let ca_pem = issuers[0]["issuing_cert_pem"].as_str().unwrap().to_owned();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();

    let (status, cert) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "names": ["www.example.com"] }),
    );
    assert_eq!(status, 201, "{cert}");
    let id = cert["id"].as_str().unwrap().to_owned();
    let (_, csr_pem) = key_and_csr(dir, "app");
    let (status, held) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "names": ["app.example.com"], "csr": csr_pem }),
    );
    assert_eq!(status, 201, "{held}");
    let held_id = held["id"].as_str().unwrap().to_owned();

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
    for c in [&id, &held_id] {
        let (status, a) = api.post(
            &format!("/console/api/v1/agents/{agent_id}/assignments"),
            json!({ "certificate_id": c }),
        );
        assert_eq!(status, 201, "{a}");
    }
    let assignment = |cid: &str| -> Value {
        let r = agent
            .get(format!("{base}/agent/v1/assignments"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let list: Value = r.json().unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["certificate_id"] == cid)
            .cloned()
            .unwrap_or_else(|| panic!("{cid} not in {list}"))
    };
    let before = assignment(&id);
    assert_eq!(
        (before["version"].as_u64(), before["status"].as_str()),
        (Some(1), Some("active"))
    );

    // A malformed body is a problem naming it; nothing is revoked.
    let (status, p) = api.post(
        &format!("/console/api/v1/certificates/{id}/revoke"),
        json!({ "reason": "superseded", "replace": "yes" }),
    );
    assert_eq!(status, 400, "{p}");
    assert_eq!(assignment(&id)["status"], "active");

    // Revoke with replace through the API: the next poll shows version 2, active.
    let (status, d) = api.post(
        &format!("/console/api/v1/certificates/{id}/revoke"),
        json!({ "reason": "superseded", "replace": true }),
    );
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["status"], "active", "{d}");
    assert_eq!(
        d["replacement"],
        json!({ "status": "issued", "revoked_version": 1, "version": 2 })
    );
    let after = assignment(&id);
    assert_eq!(after["status"], "active", "{after}");
    assert_eq!(after["version"], 2);
    assert_ne!(after["serial"], before["serial"]);
    let bundle: Value = agent
        .get(format!("{base}/agent/v1/certificates/{id}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(bundle["version"], 2, "{bundle}");
    assert_eq!(bundle["serial"], after["serial"]);

    // The CLI's --replace does the same.
    let (done, out) = cli(
        &server,
        &token,
        &[
            "cert",
            "revoke",
            &id,
            "--reason",
            "keyCompromise",
            "--replace",
            "--output",
            "json",
        ],
    );
    assert!(done, "{out}");
    let after = assignment(&id);
    assert_eq!(
        (after["version"].as_u64(), after["status"].as_str()),
        (Some(3), Some("active"))
    );

    // A requester-held key reported compromised: refused before revoking.
    let (status, p) = api.post(
        &format!("/console/api/v1/certificates/{held_id}/revoke"),
        json!({ "reason": "keyCompromise", "replace": true }),
    );
    assert_eq!(status, 409, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("re-key needed"),
        "{p}"
    );
    let held_now = assignment(&held_id);
    assert_eq!(
        (held_now["version"].as_u64(), held_now["status"].as_str()),
        (Some(1), Some("active"))
    );

    // Without replace, the assignment's status is the removal instruction.
    let (status, d) = api.post(
        &format!("/console/api/v1/certificates/{held_id}/revoke"),
        json!({ "reason": "keyCompromise" }),
    );
    assert_eq!(status, 200, "{d}");
    assert!(d.get("replacement").is_none(), "{d}");
    assert_eq!(assignment(&held_id)["status"], "revoked");

    // The history records the replacement.
    let detail: Value = api
        .get(&format!("/console/api/v1/certificates/{id}"))
        .json()
        .unwrap();
    let revokes: Vec<&Value> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "certificate.revoke")
        .collect();
    assert_eq!(revokes.len(), 2, "{detail}");
    assert!(
        revokes.iter().all(|e| e["details"]["replace"] == true),
        "{revokes:?}"
    );
}

/// The real `certflow-agent`: a replacement is installed by the next cycle
/// like any new version; a revocation without one is acted on per
/// `on_revoked`: `remove` takes the files out and reloads, once; `keep`
/// leaves them and warns, once.
#[test]
fn the_agent_installs_a_replacement_and_follows_on_revoked() {
    use crate::support::agent::{agent, agent_server, join_token, private, run_context};

    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (server, api, listen) = agent_server(dir, &[]);
    let mut ids = Vec::new();
    for name in ["gone", "kept"] {
        let (status, c) = api.post(
            "/console/api/v1/certificates",
            json!({ "team": "web", "name": name, "names": [format!("{name}.example.test")] }),
        );
        assert_eq!(status, 201, "{c}");
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    join_token(&api, dir, "app-01", "web");
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let config = dir.join("agent.toml");
    private(
        &config,
        &format!(
            r#"server = "https://{listen}"
ca_file = "{d}/server-ca.pem"
state_dir = "{d}/state"
agent_name = "app-01"

[auth]
join_token_file = "{d}/join-token"

[[certificate]]
name = "gone"
id = "{gone}"
key = "server"
on_revoked = "remove"
[certificate.install]
cert = "{t}/gone.crt"
key = "{t}/gone.key"
[certificate.reload]
command = "echo reload >> {d}/gone.reloads"

[[certificate]]
name = "kept"
id = "{kept}"
key = "server"
[certificate.install]
cert = "{t}/kept.crt"
key = "{t}/kept.key"
"#,
            d = dir.display(),
            t = tls.display(),
            gone = ids[0],
            kept = ids[1],
        ),
    );
    let ctx = |what: &str, out: &str, err: &str| run_context(&server, what, out, err);
    // Enrol, then assign both.
    agent(&config, &["once"]);
    let list: Value = api.get("/console/api/v1/agents").json().unwrap();
    let agent_id = list["items"][0]["id"].as_str().unwrap().to_owned();
    for id in &ids {
        let (status, a) = api.post(
            &format!("/console/api/v1/agents/{agent_id}/assignments"),
            json!({ "certificate_id": id }),
        );
        assert_eq!(status, 201, "{a}");
    }
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("first install", &out, &err));
    let served = |name: &str| std::fs::read_to_string(tls.join(format!("{name}.crt"))).ok();
    let v1 = served("gone").unwrap();

    // Revoked with a replacement: the next cycle installs version 2.
    let (status, d) = api.post(
        &format!("/console/api/v1/certificates/{}/revoke", ids[0]),
        json!({ "reason": "superseded", "replace": true }),
    );
    assert_eq!(status, 200, "{d}");
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("replacement", &out, &err));
    let v2 = served("gone").unwrap();
    assert_ne!(v1, v2, "{}", ctx("replacement", &out, &err));
    // The same PEM, whatever the line endings.
    assert_eq!(
        v2.replace("\r\n", "\n").trim(),
        api.download(&ids[0], "certificate")
            .replace("\r\n", "\n")
            .trim(),
        "the replacement is served"
    );

    // Revoked without one: "remove" takes the files out and reloads once;
    // "keep" leaves them and warns once.
    for id in &ids {
        let (status, d) = api.post(
            &format!("/console/api/v1/certificates/{id}/revoke"),
            json!({ "reason": "cessationOfOperation" }),
        );
        assert_eq!(status, 200, "{d}");
    }
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("revoked", &out, &err));
    assert!(
        err.contains("installed files removed"),
        "{}",
        ctx("revoked", &out, &err)
    );
    assert!(
        err.contains("left in place"),
        "{}",
        ctx("revoked", &out, &err)
    );
    assert!(served("gone").is_none(), "{}", ctx("revoked", &out, &err));
    assert!(std::fs::symlink_metadata(tls.join("gone.key")).is_err());
    assert!(served("kept").is_some(), "kept in place");
    let reloads = || {
        std::fs::read_to_string(dir.join("gone.reloads"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    // One reload per install (v1, v2) and one for the removal.
    assert_eq!(reloads(), 3);
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("revoked again", &out, &err));
    assert!(
        !err.contains("installed files removed") && !err.contains("left in place"),
        "{}",
        ctx("once per version", &out, &err)
    );
    assert_eq!(reloads(), 3, "no second removal");
}
