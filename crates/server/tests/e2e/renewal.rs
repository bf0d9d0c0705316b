//! Auto-renewal end to end: real `certflow` processes renew short-lived
//! certificates on their own — through the database queue, Amazon SQS (moto)
//! and an ACME CA (pebble) — and survive a killed worker, a hung CA and
//! notification channels that are down.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::peers::Receiver;
use crate::support::{
    ALLOW_LOOPBACK_WEBHOOKS, Api, FAST_RENEWAL, start, start_with, stop, wait_for,
};

fn time(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

fn detail(api: &Api, id: &str) -> Value {
    api.get(&format!("/console/api/v1/certificates/{id}"))
        .json()
        .unwrap()
}

/// Every version was issued before the one it replaced expired: no gap in
/// validity. (`not_before` is backdated 60 s by certflow's CA; ACME CAs
/// backdate too, so the issuance time is at or after `not_before`.)
fn assert_no_gap(d: &Value) {
    let mut versions: Vec<&Value> = d["versions"].as_array().unwrap().iter().collect();
    versions.sort_by_key(|v| v["version"].as_u64());
    for pair in versions.windows(2) {
        let (old, new) = (pair[0], pair[1]);
        assert!(
            time(&new["not_before"]) < time(&old["not_after"]),
            "version {} starts after version {} expired: {old} {new}",
            new["version"],
            old["version"]
        );
        assert_eq!(old["status"], "superseded", "{old}");
        assert_ne!(old["serial"], new["serial"]);
    }
    assert_eq!(versions.last().unwrap()["status"], "current");
}

fn create_short_lived(api: &Api, name: &str, issuer: Option<&str>, validity_secs: u32) -> String {
    let mut body = json!({
        "team": "payments",
        "names": [name],
        "validity_seconds": validity_secs,
        // Half the lifetime (which includes the 60 s backdating), no jitter:
        // a predictable cadence for the test.
        "renewal": { "renew_at_fraction": 0.5, "jitter_fraction": 0.0 },
    });
    if let Some(issuer) = issuer {
        body["issuer_id"] = json!(issuer);
    }
    let (status, created) = api.post("/console/api/v1/certificates", body);
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

#[test]
fn database_queue_renews_two_minute_certificates_repeatedly_and_notifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Webhook receiver and SMTP server are both down when the first events
    // happen; both come up later.
    let hook_port = certflow_testkit::free_port();
    let smtp_port = certflow_testkit::free_port().to_string();
    let mut env: Vec<(&str, &str)> = FAST_RENEWAL.to_vec();
    env.extend([
        ("CERTFLOW_NOTIFICATIONS__SMTP__HOST", "127.0.0.1"),
        ("CERTFLOW_NOTIFICATIONS__SMTP__PORT", smtp_port.as_str()),
        ("CERTFLOW_NOTIFICATIONS__SMTP__TLS", "none"),
        ("CERTFLOW_NOTIFICATIONS__SMTP__FROM", "certflow@example.com"),
        ("CERTFLOW_NOTIFICATIONS__SMTP__TIMEOUT_SECS", "2"),
        ALLOW_LOOPBACK_WEBHOOKS,
    ]);
    let server = start(&data, &env).expect("start");
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);

    let (status, sub) = api.post(
        "/console/api/v1/subscriptions",
        json!({ "team": "payments", "events": ["issued", "renewed"],
                "channel": { "type": "webhook", "url": format!("http://127.0.0.1:{hook_port}/hook"), "format": "json", "secret": "0123456789abcdef0123" } }),
    );
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["channel"]["signed"], true, "secret never echoed: {sub}");
    assert!(!sub.to_string().contains("0123456789abcdef0123"));
    // Sealed at rest: the database file never holds the secret in clear.
    for file in ["certflow.db", "certflow.db-wal"] {
        let bytes = std::fs::read(data.join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(20).any(|w| w == b"0123456789abcdef0123"),
            "{file} holds the webhook secret in clear"
        );
    }
    // The allow-list names 127.0.0.1 only: other special addresses stay refused.
    for (url, rule) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254 is link-local",
        ),
        ("http://10.0.0.1/hook", "10.0.0.1 is private"),
        ("http://[::1]/hook", "[::1] is loopback"),
    ] {
        let (status, problem) = api.post(
            "/console/api/v1/subscriptions",
            json!({ "team": "payments", "events": ["renewed"],
                    "channel": { "type": "webhook", "url": url, "format": "json" } }),
        );
        assert_eq!(status, 400, "{url}: {problem}");
        assert!(problem.to_string().contains(rule), "{url}: {problem}");
    }
    let (status, _) = api.post(
        "/console/api/v1/subscriptions",
        json!({ "team": "payments", "events": ["renewed"],
                "channel": { "type": "email", "to": ["ops@example.com"] } }),
    );
    assert_eq!(status, 201);

    let id = create_short_lived(&api, "short.example.com", None, 120);
    let first = detail(&api, &id);
    assert_eq!(first["renewal"]["state"], "idle", "{first}");

    // Three automatic renewals, ~30 s apart.
    let d = wait_for(&server, Duration::from_secs(240), "three renewals", || {
        let d = detail(&api, &id);
        (d["current_version"].as_u64() >= Some(4)).then_some(d)
    });
    assert_no_gap(&d);
    let versions = d["versions"].as_array().unwrap();
    assert!(versions.len() >= 4);
    let audit = d["history"].to_string();
    assert!(audit.contains("certificate.renew"), "{audit}");
    assert!(
        audit.contains("system:renewal"),
        "renewed by the workers: {audit}"
    );

    // Deliveries so far failed with a reason (webhook and SMTP ports closed),
    // and renewal went on regardless.
    let failing: Value = api
        .get("/console/api/v1/deliveries?team=payments&state=pending")
        .json()
        .unwrap();
    let reasons = failing.to_string().to_lowercase();
    assert!(
        reasons.matches("connection refused").count() >= 2,
        "{reasons}"
    );
    // Every attempt made so far is on record with its reason (the newest
    // event's deliveries may not have been tried yet).
    assert!(
        failing["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["attempts"].as_u64() > Some(0))
            .all(|i| i["last_error"].is_string()),
        "{failing}"
    );

    // Both come up: the retries get through, each event once.
    let receiver = Receiver::listen(hook_port);
    let mail = tmp.path().join("mail");
    let mut smtp = std::process::Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{smtp_port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(&mail)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m aiosmtpd (pip install aiosmtpd; scripts/peers.sh)");
    let events = wait_for(
        &server,
        Duration::from_secs(60),
        "webhook deliveries",
        || {
            let e = receiver.events();
            (e.iter().filter(|k| *k == "renewed").count() >= 3 && e.contains(&"issued".to_owned()))
                .then_some(e)
        },
    );
    assert_eq!(
        events.iter().filter(|k| *k == "issued").count(),
        1,
        "{events:?}"
    );
    // Sealed at rest, opened to sign: openssl verifies every signature.
    let (verified, signed) = receiver.signatures_verified("0123456789abcdef0123");
    assert!(
        signed >= events.len() && verified == signed,
        "{verified} of {signed} signatures verify ({} events)",
        events.len()
    );
    let delivered: Value = api
        .get("/console/api/v1/deliveries?team=payments&state=delivered")
        .json()
        .unwrap();
    let one = delivered["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["attempts"].as_u64() > Some(1))
        .unwrap_or_else(|| panic!("a delivery that needed retries: {delivered}"));
    let attempts: Value = api
        .get(&format!(
            "/console/api/v1/deliveries/{}/attempts",
            one["id"].as_str().unwrap()
        ))
        .json()
        .unwrap();
    let attempts = attempts.as_array().unwrap();
    assert!(
        attempts.first().unwrap()["error"].as_str().unwrap().len() > 3,
        "{attempts:?}"
    );
    assert!(attempts.last().unwrap()["error"].is_null(), "{attempts:?}");

    wait_for(&server, Duration::from_secs(60), "emails delivered", || {
        let d: Value = api
            .get("/console/api/v1/deliveries?team=payments&state=delivered")
            .json()
            .unwrap();
        let emails = d["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["channel"] == "email")
            .count();
        (emails >= 3).then_some(())
    });
    let received = std::fs::read_dir(mail.join("new"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(received >= 3, "{received} mails in the Maildir");
    let _ = smtp.kill();
    let _ = smtp.wait();

    let queue: Value = api.get("/console/api/v1/renewal/queue").json().unwrap();
    assert_eq!(queue["queue"], "database");
    assert_eq!(queue["dead"], 0, "{queue}");
    let metrics = reqwest::blocking::get(server.metrics_url.as_deref().unwrap())
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("certflow_renewal_jobs{queue=\"database\",state=\"dead\"} 0"),
        "{metrics}"
    );
    stop(server);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sqs_queue_on_moto_renews_repeatedly() {
    let rt = runtime();
    let moto = rt.block_on(certflow_testkit::Moto::start());
    let sdk = rt.block_on(moto.sdk_config());
    let (queue_url, dlq_url) = rt
        .block_on(certflow_renewal::ensure_queues(
            &sdk,
            "certflow-renewals",
            3,
        ))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut env: Vec<(&str, &str)> = FAST_RENEWAL.to_vec();
    env.extend([
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
        ("CERTFLOW_RENEWAL__SQS__MAX_RECEIVE_COUNT", "3"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    let server = start(&tmp.path().join("data"), &env).expect("start");
    let api = Api::new(&server, server.token_line.as_deref().unwrap());
    let id = create_short_lived(&api, "sqs.example.com", None, 120);
    let d = wait_for(
        &server,
        Duration::from_secs(200),
        "two renewals through SQS",
        || {
            let d = detail(&api, &id);
            (d["current_version"].as_u64() >= Some(3)).then_some(d)
        },
    );
    assert_no_gap(&d);
    let queue: Value = api.get("/console/api/v1/renewal/queue").json().unwrap();
    assert_eq!(queue["queue"], "sqs", "{queue}");
    assert_eq!(queue["dead"], 0, "{queue}");
    stop(server);
}

/// An `[acme.pebble]` configuration file for `pebble`, with a DNS-01 exec
/// hook when `hook` is given.
fn acme_config(
    dir: &Path,
    pebble: &certflow_testkit::pebble::Pebble,
    hook: Option<&Path>,
) -> String {
    let mut toml = format!(
        "[acme.pebble]\ndirectory_url = \"{}\"\nca_bundle = \"{}\"\nrequest_timeout_secs = 2\n",
        pebble.directory_url(),
        pebble.ca_bundle_path().display()
    );
    if let Some(hook) = hook {
        toml.push_str(&format!(
            "challenge = \"dns-01\"\n[acme.pebble.dns]\nprovider = \"exec\"\ncommand = \"{}\"\ntimeout_secs = 120\n",
            hook.display()
        ));
    }
    let path = dir.join("certflow.toml");
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

/// Shell lines of a DNS-01 exec hook that set (`present`) or clear
/// (`cleanup`) the TXT record in pebble-challtestsrv at `challtestsrv`.
pub(crate) fn dns01_txt(challtestsrv: &str) -> String {
    format!(
        "case \"$CERTFLOW_ACME_ACTION\" in\n\
         present) curl -sf -X POST {challtestsrv}/set-txt -d \"{{\\\"host\\\":\\\"$CERTFLOW_ACME_TXT_NAME.\\\",\\\"value\\\":\\\"$CERTFLOW_ACME_TXT_VALUE\\\"}}\" ;;\n\
         cleanup) curl -sf -X POST {challtestsrv}/clear-txt -d \"{{\\\"host\\\":\\\"$CERTFLOW_ACME_TXT_NAME.\\\"}}\" ;;\n\
         esac\n"
    )
}

fn acme_issuer_id(api: &Api) -> String {
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    issuers
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "acme" && i["name"] == "pebble")
        .unwrap_or_else(|| panic!("no ACME issuer: {issuers}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// HTTP-01 validated for real: pebble resolves every name to 127.0.0.1
/// (pebble-challtestsrv as its DNS) and fetches the token from certflow's
/// own console listener (pebble's `httpPort`), while rejecting a random
/// share of nonces (pebble's default), which certflow must retry.
#[test]
fn acme_issuer_renews_through_pebble_and_rides_out_a_hung_ca() {
    let rt = runtime();
    let listen = certflow_testkit::free_port();
    let pebble = rt.block_on(certflow_testkit::pebble::Pebble::start(
        certflow_testkit::pebble::PebbleOptions {
            leaf_validity_secs: Some(90),
            real_validation: true,
            http_port: Some(listen),
            reject_nonces: true,
            ..Default::default()
        },
    ));
    let tmp = tempfile::tempdir().unwrap();
    let config = acme_config(tmp.path(), &pebble, None);
    let listen = format!("127.0.0.1:{listen}");
    let mut env: Vec<(&str, &str)> = FAST_RENEWAL.to_vec();
    env.push(("CERTFLOW_CONFIG", config.as_str()));
    env.push(("CERTFLOW_SERVER__LISTEN", listen.as_str()));
    env.push(ALLOW_LOOPBACK_WEBHOOKS);
    let server = start(&tmp.path().join("data"), &env).expect("start");
    let api = Api::new(&server, server.token_line.as_deref().unwrap());
    let hook_port = certflow_testkit::free_port();
    let receiver = Receiver::listen(hook_port);
    let (status, _) = api.post(
        "/console/api/v1/subscriptions",
        json!({ "team": "payments", "events": ["renewal-failing", "renewed"],
                "channel": { "type": "webhook", "url": format!("http://127.0.0.1:{hook_port}/"), "format": "json" } }),
    );
    assert_eq!(status, 201);

    let issuer = acme_issuer_id(&api);
    let id = create_short_lived(&api, "acme.example.com", Some(&issuer), 120);
    let d = detail(&api, &id);
    let v1 = &d["versions"][0];
    let lifetime = time(&v1["not_after"]) - time(&v1["not_before"]);
    assert!(
        lifetime <= time::Duration::seconds(95),
        "pebble decides the lifetime: {v1}"
    );

    wait_for(&server, Duration::from_secs(120), "an ACME renewal", || {
        (detail(&api, &id)["current_version"].as_u64() >= Some(2)).then_some(())
    });

    // The CA hangs: attempts time out, the certificate shows "failing" with
    // the reason, the team hears about it once; nothing is lost.
    pebble.pause();
    let failing = wait_for(&server, Duration::from_secs(120), "renewal failing", || {
        let d = detail(&api, &id);
        (d["renewal"]["state"] == "failing").then_some(d)
    });
    let reason = failing["renewal"]["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("ACME CA"), "{reason}");
    assert_eq!(failing["current_version"], 2);
    wait_for(
        &server,
        Duration::from_secs(30),
        "renewal-failing notification",
        || {
            receiver
                .events()
                .contains(&"renewal-failing".to_owned())
                .then_some(())
        },
    );
    pebble.resume();
    let d = wait_for(
        &server,
        Duration::from_secs(60),
        "renewal after the CA is back",
        || {
            let d = detail(&api, &id);
            (d["current_version"].as_u64() >= Some(3)).then_some(d)
        },
    );
    assert_no_gap(&d);
    // Failing twice or more on one version alerts once.
    let events = receiver.events();
    assert_eq!(
        events.iter().filter(|e| *e == "renewal-failing").count(),
        1,
        "{events:?}"
    );
    let history = d["history"].to_string();
    assert!(history.contains("certificate.renewal.failed"), "{history}");
    stop(server);
}

#[test]
fn worker_killed_mid_job_is_retried_after_its_lease_and_issues_once() {
    let rt = runtime();
    let pebble = rt.block_on(certflow_testkit::pebble::Pebble::start(
        certflow_testkit::pebble::PebbleOptions {
            leaf_validity_secs: Some(60),
            real_validation: true,
            reject_nonces: true,
            ..Default::default()
        },
    ));
    let db = certflow_testkit::PgDatabase::create();
    let tmp = tempfile::tempdir().unwrap();
    // The DNS-01 hook hangs while the flag file exists: the worker is then
    // provably in the middle of a job when it is killed. Otherwise it sets
    // the TXT record in pebble-challtestsrv, which pebble validates against.
    let flag = tmp.path().join("hang");
    let calls = tmp.path().join("hook.log");
    let hook = tmp.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$CERTFLOW_ACME_ACTION $CERTFLOW_ACME_TXT_NAME\" >> {calls}\nif [ \"$CERTFLOW_ACME_ACTION\" = present ] && [ -f {flag} ]; then sleep 30; fi\n{txt}",
            calls = calls.display(),
            flag = flag.display(),
            txt = dns01_txt(pebble.challtestsrv_url().unwrap()),
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["755"])
        .arg(&hook)
        .status()
        .unwrap();
    let config = acme_config(tmp.path(), &pebble, Some(&hook));
    let blobs = tmp.path().join("blobs").display().to_string();
    let db_url = db.url();
    let mut env: Vec<(&str, &str)> = FAST_RENEWAL.to_vec();
    env.extend([
        ("CERTFLOW_CONFIG", config.as_str()),
        ("CERTFLOW_DATABASE__URL", db_url.as_str()),
        ("CERTFLOW_BLOB__PATH", blobs.as_str()),
        (
            "CERTFLOW_MASTER_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
        ("CERTFLOW_RENEWAL__LEASE_SECS", "4"),
    ]);
    let api_proc = start_with(
        &["serve", "--roles", "api,scheduler"],
        &tmp.path().join("api"),
        &env,
    )
    .expect("api");
    let api = Api::new(&api_proc, api_proc.token_line.as_deref().unwrap());
    let issuer = acme_issuer_id(&api);
    let id = create_short_lived(&api, "killed.example.com", Some(&issuer), 120);
    std::fs::write(&flag, b"").unwrap();

    let worker = start_with(&["worker"], &tmp.path().join("w1"), &env).expect("worker 1");
    wait_for(
        &api_proc,
        Duration::from_secs(90),
        "worker 1 inside the job",
        || {
            let d = detail(&api, &id);
            let presents = std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .matches("present")
                .count();
            (d["renewal"]["state"] == "running" && presents >= 2).then_some(())
        },
    );
    // kill -9: no graceful shutdown, the lease is simply never completed.
    let mut worker = worker;
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    std::fs::remove_file(&flag).unwrap();

    let w2 = start_with(&["worker"], &tmp.path().join("w2"), &env).expect("worker 2");
    let d = wait_for(
        &w2,
        Duration::from_secs(60),
        "the retried job's version",
        || {
            let d = detail(&api, &id);
            (d["current_version"].as_u64() >= Some(2)).then_some(d)
        },
    );
    // Exactly one new version from the job, renewed by the second worker.
    std::thread::sleep(Duration::from_secs(3));
    let d2 = detail(&api, &id);
    assert_eq!(d2["current_version"], 2, "{d2}");
    assert_eq!(d2["versions"].as_array().unwrap().len(), 2);
    let renewals = d2["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "certificate.renew")
        .count();
    assert_eq!(renewals, 1, "{}", d2["history"]);
    assert_no_gap(&d);
    drop(w2);
    stop(api_proc);
}
