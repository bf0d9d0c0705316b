//! Every error response of every listener is an RFC 9457 problem document
//! (`application/problem+json` with `type`, `title`, `status`, `detail`):
//! a table walks the real `certflow serve` over its sockets — the console
//! listener (console API, login routes, public CA endpoints, ACME HTTP-01,
//! probes), the agent listener (TLS, with and without an identity) and the
//! metrics listener — with an unknown route, a wrong method, a body over the
//! limit, malformed JSON, a wrong content type, a bad path parameter and a
//! bad query, and checks the status, the media type and that the document
//! names what was wrong. The one documented exception, the console's HTML
//! pages answering browsers, is checked too.

use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{ACCEPT, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Value, json};

use crate::support::{Api, key_and_csr, require, start};

/// The metrics bearer token of the server under test.
const METRICS_TOKEN: &str = "metrics-token-for-the-problem-table";

/// One row of the table: a request and the problem it must get.
struct Case {
    /// Which listener and what is wrong, for the failure message.
    what: &'static str,
    request: RequestBuilder,
    status: u16,
    /// The problem type's last path segment.
    code: &'static str,
    /// A word the title or detail must contain (lower case).
    names: &'static str,
}

fn case(
    what: &'static str,
    request: RequestBuilder,
    status: u16,
    code: &'static str,
    names: &'static str,
) -> Case {
    Case {
        what,
        request,
        status,
        code,
        names,
    }
}

