//! Router tests of `POST /certificates/import`: PEM with key and chain, PEM
//! without key, PKCS#12, and every refusal (none of which stores a row or a
//! blob), and `POST /certificates/{id}/manage`. Leaves are signed by a CA
//! made here and imported as an issuer, so the test holds the CA key; a
//! second CA stays foreign to certflow.

use base64::Engine as _;
use certflow_core::model::KeyType;
use certflow_core::{Profile, SubjectName};
use certflow_pki::{CaMaterial, LeafRequest, PrivateKey, cert_to_pem, create_ca, issue_leaf};

use super::*;

const IMPORT: &str = "/console/api/v1/certificates/import";

fn ca(name: &str) -> CaMaterial {
    create_ca(
        name,
        KeyType::EcdsaP256,
        time::OffsetDateTime::now_utc(),
        3650,
        1825,
    )
    .unwrap()
}

fn leaf(ca: &CaMaterial, name: &str, key: &PrivateKey) -> Vec<u8> {
    issue_leaf(
        &ca.issuing_cert_der,
        &ca.issuing_key,
        &LeafRequest {
            profile: Profile::TlsServer,
            names: &[SubjectName::Dns(name.into())],
            spki_der: &key.public_key_der(),
            key_type: key.key_type(),
            validity_days: 30,
            validity_secs: None,
            now: time::OffsetDateTime::now_utc(),
            urls: None,
        },
    )
    .unwrap()
}

fn chain_pem(ca: &CaMaterial) -> String {
    ca.chain_der.iter().map(|d| cert_to_pem(d)).collect()
}

