//! Router tests of `GET /discovered` and `POST /discovered/{id}/take-over`
//! on the real SQLite store and CA, with an enrolled agent of team `a`
//! whose discoveries are recorded through the use case (the agent route
//! itself runs behind mTLS and is exercised by the e2e tests).

use certflow_api::agent::{DiscoveredCertificate, DiscoveryReport};
use certflow_services::agents::TokenEnrolment;

use super::*;

const LIST: &str = "/console/api/v1/discovered";
/// Made by `openssl req -x509 -sha1 -newkey rsa:1024`.
const LEGACY: &str = include_str!("../../../../testdata/compliance/sha1-rsa1024.pem");
const LEGACY_SHA256: &str = "d80fcdd6cbd8a7fb580ca96ac51d0e0d08b7f9277b2176e9f8230188656626d3";

async fn send(
    app: &Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
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
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        location,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn item(source: &str, name: &str) -> DiscoveredCertificate {
    DiscoveredCertificate {
        source: source.into(),
        fingerprint_sha256: LEGACY_SHA256.into(),
        serial: "0a1b".into(),
        subject: format!("CN={name}"),
        issuer: "CN=legacy.example.com".into(),
        names: vec![name.into()],
        not_after: time::OffsetDateTime::now_utc() + time::Duration::days(20),
        certificate_pem: Some(LEGACY.into()),
    }
}

/// An agent of team `a` enrolled on `h`, with two discoveries recorded
/// through the use case (`file:/etc/ssl/legacy.pem` first).
async fn agent_with_discoveries(h: &Harness) -> certflow_core::agents::Agent {
    let now = time::OffsetDateTime::now_utc();
    let key = certflow_pki::PrivateKey::generate(certflow_core::model::KeyType::EcdsaP256).unwrap();
    let csr = certflow_pki::build_csr(
        &key,
        &[certflow_core::SubjectName::Dns("agent.invalid".into())],
    )
    .unwrap();
    let agent = h
        .agents
        .enroll_with_token(
            &TokenEnrolment {
                subject: certflow_core::agents::token_subject("https://idp.example.com", "web-01"),
                client_id: "web-01".into(),
                teams: vec!["a".into()],
            },
            &csr,
            None,
            None,
            now,
        )
        .await
        .unwrap()
        .agent;
    h.deploy
        .discovery
        .record(
            &agent,
            None,
            &DiscoveryReport {
                items: vec![
                    item("file:/etc/ssl/legacy.pem", "legacy.example.com"),
                    item("tls:127.0.0.1:443", "tls.example.com"),
                ],
                unreadable: Vec::new(),
            },
            now,
        )
        .await
        .unwrap();
    agent
}

#[tokio::test]
async fn discovered_certificates_are_listed_by_team_and_taken_over_once() {
    let h = harness_with(vec![Arc::new(FixedPrincipals)]).await;
    let deployments = h.deploy.deployments.clone();
    let app = h.app.clone();
    let agent = agent_with_discoveries(&h).await;

    // A viewer of the agent's team sees both, unmanaged by default.
    let (status, _, list) = send(&app, "role:viewer:a", "GET", LIST, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    let first = &items[0];
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "id",
        "agent_id",
        "agent_name",
        "source",
        "fingerprint_sha256",
        "serial",
        "subject",
        "issuer",
        "names",
        "not_after",
        "first_seen",
        "last_seen",
        "managed_certificate_id",
        "taken_over_certificate_id",
    ] {
        assert!(keys.contains(&k), "{k} missing from {first}");
    }
    assert_eq!(first["agent_name"], "web-01");
    assert_eq!(first["source"], "file:/etc/ssl/legacy.pem");
    assert_eq!(first["names"], json!(["legacy.example.com"]));
    assert!(first["managed_certificate_id"].is_null());
    assert!(first["taken_over_certificate_id"].is_null());
    assert!(first.get("certificate_pem").is_none() && first.get("certificate_der").is_none());
    let id = first["id"].as_str().unwrap().to_owned();

    // Another team sees nothing; filters and their refusals.
    let (status, _, list) = send(&app, "role:viewer:b", "GET", LIST, None).await;
    assert_eq!(
        (status, list["items"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    let (status, _, list) = send(
        &app,
        "role:viewer:a",
        "GET",
        &format!("{LIST}?status=managed"),
        None,
    )
    .await;
    assert_eq!(
        (status, list["items"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    let (status, _, list) = send(
        &app,
        "role:viewer:a",
        "GET",
        &format!("{LIST}?status=all&agent={}", agent.id),
        None,
    )
    .await;
    assert_eq!(
        (status, list["items"].as_array().unwrap().len()),
        (StatusCode::OK, 2)
    );
    for (query, field) in [
        ("status=bogus", "status"),
        ("agent=nope", "agent"),
        ("colour=red", "colour"),
    ] {
        let (status, _, p) = send(
            &app,
            "role:viewer:a",
            "GET",
            &format!("{LIST}?{query}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {p}");
        assert!(p.to_string().contains(field), "{query}: {p}");
    }
    let (status, _, _) = send(
        &app,
        "role:viewer:b",
        "GET",
        &format!("{LIST}?team=a"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The compliance report rates them (JSON field and CSV rows).
    let (status, _, report) = send(
        &app,
        "role:viewer:a",
        "GET",
        "/console/api/v1/compliance?team=a",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["discovered"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    assert_eq!(report["summary"]["discovered"], 2);
    let req = Request::builder()
        .uri("/console/api/v1/compliance?team=a&format=csv")
        .header(header::AUTHORIZATION, "Bearer role:viewer:a")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csv = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        csv.starts_with("certificate_id,name,team,rule,severity,message\r\n"),
        "{csv}"
    );
    assert!(
        csv.contains(",file:/etc/ssl/legacy.pem,,weak-signature,critical,"),
        "{csv}"
    );
    assert!(csv.contains("(found by agent web-01)"), "{csv}");

    // Take-over: viewers may not; a team outside the agent's is refused.
    let take = format!("{LIST}/{id}/take-over");
    let (status, _, _) = send(
        &app,
        "role:viewer:a",
        "POST",
        &take,
        Some(json!({ "team": "a" })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(
        &app,
        "role:operator:b",
        "POST",
        &take,
        Some(json!({ "team": "a" })),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, p) = send(
        &app,
        "role:admin:z",
        "POST",
        &take,
        Some(json!({ "team": "z" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert!(p.to_string().contains("team"), "{p}");
    let (status, _, p) = send(
        &app,
        "role:operator:a",
        "POST",
        &take,
        Some(json!({ "team": "a", "issuer": "nope" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{p}");
    assert!(p.to_string().contains("issuer"), "{p}");

    let (status, location, cert) = send(
        &app,
        "role:operator:a",
        "POST",
        &take,
        Some(json!({ "team": "a", "name": "legacy" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    let cert_id = cert["id"].as_str().unwrap().to_owned();
    assert_eq!(cert["name"], "legacy");
    assert_eq!(
        location.unwrap(),
        format!("/console/api/v1/certificates/{cert_id}")
    );
    // The new certificate is the agent's to install.
    let assigned = deployments.assignments(agent.id).await.unwrap();
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].certificate_id.to_string(), cert_id);

    let (status, _, p) = send(
        &app,
        "role:operator:a",
        "POST",
        &take,
        Some(json!({ "team": "a" })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    let (_, _, list) = send(
        &app,
        "role:viewer:a",
        "GET",
        &format!("{LIST}?status=all"),
        None,
    )
    .await;
    let row = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["taken_over_certificate_id"], cert_id.as_str());
    // Unknown ids are 404.
    let (status, _, _) = send(
        &app,
        "role:operator:a",
        "POST",
        &format!("{LIST}/{}/take-over", uuid::Uuid::now_v7()),
        Some(json!({ "team": "a" })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The console page's take-over answers as the API does: outside the
/// agent's teams the discovery is not found (404), a viewer of its team is
/// refused (403), and only then does an operator take it over (to the new
/// certificate's page); nothing is issued before.
#[tokio::test]
async fn console_take_over_is_not_found_outside_the_agents_teams_and_refused_to_viewers() {
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
    agent_with_discoveries(&h).await;
    let id = h
        .deploy
        .discovery
        .list(
            &certflow_core::access::TeamScope::All,
            certflow_core::discovery::DiscoveryStatus::Unmanaged,
            None,
        )
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.item.source == "file:/etc/ssl/legacy.pem")
        .unwrap()
        .id;
    let sessions = h.sessions.clone().unwrap();
    let take_over = |role: Role, team: &'static str| {
        let (sessions, app) = (sessions.clone(), h.app.clone());
        async move {
            let person = Principal {
                subject: format!("{role:?}-{team}").to_lowercase(),
                kind: PrincipalKind::Person,
                roles: vec![role],
                teams: vec![team.into()],
            };
            let (session_id, session) = sessions
                .create(person, None, time::OffsetDateTime::now_utc())
                .await
                .unwrap();
            let mut req = from_ip(
                "POST",
                &format!("/console/discovered/{id}/take-over"),
                "192.0.2.41",
                None,
            );
            let headers = req.headers_mut();
            let cookie = format!("{}={session_id}", crate::session::COOKIE);
            headers.insert(header::COOKIE, cookie.parse().unwrap());
            headers.insert(
                header::CONTENT_TYPE,
                "application/x-www-form-urlencoded".parse().unwrap(),
            );
            headers.insert(header::ORIGIN, "https://certflow.test".parse().unwrap());
            *req.body_mut() = Body::from(format!("csrf={}&team={team}", session.csrf_token));
            let resp = app.oneshot(req).await.unwrap();
            let location = resp
                .headers()
                .get(header::LOCATION)
                .map(|v| v.to_str().unwrap().to_owned());
            (resp.status(), location)
        }
    };
    let (status, _) = take_over(Role::Operator, "b").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = take_over(Role::Viewer, "a").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(audit_of(&h, "discovery.take-over").await.is_empty());
    let (status, location) = take_over(Role::Operator, "a").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location
            .as_deref()
            .is_some_and(|l| l.starts_with("/console/certificates/")),
        "{location:?}"
    );
    assert_eq!(audit_of(&h, "discovery.take-over").await.len(), 1);
}
