//! Notifications against real peers: an axum webhook receiver on loopback,
//! moto (SNS → SQS), aiosmtpd (SMTP, plain and STARTTLS through a private CA
//! made with openssl), and the real SQLite store for the dispatcher and the
//! expiry watcher (PostgreSQL for two dispatchers sharing one store).
//!
//! Needs `moto_server`, python3 with `aiosmtpd`, openssl and PostgreSQL on
//! 127.0.0.1:5432 (scripts/peers.sh provides them); a missing peer fails the
//! test with how to install it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use certflow_core::model::{
    Actor, AuditEvent, Certificate, CertificateStatus, CertificateVersion, Issuer, IssuerKind,
    KeySource, KeyType, VersionStatus,
};
use certflow_core::notify::{
    Channel, DeliveryQuery, DeliveryState, EventKind, Notification, Notifier, SecretOpener,
    Subscription, WebhookFormat, WebhookSecret,
};
use certflow_core::outbound::{OutboundPolicy, OutboundSettings};
use certflow_core::ports::{MetadataStore, NotificationStore};
use certflow_core::{Profile, RenewalPolicy, SubjectName};
use certflow_notify::{
    Dispatcher, DispatcherSettings, EmailNotifier, ExpirySettings, ExpiryWatcher, Notifiers,
    SmtpSettings, SmtpTls, SnsNotifier, WebhookNotifier, WebhookSettings,
};
use certflow_store::SqliteStore;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use uuid::Uuid;

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600;
const DAY: i64 = 86_400;
const SECRET: &str = "whsec-test-0123456789";

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

fn notification(kind: EventKind, team: &str) -> Notification {
    Notification {
        id: Uuid::now_v7(),
        kind,
        team: team.into(),
        certificate_id: Some(Uuid::new_v4()),
        certificate_name: Some("api.example.com".into()),
        version: Some(3),
        not_after: Some(at(T0 + 5 * DAY)),
        days_left: Some(5),
        reason: Some("ACME order failed: rateLimited".into()),
        summary: "Renewal of api.example.com (team payments) is failing.".into(),
        details: json!({ "attempt": 2 }),
        at: at(T0),
    }
}

/// The receivers listen on loopback, which the outbound policy refuses
/// unless an administrator allows it: these tests allow 127.0.0.1 as
/// `[outbound] allow = ["127.0.0.1"]` would.
fn webhook_notifier(timeout_secs: u64) -> WebhookNotifier {
    notifier_under(timeout_secs, &["127.0.0.1"])
}

fn notifier_under(timeout_secs: u64, allow: &[&str]) -> WebhookNotifier {
    let policy = OutboundPolicy::new(&OutboundSettings {
        allow: allow.iter().map(|s| (*s).to_owned()).collect(),
    })
    .unwrap();
    WebhookNotifier::new(&WebhookSettings { timeout_secs }, Arc::new(policy)).unwrap()
}

