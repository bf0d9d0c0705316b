//! Router tests: the console API driven without a socket (`oneshot`), on the
//! real SQLite store, local blob store and internal CA. The bad-input table
//! lives here: every row must give a 4xx problem document naming the field,
//! and nothing may be stored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use certflow_blob::ObjectBlobStore;
use certflow_core::ports::{BlobStore, MetadataStore, SessionStore as _};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::{CaSettings, Services};
use certflow_store::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth;
use crate::config::ConsoleConfig;
use crate::router::app;
use crate::state::AppState;
use auth::BearerAuthenticator as _;
use certflow_core::access::{Principal, PrincipalKind, Role};

#[path = "import_tests.rs"]
mod import;

#[path = "discovery_tests.rs"]
mod discovery;

#[path = "acme_eab_tests.rs"]
mod acme_eab;

#[path = "destinations_tests.rs"]
mod destinations;

#[path = "input_tests.rs"]
mod input;

#[path = "../web/pages_tests.rs"]
mod pages;

#[path = "route_table_tests.rs"]
mod route_table;

struct Harness {
    app: Router,
    token: String,
    store: Arc<SqliteStore>,
    blobs: Arc<ObjectBlobStore>,
    /// Console sessions, with the login routes merged into `app`.
    sessions: Option<crate::session::Sessions>,
    /// The deployment use cases and the assignment cache behind the router.
    deploy: crate::deploy_cache::DeployState,
    /// The agent use cases behind `/agents`.
    agents: certflow_services::agents::Agents,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(Vec::new()).await
}

async fn harness_with(authenticators: Vec<Arc<dyn auth::BearerAuthenticator>>) -> Harness {
    harness_full(authenticators, unlimited(), None).await
}

/// Console limits no test here reaches, except the ones about limits.
fn unlimited() -> ConsoleConfig {
    ConsoleConfig {
        rate_limit_per_sec: 1e6,
        rate_limit_burst: 1e6,
        login_rate_limit_per_min: 1e6,
        login_rate_limit_burst: 1e6,
        trusted_proxies: Vec::new(),
    }
}

