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
use certflow_blob::{LocalKeyProvider, MasterKey, ObjectBlobStore, Sealer};
use certflow_core::ports::{BlobStore, MetadataStore};
use certflow_services::{CaSettings, Services};
use certflow_store::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, app, auth};
use auth::BearerAuthenticator as _;
use certflow_core::access::{Principal, PrincipalKind, Role};

struct Harness {
    app: Router,
    token: String,
    store: Arc<SqliteStore>,
    blobs: Arc<ObjectBlobStore>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(Vec::new()).await
}

async fn harness_with(authenticators: Vec<Arc<dyn auth::BearerAuthenticator>>) -> Harness {
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
    .with_notifications(store.clone());
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
    Harness {
        app: app(AppState {
            services,
            bootstrap_hash,
            renewal: Arc::new(super::RenewalView {
                queue: Arc::new(store.renewal_queue(Default::default())),
                ledger: store.clone(),
                notifications: store.clone(),
            }),
            authenticators: Arc::new(authenticators),
            sessions: None,
        }),
        token,
        store,
        blobs,
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
    assert_eq!(status, StatusCode::NOT_FOUND, "{p}");

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
            } else if path.starts_with("/certificates/") {
                cert_id.clone()
            } else {
                uuid::Uuid::now_v7().to_string()
            };
            let uri = format!("/console/api/v1{}", path.replace("{id}", &id));
            // Team-scoped listings name the team; the audit trail one certificate.
            let uri = match (m.as_str(), path.as_str()) {
                ("GET", "/certificates" | "/deliveries" | "/subscriptions") => {
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
                let allowed = principal.can(permission, Some("a"));
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