// ---------------------------------------------------------------- receiver

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// An HTTP receiver on `addr` (or a fresh port) answering `status` with `reply`.
async fn start_receiver(
    addr: Option<SocketAddr>,
    status: StatusCode,
    reply: &'static str,
) -> (Receiver, SocketAddr, tokio::task::JoinHandle<()>) {
    let receiver = Receiver::default();
    let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route(
            "/{*path}",
            post(
                move |State(r): State<Receiver>,
                      uri: axum::http::Uri,
                      headers: HeaderMap,
                      body: Bytes| async move {
                    r.got.lock().unwrap().push(Received {
                        path: uri.path().to_owned(),
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    (status, reply)
                },
            ),
        )
        .with_state(receiver.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (receiver, addr, task)
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}: {:?}", r.headers))
        .to_str()
        .unwrap()
}

/// Verifies the signature exactly as the crate docs tell receivers to (the
/// Python recipe), so the recipe and the sender cannot drift apart.
fn python_verifies(secret: &str, r: &Received) -> bool {
    let script = r#"
import hashlib, hmac, os, sys, time
secret = os.environ["SECRET"].encode()
ts = os.environ["TS"]
sig = os.environ["SIG"]
body = sys.stdin.buffer.read()
mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
ok = hmac.compare_digest("sha256=" + mac, sig) and abs(time.time() - int(ts)) < 300
sys.exit(0 if ok else 1)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("SECRET", secret)
        .env("TS", header(r, "x-certflow-timestamp"))
        .env("SIG", header(r, "x-certflow-signature"))
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 is required");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    child.wait().unwrap().success()
}

// ---------------------------------------------------------------- webhook

#[tokio::test]
async fn webhook_json_is_signed_and_the_documented_recipe_verifies_it() {
    let (receiver, addr, _task) = start_receiver(None, StatusCode::NO_CONTENT, "").await;
    let n = notification(EventKind::RenewalFailing, "payments");
    let channel = Channel::Webhook {
        url: format!("http://{addr}/hooks/certflow"),
        secret: Some(WebhookSecret::Plain(SECRET.into())),
        format: WebhookFormat::Json,
    };
    webhook_notifier(5).deliver(&channel, &n).await.unwrap();

    let got = receiver.all();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.path, "/hooks/certflow");
    assert_eq!(header(r, "content-type"), "application/json");
    assert_eq!(header(r, "x-certflow-notification"), n.id.to_string());
    assert_eq!(header(r, "x-certflow-event"), "renewal-failing");
    assert!(header(r, "x-certflow-signature").starts_with("sha256="));
    // The body is the notification itself.
    let back: Notification = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(back, n);
    assert!(python_verifies(SECRET, r), "signature does not verify");
    assert!(
        !python_verifies("another-secret", r),
        "a wrong secret must not verify"
    );
    // A tampered body does not verify either.
    let mut tampered = r.clone();
    let mut bytes = r.body.to_vec();
    bytes[10] ^= 0x01;
    tampered.body = Bytes::from(bytes);
    assert!(!python_verifies(SECRET, &tampered));
}

#[tokio::test]
async fn webhook_without_secret_is_unsigned() {
    let (receiver, addr, _task) = start_receiver(None, StatusCode::OK, "ok").await;
    let n = notification(EventKind::Issued, "payments");
    let channel = Channel::Webhook {
        url: format!("http://{addr}/h"),
        secret: None,
        format: WebhookFormat::Json,
    };
    webhook_notifier(5).deliver(&channel, &n).await.unwrap();
    let r = &receiver.all()[0];
    assert!(r.headers.get("x-certflow-signature").is_none());
    assert!(r.headers.get("x-certflow-timestamp").is_none());
    assert_eq!(header(r, "x-certflow-notification"), n.id.to_string());
}

#[tokio::test]
async fn webhook_slack_format_is_one_readable_line() {
    let (receiver, addr, _task) = start_receiver(None, StatusCode::OK, "ok").await;
    let n = notification(EventKind::RenewalFailing, "payments");
    let channel = Channel::Webhook {
        url: format!("http://{addr}/services/T000/B000/XXXX"),
        secret: Some(WebhookSecret::Plain(SECRET.into())),
        format: WebhookFormat::Slack,
    };
    webhook_notifier(5).deliver(&channel, &n).await.unwrap();
    let r = &receiver.all()[0];
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    let obj = body.as_object().unwrap();
    assert_eq!(obj.len(), 1, "Slack wants only text: {body}");
    let text = obj["text"].as_str().unwrap();
    assert_eq!(
        text,
        "[certflow] api.example.com renewal failing (v3) · team payments · expires 2026-01-06 00:00 UTC · reason: ACME order failed: rateLimited"
    );
    assert!(!text.contains('\n'));
    assert!(python_verifies(SECRET, r));
}

/// What an internal service behind a webhook URL answers: it must never
/// reach the subscriber through the delivery's error.
const REMOTE_BODY: &str =
    "ami-id: ami-0abc1234 instance-id: i-0feedbeef; quota exceeded for this hook";

#[tokio::test]
async fn webhook_refusal_reports_the_status_never_the_body_nor_the_url_path() {
    let (_receiver, addr, _task) =
        start_receiver(None, StatusCode::TOO_MANY_REQUESTS, REMOTE_BODY).await;
    let channel = Channel::Webhook {
        url: format!("http://{addr}/services/T000/B000/token-in-path"),
        secret: None,
        format: WebhookFormat::Slack,
    };
    let err = webhook_notifier(5)
        .deliver(&channel, &notification(EventKind::Expiring, "payments"))
        .await
        .unwrap_err();
    assert_eq!(err, format!("http://{addr}: HTTP 429 Too Many Requests"));
    assert!(!err.contains("token-in-path"), "URL path leaked: {err}");
}

#[tokio::test]
async fn webhook_policy_refuses_special_destinations_literal_or_resolved_without_connecting() {
    let (receiver, addr, _task) = start_receiver(None, StatusCode::OK, REMOTE_BODY).await;
    let port = addr.port();
    let strict = notifier_under(5, &[]);
    let n = notification(EventKind::Expiring, "payments");
    for (url, want) in [
        (
            format!("http://127.0.0.1:{port}/hook"),
            "refused by outbound policy: 127.0.0.1 is loopback".to_owned(),
        ),
        (
            format!("http://2130706433:{port}/hook"),
            "refused by outbound policy: 127.0.0.1 is loopback".into(),
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "refused by outbound policy: [::ffff:7f00:1] is loopback".into(),
        ),
        (
            format!("http://[::1]:{port}/"),
            "refused by outbound policy: [::1] is loopback".into(),
        ),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "refused by outbound policy: 169.254.169.254 is link-local".into(),
        ),
        (
            "http://[fe80::1]/".into(),
            "refused by outbound policy: [fe80::1] is link-local".into(),
        ),
        (
            "http://[fc00::1]/".into(),
            "refused by outbound policy: [fc00::1] is private".into(),
        ),
        (
            "http://10.0.0.1/".into(),
            "refused by outbound policy: 10.0.0.1 is private".into(),
        ),
        (
            "http://0.0.0.0/".into(),
            "refused by outbound policy: 0.0.0.0 is unspecified".into(),
        ),
        (
            "http://[ff02::1]/".into(),
            "refused by outbound policy: [ff02::1] is multicast".into(),
        ),
    ] {
        let channel = Channel::Webhook {
            url: url.clone(),
            secret: None,
            format: WebhookFormat::Json,
        };
        let err = strict.deliver(&channel, &n).await.unwrap_err();
        assert_eq!(err, want, "{url}");
    }
    // A name is judged by what it resolves to, on the connection made: the
    // resolver hands the connector no refused address.
    let channel = Channel::Webhook {
        url: format!("http://localhost:{port}/hook"),
        secret: None,
        format: WebhookFormat::Json,
    };
    let err = strict.deliver(&channel, &n).await.unwrap_err();
    assert!(
        err.starts_with("refused by outbound policy: localhost resolves to ")
            && err.ends_with("which is loopback"),
        "{err}"
    );
    assert!(receiver.all().is_empty(), "nothing may reach the receiver");

    // An allow-listed CIDR, or the allow-listed name, is delivered to.
    notifier_under(5, &["127.0.0.0/8", "::1"])
        .deliver(&channel, &n)
        .await
        .unwrap();
    notifier_under(5, &["localhost"])
        .deliver(&channel, &n)
        .await
        .unwrap();
    assert_eq!(receiver.all().len(), 2);
}

