//! certflow-acme against a real ACME server: pebble (Let's Encrypt's test CA),
//! started per test by `certflow_testkit::pebble` on free loopback ports.
//! Real validation (HTTP-01 through `http01_router`, DNS-01 through an exec
//! hook) uses pebble-challtestsrv as pebble's DNS server; the other cases run
//! pebble with `PEBBLE_VA_ALWAYS_VALID=1`. Route 53 runs against moto.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use certflow_acme::{
    AccountStore, AcmeIssuer, AcmeSettings, ChallengeKind, Dns01Record, DnsProvider, DnsSettings,
    EabSettings, ExecHook, Http01Tokens, MemoryAccountStore, PropagationSettings, Route53Provider,
    SealedAccountStore, http01_router,
};
use certflow_blob::ObjectBlobStore;
use certflow_core::model::{Issuer, IssuerKind, KeyType};
use certflow_core::ports::{BlobStore, IssueRequest, IssuedCertificate, IssuerBackend};
use certflow_core::{DomainError, DomainResult, Profile, SubjectName};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_testkit::Moto;
use certflow_testkit::pebble::{Pebble, PebbleOptions};
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use time::OffsetDateTime;
use uuid::Uuid;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

// ---------------------------------------------------------------- harness

/// Every case's pebble: leaves live 120 s so the lifetime assertion is exact.
fn opts() -> PebbleOptions {
    PebbleOptions {
        leaf_validity_secs: Some(120),
        ..PebbleOptions::default()
    }
}

/// What these cases need from a running pebble beyond the testkit handle.
trait PebbleExt {
    fn settings(&self) -> AcmeSettings;
    fn registrations(&self) -> usize;
    async fn root_der(&self) -> Vec<u8>;
    async fn directory(&self) -> serde_json::Value;
}

impl PebbleExt for Pebble {
    fn settings(&self) -> AcmeSettings {
        let mut s = AcmeSettings::new(self.directory_url());
        s.contact = vec!["ops@example.com".into()];
        s.ca_bundle = Some(self.ca_bundle_path().to_owned());
        s.order_timeout_secs = 60;
        s.request_timeout_secs = 10;
        s.propagation = PropagationSettings {
            delay_secs: 0,
            poll_interval_secs: 1,
            timeout_secs: 30,
        };
        s
    }

    /// How many accounts were registered (pebble logs each newAccount POST).
    fn registrations(&self) -> usize {
        self.log().matches("POST /sign-me-up").count()
    }

    /// The root that issued this run's certificates.
    async fn root_der(&self) -> Vec<u8> {
        pem::parse(self.root_pem().await).unwrap().into_contents()
    }

    async fn directory(&self) -> serde_json::Value {
        self.https_client()
            .get(self.directory_url())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn issuer_row() -> Issuer {
    let id = Uuid::now_v7();
    Issuer {
        id,
        name: "pebble".into(),
        kind: IssuerKind::Acme,
        is_default: false,
        key_type: KeyType::EcdsaP256,
        issuing_cert_pem: String::new(),
        chain_pem: String::new(),
        key_blob: format!("issuers/{id}/acme-account.enc"),
        root_key_blob: None,
        subject: "pebble".into(),
        not_after: OffsetDateTime::now_utc() + time::Duration::days(365),
        created_at: OffsetDateTime::now_utc(),
    }
}

fn dns(name: &str) -> SubjectName {
    SubjectName::Dns(name.into())
}

/// A request with a fresh P-256 key's CSR for `names`.
fn request(names: Vec<SubjectName>) -> IssueRequest {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut params = params;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n {
            SubjectName::Dns(d) => rcgen::SanType::DnsName(d.clone().try_into().unwrap()),
            SubjectName::Ip(ip) => rcgen::SanType::IpAddress(*ip),
        })
        .collect();
    IssueRequest {
        certificate_id: Uuid::now_v7(),
        names,
        profile: Profile::TlsServer,
        validity_days: 90,
        validity_secs: None,
        csr_der: params.serialize_request(&key).unwrap().der().to_vec(),
        spki_der: key.subject_public_key_info(),
        key_type: KeyType::EcdsaP256,
        replaces_der: None,
    }
}

async fn issuer(settings: AcmeSettings, store: Arc<dyn AccountStore>) -> AcmeIssuer {
    AcmeIssuer::new(settings, store, Http01Tokens::new())
        .await
        .unwrap()
}

async fn issue(i: &AcmeIssuer, req: &IssueRequest) -> DomainResult<IssuedCertificate> {
    i.issue(&issuer_row(), req, OffsetDateTime::now_utc()).await
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => (*d).to_owned(),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
            }
            other => format!("{other:?}"),
        })
        .collect();
    out.sort();
    out
}

