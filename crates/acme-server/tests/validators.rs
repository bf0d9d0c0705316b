//! The challenge validators against real listeners on loopback: an HTTP
//! server for http-01, a TLS server with an RFC 8737 certificate for
//! tls-alpn-01, and a small authoritative DNS server (UDP) answering A and
//! TXT records, used as the configured resolver for all three types.
//! Loopback is allowed through the outbound policy's allow-list, as an
//! administrator would; without it validation is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certflow_acme_server::keyauth::{dns01_txt_value, key_authorization, tls_alpn01_digest};
use certflow_acme_server::{ChallengeType, ChallengeValidators, Target, ValidatorSettings};
use certflow_core::outbound::{OutboundPolicy, OutboundSettings};
use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, TXT};
use hickory_resolver::proto::rr::{RData, Record, RecordType};

const TOKEN: &str = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
const THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

type Zone = Arc<Mutex<HashMap<(String, RecordType), Vec<RData>>>>;

/// A UDP DNS server answering from `zone` (names lower case, with the final dot).
async fn dns_server(zone: Zone) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            reply.metadata.authoritative = true;
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            let mut found = false;
            for q in &query.queries {
                reply.add_query(q.clone());
                let key = (q.name().to_ascii().to_ascii_lowercase(), q.query_type());
                let names: Vec<_> = zone.lock().unwrap().keys().map(|k| k.0.clone()).collect();
                if names.contains(&key.0) {
                    found = true;
                }
                for rdata in zone.lock().unwrap().get(&key).cloned().unwrap_or_default() {
                    reply.add_answer(Record::from_rdata(q.name().clone(), 0, rdata));
                }
            }
            if !found {
                reply.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = sock.send_to(&reply.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

fn policy(allow: &[&str]) -> Arc<OutboundPolicy> {
    Arc::new(
        OutboundPolicy::new(&OutboundSettings {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        })
        .unwrap(),
    )
}

fn validators(
    dns: SocketAddr,
    http01_port: u16,
    tls_port: u16,
    allow: &[&str],
) -> ChallengeValidators {
    ChallengeValidators::new(
        ValidatorSettings {
            http01_port,
            tls_alpn01_port: tls_port,
            dns_resolver: Some(dns),
            timeout: Duration::from_secs(5),
        },
        policy(allow),
    )
    .unwrap()
}

/// An HTTP server answering the token path with `body`.
async fn http_server(body: &'static str) -> u16 {
    let app = axum::Router::new().route(
        &format!("/.well-known/acme-challenge/{TOKEN}"),
        axum::routing::get(move || async move { body }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn zone_with_a(name: &str) -> Zone {
    let zone: Zone = Arc::default();
    zone.lock().unwrap().insert(
        (format!("{name}."), RecordType::A),
        vec![RData::A(A(Ipv4Addr::LOCALHOST))],
    );
    zone
}

#[tokio::test]
async fn http01_fetches_the_key_authorization_through_the_resolver_and_policy() {
    let ka = key_authorization(TOKEN, THUMBPRINT);
    let good: &'static str = Box::leak(format!("{ka}\r\n").into_boxed_str());
    let port = http_server(good).await;
    let dns = dns_server(zone_with_a("www.test.example")).await;
    let v = validators(dns, port, 1, &["127.0.0.1"]);
    let name = Target::Dns("www.test.example".into());
    v.validate(ChallengeType::Http01, &name, TOKEN, &ka)
        .await
        .unwrap();
    v.validate(
        ChallengeType::Http01,
        &Target::Ip(Ipv4Addr::LOCALHOST.into()),
        TOKEN,
        &ka,
    )
    .await
    .unwrap();

    let other = key_authorization(TOKEN, "another-thumbprint");
    let err = v
        .validate(ChallengeType::Http01, &name, TOKEN, &other)
        .await
        .unwrap_err();
    assert_eq!(err.problem_type, "incorrectResponse", "{err}");
    let err = v
        .validate(ChallengeType::Http01, &name, "anotherToken", &ka)
        .await
        .unwrap_err();
    assert_eq!(err.problem_type, "unauthorized", "{err}");
    assert!(err.detail.contains("404"), "{err}");

    let unknown = v
        .validate(
            ChallengeType::Http01,
            &Target::Dns("nowhere.test.example".into()),
            TOKEN,
            &ka,
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.problem_type, "dns", "{unknown}");

    // Without the administrator's allow-list, loopback is refused before any connection.
    let strict = validators(dns, port, 1, &[]);
    for target in [name, Target::Ip(Ipv4Addr::LOCALHOST.into())] {
        let err = strict
            .validate(ChallengeType::Http01, &target, TOKEN, &ka)
            .await
            .unwrap_err();
        assert_eq!(err.problem_type, "connection", "{err}");
        assert!(err.detail.contains("refused by outbound policy"), "{err}");
        assert!(err.detail.contains("loopback"), "{err}");
    }
}

#[tokio::test]
async fn dns01_reads_the_txt_record_at_the_acme_challenge_name() {
    let ka = key_authorization(TOKEN, THUMBPRINT);
    let zone: Zone = Arc::default();
    let dns = dns_server(zone.clone()).await;
    let v = validators(dns, 1, 1, &[]);
    let wildcard_base = Target::from_identifier("dns", "*.wild.test.example").unwrap();
    assert_eq!(wildcard_base, Target::Dns("wild.test.example".into()));

    let err = v
        .validate(ChallengeType::Dns01, &wildcard_base, TOKEN, &ka)
        .await
        .unwrap_err();
    assert_eq!(err.problem_type, "dns", "{err}");

    zone.lock().unwrap().insert(
        ("_acme-challenge.wild.test.example.".into(), RecordType::TXT),
        vec![RData::TXT(TXT::new(vec!["unrelated".into()]))],
    );
    let err = v
        .validate(ChallengeType::Dns01, &wildcard_base, TOKEN, &ka)
        .await
        .unwrap_err();
    assert_eq!(err.problem_type, "incorrectResponse", "{err}");

    zone.lock().unwrap().insert(
        ("_acme-challenge.wild.test.example.".into(), RecordType::TXT),
        vec![
            RData::TXT(TXT::new(vec!["unrelated".into()])),
            RData::TXT(TXT::new(vec![dns01_txt_value(&ka)])),
        ],
    );
    v.validate(ChallengeType::Dns01, &wildcard_base, TOKEN, &ka)
        .await
        .unwrap();

    let ip = v
        .validate(
            ChallengeType::Dns01,
            &Target::Ip(Ipv4Addr::LOCALHOST.into()),
            TOKEN,
            &ka,
        )
        .await
        .unwrap_err();
    assert_eq!(ip.problem_type, "unauthorized", "{ip}");
}

/// A TLS server presenting, for every connection, the RFC 8737 certificate
/// built by `cert` and negotiating `alpn`.
async fn tls_alpn_server(
    names: Vec<rcgen::SanType>,
    digest: Option<[u8; 32]>,
    alpn: &'static [u8],
) -> u16 {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = names;
    if let Some(d) = digest {
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&d)];
    }
    let cert = params.self_signed(&key).unwrap();
    let mut config = rustls_server_config(cert.der().to_vec(), key.serialize_der());
    config.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncWriteExt as _;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    port
}

/// Serves one certificate whatever the SNI. `with_single_cert` would parse
/// it with webpki, which refuses the critical acmeIdentifier extension a
/// real tls-alpn-01 responder serves.
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn rustls_server_config(cert: Vec<u8>, key: Vec<u8>) -> rustls::ServerConfig {
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert.into()], signer);
    rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(OneCert(Arc::new(certified))))
}

