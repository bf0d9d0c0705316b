//! The agent listener: `/agent/v1/*` over TLS on its own socket, where agents
//! authenticate with identity certificates from the agent-identity CA.
//!
//! rustls verifies client certificates against that CA only
//! (`WebPkiClientVerifier`), and lets a connection without one through
//! (`allow_unauthenticated`) because enrolment has no certificate yet: the
//! router then refuses every route but `POST /agent/v1/enroll` without a
//! verified certificate whose agent is active and whose serial is the agent's
//! current one, checked on each request (an indexed lookup), so disabling an
//! agent takes effect at its next request. A certificate from another CA
//! fails the handshake.
//!
//! Behind a TLS-terminating load balancer the client certificate arrives in
//! a header (`client_cert_header`), honoured only from `trusted_proxies` and
//! verified against the same CA as a handshake would.
//!
//! With `[[auth.issuers]]` configured, agents may also enrol with an OIDC
//! client-credentials access token instead of a join token; such an agent is
//! bound to the token's issuer-qualified subject and must send a valid token
//! of that subject with every request (`token.rs`). The agent check is
//! answered from an in-memory cache that the agent use cases invalidate on
//! every status or identity change, here at once and on other replicas
//! through the change feed (see `serve.rs`), so an idle poll costs no
//! database read.

pub mod conn;
pub mod deploy;
pub mod discovery;
pub mod framing;
pub mod poll;
pub mod routes;
pub mod tls;
pub mod token;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod framing_tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use certflow_services::agents::Agents;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio::net::TcpListener;

use crate::config::AgentConfig;
use crate::deploy_cache::DeployState;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the accept loop knows about a connection, handed to every request on it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
}

/// The client certificate of a connection, read once when the connection
/// is accepted instead of on each of its requests: keep-alive polls would
/// otherwise re-parse the same DER every time. It keeps what the checks
/// need, not the DER (rustls holds that already; a second copy was half a
/// kilobyte per connected agent).
#[derive(Debug)]
pub struct ClientIdentity {
    /// SHA-256 of the certificate's DER (token binding, RFC 8705 §3.1).
    pub sha256: [u8; 32],
    /// The agent and serial it names, or why it names none.
    pub parsed: Result<CertIdentity, &'static str>,
}

/// What the agent check needs from an identity certificate.
#[derive(Debug, Clone)]
pub struct CertIdentity {
    /// The agent of its `urn:certflow:agent:` URI SAN.
    pub agent_id: uuid::Uuid,
    /// Its serial, lower-case hex, compared with the agent's current one.
    pub serial_hex: String,
    /// The agent's rate-limit key (`agent:<id>`), made once per connection.
    pub rate_key: String,
    /// End of validity: a kept-alive connection outliving it is refused.
    pub not_after: time::OffsetDateTime,
}

impl ClientIdentity {
    /// Parses `der` (already verified against the agent-identity CA).
    pub fn read(der: &[u8]) -> Self {
        let parsed = certflow_pki::inspect(der)
            .map_err(|_| "unreadable client certificate")
            .and_then(|info| {
                let agent_id = certflow_pki::uri_names(der)
                    .ok()
                    .and_then(|uris| {
                        uris.iter()
                            .find_map(|u| certflow_core::agents::parse_agent_uri(u))
                    })
                    .ok_or("the client certificate names no agent")?;
                Ok(CertIdentity {
                    agent_id,
                    rate_key: format!("agent:{agent_id}"),
                    serial_hex: info.serial_hex,
                    not_after: info.not_after,
                })
            });
        Self {
            sha256: token::cert_sha256(der),
            parsed,
        }
    }
}

/// The client-certificate verifier: chains to the agent-identity CA, or no certificate.
pub fn client_verifier(ca_der: &[Vec<u8>]) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for der in ca_der {
        roots
            .add(CertificateDer::from(der.clone()))
            .context("agent-identity CA certificate as a trust anchor")?;
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .allow_unauthenticated()
    .build()
    .context("client certificate verifier")
}

/// The TLS server configuration of the listener.
pub fn server_config(
    verifier: Arc<dyn ClientCertVerifier>,
    chain_der: Vec<Vec<u8>>,
    key_pkcs8_der: &[u8],
) -> anyhow::Result<rustls::ServerConfig> {
    let chain = chain_der.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8_der.to_vec()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_client_cert_verifier(verifier)
    .with_single_cert(chain, key)
    .context("agent listener certificate and key")?;
    // The connection loop speaks both; a client offering only HTTP/1.0
    // would otherwise fail the handshake (no common protocol).
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(config)
}

/// The listener's certificate chain and PKCS#8 key: from files, or issued
/// by the internal CA for `server_names`.
async fn listener_identity(
    config: &AgentConfig,
    agents: &Agents,
) -> anyhow::Result<(Vec<Vec<u8>>, zeroize_key::Key)> {
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        let pem = std::fs::read_to_string(cert)
            .with_context(|| format!("agent.cert_file {}", cert.display()))?;
        let chain = certflow_pki::parse_pem_certs("agent.cert_file", &pem)?;
        let key_pem = std::fs::read_to_string(key)
            .with_context(|| format!("agent.key_file {}", key.display()))?;
        let key = certflow_pki::PrivateKey::from_pem("agent.key_file", &key_pem)?;
        return Ok((chain, zeroize_key::Key(key.pkcs8_der().to_vec())));
    }
    let issued = agents
        .issue_listener_certificate(&config.server_names, 90, time::OffsetDateTime::now_utc())
        .await
        .context("agent listener certificate")?;
    tracing::info!(names = ?config.server_names, not_after = %issued.not_after, "issued the agent listener certificate");
    Ok((
        issued.chain_der,
        zeroize_key::Key(issued.key_pkcs8_der.to_vec()),
    ))
}

