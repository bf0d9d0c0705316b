//! Router tests of destinations (issue 19) on the console API and the
//! certificate page: who may attach is decided before the body is read (a
//! caller without the permission gets 403 whatever it sends, never a 400
//! that describes a valid body); the page attaches and detaches through
//! CSRF-checked forms and shows a refusal next to the form. The console
//! request form, revocation and the PKCS#12 download are authorised before
//! their bodies are read too.

use super::*;

fn sessions() -> crate::session::SessionSettings {
    crate::session::SessionSettings {
        idle_timeout: time::Duration::minutes(30),
        absolute_timeout: time::Duration::hours(12),
        console_origin: "https://certflow.test".into(),
    }
}

/// A certificate of `team`, requested with the bootstrap token.
async fn certificate(h: &Harness, team: &str) -> String {
    let (status, body) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(json!({ "names": [format!("{}.example.com", uuid::Uuid::now_v7().simple())], "team": team })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// `POST uri` with a raw JSON `body` as the bearer `token`.
async fn post_raw(h: &Harness, token: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
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
async fn attaching_is_authorised_before_the_body_is_read() {
    let h = harness_with(vec![Arc::new(FixedPrincipals)]).await;
    let cert = certificate(&h, "a").await;
    let uri = format!("/console/api/v1/certificates/{cert}/destinations");
    let bodies = [
        "{not json",
        r#"{"kind":"nope","region":"eu-west-1"}"#,
        r#"{"kind":"aws-acm","region":"EU WEST"}"#,
        r#"{"kind":"aws-acm","region":"eu-west-1","surprise":1}"#,
        r#"{"kind":"aws-acm","region":"eu-west-1"}"#,
    ];
    for token in ["role:viewer:a", "role:operator:b", "nobody:a"] {
        for body in bodies {
            let (status, problem) = post_raw(&h, token, &uri, body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{token} {body}: {problem}");
        }
    }
    // The team's operator gets the body's own problems, then the 201.
    for body in &bodies[..4] {
        let (status, problem) = post_raw(&h, "role:operator:a", &uri, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
    }
    let (status, created) = post_raw(&h, "role:operator:a", &uri, bodies[4]).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // An unknown certificate is 404 before the body matters, for anyone allowed.
    let missing = format!(
        "/console/api/v1/certificates/{}/destinations",
        uuid::Uuid::now_v7()
    );
    let (status, _) = post_raw(&h, "role:admin:z", &missing, "{not json").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn revoke_and_pkcs12_are_authorised_before_the_body_is_read() {
    let h = harness_with(vec![Arc::new(FixedPrincipals)]).await;
    let cert = certificate(&h, "a").await;
    for (action, body) in [
        ("revoke", r#"{"reason":"notAReason"}"#),
        ("revoke", "{not json"),
        ("pkcs12", r#"{"password":""}"#),
        ("pkcs12", "{not json"),
    ] {
        let uri = format!("/console/api/v1/certificates/{cert}/{action}");
        for token in ["role:viewer:a", "role:operator:b", "nobody:a"] {
            let (status, problem) = post_raw(&h, token, &uri, body).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{token} {action} {body}: {problem}"
            );
        }
        // The team's operator is told what is wrong with the body.
        let (status, problem) = post_raw(&h, "role:operator:a", &uri, body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{action} {body}: {problem}"
        );
    }
}

/// A signed-in person's session: cookie and CSRF token.
async fn person(h: &Harness, role: Role, team: &str) -> (String, String) {
    let principal = Principal {
        subject: format!("{}-{team}", role.as_str()),
        kind: PrincipalKind::Person,
        roles: vec![role],
        teams: vec![team.to_owned()],
    };
    let (id, session) = h
        .sessions
        .as_ref()
        .unwrap()
        .create(principal, None, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    (id, session.csrf_token)
}

/// Sends a request with the session: status, `Location`, body.
async fn send(
    h: &Harness,
    (cookie, csrf): &(String, String),
    method: &str,
    uri: &str,
    form: Option<&str>,
) -> (StatusCode, String, String) {
    let mut req = Request::builder().method(method).uri(uri).header(
        header::COOKIE,
        format!("{}={cookie}", crate::session::COOKIE),
    );
    let body = match form {
        Some(f) => {
            req = req
                .header(header::ORIGIN, "https://certflow.test")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            let sep = if f.is_empty() { "" } else { "&" };
            Body::from(format!("{f}{sep}csrf={csrf}"))
        }
        None => Body::empty(),
    };
    let resp = h
        .app
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        location,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_certificate_page_attaches_and_detaches_destinations() {
    let h = harness_full(Vec::new(), unlimited(), Some(sessions())).await;
    let cert = certificate(&h, "a").await;
    let page = format!("/console/certificates/{cert}");
    let attach = format!("{page}/destinations");
    let operator = person(&h, Role::Operator, "a").await;
    let viewer = person(&h, Role::Viewer, "a").await;
    let other = person(&h, Role::Operator, "b").await;

    // The operator sees the form; the viewer neither the form nor a detach button.
    let (status, _, body) = send(&h, &operator, "GET", &page, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"id="destination-form""#), "{body}");
    let (_, _, body) = send(&h, &viewer, "GET", &page, None).await;
    assert!(!body.contains(r#"id="destination-form""#));

    // Refused before the form is read, whatever it holds.
    for who in [&viewer, &other] {
        for form in ["kind=aws-acm&region=eu-west-1", "kind=nope&region=EU"] {
            let (status, _, _) = send(&h, who, "POST", &attach, Some(form)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{form}");
        }
    }
    // Without the session's CSRF token: refused.
    let forged = (operator.0.clone(), "forged".to_owned());
    let (status, _, _) = send(
        &h,
        &forged,
        "POST",
        &attach,
        Some("kind=aws-acm&region=eu-west-1"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A bad field: the page again, the reason shown, the values kept.
    let (status, _, body) = send(
        &h,
        &operator,
        "POST",
        &attach,
        Some("kind=aws-elbv2-listener&region=eu-west-1&listener_arn=not-an-arn&default=yes"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains(r#"id="destination-err""#), "{body}");
    assert!(
        body.contains("listener_arn: must be an ELBv2 listener ARN"),
        "{body}"
    );
    assert!(body.contains(r#"value="not-an-arn""#));

    // Attached: back to the page, listed with a detach form.
    let listener = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2";
    let form = format!(
        "kind=aws-elbv2-listener&region=eu-west-1&listener_arn={}&role_arn={}&role_external_id=certflow-test",
        urlencoding(listener),
        urlencoding("arn:aws:iam::111122223333:role/certflow")
    );
    let (status, location, _) = send(&h, &operator, "POST", &attach, Some(&form)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, format!("{page}?done=destination-attached"));
    let (status, _, _) = send(
        &h,
        &operator,
        "POST",
        &attach,
        Some("kind=aws-acm&region=eu-west-1"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, list) = h
        .json(
            "GET",
            &format!("/console/api/v1/certificates/{cert}/destinations"),
            None,
        )
        .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{list}");
    let lb = items
        .iter()
        .find(|d| d["kind"] == "aws-elbv2-listener")
        .unwrap();
    assert_eq!(lb["listener_arn"], listener);
    assert_eq!(lb["role_arn"], "arn:aws:iam::111122223333:role/certflow");
    assert_eq!(lb["default"], false);
    let lb_id = lb["id"].as_str().unwrap().to_owned();
    let (_, _, body) = send(
        &h,
        &operator,
        "GET",
        &format!("{page}?done=destination-attached"),
        None,
    )
    .await;
    assert!(body.contains("The destination was attached"));
    assert!(
        body.contains(&format!("/destinations/{lb_id}/detach")),
        "{body}"
    );

    // The same place twice: the page again with the conflict.
    let (status, _, body) = send(&h, &operator, "POST", &attach, Some(&form)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body.contains("already has this aws-elbv2-listener destination"),
        "{body}"
    );

    // Detach: the viewer may not, the operator may.
    let detach = format!("{page}/destinations/{lb_id}/detach");
    let (status, _, _) = send(&h, &viewer, "POST", &detach, Some("")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, location, _) = send(&h, &operator, "POST", &detach, Some("")).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "never delivered: nothing to unbind"
    );
    assert_eq!(location, format!("{page}?done=destination-detached"));
    let (_, list) = h
        .json(
            "GET",
            &format!("/console/api/v1/certificates/{cert}/destinations"),
            None,
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (status, _, _) = send(&h, &operator, "POST", &detach, Some("")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// `application/x-www-form-urlencoded` value encoding.
fn urlencoding(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_owned()
}

#[tokio::test]
async fn a_csr_keyed_certificate_page_says_why_it_cannot_be_pushed() {
    let h = harness_full(Vec::new(), unlimited(), Some(sessions())).await;
    let csr = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/csr/p256.csr"
    ))
    .unwrap();
    let (status, cert) = h
        .json(
            "POST",
            "/console/api/v1/certificates",
            Some(json!({ "team": "a", "csr": csr })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    let operator = person(&h, Role::Operator, "a").await;
    let page = format!("/console/certificates/{}", cert["id"].as_str().unwrap());
    let (_, _, body) = send(&h, &operator, "GET", &page, None).await;
    assert!(body.contains(r#"id="destinations-csr""#), "{body}");
    assert!(!body.contains(r#"id="destination-form""#));
    let (status, _, body) = send(
        &h,
        &operator,
        "POST",
        &format!("{page}/destinations"),
        Some("kind=aws-acm&region=eu-west-1"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("signing request"), "{body}");
}

#[tokio::test]
async fn the_request_form_is_authorised_before_it_is_validated() {
    let h = harness_full(Vec::new(), unlimited(), Some(sessions())).await;
    let viewer = person(&h, Role::Viewer, "a").await;
    let other = person(&h, Role::Operator, "b").await;
    let operator = person(&h, Role::Operator, "a").await;
    for (who, form) in [
        (&viewer, "team=a&names=ok.example.com"),
        (&viewer, "team=&names=&validity_days=x"),
        (&other, "team=a&names=ok.example.com"),
        (&other, "team=a&names=&validity_days=x"),
    ] {
        let (status, _, _) = send(&h, who, "POST", "/console/certificates/new", Some(form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form}");
    }
    // An operator of the team still gets the form back with its messages.
    let (status, _, body) = send(
        &h,
        &operator,
        "POST",
        "/console/certificates/new",
        Some("team=a&names=&validity_days=x"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("a whole number of days"), "{body}");
    let (status, _, body) = send(
        &h,
        &operator,
        "POST",
        "/console/certificates/new",
        Some("team=&names=ok.example.com"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("choose the team"), "{body}");
}
