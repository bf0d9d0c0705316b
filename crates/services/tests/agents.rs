//! Agents against real stores (SQLite file and PostgreSQL): join tokens are
//! single-use even under concurrent enrolment, expire, and are stored only as
//! SHA-256; agent status and identity replacement decide who authenticates.
//!
//! PostgreSQL must run on 127.0.0.1:5432 with trust auth for `postgres`
//! (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::Command;
use std::sync::Arc;

use certflow_blob::{LocalKeyProvider, MasterKey, ObjectBlobStore, Sealer};
use certflow_core::DomainError;
use certflow_core::agents::AgentStatus;
use certflow_core::model::{Actor, AuditQuery};
use certflow_core::ports::{AgentStore, MetadataStore};
use certflow_core::{KeyType, SubjectName};
use certflow_services::Services;
use certflow_services::agents::{AgentSettings, Agents, NewJoinToken, join_token_sha256};
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
