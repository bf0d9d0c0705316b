//! Renewals in progress when their process dies with SIGKILL are taken over
//! within the delivery lease, and no certificate's current version expires
//! (issue 23). Three-minute certificates renew at half their life (90 s left)
//! through pebble, whose DNS-01 hook holds every renewal while a flag file
//! exists, so the kill provably lands while the renewal queue shows them
//! running. The lease and work timeout are the defaults; the scheduler scans
//! every second (it only decides when renewal starts, not the takeover under
//! test). Scenarios: one process on the embedded defaults (SQLite, database
//! queue) killed and restarted; two replicas on PostgreSQL, the one holding
//! the jobs killed; one process with SQS (moto) as the queue, killed and
//! restarted. Every poll checks that no current version has expired; at the
//! end each renewal's audit time is checked against the expiry of the
//! version it replaced. Each scenario prints the takeover it measured. The
//! three run at once in one test: each mostly waits for its certificates to
//! fall due, so one test slot for ~110 s instead of three.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{Api, FAST_RENEWAL, Server, start, start_with, stop};

/// Lifetime of the certificates (pebble's), renewed at half of it.
const LIFETIME_SECS: u64 = 180;
/// Certificates renewing at once.
const CERTS: usize = 2;
/// The default `[renewal] lease_secs`: the takeover these tests expect.
const LEASE_SECS: u64 = 15;