#[tokio::test]
async fn webhook_redirects_are_not_followed() {
    let (target, target_addr, _t) = start_receiver(None, StatusCode::OK, "ok").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector = listener.local_addr().unwrap();
    let location = format!("http://{target_addr}/elsewhere");
    let app = axum::Router::new().route(
        "/{*path}",
        post(move || {
            let location = location.clone();
            async move {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [("location", location)],
                    REMOTE_BODY,
                )
            }
        }),
    );
    let _r = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let channel = Channel::Webhook {
        url: format!("http://{redirector}/hook"),
        secret: Some(WebhookSecret::Plain(SECRET.into())),
        format: WebhookFormat::Json,
    };
    let err = webhook_notifier(5)
        .deliver(&channel, &notification(EventKind::Expiring, "payments"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!("http://{redirector}: HTTP 307 Temporary Redirect (redirects are not followed)")
    );
    assert!(target.all().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn webhook_failures_are_named_by_class() {
    let port = certflow_testkit::free_port();
    let refused = Channel::Webhook {
        url: format!("http://127.0.0.1:{port}/hook"),
        secret: None,
        format: WebhookFormat::Json,
    };
    let n = notification(EventKind::Expiring, "payments");
    let err = webhook_notifier(5).deliver(&refused, &n).await.unwrap_err();
    assert_eq!(err, format!("http://127.0.0.1:{port}: connection refused"));

    // Accepts the connection and never answers.
    let (hole, _task) = black_hole().await;
    let silent = Channel::Webhook {
        url: format!("http://{hole}/hook"),
        secret: None,
        format: WebhookFormat::Json,
    };
    let err = webhook_notifier(1).deliver(&silent, &n).await.unwrap_err();
    assert_eq!(err, format!("http://{hole}: timeout"));

    let unresolvable = Channel::Webhook {
        url: "http://no-such-host.invalid/hook".into(),
        secret: None,
        format: WebhookFormat::Json,
    };
    let err = webhook_notifier(5)
        .deliver(&unresolvable, &n)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "http://no-such-host.invalid: the name does not resolve"
    );
}

/// A stand-in for the server's sealer: the "envelope" is the secret
/// reversed, opened only for the subscription it was made for.
struct ReversingOpener(Uuid);

#[async_trait::async_trait]
impl SecretOpener for ReversingOpener {
    async fn open(
        &self,
        subscription_id: Uuid,
        envelope: &str,
    ) -> certflow_core::DomainResult<String> {
        if subscription_id != self.0 {
            return Err(certflow_core::DomainError::Integrity(
                "bound to another subscription".into(),
            ));
        }
        Ok(envelope.chars().rev().collect())
    }
}

#[tokio::test]
async fn dispatcher_opens_sealed_secrets_only_to_sign() {
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    let (receiver, addr, _task) = start_receiver(None, StatusCode::OK, "ok").await;
    let sub = subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::Renewed],
        Channel::Webhook {
            url: format!("http://{addr}/hook"),
            secret: Some(WebhookSecret::Sealed(SECRET.chars().rev().collect())),
            format: WebhookFormat::Json,
        },
    )
    .await;
    let notifiers = Notifiers::new().with(Arc::new(webhook_notifier(3)));
    // Without an opener the sealed secret cannot sign: a failed attempt, nothing sent.
    store
        .publish(&notification(EventKind::Renewed, "payments"), None)
        .await
        .unwrap();
    let blind = Dispatcher::new(store.clone(), notifiers.clone(), settings());
    assert_eq!(blind.tick(at(T0)).await.unwrap().retrying, 1);
    assert!(receiver.all().is_empty());
    assert_eq!(
        deliveries(store.as_ref(), "payments").await[0]
            .last_error
            .as_deref(),
        Some("the webhook secret is sealed and this dispatcher cannot open it")
    );
    let dispatcher = Dispatcher::new(store.clone(), notifiers, settings())
        .with_secrets(Arc::new(ReversingOpener(sub.id)));
    assert_eq!(dispatcher.tick(at(T0 + 3600)).await.unwrap().delivered, 1);
    let got = receiver.all();
    assert_eq!(got.len(), 1);
    assert!(python_verifies(SECRET, &got[0]));
}

#[tokio::test]
async fn a_deleted_subscription_stops_retrying_at_once() {
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    let (receiver, addr, _task) =
        start_receiver(None, StatusCode::INTERNAL_SERVER_ERROR, REMOTE_BODY).await;
    let sub = subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::Renewed],
        Channel::Webhook {
            url: format!("http://{addr}/hook"),
            secret: None,
            format: WebhookFormat::Json,
        },
    )
    .await;
    store
        .publish(&notification(EventKind::Renewed, "payments"), None)
        .await
        .unwrap();
    let dispatcher = Dispatcher::new(
        store.clone(),
        Notifiers::new().with(Arc::new(webhook_notifier(3))),
        settings(),
    );
    assert_eq!(dispatcher.tick(at(T0)).await.unwrap().retrying, 1);
    store
        .delete_subscription(sub.id, &audit("subscription.delete"))
        .await
        .unwrap();
    for hours in 1..4 {
        let report = dispatcher.tick(at(T0 + hours * 3600)).await.unwrap();
        assert_eq!(report.claimed, 0, "{report:?}");
    }
    assert_eq!(receiver.all().len(), 1);
    let d = &deliveries(store.as_ref(), "payments").await[0];
    assert_eq!((d.state, d.attempts), (DeliveryState::Cancelled, 1));
    assert_eq!(
        d.last_error.as_deref(),
        Some(format!("http://{addr}: HTTP 500 Internal Server Error").as_str())
    );
}

// ---------------------------------------------------------------- dispatcher

fn actor() -> Actor {
    Actor {
        subject: "alice".into(),
        source: None,
    }
}

fn audit(action: &str) -> AuditEvent {
    AuditEvent::success(at(T0), &actor(), action, "subscription/x", json!({}))
}

async fn subscribe(
    store: &dyn NotificationStore,
    team: &str,
    events: &[EventKind],
    channel: Channel,
) -> Subscription {
    let sub = Subscription {
        id: Uuid::new_v4(),
        team: team.into(),
        events: events.to_vec(),
        channel,
        created_at: at(T0),
    };
    store
        .insert_subscription(&sub, &audit("subscription.create"))
        .await
        .unwrap();
    sub
}

