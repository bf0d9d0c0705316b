//! The production shape: two `certflow` replicas on PostgreSQL, S3 and KMS
//! (moto). Unreachable backends stop a replica with the backend named;
//! concurrent creates, renewals and idempotent retries across both replicas
//! never duplicate a certificate, a version or a serial; losing issuances
//! leave no orphan blob; a rotated bootstrap token reaches both replicas.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::peers::Moto;
use crate::support::{Api, BIN, Server, start};

#[test]
fn two_replicas_on_postgres_s3_and_kms_never_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let db = certflow_testkit::PgDatabase::create();
    let moto = Moto::start();
    moto.create_bucket("certflow-e2e");
    let kms_key = moto.create_key();
    let url = db.url();
    // The production shape: PostgreSQL, S3 and KMS, credentials from the environment.
    let env = [
        ("CERTFLOW_DATABASE__URL", url.as_str()),
        ("CERTFLOW_BLOB__KIND", "s3"),
        ("CERTFLOW_BLOB__BUCKET", "certflow-e2e"),
        ("CERTFLOW_BLOB__PREFIX", "prod"),
        ("CERTFLOW_BLOB__REGION", "eu-west-1"),
        ("CERTFLOW_BLOB__ENDPOINT", moto.endpoint.as_str()),
        ("CERTFLOW_BLOB__PATH_STYLE", "true"),
        ("CERTFLOW_BLOB__ALLOW_HTTP", "true"),
        ("CERTFLOW_MASTER_KEY__PROVIDER", "kms"),
        ("CERTFLOW_MASTER_KEY__KMS_KEY_ID", kms_key.as_str()),
        ("CERTFLOW_MASTER_KEY__KMS_REGION", "eu-west-1"),
        ("CERTFLOW_MASTER_KEY__KMS_ENDPOINT", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    // An unreachable S3 stops the server with the backend named.
    let mut bad = env.to_vec();
    bad[5] = ("CERTFLOW_BLOB__ENDPOINT", "http://127.0.0.1:9");
    let err = start(&tmp.path().join("x"), &bad)
        .err()
        .expect("unreachable S3 must stop the server");
    assert!(
        err.contains("blob store") && err.contains("certflow-e2e"),
        "{err}"
    );
    // So does an unreachable database, naming it and never a password.
    let mut bad = env.to_vec();
    bad[0] = (
        "CERTFLOW_DATABASE__URL",
        "postgres://postgres:hunter2@127.0.0.1:9/certflow",
    );
    let err = start(&tmp.path().join("y"), &bad)
        .err()
        .expect("unreachable database must stop the server");
    assert!(
        err.contains("PostgreSQL") && err.contains("127.0.0.1:9") && !err.contains("hunter2"),
        "{err}"
    );
    // Without a configured master key, a PostgreSQL deployment refuses to mint one per host.
    let err = start(&tmp.path().join("x"), &env[..1])
        .err()
        .expect("no key with PostgreSQL must be refused");
    assert!(err.contains("every replica needs the same key"), "{err}");

    let a = start(&tmp.path().join("a"), &env).expect("replica a");
    let token = a
        .token_line
        .clone()
        .expect("first replica prints the token");
    let b = start(&tmp.path().join("b"), &env).expect("replica b");
    assert!(b.token_line.is_none());
    let (api_a, api_b) = (Api::new(&a, &token), Api::new(&b, &token));
    let ia: Value = api_a.get("/console/api/v1/issuers").json().unwrap();
    let ib: Value = api_b.get("/console/api/v1/issuers").json().unwrap();
    assert_eq!(ia, ib, "both replicas use the one CA");
    assert_eq!(ia.as_array().unwrap().len(), 1);

    // Eight concurrent creates of the same name across both replicas: exactly one wins.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = if i % 2 == 0 { &api_a } else { &api_b };
                s.spawn(move || {
                    api.post(
                        "/console/api/v1/certificates",
                        json!({ "team": "payments", "names": ["race.example.com"] }),
                    )
                    .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );

    // Concurrent renewals: every success is a distinct next version; no duplicate serials.
    let page: Value = api_b
        .get("/console/api/v1/certificates?search=race")
        .json()
        .unwrap();
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = if i % 2 == 0 { &api_a } else { &api_b };
                let path = format!("/console/api/v1/certificates/{id}/renew");
                s.spawn(move || api.post(&path, json!({})).0)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wins = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        wins >= 1 && statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let detail: Value = api_a
        .get(&format!("/console/api/v1/certificates/{id}"))
        .json()
        .unwrap();
    let versions = detail["versions"].as_array().unwrap();
    assert_eq!(
        versions.len(),
        wins + 1,
        "one version per successful renewal"
    );
    let mut numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(numbers, (1..=versions.len() as u64).collect::<Vec<_>>());
    let mut serials: Vec<&str> = versions
        .iter()
        .map(|v| v["serial"].as_str().unwrap())
        .collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), versions.len(), "duplicate serials");
    assert_eq!(
        versions.iter().filter(|v| v["status"] == "current").count(),
        1
    );
    // Nothing was written locally: blob.kind = "s3" keeps every blob in the bucket.
    for replica in ["a", "b"] {
        assert!(
            !tmp.path().join(replica).join("blobs").exists(),
            "replica {replica} wrote local blobs"
        );
    }
    // The key sealed by one replica opens on the other.
    assert!(api_b.download(&id, "key").contains("PRIVATE KEY"));

    // Duplicate delivery: eight concurrent creates with one Idempotency-Key and
    // one body, spread across both replicas. Several may sign, exactly one
    // commits, and every response is that certificate.
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = if i % 2 == 0 { &api_a } else { &api_b };
                s.spawn(move || {
                    api.post_keyed(
                        "/console/api/v1/certificates",
                        "create-once",
                        json!({ "team": "payments", "names": ["once.example.com"] }),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        results.iter().all(|(status, _)| *status == 201),
        "{results:?}"
    );
    let mut ids: Vec<&str> = results
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one certificate for one key: {results:?}");
    let once = ids[0].to_owned();
    let page: Value = api_a
        .get("/console/api/v1/certificates?search=once.example.com")
        .json()
        .unwrap();
    assert_eq!(page["total"], 1, "{page}");
    let detail: Value = api_b
        .get(&format!("/console/api/v1/certificates/{once}"))
        .json()
        .unwrap();
    assert_eq!(detail["versions"].as_array().unwrap().len(), 1, "{detail}");

    // And eight concurrent renewals with one key: exactly one new version.
    let results: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = if i % 2 == 0 { &api_a } else { &api_b };
                let path = format!("/console/api/v1/certificates/{once}/renew");
                s.spawn(move || api.post_keyed(&path, "renew-once", json!({})))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        results
            .iter()
            .all(|(status, v)| *status == 200 && v["current_version"] == 2),
        "{results:?}"
    );
    let detail: Value = api_a
        .get(&format!("/console/api/v1/certificates/{once}"))
        .json()
        .unwrap();
    let versions = detail["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{detail}");
    let serial2 = versions[0]["serial"].as_str().unwrap();
    assert!(
        results
            .iter()
            .all(|(_, v)| v["versions"][0]["serial"] == serial2),
        "{results:?}"
    );

    // Every losing issuance (the races above) removed its own blobs: a sweep
    // with no grace period finds no orphan.
    let out = Command::new(BIN)
        .args(["admin", "sweep-blobs", "--grace-hours", "0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CERTFLOW_DATA_DIR", tmp.path().join("sweep"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deleted 0 orphans"), "{stdout}");

    // Cross-replica invalidation: rotating the bootstrap token (a third process)
    // reaches both running replicas' in-memory copies through LISTEN/NOTIFY.
    let out = Command::new(BIN)
        .args(["admin", "rotate-bootstrap-token"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CERTFLOW_DATABASE__URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let new_token = stdout
        .trim()
        .strip_prefix("export CERTFLOW_TOKEN=")
        .expect("new token printed")
        .to_owned();
    let status = |server: &Server, token: &str| {
        reqwest::blocking::Client::new()
            .get(format!("{}/console/api/v1/issuers", server.url))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = [
            status(&a, &new_token),
            status(&b, &new_token),
            status(&a, &token),
            status(&b, &token),
        ];
        if seen == [200, 200, 401, 401] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not pick up the rotated token: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