/// Sends every case and checks its answer; all failures are reported at once.
fn walk(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let r = c
            .request
            .send()
            .unwrap_or_else(|e| panic!("{}: {e:?}", c.what));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = r.text().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let words = format!("{} {}", body["title"], body["detail"]).to_lowercase();
        let ok = status == c.status
            && content_type == "application/problem+json"
            && body["type"] == format!("https://certflow.dev/problems/{}", c.code)
            && body["status"] == c.status
            && body["title"].as_str().is_some_and(|t| !t.is_empty())
            && body["detail"].as_str().is_some_and(|d| !d.is_empty())
            && words.contains(c.names);
        let allow_ok = status != 405 || headers.contains_key(ALLOW);
        let auth_ok = status != 401 || headers.contains_key(WWW_AUTHENTICATE);
        if !(ok && allow_ok && auth_ok) {
            failures.push(format!(
                "{}: want {} {} naming {:?}; got {status} {content_type:?} {text}",
                c.what, c.status, c.code, c.names
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A client that opens a connection per request: a server that answers an
/// oversized body without reading it closes that connection.
fn http() -> Client {
    Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn every_error_of_every_listener_is_a_problem_document() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let agent_listen = format!("127.0.0.1:{}", certflow_testkit::free_port());
    let server = start(
        &dir.join("data"),
        &[
            ("CERTFLOW_AGENT__LISTEN", agent_listen.as_str()),
            ("CERTFLOW_METRICS__BEARER_TOKEN", METRICS_TOKEN),
            // The login routes exist only with [auth.oidc]; nothing here reaches the provider.
            ("CERTFLOW_AUTH__OIDC__ISSUER", "http://127.0.0.1:9/op"),
            ("CERTFLOW_AUTH__OIDC__CLIENT_ID", "console"),
            ("CERTFLOW_AUTH__OIDC__CLIENT_SECRET", "console-secret"),
            (
                "CERTFLOW_AUTH__OIDC__REDIRECT_URI",
                "http://127.0.0.1:9/console/callback",
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("server did not start: {e}"));
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let console = server.url.clone();
    let metrics = server.metrics_url.clone().expect("a metrics listener");
    let metrics_base = metrics.trim_end_matches("/metrics").to_owned();
    let agent = format!("https://{agent_listen}");
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let issuer = issuers[0]["id"].as_str().unwrap().to_owned();
    let ca_pem = issuers[0]["issuing_cert_pem"].as_str().unwrap().to_owned();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();

    let h = http();
    let bearer = |r: RequestBuilder| r.bearer_auth(&token);
    let big = vec![b'x'; 70 * 1024];
    let big_json = serde_json::to_vec(&json!({ "team": "x".repeat(70 * 1024) })).unwrap();

    // --- the console listener
    let mut cases = vec![
        case(
            "console: unknown route",
            h.get(format!("{console}/no/such/thing")),
            404,
            "not-found",
            "/no/such/thing",
        ),
        case(
            "console API: unknown route",
            bearer(h.get(format!("{console}/console/api/v1/nothing-here"))),
            404,
            "not-found",
            "/console/api/v1/nothing-here",
        ),
        case(
            "console page path, JSON client: unknown route",
            h.get(format!("{console}/console/no-such-page"))
                .header(ACCEPT, "application/json"),
            404,
            "not-found",
            "/console/no-such-page",
        ),
        case(
            "PKI: unknown route",
            h.get(format!("{console}/pki/{issuer}/nothing")),
            404,
            "not-found",
            "nothing",
        ),
        case(
            "ACME HTTP-01: unknown token",
            h.get(format!("{console}/.well-known/acme-challenge/unknown")),
            404,
            "not-found",
            "not found",
        ),
        case(
            "probe: wrong method",
            h.delete(format!("{console}/healthz")),
            405,
            "method-not-allowed",
            "delete",
        ),
        case(
            "console API: wrong method",
            bearer(h.put(format!("{console}/console/api/v1/certificates"))),
            405,
            "method-not-allowed",
            "put",
        ),
        case(
            "PKI: wrong method",
            h.post(format!("{console}/pki/{issuer}/ca.crt")),
            405,
            "method-not-allowed",
            "post",
        ),
        case(
            "login routes: wrong method",
            h.put(format!("{console}/console/logout")),
            405,
            "method-not-allowed",
            "put",
        ),
        case(
            "OCSP: body over the limit (the probe's 70 KB POST)",
            h.post(format!("{console}/pki/{issuer}/ocsp"))
                .header(CONTENT_TYPE, "application/ocsp-request")
                .body(big.clone()),
            413,
            "body-too-large",
            "65536",
        ),
        case(
            "console API: body over the limit",
            bearer(h.post(format!("{console}/console/api/v1/certificates")))
                .header(CONTENT_TYPE, "application/json")
                .body(big_json.clone()),
            413,
            "body-too-large",
            "65536",
        ),
        case(
            "login routes: body over the limit",
            h.post(format!("{console}/console/sign-out"))
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(big.clone()),
            413,
            "body-too-large",
            "65536",
        ),
        case(
            "console API: malformed JSON",
            bearer(h.post(format!("{console}/console/api/v1/certificates")))
                .header(CONTENT_TYPE, "application/json")
                .body("{\"team\": "),
            400,
            "malformed-body",
            "json",
        ),
        case(
            "console API: wrong content type",
            bearer(h.post(format!("{console}/console/api/v1/certificates")))
                .header(CONTENT_TYPE, "text/plain")
                .body("{}"),
            415,
            "unsupported-media-type",
            "application/json",
        ),
        case(
            "console API: bad path parameter",
            bearer(h.get(format!("{console}/console/api/v1/certificates/not-a-uuid"))),
            400,
            "invalid-path",
            "uuid",
        ),
        case(
            "PKI: bad path parameter",
            h.get(format!("{console}/pki/not-a-uuid/ca.crt")),
            400,
            "invalid-path",
            "uuid",
        ),
        case(
            "console API: bad query",
            bearer(h.get(format!("{console}/console/api/v1/audit?limit=many"))),
            400,
            "invalid-query",
            "limit",
        ),
        case(
            "console API: no credentials",
            h.get(format!("{console}/console/api/v1/certificates")),
            401,
            "unauthorized",
            "",
        ),
        // /metrics on the console listener only with the metrics token.
        case(
            "console: /metrics without the metrics token",
            h.get(format!("{console}/metrics")),
            401,
            "unauthorized",
            "metrics",
        ),
        case(
            "console: /metrics with another token (the admin's)",
            bearer(h.get(format!("{console}/metrics"))),
            401,
            "unauthorized",
            "metrics",
        ),
    ];

    // --- the metrics listener: it serves GET /metrics and nothing else.
    cases.extend([
        case(
            "metrics: unknown route",
            h.get(format!("{metrics_base}/healthz")),
            404,
            "not-found",
            "/healthz",
        ),
        case(
            "metrics: wrong method (a body is never read there)",
            h.post(&metrics).body(big.clone()),
            405,
            "method-not-allowed",
            "post",
        ),
        case(
            "metrics: no token",
            h.get(&metrics),
            401,
            "unauthorized",
            "metrics",
        ),
        case(
            "metrics: wrong token",
            h.get(&metrics).bearer_auth("not-the-metrics-token"),
            401,
            "unauthorized",
            "metrics",
        ),
    ]);

    // --- the agent listener, first without an identity (enrolment only).
    let anonymous = Client::builder()
        .no_proxy()
        .tls_certs_only([ca.clone()])
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    cases.extend([
        case(
            "agent: unknown route",
            anonymous.get(format!("{agent}/agent/v1/nothing")),
            404,
            "not-found",
            "/agent/v1/nothing",
        ),
        case(
            "agent: wrong method",
            anonymous.get(format!("{agent}/agent/v1/enroll")),
            405,
            "method-not-allowed",
            "get",
        ),
        case(
            "agent: body over the limit",
            anonymous
                .post(format!("{agent}/agent/v1/enroll"))
                .header(CONTENT_TYPE, "application/json")
                .body(big_json.clone()),
            413,
            "body-too-large",
            "65536",
        ),
        case(
            "agent: malformed JSON",
            anonymous
                .post(format!("{agent}/agent/v1/enroll"))
                .header(CONTENT_TYPE, "application/json")
                .body("{\"csr\": "),
            400,
            "malformed-body",
            "json",
        ),
        case(
            "agent: wrong content type",
            anonymous
                .post(format!("{agent}/agent/v1/enroll"))
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body("csr=x"),
            415,
            "unsupported-media-type",
            "application/json",
        ),
        case(
            "agent: no identity",
            anonymous.get(format!("{agent}/agent/v1/whoami")),
            401,
            "unauthorized",
            "",
        ),
    ]);
    walk(cases);

    // --- the agent listener with an identity: path and query errors.
    let (status, jt) = api.post(
        "/console/api/v1/agents/join-tokens",
        json!({ "name": "problems", "teams": ["payments"], "ttl_minutes": 10 }),
    );
    assert_eq!(status, 201, "{jt}");
    let (key, csr) = key_and_csr(dir, "agent");
    let enrolled: Value = anonymous
        .post(format!("{agent}/agent/v1/enroll"))
        .bearer_auth(jt["token"].as_str().unwrap())
        .json(&json!({ "csr": csr }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let cert = enrolled["certificate_pem"].as_str().unwrap();
    let identified = Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .pool_max_idle_per_host(0)
        .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    walk(vec![
        case(
            "agent: bad path parameter",
            identified.get(format!("{agent}/agent/v1/certificates/not-a-uuid")),
            400,
            "invalid-path",
            "uuid",
        ),
        case(
            "agent: bad query",
            identified.get(format!("{agent}/agent/v1/assignments?wait=soon")),
            400,
            "invalid-request",
            "wait",
        ),
        case(
            "agent: wrong method, identified",
            identified.delete(format!("{agent}/agent/v1/assignments")),
            405,
            "method-not-allowed",
            "delete",
        ),
        // A route with its own, larger limit names that one, not the listener's.
        case(
            "agent: discovery report over its 8 MiB limit",
            identified
                .post(format!("{agent}/agent/v1/discovered"))
                .header(CONTENT_TYPE, "application/json")
                .body(vec![b' '; 8 * 1024 * 1024 + 1]),
            413,
            "body-too-large",
            "8388608",
        ),
    ]);

    // What works, works: /metrics with the token on both listeners.
    for url in [metrics.clone(), format!("{console}/metrics")] {
        let r = h.get(&url).bearer_auth(METRICS_TOKEN).send().unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert!(
            r.text()
                .unwrap()
                .contains("# TYPE certflow_certificates gauge"),
            "{url}"
        );
    }
    // The documented exception: a browser asking for a console page that
    // does not exist gets the console's HTML page.
    let r = h
        .get(format!("{console}/console/no-such-page"))
        .header(ACCEPT, "text/html,application/xhtml+xml")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        r.headers()
    );
}

#[test]
fn metrics_are_not_on_the_console_listener_without_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(&tmp.path().join("data"), &[]).expect("certflow starts");
    let h = http();
    walk(vec![case(
        "console: /metrics with no metrics token configured",
        h.get(format!("{}/metrics", server.url)),
        404,
        "not-found",
        "/metrics",
    )]);
    // The metrics listener (loopback) serves it without credentials.
    let r = h
        .get(server.metrics_url.as_deref().unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .unwrap()
            .contains("# TYPE certflow_certificates gauge")
    );
}