fn settings() -> DispatcherSettings {
    DispatcherSettings {
        poll_interval_secs: 1,
        concurrency: 8,
        delivery_timeout_secs: 3,
        max_attempts: 3,
        backoff_base_secs: 60,
        backoff_cap_secs: 600,
    }
}

async fn deliveries(
    store: &dyn NotificationStore,
    team: &str,
) -> Vec<certflow_core::notify::Delivery> {
    store
        .list_deliveries(&DeliveryQuery {
            team: Some(team.into()),
            limit: 100,
            ..DeliveryQuery::default()
        })
        .await
        .unwrap()
        .items
}

fn counts(d: &Dispatcher, kind: &str) -> (u64, u64, u64) {
    let c = d
        .metrics()
        .snapshot()
        .into_iter()
        .find(|c| c.kind == kind)
        .unwrap();
    (c.delivered, c.failed, c.gave_up)
}

#[tokio::test]
async fn receiver_down_then_up_failed_attempts_are_recorded_then_delivered() {
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    // A port nobody listens on yet.
    let port = certflow_testkit::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::RenewalFailing],
        Channel::Webhook {
            url: format!("http://{addr}/hook"),
            secret: Some(WebhookSecret::Plain(SECRET.into())),
            format: WebhookFormat::Json,
        },
    )
    .await;
    let n = notification(EventKind::RenewalFailing, "payments");
    assert!(store.publish(&n, None).await.unwrap());

    let dispatcher = Dispatcher::new(
        store.clone(),
        Notifiers::new().with(Arc::new(webhook_notifier(3))),
        settings(),
    );
    let report = dispatcher.tick(at(T0)).await.unwrap();
    assert_eq!(
        (report.claimed, report.retrying, report.delivered),
        (1, 1, 0)
    );

    let d = &deliveries(store.as_ref(), "payments").await[0];
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.attempts, 1);
    let reason = d.last_error.clone().unwrap();
    assert!(reason.contains(&format!("http://{addr}")), "{reason}");
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    // Backoff: about the base (30..60 s with the jitter floor), never sooner.
    let wait = (d.next_attempt_at - at(T0)).whole_seconds();
    assert!((30..=61).contains(&wait), "retry in {wait} s");

    // Not due yet: nothing claimed.
    let early = dispatcher.tick(at(T0 + 20)).await.unwrap();
    assert_eq!(early.claimed, 0);

    // The receiver comes up on that port.
    let (receiver, _, _task) = start_receiver(Some(addr), StatusCode::OK, "ok").await;
    let report = dispatcher.tick(at(T0 + 120)).await.unwrap();
    assert_eq!((report.claimed, report.delivered), (1, 1));
    let got = receiver.all();
    assert_eq!(got.len(), 1);
    assert!(python_verifies(SECRET, &got[0]));

    let d = &deliveries(store.as_ref(), "payments").await[0];
    assert_eq!(d.state, DeliveryState::Delivered);
    assert_eq!(d.attempts, 2);
    let attempts = store.list_attempts(d.id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].attempt, 1);
    assert!(attempts[0].error.as_deref().unwrap().contains("refused"));
    assert_eq!(attempts[1].attempt, 2);
    assert_eq!(attempts[1].error, None);
    assert_eq!(counts(&dispatcher, "webhook"), (1, 1, 0));
}

#[tokio::test]
async fn dispatcher_gives_up_after_max_attempts() {
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    let (receiver, addr, _task) =
        start_receiver(None, StatusCode::INTERNAL_SERVER_ERROR, REMOTE_BODY).await;
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::DeadLettered],
        Channel::Webhook {
            url: format!("http://{addr}/hook"),
            secret: None,
            format: WebhookFormat::Json,
        },
    )
    .await;
    store
        .publish(&notification(EventKind::DeadLettered, "payments"), None)
        .await
        .unwrap();
    let dispatcher = Dispatcher::new(
        store.clone(),
        Notifiers::new().with(Arc::new(webhook_notifier(3))),
        settings(),
    );
    let mut now = T0;
    let mut reports = Vec::new();
    for _ in 0..4 {
        reports.push(dispatcher.tick(at(now)).await.unwrap());
        now += 3600;
    }
    assert_eq!(reports[0].retrying, 1);
    assert_eq!(reports[1].retrying, 1);
    assert_eq!(reports[2].gave_up, 1);
    assert_eq!(reports[3].claimed, 0, "a failed delivery is not retried");
    assert_eq!(receiver.all().len(), 3);

    let d = &deliveries(store.as_ref(), "payments").await[0];
    assert_eq!(d.state, DeliveryState::Failed);
    assert_eq!(d.attempts, 3);
    // The status, never what the receiver wrote back.
    let expected = format!("http://{addr}: HTTP 500 Internal Server Error");
    assert_eq!(d.last_error.as_deref(), Some(expected.as_str()));
    let attempts = store.list_attempts(d.id).await.unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|a| a.error.as_deref() == Some(expected.as_str()))
    );
    assert_eq!(counts(&dispatcher, "webhook"), (0, 3, 1));
}

#[tokio::test]
async fn channel_without_a_notifier_fails_with_a_reason() {
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::Revoked],
        Channel::Email {
            to: vec!["ops@example.com".into()],
        },
    )
    .await;
    store
        .publish(&notification(EventKind::Revoked, "payments"), None)
        .await
        .unwrap();
    let dispatcher = Dispatcher::new(store.clone(), Notifiers::new(), settings());
    assert_eq!(dispatcher.tick(at(T0)).await.unwrap().retrying, 1);
    let d = &deliveries(store.as_ref(), "payments").await[0];
    assert_eq!(
        d.last_error.as_deref(),
        Some("no email notifier is configured on this server")
    );
}

// ---------------------------------------------------------------- SNS

