//! Agents against real stores (SQLite file and PostgreSQL): join tokens are
//! single-use even under concurrent enrolment, expire, and are stored only as
//! SHA-256; agent status and identity replacement decide who authenticates.
//!
//! PostgreSQL must run on 127.0.0.1:5432 with trust auth for `postgres`
//! (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`).

use std::process::Command;
use std::sync::Arc;

use certflow_blob::ObjectBlobStore;
use certflow_core::DomainError;
use certflow_core::agents::AgentStatus;
use certflow_core::model::{Actor, AuditQuery};
use certflow_core::ports::{AgentStore, MetadataStore};
use certflow_core::{KeyType, SubjectName};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::Services;
use certflow_services::agents::{
    AgentChanges, AgentSettings, Agents, NewJoinToken, TokenEnrolment, join_token_sha256,
};
use certflow_store::{PgOptions, PgStore, SqliteStore};
use certflow_testkit::PgDatabase;
use time::{Duration, OffsetDateTime};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap()
}

fn admin() -> Actor {
    Actor {
        subject: "admin@example.com".into(),
        source: None,
    }
}

fn csr() -> Vec<u8> {
    let key = certflow_pki::PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    certflow_pki::build_csr(&key, &[SubjectName::Dns("agent.invalid".into())]).unwrap()
}

struct Env {
    agents: Agents,
    metadata: Arc<dyn MetadataStore>,
    _dir: tempfile::TempDir,
}

async fn env<S: MetadataStore + AgentStore + 'static>(store: S, dir: tempfile::TempDir) -> Env {
    let store = Arc::new(store);
    let blobs = ObjectBlobStore::local(&dir.path().join("blobs")).unwrap();
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        Vec::new(),
    )));
    let services = Services::new(store.clone(), Arc::new(blobs), sealer, None);
    let agents = Agents::new(&services, store.clone(), AgentSettings::default());
    let (ca, created) = agents.ensure_ca(now()).await.unwrap();
    assert!(created);
    // A second start adopts the stored CA.
    assert_eq!(agents.ensure_ca(now()).await.unwrap(), (ca, false));
    Env {
        agents,
        metadata: store,
        _dir: dir,
    }
}

async fn sqlite() -> (Env, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certflow.db");
    let store = SqliteStore::open(&path).await.unwrap();
    (env(store, dir).await, path)
}

async fn postgres(db: &PgDatabase) -> Env {
    let store = PgStore::connect(&db.url(), PgOptions::default())
        .await
        .unwrap();
    env(store, tempfile::tempdir().unwrap()).await
}

fn token_request(ttl_minutes: u32) -> NewJoinToken {
    NewJoinToken {
        name: "web-01".into(),
        teams: vec!["payments".into(), "edge".into()],
        ttl_minutes,
    }
}