/// Asserts `issued` chains to `root_der`: leaf ← chain[0] ← … ← root.
fn assert_chains_to(issued: &IssuedCertificate, root_der: &[u8]) {
    let chain: Vec<Vec<u8>> = pem::parse_many(&issued.chain_pem)
        .unwrap()
        .into_iter()
        .map(pem::Pem::into_contents)
        .collect();
    assert!(!chain.is_empty(), "no intermediates returned");
    let mut ders = vec![issued.cert_der.clone()];
    ders.extend(chain);
    ders.push(root_der.to_vec());
    for pair in ders.windows(2) {
        let (_, child) = X509Certificate::from_der(&pair[0]).unwrap();
        let (_, parent) = X509Certificate::from_der(&pair[1]).unwrap();
        child
            .verify_signature(Some(parent.public_key()))
            .unwrap_or_else(|e| {
                panic!(
                    "{} is not signed by {}: {e}",
                    child.subject(),
                    parent.subject()
                )
            });
    }
}

// ------------------------------------------------------------------ cases

/// An order for several names (DNS and an IP) finalizes with our CSR: the leaf
/// carries exactly those names, our key, pebble's short validity, and chains
/// to the root pebble generated at this start.
#[tokio::test]
async fn issues_for_several_names_and_chains_to_pebble_root() {
    let pebble = Pebble::start(opts()).await;
    let tokens = Http01Tokens::new();
    let acme = AcmeIssuer::new(
        pebble.settings(),
        Arc::new(MemoryAccountStore::new()),
        tokens.clone(),
    )
    .await
    .unwrap();
    let req = request(vec![
        dns("a.example.com"),
        dns("b.example.com"),
        dns("c.example.org"),
        SubjectName::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
    ]);
    let started = Instant::now();
    let issued = issue(&acme, &req).await.unwrap();
    eprintln!("issued 4-name certificate in {:?}", started.elapsed());

    let (_, leaf) = X509Certificate::from_der(&issued.cert_der).unwrap();
    assert_eq!(
        sans(&leaf),
        [
            "192.0.2.10",
            "a.example.com",
            "b.example.com",
            "c.example.org"
        ]
    );
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&req.csr_der)
            .unwrap();
    assert_eq!(
        leaf.public_key().raw,
        csr.certification_request_info.subject_pki.raw
    );
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((110..=130).contains(&lifetime), "lifetime {lifetime}s");
    assert_chains_to(&issued, &pebble.root_der().await);
    assert!(tokens.is_empty(), "tokens left published");

    // Wildcards need DNS-01: the CA offers nothing this issuer can answer.
    let err = issue(&acme, &request(vec![dns("*.w.example.com")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::Conflict(m) if m.contains("no http-01 challenge for *.w.example.com (offered: dns-01)")),
        "{err:?}"
    );
    assert!(tokens.is_empty());
}

