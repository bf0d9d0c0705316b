//! The poll path answers as the router does: the same status, headers and
//! body for the same request, the same request counter and access line.

use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode, header};
use certflow_core::agents::AgentStatus;
use certflow_core::model::Actor;

use super::*;
use crate::telemetry::observe::REQUEST_ID;

/// An agent listener's application over a fresh SQLite file, with one
/// enrolled agent whose certificate the connection presents.
pub(crate) struct Fixture {
    pub ctx: ConnContext,
    pub agents: certflow_services::agents::Agents,
    pub agent: uuid::Uuid,
    /// The agent's identity certificate and its PKCS#8 key.
    pub cert_der: Vec<u8>,
    pub key: certflow_pki::PrivateKey,
    _dir: tempfile::TempDir,
}

pub(crate) async fn fixture() -> Fixture {
    use certflow_blob::ObjectBlobStore;
    use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        certflow_store::SqliteStore::open(&dir.path().join("certflow.db"))
            .await
            .unwrap(),
    );
    let services = certflow_services::Services::new(
        store.clone(),
        Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap()),
        Sealer::new(Arc::new(LocalKeyProvider::new(
            MasterKey::generate().unwrap(),
            vec![],
        ))),
        None,
    );
    services
        .ensure_ca(
            &certflow_services::CaSettings {
                name: "test".into(),
                key_type: certflow_core::model::KeyType::EcdsaP256,
                root_validity_days: 3650,
                intermediate_validity_days: 1825,
            },
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let agents = certflow_services::agents::Agents::new(
        &services,
        store.clone(),
        certflow_services::agents::AgentSettings::default(),
    );
    let deploy = crate::deploy_cache::DeployState::new(
        certflow_services::deployments::Deployments::new(
            &services,
            store.clone(),
            store.clone(),
            certflow_services::deployments::DeploymentSettings::default(),
        ),
        certflow_store::ChangeFeed::local(),
    );
    let now = time::OffsetDateTime::now_utc();
    agents.ensure_ca(now).await.unwrap();
    let token = agents
        .create_join_token(
            &admin(),
            &certflow_services::agents::NewJoinToken {
                name: "poll".into(),
                teams: vec!["a".into()],
                ttl_minutes: 10,
            },
            now,
        )
        .await
        .unwrap()
        .token;
    let key = certflow_pki::PrivateKey::generate(certflow_core::model::KeyType::EcdsaP256).unwrap();
    let csr = certflow_pki::build_csr(
        &key,
        &[certflow_core::SubjectName::Dns("agent.test".into())],
    )
    .unwrap();
    let identity = agents.enroll(&token, &csr, None, None, now).await.unwrap();
    let der = certflow_pki::parse_pem_certs("identity", &identity.certificate_pem)
        .unwrap()
        .remove(0);
    let verifier =
        super::super::client_verifier(&agents.ca_certificates_der().await.unwrap()).unwrap();
    let config = crate::config::AgentConfig {
        rate_limit_per_sec: 1e6,
        rate_limit_burst: 1e6,
        ..Default::default()
    };
    let state = AgentState::new(agents.clone(), deploy, &config, verifier).unwrap();
    let ctx = ConnContext {
        app: AgentApp::new(state),
        info: ConnInfo {
            peer: "127.0.0.1:40000".parse().unwrap(),
        },
        identity: Some(Arc::new(ClientIdentity::read(&der))),
    };
    Fixture {
        ctx,
        agents,
        agent: identity.agent.id,
        cert_der: der,
        key,
        _dir: dir,
    }
}

fn admin() -> Actor {
    Actor {
        subject: "poll-test".into(),
        source: None,
    }
}

/// A poll request with `headers`, at `uri`.
fn request(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

/// Status, headers (but the request id) and body of an answer.
async fn seen(resp: Response) -> (StatusCode, HeaderMap, String, String) {
    let (mut parts, body) = resp.into_parts();
    let id = parts
        .headers
        .remove(REQUEST_ID)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    // axum's router writes Content-Length itself; on the poll path hyper
    // writes the same one from the body's exact size.
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
        id,
    )
}

/// The router's answer (as the listener gave it before this path), and this path's.
async fn both(
    f: &Fixture,
    uri: &str,
    headers: &[(&str, &str)],
    with_identity: bool,
) -> [(StatusCode, HeaderMap, String, String); 2] {
    let mut routed = request(uri, headers);
    if with_identity {
        routed.extensions_mut().insert(f.ctx.info.clone());
        routed
            .extensions_mut()
            .insert(f.ctx.identity.clone().unwrap());
    }
    let routed = f.ctx.app.router.clone().oneshot(routed).await.unwrap();
    let fast = if with_identity {
        f.ctx.poll(request(uri, headers)).await
    } else {
        let anonymous = ConnContext {
            app: f.ctx.app.clone(),
            info: f.ctx.info.clone(),
            identity: None,
        };
        anonymous.poll(request(uri, headers)).await
    };
    [seen(routed).await, seen(fast).await]
}

fn same(what: &str, [routed, fast]: &[(StatusCode, HeaderMap, String, String); 2]) {
    assert_eq!(
        (&routed.0, &routed.1, &routed.2),
        (&fast.0, &fast.1, &fast.2),
        "{what}: the router's answer, then the poll path's"
    );
}

