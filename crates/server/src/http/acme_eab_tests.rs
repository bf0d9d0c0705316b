//! Router tests of the ACME EAB key API (issue 15): an operator of a team
//! creates a key (201 with the HMAC key, base64url, shown once), lists keys
//! of their teams without secrets, revokes once; another team's operator
//! neither creates for nor sees nor revokes it; every write is audited.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;

const KEYS: &str = "/console/api/v1/acme/eab-keys";

async fn call(
    app: &Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn eab_keys_are_created_by_team_operators_listed_without_secrets_and_revoked_once() {
    let h = harness_with(vec![Arc::new(FixedPrincipals)]).await;
    let app = h.app.clone();

    let (status, created) = call(
        &app,
        "role:operator:a",
        "POST",
        KEYS,
        Some(json!({"team": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    let hmac = created["hmac_key"].as_str().unwrap().to_owned();
    assert_eq!(URL_SAFE_NO_PAD.decode(&hmac).unwrap().len(), 32);
    assert_eq!(created["team"], "a");
    assert!(created["expires_at"].is_string());

    // Another team's operator may not create for team a; a viewer may not create.
    let (status, p) = call(
        &app,
        "role:operator:b",
        "POST",
        KEYS,
        Some(json!({"team": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
    let (status, p) = call(
        &app,
        "role:viewer:a",
        "POST",
        KEYS,
        Some(json!({"team": "a"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
    let (status, p) = call(
        &app,
        "role:operator:a",
        "POST",
        KEYS,
        Some(json!({"team": "A B"})),
    )
    .await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::FORBIDDEN,
        "{status} {p}"
    );

    // Listed for team a's viewer, never with the HMAC key; not for team b.
    let (status, list) = call(&app, "role:viewer:a", "GET", KEYS, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["key_id"], key_id.as_str());
    assert_eq!(items[0]["state"], "unused");
    assert!(
        !list.to_string().contains(&hmac),
        "the HMAC key is shown once only"
    );
    let (_, other) = call(&app, "role:viewer:b", "GET", KEYS, None).await;
    assert_eq!(other["items"].as_array().unwrap().len(), 0, "{other}");

    // Team b cannot revoke it (not even learn it exists); team a revokes it once.
    let uri = format!("{KEYS}/{key_id}");
    let (status, _) = call(&app, "role:operator:b", "DELETE", &uri, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, revoked) = call(&app, "role:operator:a", "DELETE", &uri, None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["state"], "revoked");
    let (status, again) = call(&app, "role:operator:a", "DELETE", &uri, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    let (_, audit) = h
        .json(
            "GET",
            "/console/api/v1/audit?action=acme.eab-key&limit=10",
            None,
        )
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        actions.contains(&"acme.eab-key.create") && actions.contains(&"acme.eab-key.revoke"),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains(&hmac),
        "no secret in the audit trail"
    );
}

#[tokio::test]
async fn renew_now_refuses_certificates_not_issued_through_acme() {
    let h = harness_with(vec![Arc::new(FixedPrincipals)]).await;
    let (status, cert) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(json!({"team": "a", "names": ["n.example.com"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    let uri = format!(
        "/console/api/v1/acme/certificates/{}/renew-now",
        cert["id"].as_str().unwrap()
    );
    let (status, p) = call(&h.app, "role:operator:a", "POST", &uri, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    // Another team's certificate: refused as renewing it is (403), not hidden.
    let (status, _) = call(&h.app, "role:operator:b", "POST", &uri, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
