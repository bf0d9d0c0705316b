//! OCSP responder throughput, in one run so that the ratios compare:
//!
//! - `ocsp/sign/{ca_p256,ca_rsa2048}`: building and signing a one-answer
//!   OCSPResponse with the delegated responder key (always P-256; the CA's key
//!   type only changes the responder certificate embedded in the response).
//! - `ocsp/responder_cert/{ca_p256,ca_rsa2048}`: issuing that delegated
//!   responder certificate (a P-256 key generated, certified by the CA key),
//!   which a replica pays once per issuer every 12 hours.
//! - `ocsp/services_sqlite/{cached,uncached}`: `Services::ocsp`, the whole
//!   answer path behind `/pki/{issuer}/ocsp` minus HTTP (request parsing,
//!   responder look-up, status, signing) for a certificate issued by the
//!   internal CA (P-256) on a SQLite file. `cached` asks about one serial at
//!   one instant, so its status comes from the per-replica cache; `uncached`
//!   cycles through 100 certificates while its clock advances one second per
//!   answer, so every status is older than the cache's 60 s and is read from
//!   the store (`version_by_serial`).
//!
//! Run it with `cargo bench -p certflow-services --bench ocsp`; it needs no
//! PostgreSQL. Figures and method are in BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;

use certflow_api::CreateCertificateRequest;
use certflow_blob::ObjectBlobStore;
use certflow_core::model::{Actor, KeyType};
use certflow_pki::{OcspAnswer, OcspCertStatus, OcspSigner, create_ca};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::{CaSettings, Services};
use certflow_store::SqliteStore;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Certificates the uncached variant cycles through: more than the 60
/// one-second steps a cached status lives, so none is still cached when asked
/// again.
const UNCACHED_CERTS: usize = 100;

/// DER tag-length-value (short and long lengths).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).unwrap());
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | u8::try_from(bytes.len()).unwrap());
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// SHA-1, the CertID hash every OCSP client sends.
fn sha1(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

/// A DER OCSPRequest (SHA-1 CertID, no nonce: what most clients and
/// caching proxies send) for `serial_hex` issued by `ca_der`.
fn ocsp_request(ca_der: &[u8], serial_hex: &str) -> Vec<u8> {
    let (_, ca) = X509Certificate::from_der(ca_der).unwrap();
    let sha1_alg = tlv(
        0x30,
        &[tlv(0x06, &[0x2b, 0x0e, 0x03, 0x02, 0x1a]), vec![0x05, 0x00]].concat(),
    );
    let mut serial = hex::decode(serial_hex).unwrap();
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        // A positive INTEGER whose first octet has the top bit set.
        serial.insert(0, 0);
    }
    let cert_id = tlv(
        0x30,
        &[
            sha1_alg,
            tlv(0x04, &sha1(ca.subject().as_raw())),
            tlv(0x04, &sha1(&ca.public_key().subject_public_key.data)),
            tlv(0x02, &serial),
        ]
        .concat(),
    );
    // OCSPRequest { TBSRequest { requestList { Request { reqCert } } } }
    tlv(0x30, &tlv(0x30, &tlv(0x30, &tlv(0x30, &cert_id))))
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
}

fn sign(c: &mut Criterion) {
    let t = now();
    let mut group = c.benchmark_group("ocsp");
    group.throughput(Throughput::Elements(1));
    for (label, key_type) in [
        ("ca_p256", KeyType::EcdsaP256),
        ("ca_rsa2048", KeyType::Rsa2048),
    ] {
        let ca = create_ca("bench", key_type, t, 3650, 1825).unwrap();
        let signer = OcspSigner::issue(
            &ca.issuing_cert_der,
            &ca.issuing_key,
            t,
            Duration::hours(24),
        )
        .unwrap();
        let request =
            certflow_pki::parse_ocsp_request(&ocsp_request(&ca.issuing_cert_der, "4a1b2c3d"))
                .unwrap();
        let answers = [OcspAnswer {
            cert_id_der: request.certs[0].der.clone(),
            status: OcspCertStatus::Good,
            this_update: t,
            next_update: t + Duration::hours(1),
        }];
        group.bench_function(format!("sign/{label}"), |b| {
            b.iter(|| black_box(signer.sign(&answers, None, t).unwrap()))
        });
        group.bench_function(format!("responder_cert/{label}"), |b| {
            b.iter(|| {
                black_box(
                    OcspSigner::issue(
                        &ca.issuing_cert_der,
                        &ca.issuing_key,
                        t,
                        Duration::hours(24),
                    )
                    .unwrap(),
                )
            })
        });
    }
    group.finish();
}

fn services(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        rt.block_on(SqliteStore::open(&dir.path().join("certflow.db")))
            .unwrap(),
    );
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        vec![],
    )));
    let services = Services::new(
        store.clone(),
        blobs,
        sealer,
        Some("http://127.0.0.1:8080".into()),
    );
    let t0 = now();
    let (issuer, _) = rt
        .block_on(services.ensure_ca(
            &CaSettings {
                name: "bench".into(),
                key_type: KeyType::EcdsaP256,
                root_validity_days: 3650,
                intermediate_validity_days: 1825,
            },
            t0,
        ))
        .unwrap();
    let ca_der = rt
        .block_on(services.issuer_certificate_der(issuer.id))
        .unwrap();
    let actor = Actor {
        subject: "bench".into(),
        source: Some("127.0.0.1".into()),
    };
    let requests: Vec<Vec<u8>> = (0..UNCACHED_CERTS)
        .map(|n| {
            let name = format!("ocsp-{n}.bench.example.com");
            let view = rt
                .block_on(services.create_certificate(
                    &actor,
                    &CreateCertificateRequest {
                        name: Some(name.clone()),
                        names: vec![name],
                        team: "bench".into(),
                        key_type: Some("ecdsa-p256".into()),
                        ..CreateCertificateRequest::default()
                    },
                    t0,
                ))
                .unwrap();
            ocsp_request(&ca_der, &view.versions[0].serial)
        })
        .collect();
    // Every request must get a successful answer, or the figures would
    // measure an error path.
    let answer = |issuer: Uuid, request: &[u8], at: OffsetDateTime| {
        let reply = rt.block_on(services.ocsp(issuer, request, at));
        assert!(
            reply.validity.is_some(),
            "OCSP error response {:02x?}",
            reply.der
        );
        reply
    };
    for request in &requests {
        answer(issuer.id, request, t0);
    }

    let mut group = c.benchmark_group("ocsp/services_sqlite");
    group.throughput(Throughput::Elements(1));
    group.bench_function("cached", |b| {
        b.iter(|| black_box(answer(issuer.id, &requests[0], t0)))
    });
    let step = Cell::new(0_i64);
    group.bench_function("uncached", |b| {
        b.iter(|| {
            let n = step.get() + 1;
            step.set(n);
            // Past the cached variant's instant by more than the cache TTL,
            // then one second per answer.
            let at = t0 + Duration::seconds(61 + n);
            let request = &requests[usize::try_from(n).unwrap() % UNCACHED_CERTS];
            black_box(answer(issuer.id, request, at))
        })
    });
    group.finish();
    drop(services);
    rt.block_on(store.close());
}

criterion_group!(benches, sign, services);
criterion_main!(benches);