fn time(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Pebble issuing three-minute certificates, and a DNS-01 hook that
/// records each call (action and the calling process) and, while the flag
/// file exists, holds `present` (at most 150 s).
struct Rig {
    _pebble: certflow_testkit::pebble::Pebble,
    dir: tempfile::TempDir,
    flag: PathBuf,
    calls: PathBuf,
    config: String,
    /// Hook calls recorded when the flag was set.
    calls_before_hold: usize,
}

impl Rig {
    fn start(rt: &tokio::runtime::Runtime) -> Self {
        let pebble = rt.block_on(certflow_testkit::pebble::Pebble::start(
            certflow_testkit::pebble::PebbleOptions {
                leaf_validity_secs: Some(LIFETIME_SECS),
                real_validation: true,
                reject_nonces: true,
                ..Default::default()
            },
        ));
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("hold");
        let calls = dir.path().join("hook.log");
        let hook = dir.path().join("hook.sh");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\necho \"$CERTFLOW_ACME_ACTION $PPID\" >> {calls}\n\
                 if [ \"$CERTFLOW_ACME_ACTION\" = present ]; then\n\
                 n=0; while [ -f {flag} ] && [ $n -lt 1500 ]; do sleep 0.1; n=$((n+1)); done\nfi\n{txt}",
                calls = calls.display(),
                flag = flag.display(),
                txt = crate::renewal::dns01_txt(pebble.challtestsrv_url().unwrap()),
            ),
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("755")
            .arg(&hook)
            .status()
            .unwrap();
        let config = dir.path().join("certflow.toml");
        std::fs::write(
            &config,
            format!(
                "[acme.pebble]\ndirectory_url = \"{}\"\nca_bundle = \"{}\"\nrequest_timeout_secs = 5\n\
                 challenge = \"dns-01\"\n[acme.pebble.dns]\nprovider = \"exec\"\ncommand = \"{}\"\n\
                 timeout_secs = 170\n",
                pebble.directory_url(),
                pebble.ca_bundle_path().display(),
                hook.display()
            ),
        )
        .unwrap();
        Self {
            _pebble: pebble,
            flag,
            calls,
            config: config.display().to_string(),
            calls_before_hold: 0,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server environment: fast scans, default lease and work timeout.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        FAST_RENEWAL
            .iter()
            .chain([("CERTFLOW_CONFIG", self.config.as_str())].iter())
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn hook_calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// From now on, renewals hang in the DNS-01 hook.
    fn hold(&mut self) {
        self.calls_before_hold = self.hook_calls().len();
        std::fs::write(&self.flag, b"").unwrap();
    }

    fn release(&self) {
        std::fs::remove_file(&self.flag).unwrap();
    }

    /// The processes (parent ids) holding renewals in the hook.
    fn holders(&self) -> Vec<u32> {
        self.hook_calls()[self.calls_before_hold..]
            .iter()
            .filter_map(|l| l.strip_prefix("present "))
            .map(|pid| pid.trim().parse().unwrap())
            .collect()
    }
}

fn env_ref(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Creates `CERTS` certificates from pebble renewing at half their life, without jitter.
fn create(api: &Api, label: &str) -> Vec<String> {
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let issuer = issuers
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "acme" && i["name"] == "pebble")
        .unwrap_or_else(|| panic!("no ACME issuer: {issuers}"))["id"]
        .clone();
    (0..CERTS)
        .map(|i| {
            let (status, created) = api.post(
                "/console/api/v1/certificates",
                json!({
                    "team": "payments",
                    "names": [format!("{label}-{i}.example.com")],
                    "issuer_id": issuer,
                    "validity_seconds": LIFETIME_SECS,
                    "renewal": { "renew_at_fraction": 0.5, "jitter_fraction": 0.0 },
                }),
            );
            assert_eq!(status, 201, "{created}");
            created["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The certificates under test, checked at every poll: a current version
/// that has expired fails the test at once.
struct Watch {
    ids: Vec<String>,
}

impl Watch {
    fn poll(&self, api: &Api) -> Vec<Value> {
        let now = OffsetDateTime::now_utc();
        self.ids
            .iter()
            .map(|id| {
                let d: Value = api
                    .get(&format!("/console/api/v1/certificates/{id}"))
                    .json()
                    .unwrap();
                let current = d["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["status"] == "current")
                    .unwrap_or_else(|| panic!("no current version: {d}"));
                assert!(
                    time(&current["not_after"]) > now,
                    "the current version of {id} expired at {}: {d}",
                    current["not_after"]
                );
                d
            })
            .collect()
    }

    /// Polls until `done` holds for every certificate (checking each poll),
    /// or fails with `what` and the server log after `limit`.
    fn until(
        &self,
        server: &Server,
        api: &Api,
        limit: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.poll(api);
            if all.iter().all(&done) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}: {all:?}\n--- log ---\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Waits until the queue shows every renewal running, each held in the
/// hook; returns the processes holding them.
fn until_running(rig: &Rig, watch: &Watch, server: &Server, api: &Api) -> Vec<u32> {
    let limit = Duration::from_secs(LIFETIME_SECS / 2 + 60);
    watch.until(server, api, limit, "every renewal running", |d| {
        d["renewal"]["state"] == "running"
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let queue: Value = api.get("/console/api/v1/renewal/queue").json().unwrap();
        let holders = rig.holders();
        if queue["running"] == CERTS && holders.len() >= CERTS {
            return holders;
        }
        assert!(
            Instant::now() < deadline,
            "renewals not all held: {queue} {holders:?}"
        );
        watch.poll(api);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills `server` with SIGKILL: no hand-back, no last heartbeat.
fn kill(mut server: Server) -> Instant {
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    Instant::now()
}

/// Waits for the renewals after the kill, then checks each against the
/// version it replaced: stored (audit time) before that version expired.
/// Returns the takeover (kill to the last new version seen) and the least
/// time any replaced version had left when its successor was stored.
fn until_renewed(
    watch: &Watch,
    server: &Server,
    api: &Api,
    killed: Instant,
) -> (Duration, time::Duration) {
    let all = watch.until(
        server,
        api,
        Duration::from_secs(LIFETIME_SECS / 2 + 30),
        "the renewals taken over",
        |d| d["current_version"].as_u64() >= Some(2),
    );
    let takeover = killed.elapsed();
    let mut least = time::Duration::MAX;
    for d in &all {
        let versions = d["versions"].as_array().unwrap();
        for new in versions.iter().filter(|v| v["version"].as_u64() > Some(1)) {
            let n = new["version"].as_u64().unwrap();
            let old = versions
                .iter()
                .find(|v| v["version"].as_u64() == Some(n - 1))
                .unwrap();
            let stored = d["history"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["action"] == "certificate.renew" && e["details"]["version"] == n)
                .unwrap_or_else(|| panic!("no audit of version {n}: {d}"));
            let left = time(&old["not_after"]) - time(&stored["at"]);
            assert!(
                left > time::Duration::ZERO,
                "version {n} stored after version {} expired: {d}",
                n - 1
            );
            least = least.min(left);
        }
    }
    let queue: Value = api.get("/console/api/v1/renewal/queue").json().unwrap();
    assert_eq!(queue["dead"], 0, "{queue}");
    (takeover, least)
}

fn report(scenario: &str, takeover: Duration, least: time::Duration) {
    eprintln!(
        "{scenario}: SIGKILL with {CERTS} renewals running; all renewed {:.1} s after the kill \
         (lease {LEASE_SECS} s); least time left when a new version was stored: {} s of {} s",
        takeover.as_secs_f64(),
        least.whole_seconds(),
        LIFETIME_SECS / 2
    );
}

/// One process on the embedded defaults, killed while its renewals run and
/// started again on the same data directory: its own old leases lapse and it
/// takes the jobs over.
fn embedded_process_killed_mid_renewal_restarts_and_renews_in_time() {
    let rt = runtime();
    let mut rig = Rig::start(&rt);
    let env = rig.env(&[]);
    let data = rig.path("data");
    let server = start(&data, &env_ref(&env)).expect("start");
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let watch = Watch {
        ids: create(&api, "embedded"),
    };
    rig.hold();
    let holders = until_running(&rig, &watch, &server, &api);
    assert!(
        holders.iter().all(|p| *p == server.child.id()),
        "{holders:?}"
    );
    let killed = kill(server);
    rig.release();

    let server = start(&data, &env_ref(&env)).expect("restart");
    let api = Api::new(&server, &token);
    let (takeover, least) = until_renewed(&watch, &server, &api, killed);
    report("embedded (SQLite, database queue)", takeover, least);
    assert!(
        takeover < Duration::from_secs(LEASE_SECS + 15),
        "{takeover:?}"
    );
    stop(server);
}

/// Two replicas on one PostgreSQL database (shared blobs and master key):
/// the one holding every renewal is killed; the other takes them over.
fn postgres_replica_holding_the_renewals_killed_the_other_renews_in_time() {
    let rt = runtime();
    let mut rig = Rig::start(&rt);
    let db = certflow_testkit::PgDatabase::create();
    let db_url = db.url();
    let blobs = rig.path("blobs").display().to_string();
    let env = rig.env(&[
        ("CERTFLOW_DATABASE__URL", db_url.as_str()),
        ("CERTFLOW_BLOB__PATH", blobs.as_str()),
        (
            "CERTFLOW_MASTER_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
    ]);
    let a = start(&rig.path("a"), &env_ref(&env)).expect("replica a");
    let token = a.token_line.clone().unwrap();
    let api_a = Api::new(&a, &token);
    let watch = Watch {
        ids: create(&api_a, "replicas"),
    };
    rig.hold();
    let holders = until_running(&rig, &watch, &a, &api_a);
    assert!(holders.iter().all(|p| *p == a.child.id()), "{holders:?}");
    // The second replica joins while the first holds every job.
    let b = start_with(&["serve"], &rig.path("b"), &env_ref(&env)).expect("replica b");
    let api_b = Api::new(&b, &token);
    watch.poll(&api_b);
    let killed = kill(a);
    rig.release();

    let (takeover, least) = until_renewed(&watch, &b, &api_b, killed);
    report("two replicas on PostgreSQL", takeover, least);
    assert!(
        takeover < Duration::from_secs(LEASE_SECS + 15),
        "{takeover:?}"
    );
    stop(b);
}

/// One process with Amazon SQS (moto) as the queue, killed while its
/// renewals run and started again: the messages become visible again when
/// their heartbeated visibility lapses, and the new process renews.
fn sqs_process_killed_mid_renewal_restarts_and_renews_in_time() {
    let rt = runtime();
    let moto = rt.block_on(certflow_testkit::Moto::start());
    let sdk = rt.block_on(moto.sdk_config());
    let (queue_url, dlq_url) = rt
        .block_on(certflow_renewal::ensure_queues(
            &sdk,
            "certflow-takeover",
            10,
        ))
        .unwrap();
    let mut rig = Rig::start(&rt);
    let env = rig.env(&[
        ("CERTFLOW_RENEWAL__QUEUE", "sqs"),
        ("CERTFLOW_RENEWAL__SQS__QUEUE_URL", queue_url.as_str()),
        (
            "CERTFLOW_RENEWAL__SQS__DEAD_LETTER_QUEUE_URL",
            dlq_url.as_str(),
        ),
        (
            "CERTFLOW_RENEWAL__SQS__REGION",
            certflow_testkit::AWS_REGION,
        ),
        (
            "CERTFLOW_RENEWAL__SQS__ENDPOINT_URL",
            moto.endpoint.as_str(),
        ),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    let data = rig.path("data");
    let server = start(&data, &env_ref(&env)).expect("start");
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let watch = Watch {
        ids: create(&api, "sqs"),
    };
    rig.hold();
    let holders = until_running(&rig, &watch, &server, &api);
    assert!(
        holders.iter().all(|p| *p == server.child.id()),
        "{holders:?}"
    );
    let killed = kill(server);
    rig.release();

    let server = start(&data, &env_ref(&env)).expect("restart");
    let api = Api::new(&server, &token);
    let (takeover, least) = until_renewed(&watch, &server, &api, killed);
    report("SQS (moto) queue", takeover, least);
    assert!(
        takeover < Duration::from_secs(LEASE_SECS + 15),
        "{takeover:?}"
    );
    stop(server);
}

/// The three scenarios at once; each failure is reported by name (its panic
/// message is printed as it happens).
#[test]
fn sigkill_mid_renewal_no_current_version_expires_on_any_queue() {
    let scenarios: [(&str, fn()); 3] = [
        (
            "embedded",
            embedded_process_killed_mid_renewal_restarts_and_renews_in_time,
        ),
        (
            "postgres-replicas",
            postgres_replica_holding_the_renewals_killed_the_other_renews_in_time,
        ),
        (
            "sqs",
            sqs_process_killed_mid_renewal_restarts_and_renews_in_time,
        ),
    ];
    let running: Vec<_> = scenarios
        .into_iter()
        .map(|(name, scenario)| {
            let thread = std::thread::Builder::new()
                .name(name.into())
                .spawn(scenario)
                .unwrap();
            (name, thread)
        })
        .collect();
    let failed: Vec<&str> = running
        .into_iter()
        .filter_map(|(name, thread)| thread.join().is_err().then_some(name))
        .collect();
    assert!(
        failed.is_empty(),
        "scenarios failed: {failed:?} (panics above)"
    );
}