/// A second issuer instance over the same (sealed) store uses the account the
/// first registered: one newAccount at the CA, and the blob is encrypted.
#[tokio::test]
async fn account_is_registered_once_and_kept_sealed() {
    let pebble = Pebble::start(opts()).await;
    let blob_dir = tempfile::tempdir().unwrap();
    let blobs: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::local(blob_dir.path()).unwrap());
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        vec![],
    )));
    let row = issuer_row();
    let store = SealedAccountStore::for_issuer(blobs.clone(), sealer.clone(), &row);
    assert_eq!(store.blob_key(), row.key_blob);

    let first = issuer(pebble.settings(), Arc::new(store.clone())).await;
    issue(&first, &request(vec![dns("one.example.com")]))
        .await
        .unwrap();
    let id_first = first.account_id().await.unwrap();

    let second = issuer(pebble.settings(), Arc::new(store.clone())).await;
    issue(&second, &request(vec![dns("two.example.com")]))
        .await
        .unwrap();
    assert_eq!(second.account_id().await.unwrap(), id_first);
    assert_eq!(pebble.registrations(), 1, "{}", pebble.log());

    let sealed = blobs.get(&row.key_blob).await.unwrap();
    let plain = store.load().await.unwrap().unwrap();
    assert!(plain.contains("key_pkcs8"));
    assert!(
        !String::from_utf8_lossy(&sealed).contains("key_pkcs8"),
        "credentials stored in clear"
    );
    // Another record's context cannot open it.
    let other = SealedAccountStore::for_issuer(blobs.clone(), sealer, &issuer_row());
    blobs.put(other.blob_key(), sealed.clone()).await.unwrap();
    assert!(matches!(other.load().await, Err(DomainError::Integrity(_))));
}

/// With EAB required, the right MAC key registers; a wrong key and no key are
/// refused with the CA's problem as a Conflict.
#[tokio::test]
async fn external_account_binding_required_by_the_ca() {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    let wrong = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([8u8; 32]);
    let pebble = Pebble::start(PebbleOptions {
        eab_keys: vec![("kid-1".into(), key.clone())],
        ..opts()
    })
    .await;

    let with = |kid: &str, hmac: &str| {
        let mut s = pebble.settings();
        s.external_account_binding = Some(EabSettings {
            key_id: kid.into(),
            hmac_key: hmac.to_owned().into(),
        });
        s
    };

    let good = issuer(with("kid-1", &key), Arc::new(MemoryAccountStore::new())).await;
    issue(&good, &request(vec![dns("eab.example.com")]))
        .await
        .unwrap();

    let bad = issuer(with("kid-1", &wrong), Arc::new(MemoryAccountStore::new())).await;
    let err = issue(&bad, &request(vec![dns("eab.example.com")]))
        .await
        .unwrap_err();
    eprintln!("wrong EAB key: {err}");
    let DomainError::Conflict(msg) = &err else {
        panic!("expected Conflict, got {err:?}")
    };
    assert!(msg.contains("urn:ietf:params:acme:error:"), "{msg}");
    assert!(!msg.contains(&wrong), "MAC key leaked into the error");

    let none = issuer(pebble.settings(), Arc::new(MemoryAccountStore::new())).await;
    let err = issue(&none, &request(vec![dns("eab.example.com")]))
        .await
        .unwrap_err();
    eprintln!("no EAB: {err}");
    assert!(
        matches!(&err, DomainError::Conflict(m) if m.contains("externalAccountRequired")),
        "{err:?}"
    );
}

