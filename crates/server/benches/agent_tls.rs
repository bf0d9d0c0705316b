//! Agent API over mTLS: full handshakes per second (TCP connect + TLS 1.3
//! handshake presenting an agent identity certificate, verified against the
//! agent-identity CA) and `whoami` requests per second over keep-alive mTLS
//! connections — for an agent enrolled with a join token (certificate only)
//! and for one enrolled with an OIDC client-credentials token, which sends
//! its ES256 JWT with every request (validated against a JWKS this bench
//! serves on loopback: after the first fetch the validator's key cache makes
//! it a signature check plus claim checks).
//!
//! The server is the real `certflow serve` (a binary crate has no library a
//! bench could link), on loopback, with the rate limit raised out of the way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use certflow_core::{KeyType, SubjectName};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fixture {
    _server: Server,
    _dir: tempfile::TempDir,
    agent_url: String,
    addr: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    /// The token-enrolled agent: its identity and its access token.
    token_cert_pem: String,
    token_key_pem: String,
    token: String,
}

/// A P-256 signing key with its JWKS, served on loopback as the issuer's keys.
struct Issuer {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    url: String,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Issuer {
    /// Starts serving `GET /jwks` on a loopback port of `rt`.
    fn start(rt: &tokio::runtime::Runtime) -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        // Uncompressed point: 0x04 || x || y.
        let point = key.public_key().as_ref().to_vec();
        let jwks = json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "kid": "bench-1", "alg": "ES256", "use": "sig",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
        }]})
        .to_string();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { ([("content-type", "application/json")], jwks) }
            }),
        );
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { key, url }
    }

    /// A client-credentials access token of `client` for `urn:certflow:api`, valid 1 h.
    fn token(&self, client: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = json!({ "alg": "ES256", "typ": "at+jwt", "kid": "bench-1" });
        let claims = json!({
            "iss": self.url, "sub": client, "client_id": client, "aud": "urn:certflow:api",
            "iat": now, "exp": now + 3600, "jti": format!("{now}"), "scope": "certs:read",
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64url(sig.as_ref()))
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let issuer = Issuer::start(rt);
    let config = dir.path().join("certflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[auth.issuers]]
issuer = "{url}"
jwks_url = "{url}/jwks"
audience = "urn:certflow:api"
[auth.issuers.service_roles.bench-agent]
role = "viewer"
teams = ["bench"]
"#,
            url = issuer.url
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_certflow"))
        .args(["serve", "--roles", "api"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CERTFLOW_DATA_DIR", dir.path())
        .env("CERTFLOW_SERVER__LISTEN", "127.0.0.1:0")
        .env("CERTFLOW_AGENT__LISTEN", &addr)
        .env("CERTFLOW_METRICS__LISTEN", "off")
        .env("CERTFLOW_CONFIG", &config)
        .env("CERTFLOW_AGENT__RATE_LIMIT_PER_SEC", "1000000")
        .env("CERTFLOW_AGENT__RATE_LIMIT_BURST", "1000000")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut token = String::new();
    let mut url = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("export CERTFLOW_TOKEN=") {
            token = t.to_owned();
        }
        if let Some(u) = line.strip_prefix("certflow: listening on ") {
            url = u.to_owned();
            break;
        }
    }
    assert!(!url.is_empty(), "certflow serve did not start");
    let server = Server(child);
    rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let issuers: Value = http
            .get(format!("{url}/console/api/v1/issuers"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ca_pem = issuers[0]["issuing_cert_pem"].as_str().unwrap().to_owned();
        let jt: Value = http
            .post(format!("{url}/console/api/v1/agents/join-tokens"))
            .bearer_auth(&token)
            .json(&json!({ "name": "bench", "ttl_minutes": 10 }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = certflow_pki::PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr =
            certflow_pki::build_csr(&key, &[SubjectName::Dns("bench.invalid".into())]).unwrap();
        let tls = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let id: Value = tls
            .post(format!("https://{addr}/agent/v1/enroll"))
            .bearer_auth(jt["token"].as_str().unwrap())
            .json(&json!({ "csr": pem("CERTIFICATE REQUEST", &csr) }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // The second agent enrols with its access token instead.
        let token = issuer.token("bench-agent");
        let token_key = certflow_pki::PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let token_csr =
            certflow_pki::build_csr(&token_key, &[SubjectName::Dns("bench.invalid".into())])
                .unwrap();
        let token_id: Value = tls
            .post(format!("https://{addr}/agent/v1/enroll"))
            .bearer_auth(&token)
            .json(&json!({ "csr": pem("CERTIFICATE REQUEST", &token_csr) }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(token_id["certificate_pem"].is_string(), "{token_id}");
        Fixture {
            _server: server,
            _dir: dir,
            agent_url: format!("https://{addr}/agent/v1/whoami"),
            addr: addr.clone(),
            ca_pem,
            cert_pem: id["certificate_pem"].as_str().unwrap().to_owned(),
            key_pem: key.to_pem().to_string(),
            token_cert_pem: token_id["certificate_pem"].as_str().unwrap().to_owned(),
            token_key_pem: token_key.to_pem().to_string(),
            token,
        }
    })
}

fn rustls_client(f: &Fixture) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certflow_pki::parse_pem_certs("ca", &f.ca_pem).unwrap() {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let chain = certflow_pki::parse_pem_certs("cert", &f.cert_pem)
        .unwrap()
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = certflow_pki::PrivateKey::from_pem("key", &f.key_pem).unwrap();
    let key = PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap(),
    )
}

/// `n` handshakes, `conc` at a time; returns the wall time.
async fn handshakes(cfg: Arc<rustls::ClientConfig>, addr: &str, n: u64, conc: u64) -> Duration {
    let start = Instant::now();
    let per = n.div_ceil(conc);
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let cfg = cfg.clone();
            let addr = addr.to_owned();
            tokio::spawn(async move {
                let connector = tokio_rustls::TlsConnector::from(cfg);
                for _ in 0..per {
                    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
                    let name = ServerName::try_from("127.0.0.1").unwrap();
                    let mut tls = connector.connect(name, tcp).await.unwrap();
                    // TLS 1.3: the server checks the client certificate after the
                    // client's Finished; a read makes sure it accepted it.
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    tls.write_all(
                        b"GET /agent/v1/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )
                    .await
                    .unwrap();
                    let mut buf = [0u8; 12];
                    tls.read_exact(&mut buf).await.unwrap();
                    assert_eq!(&buf, b"HTTP/1.1 200");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed() * u32::try_from(n).unwrap() / u32::try_from(per * conc).unwrap()
}

/// `n` whoami requests over `conc` keep-alive connections, each with
/// `token` as its bearer token if given.
async fn requests(clients: &[reqwest::Client], url: &str, token: Option<&str>, n: u64) -> Duration {
    let conc = clients.len() as u64;
    let per = n.div_ceil(conc);
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|c| {
            let url = url.to_owned();
            let token = token.map(str::to_owned);
            tokio::spawn(async move {
                for _ in 0..per {
                    let mut req = c.get(&url);
                    if let Some(t) = &token {
                        req = req.bearer_auth(t);
                    }
                    let r = req.send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed() * u32::try_from(n).unwrap() / u32::try_from(per * conc).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = fixture(&rt);
    let cfg = rustls_client(&f);
    let mut g = c.benchmark_group("agent_tls");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    for conc in [1u64, 8] {
        g.bench_function(format!("handshake+whoami/new-connection/conc{conc}"), |b| {
            b.iter_custom(|n| rt.block_on(handshakes(cfg.clone(), &f.addr, n, conc)));
        });
    }
    let clients = |conc: usize, cert: &str, key: &str| -> Vec<reqwest::Client> {
        (0..conc)
            .map(|_| {
                reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(1)
                    .tls_certs_only([reqwest::Certificate::from_pem(f.ca_pem.as_bytes()).unwrap()])
                    .identity(
                        reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap(),
                    )
                    .build()
                    .unwrap()
            })
            .collect()
    };
    for conc in [1usize, 8, 32] {
        // Certificate only (join-token agent), then certificate + JWT (token agent).
        let plain = clients(conc, &f.cert_pem, &f.key_pem);
        g.bench_function(format!("whoami/keep-alive/conc{conc}"), |b| {
            b.iter_custom(|n| rt.block_on(requests(&plain, &f.agent_url, None, n)));
        });
        let with_token = clients(conc, &f.token_cert_pem, &f.token_key_pem);
        g.bench_function(format!("whoami+jwt/keep-alive/conc{conc}"), |b| {
            b.iter_custom(|n| rt.block_on(requests(&with_token, &f.agent_url, Some(&f.token), n)));
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