#[tokio::test]
async fn tls_alpn01_checks_alpn_san_and_the_critical_acme_identifier() {
    let ka = key_authorization(TOKEN, THUMBPRINT);
    let digest = tls_alpn01_digest(&ka);
    let name = "alpn.test.example";
    let dns = dns_server(zone_with_a(name)).await;
    let target = Target::Dns(name.into());
    let dns_san = || vec![rcgen::SanType::DnsName(name.try_into().unwrap())];

    let good = tls_alpn_server(dns_san(), Some(digest), b"acme-tls/1").await;
    validators(dns, 1, good, &["127.0.0.1"])
        .validate(ChallengeType::TlsAlpn01, &target, TOKEN, &ka)
        .await
        .unwrap();

    let ip = Target::Ip(Ipv4Addr::LOCALHOST.into());
    let ip_port = tls_alpn_server(
        vec![rcgen::SanType::IpAddress(Ipv4Addr::LOCALHOST.into())],
        Some(digest),
        b"acme-tls/1",
    )
    .await;
    validators(dns, 1, ip_port, &["127.0.0.1"])
        .validate(ChallengeType::TlsAlpn01, &ip, TOKEN, &ka)
        .await
        .unwrap();

    let wrong_digest = tls_alpn_server(dns_san(), Some([7; 32]), b"acme-tls/1").await;
    let no_ext = tls_alpn_server(dns_san(), None, b"acme-tls/1").await;
    let two_names = tls_alpn_server(
        vec![
            rcgen::SanType::DnsName(name.try_into().unwrap()),
            rcgen::SanType::DnsName("other.test.example".try_into().unwrap()),
        ],
        Some(digest),
        b"acme-tls/1",
    )
    .await;
    let http11 = tls_alpn_server(dns_san(), Some(digest), b"http/1.1").await;
    for (port, kind, want) in [
        (
            wrong_digest,
            "incorrectResponse",
            "another key authorization digest",
        ),
        (no_ext, "incorrectResponse", "no acmeIdentifier"),
        (two_names, "incorrectResponse", "exactly the identifier"),
        (http11, "tls", "acme-tls/1"),
    ] {
        let err = validators(dns, 1, port, &["127.0.0.1"])
            .validate(ChallengeType::TlsAlpn01, &target, TOKEN, &ka)
            .await
            .unwrap_err();
        assert_eq!(err.problem_type, kind, "{err}");
        assert!(err.detail.contains(want), "{err}");
    }
    let refused = validators(dns, 1, good, &[])
        .validate(ChallengeType::TlsAlpn01, &target, TOKEN, &ka)
        .await
        .unwrap_err();
    assert!(
        refused.detail.contains("refused by outbound policy"),
        "{refused}"
    );
}