/// A harness with `ca` imported as the issuer "legacy".
async fn harness_with_ca(ca: &CaMaterial) -> Harness {
    let h = harness().await;
    let (status, body) = h
        .json(
            "POST",
            "/console/api/v1/issuers/import",
            Some(json!({
                "name": "legacy",
                "certificate_pem": cert_to_pem(&ca.issuing_cert_der),
                "private_key_pem": ca.issuing_key.to_pem().as_str(),
                "chain_pem": chain_pem(ca),
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    h
}

async fn blob_count(h: &Harness) -> usize {
    h.blobs.list("certificates/").await.unwrap().len()
}

#[tokio::test]
async fn imports_pem_with_key_and_chain_then_refuses_the_duplicate() {
    let legacy = ca("Legacy");
    let h = harness_with_ca(&legacy).await;
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let der = leaf(&legacy, "old.example.com", &key);
    let pem = format!(
        "{}{}{}",
        cert_to_pem(&der),
        chain_pem(&legacy),
        key.to_pem().as_str()
    );
    let body = json!({ "team": "payments", "pem": pem, "labels": { "env": "prod" } });
    let (status, cert) = h.json("POST", IMPORT, Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    assert_eq!(cert["name"], "old.example.com");
    assert_eq!(cert["team"], "payments");
    assert_eq!(cert["key_source"], "server");
    assert_eq!(cert["status"], "active");
    let serial = certflow_pki::inspect(&der).unwrap().serial_hex;
    assert_eq!(cert["versions"][0]["serial"], serial.as_str());
    // Not managed: inventory only, never renewed; due reads as its expiry.
    assert_eq!(cert["managed"], false, "{cert}");
    assert_eq!(cert["renew_after"], cert["not_after"], "{cert}");
    // Certificate, chain and the sealed key are stored; the key is not in the clear.
    let blobs = h.blobs.list("certificates/").await.unwrap();
    assert_eq!(blobs.len(), 3, "{blobs:?}");
    let key_blob = blobs.iter().find(|b| b.ends_with("key.enc")).unwrap();
    let sealed = h.blobs.get(key_blob).await.unwrap();
    assert!(
        !sealed
            .windows(key.pkcs8_der().len())
            .any(|w| w == key.pkcs8_der())
    );
    // The key comes back out through the key download.
    let id = cert["id"].as_str().unwrap();
    let (status, _, got) = h
        .call(
            "GET",
            &format!("/console/api/v1/certificates/{id}/download?format=key"),
            None,
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(String::from_utf8(got).unwrap(), key.to_pem().as_str());
    // The audit event says who imported what, never the key.
    let events = audit_of(&h, "certificate.import").await;
    assert_eq!(events.len(), 1);
    let text = events[0].to_string();
    assert!(
        text.contains(&serial) && text.contains("\"with_key\":true"),
        "{text}"
    );
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
        "{text}"
    );

    // Same issuer and serial again: 409, nothing more stored.
    let (status, problem) = h.json("POST", IMPORT, Some(body)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(h.certificate_count().await, 1);
    assert_eq!(blob_count(&h).await, 3);
}

#[tokio::test]
async fn imports_pem_without_key_and_takes_over_management() {
    let legacy = ca("Legacy");
    let h = harness_with_ca(&legacy).await;
    let key = PrivateKey::generate(KeyType::Rsa2048).unwrap();
    let der = leaf(&legacy, "nokey.example.com", &key);
    let (status, cert) = h
        .json(
            "POST",
            IMPORT,
            Some(json!({ "team": "payments", "name": "legacy api", "pem": cert_to_pem(&der), "manage": true })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    assert_eq!(cert["name"], "legacy api");
    assert_eq!(cert["key_source"], "csr");
    assert_eq!(cert["key_type"], "rsa-2048");
    // Managed: due before it expires.
    assert_eq!(cert["managed"], true, "{cert}");
    let renew_after = cert["renew_after"].as_str().unwrap();
    assert!(renew_after < cert["not_after"].as_str().unwrap(), "{cert}");
    assert_eq!(blob_count(&h).await, 2);
    // certflow renews it through its issuer, keeping the holder's key.
    let id = cert["id"].as_str().unwrap();
    let (status, renewed) = h
        .json(
            "POST",
            &format!("/console/api/v1/certificates/{id}/renew"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["current_version"], 2);
}

#[tokio::test]
async fn imports_pkcs12() {
    let legacy = ca("Legacy");
    let h = harness_with_ca(&legacy).await;
    let key = PrivateKey::generate(KeyType::EcdsaP384).unwrap();
    let der = leaf(&legacy, "p12.example.com", &key);
    let p12 = certflow_pki::pkcs12(&der, &legacy.chain_der, &key, "s3cret", "p12").unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&p12);
    // A wrong password is a 400 naming the field; nothing stored.
    let (status, problem) = h
        .json(
            "POST",
            IMPORT,
            Some(json!({ "team": "payments", "pkcs12_base64": b64, "password": "hunter2-bad" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem_fields(&problem)[0].0, "pkcs12_base64");
    assert!(!problem.to_string().contains("hunter2-bad"), "{problem}");
    let (status, cert) = h
        .json(
            "POST",
            IMPORT,
            Some(json!({ "team": "payments", "pkcs12_base64": b64, "password": "s3cret" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    assert_eq!(cert["key_source"], "server");
    assert_eq!(cert["key_type"], "ecdsa-p384");
    assert_eq!(blob_count(&h).await, 3);
}

#[tokio::test]
async fn refusals_name_the_field_and_store_nothing() {
    let legacy = ca("Legacy");
    let foreign = ca("Foreign");
    let h = harness_with_ca(&legacy).await;
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let other = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let der = leaf(&legacy, "r.example.com", &key);
    let foreign_der = leaf(&foreign, "f.example.com", &key);
    let mismatched = format!("{}{}", cert_to_pem(&der), other.to_pem().as_str());
    let rows: Vec<(Value, StatusCode, &str)> = vec![
        // Key does not belong to the certificate.
        (
            json!({ "team": "t", "pem": mismatched }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "pem",
        ),
        // Not a certificate at all.
        (
            json!({ "team": "t", "pem": "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n" }),
            StatusCode::BAD_REQUEST,
            "pem",
        ),
        (
            json!({ "team": "t", "pem": "garbage" }),
            StatusCode::BAD_REQUEST,
            "pem",
        ),
        // Neither, or both.
        (json!({ "team": "t" }), StatusCode::BAD_REQUEST, "pem"),
        (
            json!({ "team": "t", "pem": cert_to_pem(&der), "pkcs12_base64": "AAAA" }),
            StatusCode::BAD_REQUEST,
            "pem",
        ),
        (
            json!({ "team": "t", "pkcs12_base64": "not base64!" }),
            StatusCode::BAD_REQUEST,
            "pkcs12_base64",
        ),
        // Signed by a CA certflow does not know, to be managed: which
        // certflow issuer renews it?
        (
            json!({ "team": "t", "pem": cert_to_pem(&foreign_der), "manage": true }),
            StatusCode::BAD_REQUEST,
            "issuer",
        ),
        (
            json!({ "team": "t", "pem": cert_to_pem(&foreign_der), "manage": true, "issuer": "nope" }),
            StatusCode::BAD_REQUEST,
            "issuer",
        ),
        // A CA certificate where the leaf belongs.
        (
            json!({ "team": "t", "pem": chain_pem(&legacy) }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "pem",
        ),
        (
            json!({ "team": "", "pem": cert_to_pem(&der) }),
            StatusCode::BAD_REQUEST,
            "team",
        ),
    ];
    for (body, want, field) in rows {
        let (status, problem) = h.json("POST", IMPORT, Some(body.clone())).await;
        assert_eq!(status, want, "{body}: {problem}");
        assert_eq!(problem_fields(&problem)[0].0, field, "{body}: {problem}");
        assert!(!problem.to_string().contains("PRIVATE KEY"), "{problem}");
        assert_eq!(h.certificate_count().await, 0, "{body}");
        assert_eq!(blob_count(&h).await, 0, "{body}");
    }
    assert!(audit_of(&h, "certificate.import").await.is_empty());
}

/// A certificate of a foreign CA is imported as inventory under an external
/// issuer, listed by `managed=false`, and taken over through a named
/// certflow issuer (once), after which it renews through that issuer.
#[tokio::test]
async fn foreign_inventory_is_taken_over_through_a_certflow_issuer() {
    let legacy = ca("Legacy");
    let foreign = ca("Foreign");
    let h = harness_with_ca(&legacy).await;
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let der = leaf(&foreign, "ext.example.com", &key);
    let pem = format!(
        "{}{}{}",
        cert_to_pem(&der),
        cert_to_pem(&foreign.issuing_cert_der),
        key.to_pem().as_str()
    );
    let (status, cert) = h
        .json(
            "POST",
            IMPORT,
            Some(json!({ "team": "payments", "pem": pem })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    assert_eq!(cert["managed"], false, "{cert}");
    let id = cert["id"].as_str().unwrap().to_owned();
    let (_, issuers) = h.json("GET", "/console/api/v1/issuers", None).await;
    let kinds: Vec<(&str, &str)> = issuers
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["kind"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("legacy", "internal")), "{issuers}");
    let external = kinds.iter().find(|(_, k)| *k == "external").unwrap();
    assert!(external.0.starts_with("external: Foreign"), "{issuers}");
    let (_, inventory) = h
        .json("GET", "/console/api/v1/certificates?managed=false", None)
        .await;
    assert_eq!(inventory["items"][0]["id"], id.as_str(), "{inventory}");
    let (_, managed) = h
        .json("GET", "/console/api/v1/certificates?managed=true", None)
        .await;
    assert_eq!(managed["total"], 0, "{managed}");
    let (status, problem) = h
        .json("GET", "/console/api/v1/certificates?managed=maybe", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_fields(&problem)[0].0, "managed");
    // Renewing inventory is refused until it is taken over.
    let renew = format!("/console/api/v1/certificates/{id}/renew");
    let (status, problem) = h.json("POST", &renew, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(problem.to_string().contains("inventory only"), "{problem}");

    let manage = format!("/console/api/v1/certificates/{id}/manage");
    let (status, problem) = h.json("POST", &manage, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem_fields(&problem)[0].0, "issuer");
    let (status, problem) = h
        .json("POST", &manage, Some(json!({ "issuer": external.0 })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(problem_fields(&problem)[0].0, "issuer");
    assert!(audit_of(&h, "certificate.manage").await.is_empty());

    let (status, taken) = h
        .json("POST", &manage, Some(json!({ "issuer": "legacy" })))
        .await;
    assert_eq!(status, StatusCode::OK, "{taken}");
    assert_eq!(taken["managed"], true, "{taken}");
    assert_eq!(audit_of(&h, "certificate.manage").await.len(), 1);
    let (status, again) = h
        .json("POST", &manage, Some(json!({ "issuer": "legacy" })))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let (status, renewed) = h.json("POST", &renew, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["current_version"], 2);
}

/// The console's certificate page marks an inventory-only certificate and
/// offers its team's operators (not its viewers) the take-over form, which
/// needs the session's CSRF token and then makes certflow manage it.
#[tokio::test]
async fn console_page_offers_take_over_to_operators_only() {
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
    let foreign = ca("Foreign");
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let der = leaf(&foreign, "inv.example.com", &key);
    let (status, cert) = h
        .json(
            "POST",
            IMPORT,
            Some(json!({ "team": "a", "pem": cert_to_pem(&der) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    let id = cert["id"].as_str().unwrap().to_owned();
    let (_, issuers) = h.json("GET", "/console/api/v1/issuers", None).await;
    let own = issuers
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "internal")
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let sessions = h.sessions.clone().unwrap();
    let page = |cookie: String| {
        let app = h.app.clone();
        let uri = format!("/console/certificates/{id}");
        async move {
            let mut req = from_ip("GET", &uri, "192.0.2.40", None);
            req.headers_mut()
                .insert(header::COOKIE, cookie.parse().unwrap());
            let resp = app.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            String::from_utf8(body.to_vec()).unwrap()
        }
    };
    let login = |role: Role| {
        let sessions = sessions.clone();
        async move {
            let person = Principal {
                subject: format!("{role:?}").to_lowercase(),
                kind: PrincipalKind::Person,
                roles: vec![role],
                teams: vec!["a".into()],
            };
            let (id, session) = sessions
                .create(person, None, time::OffsetDateTime::now_utc())
                .await
                .unwrap();
            (
                format!("{}={id}", crate::session::COOKIE),
                session.csrf_token,
            )
        }
    };
    let badge = "Inventory only — not renewed by certflow";
    let (viewer, _) = login(Role::Viewer).await;
    let seen = page(viewer).await;
    assert!(seen.contains(badge), "{seen}");
    assert!(!seen.contains("manage-form"), "{seen}");
    let (operator, csrf) = login(Role::Operator).await;
    let seen = page(operator.clone()).await;
    assert!(
        seen.contains(badge) && seen.contains("Take over management"),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("<option value=\"{own}\">")),
        "{seen}"
    );

    let post = |csrf: String| {
        let mut req = from_ip(
            "POST",
            &format!("/console/certificates/{id}/manage"),
            "192.0.2.40",
            None,
        );
        req.headers_mut()
            .insert(header::COOKIE, operator.parse().unwrap());
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        req.headers_mut()
            .insert(header::ORIGIN, "https://certflow.test".parse().unwrap());
        let body = format!("csrf={csrf}&issuer={}", own.replace(' ', "+"));
        *req.body_mut() = Body::from(body);
        req
    };
    let resp = h.app.clone().oneshot(post("stale".into())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(audit_of(&h, "certificate.manage").await.is_empty());
    let resp = h.app.clone().oneshot(post(csrf)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, now) = h
        .json("GET", &format!("/console/api/v1/certificates/{id}"), None)
        .await;
    assert_eq!(now["managed"], true, "{now}");
    let seen = page(operator.clone()).await;
    assert!(!seen.contains(badge), "{seen}");
}

/// A refused import leaves no row (issue 22): a leaf of a CA certflow has
/// not seen yet, under a name its team already uses, is a 409 problem, and
/// `GET /issuers` is unchanged (no `external` issuer left behind).
#[tokio::test]
async fn a_refused_import_leaves_the_issuers_unchanged() {
    let legacy = ca("Legacy");
    let h = harness_with_ca(&legacy).await;
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let pem = cert_to_pem(&leaf(&legacy, "a.example.com", &key));
    let (status, cert) = h
        .json(
            "POST",
            IMPORT,
            Some(json!({ "team": "payments", "pem": pem, "name": "web" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    let (_, before) = h.json("GET", "/console/api/v1/issuers", None).await;

    for n in 0..3 {
        let foreign = ca(&format!("Foreign {n}"));
        let pem = format!(
            "{}{}",
            cert_to_pem(&leaf(&foreign, "b.example.com", &key)),
            cert_to_pem(&foreign.issuing_cert_der)
        );
        let body =
            serde_json::to_vec(&json!({ "team": "payments", "pem": pem, "name": "web" })).unwrap();
        let (status, headers, bytes) = h.call("POST", IMPORT, Some(body), "application/json").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/problem+json")
        );
        let problem: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            problem["detail"].as_str().unwrap_or("").contains("web"),
            "{problem}"
        );
        let (_, now) = h.json("GET", "/console/api/v1/issuers", None).await;
        assert_eq!(now, before, "attempt {n}");
    }
    assert_eq!(h.certificate_count().await, 1);
    assert_eq!(blob_count(&h).await, 2);
}
