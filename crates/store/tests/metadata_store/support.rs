//! What the suite's modules share: the stores under test, each fresh and
//! empty, and the fixtures the cases of several ports seed. Times are whole
//! seconds: stores keep unix seconds.

pub(crate) mod pg;

use std::collections::BTreeMap;

use certflow_core::DomainError;
use certflow_core::model::{
    Actor, AuditEvent, AuditQuery, Certificate, CertificateQuery, CertificateStatus,
    CertificateVersion, Issuer, IssuerKind, KeySource, KeyType, RenewalPolicy, VersionStatus,
};
use certflow_core::notify::{Channel, EventKind, Subscription, WebhookFormat, WebhookSecret};
use certflow_core::ports::{MetadataStore, NotificationStore, RenewalLedger};
use certflow_core::{Profile, SubjectName};
use certflow_store::{DbQueueOptions, DbRenewalQueue, PgOptions, PgStore, SqliteStore};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use pg::TestDb;

/// Everything a backend offers the suite: the three ports and its queue.
pub(crate) trait Stores: MetadataStore + RenewalLedger + NotificationStore {
    /// The database renewal queue on this store, polling quickly.
    fn queue(&self) -> DbRenewalQueue;
}

const QUEUE: DbQueueOptions = DbQueueOptions {
    poll_interval: std::time::Duration::from_millis(20),
};

impl Stores for SqliteStore {
    fn queue(&self) -> DbRenewalQueue {
        self.renewal_queue(QUEUE)
    }
}

impl Stores for PgStore {
    fn queue(&self) -> DbRenewalQueue {
        self.renewal_queue(QUEUE)
    }
}

/// A store in memory: nothing to keep alive.
pub(crate) async fn sqlite_memory() -> (SqliteStore, ()) {
    (SqliteStore::open_memory().await.unwrap(), ())
}

/// A store on a file in a temporary directory, which the guard keeps.
pub(crate) async fn sqlite_file() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("certflow.db"))
        .await
        .unwrap();
    (store, dir)
}

/// A store on a fresh PostgreSQL database, and the database's guard.
pub(crate) async fn postgres() -> (PgStore, TestDb) {
    let db = TestDb::create().await;
    let store = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .unwrap();
    (store, db)
}

/// The texts of `migrations/<dir>/*.sql`, oldest first.
pub(crate) fn migration_files(dir: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dir);
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

// ------------------------------------------------------------- fixtures

/// 2026-01-01T00:00:00Z.
pub(crate) const T0: i64 = 1_767_225_600;

pub(crate) const DAY: i64 = 86_400;

pub(crate) fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

pub(crate) fn dns(s: &str) -> SubjectName {
    SubjectName::Dns(s.to_owned())
}

pub(crate) fn ip(s: &str) -> SubjectName {
    SubjectName::Ip(s.parse().unwrap())
}

pub(crate) fn actor() -> Actor {
    Actor {
        subject: "alice".into(),
        source: Some("192.0.2.7".into()),
    }
}

pub(crate) fn event(action: &str, target: &str) -> AuditEvent {
    AuditEvent::success(at(T0), &actor(), action, target, json!({ "why": "test" }))
}

pub(crate) fn issuer(name: &str, is_default: bool) -> Issuer {
    Issuer {
        id: Uuid::new_v4(),
        name: name.into(),
        kind: IssuerKind::Internal,
        is_default,
        key_type: KeyType::EcdsaP384,
        issuing_cert_pem: format!(
            "-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n"
        ),
        chain_pem: "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n".into(),
        key_blob: format!("issuers/{name}/issuing.key"),
        root_key_blob: Some(format!("issuers/{name}/root.key")),
        subject: format!("CN={name} Issuing CA"),
        not_after: at(T0 + 3650 * DAY),
        created_at: at(T0),
    }
}

pub(crate) fn certificate(issuer: &Issuer, name: &str, team: &str) -> Certificate {
    Certificate {
        id: Uuid::new_v4(),
        name: name.into(),
        team: team.into(),
        labels: BTreeMap::new(),
        profile: Profile::TlsServer,
        key_type: KeyType::EcdsaP256,
        key_source: KeySource::Server,
        names: vec![dns(name)],
        validity_days: 90,
        validity_secs: None,
        issuer_id: issuer.id,
        renewal: RenewalPolicy::default(),
        status: CertificateStatus::Active,
        managed: true,
        current_version: 1,
        not_after: at(T0 + 90 * DAY),
        renew_after: at(T0 + 60 * DAY),
        created_at: at(T0),
        updated_at: at(T0),
    }
}

pub(crate) fn version(cert: &Certificate, number: u32) -> CertificateVersion {
    CertificateVersion {
        certificate_id: cert.id,
        version: number,
        serial: Uuid::new_v4().simple().to_string(),
        fingerprint_sha256: format!("{:064x}", u128::from(number)),
        not_before: at(T0 + i64::from(number) * DAY),
        not_after: cert.not_after,
        key_type: cert.key_type,
        names: cert.names.clone(),
        issuer_id: cert.issuer_id,
        status: VersionStatus::Current,
        revoked_at: None,
        revocation_reason: None,
        cert_blob: format!("certificates/{}/{number}.der", cert.id),
        key_blob: Some(format!("certificates/{}/{number}.key", cert.id)),
        created_at: at(T0 + i64::from(number) * DAY),
    }
}