/// DNS-01 through the exec hook with real validation: pebble queries
/// pebble-challtestsrv, where the hook publishes the TXT values. A name and its
/// wildcard share `_acme-challenge.<name>`: both values must be live together.
#[tokio::test]
async fn dns01_exec_hook_presents_then_cleans_up_with_real_validation() {
    let pebble = Pebble::start(PebbleOptions {
        real_validation: true,
        ..opts()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("hook-calls.txt");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
set -eu
echo "$CERTFLOW_ACME_ACTION $CERTFLOW_ACME_DOMAIN $CERTFLOW_ACME_TXT_NAME $CERTFLOW_ACME_TXT_VALUE" >> "$1"
case "$CERTFLOW_ACME_ACTION" in
  present) curl -sf -X POST "$2/set-txt" -d "{\"host\":\"$CERTFLOW_ACME_TXT_NAME.\",\"value\":\"$CERTFLOW_ACME_TXT_VALUE\"}" ;;
  cleanup) curl -sf -X POST "$2/clear-txt" -d "{\"host\":\"$CERTFLOW_ACME_TXT_NAME.\"}" ;;
esac
"#,
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();

    let mut settings = pebble.settings();
    settings.challenge = ChallengeKind::Dns01;
    settings.dns = Some(DnsSettings::Exec {
        command: script.clone(),
        args: vec![
            calls.display().to_string(),
            pebble.challtestsrv_url().unwrap().to_owned(),
        ],
        timeout_secs: 10,
    });
    let acme = issuer(settings, Arc::new(MemoryAccountStore::new())).await;
    let issued = issue(
        &acme,
        &request(vec![dns("dns.example.com"), dns("*.dns.example.com")]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pebble.log()));
    let (_, leaf) = X509Certificate::from_der(&issued.cert_der).unwrap();
    assert_eq!(sans(&leaf), ["*.dns.example.com", "dns.example.com"]);

    let lines: Vec<Vec<String>> = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let actions: Vec<&str> = lines.iter().map(|l| l[0].as_str()).collect();
    assert_eq!(actions, ["present", "present", "cleanup", "cleanup"]);
    for l in &lines {
        assert_eq!(l[1], "dns.example.com");
        assert_eq!(l[2], "_acme-challenge.dns.example.com");
        assert_eq!(l[3].len(), 43, "base64url SHA-256: {}", l[3]);
    }
    assert_ne!(
        lines[0][3], lines[1][3],
        "the two authorizations share a value"
    );
    assert_eq!(
        [&lines[0][3], &lines[1][3]],
        [&lines[2][3], &lines[3][3]],
        "cleanup removes what present added"
    );
}

/// A failing hook reports its exit status and stderr tail; a hanging one is killed.
#[tokio::test]
async fn exec_hook_failure_and_timeout_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let record = Dns01Record::new("*.x.example.com", "v".repeat(43));
    assert_eq!(record.txt_name, "_acme-challenge.x.example.com");

    let failing = ExecHook::new(
        "/bin/sh",
        vec![
            "-c".into(),
            "echo noise; echo 'zone x.example.com is locked' >&2; exit 3".into(),
        ],
        Duration::from_secs(5),
    );
    let err = failing
        .present(std::slice::from_ref(&record))
        .await
        .unwrap_err();
    let DomainError::Unavailable { backend, reason } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*backend, "ACME DNS hook");
    assert!(reason.contains("zone x.example.com is locked"), "{reason}");
    assert!(reason.contains('3'), "{reason}");
    assert!(
        !reason.contains("noise"),
        "stdout is not the error: {reason}"
    );

    let marker = dir.path().join("finished");
    let hanging = ExecHook::new(
        "/bin/sh",
        vec!["-c".into(), format!("sleep 5; touch {}", marker.display())],
        Duration::from_secs(1),
    );
    let started = Instant::now();
    let err = hanging.present(&[record]).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.to_string().contains("timed out"), "{err}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!marker.exists(), "the timed-out hook kept running");
}

/// Wraps the real Route 53 provider to look at the zone between present and cleanup.
struct Observed {
    inner: Route53Provider,
    client: aws_sdk_route53::Client,
    zone: String,
    seen: Mutex<Vec<(String, Vec<String>)>>,
}

