//! Agents end to end: the real `certflow serve` with the agent listener (mTLS),
//! an agent key and CSR made by openssl, and reqwest (rustls) presenting the
//! identity certificate certflow issued — or none, or one from another CA, or
//! one smuggled in the gateway header from an untrusted peer.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{Api, BIN, key_and_csr, require, sh, start, stop};

fn openssl(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["openssl"];
    all.extend_from_slice(args);
    let (ok, out) = sh(dir, &all);
    assert!(ok, "openssl {args:?}: {out}");
    out
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

    // `certflow admin agent-ca` exports the same chain for a gateway's trust store.
    let exported = std::process::Command::new(BIN)
        .args(["admin", "agent-ca"])
        .env_clear()
        .env("CERTFLOW_DATA_DIR", dir.join("data"))
        .output()
        .unwrap();
    assert!(exported.status.success(), "{exported:?}");
    std::fs::write(dir.join("exported-ca.pem"), &exported.stdout).unwrap();
    openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "exported-ca.pem",
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
    let metrics = reqwest::blocking::get(server.metrics_url.as_deref().unwrap())
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(
            "certflow_http_requests_total{group=\"agent\",route=\"/agent/v1/whoami\",status=\"403\"}"
        ),
        "{metrics}"
    );
    stop(server);
}

