//! The route × caller table (`crates/server/tests/routes.toml`), written from
//! the documentation rather than from `access::declared()` or
//! `Principal::can()`, against the real routers: every routed method and
//! path has a row, every row is routed, and every caller of every row gets
//! the table's outcome. Declared in `http/tests.rs` to share its harness.

use std::collections::BTreeSet;

use figment::providers::Format as _;

use super::*;
use crate::agent_api::{ClientIdentity, ConnInfo};

const TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/routes.toml");

#[derive(serde::Deserialize)]
struct Table {
    route: Vec<Row>,
}

/// One row of the table (fields as documented at its top).
#[derive(serde::Deserialize)]
struct Row {
    surface: String,
    method: String,
    path: String,
    uri: Option<String>,
    body: Option<String>,
    allowed: Vec<String>,
    expect: Option<u16>,
    /// The refused callers' status where it is not 401/403 (stated why in the row).
    refused: Option<u16>,
}

fn table() -> Vec<Row> {
    assert!(std::path::Path::new(TABLE).is_file(), "{TABLE} is missing");
    let t: Table = figment::Figment::from(figment::providers::Toml::file(TABLE))
        .extract()
        .unwrap_or_else(|e| panic!("{TABLE}: {e}"));
    t.route
}

/// The methods and paths `router` serves, read from axum's `Debug` of its
/// path router (axum offers no other listing): `RouteId(n): "/path"` in the
/// node, `RouteId(n): MethodRouter(MethodRouter { get: Route, head: None, ... })`
/// in the routes. A route mounted as a service counts as method `*`.
fn routed(router: &axum::Router) -> BTreeSet<(String, String)> {
    let debug = format!("{router:?}");
    let own = debug
        .split(", fallback_router:")
        .next()
        .expect("a path router");
    let (routes, node) = own
        .split_once("node: Node { paths: {")
        .expect("axum's Debug layout");
    let mut paths = std::collections::HashMap::new();
    for entry in node.split("RouteId(").skip(1) {
        let (id, rest) = entry.split_once("): \"").expect("RouteId(n): \"path\"");
        let path = rest.split('"').next().unwrap_or_default();
        paths.insert(id.to_owned(), path.to_owned());
    }
    const METHODS: [&str; 9] = [
        "get", "head", "delete", "options", "patch", "post", "put", "trace", "connect",
    ];
    let mut out = BTreeSet::new();
    for entry in routes.split("RouteId(").skip(1) {
        let Some((id, rest)) = entry.split_once("): ") else {
            continue;
        };
        let Some(path) = paths.get(id) else { continue };
        if path.contains("__private__axum") {
            continue;
        }
        if let Some(fields) = rest.strip_prefix("MethodRouter(MethodRouter { ") {
            for m in METHODS {
                let value = fields
                    .split(&format!("{m}: "))
                    .nth(1)
                    .and_then(|v| v.split([',', ' ', '(']).next())
                    .unwrap_or("None");
                if value != "None" {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
        } else {
            out.insert(("*".into(), path.clone()));
        }
    }
    assert!(
        !out.is_empty(),
        "no route read from the router's Debug: {own:.300}"
    );
    out
}

/// The ids the rows' placeholders stand for.
struct Fixtures {
    cert: String,
    cert2: String,
    sub: String,
    delivery: String,
    agent: String,
    agent_cert: Vec<u8>,
    asset: String,
    /// A CSR as a JSON string (quoted).
    csr: String,
}

impl Fixtures {
    fn fill(&self, s: &str) -> String {
        s.replace("{cert2}", &self.cert2)
            .replace("{cert}", &self.cert)
            .replace("{sub}", &self.sub)
            .replace("{delivery}", &self.delivery)
            .replace("{agent}", &self.agent)
            .replace("{issuer}", "test")
            .replace("{asset}", &self.asset)
            .replace("{random}", &uuid::Uuid::now_v7().simple().to_string())
            .replace("{csr}", self.csr.trim_matches('"'))
    }
}

/// A fresh join token for an agent of team "a".
async fn join_token(h: &Harness) -> String {
    h.agents
        .create_join_token(
            &certflow_core::model::Actor {
                subject: "route-table".into(),
                source: None,
            },
            &certflow_services::agents::NewJoinToken {
                name: format!("t{}", uuid::Uuid::now_v7().simple()),
                teams: vec!["a".into()],
                ttl_minutes: 10,
            },
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap()
        .token
}

async fn fixtures(h: &Harness) -> Fixtures {
    let post = |uri: &'static str, body: Value| async move {
        let (status, v) = h.json("POST", uri, Some(body)).await;
        assert!(status.is_success(), "{uri}: {status} {v}");
        v
    };
    let sub = post(
        "/console/api/v1/subscriptions",
        json!({ "team": "a", "events": ["issued"], "channel": { "type": "webhook", "url": "https://hooks.example.com/x", "format": "json" } }),
    )
    .await;
    let cert = post(
        "/console/api/v1/certificates",
        json!({ "team": "a", "names": ["table.example.com"] }),
    )
    .await;
    let cert2 = post(
        "/console/api/v1/certificates",
        json!({ "team": "a", "names": ["table2.example.com"] }),
    )
    .await;
    let (_, deliveries) = h
        .json("GET", "/console/api/v1/deliveries?team=a", None)
        .await;
    let identity = h
        .agents
        .enroll(
            &join_token(h).await,
            fixture("p256.csr").as_bytes(),
            None,
            None,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let agent_cert = certflow_pki::parse_pem_certs("identity", &identity.certificate_pem)
        .unwrap()
        .remove(0);
    Fixtures {
        cert: cert["id"].as_str().unwrap().to_owned(),
        cert2: cert2["id"].as_str().unwrap().to_owned(),
        sub: sub["id"].as_str().unwrap().to_owned(),
        delivery: deliveries["items"][0]["id"].as_str().unwrap().to_owned(),
        agent: identity.agent.id.to_string(),
        agent_cert,
        asset: stylesheet(h).await,
        csr: serde_json::to_string(&fixture("p256.csr")).unwrap(),
    }
}

/// The hashed file name of the stylesheet the front door links to.
async fn stylesheet(h: &Harness) -> String {
    let resp = h
        .app
        .clone()
        .oneshot(Request::get("/console/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let page = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page);
    let (_, rest) = page
        .split_once("/console/static/")
        .expect("the front door links its stylesheet");
    rest.split('"').next().unwrap().to_owned()
}

/// Session settings (the harness's provider never answers).
fn session_settings() -> crate::session::SessionSettings {
    crate::session::SessionSettings {
        idle_timeout: time::Duration::minutes(30),
        absolute_timeout: time::Duration::hours(12),
        console_origin: "https://certflow.test".into(),
    }
}

/// The callers of a surface (refused ones first, so that an allowed
/// caller's destructive call cannot turn a refusal into a 404).
fn callers(surface: &str) -> &'static [&'static str] {
    match surface {
        "api" => &[
            "anonymous",
            "agent",
            "viewer-b",
            "operator-b",
            "viewer-a",
            "operator-a",
            "admin",
        ],
        "page" => &[
            "anonymous",
            "viewer-b",
            "operator-b",
            "viewer-a",
            "operator-a",
            "admin",
        ],
        "agent" => &["anonymous", "admin", "joiner", "agent"],
        "public" => &["everyone"],
        other => panic!("unknown surface {other} in {TABLE}"),
    }
}

fn principal(caller: &str) -> Option<Principal> {
    let (role, team) = caller.split_once('-')?;
    Some(Principal {
        subject: format!("table-{caller}"),
        kind: PrincipalKind::Person,
        roles: vec![Role::parse(role).unwrap()],
        teams: vec![
            if team == "a" || team == "b" {
                team
            } else {
                "z"
            }
            .to_owned(),
        ],
    })
}

/// `admin` here is an administrator of no team of the resources (team "z").
fn person(caller: &str) -> Option<Principal> {
    if caller == "admin" {
        return principal("admin-z");
    }
    principal(caller)
}

/// The request of `caller` for `row`.
async fn request(h: &Harness, f: &Fixtures, row: &Row, caller: &str) -> Request<Body> {
    let uri = f.fill(row.uri.as_deref().unwrap_or(&row.path));
    let mut body = row.body.as_deref().map(|b| f.fill(b));
    let mut req = Request::builder().method(row.method.as_str()).uri(&uri);
    match row.surface.as_str() {
        "api" => {
            let token = match caller {
                "anonymous" => None,
                "agent" => Some("agent".to_owned()),
                "admin" => Some("role:admin:z".to_owned()),
                other => {
                    let (role, team) = other.split_once('-').unwrap();
                    Some(format!("role:{role}:{team}"))
                }
            };
            if let Some(t) = token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
        }
        "page" => {
            if let Some(p) = person(caller) {
                // A fresh session per request: a sign-out row ends only its own.
                let (id, current) = h
                    .sessions
                    .as_ref()
                    .unwrap()
                    .create(p, None, time::OffsetDateTime::now_utc())
                    .await
                    .unwrap();
                req = req
                    .header(header::COOKIE, format!("{}={id}", crate::session::COOKIE))
                    .header("X-CSRF-Token", current.csrf_token.clone());
                if let Some(b) = body.as_mut() {
                    let sep = if b.is_empty() { "" } else { "&" };
                    *b = format!("{b}{sep}csrf={}", current.csrf_token);
                }
            }
            if body.is_some() {
                req = req
                    .header(header::ORIGIN, "https://certflow.test")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            }
        }
        "agent" => {
            if caller == "admin" {
                req = req.header(header::AUTHORIZATION, format!("Bearer {}", h.token));
            }
            if caller == "joiner" {
                req = req.header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", join_token(h).await),
                );
            }
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            req = req.extension(ConnInfo {
                peer: "127.0.0.1:40000".parse().unwrap(),
            });
            if caller == "agent" {
                req = req.extension(Arc::new(ClientIdentity::read(&f.agent_cert)));
            }
        }
        _ => {
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/ocsp-request");
            }
        }
    }
    req.body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap()
}

/// Statuses an allowed caller may get: success, a redirect, or a 4xx about
/// the request itself.
fn allowed_status(status: StatusCode) -> bool {
    status.is_success()
        || status.is_redirection()
        || [400, 404, 409, 413, 415, 422].contains(&status.as_u16())
}

/// Whether `status` (with `location`) is the refusal `caller` should get.
fn refused_status(surface: &str, caller: &str, status: StatusCode, location: &str) -> bool {
    match (surface, caller) {
        ("api", "anonymous") | ("agent", _) => status == StatusCode::UNAUTHORIZED,
        ("api", _) => status == StatusCode::FORBIDDEN,
        // A signed-out browser goes to the sign-in; JSON routes say 401.
        ("page", "anonymous") => {
            (status == StatusCode::SEE_OTHER && location.starts_with("/console/login"))
                || status == StatusCode::UNAUTHORIZED
        }
        _ => status == StatusCode::FORBIDDEN,
    }
}

#[tokio::test]
async fn route_table_matches_the_routers_and_every_callers_outcome() {
    let h = harness_full(
        vec![Arc::new(FixedPrincipals)],
        unlimited(),
        Some(session_settings()),
    )
    .await;
    let rows = table();

    // Both directions: the served routes (console listener as `serve`
    // assembles it, and the agent listener) against the table's rows.
    let console = h.app.clone().merge(certflow_acme::http01_router(
        certflow_acme::Http01Tokens::new(),
    ));
    let verifier =
        crate::agent_api::client_verifier(&h.agents.ca_certificates_der().await.unwrap()).unwrap();
    let agent_state = crate::agent_api::routes::AgentState::new(
        h.agents.clone(),
        h.deploy.clone(),
        &crate::config::AgentConfig::default(),
        verifier,
    )
    .unwrap();
    let agent_app = crate::agent_api::routes::router(agent_state);
    let mut served = routed(&console);
    served.extend(routed(&agent_app));
    let listed: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let missing: Vec<String> = served
        .difference(&listed)
        .map(|(m, p)| format!("{m} {p} is routed but has no row in {TABLE}: add one with the callers the documentation allows"))
        .collect();
    let stale: Vec<String> = listed
        .difference(&served)
        .map(|(m, p)| format!("{m} {p} has a row in {TABLE} but is not routed"))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{}",
        [missing, stale].concat().join("\n")
    );

    let f = fixtures(&h).await;
    let mut wrong = Vec::new();
    let mut walked = 0;
    for row in &rows {
        for caller in callers(&row.surface) {
            let allowed = row.allowed.iter().any(|a| a == caller || a == "everyone");
            let req = request(&h, &f, row, caller).await;
            let app = if row.surface == "agent" {
                agent_app.clone()
            } else {
                console.clone()
            };
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let ok = if allowed {
                match row.expect {
                    Some(e) => status.as_u16() == e,
                    None => allowed_status(status),
                }
            } else if let (Some(r), false) = (row.refused, *caller == "anonymous") {
                status.as_u16() == r
            } else {
                refused_status(&row.surface, caller, status, &location)
            };
            if !ok {
                let body = axum::body::to_bytes(resp.into_body(), 4096)
                    .await
                    .unwrap_or_default();
                wrong.push(format!(
                    "{caller} {} {} ({}): {} but got {status} {}",
                    row.method,
                    row.path,
                    row.uri.as_deref().unwrap_or(""),
                    if allowed { "allowed" } else { "refused" },
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ));
            }
            walked += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {walked} outcomes differ from {TABLE}:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(walked > 300, "only {walked} route/caller pairs walked");
}