pub(crate) async fn seed_issuer(store: &dyn MetadataStore) -> Issuer {
    let issuer = issuer("main", true);
    store
        .insert_issuer(&issuer, &event("issuer.create", "issuer/main"))
        .await
        .unwrap();
    issuer
}

/// `n` new certificates of `team` (`{prefix}{i}.example.com`), not yet
/// stored, with one more at `at` whose name a stored certificate already
/// has: the database refuses a batch holding it as a whole, so each of the
/// batch then commits on its own. Returns them all and the one refused.
pub(crate) async fn batch_with_a_taken_name(
    store: &dyn MetadataStore,
    issuer: &Issuer,
    team: &str,
    prefix: &str,
    n: usize,
    at: usize,
) -> (Vec<Certificate>, Certificate) {
    let taken = certificate(issuer, "taken.example.com", team);
    create(store, &taken).await;
    let mut certs: Vec<Certificate> = (0..n)
        .map(|i| certificate(issuer, &format!("{prefix}{i}.example.com"), team))
        .collect();
    let mut clash = certificate(issuer, "taken.example.com", team);
    clash.name = taken.name.clone();
    certs.insert(at, clash.clone());
    (certs, clash)
}

pub(crate) async fn create(store: &dyn MetadataStore, cert: &Certificate) -> CertificateVersion {
    let first = version(cert, 1);
    store
        .create_certificate(
            cert,
            &first,
            &event("certificate.create", &target(cert)),
            None,
        )
        .await
        .unwrap();
    first
}

pub(crate) fn target(cert: &Certificate) -> String {
    format!("certificate/{}", cert.id)
}

pub(crate) fn query() -> CertificateQuery {
    CertificateQuery {
        limit: 500,
        ..CertificateQuery::default()
    }
}

pub(crate) async fn ids(store: &dyn MetadataStore, q: &CertificateQuery) -> Vec<Uuid> {
    store
        .list_certificates(q)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.id)
        .collect()
}

pub(crate) fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
    v.sort();
    v
}

pub(crate) fn assert_conflict<T: std::fmt::Debug>(
    result: Result<T, DomainError>,
    needles: &[&str],
) {
    match result {
        Err(DomainError::Conflict(message)) => {
            for needle in needles {
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            }
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
}

pub(crate) fn assert_not_found<T: std::fmt::Debug>(result: Result<T, DomainError>) {
    assert!(
        matches!(result, Err(DomainError::NotFound(_))),
        "expected NotFound, got {result:?}"
    );
}

pub(crate) async fn audit_ids(store: &dyn MetadataStore, q: AuditQuery) -> Vec<Uuid> {
    let q = AuditQuery { limit: 500, ..q };
    store
        .list_audit(&q)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Opens connections for four racers up front (pools open them lazily),
/// so that the racers' transactions really overlap instead of queueing
/// behind connection set-up one by one.
pub(crate) async fn warm_up(store: &dyn MetadataStore) {
    let (a, b, c, d) = tokio::join!(store.ping(), store.ping(), store.ping(), store.ping());
    for r in [a, b, c, d] {
        r.unwrap();
    }
}

/// Polls every future concurrently (they share the store's pool, so on
/// PostgreSQL they race on several connections).
pub(crate) async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, f) in out.iter_mut().zip(set.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

pub(crate) fn subscription(team: &str, events: &[EventKind], channel: Channel) -> Subscription {
    Subscription {
        id: Uuid::now_v7(),
        team: team.into(),
        events: events.to_vec(),
        channel,
        created_at: at(T0),
    }
}

pub(crate) fn webhook(url: &str, secret: Option<&str>) -> Channel {
    Channel::Webhook {
        url: url.into(),
        secret: secret.map(|s| WebhookSecret::Plain(s.to_owned())),
        format: WebhookFormat::Json,
    }
}

/// An active agent of team `team`, stored through a join token (the
/// only way the port creates agents). Built from JSON so the test does
/// not depend on fields it does not care about.
pub(crate) async fn seed_agent<S>(store: &S, name: &str, team: &str) -> certflow_core::agents::Agent
where
    S: certflow_core::ports::AgentStore,
{
    use certflow_core::agents::{Agent, JoinToken};
    let token = JoinToken {
        id: Uuid::now_v7(),
        token_sha256: format!("{:064x}", Uuid::new_v4().as_u128()),
        name: name.into(),
        teams: vec![team.into()],
        expires_at: at(T0 + DAY),
        created_by: "alice".into(),
        created_at: at(T0),
        used_at: None,
        agent_id: None,
    };
    store
        .insert_join_token(&token, &event("agent.join-token.create", "agent"))
        .await
        .unwrap();
    let agent: Agent = serde_json::from_value(json!({
        "id": Uuid::now_v7(), "name": name, "teams": [team], "status": "active",
        "cert_serial": "01", "cert_fingerprint_sha256": "00",
        "cert_not_after": serde_json::to_value(at(T0 + DAY)).unwrap(),
        "created_at": serde_json::to_value(at(T0)).unwrap(),
        "last_seen": null,
    }))
    .unwrap();
    store
        .enroll_agent(
            &token.token_sha256,
            at(T0),
            &agent,
            &event("agent.enroll", "agent"),
        )
        .await
        .unwrap();
    agent
}

pub(crate) async fn actions(store: &dyn MetadataStore, prefix: &str) -> Vec<String> {
    store
        .list_audit(&AuditQuery {
            action_prefix: Some(prefix.into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.action)
        .collect()
}