/// The OpenID provider of the tests (`testdata/oidc/provider.mjs`):
/// client-credentials clients `agent-1` and `stranger` issuing ES256 JWT access
/// tokens for `urn:certflow:api`; its signing keys are written out so the test
/// can mint tokens "from" it with chosen claims (another client, expired, `cnf`).
pub(crate) struct Op {
    child: std::process::Child,
    pub(crate) issuer: String,
    ec_pkcs8: Vec<u8>,
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_op(dir: &Path) -> Op {
    require("node", "apt-get install nodejs (Node 20 or later)");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/oidc");
    assert!(
        fixture.join("node_modules/oidc-provider").exists(),
        "oidc-provider is required: scripts/peers.sh (npm ci in testdata/oidc)"
    );
    let port = certflow_testkit::free_port();
    let log = dir.join("op.log");
    let keys = dir.join("op-keys.json");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new("node")
        .arg("provider.mjs")
        .current_dir(&fixture)
        .env("OP_PORT", port.to_string())
        .env("OP_KEYS_OUT", &keys)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut op = Op {
        child,
        issuer: format!("http://127.0.0.1:{port}"),
        ec_pkcs8: Vec::new(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("READY")
    {
        assert!(
            std::time::Instant::now() < deadline && op.child.try_wait().unwrap().is_none(),
            "oidc-provider did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let keys: Value = serde_json::from_str(&std::fs::read_to_string(&keys).unwrap()).unwrap();
    use base64::Engine as _;
    op.ec_pkcs8 = base64::engine::general_purpose::STANDARD
        .decode(keys["ec"]["pkcs8"].as_str().unwrap())
        .unwrap();
    op
}

impl Op {
    /// A client-credentials access token from the provider's token endpoint.
    fn token(&self, client: &str, secret: &str) -> String {
        let r = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&resource=urn%3Acertflow%3Aapi&scope=certs%3Aread")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "token endpoint");
        r.json::<Value>().unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A token signed with the provider's own ES256 key (`kid` ec-1) for
    /// `client`, with `extra` claims merged in (they may override the defaults).
    fn mint(&self, client: &str, extra: Value) -> String {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut claims = json!({
            "iss": self.issuer, "sub": client, "client_id": client,
            "aud": "urn:certflow:api", "iat": now, "exp": now + 300,
            "jti": uuid_like(), "scope": "certs:read",
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let header = json!({ "alg": "ES256", "typ": "at+jwt", "kid": "ec-1" });
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.ec_pkcs8).unwrap();
        let sig = key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64.encode(sig.as_ref()))
    }
}

fn uuid_like() -> String {
    format!("{:x}", OffsetDateTime::now_utc().unix_timestamp_nanos())
}

/// RFC 8705 thumbprint of a PEM certificate.
fn x5t(cert_pem: &str) -> String {
    use base64::Engine as _;
    let der = certflow_pki::parse_pem_certs("c", cert_pem)
        .unwrap()
        .remove(0);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der).as_ref())
}

/// Agents with OIDC client-credentials tokens (issue 5 item 6): enrolment
/// with a provider's token, token + certificate on every request, the token
/// attack rows (401 and a log line each), re-enrolment of the same agent after
/// its identity was replaced, and a disabled agent refused at once.
#[test]
fn agents_enrol_with_client_credentials_tokens_bound_to_their_certificate() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let op = start_op(dir);
    let port = certflow_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let config = dir.join("certflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[auth.issuers]]
issuer = "{issuer}"
audience = "urn:certflow:api"
[auth.issuers.service_roles.agent-1]
role = "viewer"
teams = ["payments"]
[auth.issuers.service_roles.agent-2]
role = "viewer"
teams = ["search"]
[auth.issuers.service_roles.stranger]
role = "viewer"
"#,
            issuer = op.issuer
        ),
    )
    .unwrap();
    let server = start(
        &dir.join("data"),
        &[
            ("CERTFLOW_AGENT__LISTEN", listen.as_str()),
            ("CERTFLOW_CONFIG", config.to_str().unwrap()),
        ],
    )
    .unwrap_or_else(|e| panic!("server did not start: {e}"));
    let api = Api::new(&server, server.token_line.as_deref().unwrap());
    let base = format!("https://{listen}");
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let ca =
        reqwest::Certificate::from_pem(issuers[0]["issuing_cert_pem"].as_str().unwrap().as_bytes())
            .unwrap();
    let anonymous = client(&ca, None);
    let enroll = |token: &str, csr: &str| {
        status_and_json(
            anonymous
                .post(format!("{base}/agent/v1/enroll"))
                .bearer_auth(token)
                .json(&json!({ "csr": csr }))
                .send(),
        )
    };
    let whoami = |c: &reqwest::blocking::Client, token: Option<&str>| {
        let mut req = c.get(format!("{base}/agent/v1/whoami"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        status_and_json(req.send())
    };

    // Enrolment with a client-credentials token from the provider.
    let t1 = op.token("agent-1", "agent-secret");
    let (key_a, csr_a) = key_and_csr(dir, "agent-a");
    let (status, a) = enroll(&t1, &csr_a);
    assert_eq!(status, 201, "{a}");
    let agent_a = a["agent_id"].as_str().unwrap().to_owned();
    assert_eq!(a["teams"], json!(["payments"]), "teams from service_roles");
    assert_eq!(a["name"], "agent-1");
    let cert_a = a["certificate_pem"].as_str().unwrap().to_owned();
    let with_a = client(&ca, Some((&cert_a, &key_a)));
    let (status, me) = whoami(&with_a, Some(&t1));
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["agent_id"], agent_a.as_str());

    // A second agent, of another client (token minted with the provider's key).
    let t2 = op.mint("agent-2", json!({}));
    let (key_b, csr_b) = key_and_csr(dir, "agent-b");
    let (status, b) = enroll(&t2, &csr_b);
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["teams"], json!(["search"]));
    let cert_b = b["certificate_pem"].as_str().unwrap().to_owned();
    let with_b = client(&ca, Some((&cert_b, &key_b)));
    assert_eq!(whoami(&with_b, Some(&t2)).0, 200);

    // A client without teams cannot enrol: 403 naming the fix.
    let stranger = op.token("stranger", "stranger-secret");
    let (status, problem) = enroll(&stranger, &csr_a);
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("agent-client-not-mapped"),
        "{problem}"
    );

    // The attack rows: each a 401.
    let expired = op.mint(
        "agent-1",
        json!({ "iat": OffsetDateTime::now_utc().unix_timestamp() - 900,
                "exp": OffsetDateTime::now_utc().unix_timestamp() - 600 }),
    );
    let bound_to_b = op.mint("agent-1", json!({ "cnf": { "x5t#S256": x5t(&cert_b) } }));
    let rows: Vec<(&str, &reqwest::blocking::Client, Option<&str>)> = vec![
        (
            "valid token without a client certificate",
            &anonymous,
            Some(&t1),
        ),
        (
            "valid token with another agent's certificate",
            &with_b,
            Some(&t1),
        ),
        (
            "certificate without token for a token-enrolled agent",
            &with_a,
            None,
        ),
        ("token of another client", &with_a, Some(&stranger)),
        ("token of another enrolled client", &with_a, Some(&t2)),
        ("expired token", &with_a, Some(&expired)),
        (
            "garbage token",
            &with_a,
            Some("eyJhbGciOiJFUzI1NiJ9.e30.AAAA"),
        ),
        (
            "token bound to another certificate",
            &with_a,
            Some(&bound_to_b),
        ),
    ];
    for (row, c, token) in rows {
        let (status, problem) = whoami(c, token);
        assert_eq!(status, 401, "{row}: {problem}");
        assert_eq!(problem["status"], 401, "{row}: a problem document");
    }
    // Bound to the right certificate: fine.
    let bound_to_a = op.mint("agent-1", json!({ "cnf": { "x5t#S256": x5t(&cert_a) } }));
    assert_eq!(whoami(&with_a, Some(&bound_to_a)).0, 200);

    // Renewal over mTLS replaces the identity; the replaced one is refused...
    let (key_a2, csr_a2) = key_and_csr(dir, "agent-a2");
    let (status, renewed) = status_and_json(
        with_a
            .post(format!("{base}/agent/v1/identity/renew"))
            .bearer_auth(&t1)
            .json(&json!({ "csr": csr_a2 }))
            .send(),
    );
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(whoami(&with_a, Some(&t1)).0, 403);
    // ... and the host, having lost it (off for weeks), enrols again with its
    // token: the same agent, a new identity.
    let (key_a3, csr_a3) = key_and_csr(dir, "agent-a3");
    let (status, again) = enroll(&t1, &csr_a3);
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["agent_id"], agent_a.as_str(), "same agent");
    assert_eq!(again["teams"], json!(["payments"]));
    let with_a2 = client(
        &ca,
        Some((renewed["certificate_pem"].as_str().unwrap(), &key_a2)),
    );
    assert_eq!(
        whoami(&with_a2, Some(&t1)).0,
        403,
        "re-enrolment replaced it"
    );
    let with_a3 = client(
        &ca,
        Some((again["certificate_pem"].as_str().unwrap(), &key_a3)),
    );
    assert_eq!(whoami(&with_a3, Some(&t1)).0, 200);
    let list: Value = api.get("/console/api/v1/agents").json().unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");

