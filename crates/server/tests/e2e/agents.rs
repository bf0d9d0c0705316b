//! Agents end to end: the real `certflow serve` with the agent listener (mTLS),
//! an agent key and CSR made by openssl, and reqwest (rustls) presenting the
//! identity certificate certflow issued — or none, or one from another CA, or
//! one smuggled in the gateway header from an untrusted peer.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Api, require, sh, start, stop};

fn openssl(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["openssl"];
    all.extend_from_slice(args);
    let (ok, out) = sh(dir, &all);
    assert!(ok, "openssl {args:?}: {out}");
    out
}

/// A fresh P-256 key (PKCS#8 PEM) and a CSR for it.
fn key_and_csr(dir: &Path, name: &str) -> (String, String) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    (
        std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap(),
        std::fs::read_to_string(dir.join(format!("{name}.csr"))).unwrap(),
    )
}

/// URL-encodes everything but unreserved characters, as ALB does with the PEM.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn client(ca: &reqwest::Certificate, identity: Option<(&str, &str)>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_certs_only([ca.clone()])
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn status_and_json(r: reqwest::Result<reqwest::blocking::Response>) -> (u16, Value) {
    let r = r.unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

#[test]
fn agents_enrol_with_a_join_token_and_call_over_mtls() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = certflow_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = start(
        &dir.join("data"),
        &[
            ("CERTFLOW_AGENT__LISTEN", listen.as_str()),
            (
                "CERTFLOW_AGENT__CLIENT_CERT_HEADER",
                "X-Amzn-Mtls-Clientcert",
            ),
            ("CERTFLOW_AGENT__TRUSTED_PROXIES", "[\"192.0.2.0/24\"]"),
        ],
    )
    .unwrap_or_else(|e| panic!("server did not start: {e}"));
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let base = format!("https://{listen}");

    // The listener's certificate comes from the internal CA: trust its issuing certificate.
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let ca_pem = issuers[0]["issuing_cert_pem"].as_str().unwrap().to_owned();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let anonymous = client(&ca, None);

    // An admin creates a join token; it is shown once.
    let (status, jt) = api.post(
        "/console/api/v1/agents/join-tokens",
        json!({ "name": "web-01", "teams": ["payments"], "ttl_minutes": 10 }),
    );
    assert_eq!(status, 201, "{jt}");
    let join = jt["token"].as_str().unwrap().to_owned();
    assert!(join.starts_with("cfj_") && join.len() == 47, "{join}");

    // Enrolment: join token + CSR -> identity certificate and CA chain.
    let (key, csr) = key_and_csr(dir, "agent");
    let enroll = |csr: &str| {
        status_and_json(
            anonymous
                .post(format!("{base}/agent/v1/enroll"))
                .bearer_auth(&join)
                .json(&json!({ "csr": csr }))
                .send(),
        )
    };
    let t0 = OffsetDateTime::now_utc();
    let (status, id) = enroll(&csr);
    assert_eq!(status, 201, "{id}");
    let agent_id = id["agent_id"].as_str().unwrap().to_owned();
    let cert = id["certificate_pem"].as_str().unwrap().to_owned();
    assert_eq!(id["teams"], json!(["payments"]));
    std::fs::write(dir.join("agent.crt"), &cert).unwrap();
    let text = openssl(dir, &["x509", "-in", "agent.crt", "-noout", "-text"]);
    assert!(
        text.contains(&format!("URI:urn:certflow:agent:{agent_id}")),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("Subject: CN = web-01"), "{text}");
    let not_after = OffsetDateTime::parse(id["not_after"].as_str().unwrap(), &Rfc3339).unwrap();
    let life = not_after - t0;
    assert!(
        life > time::Duration::hours(24) - time::Duration::minutes(2)
            && life <= time::Duration::hours(24) + time::Duration::minutes(1),
        "{life}"
    );
    // The chain verifies the identity for client auth.
    std::fs::write(
        dir.join("agent-ca.pem"),
        id["ca_chain_pem"].as_str().unwrap(),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "agent-ca.pem",
            "-purpose",
            "sslclient",
            "agent.crt",
        ],
    );

    // The token is single-use.
    let (status, problem) = enroll(&csr);
    assert_eq!(status, 401, "{problem}");

    // whoami over mTLS.
    let agent = client(&ca, Some((&cert, &key)));
    let whoami = || agent.get(format!("{base}/agent/v1/whoami")).send();
    let (status, me) = status_and_json(whoami());
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["agent_id"], agent_id.as_str());
    assert_eq!(me["name"], "web-01");
    assert_eq!(me["certificate_not_after"], id["not_after"]);

    // No client certificate: refused.
    let (status, _) = status_and_json(anonymous.get(format!("{base}/agent/v1/whoami")).send());
    assert_eq!(status, 401);

    // The identity in a gateway header from an untrusted peer (us, 127.0.0.1) is ignored.
    let (status, _) = status_and_json(
        anonymous
            .get(format!("{base}/agent/v1/whoami"))
            .header("X-Amzn-Mtls-Clientcert", url_encode(&cert))
            .send(),
    );
    assert_eq!(status, 401);

    // A client certificate from another CA fails the TLS handshake.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "rogue.key",
            "-out",
            "rogue.crt",
            "-days",
            "1",
            "-subj",
            "/CN=web-01",
            "-addext",
            &format!("subjectAltName=URI:urn:certflow:agent:{agent_id}"),
            "-addext",
            "extendedKeyUsage=clientAuth",
        ],
    );
    let rogue = client(
        &ca,
        Some((
            &std::fs::read_to_string(dir.join("rogue.crt")).unwrap(),
            &std::fs::read_to_string(dir.join("rogue.key")).unwrap(),
        )),
    );
    let refused = rogue.get(format!("{base}/agent/v1/whoami")).send();
    assert!(
        refused.is_err(),
        "a foreign client certificate was accepted: {:?}",
        refused.map(|r| r.status())
    );

    // Renewal over mTLS: a new identity, the old one is refused at once.
    let (key2, csr2) = key_and_csr(dir, "agent2");
    let (status, renewed) = status_and_json(
        agent
            .post(format!("{base}/agent/v1/identity/renew"))
            .json(&json!({ "csr": csr2 }))
            .send(),
    );
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["agent_id"], agent_id.as_str());
    let (status, _) = status_and_json(whoami());
    assert_eq!(status, 403, "the replaced identity must be refused");
    let agent = client(
        &ca,
        Some((renewed["certificate_pem"].as_str().unwrap(), &key2)),
    );
    let whoami = || agent.get(format!("{base}/agent/v1/whoami")).send();
    assert_eq!(status_and_json(whoami()).0, 200);

    // Disabled by an admin: refused on the next request, same connection pool.
    let (status, view) = api.post(
        &format!("/console/api/v1/agents/{agent_id}/disable"),
        json!({}),
    );
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "disabled");
    let (status, problem) = status_and_json(whoami());
    assert_eq!(status, 403, "{problem}");
    let list: Value = api.get("/console/api/v1/agents").json().unwrap();
    assert_eq!(list["items"][0]["id"], agent_id.as_str());
    assert_eq!(list["items"][0]["status"], "disabled");
    let audit: Value = api
        .get(&format!("/console/api/v1/audit?target=agent/{agent_id}"))
        .json()
        .unwrap();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["agent.enroll", "agent.identity.renew", "agent.disable"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    let metrics = api.get("/metrics").text().unwrap();
    assert!(
        metrics.contains(
            "certflow_http_requests_total{group=\"agent\",route=\"/agent/v1/whoami\",status=\"403\"}"
        ),
        "{metrics}"
    );
    stop(server);
}