mod zeroize_key {
    /// Key bytes wiped when dropped.
    pub struct Key(pub Vec<u8>);

    impl Drop for Key {
        fn drop(&mut self) {
            self.0.iter_mut().for_each(|b| *b = 0);
        }
    }
}

/// A running agent listener.
pub struct AgentListener {
    /// The bound address.
    pub addr: SocketAddr,
    /// Turned true to stop accepting and close connections once idle.
    close: tokio::sync::watch::Sender<bool>,
    /// Ends when the accept loop stopped and every connection closed.
    done: tokio::task::JoinHandle<()>,
}

impl AgentListener {
    /// Stops accepting, lets requests in flight finish (each connection
    /// closes after its current response), and waits up to `bound` for them.
    pub async fn drain(self, bound: Duration) {
        let _ = self.close.send(true);
        if tokio::time::timeout(bound, self.done).await.is_err() {
            tracing::warn!(timeout = ?bound, "agent requests still in flight after the drain timeout; cut short");
        }
    }
}

/// Binds the agent listener and starts serving `/agent/v1/*`; `tokens`
/// validates OIDC access tokens (from `[[auth.issuers]]`), if configured;
/// `deploy` serves the deployment routes (assignments, bundles, reports).
pub async fn start(
    config: &AgentConfig,
    agents: Agents,
    tokens: Option<Arc<dyn token::AgentTokenVerifier>>,
    deploy: DeployState,
) -> anyhow::Result<Option<AgentListener>> {
    let Some(listen) = config.listen else {
        return Ok(None);
    };
    if config.require_token && tokens.is_none() {
        bail!("agent.require_token needs [[auth.issuers]] to validate the tokens");
    }
    let ca = agents
        .ca_certificates_der()
        .await
        .context("agent-identity CA")?;
    let verifier = client_verifier(&ca)?;
    let (chain, key) = listener_identity(config, &agents).await?;
    let tls = server_config(verifier.clone(), chain, &key.0)?;
    drop(key);
    let mut state = routes::AgentState::new(agents, deploy, config, verifier)?;
    if let Some(tokens) = tokens {
        state = state.with_token_verifier(tokens);
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "binding the agent listener to {listen} (set [agent] listen to another address, or to \"off\")"
            )
        })?;
    let addr = listener.local_addr()?;
    let app = poll::AgentApp::new(state);
    let (close, closing) = tokio::sync::watch::channel(false);
    let done = tokio::spawn(serve(listener, Arc::new(tls), app, closing));
    Ok(Some(AgentListener { addr, close, done }))
}

/// Resolves once `rx` holds true (or its sender is gone).
async fn closed(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Accepts TLS connections and serves `app` on each, with [`ConnInfo`] (and
/// the [`ClientIdentity`] of a verified certificate) in every request's
/// extensions, until `close` turns true; then returns once every connection
/// has finished its request in flight.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: poll::AgentApp,
    close: tokio::sync::watch::Receiver<bool>,
) {
    // Every connection task holds a sender; `recv` answers None once all are gone.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = closed(close.clone()) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "agent listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let conn = Connection {
            tls: tls.clone(),
            app: app.clone(),
            close: close.clone(),
            peer,
        };
        tokio::spawn(conn.run(tcp, open.clone()));
    }
    drop(listener);
    drop(open);
    let _ = all_closed.recv().await;
}

/// One accepted connection, before its handshake.
struct Connection {
    tls: Arc<rustls::ServerConfig>,
    app: poll::AgentApp,
    close: tokio::sync::watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Connection {
    /// Handshakes, then serves the connection's requests until it ends or
    /// the listener closes; `_open` tells the listener it still runs.
    ///
    /// This future is the connection's task, kept for as long as the agent
    /// stays connected (nearly always in a long poll), so no large value is
    /// a local of it: a local's slot stays in the task after it is moved
    /// away (BENCHMARKS.md, goal 6; `a_parked_connection_stays_small`).
    async fn run(self, tcp: tokio::net::TcpStream, _open: tokio::sync::mpsc::Sender<()>) {
        let peer = self.peer;
        let _ = tcp.set_nodelay(true);
        // Boxed: the handshake's state is not to stay in the task once done.
        let accepted = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            Box::pin(tls::TlsConn::accept(tcp, self.tls)),
        );
        let stream = match accepted.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "agent TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        let identity = stream
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|der| Arc::new(ClientIdentity::read(der)));
        // One per connection, so its requests share no reference count
        // with other connections' (the cores would trade its cache line).
        let context = Arc::new(poll::ConnContext {
            app: self.app,
            info: ConnInfo { peer },
            identity,
        });
        conn::serve(stream, context, self.close).await;
    }
}