#[tokio::test]
async fn sns_publish_reaches_a_subscribed_sqs_queue() {
    let moto = certflow_testkit::Moto::start().await;
    let config = moto.sdk_config().await;
    let sns = aws_sdk_sns::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);

    let topic_arn = sns
        .create_topic()
        .name("certflow-events")
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let queue_url = sqs
        .create_queue()
        .queue_name("certflow-events-sink")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .send()
        .await
        .unwrap();

    // Through the dispatcher, as the server runs it.
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::RenewalFailing],
        Channel::Sns {
            topic_arn: topic_arn.clone(),
        },
    )
    .await;
    let n = notification(EventKind::RenewalFailing, "payments");
    store.publish(&n, None).await.unwrap();
    let dispatcher = Dispatcher::new(
        store.clone(),
        Notifiers::new().with(Arc::new(SnsNotifier::from_sdk_config(&config))),
        settings(),
    );
    let report = dispatcher.tick(at(T0)).await.unwrap();
    assert_eq!(
        report.delivered,
        1,
        "{report:?}: {:?}",
        deliveries(store.as_ref(), "payments").await
    );

    let msgs = sqs
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(5)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(msgs.len(), 1);
    let envelope: Value = serde_json::from_str(msgs[0].body().unwrap()).unwrap();
    assert_eq!(envelope["Type"], "Notification");
    assert_eq!(envelope["TopicArn"], topic_arn.as_str());
    assert_eq!(
        envelope["Subject"],
        "[certflow] api.example.com renewal failing"
    );
    let message: Notification =
        serde_json::from_str(envelope["Message"].as_str().unwrap()).unwrap();
    assert_eq!(message, n);
    let attrs = &envelope["MessageAttributes"];
    assert_eq!(attrs["certflow.event"]["Value"], "renewal-failing");
    assert_eq!(attrs["certflow.team"]["Value"], "payments");
    assert_eq!(counts(&dispatcher, "sns"), (1, 0, 0));

    // A topic that does not exist: the attempt fails with SNS's reason.
    let err = SnsNotifier::from_sdk_config(&config)
        .deliver(
            &Channel::Sns {
                topic_arn: format!("{topic_arn}-missing"),
            },
            &n,
        )
        .await
        .unwrap_err();
    assert!(
        err.contains("NotFound") || err.contains("not exist"),
        "{err}"
    );
}

// ---------------------------------------------------------------- SMTP

/// `python3 -m aiosmtpd` writing received mail into a Maildir; killed on drop.
struct SmtpSink {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    async fn start() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), &[]).await
    }

    /// With extra aiosmtpd options (paths inside `dir`).
    async fn start_with(dir: tempfile::TempDir, extra: &[String]) -> Self {
        let maildir = dir.path().join("maildir");
        let log = std::fs::File::create(dir.path().join("smtpd.log")).unwrap();
        let port = certflow_testkit::free_port();
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("python3 is required");
        let mut sink = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return sink;
            }
            if let Ok(Some(status)) = sink.child.try_wait() {
                panic!(
                    "aiosmtpd exited ({status}); install it: run scripts/peers.sh / pip install aiosmtpd\n{}",
                    sink.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd not ready: {}",
                sink.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("smtpd.log")).unwrap_or_default()
    }

    /// Raw messages received so far.
    fn messages(&self) -> Vec<String> {
        let new = self.dir.path().join("maildir/new");
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(new) {
            for e in entries {
                out.push(std::fs::read_to_string(e.unwrap().path()).unwrap());
            }
        }
        out
    }
}

/// Header fields (unfolded) and body of a raw message.
fn parse_mail(raw: &str) -> (BTreeMap<String, Vec<String>>, String) {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                let v = headers.get_mut(k).unwrap().last_mut().unwrap();
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        let (k, v) = line.split_once(':').unwrap();
        let k = k.trim().to_ascii_lowercase();
        headers
            .entry(k.clone())
            .or_default()
            .push(v.trim().to_owned());
        last = Some(k);
    }
    (headers, body.to_owned())
}

fn smtp_settings(port: u16) -> SmtpSettings {
    let mut s = SmtpSettings::new(
        "127.0.0.1",
        port,
        SmtpTls::None,
        "certflow <certflow@example.com>",
    );
    s.timeout_secs = 5;
    s
}

#[tokio::test]
async fn email_arrives_with_subject_recipients_and_facts() {
    let sink = SmtpSink::start().await;
    let email = EmailNotifier::new(&smtp_settings(sink.port)).unwrap();
    let n = notification(EventKind::RenewalFailing, "payments");
    let channel = Channel::Email {
        to: vec![
            "ops@example.com".into(),
            "Pay Team <pay@example.com>".into(),
        ],
    };
    email.deliver(&channel, &n).await.unwrap();

    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "{}", sink.log());
    let (h, body) = parse_mail(&msgs[0]);
    assert_eq!(h["subject"], ["[certflow] api.example.com renewal failing"]);
    assert_eq!(h["from"], ["certflow <certflow@example.com>"]);
    let to = h["to"].join(", ");
    assert!(
        to.contains("ops@example.com") && to.contains("pay@example.com"),
        "{to}"
    );
    // aiosmtpd's handler records the envelope.
    let rcpt = h["x-rcptto"].join(", ");
    assert!(
        rcpt.contains("ops@example.com") && rcpt.contains("pay@example.com"),
        "{rcpt}"
    );
    assert_eq!(h["message-id"], [format!("<{}@certflow>", n.id)]);
    assert!(h["content-type"][0].starts_with("text/plain"));
    for fact in [
        "Renewal of api.example.com (team payments) is failing.",
        "Certificate:   api.example.com",
        "Team:          payments",
        "Event:         renewal-failing",
        "Version:       3",
        "Expires:       2026-01-06 00:00 UTC",
        "Reason:        ACME order failed: rateLimited",
        &format!("Notification ID: {}", n.id),
    ] {
        assert!(body.contains(fact), "missing {fact:?} in\n{body}");
    }
}