    // Disabled: refused at the very next request (same keep-alive client),
    // and it cannot enrol its way back.
    let (status, _) = api.post(
        &format!("/console/api/v1/agents/{agent_a}/disable"),
        json!({}),
    );
    assert_eq!(status, 200);
    let (status, problem) = whoami(&with_a3, Some(&t1));
    assert_eq!(status, 403, "{problem}");
    let (key_a4, csr_a4) = key_and_csr(dir, "agent-a4");
    let _ = key_a4;
    let (status, problem) = enroll(&t1, &csr_a4);
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["type"].as_str().unwrap().ends_with("agent-refused"),
        "{problem}"
    );

    // Every refusal left a line with its reason; no token in the log.
    let log = server.log();
    for reason in [
        "no bearer token",
        "the token's subject is not the agent of the client certificate",
        "the token is bound to another certificate",
        "expired",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("agent token refused") && l.contains(reason)),
            "no log line for {reason:?}:\n{log}"
        );
    }
    assert!(log.contains("agent enrolment refused"), "{log}");
    for secret in [&t1, &t2, &stranger, &expired] {
        assert!(!log.contains(secret.as_str()), "a token reached the log");
    }
    let audit: Value = api
        .get(&format!("/console/api/v1/audit?target=agent/{agent_a}"))
        .json()
        .unwrap();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "agent.enroll",
        "agent.identity.renew",
        "agent.reenroll",
        "agent.disable",
    ] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    stop(server);
}