/// The same answers both ways: 200 with the ETag, 304 for it, problem
/// documents for a bad `wait`, an unknown parameter, no certificate and a
/// disabled agent; the client's request id kept, a bad one replaced.
#[tokio::test]
async fn the_poll_path_answers_as_the_router_does() {
    let f = fixture().await;
    let url = ASSIGNMENTS;
    let first = both(&f, url, &[], true).await;
    same("first poll", &first);
    assert_eq!(first[0].0, StatusCode::OK, "{}", first[0].2);
    let etag = first[1].1[header::ETAG].to_str().unwrap().to_owned();

    let unchanged = both(&f, url, &[("if-none-match", &etag)], true).await;
    same("unchanged", &unchanged);
    assert_eq!(unchanged[1].0, StatusCode::NOT_MODIFIED);

    let weak = format!("\"other\", W/{etag}");
    same(
        "a weak tag among others",
        &both(&f, url, &[("if-none-match", &weak)], true).await,
    );
    same(
        "a stale tag",
        &both(&f, url, &[("if-none-match", "\"stale\"")], true).await,
    );

    let ids = both(&f, url, &[(REQUEST_ID, "poll-7.a")], true).await;
    same("client request id", &ids);
    assert_eq!(ids[0].3, "poll-7.a");
    assert_eq!(ids[1].3, "poll-7.a");
    let made = both(&f, url, &[(REQUEST_ID, "two words")], true).await;
    for (_, _, _, id) in &made {
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }

    for (what, uri) in [
        ("bad wait", "/agent/v1/assignments?wait=soon"),
        ("unknown parameter", "/agent/v1/assignments?since=1"),
    ] {
        let answers = both(&f, uri, &[], true).await;
        same(what, &answers);
        assert_eq!(answers[1].0, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(
            answers[1].1[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
    let anonymous = both(&f, url, &[], false).await;
    same("no client certificate", &anonymous);
    assert_eq!(anonymous[1].0, StatusCode::UNAUTHORIZED);

    f.agents
        .set_status(
            &admin(),
            f.agent,
            AgentStatus::Disabled,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let disabled = both(&f, url, &[("if-none-match", &etag)], true).await;
    same("disabled agent", &disabled);
    assert_eq!(disabled[1].0, StatusCode::FORBIDDEN, "{}", disabled[1].2);
}

/// Requests the poll path does not answer go to the router, as before.
#[test]
fn only_get_of_the_exact_path_takes_the_poll_path() {
    assert!(is_poll(&Method::GET, ASSIGNMENTS));
    assert!(!is_poll(&Method::HEAD, ASSIGNMENTS));
    assert!(!is_poll(&Method::POST, ASSIGNMENTS));
    assert!(!is_poll(&Method::GET, "/agent/v1/assignments/"));
    assert!(!is_poll(&Method::GET, "/agent/v1/whoami"));
}

/// A writer the JSON log lines go to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The poll path's access lines and request counts are the router's: a
/// 304 at debug, other answers at info with the agent as actor, each inside
/// the `request` span with its id, group and route; every answer counted
/// in `certflow_http_requests_total` under the route.
#[tokio::test(flavor = "current_thread")]
async fn the_poll_path_logs_and_counts_as_the_router_does() {
    let f = fixture().await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let count = |status: u16| {
        let mut text = String::new();
        metrics::render(&mut text);
        let series = format!(
            "certflow_http_requests_total{{group=\"agent\",route=\"{ASSIGNMENTS}\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    let (ok_before, not_modified_before) = (count(200), count(304));
    let first = both(&f, ASSIGNMENTS, &[(REQUEST_ID, "log-1")], true).await;
    let etag = first[1].1[header::ETAG].to_str().unwrap().to_owned();
    both(
        &f,
        ASSIGNMENTS,
        &[(REQUEST_ID, "log-2"), ("if-none-match", &etag)],
        true,
    )
    .await;
    // Other tests of this binary may poll too: at least this test's two of each.
    assert!(count(200) >= ok_before + 2);
    assert!(count(304) >= not_modified_before + 2);

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let access: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["fields"]["message"] == "access")
        .map(|mut l| {
            // What may differ between two requests: their timing.
            l["fields"]["latency_ms"] = serde_json::Value::Null;
            l["timestamp"] = serde_json::Value::Null;
            l
        })
        .collect();
    assert_eq!(access.len(), 4, "{text}");
    assert_eq!(
        access[0], access[1],
        "200: the router's line, then the poll path's"
    );
    assert_eq!(
        access[2], access[3],
        "304: the router's line, then the poll path's"
    );
    let ok = &access[1];
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["target"], "certflow::access");
    assert_eq!(ok["span"]["name"], "request");
    assert_eq!(ok["span"]["request_id"], "log-1");
    assert_eq!(ok["span"]["group"], "agent");
    assert_eq!(ok["span"]["route"], ASSIGNMENTS);
    assert_eq!(ok["fields"]["status"], 200);
    assert_eq!(ok["fields"]["actor"], format!("agent:{}", f.agent));
    let unchanged = &access[3];
    assert_eq!(unchanged["level"], "DEBUG");
    assert_eq!(unchanged["span"]["request_id"], "log-2");
    assert_eq!(unchanged["fields"]["status"], 304);
}