#[test]
fn smtp_settings_refuse_unknown_fields_and_default_ports() {
    let s: SmtpSettings = serde_json::from_value(json!({
        "host": "smtp.example.com", "tls": "tls", "from": "certflow@example.com",
        "username": "u", "password": "p"
    }))
    .unwrap();
    assert_eq!(s.effective_port(), 465);
    assert!(!format!("{s:?}").contains("\"p\""), "password in Debug");
    let err = serde_json::from_value::<SmtpSettings>(json!({
        "host": "h", "from": "a@example.com", "pasword": "typo"
    }))
    .unwrap_err();
    assert!(err.to_string().contains("pasword"), "{err}");
    let s: SmtpSettings =
        serde_json::from_value(json!({ "host": "h", "from": "a@example.com" })).unwrap();
    assert_eq!((s.tls, s.effective_port()), (SmtpTls::Starttls, 587));
    assert!(
        EmailNotifier::new(&SmtpSettings::new("h", 25, SmtpTls::None, "not an address")).is_err()
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is required (scripts/peers.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a leaf for `127.0.0.1`/`localhost` in `dir`: ca.pem, leaf.pem, leaf.key.
fn private_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=certflow test relay CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    );
}

#[tokio::test]
async fn email_over_required_starttls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    private_ca(dir.path());
    let extra = [
        "--tlscert".to_owned(),
        dir.path().join("leaf.pem").display().to_string(),
        "--tlskey".to_owned(),
        dir.path().join("leaf.key").display().to_string(),
    ];
    let ca = dir.path().join("ca.pem");
    let sink = SmtpSink::start_with(dir, &extra).await;
    let n = notification(EventKind::Expiring, "payments");
    let channel = Channel::Email {
        to: vec!["ops@example.com".into()],
    };

    // Without the relay's CA the certificate is refused and nothing is sent.
    let mut settings = smtp_settings(sink.port);
    settings.tls = SmtpTls::Starttls;
    let err = EmailNotifier::new(&settings)
        .unwrap()
        .deliver(&channel, &n)
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    println!("untrusted relay: {err}");
    assert!(sink.messages().is_empty());

    // With it, the message goes over STARTTLS (aiosmtpd refuses mail without it).
    settings.ca_file = Some(ca);
    EmailNotifier::new(&settings)
        .unwrap()
        .deliver(&channel, &n)
        .await
        .unwrap();
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "{}", sink.log());
    let (h, _) = parse_mail(&msgs[0]);
    assert_eq!(
        h["subject"],
        ["[certflow] api.example.com expires in 5 days"]
    );

    // Plain text to a server that requires STARTTLS is refused by the server.
    let err = EmailNotifier::new(&smtp_settings(sink.port))
        .unwrap()
        .deliver(&channel, &n)
        .await
        .unwrap_err();
    assert!(err.contains("STARTTLS") || err.contains("530"), "{err}");
    println!("plain text refused: {err}");
}