async fn txt_records(client: &aws_sdk_route53::Client, zone: &str) -> Vec<(String, Vec<String>)> {
    let out = client
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .unwrap();
    out.resource_record_sets()
        .iter()
        .filter(|r| r.r#type() == &aws_sdk_route53::types::RrType::Txt)
        .map(|r| {
            (
                r.name().to_owned(),
                r.resource_records()
                    .iter()
                    .map(|v| v.value().to_owned())
                    .collect(),
            )
        })
        .collect()
}

#[async_trait]
impl DnsProvider for Observed {
    async fn present(&self, records: &[Dns01Record]) -> DomainResult<()> {
        self.inner.present(records).await?;
        *self.seen.lock().unwrap() = txt_records(&self.client, &self.zone).await;
        Ok(())
    }

    async fn cleanup(&self, records: &[Dns01Record]) -> DomainResult<()> {
        self.inner.cleanup(records).await
    }
}

/// DNS-01 through Route 53 (moto): the TXT records exist while the CA
/// validates and are gone afterwards.
#[tokio::test]
async fn dns01_route53_upserts_waits_and_deletes() {
    let pebble = Pebble::start(opts()).await;
    let moto = Moto::start().await;
    let client = aws_sdk_route53::Client::new(&moto.sdk_config().await);
    let zone = client
        .create_hosted_zone()
        .name("r53.example.com")
        .caller_reference(Uuid::now_v7().to_string())
        .send()
        .await
        .unwrap()
        .hosted_zone()
        .unwrap()
        .id()
        .to_owned();
    let mut settings = pebble.settings();
    settings.challenge = ChallengeKind::Dns01;
    settings.dns = Some(DnsSettings::Route53 {
        hosted_zone_id: zone.clone(),
        endpoint_url: Some(moto.endpoint.clone()),
    });
    let provider = Arc::new(Observed {
        inner: Route53Provider::new(client.clone(), zone.clone(), &settings.propagation),
        client: client.clone(),
        zone: zone.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let acme = issuer(settings, Arc::new(MemoryAccountStore::new()))
        .await
        .with_dns_provider(provider.clone());
    issue(
        &acme,
        &request(vec![dns("www.r53.example.com"), dns("*.r53.example.com")]),
    )
    .await
    .unwrap();

    let mut seen = provider.seen.lock().unwrap().clone();
    seen.sort();
    eprintln!("TXT during validation: {seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0].0.trim_end_matches('.'),
        "_acme-challenge.r53.example.com"
    );
    assert_eq!(
        seen[1].0.trim_end_matches('.'),
        "_acme-challenge.www.r53.example.com"
    );
    for (_, values) in &seen {
        for v in values {
            assert!(v.starts_with('"') && v.len() == 45, "{v}");
        }
    }
    assert!(
        txt_records(&client, &zone).await.is_empty(),
        "TXT records left behind"
    );
}

/// ARI: pebble's renewal window when its directory offers `renewalInfo`,
/// otherwise `None`; a renewal order with `replaces` works either way.
#[tokio::test]
async fn renewal_info_and_replaces() {
    let pebble = Pebble::start(opts()).await;
    let acme = issuer(pebble.settings(), Arc::new(MemoryAccountStore::new())).await;
    let first = issue(&acme, &request(vec![dns("ari.example.com")]))
        .await
        .unwrap();
    let window = acme
        .renewal_info(&issuer_row(), &first.cert_der)
        .await
        .unwrap();
    let dir = pebble.directory().await;
    eprintln!(
        "pebble renewalInfo: {:?}; window: {window:?}",
        dir.get("renewalInfo")
    );
    if dir.get("renewalInfo").is_some() {
        let w = window.expect("CA offers ARI but no window");
        let (_, leaf) = X509Certificate::from_der(&first.cert_der).unwrap();
        let nb = leaf.validity().not_before.timestamp();
        let na = leaf.validity().not_after.timestamp();
        assert!(nb <= w.start.unix_timestamp() && w.start <= w.end && w.end.unix_timestamp() <= na);
    } else {
        assert!(window.is_none());
    }

    let mut renewal = request(vec![dns("ari.example.com")]);
    renewal.replaces_der = Some(first.cert_der.clone());
    let second = issue(&acme, &renewal).await.unwrap();
    assert_ne!(second.cert_der, first.cert_der);
}

/// With pebble gone, issuance fails as Unavailable (retry later), both with a
/// cached account and for a first registration.
#[tokio::test]
async fn ca_down_is_unavailable() {
    let mut pebble = Pebble::start(opts()).await;
    let acme = issuer(pebble.settings(), Arc::new(MemoryAccountStore::new())).await;
    issue(&acme, &request(vec![dns("up.example.com")]))
        .await
        .unwrap();
    pebble.stop();

    let err = issue(&acme, &request(vec![dns("down.example.com")]))
        .await
        .unwrap_err();
    eprintln!("CA down: {err}");
    assert!(
        matches!(
            &err,
            DomainError::Unavailable {
                backend: "ACME CA",
                ..
            }
        ),
        "{err:?}"
    );
    let fresh = issuer(pebble.settings(), Arc::new(MemoryAccountStore::new())).await;
    let err = issue(&fresh, &request(vec![dns("down.example.com")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::Unavailable { backend: "ACME CA", reason } if reason.contains("onnect")),
        "{err:?}"
    );
}

/// A hung CA (pebble paused) makes issuance fail as Unavailable within the
/// request timeout; once it recovers, the same issuer issues again with the
/// account it already had (no second registration).
#[tokio::test]
async fn hung_ca_is_unavailable_then_recovers_with_the_same_account() {
    let pebble = Pebble::start(opts()).await;
    let mut settings = pebble.settings();
    settings.request_timeout_secs = 2;
    let acme = issuer(settings, Arc::new(MemoryAccountStore::new())).await;
    issue(&acme, &request(vec![dns("before.example.com")]))
        .await
        .unwrap();
    let account = acme.account_id().await.unwrap();

    pebble.pause();
    let started = Instant::now();
    let err = issue(&acme, &request(vec![dns("hung.example.com")]))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    eprintln!("CA hung: {err} after {waited:?}");
    assert!(
        matches!(
            &err,
            DomainError::Unavailable {
                backend: "ACME CA",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        waited < Duration::from_secs(30),
        "gave up only after {waited:?}"
    );

    pebble.resume();
    let started = Instant::now();
    let issued = issue(&acme, &request(vec![dns("after.example.com")]))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.log()));
    eprintln!("issued after resume in {:?}", started.elapsed());
    let (_, leaf) = X509Certificate::from_der(&issued.cert_der).unwrap();
    assert_eq!(sans(&leaf), ["after.example.com"]);
    assert_eq!(acme.account_id().await.unwrap(), account);
    assert_eq!(pebble.registrations(), 1, "{}", pebble.log());
}

/// HTTP-01 with real validation: pebble resolves the names through
/// pebble-challtestsrv to 127.0.0.1 and fetches the token from
/// `http01_router` served on its `httpPort`.
#[tokio::test]
async fn http01_real_validation_through_the_router() {
    let pebble = Pebble::start(PebbleOptions {
        real_validation: true,
        ..opts()
    })
    .await;
    let tokens = Http01Tokens::new();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", pebble.http_port()))
        .await
        .unwrap();
    let hits = Arc::new(Mutex::new(0usize));
    let counted = hits.clone();
    let app = http01_router(tokens.clone()).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let counted = counted.clone();
            async move {
                *counted.lock().unwrap() += 1;
                next.run(req).await
            }
        },
    ));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let acme = AcmeIssuer::new(
        pebble.settings(),
        Arc::new(MemoryAccountStore::new()),
        tokens.clone(),
    )
    .await
    .unwrap();
    let issued = issue(
        &acme,
        &request(vec![dns("web.example.com"), dns("api.example.com")]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pebble.log()));
    let (_, leaf) = X509Certificate::from_der(&issued.cert_der).unwrap();
    assert_eq!(sans(&leaf), ["api.example.com", "web.example.com"]);
    assert!(
        *hits.lock().unwrap() >= 2,
        "pebble never fetched the tokens"
    );
    assert!(tokens.is_empty());

    // An unknown token is a 404.
    let rsp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "http://127.0.0.1:{}/.well-known/acme-challenge/nope",
            pebble.http_port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 404);
    server.abort();
}

