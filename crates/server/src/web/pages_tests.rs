//! Router tests of console pages, driven through the console API's test
//! harness (`http/tests.rs`: real SQLite store, CA and sessions; declared
//! there so they share it): the sign-in start page at the front door and
//! deep links to the login, the inventory of a person's teams at once, and
//! audit details read as a definition list with dates and names.

use super::*;

/// Session settings of these tests (the harness's provider never answers:
/// nothing here goes to it).
fn sessions() -> crate::session::SessionSettings {
    crate::session::SessionSettings {
        idle_timeout: time::Duration::minutes(30),
        absolute_timeout: time::Duration::hours(12),
        console_origin: "https://certflow.test".into(),
    }
}

/// `GET uri` with the session `cookie` (none: signed out): status, `Location`, body.
async fn page(h: &Harness, uri: &str, cookie: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::builder().uri(uri);
    if let Some(id) = cookie {
        req = req.header(header::COOKIE, format!("{}={id}", crate::session::COOKIE));
    }
    let resp = h
        .app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A session of a person with `role` in `teams`; returns its cookie value.
async fn person(h: &Harness, subject: &str, role: Role, teams: &[&str]) -> String {
    let principal = Principal {
        subject: subject.into(),
        kind: PrincipalKind::Person,
        roles: vec![role],
        teams: teams.iter().map(|t| (*t).to_owned()).collect(),
    };
    let (id, _) = h
        .sessions
        .as_ref()
        .unwrap()
        .create(principal, None, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    id
}

/// Requests a certificate for `name` in `team` with the bootstrap token; returns its id.
async fn certificate(h: &Harness, name: &str, team: &str) -> String {
    let (status, body) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(json!({ "names": [name], "team": team })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_front_door_signed_out_is_the_sign_in_page_and_deep_links_go_to_the_login() {
    let h = harness_full(Vec::new(), unlimited(), Some(sessions())).await;
    let (status, _, body) = page(&h, "/console/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("<h1 id=\"start-title\">Sign in to certflow</h1>"));
    assert!(
        body.contains(r#"<a class="button big" id="sign-in" href="/console/login">Sign in with Example SSO</a>"#),
        "{body}"
    );
    assert!(!body.contains("Sign out"), "no session, no sign-out form");

    // Any other page goes straight to the login and comes back to it.
    let deep = "/console/certificates/0195a3c4-0000-7000-8000-000000000001";
    let (status, location, _) = page(&h, deep, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location,
        "/console/login?return_to=%2Fconsole%2Fcertificates%2F0195a3c4-0000-7000-8000-000000000001"
    );

    // Signed in, the front door is the dashboard.
    let admin = person(&h, "ada", Role::Admin, &[]).await;
    let (status, _, body) = page(&h, "/console/", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("<h1>Dashboard</h1>") && !body.contains("id=\"sign-in\""));

    // Without [auth.oidc] there is nobody to sign in with: the page says what to configure.
    let bare = harness().await;
    let (status, _, body) = page(&bare, "/console/", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("[auth.oidc]"), "{body}");
}

#[tokio::test]
async fn an_operator_of_two_teams_lists_both_at_once_or_one_of_them() {
    let h = harness_full(Vec::new(), unlimited(), Some(sessions())).await;
    for (name, team) in [
        ("a.pages.example.com", "a"),
        ("b.pages.example.com", "b"),
        ("c.pages.example.com", "c"),
    ] {
        certificate(&h, name, team).await;
    }
    let bob = person(&h, "bob", Role::Operator, &["a", "b"]).await;

    let (status, _, body) = page(&h, "/console/certificates", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(r#"<option value="" selected>all my teams</option>"#),
        "{body}"
    );
    assert!(body.contains("a.pages.example.com") && body.contains("b.pages.example.com"));
    assert!(
        !body.contains("c.pages.example.com"),
        "another team's certificate"
    );
    assert!(body.contains("Showing 1–2 of 2."), "{body}");

    let (status, _, body) = page(&h, "/console/certificates?team=b", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"<option value="b" selected>b</option>"#));
    assert!(body.contains("b.pages.example.com") && !body.contains("a.pages.example.com"));

    let (status, _, body) = page(&h, "/console/certificates?team=c", Some(&bob)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("you may not read team &#39;c&#39;"), "{body}");
    assert!(!body.contains("c.pages.example.com"));

    // The console API lists the same (it used to want a team named).
    let (status, _, body) = page(&h, "/console/api/v1/certificates", Some(&bob)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let mut teams: Vec<_> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["team"].as_str().unwrap().to_owned())
        .collect();
    teams.sort();
    assert_eq!(
        (listed["total"].as_u64(), teams),
        (Some(2), vec!["a".to_owned(), "b".to_owned()])
    );

    // An administrator's empty filter is every team.
    let admin = person(&h, "ada", Role::Admin, &[]).await;
    let (_, _, body) = page(&h, "/console/certificates", Some(&admin)).await;
    assert!(body.contains("Showing 1–3 of 3."), "{body}");
}

#[tokio::test]
async fn audit_details_read_as_a_definition_list_with_dates_and_names() {
    let h = harness_full(Vec::new(), unlimited(), Some(sessions())).await;
    let id = certificate(&h, "web.pages.example.com", "a").await;
    let key = certflow_pki::PrivateKey::generate(certflow_core::model::KeyType::EcdsaP256).unwrap();
    let csr = certflow_pki::build_csr(
        &key,
        &[certflow_core::SubjectName::Dns("agent.invalid".into())],
    )
    .unwrap();
    let agent = h
        .agents
        .enroll_with_token(
            &certflow_services::agents::TokenEnrolment {
                subject: certflow_core::agents::token_subject("https://idp.example.com", "web-01"),
                client_id: "web-01".into(),
                teams: vec!["a".into()],
            },
            &csr,
            None,
            None,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap()
        .agent;
    let (status, body) = h
        .json(
            "POST",
            &format!("/console/api/v1/agents/{}/assignments", agent.id),
            Some(json!({ "certificate_id": id })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let admin = person(&h, "ada", Role::Admin, &[]).await;

    // The assignment: the agent as target and the certificate in the details, by name.
    let (status, _, body) = page(
        &h,
        &format!(
            "/console/audit?action=deployment.assign&target=agent/{}",
            agent.id
        ),
        Some(&admin),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let agent_link = format!(
        r#"<a href="/console/agents#agent-{}">agent web-01</a>"#,
        agent.id
    );
    assert!(body.contains(&agent_link), "{body}");
    assert!(
        body.contains(&format!(
            r#"<dt>certificate</dt><dd><a href="/console/certificates/{id}">web.pages.example.com</a></dd>"#
        )),
        "{body}"
    );
    assert!(body.contains("<dt>team</dt><dd>a</dd>"), "{body}");

    // The enrolment: the agent acts by name, its identity's expiry is a date.
    let (_, _, body) = page(&h, "/console/audit?action=agent.enroll", Some(&admin)).await;
    let not_after = agent.cert_not_after;
    let date = crate::web::when(not_after);
    assert!(body.contains(&agent_link), "the agent acts by name: {body}");
    assert!(
        body.contains("<dt>not after</dt><dd><time datetime=\"") && body.contains(&date),
        "{body}"
    );
    assert!(
        !body.contains(&not_after.unix_timestamp().to_string()),
        "no Unix time left"
    );
    let main = &body[body.find("<main").unwrap()..];
    assert!(
        !main.contains("{&quot;") && !main.contains("{\""),
        "no raw JSON: {main}"
    );

    // A certificate's own trail on its page, the same way.
    let (_, _, body) = page(&h, &format!("/console/certificates/{id}"), Some(&admin)).await;
    assert!(body.contains("<dl class=\"details\">"), "{body}");
    assert!(body.contains(&format!(
        r#"<a href="/console/certificates/{id}">certificate web.pages.example.com</a>"#
    )));
}
