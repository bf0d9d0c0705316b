//! The pebble starter itself: its directory answers over the generated TLS CA,
//! pause() makes requests time out without losing state, resume() restores
//! them, and drop takes pebble down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use certflow_testkit::pebble::{Pebble, PebbleOptions};

#[tokio::test]
async fn pause_times_out_requests_and_resume_restores_them() {
    let started = Instant::now();
    let pebble = Pebble::start(PebbleOptions::default()).await;
    eprintln!("pebble ready in {:?}", started.elapsed());
    assert!(pebble.directory_url().starts_with("https://127.0.0.1:"));
    assert!(pebble.directory_url().ends_with("/dir"));
    assert!(pebble.challtestsrv_url().is_none());

    let client = pebble.https_client();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).timeout(Duration::from_secs(1)).send().await }
    };
    let dir: serde_json::Value = get(pebble.directory_url().to_owned())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(dir.get("newOrder").is_some(), "{dir}");
    let root = pebble.root_pem().await;
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");

    pebble.pause();
    let t = Instant::now();
    let err = get(pebble.directory_url().to_owned()).await.unwrap_err();
    eprintln!("paused: {err} after {:?}", t.elapsed());
    assert!(err.is_timeout(), "{err:?}");

    pebble.resume();
    let t = Instant::now();
    let rsp = get(pebble.directory_url().to_owned()).await.unwrap();
    eprintln!("resumed: {} after {:?}", rsp.status(), t.elapsed());
    assert!(rsp.status().is_success());
    assert_eq!(pebble.root_pem().await, root, "state lost across pause");

    let url = pebble.directory_url().to_owned();
    let fresh = pebble.https_client();
    drop(pebble);
    // A fresh client: a pooled connection would fail differently.
    let err = fresh.get(url).send().await.unwrap_err();
    assert!(err.is_connect(), "pebble still answers after drop: {err:?}");
}

/// Real validation runs pebble-challtestsrv; the chosen HTTP-01 port is kept.
#[tokio::test]
async fn real_validation_starts_challtestsrv_with_the_given_ports() {
    let http_port = certflow_testkit::free_port();
    let pebble = Pebble::start(PebbleOptions {
        real_validation: true,
        http_port: Some(http_port),
        leaf_validity_secs: Some(300),
        ..PebbleOptions::default()
    })
    .await;
    assert_eq!(pebble.http_port(), http_port);
    let url = pebble.challtestsrv_url().expect("challtestsrv url");
    let rsp = certflow_testkit::http()
        .post(format!("{url}/set-txt"))
        .body(r#"{"host":"_acme-challenge.x.example.com.","value":"v"}"#)
        .send()
        .await
        .unwrap();
    assert!(rsp.status().is_success(), "{}", rsp.status());
}
