//! Bad input over the real sockets: the agent listener's routes (enrolment
//! CSR, identity renewal, certificate requests and renewals, deployment
//! reports, discovery reports) and the console's import endpoint. Each row
//! must get a 4xx RFC 9457 problem document naming what was wrong, and
//! nothing may change: the join token still enrols afterwards, the agent's
//! identity and its assignments stay as they were, no certificate, version,
//! deployment, discovery or issuer appears.

use std::path::Path;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{Value, json};

use crate::support::agent::agent_server;
use crate::support::{Api, key_and_csr, require, sh, stop};

/// A row: what is wrong, the request, the status, and the field (or a word
/// of the detail) the problem must name.
struct Bad {
    what: String,
    request: RequestBuilder,
    status: u16,
    names: &'static str,
}

fn bad(what: impl Into<String>, request: RequestBuilder, status: u16, names: &'static str) -> Bad {
    Bad {
        what: what.into(),
        request,
        status,
        names,
    }
}

/// Sends every row; all failures are reported at once.
fn walk(rows: Vec<Bad>) {
    let mut failures = Vec::new();
    for row in rows {
        let r = row
            .request
            .send()
            .unwrap_or_else(|e| panic!("{}: {e:?}", row.what));
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = r.text().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|f| f["field"].as_str()).collect())
            .unwrap_or_default();
        let named = fields.iter().any(|f| f.contains(row.names))
            || body["detail"]
                .as_str()
                .is_some_and(|d| d.to_lowercase().contains(&row.names.to_lowercase()));
        let ok = status == row.status
            && content_type == "application/problem+json"
            && body["status"] == row.status
            && body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("https://certflow.dev/problems/"))
            && named
            && !text.contains("PRIVATE KEY");
        if !ok {
            failures.push(format!(
                "{}: want {} naming {:?}; got {status} {content_type:?} {text:.400}",
                row.what, row.status, row.names
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn testdata(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/csr")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A P-256 key and a CSR for `names` (SANs), made by openssl in `dir`.
fn csr_for(dir: &Path, stem: &str, names: &str) -> (String, String) {
    let (ok, out) = sh(
        dir,
        &[
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.csr"),
            "-subj",
            &format!("/CN={stem}"),
            "-addext",
            &format!("subjectAltName={names}"),
        ],
    );
    assert!(ok, "openssl: {out}");
    (
        std::fs::read_to_string(dir.join(format!("{stem}.key"))).unwrap(),
        std::fs::read_to_string(dir.join(format!("{stem}.csr"))).unwrap(),
    )
}

fn tls_client(ca: &reqwest::Certificate, identity: Option<reqwest::Identity>) -> Client {
    let mut b = Client::builder()
        .no_proxy()
        .tls_certs_only([ca.clone()])
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20));
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b.build().unwrap()
}

/// What must not change: counts and states read through the console API.
fn snapshot(api: &Api, agent_id: &str) -> Value {
    let get = |p: &str| -> Value { api.get(p).json().unwrap() };
    let certs = get("/console/api/v1/certificates?limit=100");
    let items = certs["items"].as_array().cloned().unwrap_or_default();
    let mut detail = Vec::new();
    for c in &items {
        let id = c["id"].as_str().unwrap();
        let d = get(&format!("/console/api/v1/certificates/{id}"));
        detail.push(json!({
            "id": id,
            "versions": d["versions"].as_array().map(Vec::len),
            "deployments": get(&format!("/console/api/v1/certificates/{id}/deployments")),
        }));
    }
    let agents = get("/console/api/v1/agents");
    let agent = agents["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["id"] == agent_id)
        .cloned()
        .unwrap_or(Value::Null);
    let issuers: Vec<Value> = get("/console/api/v1/issuers")
        .as_array()
        .expect("the issuers list")
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    json!({
        "certificates": detail,
        "issuers": issuers,
        "agents": agents["items"].as_array().map(Vec::len),
        "agent_serial": agent["certificate_serial"].clone(),
        "agent_status": agent["status"].clone(),
        "assignments": get(&format!("/console/api/v1/agents/{agent_id}/assignments")),
        "discovered": get("/console/api/v1/discovered?status=all"),
    })
}

#[test]
fn bad_agent_and_import_input_is_a_problem_naming_it_and_changes_nothing() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (server, api, listen) = agent_server(dir, &[]);
    let agent = format!("https://{listen}");
    let ca = reqwest::Certificate::from_pem(
        std::fs::read_to_string(dir.join("server-ca.pem"))
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let anonymous = tls_client(&ca, None);

    // --- enrolment: every bad CSR leaves the join token unused.
    let (status, jt) = api.post(
        "/console/api/v1/agents/join-tokens",
        json!({ "name": "input", "teams": ["payments"], "ttl_minutes": 10 }),
    );
    assert_eq!(status, 201, "{jt}");
    let token = jt["token"].as_str().unwrap().to_owned();
    let enroll = |body: Value| {
        anonymous
            .post(format!("{agent}/agent/v1/enroll"))
            .bearer_auth(&token)
            .json(&body)
    };
    let (key, csr) = key_and_csr(dir, "agent");
    walk(vec![
        bad("enrol: no csr", enroll(json!({})), 400, "csr"),
        bad(
            "enrol: garbage csr",
            enroll(json!({ "csr": testdata("garbage.pem") })),
            400,
            "csr",
        ),
        bad(
            "enrol: truncated csr",
            enroll(json!({ "csr": testdata("truncated.csr") })),
            400,
            "csr",
        ),
        bad(
            "enrol: bad signature",
            enroll(json!({ "csr": testdata("bad-signature.csr") })),
            400,
            "csr",
        ),
        bad(
            "enrol: RSA 1024",
            enroll(json!({ "csr": testdata("rsa1024.csr") })),
            400,
            "csr",
        ),
        bad(
            "enrol: secp256k1",
            enroll(json!({ "csr": testdata("secp256k1.csr") })),
            400,
            "csr",
        ),
        bad(
            "enrol: a name with a control character",
            enroll(json!({ "csr": csr, "name": "a\u{7}b" })),
            400,
            "name",
        ),
        bad(
            "enrol: a 300-character name",
            enroll(json!({ "csr": csr, "name": "n".repeat(300) })),
            400,
            "name",
        ),
        bad(
            "enrol: unknown field",
            enroll(json!({ "csr": csr, "teams": ["admins"] })),
            400,
            "teams",
        ),
    ]);
    let tokens: Value = api
        .get("/console/api/v1/agents/join-tokens")
        .json()
        .unwrap();
    assert_eq!(tokens["items"][0]["state"], "unused", "{tokens}");
    let agents: Value = api.get("/console/api/v1/agents").json().unwrap();
    assert_eq!(
        agents["items"].as_array().map(Vec::len),
        Some(0),
        "{agents}"
    );
    let r = enroll(json!({ "csr": csr })).send().unwrap();
    assert_eq!(r.status(), 201, "the join token still enrols");
    let enrolled: Value = r.json().unwrap();
    let agent_id = enrolled["agent_id"].as_str().unwrap().to_owned();
    let cert = enrolled["certificate_pem"].as_str().unwrap();
    let me = tls_client(
        &ca,
        Some(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap()),
    );
    let post = |path: &str, body: Value| me.post(format!("{agent}{path}")).json(&body);
    let raw = |path: &str, body: &str| {
        me.post(format!("{agent}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
    };

    // One good certificate, for the renewal and report rows.
    let (_, good_csr) = csr_for(dir, "good", "DNS:good.input.example.com");
    let r = post(
        "/agent/v1/certificates",
        json!({ "name": "good", "csr": good_csr }),
    )
    .send()
    .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
    let good: Value = r.json().unwrap();
    let good_id = good["certificate_id"].as_str().unwrap().to_owned();
    let before = snapshot(&api, &agent_id);

    let (_, other_csr) = csr_for(dir, "other", "DNS:other.input.example.com");
    let (_, underscore) = csr_for(dir, "us", "DNS:under_score.input.example.com");
    let (_, wildcard) = csr_for(dir, "wc", "DNS:api.*.input.example.com");
    let request = |extra: Value| {
        let mut body = json!({ "name": "other", "csr": other_csr });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        post("/agent/v1/certificates", body)
    };
    let renew = format!("/agent/v1/certificates/{good_id}/renew");
    let report = |item: Value| post("/agent/v1/reports", json!({ "items": [item] }));
    let fp = "ab".repeat(32);
    let item = |extra: Value| {
        let mut body = json!({ "certificate_id": good_id, "version": 1, "fingerprint_sha256": fp, "status": "installed" });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let found = |extra: Value| {
        let mut body = json!({ "source": "file:/etc/ssl/x.pem", "fingerprint_sha256": fp, "serial": "0a",
            "subject": "CN=x", "issuer": "CN=y", "names": ["x.example.com"], "not_after": "2030-01-01T00:00:00Z" });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        post("/agent/v1/discovered", json!({ "items": [body] }))
    };
    walk(vec![
        // identity renewal
        bad(
            "identity renew: garbage csr",
            post("/agent/v1/identity/renew", json!({ "csr": "garbage" })),
            400,
            "csr",
        ),
        bad(
            "identity renew: RSA 1024",
            post(
                "/agent/v1/identity/renew",
                json!({ "csr": testdata("rsa1024.csr") }),
            ),
            400,
            "csr",
        ),
        bad(
            "identity renew: bad signature",
            post(
                "/agent/v1/identity/renew",
                json!({ "csr": testdata("bad-signature.csr") }),
            ),
            400,
            "csr",
        ),
        // certificate requests
        bad(
            "request: no name",
            post("/agent/v1/certificates", json!({ "csr": other_csr })),
            400,
            "name",
        ),
        bad(
            "request: empty name",
            request(json!({ "name": "" })),
            400,
            "name",
        ),
        bad(
            "request: garbage csr",
            request(json!({ "csr": testdata("garbage.pem") })),
            400,
            "csr",
        ),
        bad(
            "request: bad signature",
            request(json!({ "csr": testdata("bad-signature.csr") })),
            400,
            "csr",
        ),
        bad(
            "request: RSA 1024",
            request(json!({ "csr": testdata("rsa1024.csr") })),
            400,
            "csr",
        ),
        bad(
            "request: P-521",
            request(json!({ "csr": testdata("p521.csr") })),
            400,
            "csr",
        ),
        bad(
            "request: non-LDH name in the CSR",
            request(json!({ "csr": underscore })),
            400,
            "names",
        ),
        bad(
            "request: wildcard not leftmost",
            request(json!({ "csr": wildcard })),
            400,
            "names",
        ),
        bad(
            "request: a team not the agent's",
            request(json!({ "team": "billing" })),
            400,
            "team",
        ),
        bad(
            "request: bad team",
            request(json!({ "team": "Pay ments" })),
            400,
            "team",
        ),
        bad(
            "request: unknown issuer",
            request(json!({ "issuer": "nope" })),
            400,
            "issuer",
        ),
        bad(
            "request: unknown profile",
            request(json!({ "profile": "code-signing" })),
            400,
            "profile",
        ),
        bad(
            "request: zero validity",
            request(json!({ "validity_days": 0 })),
            400,
            "validity_days",
        ),
        bad(
            "request: validity beyond the profile",
            request(json!({ "validity_days": 4000 })),
            400,
            "validity_days",
        ),
        bad(
            "request: unknown field",
            request(json!({ "key_pem": "x" })),
            400,
            "key_pem",
        ),
        bad(
            "request: a name taken by another certificate",
            request(json!({ "name": "good" })),
            409,
            "good",
        ),
        // renewals of an agent's certificate
        bad(
            "renew: garbage csr",
            post(&renew, json!({ "csr": "garbage" })),
            400,
            "csr",
        ),
        bad(
            "renew: RSA 1024",
            post(&renew, json!({ "csr": testdata("rsa1024.csr") })),
            400,
            "csr",
        ),
        bad(
            "renew: unknown field",
            post(&renew, json!({ "names": ["x.example.com"] })),
            400,
            "names",
        ),
        bad(
            "renew: not the agent's certificate",
            post(
                &format!("/agent/v1/certificates/{}/renew", uuid_v4()),
                json!({}),
            ),
            404,
            "certificate",
        ),
        // deployment reports
        bad(
            "report: no items",
            raw("/agent/v1/reports", "{}"),
            400,
            "items",
        ),
        bad(
            "report: unknown certificate",
            report(item(json!({ "certificate_id": uuid_v4() }))),
            400,
            "certificate_id",
        ),
        bad(
            "report: fingerprint not hex",
            report(item(json!({ "fingerprint_sha256": "zz".repeat(32) }))),
            400,
            "fingerprint_sha256",
        ),
        bad(
            "report: fingerprint too short",
            report(item(json!({ "fingerprint_sha256": "ab" }))),
            400,
            "fingerprint_sha256",
        ),
        bad(
            "report: a version that does not exist",
            report(item(json!({ "version": 99 }))),
            400,
            "version",
        ),
        bad(
            "report: unknown status",
            report(item(json!({ "status": "exploded" }))),
            400,
            "status",
        ),
        bad(
            "report: a 100 KiB error",
            report(item(
                json!({ "status": "failed", "error": "e".repeat(100 * 1024) }),
            )),
            413,
            "65536",
        ),
        bad(
            "report: agent version with a control character",
            post(
                "/agent/v1/reports",
                json!({ "items": [item(json!({}))], "agent_version": "1.0\u{1b}[2J" }),
            ),
            400,
            "agent_version",
        ),
        // discovery reports
        bad(
            "discovered: no items",
            raw("/agent/v1/discovered", "{}"),
            400,
            "items",
        ),
        bad(
            "discovered: source neither file: nor tls:",
            found(json!({ "source": "gopher://x" })),
            400,
            "source",
        ),
        bad(
            "discovered: fingerprint not hex",
            found(json!({ "fingerprint_sha256": "zz".repeat(32) })),
            400,
            "fingerprint_sha256",
        ),
        bad(
            "discovered: serial not hex",
            found(json!({ "serial": "xyz" })),
            400,
            "serial",
        ),
        bad(
            "discovered: not_after not a date",
            found(json!({ "not_after": "soon" })),
            400,
            "not_after",
        ),
        bad(
            "discovered: garbage PEM",
            found(json!({ "certificate_pem": "garbage" })),
            400,
            "certificate_pem",
        ),
        bad(
            "discovered: a NUL in a name",
            found(json!({ "names": ["a\u{0}b.example.com"] })),
            400,
            "names",
        ),
    ]);
    assert_eq!(
        snapshot(&api, &agent_id),
        before,
        "bad agent input changed something"
    );
    let whoami: Value = me
        .get(format!("{agent}/agent/v1/whoami"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(whoami["status"], "active", "{whoami}");

    // --- the import endpoint (console listener)
    let import = |body: Value| {
        api.http
            .post(format!("{}/console/api/v1/certificates/import", api.base))
            .bearer_auth(&api.token)
            .json(&body)
    };
    let (ok, out) = sh(
        dir,
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "imp.key",
            "-out",
            "imp.pem",
            "-days",
            "30",
            "-subj",
            "/CN=imp.example.com",
            "-addext",
            "subjectAltName=DNS:imp.example.com",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    assert!(ok, "{out}");
    let imp = std::fs::read_to_string(dir.join("imp.pem")).unwrap();
    let (other_key, _) = key_and_csr(dir, "stranger");
    let (ok, out) = sh(
        dir,
        &[
            "openssl",
            "pkcs12",
            "-export",
            "-in",
            "imp.pem",
            "-inkey",
            "imp.key",
            "-out",
            "imp.p12",
            "-passout",
            "pass:right",
        ],
    );
    assert!(ok, "{out}");
    let p12 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        std::fs::read(dir.join("imp.p12")).unwrap(),
    );
    walk(vec![
        bad(
            "import: neither pem nor pkcs12",
            import(json!({ "team": "payments" })),
            400,
            "pem",
        ),
        bad(
            "import: both",
            import(json!({ "team": "payments", "pem": imp, "pkcs12_base64": p12 })),
            400,
            "pem",
        ),
        bad(
            "import: garbage pem",
            import(json!({ "team": "payments", "pem": "garbage" })),
            400,
            "pem",
        ),
        bad(
            "import: a CSR where the certificate belongs",
            import(json!({ "team": "payments", "pem": testdata("p256.csr") })),
            400,
            "pem",
        ),
        bad(
            "import: the key of another certificate",
            import(json!({ "team": "payments", "pem": format!("{imp}{other_key}") })),
            422,
            "pem",
        ),
        bad(
            "import: pkcs12 not base64",
            import(json!({ "team": "payments", "pkcs12_base64": "not base64!" })),
            400,
            "pkcs12_base64",
        ),
        bad(
            "import: pkcs12 with the wrong password",
            import(json!({ "team": "payments", "pkcs12_base64": p12, "password": "wrong" })),
            400,
            "pkcs12_base64",
        ),
        bad(
            "import: bad team",
            import(json!({ "team": "Pay ments", "pem": imp })),
            400,
            "team",
        ),
        bad(
            "import: bad label",
            import(json!({ "team": "payments", "pem": imp, "labels": { "-x": "y" } })),
            400,
            "labels",
        ),
        bad(
            "import: a foreign certificate to manage without an issuer",
            import(json!({ "team": "payments", "pem": imp, "manage": true })),
            400,
            "issuer",
        ),
        bad(
            "import: unknown field",
            import(json!({ "team": "payments", "pem": imp, "key": "x" })),
            400,
            "key",
        ),
    ]);
    assert_eq!(
        snapshot(&api, &agent_id),
        before,
        "a bad import changed something"
    );
    stop(server);
}

/// A UUID nothing has.
fn uuid_v4() -> String {
    "00000000-0000-4000-8000-00000000abcd".to_owned()
}
