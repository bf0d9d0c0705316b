//! Request ids, access logs and draining, for both listeners.
//!
//! [`access_log`] wraps every request: it keeps the client's `x-request-id`
//! when it is a plausible id (else makes one, a UUIDv7), hands it to the
//! handlers as tower-http's [`RequestId`], answers with it, runs the request
//! inside a `request` span carrying it (so every line logged on the way has
//! it), and writes one `access` line per request with the route group,
//! matched route, method, status, latency, the authenticated actor when
//! there is one and the certificate id when the route names one. Query
//! strings, headers and bodies are never logged: they may carry tokens.
//!
//! The actor is only known inside the authentication middleware, so
//! [`note_actor`] (a route layer inside it) and the agent listener's guard
//! write it into a slot the access log reads afterwards.
//!
//! [`Draining`] is the flag `certflow serve` raises on SIGTERM: `/readyz`
//! then answers 503 so load balancers stop sending new requests while the
//! ones in flight finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use certflow_core::model::Actor;
use tower_http::request_id::RequestId;
use tracing::Instrument as _;

use super::metrics::{UNMATCHED, group_of, route_label};

/// The request id header, read and answered.
pub const REQUEST_ID: &str = "x-request-id";

/// [`REQUEST_ID`] as a header name.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);

/// Longest client-chosen request id kept; longer ones are replaced.
const MAX_ID_LEN: usize = 128;

/// Whether a client's request id is kept: 1-128 characters of `[A-Za-z0-9._:-]`
/// (no spaces, quotes or control characters to confuse log readers).
fn plausible_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ID_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// Who made the request, filled in by the authentication layers.
#[derive(Clone, Default)]
pub struct ActorSlot(Arc<Mutex<Option<String>>>);

impl ActorSlot {
    /// Records who the request is from (for its access line).
    pub fn set(&self, who: String) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(who);
        }
    }

    fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// The certificate id a route names (`/certificates/{id}`,
/// `{certificate_id}`), read from the path by the route template.
fn certificate_of(route: &str, path: &str) -> Option<String> {
    let mut previous = "";
    for (template, actual) in route.split('/').zip(path.split('/')) {
        let names_certificate =
            template == "{certificate_id}" || (template == "{id}" && previous == "certificates");
        if names_certificate && uuid::Uuid::parse_str(actual).is_ok() {
            return Some(actual.to_owned());
        }
        previous = template;
    }
    None
}

/// A new request id: a UUIDv7 (time-ordered, so ids sort like the log),
/// formatted on the stack. Its random bits come from uuid's `fast-rng`
/// feature (a userspace generator seeded from the OS once per thread, see
/// this crate's Cargo.toml) instead of a `getrandom` system call per
/// request, which was visible in the profile of agent polls.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The request id of a request with `headers`: the client's when plausible,
/// else a new one. Copied rather than cloned: a clone would share the
/// connection's read buffer and keep it alive for the whole request (long polls).
fn request_id_of(headers: &HeaderMap) -> HeaderValue {
    match headers.get(REQUEST_ID) {
        Some(v) if plausible_id(v) => {
            HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| new_request_id())
        }
        _ => new_request_id(),
    }
}

/// One request's access record: its id, its `request` span and what its
/// access line says. [`access_log`] keeps one per request; the agent
/// listener's poll path (`agent_api::poll`) keeps one without the middleware.
pub struct Access {
    started: Instant,
    id: HeaderValue,
    span: tracing::Span,
    group: &'static str,
    method: Method,
    /// The route of a record whose span is made per run ([`Access::run`]).
    per_run: Option<&'static str>,
}

/// The `request` span of request `id` on `route` in group `group`.
fn request_span(id: &HeaderValue, group: &'static str, route: &str) -> tracing::Span {
    tracing::info_span!(
        "request",
        request_id = %id.to_str().unwrap_or("unknown"),
        group,
        route = %route,
    )
}

impl Access {
    /// Starts the record of a `method` request with `headers` on `route`
    /// (the matched template, or [`UNMATCHED`]) in route group `group`.
    pub fn begin(headers: &HeaderMap, method: &Method, route: &str, group: &'static str) -> Self {
        let started = Instant::now();
        let id = request_id_of(headers);
        let span = request_span(&id, group, route);
        Self {
            started,
            id,
            span,
            group,
            method: method.clone(),
            per_run: None,
        }
    }