/// HTTP-01 with nothing answering: the CA's validation error reaches the user.
#[tokio::test]
async fn failed_validation_is_a_conflict_with_the_ca_problem() {
    let pebble = Pebble::start(PebbleOptions {
        real_validation: true,
        ..opts()
    })
    .await;
    let acme = issuer(pebble.settings(), Arc::new(MemoryAccountStore::new())).await;
    let err = issue(&acme, &request(vec![dns("nobody.example.com")]))
        .await
        .unwrap_err();
    eprintln!("failed validation: {err}");
    let DomainError::Conflict(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(msg.contains("nobody.example.com"), "{msg}");
    assert!(
        msg.contains("urn:ietf:params:acme:error:connection"),
        "{msg}"
    );
}

/// The settings embed in TOML, reject unknown keys and explain bad values.
#[test]
fn settings_from_toml() {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    let s: AcmeSettings = Figment::from(Toml::string(
        r#"
        directory_url = "https://acme.example/dir"
        contact = ["ops@example.com", "mailto:sec@example.com"]
        challenge = "dns-01"
        ca_bundle = "/etc/certflow/acme-ca.pem"
        order_timeout_secs = 120
        [external_account_binding]
        key_id = "kid-1"
        hmac_key = "c2VjcmV0LW1hYy1rZXk"
        [dns]
        provider = "exec"
        command = "/usr/local/bin/dns-hook"
        args = ["--zone", "example.com"]
        timeout_secs = 30
        [propagation]
        delay_secs = 10
        "#,
    ))
    .extract()
    .unwrap();
    s.validate().unwrap();
    assert_eq!(s.challenge, ChallengeKind::Dns01);
    assert!(matches!(
        &s.dns,
        Some(DnsSettings::Exec {
            timeout_secs: 30,
            ..
        })
    ));
    assert_eq!(s.propagation.delay_secs, 10);
    assert_eq!(s.propagation.timeout_secs, 300);
    assert!(!format!("{s:?}").contains("c2VjcmV0"), "MAC key in Debug");

    let r53: AcmeSettings = Figment::from(Toml::string(
        r#"
        directory_url = "https://acme.example/dir"
        challenge = "dns-01"
        dns = { provider = "route53", hosted_zone_id = "Z1" }
        "#,
    ))
    .extract()
    .unwrap();
    assert!(
        matches!(&r53.dns, Some(DnsSettings::Route53 { hosted_zone_id, endpoint_url: None }) if hosted_zone_id == "Z1")
    );

    for bad in [
        "directory_url = \"https://a/dir\"\nchalenge = \"dns-01\"",
        "directory_url = \"https://a/dir\"\ndns = { provider = \"route53\", hosted_zone = \"Z\" }",
        "directory_url = \"https://a/dir\"\nchallenge = \"tls-alpn-01\"",
    ] {
        assert!(
            Figment::from(Toml::string(bad))
                .extract::<AcmeSettings>()
                .is_err(),
            "accepted: {bad}"
        );
    }

    let mut s = AcmeSettings::new("http://acme.example/dir");
    s.challenge = ChallengeKind::Dns01;
    s.contact = vec!["not-an-email".into()];
    s.external_account_binding = Some(EabSettings {
        key_id: "k".into(),
        hmac_key: "!!!".to_owned().into(),
    });
    let Err(DomainError::Invalid(errors)) = s.validate() else {
        panic!()
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "acme.directory_url",
            "acme.contact[0]",
            "acme.external_account_binding.hmac_key",
            "acme.dns"
        ]
    );
}