#[tokio::test]
async fn run_claims_as_slots_free_and_stops_on_shutdown() {
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    let (hole, _hole_task) = black_hole().await;
    let (receiver, addr, _task) = start_receiver(None, StatusCode::OK, "ok").await;
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::Issued],
        Channel::Webhook {
            url: format!("http://{hole}/hangs"),
            secret: None,
            format: WebhookFormat::Json,
        },
    )
    .await;
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::Renewed],
        Channel::Webhook {
            url: format!("http://{addr}/hook"),
            secret: None,
            format: WebhookFormat::Json,
        },
    )
    .await;
    let now = OffsetDateTime::now_utc();
    let mut first = notification(EventKind::Issued, "payments");
    first.at = now;
    store.publish(&first, None).await.unwrap();

    // Two slots: the hanging delivery holds one until its timeout.
    let dispatcher = Dispatcher::new(
        store.clone(),
        Notifiers::new().with(Arc::new(webhook_notifier(30))),
        DispatcherSettings {
            concurrency: 2,
            delivery_timeout_secs: 3,
            ..settings()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let run = tokio::spawn({
        let dispatcher = dispatcher.clone();
        async move {
            dispatcher
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Published while the hanging delivery is in flight: goes out on the next poll.
    let mut second = notification(EventKind::Renewed, "payments");
    second.at = OffsetDateTime::now_utc();
    store.publish(&second, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.all().is_empty() {
        assert!(Instant::now() < deadline, "run() did not deliver");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered_after = started.elapsed();
    assert!(
        delivered_after < Duration::from_secs(3),
        "waited for the hanging delivery: {delivered_after:?}"
    );
    stop.send(()).unwrap();
    // Shutdown waits for the in-flight attempt (bounded by its timeout), then returns.
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run() did not stop")
        .unwrap();
    let ds = deliveries(store.as_ref(), "payments").await;
    let hanging = ds.iter().find(|d| d.notification.id == first.id).unwrap();
    assert_eq!(hanging.state, DeliveryState::Pending);
    assert_eq!(hanging.last_error.as_deref(), Some("timed out after 3 s"));
    assert_eq!(counts(&dispatcher, "webhook"), (1, 1, 0));
    println!("run(): second delivery out after {delivered_after:?} while the first hung");
}

/// A TCP server that accepts connections and never says a word: the worst
/// kind of down (a closed port at least fails fast).
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn smtp_down_never_blocks_a_webhook_in_the_same_tick() {
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    let (hole, _hole_task) = black_hole().await;
    let (receiver, addr, _task) = start_receiver(None, StatusCode::OK, "ok").await;
    // A closed SMTP port and a hanging one.
    let closed = certflow_testkit::free_port();
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::Expiring],
        Channel::Email {
            to: vec!["ops@example.com".into()],
        },
    )
    .await;
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::Expiring],
        Channel::Webhook {
            url: format!("http://{addr}/hook"),
            secret: None,
            format: WebhookFormat::Json,
        },
    )
    .await;
    store
        .publish(&notification(EventKind::Expiring, "payments"), None)
        .await
        .unwrap();

    // SMTP hangs: its own timeout is longer than the dispatcher's per-delivery one.
    let mut smtp = smtp_settings(hole.port());
    smtp.timeout_secs = 60;
    let notifiers = Notifiers::new()
        .with(Arc::new(webhook_notifier(3)))
        .with(Arc::new(EmailNotifier::new(&smtp).unwrap()));
    let dispatcher = Dispatcher::new(store.clone(), notifiers, settings());
    let started = Instant::now();
    let report = dispatcher.tick(at(T0)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        (report.claimed, report.delivered, report.retrying),
        (2, 1, 1)
    );
    let webhook_at = receiver.all()[0].at - started;
    assert!(
        webhook_at < Duration::from_secs(1),
        "webhook waited for SMTP: {webhook_at:?}"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(6),
        "tick took {took:?}"
    );
    let ds = deliveries(store.as_ref(), "payments").await;
    let email = ds.iter().find(|d| d.channel.kind() == "email").unwrap();
    let webhook = ds.iter().find(|d| d.channel.kind() == "webhook").unwrap();
    assert_eq!(webhook.state, DeliveryState::Delivered);
    assert_eq!(email.state, DeliveryState::Pending);
    assert_eq!(email.last_error.as_deref(), Some("timed out after 3 s"));
    println!("hanging SMTP: webhook delivered after {webhook_at:?}, tick took {took:?}");

    // A closed SMTP port fails fast with the server's address in the reason.
    let email = EmailNotifier::new(&smtp_settings(closed)).unwrap();
    let started = Instant::now();
    let err = email
        .deliver(
            &Channel::Email {
                to: vec!["ops@example.com".into()],
            },
            &notification(EventKind::Expiring, "payments"),
        )
        .await
        .unwrap_err();
    assert!(err.contains(&format!("SMTP 127.0.0.1:{closed}")), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------- expiry

fn issuer() -> Issuer {
    Issuer {
        id: Uuid::new_v4(),
        name: "main".into(),
        kind: IssuerKind::Internal,
        is_default: true,
        key_type: KeyType::EcdsaP384,
        issuing_cert_pem: "-----BEGIN CERTIFICATE-----\nmain\n-----END CERTIFICATE-----\n".into(),
        chain_pem: String::new(),
        key_blob: "issuers/main/issuing.key".into(),
        root_key_blob: None,
        subject: "CN=main Issuing CA".into(),
        not_after: at(T0 + 3650 * DAY),
        created_at: at(T0),
    }
}

fn certificate(issuer: &Issuer, name: &str, team: &str, not_after: i64) -> Certificate {
    Certificate {
        id: Uuid::new_v4(),
        name: name.into(),
        team: team.into(),
        labels: BTreeMap::new(),
        profile: Profile::TlsServer,
        key_type: KeyType::EcdsaP256,
        key_source: KeySource::Server,
        names: vec![SubjectName::Dns(name.into())],
        validity_days: 90,
        validity_secs: None,
        issuer_id: issuer.id,
        renewal: RenewalPolicy::default(),
        status: CertificateStatus::Active,
        managed: true,
        current_version: 1,
        not_after: at(not_after),
        renew_after: at(not_after - 30 * DAY),
        created_at: at(T0 - 60 * DAY),
        updated_at: at(T0 - 60 * DAY),
    }
}

fn version(cert: &Certificate) -> CertificateVersion {
    CertificateVersion {
        certificate_id: cert.id,
        version: cert.current_version,
        serial: Uuid::new_v4().simple().to_string(),
        fingerprint_sha256: format!("{:064x}", u128::from(cert.current_version)),
        not_before: cert.not_after - time::Duration::days(90),
        not_after: cert.not_after,
        key_type: cert.key_type,
        names: cert.names.clone(),
        issuer_id: cert.issuer_id,
        status: VersionStatus::Current,
        revoked_at: None,
        revocation_reason: None,
        cert_blob: format!("certificates/{}/{}.der", cert.id, cert.current_version),
        key_blob: None,
        created_at: at(T0),
    }
}

fn expiring_thresholds(
    ds: &[certflow_core::notify::Delivery],
    cert: &Certificate,
) -> Vec<(u32, u64)> {
    let mut out: Vec<(u32, u64)> = ds
        .iter()
        .filter(|d| d.notification.kind == EventKind::Expiring)
        .filter(|d| d.notification.certificate_id == Some(cert.id))
        .map(|d| {
            (
                d.notification.version.unwrap(),
                d.notification.details["threshold_days"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn expiry_watcher_warns_once_per_version_and_threshold() {
    let store = Arc::new(SqliteStore::open_memory().await.unwrap());
    let issuer = issuer();
    store
        .insert_issuer(&issuer, &audit("issuer.create"))
        .await
        .unwrap();
    // 20 days left: crosses 30. 5 days left: crosses 30, 14 and 7 at once. 45: none.
    let soon = certificate(&issuer, "api.example.com", "payments", T0 + 20 * DAY);
    let sooner = certificate(&issuer, "late.example.com", "payments", T0 + 5 * DAY);
    let later = certificate(&issuer, "far.example.com", "payments", T0 + 45 * DAY);
    let other = certificate(&issuer, "web.example.org", "web", T0 + 10 * DAY);
    for c in [&soon, &sooner, &later, &other] {
        store
            .create_certificate(c, &version(c), &audit("certificate.create"), None)
            .await
            .unwrap();
    }
    let sink = Channel::Webhook {
        url: "http://127.0.0.1:9/unused".into(),
        secret: None,
        format: WebhookFormat::Json,
    };
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::Expiring, EventKind::Digest],
        sink.clone(),
    )
    .await;
    subscribe(store.as_ref(), "web", &[EventKind::Expiring], sink).await;

    let watcher = ExpiryWatcher::new(store.clone(), store.clone(), ExpirySettings::default());
    let first = watcher.tick(at(T0)).await.unwrap();
    assert_eq!(
        (first.expiring, first.published, first.already_sent),
        (3, 3, 0)
    );
    assert_eq!(
        first.digests, 2,
        "one digest per team with something expiring"
    );
    let second = watcher.tick(at(T0 + 3600)).await.unwrap();
    assert_eq!(
        (second.published, second.already_sent, second.digests),
        (0, 3, 0)
    );

    let ds = deliveries(store.as_ref(), "payments").await;
    assert_eq!(expiring_thresholds(&ds, &soon), [(1, 30)]);
    // Only the smallest crossed threshold, not 30, 14 and 7 at once.
    assert_eq!(expiring_thresholds(&ds, &sooner), [(1, 7)]);
    assert!(expiring_thresholds(&ds, &later).is_empty());
    let digests: Vec<_> = ds
        .iter()
        .filter(|d| d.notification.kind == EventKind::Digest)
        .collect();
    assert_eq!(
        digests.len(),
        1,
        "the web team did not subscribe to digests"
    );
    let listed: Vec<&str> = digests[0].notification.details["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["late.example.com", "api.example.com"]);
    let warn = ds
        .iter()
        .find(|d| d.notification.certificate_id == Some(sooner.id))
        .unwrap();
    assert_eq!(warn.notification.days_left, Some(5));
    assert_eq!(warn.notification.team, "payments");

    // Eight days on: `soon` has 12 days left (crosses 14), `sooner` has expired
    // (crosses 1), and a new day brings a new digest.
    let later_tick = watcher.tick(at(T0 + 8 * DAY)).await.unwrap();
    assert_eq!((later_tick.published, later_tick.digests), (3, 2));
    let again = watcher.tick(at(T0 + 8 * DAY + 60)).await.unwrap();
    assert_eq!((again.published, again.digests), (0, 0));
    let ds = deliveries(store.as_ref(), "payments").await;
    assert_eq!(expiring_thresholds(&ds, &soon), [(1, 14), (1, 30)]);
    assert_eq!(expiring_thresholds(&ds, &sooner), [(1, 1), (1, 7)]);
    let expired = ds
        .iter()
        .find(|d| {
            d.notification.certificate_id == Some(sooner.id)
                && d.notification.details["threshold_days"] == 1
        })
        .unwrap();
    assert_eq!(
        certflow_notify::text::headline(&expired.notification),
        "late.example.com has expired"
    );

    // Renewal: version 2 of `soon`, expiring in 25 days from then, warns afresh at 30.
    let mut renewed = soon.clone();
    renewed.current_version = 2;
    renewed.not_after = at(T0 + 33 * DAY);
    renewed.renew_after = at(T0 + 20 * DAY);
    store
        .add_version(
            &renewed,
            &version(&renewed),
            &audit("certificate.renew"),
            None,
        )
        .await
        .unwrap();
    let after_renewal = watcher.tick(at(T0 + 8 * DAY + 120)).await.unwrap();
    assert_eq!(after_renewal.published, 1);
    let ds = deliveries(store.as_ref(), "payments").await;
    assert_eq!(expiring_thresholds(&ds, &soon), [(1, 14), (1, 30), (2, 30)]);
}

#[test]
fn thresholds_are_inclusive_and_the_smallest_wins() {
    use certflow_notify::crossed_threshold;
    let now = at(T0);
    assert_eq!(crossed_threshold(now, at(T0 + 30 * DAY + 1)), None);
    assert_eq!(crossed_threshold(now, at(T0 + 30 * DAY)), Some(30));
    assert_eq!(crossed_threshold(now, at(T0 + 14 * DAY)), Some(14));
    assert_eq!(crossed_threshold(now, at(T0 + 8 * DAY)), Some(14));
    assert_eq!(crossed_threshold(now, at(T0 + DAY)), Some(1));
    assert_eq!(crossed_threshold(now, at(T0 - DAY)), Some(1));
}

#[tokio::test]
async fn two_dispatchers_on_postgresql_deliver_each_exactly_once() {
    let db = certflow_testkit::PgDatabase::create();
    let store = Arc::new(
        certflow_store::PgStore::connect(&db.url(), certflow_store::PgOptions::default())
            .await
            .unwrap(),
    );
    let (receiver, addr, _task) = start_receiver(None, StatusCode::OK, "ok").await;
    subscribe(
        store.as_ref(),
        "payments",
        &[EventKind::Renewed],
        Channel::Webhook {
            url: format!("http://{addr}/hook"),
            secret: Some(WebhookSecret::Plain(SECRET.into())),
            format: WebhookFormat::Json,
        },
    )
    .await;
    const N: usize = 40;
    for _ in 0..N {
        store
            .publish(&notification(EventKind::Renewed, "payments"), None)
            .await
            .unwrap();
    }
    let replica = || {
        Dispatcher::new(
            store.clone(),
            Notifiers::new().with(Arc::new(webhook_notifier(5))),
            DispatcherSettings {
                concurrency: 8,
                ..settings()
            },
        )
    };
    let (a, b) = (replica(), replica());
    let started = Instant::now();
    let mut delivered = 0;
    for _ in 0..20 {
        let (ra, rb) = tokio::join!(a.tick(at(T0)), b.tick(at(T0)));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.claimed, ra.delivered);
        assert_eq!(rb.claimed, rb.delivered);
        delivered += ra.delivered + rb.delivered;
        if ra.claimed == 0 && rb.claimed == 0 {
            break;
        }
    }
    let took = started.elapsed();
    assert_eq!(delivered as usize, N);
    let got = receiver.all();
    assert_eq!(got.len(), N, "a delivery went out twice or not at all");
    let mut ids: Vec<&str> = got
        .iter()
        .map(|r| header(r, "x-certflow-notification"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N);
    let (da, db_) = (counts(&a, "webhook").0, counts(&b, "webhook").0);
    assert!(da > 0 && db_ > 0, "both replicas took part: {da} + {db_}");
    println!("PostgreSQL, two dispatchers: {N} deliveries in {took:?} ({da} + {db_})");
}