    /// [`Access::begin`] for a request that may wait long between runs
    /// (the agents' long poll): its `request` span, with the same fields,
    /// is made anew each time [`Access::run`] polls the request, and is
    /// not kept while it waits. A span lives in the log subscriber's
    /// registry until dropped, with its formatted fields: kept for a
    /// parked poll, that was about 0.4 KB per connected agent
    /// (by its types; BENCHMARKS.md, goal 6).
    pub fn begin_per_run(
        headers: &HeaderMap,
        method: &Method,
        route: &'static str,
        group: &'static str,
    ) -> Self {
        Self {
            started: Instant::now(),
            id: request_id_of(headers),
            span: tracing::Span::none(),
            group,
            method: method.clone(),
            per_run: Some(route),
        }
    }

    /// Runs `fut`, the request (pinned by the caller, so that it is not
    /// moved into this future as well), inside its `request` span (for a record
    /// of [`Access::begin_per_run`], a span made for each poll of `fut`;
    /// the last one is kept for the access line).
    pub async fn run<F: Future>(&mut self, mut fut: std::pin::Pin<&mut F>) -> F::Output {
        let Some(route) = self.per_run else {
            return fut.instrument(self.span.clone()).await;
        };
        std::future::poll_fn(|cx| {
            let span = request_span(&self.id, self.group, route);
            let polled = span.in_scope(|| fut.as_mut().poll(cx));
            if polled.is_ready() {
                self.span = span;
            }
            polled
        })
        .await
    }

    /// The request id.
    pub fn id(&self) -> &HeaderValue {
        &self.id
    }

    /// The `request` span, to run the request in.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Answers the request id in `resp` and writes the access line;
    /// `actor` and `certificate` are asked for only when the line carries them.
    pub fn finish(
        self,
        resp: &mut Response,
        actor: impl FnOnce() -> Option<String>,
        certificate: impl FnOnce() -> Option<String>,
    ) {
        let status = resp.status().as_u16();
        resp.headers_mut().insert(REQUEST_ID_HEADER, self.id);
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let _in = self.span.enter();
        let method = &self.method;
        // Probes are scraped every few seconds, and an agent's poll answered
        // 304 (nothing changed) is the steady state of every agent: keep both
        // out of info logs. They are counted in the request metrics, and agents'
        // liveness is their `last_seen`. Formatting and writing the line was
        // about an eighth of a poll's CPU.
        if self.group == "probe" || (self.group == "agent" && status == 304) {
            tracing::debug!(target: "certflow::access", method = %method, status, latency_ms, "access");
        } else if status >= 500 {
            let (actor, certificate) = (actor(), certificate());
            tracing::warn!(target: "certflow::access", method = %method, status, latency_ms, actor, certificate, "access");
        } else {
            let (actor, certificate) = (actor(), certificate());
            tracing::info!(target: "certflow::access", method = %method, status, latency_ms, actor, certificate, "access");
        }
    }
}

/// Middleware (`Router::layer`, so it sees the matched route): request id,
/// span and one access-log line per request.
pub async fn access_log(mut req: Request, next: Next) -> Response {
    // The matched route is an `Arc<str>` inside: a clone, not a copy.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = route_label(matched.as_ref());
    let path = req.uri().path();
    let group = group_of(if route == UNMATCHED { path } else { route });
    let certificate = certificate_of(route, path);
    let access = Access::begin(req.headers(), req.method(), route, group);
    req.headers_mut()
        .insert(REQUEST_ID_HEADER, access.id().clone());
    req.extensions_mut()
        .insert(RequestId::new(access.id().clone()));
    let slot = ActorSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut resp = next.run(req).instrument(access.span().clone()).await;
    access.finish(&mut resp, || slot.get(), || certificate);
    resp
}

/// Route layer inside the console authentication: notes the actor.
pub async fn note_actor(req: Request, next: Next) -> Response {
    if let (Some(actor), Some(slot)) = (
        req.extensions().get::<Actor>(),
        req.extensions().get::<ActorSlot>(),
    ) {
        slot.set(actor.subject.clone());
    }
    next.run(req).await
}