/// A harness with `console` limits and, given `session` settings, console
/// sessions and the login routes (for a provider at an address that does
/// not answer: the flows tested here end before talking to it).
async fn harness_full(
    authenticators: Vec<Arc<dyn auth::BearerAuthenticator>>,
    console: ConsoleConfig,
    session: Option<crate::session::SessionSettings>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("certflow.db"))
            .await
            .unwrap(),
    );
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        vec![],
    )));
    let services = Services::new(
        store.clone(),
        blobs.clone(),
        sealer,
        Some("http://127.0.0.1:8080".into()),
    )
    .with_notifications(store.clone())
    .with_destinations(store.clone(), None, Default::default());
    services
        .ensure_ca(
            &CaSettings {
                name: "test".into(),
                key_type: certflow_core::model::KeyType::EcdsaP256,
                root_validity_days: 3650,
                intermediate_validity_days: 1825,
            },
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let token = auth::ensure_bootstrap_token(store.as_ref())
        .await
        .unwrap()
        .unwrap();
    let bootstrap_hash = std::sync::Arc::new(std::sync::RwLock::new(None));
    auth::refresh_bootstrap_hash(store.as_ref(), &bootstrap_hash)
        .await
        .unwrap();
    let agents = certflow_services::agents::Agents::new(
        &services,
        store.clone(),
        certflow_services::agents::AgentSettings::default(),
    );
    agents
        .ensure_ca(time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let limits = Arc::new(crate::rate_limit::ConsoleLimits::new(&console).unwrap());
    let sessions = session
        .map(|settings| crate::session::Sessions::new(store.clone(), store.clone(), settings));
    let deploy = crate::deploy_cache::DeployState::new(
        certflow_services::deployments::Deployments::new(
            &services,
            store.clone(),
            store.clone(),
            certflow_services::deployments::DeploymentSettings::default(),
        )
        .with_discovery(store.clone()),
        certflow_store::ChangeFeed::local(),
    );
    let state = AppState::from(crate::state::AppShared {
        services: services.clone(),
        bootstrap_hash,
        renewal: Arc::new(crate::state::RenewalView {
            queue: Arc::new(store.renewal_queue(Default::default())),
            ledger: store.clone(),
            notifications: store.clone(),
        }),
        authenticators: Arc::new(authenticators),
        sessions: sessions.clone(),
        sign_in_provider: sessions.as_ref().map(|_| "Example SSO".to_owned()),
        limits: limits.clone(),
        deploy: deploy.clone(),
        agents: agents.clone(),
        acme: Some(certflow_services::acme::AcmeService::new(
            &services,
            store.clone(),
            certflow_services::acme::AcmeSettings::default(),
        )),
    });
    // `/metrics` as the metrics listener serves it (no token), beside the console's routes.
    let mut router = app(state.clone()).merge(crate::ops::metrics_router(None).with_state(state));
    if let Some(sessions) = &sessions {
        let oidc: crate::config::OidcConfig = serde_json::from_value(json!({
            "issuer": "http://127.0.0.1:9/unreachable",
            "client_id": "console",
            "client_secret": "console-secret",
            "redirect_uri": "https://certflow.test/console/callback",
        }))
        .unwrap();
        let console = crate::web::login::ConsoleAuth::new(&oidc, sessions.clone(), limits).unwrap();
        router = router.merge(crate::web::login::router(console));
    }
    Harness {
        app: router,
        deploy,
        token,
        store,
        blobs,
        sessions,
        agents,
        _dir: dir,
    }
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, content_type);
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, bytes.to_vec())
    }

    async fn json(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (status, _, bytes) = self
            .call(
                method,
                uri,
                body.map(|b| serde_json::to_vec(&b).unwrap()),
                "application/json",
            )
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A JSON request carrying each of `keys` as an `Idempotency-Key` header
    /// (raw bytes, so that invalid values can be sent too).
    async fn keyed(
        &self,
        method: &str,
        uri: &str,
        keys: &[&[u8]],
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json");
        for key in keys {
            req = req.header(
                "Idempotency-Key",
                axum::http::HeaderValue::from_bytes(key).unwrap(),
            );
        }
        let req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn certificate_count(&self) -> u64 {
        self.store
            .list_certificates(&certflow_core::model::CertificateQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .total
    }
}

fn fixture(name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "testdata",
        "csr",
        name,
    ]
    .iter()
    .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn create(names: &[&str]) -> Value {
    json!({ "team": "payments", "names": names })
}

/// A row of the bad-input table: request body, expected status, field named, words in the reason.
struct Row {
    what: &'static str,
    body: Value,
    status: StatusCode,
    field: &'static str,
    reason: &'static str,
}

fn bad_input_rows() -> Vec<Row> {
    let with_csr =
        |csr: String| json!({ "team": "payments", "names": ["a.example.com"], "csr": csr });
    let many: Vec<String> = (0..101).map(|i| format!("h{i}.example.com")).collect();
    vec![
        Row { what: "malformed PEM", body: with_csr("-----BEGIN CERTIFICATE REQUEST-----\n!!notbase64!!\n-----END CERTIFICATE REQUEST-----\n".into()), status: StatusCode::BAD_REQUEST, field: "csr", reason: "" },
        Row { what: "garbage instead of a CSR", body: with_csr(fixture("garbage.pem")), status: StatusCode::BAD_REQUEST, field: "csr", reason: "" },
        Row { what: "truncated DER", body: with_csr(fixture("truncated.csr")), status: StatusCode::BAD_REQUEST, field: "csr", reason: "" },
        Row { what: "oversized CSR", body: with_csr(format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", "A".repeat(20_000))), status: StatusCode::BAD_REQUEST, field: "csr", reason: "bytes" },
        Row { what: "bad CSR signature", body: with_csr(fixture("bad-signature.csr")), status: StatusCode::BAD_REQUEST, field: "csr", reason: "signature" },
        Row { what: "RSA 1024", body: with_csr(fixture("rsa1024.csr")), status: StatusCode::BAD_REQUEST, field: "csr", reason: "1024" },
        Row { what: "RSA exponent 3", body: with_csr(fixture("rsa-e3.csr")), status: StatusCode::BAD_REQUEST, field: "csr", reason: "exponent" },
        Row { what: "secp256k1", body: with_csr(fixture("secp256k1.csr")), status: StatusCode::BAD_REQUEST, field: "csr", reason: "curve" },
        Row { what: "P-521", body: with_csr(fixture("p521.csr")), status: StatusCode::BAD_REQUEST, field: "csr", reason: "curve" },
        Row { what: "NUL in a name", body: create(&["a\u{0}b.example.com"]), status: StatusCode::BAD_REQUEST, field: "names[0]", reason: "NUL" },
        Row { what: "invalid IDN A-label", body: create(&["xn--zz.example.com"]), status: StatusCode::BAD_REQUEST, field: "names[0]", reason: "IDN" },
        Row { what: "invalid IDN U-label", body: create(&["\u{0661}\u{06F1}.example"]), status: StatusCode::BAD_REQUEST, field: "names[0]", reason: "internationalised" },
        Row { what: "non-LDH label", body: create(&["under_score.example.com"]), status: StatusCode::BAD_REQUEST, field: "names[0]", reason: "LDH" },
        Row { what: "wildcard not leftmost", body: create(&["api.*.example.com"]), status: StatusCode::BAD_REQUEST, field: "names[0]", reason: "wildcard" },
        Row { what: "partial wildcard", body: create(&["a*.example.com"]), status: StatusCode::BAD_REQUEST, field: "names[0]", reason: "wildcard" },
        Row { what: "more than 100 SANs", body: json!({ "team": "payments", "names": many }), status: StatusCode::BAD_REQUEST, field: "names", reason: "at most 100" },
        Row { what: "no names at all", body: create(&[]), status: StatusCode::BAD_REQUEST, field: "names", reason: "at least one" },
        Row { what: "validity beyond the profile", body: json!({ "team": "payments", "names": ["a.example.com"], "validity_days": 400 }), status: StatusCode::BAD_REQUEST, field: "validity_days", reason: "199" },
        Row { what: "zero validity", body: json!({ "team": "payments", "names": ["a.example.com"], "validity_days": 0 }), status: StatusCode::BAD_REQUEST, field: "validity_days", reason: "range" },
        Row { what: "unknown key type", body: json!({ "team": "payments", "names": ["a.example.com"], "key_type": "dsa-1024" }), status: StatusCode::BAD_REQUEST, field: "key_type", reason: "ecdsa-p256" },
        Row { what: "key type contradicts CSR", body: json!({ "team": "payments", "names": ["a.example.com"], "key_type": "rsa-2048", "csr": fixture("p256.csr") }), status: StatusCode::BAD_REQUEST, field: "key_type", reason: "CSR" },
        Row { what: "unknown profile", body: json!({ "team": "payments", "names": ["a.example.com"], "profile": "code-signing" }), status: StatusCode::BAD_REQUEST, field: "profile", reason: "tls-server" },
        Row { what: "bad team", body: json!({ "team": "Pay ments", "names": ["a.example.com"] }), status: StatusCode::BAD_REQUEST, field: "team", reason: "a-z" },
        Row { what: "bad label key", body: json!({ "team": "payments", "names": ["a.example.com"], "labels": { "-x": "y" } }), status: StatusCode::BAD_REQUEST, field: "labels.-x", reason: "key" },
        Row { what: "unknown issuer", body: json!({ "team": "payments", "names": ["a.example.com"], "issuer_id": "00000000-0000-0000-0000-000000000000" }), status: StatusCode::BAD_REQUEST, field: "issuer_id", reason: "no issuer" },
    ]
}

fn problem_fields(v: &Value) -> Vec<(String, String)> {
    v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["field"].as_str().unwrap_or("").to_owned(),
                        e["reason"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn bad_input_table_gives_problem_documents_and_stores_nothing() {
    let h = harness().await;
    let blobs_before = h.blobs.list("").await.unwrap().len();
    for row in bad_input_rows() {
        let (status, headers, bytes) = h
            .call(
                "POST",
                "/console/api/v1/certificates",
                Some(serde_json::to_vec(&row.body).unwrap()),
                "application/json",
            )
            .await;
        assert_eq!(
            status,
            row.status,
            "{}: {}",
            row.what,
            String::from_utf8_lossy(&bytes)
        );
        let ct = headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str());
        assert_eq!(ct, Some("application/problem+json"), "{}", row.what);
        let p: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(p["status"], row.status.as_u16(), "{}", row.what);
        assert_eq!(
            p["type"], "https://certflow.dev/problems/invalid-request",
            "{}",
            row.what
        );
        let fields = problem_fields(&p);
        assert!(
            fields
                .iter()
                .any(|(f, r)| f == row.field && r.contains(row.reason)),
            "{}: expected field {} with '{}', got {fields:?}",
            row.what,
            row.field,
            row.reason
        );
    }
    assert_eq!(
        h.certificate_count().await,
        0,
        "a rejected request stored a certificate"
    );
    assert_eq!(
        h.blobs.list("").await.unwrap().len(),
        blobs_before,
        "a rejected request wrote a blob"
    );
    let audit = h
        .json("GET", "/console/api/v1/audit?action=certificate.", None)
        .await
        .1;
    assert_eq!(audit["total"], 0);
}

#[tokio::test]
async fn transport_level_bad_input() {
    let h = harness().await;
    // Body over 64 KiB.
    let big = json!({ "team": "payments", "names": ["a.example.com"], "name": "x".repeat(70_000) });
    let (status, headers, bytes) = h
        .call(
            "POST",
            "/console/api/v1/certificates",
            Some(serde_json::to_vec(&big).unwrap()),
            "application/json",
        )
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/problem+json")
    );
    // Not JSON, wrong media type, unknown field, wrong type.
    let cases: [(&[u8], &str, StatusCode, &str); 4] = [
        (
            b"{not json",
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed-body",
        ),
        (
            b"{}",
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            br#"{"team":"a","names":["a.example.com"],"colour":"red"}"#,
            "application/json",
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            br#"{"team":"a","names":"a.example.com"}"#,
            "application/json",
            StatusCode::BAD_REQUEST,
            "names",
        ),
    ];
    for (body, ct, want, needle) in cases {
        let (status, _, bytes) = h
            .call(
                "POST",
                "/console/api/v1/certificates",
                Some(body.to_vec()),
                ct,
            )
            .await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, want, "{text}");
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    // Bad path and query parameters.
    let (status, p) = h
        .json("GET", "/console/api/v1/certificates/not-a-uuid", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(p["type"], "https://certflow.dev/problems/invalid-path");
    for (q, field) in [
        ("status=lost", "status"),
        ("limit=0", "limit"),
        ("sort=colour", "sort"),
        ("label=novalue", "label"),
        ("issuer_id=letsencrypt", "issuer_id"),
        ("bogus=1", "bogus"),
    ] {
        let (status, p) = h
            .json("GET", &format!("/console/api/v1/certificates?{q}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(problem_fields(&p)[0].0, field, "{q}");
    }
    assert_eq!(h.certificate_count().await, 0);
}

#[tokio::test]
async fn authentication_is_required_and_errors_are_problems() {
    let h = harness().await;
    for auth in [
        None,
        Some("Bearer cfb_wrong"),
        Some("Basic YWRtaW46YWRtaW4="),
    ] {
        let mut req = Request::builder().uri("/console/api/v1/certificates");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = h
            .app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
    let (status, p) = h.json("GET", "/console/api/v1/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(p["type"], "https://certflow.dev/problems/not-found");
    let (status, _) = h
        .json(
            "GET",
            "/console/api/v1/certificates/0195f1c8-0000-7000-8000-000000000000",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Health and the OpenAPI document are public.
    let resp = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/readyz")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/console/api/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/certificates",
        "/certificates/{id}",
        "/certificates/{id}/renew",
        "/certificates/{id}/revoke",
        "/certificates/{id}/archive",
        "/certificates/{id}/download",
        "/certificates/{id}/pkcs12",
        "/issuers",
        "/issuers/import",
        "/audit",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
}

#[tokio::test]
async fn lifecycle_create_list_renew_revoke_archive_download() {
    let h = harness().await;
    let (status, created) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(json!({ "team": "payments", "names": ["API.example.com", "10.0.0.7"], "labels": { "env": "prod" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["names"], json!(["api.example.com", "10.0.0.7"]));
    assert_eq!(created["key_source"], "server");
    assert_eq!(created["versions"][0]["has_private_key"], true);
    let serial1 = created["versions"][0]["serial"]
        .as_str()
        .unwrap()
        .to_owned();

    // From a CSR: the key stays with the requester.
    let (status, from_csr) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(json!({ "team": "web", "csr": fixture("ca-true.csr") })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{from_csr}");
    assert_eq!(from_csr["key_source"], "csr");
    assert_eq!(from_csr["versions"][0]["has_private_key"], false);
    let csr_id = from_csr["id"].as_str().unwrap().to_owned();
    let (status, p) = h
        .json(
            "GET",
            &format!("/console/api/v1/certificates/{csr_id}/download?format=key"),
            None,
        )
        .await;
    // The certificate is there; certflow never had its key: 409, said plainly.
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(
        p["detail"],
        "certflow does not hold the private key of version 1: it was issued for a \
         certificate signing request (or imported without its key), so only the requester has it"
    );

    // Same name in the same team: conflict, nothing stored.
    let (status, p) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(json!({ "team": "payments", "names": ["api.example.com"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(h.certificate_count().await, 2);

    // List with filters.
    let (_, page) = h
        .json(
            "GET",
            "/console/api/v1/certificates?team=payments&label=env=prod&search=api",
            None,
        )
        .await;
    assert_eq!(page["total"], 1);
    let (_, page) = h
        .json("GET", "/console/api/v1/certificates?label=env=dev", None)
        .await;
    assert_eq!(page["total"], 0);
    let (_, page) = h
        .json(
            "GET",
            "/console/api/v1/certificates?expiring_within_days=100&sort=not_after&order=desc",
            None,
        )
        .await;
    assert_eq!(page["total"], 2);
    let (_, issuers) = h.json("GET", "/console/api/v1/issuers", None).await;
    let issuer = issuers[0]["id"].as_str().unwrap().to_owned();
    let (_, page) = h
        .json(
            "GET",
            &format!("/console/api/v1/certificates?issuer_id={issuer}"),
            None,
        )
        .await;
    assert_eq!(page["total"], 2);
    let (_, page) = h
        .json(
            "GET",
            &format!(
                "/console/api/v1/certificates?issuer_id={}",
                uuid::Uuid::now_v7()
            ),
            None,
        )
        .await;
    assert_eq!(page["total"], 0);

    // Renew: a new version with a new serial; the old one is superseded.
    let (status, renewed) = h
        .json(
            "POST",
            &format!("/console/api/v1/certificates/{id}/renew"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["current_version"], 2);
    assert_eq!(renewed["versions"][1]["status"], "superseded");
    assert_ne!(renewed["versions"][0]["serial"], serial1);

    // Downloads.
    let (status, _, pem) = h
        .call(
            "GET",
            &format!("/console/api/v1/certificates/{id}/download?format=fullchain"),
            None,
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8(pem)
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        3
    );
    let (status, headers, key) = h
        .call(
            "GET",
            &format!("/console/api/v1/certificates/{id}/download?format=key"),
            None,
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8(key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "cache-control" && v == "no-store")
    );
    let (status, p) = h
        .json(
            "POST",
            &format!("/console/api/v1/certificates/{id}/pkcs12"),
            Some(json!({ "password": "short" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_fields(&p)[0].0, "password");

    // Revoke: bad reason refused, good reason applied; the CRL lists it.
    let (status, p) = h
        .json(
            "POST",
            &format!("/console/api/v1/certificates/{id}/revoke"),
            Some(json!({ "reason": "removeFromCRL" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_fields(&p)[0].0, "reason");
    let (status, revoked) = h
        .json(
            "POST",
            &format!("/console/api/v1/certificates/{id}/revoke"),
            Some(json!({ "reason": "keyCompromise" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["versions"][0]["revocation_reason"], "keyCompromise");
    let (status, _) = h
        .json(
            "POST",
            &format!("/console/api/v1/certificates/{id}/revoke"),
            Some(json!({ "reason": "keyCompromise" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Archive, then renewing is refused.
    let (status, archived) = h
        .json(
            "POST",
            &format!("/console/api/v1/certificates/{id}/archive"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(archived["status"], "archived");
    let (status, _) = h
        .json(
            "POST",
            &format!("/console/api/v1/certificates/{id}/renew"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Every step is in the history, with the key download, and no key material anywhere.
    let (_, detail) = h
        .json("GET", &format!("/console/api/v1/certificates/{id}"), None)
        .await;
    let actions: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "certificate.create",
        "certificate.renew",
        "certificate.key.download",
        "certificate.revoke",
        "certificate.archive",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let (_, audit) = h.json("GET", "/console/api/v1/audit?limit=500", None).await;
    let text = audit.to_string();
    assert!(!text.contains("PRIVATE KEY") && !text.contains(&h.token));
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["subject"] == "bootstrap-admin" || e["subject"] == "system")
    );
}

#[tokio::test]
async fn idempotency_key_replays_and_refuses_reuse_with_another_body() {
    let h = harness().await;
    let create = "/console/api/v1/certificates";
    let body = r#"{"team":"payments","names":["idem.example.com"],"labels":{"a":"1","b":"2"}}"#;
    let (status, first) = h.keyed("POST", create, &[b"create-1"], Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    let serial = first["versions"][0]["serial"].as_str().unwrap().to_owned();
    let blobs = h.blobs.list("certificates").await.unwrap();

    // The same request again, spelt differently (order, spacing, a default
    // written out): the same certificate and version, nothing issued.
    let same = r#"{ "labels": {"b":"2","a":"1"}, "names": ["idem.example.com"],
                    "team": "payments", "name": null }"#;
    let (status, replay) = h.keyed("POST", create, &[b"create-1"], Some(same)).await;
    assert_eq!(status, StatusCode::CREATED, "{replay}");
    assert_eq!(replay["id"], id.as_str());
    assert_eq!(replay["versions"].as_array().unwrap().len(), 1);
    assert_eq!(replay["versions"][0]["serial"], serial.as_str());
    assert_eq!(h.certificate_count().await, 1);
    assert_eq!(h.blobs.list("certificates").await.unwrap(), blobs);

    // The key with another body: 422, nothing stored.
    let other = r#"{"team":"payments","names":["other.example.com"]}"#;
    let (status, p) = h.keyed("POST", create, &[b"create-1"], Some(other)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(
        p["type"],
        "https://certflow.dev/problems/idempotency-key-reused"
    );
    assert!(p["detail"].as_str().unwrap().contains("create-1"), "{p}");
    assert_eq!(h.certificate_count().await, 1);
    assert_eq!(h.blobs.list("certificates").await.unwrap(), blobs);

    // Renewal: scoped to the certificate, so the create's key is a new key here.
    let renew = format!("/console/api/v1/certificates/{id}/renew");
    let (status, renewed) = h.keyed("POST", &renew, &[b"create-1"], None).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["current_version"], 2);
    let serial2 = renewed["versions"][0]["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    // An empty body and `{}` are the same request.
    let (status, again) = h.keyed("POST", &renew, &[b"create-1"], Some("{}")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["current_version"], 2);
    assert_eq!(again["versions"].as_array().unwrap().len(), 2);
    assert_eq!(again["versions"][0]["serial"], serial2.as_str());
    // Another body with the key: refused before the CSR is even looked at.
    let with_csr = serde_json::to_string(&json!({ "csr": fixture("p256.csr") })).unwrap();
    let (status, p) = h
        .keyed("POST", &renew, &[b"create-1"], Some(&with_csr))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (_, detail) = h
        .json("GET", &format!("/console/api/v1/certificates/{id}"), None)
        .await;
    assert_eq!(detail["versions"].as_array().unwrap().len(), 2);
    let creates = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "certificate.create" || e["action"] == "certificate.renew")
        .count();
    assert_eq!(creates, 2, "one audit event per issuance: {detail}");

    // Bad headers: 400 naming the header, nothing stored or issued.
    let too_long = vec![b'k'; 256];
    let bad: [(&str, Vec<&[u8]>); 5] = [
        ("empty", vec![b""]),
        ("256 characters", vec![&too_long]),
        ("non-ASCII", vec!["clé".as_bytes()]),
        ("control character", vec![b"a\tb"]),
        ("repeated", vec![b"a", b"b"]),
    ];
    let fresh = r#"{"team":"payments","names":["fresh.example.com"]}"#;
    for (what, keys) in &bad {
        for (uri, body) in [(create, Some(fresh)), (renew.as_str(), None)] {
            let (status, p) = h.keyed("POST", uri, keys, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what} {uri}: {p}");
            assert_eq!(
                p["type"], "https://certflow.dev/problems/invalid-request",
                "{what}"
            );
            assert!(
                problem_fields(&p)
                    .iter()
                    .any(|(field, _)| field == "Idempotency-Key"),
                "{what} {uri}: {p}"
            );
        }
    }
    assert_eq!(h.certificate_count().await, 1);
    let (_, detail) = h
        .json("GET", &format!("/console/api/v1/certificates/{id}"), None)
        .await;
    assert_eq!(detail["versions"].as_array().unwrap().len(), 2);

    // 255 printable characters, space included, are a key.
    let longest = format!("{} {}", "k".repeat(127), "v".repeat(127));
    let (status, p) = h
        .keyed("POST", create, &[longest.as_bytes()], Some(fresh))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
}

/// Principals by token, for the role/route matrix: `role:<role>:<team>`,
/// `agent`, `nobody:<team>`. Authentication itself is tested against real
/// identity providers elsewhere; this isolates the authorisation decisions.
struct FixedPrincipals;

#[async_trait::async_trait]
impl auth::BearerAuthenticator for FixedPrincipals {
    async fn authenticate(&self, token: &str) -> Result<Option<Principal>, String> {
        let parts: Vec<&str> = token.split(':').collect();
        let person = |roles: Vec<Role>, team: &str| Principal {
            subject: token.to_owned(),
            kind: PrincipalKind::Person,
            roles,
            teams: vec![team.to_owned()],
        };
        Ok(match parts.as_slice() {
            ["role", role, team] => Some(person(vec![Role::parse(role).unwrap()], team)),
            ["nobody", team] => Some(person(vec![], team)),
            ["agent"] => Some(Principal {
                subject: "agent-1".into(),
                kind: PrincipalKind::Agent {
                    agent_id: "agent-1".into(),
                },
                roles: vec![],
                teams: vec!["a".into()],
            }),
            _ => None,
        })
    }
}

/// Walks every route of the OpenAPI document with every kind of caller and
/// checks the outcome against the route's declared permission: allowed
/// callers never get 401/403, the others get exactly 403.
#[tokio::test]
async fn role_route_matrix_follows_the_declared_permissions() {
    let h = harness_with(vec![Arc::new(FixedPrincipals)]).await;
    // Resources of team "a", made by the bootstrap admin: a subscription,
    // then a certificate (whose "issued" event makes a delivery).
    let (status, sub) = h
        .json(
            "POST",
            "/console/api/v1/subscriptions",
            Some(json!({ "team": "a", "events": ["issued"], "channel": { "type": "webhook", "url": "https://hooks.example.com/x", "format": "json" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let (status, cert) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(json!({ "team": "a", "names": ["m.example.com"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    let cert_id = cert["id"].as_str().unwrap().to_owned();
    let (_, deliveries) = h
        .json("GET", "/console/api/v1/deliveries?team=a", None)
        .await;
    let delivery_id = deliveries["items"][0]["id"].as_str().unwrap().to_owned();

    // Callers that must be refused go first, so that a destructive call by
    // an allowed caller (archive, unsubscribe) cannot turn their 403 into a 404.
    let callers = [
        "nobody:a",
        "agent",
        "role:viewer:b",
        "role:operator:b",
        "role:viewer:a",
        "role:operator:a",
        "role:admin:z",
    ];
    let openapi: Value = serde_json::from_str(&super::openapi_json()).unwrap();
    let mut checked = 0;
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            let m = axum::http::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let permission = super::access::declared(&m, path)
                .unwrap_or_else(|| panic!("{method} {path} declares no permission"));
            let id = if path.starts_with("/subscriptions/") {
                sub_id.clone()
            } else if path.starts_with("/deliveries/") {
                delivery_id.clone()
            } else if path.starts_with("/certificates/") || path.starts_with("/acme/certificates/")
            {
                cert_id.clone()
            } else {
                uuid::Uuid::now_v7().to_string()
            };
            let uri = format!(
                "/console/api/v1{}",
                path.replace("{id}", &id)
                    .replace("{certificate_id}", &cert_id)
                    .replace("{destination_id}", &uuid::Uuid::now_v7().to_string())
            );
            // Team-scoped listings name the team; the audit trail one certificate.
            let uri = match (m.as_str(), path.as_str()) {
                (
                    "GET",
                    "/certificates" | "/deliveries" | "/subscriptions" | "/compliance"
                    | "/discovered",
                ) => {
                    format!("{uri}?team=a")
                }
                ("GET", "/audit") => format!("{uri}?target=certificate/{cert_id}"),
                _ => uri,
            };
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/certificates") => Some(
                    json!({ "team": "a", "names": [format!("{}.example.com", uuid::Uuid::now_v7().simple())] }),
                ),
                ("post", "/certificates/{id}/revoke") => Some(json!({ "reason": "superseded" })),
                ("post", "/certificates/{id}/destinations") => {
                    Some(json!({ "kind": "aws-acm", "region": "eu-west-1" }))
                }
                ("post", "/discovered/{id}/take-over" | "/acme/eab-keys") => {
                    Some(json!({ "team": "a" }))
                }
                // The team is read from the body before the (unreadable) bundle.
                ("post", "/certificates/import") => Some(json!({ "team": "a", "pem": "garbage" })),
                ("post", "/certificates/{id}/pkcs12") => {
                    Some(json!({ "password": "correct horse battery staple" }))
                }
                ("post", "/subscriptions") => Some(
                    json!({ "team": "a", "events": ["issued"], "channel": { "type": "webhook", "url": "https://hooks.example.com/y", "format": "json" } }),
                ),
                ("post", _) => Some(json!({})),
                _ => None,
            };
            for token in &callers {
                let principal = FixedPrincipals.authenticate(token).await.unwrap().unwrap();
                // The resource's team is "a" wherever a team applies.
                // The EAB key listing takes no team: it lists the caller's own.
                let allowed = principal.can(permission, Some("a"))
                    || ((method.as_str(), path.as_str()) == ("get", "/acme/eab-keys")
                        && principal.can(permission, None));
                let mut req = Request::builder()
                    .method(m.clone())
                    .uri(&uri)
                    .header(header::AUTHORIZATION, format!("Bearer {token}"));
                if body.is_some() {
                    req = req.header(header::CONTENT_TYPE, "application/json");
                }
                let req = req
                    .body(
                        body.as_ref()
                            .map(|b| Body::from(b.to_string()))
                            .unwrap_or_else(Body::empty),
                    )
                    .unwrap();
                let status = h.app.clone().oneshot(req).await.unwrap().status();
                if allowed {
                    assert!(
                        status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                        "{token} {method} {path}: {permission:?} is allowed but got {status}"
                    );
                } else if path == "/acme/eab-keys/{id}" {
                    // No EAB key exists in this harness, so the key is unknown
                    // to everyone (404); routes.toml's table covers the rest.
                    assert!(
                        status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
                        "{token} {method} {path}: {permission:?} is not allowed but got {status}"
                    );
                } else {
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{token} {method} {path}: {permission:?} is not allowed"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 7 * 15,
        "only {checked} route/caller pairs walked"
    );
}

/// A request from `ip` (as the socket layer would attach it).
fn from_ip(method: &str, uri: &str, ip: &str, auth: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let mut req = req.body(Body::empty()).unwrap();
    let addr: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    req
}

/// Status, `Retry-After` and problem `type` of a response.
async fn outcome(app: &Router, req: Request<Body>) -> (StatusCode, Option<u64>, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (
        status,
        retry,
        v["type"].as_str().unwrap_or_default().to_owned(),
    )
}

const RATE_LIMITED: &str = "https://certflow.dev/problems/rate-limited";

#[tokio::test]
async fn console_rate_limits_per_subject_per_ip_and_on_login() {
    let console = ConsoleConfig {
        rate_limit_per_sec: 0.01,
        rate_limit_burst: 3.0,
        login_rate_limit_per_min: 0.5,
        login_rate_limit_burst: 2.0,
        trusted_proxies: vec!["10.0.0.0/8".into()],
    };
    let h = harness_full(
        vec![Arc::new(FixedPrincipals)],
        console,
        Some(crate::session::SessionSettings {
            idle_timeout: time::Duration::minutes(30),
            absolute_timeout: time::Duration::hours(12),
            console_origin: "https://certflow.test".into(),
        }),
    )
    .await;
    let list = "/console/api/v1/certificates?team=a";
    let viewer = Some("Bearer role:viewer:a");

    // One subject: its burst, then 429 with Retry-After and a problem document,
    // wherever its requests come from.
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        let (status, _, _) = outcome(&h.app, from_ip("GET", list, ip, viewer)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let resp = h
        .app
        .clone()
        .oneshot(from_ip("GET", list, "192.0.2.4", viewer))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let retry: u64 = resp.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&retry), "Retry-After {retry}");
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let p: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(p["type"], RATE_LIMITED);
    assert_eq!(p["status"], 429);
    // Another subject from the same address has its own bucket.
    let (status, _, _) = outcome(
        &h.app,
        from_ip("GET", list, "192.0.2.4", Some("Bearer role:operator:a")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Requests that do not authenticate are limited per client address:
    // after the burst a 429 replaces the 401.
    for _ in 0..3 {
        let (status, _, _) = outcome(
            &h.app,
            from_ip("GET", list, "198.51.100.7", Some("Bearer guess")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, retry, kind) = outcome(&h.app, from_ip("GET", list, "198.51.100.7", None)).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED)
    );
    assert!(retry.unwrap() >= 1);
    // ... another address is not affected, nor is an authenticated caller there.
    let (status, _, _) = outcome(&h.app, from_ip("GET", list, "198.51.100.8", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = outcome(
        &h.app,
        from_ip("GET", list, "198.51.100.7", Some("Bearer role:admin:z")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Behind a trusted proxy the forwarded address is the client's.
    let mut req = from_ip("GET", list, "10.0.0.2", None);
    req.headers_mut()
        .insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
    let (status, _, _) = outcome(&h.app, req).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Login and callback share a tighter per-address bucket (2, then 1 every 2 min).
    let (status, _, _) = outcome(
        &h.app,
        from_ip("GET", "/console/login", "203.0.113.5", None),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "the provider is unreachable"
    );
    let (status, _, _) = outcome(
        &h.app,
        from_ip(
            "GET",
            "/console/callback?state=x&code=y",
            "203.0.113.5",
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, retry, kind) = outcome(
        &h.app,
        from_ip(
            "GET",
            "/console/callback?state=x&code=y",
            "203.0.113.5",
            None,
        ),
    )
    .await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, RATE_LIMITED)
    );
    assert!((60..=120).contains(&retry.unwrap()), "{retry:?}");
    let (status, _, _) = outcome(
        &h.app,
        from_ip("GET", "/console/login", "203.0.113.6", None),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "another address");
    // The login bucket is not the API's.
    let (status, _, _) = outcome(&h.app, from_ip("GET", list, "203.0.113.5", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The value of the sample of `/metrics` text whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn metrics_count_requests_by_group_route_template_and_status() {
    let h = harness().await;
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for id in &ids {
        let (status, _) = h
            .json("GET", &format!("/console/api/v1/certificates/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = h.call("GET", &format!("/pki/{id}/ca.crt"), None, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = h.call("GET", &format!("/scan/{id}.php"), None, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = h
            .call("GET", &format!("/console/api/v1/x/{id}"), None, "")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = h.json("GET", "/console/api/v1/certificates", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = h.call("GET", "/healthz", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = h.call("GET", "/metrics", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4"))
    );
    let text = String::from_utf8(body).unwrap();
    crate::telemetry::metrics::check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        text.contains("certflow_jwks_refreshes_total{outcome=\"ok\"} ")
            && text.contains("# TYPE certflow_jwks_refreshes_total counter"),
        "{text}"
    );

    let counter =
        |labels: &str| sample(&text, &format!("certflow_http_requests_total{{{labels}}}"));
    assert_eq!(
        counter(r#"group="console",route="/console/api/v1/certificates/{id}",status="404""#),
        Some(3.0)
    );
    assert_eq!(
        counter(r#"group="console",route="/console/api/v1/certificates",status="200""#),
        Some(1.0)
    );
    assert_eq!(
        counter(r#"group="pki",route="/pki/{issuer}/ca.crt",status="404""#),
        Some(3.0)
    );
    assert_eq!(
        counter(r#"group="probe",route="/healthz",status="200""#),
        Some(1.0)
    );
    // Paths no route matched share one series per group: no label per URL.
    assert_eq!(
        counter(r#"group="other",route="unmatched",status="404""#),
        Some(3.0)
    );
    assert_eq!(
        counter(r#"group="console",route="unmatched",status="404""#),
        Some(3.0)
    );
    for id in &ids {
        assert!(!text.contains(id.as_str()), "raw path in a label:\n{text}");
    }
    // The latency histogram has the same labels.
    let hist = r#"group="console",route="/console/api/v1/certificates/{id}",status="404""#;
    assert_eq!(
        sample(
            &text,
            &format!("certflow_http_request_duration_seconds_bucket{{{hist},le=\"+Inf\"}}")
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("certflow_http_request_duration_seconds_count{{{hist}}}")
        ),
        Some(3.0)
    );
    // The renewal and delivery gauges are still there, in the same document.
    assert!(
        text.contains("# TYPE certflow_renewal_jobs gauge"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE certflow_notification_deliveries gauge"),
        "{text}"
    );
}

/// The audit events of `action` (prefix), newest first, through the API.
async fn audit_of(h: &Harness, action: &str) -> Vec<Value> {
    let (status, page) = h
        .json(
            "GET",
            &format!("/console/api/v1/audit?action={action}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn console_login_refusals_logout_and_expired_sessions_are_audited() {
    let settings = crate::session::SessionSettings {
        idle_timeout: time::Duration::minutes(30),
        absolute_timeout: time::Duration::hours(1),
        console_origin: "https://certflow.test".into(),
    };
    let h = harness_full(Vec::new(), unlimited(), Some(settings)).await;
    let sessions = h.sessions.clone().unwrap();

    // Refused callbacks: who (nobody yet), from where, why; never the code or state.
    for (uri, reason) in [
        ("/console/callback?code=c0de-secret", "missing_state"),
        (
            "/console/callback?code=c0de-secret&state=st4te-secret",
            "unknown_state",
        ),
    ] {
        let (status, _, _) = outcome(&h.app, from_ip("GET", uri, "192.0.2.10", None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        let events = audit_of(&h, "console.login").await;
        let e = &events[0];
        assert_eq!(e["outcome"], "failure", "{e}");
        assert_eq!(e["subject"], "anonymous", "{e}");
        assert_eq!(e["source"], "192.0.2.10", "{e}");
        assert_eq!(e["details"]["reason"], reason, "{e}");
        let text = e.to_string();
        assert!(
            !text.contains("c0de-secret") && !text.contains("st4te-secret"),
            "{e}"
        );
    }

    // Logout: recorded as the person, from where, on the session's reference.
    let person = Principal {
        subject: "carol".into(),
        kind: PrincipalKind::Person,
        roles: vec![Role::Viewer],
        teams: vec!["a".into()],
    };
    let now = time::OffsetDateTime::now_utc();
    let (id, session) = sessions.create(person.clone(), None, now).await.unwrap();
    let mut req = from_ip("POST", "/console/logout", "192.0.2.11", None);
    req.headers_mut().insert(
        header::COOKIE,
        format!("{}={id}", crate::session::COOKIE).parse().unwrap(),
    );
    req.headers_mut().insert(
        crate::session::CSRF_HEADER,
        session.csrf_token.parse().unwrap(),
    );
    let (status, _, _) = outcome(&h.app, req).await;
    assert_eq!(status, StatusCode::OK);
    let events = audit_of(&h, "console.logout").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subject"], "carol");
    assert_eq!(events[0]["source"], "192.0.2.11");
    assert_eq!(events[0]["outcome"], "success");
    let target = crate::session::audit_target(&session.session);
    assert_eq!(events[0]["target"], target.as_str());
    assert!(
        !events[0].to_string().contains(&id),
        "the session id is not audited"
    );
    assert!(!target.contains(&session.session.id_hash));

    // A session used after its idle timeout (40 min > 30) and an active one
    // (seen 5 min ago) after its absolute timeout (70 min > 1 h): refused,
    // recorded with the reason, gone.
    let api = "/console/api/v1/certificates?team=a";
    for (age, reason) in [(40, "idle"), (70, "absolute")] {
        let (id, created) = sessions
            .create(person.clone(), None, now - time::Duration::minutes(age))
            .await
            .unwrap();
        if reason == "absolute" {
            let seen = now - time::Duration::minutes(5);
            h.store
                .touch_session(
                    &created.session.id_hash,
                    seen,
                    seen + time::Duration::minutes(30),
                )
                .await
                .unwrap();
        }
        for _ in 0..2 {
            let mut req = from_ip("GET", api, "192.0.2.12", None);
            req.headers_mut().insert(
                header::COOKIE,
                format!("{}={id}", crate::session::COOKIE).parse().unwrap(),
            );
            let (status, _, _) = outcome(&h.app, req).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        let events = audit_of(&h, "console.session.expire").await;
        assert_eq!(events[0]["subject"], "carol");
        assert_eq!(events[0]["source"], "192.0.2.12");
        assert_eq!(events[0]["details"]["reason"], reason, "{}", events[0]);
        assert_eq!(
            events
                .iter()
                .filter(|e| e["details"]["reason"] == reason)
                .count(),
            1,
            "recorded once: the second use finds no session"
        );
    }
    // GET /console/session records the expiry too.
    let (id, _) = sessions
        .create(person, None, now - time::Duration::minutes(45))
        .await
        .unwrap();
    let mut req = from_ip("GET", "/console/session", "192.0.2.13", None);
    req.headers_mut().insert(
        header::COOKIE,
        format!("{}={id}", crate::session::COOKIE).parse().unwrap(),
    );
    let (status, _, _) = outcome(&h.app, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let events = audit_of(&h, "console.session.expire").await;
    assert_eq!(events[0]["source"], "192.0.2.13");
    // The trail still verifies.
    let report = h.store.verify_audit_chain().await.unwrap();
    assert!(report.first_break.is_none(), "{report:?}");
}

#[tokio::test]
async fn join_tokens_are_listed_without_secrets_revoked_once_and_agents_re_enabled() {
    let h = harness().await;
    let (status, created) = h
        .json(
            "POST",
            "/console/api/v1/agents/join-tokens",
            Some(json!({ "name": "web-1", "teams": ["a"], "ttl_minutes": 30 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let token_id = created["id"].as_str().unwrap().to_owned();
    let hash = certflow_services::agents::join_token_sha256(&token);

    // Listed with its id, name, teams and state; never the token or its hash.
    let (status, list) = h
        .json("GET", "/console/api/v1/agents/join-tokens", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = &list["items"][0];
    assert_eq!(listed["id"], token_id.as_str());
    assert_eq!(listed["name"], "web-1");
    assert_eq!(listed["teams"], json!(["a"]));
    assert_eq!(listed["state"], "unused");
    assert_eq!(listed["created_by"], "bootstrap-admin");
    assert!(listed.get("token").is_none());
    let text = list.to_string();
    assert!(!text.contains(&token) && !text.contains(&hash), "{text}");
    let (status, _) = h
        .json("GET", "/console/api/v1/agents/join-tokens?limit=0", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Revoked: it expires now, cannot be revoked twice, and enrols nobody.
    let revoke = format!("/console/api/v1/agents/join-tokens/{token_id}/revoke");
    let (status, revoked) = h.json("POST", &revoke, None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["state"], "expired");
    let (status, p) = h.json("POST", &revoke, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    let (status, _) = h
        .json(
            "POST",
            &format!(
                "/console/api/v1/agents/join-tokens/{}/revoke",
                uuid::Uuid::now_v7()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let csr = fixture("p256.csr");
    let now = time::OffsetDateTime::now_utc();
    let refused = h
        .agents
        .enroll(&token, csr.as_bytes(), None, None, now)
        .await;
    assert!(
        matches!(refused, Err(certflow_core::DomainError::Forbidden(_))),
        "{refused:?}"
    );

    // A used token stays used: revoking it is a conflict (act on the agent).
    let (_, second) = h
        .json(
            "POST",
            "/console/api/v1/agents/join-tokens",
            Some(json!({ "name": "web-2", "teams": ["a"] })),
        )
        .await;
    let issued = h
        .agents
        .enroll(
            second["token"].as_str().unwrap(),
            csr.as_bytes(),
            None,
            None,
            now,
        )
        .await
        .unwrap();
    let agent_id = issued.agent.id.to_string();
    let (_, list) = h
        .json("GET", "/console/api/v1/agents/join-tokens", None)
        .await;
    let states: Vec<(&str, &str)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("web-2", "used"), ("web-1", "expired")]);
    assert_eq!(list["items"][0]["agent_id"], agent_id.as_str());
    let (status, _) = h
        .json(
            "POST",
            &format!(
                "/console/api/v1/agents/join-tokens/{}/revoke",
                second["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Disabled agents can be re-enabled (their identity works again); revoked is final.
    let agent = |verb: &str| format!("/console/api/v1/agents/{agent_id}/{verb}");
    let (status, a) = h.json("POST", &agent("disable"), None).await;
    assert_eq!(
        (status, a["status"].as_str()),
        (StatusCode::OK, Some("disabled"))
    );
    assert!(
        h.agents
            .authenticate(issued.agent.id, &issued.agent.cert_serial, now)
            .await
            .is_err()
    );
    let (status, a) = h.json("POST", &agent("enable"), None).await;
    assert_eq!(
        (status, a["status"].as_str()),
        (StatusCode::OK, Some("active"))
    );
    h.agents
        .authenticate(issued.agent.id, &issued.agent.cert_serial, now)
        .await
        .unwrap();
    let (status, _) = h.json("POST", &agent("revoke"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, p) = h.json("POST", &agent("enable"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    let (_, a) = h.json("GET", "/console/api/v1/agents", None).await;
    assert_eq!(a["items"][0]["status"], "revoked");

    // Every change is in the audit trail, by its admin.
    let actions: Vec<String> = audit_of(&h, "agent.")
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for action in [
        "agent.join-token.revoke",
        "agent.disable",
        "agent.enable",
        "agent.revoke",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    let revokes = audit_of(&h, "agent.join-token.revoke").await;
    assert_eq!(
        revokes.len(),
        1,
        "the refused second revocation changed nothing"
    );
    assert_eq!(revokes[0]["target"], format!("agent-join-token/{token_id}"));
}

#[tokio::test]
async fn console_pages_share_the_console_rate_limits() {
    let console = ConsoleConfig {
        rate_limit_per_sec: 0.01,
        rate_limit_burst: 3.0,
        login_rate_limit_per_min: 1e6,
        login_rate_limit_burst: 1e6,
        trusted_proxies: Vec::new(),
    };
    let h = harness_full(
        Vec::new(),
        console,
        Some(crate::session::SessionSettings {
            idle_timeout: time::Duration::minutes(30),
            absolute_timeout: time::Duration::hours(12),
            console_origin: "https://certflow.test".into(),
        }),
    )
    .await;
    let sessions = h.sessions.clone().unwrap();

    // Before sign-in, per client address: the burst is sent to the login
    // (with the page to come back to), then an HTML 429 with Retry-After.
    for _ in 0..3 {
        let resp = h
            .app
            .clone()
            .oneshot(from_ip(
                "GET",
                "/console/certificates?team=a",
                "192.0.2.20",
                None,
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            resp.headers()[header::LOCATION],
            "/console/login?return_to=%2Fconsole%2Fcertificates%3Fteam%3Da"
        );
    }
    let resp = h
        .app
        .clone()
        .oneshot(from_ip("GET", "/console/", "192.0.2.20", None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        resp.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    // Signed in, per person, whatever the address.
    let person = Principal {
        subject: "dave".into(),
        kind: PrincipalKind::Person,
        roles: vec![Role::Viewer],
        teams: vec!["a".into()],
    };
    let (id, _) = sessions
        .create(person, None, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let page = |ip: &str| {
        let mut req = from_ip("GET", "/console/certificates", ip, None);
        req.headers_mut().insert(
            header::COOKIE,
            format!("{}={id}", crate::session::COOKIE).parse().unwrap(),
        );
        req
    };
    for ip in ["192.0.2.21", "192.0.2.22", "192.0.2.23"] {
        let resp = h.app.clone().oneshot(page(ip)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{ip}");
    }
    let resp = h.app.clone().oneshot(page("192.0.2.24")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// `GET` `uri` as `token` (a [`FixedPrincipals`] token): status, headers, body.
async fn get_as(h: &Harness, token: &str, uri: &str) -> (StatusCode, String, Vec<u8>) {
    let req = Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, content_type, body)
}

#[tokio::test]
async fn compliance_report_as_json_and_csv_filtered_by_team() {
    let h = harness_with(vec![Arc::new(FixedPrincipals)]).await;
    for (team, name) in [("a", "ca.example.com"), ("b", "cb.example.com")] {
        let (status, cert) = h
            .json(
                "POST",
                "/console/api/v1/certificates",
                Some(json!({ "team": team, "names": [name] })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{cert}");
    }
    let uri = "/console/api/v1/compliance?expiring_within_days=3650";

    // The admin sees both teams; every certificate expires within ten years.
    let (status, report) = h.json("GET", uri, None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(report["generated_at"].as_str().is_some(), "{report}");
    let teams: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["team"].as_str().unwrap())
        .collect();
    assert_eq!(teams, ["a", "b"], "{report}");
    assert_eq!(report["summary"]["by_rule"]["expiring"], 2, "{report}");
    assert_eq!(report["summary"]["by_severity"]["warning"], 2, "{report}");
    assert_eq!(report["summary"]["by_rule"]["weak-key"], 0, "{report}");
    let finding = &report["items"][0]["findings"][0];
    assert_eq!(finding["rule"], "expiring", "{report}");
    assert_eq!(finding["severity"], "warning", "{report}");
    assert!(
        finding["message"]
            .as_str()
            .unwrap()
            .contains("within 3650 days"),
        "{report}"
    );
    // The admin's whole-inventory report feeds /metrics.
    let (_, _, metrics) = h.call("GET", "/metrics", None, "").await;
    let metrics = String::from_utf8(metrics).unwrap();
    crate::telemetry::metrics::check_exposition(&metrics).unwrap();
    assert!(
        metrics
            .contains("certflow_compliance_findings{rule=\"expiring\",severity=\"warning\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("certflow_compliance_findings{rule=\"expired\",severity=\"critical\"} 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("certflow_compliance_report_timestamp_seconds "));
    // With the default 30-day window the fresh certificates are compliant.
    let (_, report) = h.json("GET", "/console/api/v1/compliance", None).await;
    assert_eq!(report["items"], json!([]), "{report}");
    assert_eq!(report["summary"]["certificates"], 2, "{report}");

    // A viewer of team b sees team b only, and may not ask for team a.
    let (status, _, body) = get_as(&h, "role:viewer:b", uri).await;
    assert_eq!(status, StatusCode::OK);
    let report: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["items"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["items"][0]["name"], "cb.example.com", "{report}");
    let (status, _, _) = get_as(&h, "role:viewer:b", &format!("{uri}&team=a")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // CSV: a header row, one row per finding, CRLF.
    let (status, content_type, body) =
        get_as(&h, "role:viewer:b", &format!("{uri}&format=csv")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let csv = String::from_utf8(body).unwrap();
    let rows: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(rows[0], "certificate_id,name,team,rule,severity,message");
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(
        rows[1].contains(",cb.example.com,b,expiring,warning,"),
        "{csv}"
    );

    // Bad parameters: 400 problems naming the parameter.
    for (query, field) in [
        ("expiring_within_days=soon", "expiring_within_days"),
        ("expiring_within_days=-1", "expiring_within_days"),
        ("expiring_within_days=100000", "expiring_within_days"),
        ("format=xml", "format"),
        ("colour=red", "colour"),
    ] {
        let (status, p) = h
            .json("GET", &format!("/console/api/v1/compliance?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {p}");
        assert_eq!(
            p["type"], "https://certflow.dev/problems/invalid-request",
            "{query}: {p}"
        );
        assert_eq!(p["errors"][0]["field"], field, "{query}: {p}");
    }
}

#[tokio::test]
async fn compliance_page_renders_the_findings_of_the_readers_teams() {
    let h = harness_full(
        Vec::new(),
        unlimited(),
        Some(crate::session::SessionSettings {
            idle_timeout: time::Duration::minutes(30),
            absolute_timeout: time::Duration::hours(12),
            console_origin: "https://certflow.test".into(),
        }),
    )
    .await;
    for (team, name) in [("a", "pa.example.com"), ("b", "pb.example.com")] {
        let (status, cert) = h
            .json(
                "POST",
                "/console/api/v1/certificates",
                Some(json!({ "team": team, "names": [name] })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{cert}");
    }
    let person = Principal {
        subject: "erin".into(),
        kind: PrincipalKind::Person,
        roles: vec![Role::Viewer],
        teams: vec!["a".into()],
    };
    let (id, _) = h
        .sessions
        .clone()
        .unwrap()
        .create(person, None, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let get = |uri: &str| {
        let mut req = from_ip("GET", uri, "192.0.2.30", None);
        req.headers_mut().insert(
            header::COOKIE,
            format!("{}={id}", crate::session::COOKIE).parse().unwrap(),
        );
        req
    };
    let resp = h
        .app
        .clone()
        .oneshot(get(
            "/console/compliance?severity=warning&expiring_within_days=3650",
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(page.contains("pa.example.com"), "{page}");
    assert!(
        !page.contains("pb.example.com"),
        "team b is not the reader's"
    );
    assert!(page.contains("expiring"), "{page}");
    assert!(
        page.contains("/console/api/v1/compliance?format=csv&")
            && page.contains("expiring_within_days=3650"),
        "CSV link"
    );
    assert!(page.contains(r#"href="/console/compliance" aria-current="page""#));
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline code"
    );

    let resp = h
        .app
        .clone()
        .oneshot(get("/console/compliance?severity=urgent"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

/// The revoke body's `replace`: a wrong type is a problem naming the body and
/// revokes nothing; `true` answers with the replacement and an active
/// certificate; a requester-held key revoked for keyCompromise is refused
/// with 409 before anything is revoked.
#[tokio::test]
async fn revoke_with_replace_answers_with_the_replacement() {
    let h = harness().await;
    let (status, created) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(create(&["replace.example.com"])),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let revoke = format!("/console/api/v1/certificates/{id}/revoke");

    let (status, p) = h
        .json(
            "POST",
            &revoke,
            Some(json!({ "reason": "superseded", "replace": "yes" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("replace"), "{p}");
    let (_, d) = h
        .json("GET", &format!("/console/api/v1/certificates/{id}"), None)
        .await;
    assert_eq!(d["status"], "active");
    assert_eq!(d["versions"][0]["status"], "current");

    let (status, d) = h
        .json(
            "POST",
            &revoke,
            Some(json!({ "reason": "superseded", "replace": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["status"], "active");
    assert_eq!(d["current_version"], 2);
    assert_eq!(
        d["replacement"],
        json!({ "status": "issued", "revoked_version": 1, "version": 2 })
    );
    assert_eq!(d["versions"][1]["status"], "revoked");
    assert_ne!(d["versions"][0]["serial"], d["versions"][1]["serial"]);
    // Without replace, no `replacement` field at all.
    let (status, d) = h
        .json("POST", &revoke, Some(json!({ "reason": "superseded" })))
        .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["status"], "revoked");
    assert!(d.get("replacement").is_none(), "{d}");

    let (status, held) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(json!({ "team": "web", "csr": fixture("p256.csr") })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    let held_id = held["id"].as_str().unwrap();
    let (status, p) = h
        .json(
            "POST",
            &format!("/console/api/v1/certificates/{held_id}/revoke"),
            Some(json!({ "reason": "keyCompromise", "replace": true })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("re-key needed"),
        "{p}"
    );
    let (_, d) = h
        .json(
            "GET",
            &format!("/console/api/v1/certificates/{held_id}"),
            None,
        )
        .await;
    assert_eq!(d["status"], "active", "nothing revoked: {d}");
}

/// A webhook URL naming an address the outbound policy refuses is a 400
/// problem document naming the rule, and no subscription is stored (the
/// harness has no `[outbound] allow`: the strict default).
#[tokio::test]
async fn webhook_subscriptions_to_refused_addresses_are_problems_naming_the_rule() {
    let h = harness().await;
    for (url, rule) in [
        (
            "http://169.254.169.254/latest/meta-data/iam/",
            "refused by outbound policy: 169.254.169.254 is link-local",
        ),
        (
            "http://127.0.0.1:6379/",
            "refused by outbound policy: 127.0.0.1 is loopback",
        ),
        (
            "https://[fd00::1]/hook",
            "refused by outbound policy: [fd00::1] is private",
        ),
    ] {
        let body = json!({ "team": "a", "events": ["issued"],
                           "channel": { "type": "webhook", "url": url, "format": "slack" } });
        let (status, headers, bytes) = h
            .call(
                "POST",
                "/console/api/v1/subscriptions",
                Some(serde_json::to_vec(&body).unwrap()),
                "application/json",
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
        let ct = headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str());
        assert_eq!(ct, Some("application/problem+json"), "{url}");
        let p: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(p["type"], "https://certflow.dev/problems/invalid-request");
        let fields = problem_fields(&p);
        assert!(
            fields
                .iter()
                .any(|(f, r)| f == "channel.url" && r.starts_with(rule)),
            "{url}: {fields:?}"
        );
    }
    let (_, subs) = h.json("GET", "/console/api/v1/subscriptions", None).await;
    assert_eq!(subs, json!([]), "{subs}");
}