async fn enroll_count(metadata: &dyn MetadataStore) -> u64 {
    metadata
        .list_audit(&AuditQuery {
            action_prefix: Some("agent.enroll".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .total
}

/// One join token, 16 enrolments at once: exactly one agent, one audit event.
async fn single_use_under_concurrency(e: &Env) {
    let t = now();
    let created = e
        .agents
        .create_join_token(&admin(), &token_request(10), t)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let agents = e.agents.clone();
            let token = created.token.clone();
            tokio::spawn(async move {
                agents
                    .enroll(&token, &csr(), Some(&format!("host-{i}")), None, t)
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(issued) => {
                ok += 1;
                assert_eq!(issued.agent.teams, vec!["edge", "payments"]);
            }
            Err(DomainError::Forbidden(_)) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(ok, 1, "exactly one enrolment per join token");
    assert_eq!(e.agents.list().await.unwrap().len(), 1);
    assert_eq!(enroll_count(e.metadata.as_ref()).await, 1);
    let record = e
        .agents
        .store()
        .get_join_token(&join_token_sha256(&created.token))
        .await
        .unwrap()
        .unwrap();
    assert!(record.used_at.is_some() && record.agent_id.is_some());
    // And sequentially, after the race: still refused.
    assert!(matches!(
        e.agents.enroll(&created.token, &csr(), None, None, t).await,
        Err(DomainError::Forbidden(_))
    ));
}

async fn expiry_and_validation(e: &Env) {
    let t = now();
    let created = e
        .agents
        .create_join_token(&admin(), &token_request(1), t)
        .await
        .unwrap();
    let later = t + Duration::minutes(1);
    assert!(matches!(
        e.agents
            .enroll(&created.token, &csr(), None, None, later)
            .await,
        Err(DomainError::Forbidden(_))
    ));
    // Refused before expiry too when the token is altered.
    let mut altered = created.token.clone();
    altered.push('x');
    assert!(matches!(
        e.agents.enroll(&altered, &csr(), None, None, t).await,
        Err(DomainError::Forbidden(_))
    ));
    for (ttl, team) in [(0, "ok"), (1441, "ok"), (5, "Bad Team")] {
        let req = NewJoinToken {
            name: "x".into(),
            teams: vec![team.into()],
            ttl_minutes: ttl,
        };
        assert!(matches!(
            e.agents.create_join_token(&admin(), &req, t).await,
            Err(DomainError::Invalid(_))
        ));
    }
}

/// Status and identity rules behind every agent request.
async fn status_and_identity(e: &Env) {
    let t = now();
    let created = e
        .agents
        .create_join_token(&admin(), &token_request(10), t)
        .await
        .unwrap();
    let issued = e
        .agents
        .enroll(&created.token, &csr(), None, Some("192.0.2.1".into()), t)
        .await
        .unwrap();
    let agent = issued.agent.clone();
    assert_eq!(agent.name, "web-01");
    assert_eq!(agent.cert_not_after, t + Duration::hours(24));
    let uris = certflow_pki::uri_names(
        &certflow_pki::parse_pem_certs("c", &issued.certificate_pem).unwrap()[0],
    )
    .unwrap();
    assert_eq!(uris, vec![format!("urn:certflow:agent:{}", agent.id)]);
    e.agents
        .authenticate(agent.id, &agent.cert_serial, t)
        .await
        .unwrap();

    // Renewal replaces the identity: the old serial is refused at once.
    let renewed = e.agents.renew(&agent, &csr(), None, t).await.unwrap();
    assert_ne!(renewed.agent.cert_serial, agent.cert_serial);
    assert!(matches!(
        e.agents.authenticate(agent.id, &agent.cert_serial, t).await,
        Err(DomainError::Forbidden(_))
    ));
    // A second renewal with the stale identity loses.
    assert!(matches!(
        e.agents.renew(&agent, &csr(), None, t).await,
        Err(DomainError::Conflict(_))
    ));
    let serial = renewed.agent.cert_serial.clone();
    e.agents.authenticate(agent.id, &serial, t).await.unwrap();

    let disabled = e
        .agents
        .set_status(&admin(), agent.id, AgentStatus::Disabled, t)
        .await
        .unwrap();
    assert_eq!(disabled.status, AgentStatus::Disabled);
    assert!(matches!(
        e.agents.authenticate(agent.id, &serial, t).await,
        Err(DomainError::Forbidden(_))
    ));
    e.agents
        .set_status(&admin(), agent.id, AgentStatus::Revoked, t)
        .await
        .unwrap();
    assert!(matches!(
        e.agents
            .set_status(&admin(), agent.id, AgentStatus::Active, t)
            .await,
        Err(DomainError::Conflict(_))
    ));
    assert!(matches!(
        e.agents
            .set_status(&admin(), uuid::Uuid::now_v7(), AgentStatus::Disabled, t)
            .await,
        Err(DomainError::NotFound(_))
    ));
    let trail = e
        .metadata
        .list_audit(&AuditQuery {
            target: Some(format!("agent/{}", agent.id)),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut actions: Vec<String> = trail.items.iter().map(|a| a.action.clone()).collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            "agent.disable",
            "agent.enroll",
            "agent.identity.renew",
            "agent.revoke"
        ]
    );
}

#[tokio::test]
async fn sqlite_join_tokens_are_single_use_expire_and_are_stored_hashed() {
    let (e, path) = sqlite().await;
    single_use_under_concurrency(&e).await;
    expiry_and_validation(&e).await;
    status_and_identity(&e).await;
    // Hash only: the token text is nowhere in the database files.
    let created = e
        .agents
        .create_join_token(&admin(), &token_request(10), now())
        .await
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
        bytes.extend(wal);
    }
    let needle = created.token.as_bytes();
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    let hash = join_token_sha256(&created.token);
    assert!(bytes.windows(hash.len()).any(|w| w == hash.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_join_tokens_are_single_use_under_concurrency_and_expire() {
    let db = PgDatabase::create();
    let e = postgres(&db).await;
    single_use_under_concurrency(&e).await;
    expiry_and_validation(&e).await;
    status_and_identity(&e).await;
    let created = e
        .agents
        .create_join_token(&admin(), &token_request(10), now())
        .await
        .unwrap();
    let dump = psql_db(&db, "SELECT * FROM agent_join_tokens");
    assert!(!dump.contains(&created.token));
    assert!(dump.contains(&join_token_sha256(&created.token)));
}

fn psql_db(db: &PgDatabase, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-d", &db.url(), "-c", sql])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// After a master-key rotation, `certflow keys rewrap` re-seals the
/// agent-identity CA's keys too: once the old key is dropped, enrolment
/// (which signs with the CA key) still works.
#[tokio::test]
async fn rewrap_moves_the_agent_ca_keys_to_the_new_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("certflow.db"))
            .await
            .unwrap(),
    );
    let blobs: Arc<ObjectBlobStore> =
        Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let (old, new) = (
        MasterKey::generate().unwrap(),
        MasterKey::generate().unwrap(),
    );
    let agents_with = |current: &MasterKey, previous: Vec<MasterKey>| {
        let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
            MasterKey::from_base64(&current.to_base64()).unwrap(),
            previous,
        )));
        let services = Services::new(store.clone(), blobs.clone(), sealer, None);
        Agents::new(&services, store.clone(), AgentSettings::default())
    };
    let before = agents_with(&old, Vec::new());
    before.ensure_ca(now()).await.unwrap();

    let rotating = agents_with(
        &new,
        vec![MasterKey::from_base64(&old.to_base64()).unwrap()],
    );
    assert_eq!(
        rotating.rewrap_keys().await.unwrap(),
        (2, 2),
        "issuing and root keys"
    );
    assert_eq!(
        rotating.rewrap_keys().await.unwrap(),
        (2, 0),
        "nothing left to do"
    );

    let after = agents_with(&new, Vec::new());
    let token = after
        .create_join_token(&admin(), &token_request(10), now())
        .await
        .unwrap();
    after
        .enroll(&token.token, &csr(), None, None, now())
        .await
        .expect("the CA key opens under the new master key alone");
}

fn enrolment(client: &str, teams: &[&str]) -> TokenEnrolment {
    TokenEnrolment {
        subject: certflow_core::agents::token_subject("https://idp.example.com", client),
        client_id: client.into(),
        teams: teams.iter().map(|t| (*t).to_owned()).collect(),
    }
}

/// OIDC client-credentials enrolment: the first creates the agent bound to
/// the token's subject, a later one (identity expired) re-issues for the same
/// agent, a disabled agent cannot come back, a client without teams cannot enrol.
async fn token_enrolment(e: &Env) {
    let t = now();
    let who = enrolment("agent-1", &["payments", "edge", "payments"]);
    let first = e
        .agents
        .enroll_with_token(&who, &csr(), None, Some("192.0.2.7".into()), t)
        .await
        .unwrap();
    let agent = first.agent.clone();
    assert_eq!(agent.name, "agent-1", "named after the client by default");
    assert_eq!(agent.teams, vec!["edge", "payments"]);
    assert_eq!(agent.subject.as_deref(), Some(who.subject.as_str()));
    assert_eq!(
        e.agents.get(agent.id).await.unwrap().subject,
        agent.subject,
        "stored"
    );
    e.agents
        .authenticate(agent.id, &agent.cert_serial, t)
        .await
        .unwrap();

    // Weeks later, the identity expired: the same token subject gets the same agent.
    let later = t + Duration::days(30);
    let again = e
        .agents
        .enroll_with_token(&who, &csr(), Some("ignored-name"), None, later)
        .await
        .unwrap();
    assert_eq!(again.agent.id, agent.id);
    assert_eq!(again.agent.name, agent.name);
    assert_eq!(again.agent.teams, agent.teams);
    assert_ne!(again.agent.cert_serial, agent.cert_serial);
    assert_eq!(again.agent.cert_not_after, later + Duration::hours(24));
    assert!(matches!(
        e.agents
            .authenticate(agent.id, &agent.cert_serial, later)
            .await,
        Err(DomainError::Forbidden(_))
    ));
    e.agents
        .authenticate(agent.id, &again.agent.cert_serial, later)
        .await
        .unwrap();
    assert_eq!(e.agents.list().await.unwrap().len(), 1);

    // Another client is another agent.
    let other = e
        .agents
        .enroll_with_token(&enrolment("agent-2", &["edge"]), &csr(), None, None, t)
        .await
        .unwrap();
    assert_ne!(other.agent.id, agent.id);

    // Disabled (or revoked): re-enrolment is refused and changes nothing.
    e.agents
        .set_status(&admin(), agent.id, AgentStatus::Disabled, later)
        .await
        .unwrap();
    assert!(matches!(
        e.agents
            .enroll_with_token(&who, &csr(), None, None, later)
            .await,
        Err(DomainError::Forbidden(_))
    ));
    assert_eq!(
        e.agents.get(agent.id).await.unwrap().cert_serial,
        again.agent.cert_serial
    );

    // No teams for the client: nothing to act on, refused.
    assert!(matches!(
        e.agents
            .enroll_with_token(&enrolment("stranger", &[]), &csr(), None, None, t)
            .await,
        Err(DomainError::Forbidden(_))
    ));
    let actions: Vec<String> = e
        .metadata
        .list_audit(&AuditQuery {
            target: Some(format!("agent/{}", agent.id)),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert!(
        actions.contains(&"agent.reenroll".to_owned()),
        "{actions:?}"
    );
}

#[tokio::test]
async fn sqlite_token_enrolment_binds_the_subject_and_reenrols_the_same_agent() {
    let (e, _) = sqlite().await;
    token_enrolment(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_token_enrolment_binds_the_subject_and_races_to_one_agent() {
    let db = PgDatabase::create();
    let e = postgres(&db).await;
    token_enrolment(&e).await;
    // First enrolments of one subject racing: one agent, every caller gets it.
    let who = enrolment("racer", &["edge"]);
    let t = now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let agents = e.agents.clone();
            let who = who.clone();
            tokio::spawn(async move { agents.enroll_with_token(&who, &csr(), None, None, t).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap().unwrap().agent.id);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
}

/// Two replicas (two `Agents` over two connections to one database), the
/// way `certflow serve` wires them: changes announced on the change feed,
/// every replica applying what it hears to its cache.
struct FeedChanges(certflow_store::ChangeFeed);

#[async_trait::async_trait]
impl AgentChanges for FeedChanges {
    async fn agent_changed(&self, id: uuid::Uuid) {
        self.0.publish(&format!("agent:{id}")).await.unwrap();
    }
}

fn watch(agents: Agents, feed: &certflow_store::ChangeFeed) {
    let mut rx = feed.subscribe();
    tokio::spawn(async move {
        while let Ok(topic) = rx.recv().await {
            agents.apply_change(&topic);
        }
    });
}

/// One replica on `db`: its own pool, change feed and agent cache; blobs
/// and master key shared with the others through `dir` and `key`.
async fn replica(db: &PgDatabase, dir: &std::path::Path, key: &MasterKey) -> Agents {
    let store = Arc::new(
        PgStore::connect(&db.url(), PgOptions::default())
            .await
            .unwrap(),
    );
    let feed = store.change_feed().await.unwrap();
    let blobs = ObjectBlobStore::local(&dir.join("blobs")).unwrap();
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::from_base64(&key.to_base64()).unwrap(),
        Vec::new(),
    )));
    let services = Services::new(store.clone(), Arc::new(blobs), sealer, None);
    let agents = Agents::new(&services, store, AgentSettings::default())
        .with_changes(Arc::new(FeedChanges(feed.clone())));
    agents.ensure_ca(now()).await.unwrap();
    watch(agents.clone(), &feed);
    agents
}

fn refused(r: Result<certflow_core::agents::Agent, DomainError>) -> bool {
    matches!(r, Err(DomainError::Forbidden(_)))
}

/// The authentication cache: an idle agent costs no database read, yet a
/// disabled agent is refused at once on the replica that disabled it and
/// within the change feed's latency on the others; a renewal likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_agent_cache_is_invalidated_across_replicas() {
    let db = PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate().unwrap();
    let a = replica(&db, dir.path(), &key).await;
    let b = replica(&db, dir.path(), &key).await;
    let t = now();
    let issued = a
        .enroll_with_token(&enrolment("agent-1", &["edge"]), &csr(), None, None, t)
        .await
        .unwrap();
    let (id, serial) = (issued.agent.id, issued.agent.cert_serial.clone());
    a.authenticate(id, &serial, t).await.unwrap();
    b.authenticate(id, &serial, t).await.unwrap();
    assert_eq!((a.cached_agents(), b.cached_agents()), (1, 1));

    // Served from memory: a change made behind both caches' backs (no
    // announcement) is not seen — which is what proves there was no read.
    psql_db(
        &db,
        &format!("UPDATE agents SET cert_serial = 'ff' WHERE id = '{id}'"),
    );
    a.authenticate(id, &serial, t).await.unwrap();
    a.apply_change(&format!("agent:{id}"));
    assert!(
        refused(a.authenticate(id, &serial, t).await),
        "read again after the topic"
    );
    psql_db(
        &db,
        &format!("UPDATE agents SET cert_serial = '{serial}' WHERE id = '{id}'"),
    );
    a.apply_change("*");
    a.authenticate(id, &serial, t).await.unwrap();

    // Disabled on replica B: refused by B at once, by A once the feed delivers.
    b.set_status(&admin(), id, AgentStatus::Disabled, t)
        .await
        .unwrap();
    assert!(
        refused(b.authenticate(id, &serial, t).await),
        "at once where disabled"
    );
    let started = std::time::Instant::now();
    while !refused(a.authenticate(id, &serial, t).await) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "replica A still lets the disabled agent in"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    eprintln!(
        "disabled agent refused on the other replica after {:?}",
        started.elapsed()
    );

    // A renewal on A: B stops honouring the old identity the same way.
    let second = a
        .enroll_with_token(&enrolment("agent-2", &["edge"]), &csr(), None, None, t)
        .await
        .unwrap()
        .agent;
    b.authenticate(second.id, &second.cert_serial, t)
        .await
        .unwrap();
    let renewed = a.renew(&second, &csr(), None, t).await.unwrap().agent;
    let started = std::time::Instant::now();
    while !refused(b.authenticate(second.id, &second.cert_serial, t).await) {
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    b.authenticate(second.id, &renewed.cert_serial, t)
        .await
        .unwrap();
}

/// `last_seen` is written at most once a minute per agent, cache or not.
#[tokio::test]
async fn sqlite_last_seen_is_written_at_most_once_a_minute() {
    let (e, _) = sqlite().await;
    let t = now();
    let agent = e
        .agents
        .enroll_with_token(&enrolment("agent-1", &["edge"]), &csr(), None, None, t)
        .await
        .unwrap()
        .agent;
    let seen = || async { e.agents.get(agent.id).await.unwrap().last_seen };
    for secs in [1, 30, 59] {
        e.agents
            .authenticate(agent.id, &agent.cert_serial, t + Duration::seconds(secs))
            .await
            .unwrap();
    }
    assert_eq!(seen().await, Some(t), "no write within the minute");
    e.agents
        .authenticate(agent.id, &agent.cert_serial, t + Duration::seconds(61))
        .await
        .unwrap();
    assert_eq!(seen().await, Some(t + Duration::seconds(61)));
    e.agents
        .authenticate(agent.id, &agent.cert_serial, t + Duration::seconds(90))
        .await
        .unwrap();
    assert_eq!(seen().await, Some(t + Duration::seconds(61)));
}