/// Raised when the process starts shutting down; `/readyz` reads it.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    /// Starts draining.
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the process is draining.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn certificate_ids_come_from_the_route_template() {
        let id = "0195f1c8-0000-7000-8000-000000000000";
        assert_eq!(
            certificate_of(
                "/console/api/v1/certificates/{id}/renew",
                &format!("/console/api/v1/certificates/{id}/renew")
            )
            .as_deref(),
            Some(id)
        );
        assert_eq!(
            certificate_of(
                "/console/api/v1/agents/{id}/assignments/{certificate_id}",
                &format!("/console/api/v1/agents/{id}/assignments/{id}")
            )
            .as_deref(),
            Some(id)
        );
        // An agent's id is not a certificate's; garbage is not an id.
        assert_eq!(
            certificate_of(
                "/console/api/v1/agents/{id}/disable",
                &format!("/console/api/v1/agents/{id}/disable")
            ),
            None
        );
        assert_eq!(
            certificate_of(
                "/console/api/v1/certificates/{id}",
                "/console/api/v1/certificates/nope"
            ),
            None
        );
    }

    #[test]
    fn only_plausible_request_ids_are_kept() {
        for ok in ["abc", "0195f1c8-0000-7000-8000-000000000000", "a.b_c:d-e"] {
            assert!(plausible_id(&HeaderValue::from_static(ok)), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", "a b", "a\"b", "é", long.as_str()] {
            let v = HeaderValue::from_bytes(bad.as_bytes()).unwrap();
            assert!(!plausible_id(&v), "{bad:?}");
        }
    }

    /// The application over a fresh SQLite file, its CA and bootstrap token.
    struct App {
        router: axum::Router,
        token: String,
        store: Arc<certflow_store::SqliteStore>,
        _dir: tempfile::TempDir,
    }

    async fn app() -> App {
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
        )
        // A renewal expected to take four days: the 3-day certificate of
        // the metrics test is at risk.
        .with_renewal_margin(certflow_core::renewal::RenewalMargin {
            renewal: std::time::Duration::from_secs(4 * 86_400),
            ..crate::config::RenewalConfig::default().margin()
        });
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
        let token = crate::auth::ensure_bootstrap_token(store.as_ref())
            .await
            .unwrap()
            .unwrap();
        let bootstrap_hash = Arc::new(std::sync::RwLock::new(None));
        crate::auth::refresh_bootstrap_hash(store.as_ref(), &bootstrap_hash)
            .await
            .unwrap();
        let limits = Arc::new(
            crate::rate_limit::ConsoleLimits::new(&crate::config::ConsoleConfig::default())
                .unwrap(),
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
        let agents = certflow_services::agents::Agents::new(
            &services,
            store.clone(),
            certflow_services::agents::AgentSettings::default(),
        );
        let state = crate::state::AppState::from(crate::state::AppShared {
            services,
            bootstrap_hash,
            renewal: Arc::new(crate::state::RenewalView {
                queue: Arc::new(store.renewal_queue(Default::default())),
                ledger: store.clone(),
                notifications: store.clone(),
            }),
            authenticators: Arc::new(Vec::new()),
            sessions: None,
            sign_in_provider: None,
            limits,
            deploy,
            agents,
            acme: None,
        });
        // `/metrics` as the metrics listener serves it, beside the console's routes.
        let router = crate::router::app(state.clone())
            .merge(crate::ops::metrics_router(None).with_state(state))
            .layer(axum::middleware::from_fn(access_log));
        App {
            router,
            token,
            store,
            _dir: dir,
        }
    }

    async fn call(
        router: &axum::Router,
        req: axum::http::Request<axum::body::Body>,
    ) -> (u16, axum::http::HeaderMap, String) {
        use tower::ServiceExt as _;
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn request(method: &str, uri: &str, token: Option<&str>) -> axum::http::request::Builder {
        let b = axum::http::Request::builder().method(method).uri(uri);
        match token {
            Some(t) => b.header("authorization", format!("Bearer {t}")),
            None => b,
        }
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

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    /// JSON logs as `[log] format = "json"` writes them: one `access` line
    /// per request, inside the `request` span with the request id, group and
    /// route; the actor, certificate id, status and latency as fields; the
    /// client's request id kept and answered, a missing one made up; no
    /// token anywhere.
    #[tokio::test(flavor = "current_thread")]
    async fn json_access_log_lines_carry_the_request_context() {
        let app = app().await;
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let id = uuid::Uuid::now_v7();
        let (status, headers, _) = call(
            &app.router,
            request(
                "GET",
                &format!("/console/api/v1/certificates/{id}"),
                Some(&app.token),
            )
            .header(REQUEST_ID, "trace-me.1")
            .body(axum::body::Body::empty())
            .unwrap(),
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(headers[REQUEST_ID], "trace-me.1");
        // No id (or a implausible one): a fresh one, answered.
        let (status, headers, _) = call(
            &app.router,
            request("GET", "/console/api/v1/certificates", None)
                .header(REQUEST_ID, "two words")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401);
        let made = headers[REQUEST_ID].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");

        let lines = captured.lines();
        let access: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["fields"]["message"] == "access")
            .collect();
        assert_eq!(access.len(), 2, "{lines:#?}");
        let first = access[0];
        assert_eq!(first["target"], "certflow::access");
        assert_eq!(first["span"]["name"], "request");
        assert_eq!(first["span"]["request_id"], "trace-me.1");
        assert_eq!(first["span"]["group"], "console");
        assert_eq!(first["span"]["route"], "/console/api/v1/certificates/{id}");
        assert_eq!(first["fields"]["method"], "GET");
        assert_eq!(first["fields"]["status"], 404);
        assert_eq!(first["fields"]["certificate"], id.to_string());
        assert_eq!(first["fields"]["actor"], "bootstrap-admin");
        assert!(first["fields"]["latency_ms"].as_f64().unwrap() >= 0.0);
        let second = access[1];
        assert_eq!(second["span"]["request_id"], made.as_str());
        assert_eq!(second["fields"]["status"], 401);
        assert!(second["fields"].get("actor").is_none(), "{second}");
        let all = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!all.contains(&app.token), "a token reached the log");
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.parse().unwrap())
    }

    /// `/metrics` reports the inventory from the database: certificates by
    /// status, each team's earliest expiry, those expiring within 7 days
    /// with no renewal under way, agents and deployments, failing renewals;
    /// a readiness answer of 503 while draining.
    #[tokio::test]
    async fn metrics_report_the_inventory_and_readyz_follows_draining() {
        let app = app().await;
        for (name, days) in [("soon.example.com", 3), ("later.example.com", 60)] {
            let body = serde_json::json!({
                "team": "payments", "names": [name], "validity_days": days,
            });
            let (status, _, text) = call(
                &app.router,
                request("POST", "/console/api/v1/certificates", Some(&app.token))
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap(),
            )
            .await;
            assert_eq!(status, 201, "{text}");
        }
        let draining = Draining::default();
        let router = app
            .router
            .clone()
            .layer(axum::Extension(crate::ops::gauges::DomainMetrics {
                deployments: app.store.clone(),
                drift_after: time::Duration::hours(1),
                issuers: crate::ops::gauges::IssuerHealth::default(),
            }))
            .layer(axum::Extension(draining.clone()));
        let (status, _, text) = call(
            &router,
            request("GET", "/metrics", None)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        crate::telemetry::metrics::check_exposition(&text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let at = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("{s} missing:\n{text}"));
        assert_eq!(at(r#"certflow_certificates{status="active"}"#), 2.0);
        assert_eq!(at(r#"certflow_certificates{status="revoked"}"#), 0.0);
        let min = at(r#"certflow_certificate_expiry_min_seconds{team="payments"}"#);
        assert!((2.9 * 86_400.0..=3.0 * 86_400.0).contains(&min), "{min}");
        assert_eq!(
            at(r#"certflow_certificates_expiring_without_renewal{within="7d"}"#),
            1.0
        );
        assert_eq!(
            at(r#"certflow_renewal_jobs{queue="database",state="failing"}"#),
            0.0
        );
        assert_eq!(at(r#"certflow_renewal_at_risk{within="345600s"}"#), 1.0);
        assert_eq!(at(r#"certflow_agents{status="active"}"#), 0.0);
        assert_eq!(at(r#"certflow_agents_not_seen{within="1h"}"#), 0.0);
        for status in ["installed", "failed", "broken", "pending", "drift"] {
            assert_eq!(
                at(&format!("certflow_deployments{{status=\"{status}\"}}")),
                0.0
            );
        }

        let ready = || async {
            call(
                &router,
                request("GET", "/readyz", None)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
        };
        assert_eq!(ready().await.0, 200);
        draining.start();
        let (status, _, body) = ready().await;
        assert_eq!(status, 503);
        assert!(body.contains("draining"), "{body}");
        // Liveness stays simple.
        let (status, _, _) = call(
            &router,
            request("GET", "/healthz", None)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);

        // A database that does not answer fails readiness too.
        app.store.close().await;
        let (status, _, body) = call(
            &app.router,
            request("GET", "/readyz", None)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 503, "{body}");
        // A problem document naming the failed check (RFC 9457 `errors`).
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "https://certflow.dev/problems/not-ready", "{v}");
        assert_eq!(v["status"], 503, "{v}");
        assert_eq!(v["errors"][0]["field"], "database", "{v}");
        assert_eq!(v["errors"][0]["reason"], "unavailable", "{v}");
    }
}
