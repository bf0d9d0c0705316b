//! HTTPS on the console listener (`[server.tls]`): RFC 8555 requires HTTPS
//! for the ACME server, and the console's cookie is Secure. The certificate
//! is issued by the default internal CA for `server_names` with a key held
//! only in memory (as the agent listener's), and renewed in place at two
//! thirds of its lifetime, so a long-running server never serves an expired
//! one; or it is read from `cert_file`/`key_file`. Connections are served by
//! the same router as plain HTTP, with the peer address as `ConnectInfo`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::config::ServerTlsConfig;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before retrying a failed renewal.
const RETRY: Duration = Duration::from_secs(300);

/// The certificate in force, swapped on renewal.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|c| Arc::clone(&*c))
    }
}

fn certified(chain: Vec<Vec<u8>>, key_pkcs8: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .context("[server.tls] private key")?;
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// Issues the listener certificate; returns it with the time until renewal.
async fn issue(
    config: &ServerTlsConfig,
    agents: &certflow_services::agents::Agents,
) -> anyhow::Result<(Arc<CertifiedKey>, Duration)> {
    let now = time::OffsetDateTime::now_utc();
    let issued = agents
        .issue_listener_certificate(&config.server_names, config.validity_days, now)
        .await
        .context("[server.tls] certificate from the internal CA")?;
    let lifetime = (issued.not_after - now).max(time::Duration::ZERO);
    let renew_in = Duration::try_from(lifetime * 2 / 3).unwrap_or(RETRY);
    tracing::info!(names = ?config.server_names, not_after = %issued.not_after, "issued the console listener certificate");
    Ok((
        certified(issued.chain_der, &issued.key_pkcs8_der)?,
        renew_in,
    ))
}

/// The console listener's TLS configuration and, for an issued certificate,
/// the task that renews it (ends when `stop` turns true); an issued
/// certificate's CA certificates are written to `ca_file` for clients.
pub(super) async fn tls_config(
    config: &ServerTlsConfig,
    agents: &certflow_services::agents::Agents,
    ca_file: &std::path::Path,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(
    Arc<rustls::ServerConfig>,
    Option<tokio::task::JoinHandle<()>>,
)> {
    let (current, renewal) = if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file)
    {
        let pem = std::fs::read_to_string(cert)
            .with_context(|| format!("server.tls.cert_file {}", cert.display()))?;
        let chain = certflow_pki::parse_pem_certs("server.tls.cert_file", &pem)?;
        let key_pem = std::fs::read_to_string(key)
            .with_context(|| format!("server.tls.key_file {}", key.display()))?;
        let key = certflow_pki::PrivateKey::from_pem("server.tls.key_file", &key_pem)?;
        (
            Arc::new(CurrentCert(RwLock::new(certified(chain, key.pkcs8_der())?))),
            None,
        )
    } else {
        let (cert, renew_in) = issue(config, agents).await?;
        write_ca_file(&cert, ca_file)?;
        let current = Arc::new(CurrentCert(RwLock::new(cert)));
        let task = spawn_renewal(
            config.clone(),
            agents.clone(),
            current.clone(),
            renew_in,
            stop,
        );
        (current, Some(task))
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_cert_resolver(current);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(tls), renewal))
}

/// Writes the CA certificates above the issued listener certificate (PEM)
/// where the CLI and other clients of this machine can trust them
/// (`CERTFLOW_CA_FILE`): public certificates, no secret.
fn write_ca_file(cert: &CertifiedKey, path: &std::path::Path) -> anyhow::Result<()> {
    let pem: String = cert
        .cert
        .iter()
        .skip(1)
        .map(|c| certflow_pki::cert_to_pem(c.as_ref()))
        .collect();
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "certflow: the console certificate's CA is in {} (trust it: CERTFLOW_CA_FILE for the CLI)",
        path.display()
    );
    Ok(())
}

fn spawn_renewal(
    config: ServerTlsConfig,
    agents: certflow_services::agents::Agents,
    current: Arc<CurrentCert>,
    first: Duration,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = first;
        let stopping = super::stopped(stop);
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                () = &mut stopping => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = match issue(&config, &agents).await {
                Ok((cert, renew_in)) => {
                    if let Ok(mut slot) = current.0.write() {
                        *slot = cert;
                    }
                    renew_in
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "console listener certificate renewal failed; retrying");
                    RETRY
                }
            };
        }
    })
}

/// Accepts TLS connections and serves `app` on each (the peer address as
/// `ConnectInfo`) until `close` turns true; then returns once every
/// connection has finished its request in flight.
pub(super) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    close: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = super::stopped(close.clone()) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "console listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app, open, close) =
            (acceptor.clone(), app.clone(), open.clone(), close.clone());
        tokio::spawn(async move {
            let _open = open;
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            connection(stream, peer, app, close).await;
        });
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
}

async fn connection(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    app: axum::Router,
    close: watch::Receiver<bool>,
) {
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = super::stopped(close) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "console TLS connection ended with an error");
    }
}
