//! Discovery: an inventory of the certificates on this host that certflow may
//! not manage — files under the `[discovery]` paths and the leaves served at
//! its endpoints. Only certificate data is read into the result: key files are
//! skipped by name, and in a file that holds a key next to a certificate only
//! the `CERTIFICATE` blocks are decoded (the text is wiped after parsing).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use certflow_api::agent::{DiscoveredCertificate, DiscoveryReport};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::client::Client;
use crate::config::{Config, DiscoveryConfig, split_host_port};
use crate::pki;
use crate::state::StateDir;

/// Extensions of the files a discovery path is scanned for.
const CERT_EXTENSIONS: [&str; 3] = ["pem", "crt", "cer"];

/// What one discovery pass found, and what it could not read.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One entry per source holding or serving a certificate.
    pub items: Vec<DiscoveredCertificate>,
    /// Sources that could not be read, with why (no file contents in them).
    pub errors: Vec<String>,
    /// Sources that exist (or may) but could not be read this time: the
    /// server keeps what it knew of them. A missing file is not one: it is gone.
    pub unreadable: Vec<String>,
}

impl Outcome {
    /// Records that `source` could not be read because of `e`.
    fn io_error(&mut self, source: String, e: &std::io::Error) {
        self.errors.push(format!("{source}: {e}"));
        if e.kind() != std::io::ErrorKind::NotFound {
            self.unreadable.push(source);
        }
    }

    /// The report of this pass (errors stay local: they go to the log).
    pub fn report(&self) -> DiscoveryReport {
        DiscoveryReport {
            items: self.items.clone(),
            unreadable: self.unreadable.clone(),
        }
    }
}

/// Scans the configured paths, then reads the configured endpoints.
pub async fn discover(cfg: &DiscoveryConfig) -> Outcome {
    let mut out = Outcome::default();
    for p in &cfg.paths {
        scan_path(p, cfg.max_file_bytes, &mut out);
    }
    let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
    for e in &cfg.endpoints {
        match read_endpoint(e, timeout).await {
            Ok(item) => out.items.push(item),
            Err(err) => {
                // An endpoint that does not answer now may well answer later.
                out.errors.push(format!("tls:{e}: {err:#}"));
                out.unreadable.push(format!("tls:{e}"));
            }
        }
    }
    out
}

/// One discovery pass sent to the server as the agent's whole current view;
/// sources that could not be read are logged and named as unreadable, so the
/// server keeps what it knew of them rather than forgetting them.
/// Returns the number of certificates reported.
pub async fn report(cfg: &DiscoveryConfig, client: &mut Client) -> anyhow::Result<usize> {
    let out = discover(cfg).await;
    for e in &out.errors {
        tracing::warn!(error = %e, "discovery: source not read");
    }
    let n = out.items.len();
    client
        .report_discovered(&out.report())
        .await
        .context("sending the discovery report")?;
    tracing::info!(certificates = n, "discovery report sent");
    Ok(n)
}

/// How often the report loop looks again for an identity while the first
/// cycle is still enrolling.
const WAIT_FOR_IDENTITY: Duration = Duration::from_secs(15);

/// `run`'s discovery: a report once the agent has an identity, then every
/// `report_interval_secs`, until shutdown. It runs beside the certificate
/// cycles with its own connection (loaded from the state directory each
/// time, so an identity renewed meanwhile is used), so a slow endpoint never
/// delays an install; a failure is logged and retried at the next interval.
pub async fn report_loop(cfg: Config, state: StateDir, mut shutdown: watch::Receiver<bool>) {
    let Some(d) = cfg.discovery.clone() else {
        return;
    };
    while !*shutdown.borrow() {
        let pause = if !state.identity("cert.pem").exists() {
            WAIT_FOR_IDENTITY
        } else {
            let pass = async {
                let mut client = Client::new(&cfg, state.clone())?;
                anyhow::ensure!(client.enrolled(), "the identity could not be loaded");
                report(&d, &mut client).await
            };
            if let Err(e) = pass.await {
                tracing::warn!(error = %format!("{e:#}"), retry_in_secs = d.report_interval_secs, "discovery report failed");
            }
            d.report_interval()
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A file is looked at directly; a directory's certificate files are (its
/// subdirectories are not: discovery stays where the operator pointed it).
fn scan_path(path: &Path, max_bytes: u64, out: &mut Outcome) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            out.io_error(format!("file:{}", path.display()), &e);
            return;
        }
    };
    if meta.is_file() {
        scan_file(path, max_bytes, out);
        return;
    }
    let entries = match std::fs::read_dir(path) {
        Ok(d) => d,
        Err(e) => {
            out.io_error(format!("file:{}", path.display()), &e);
            return;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_cert_file_name(p) && p.is_file())
        .collect();
    files.sort();
    for f in files {
        scan_file(&f, max_bytes, out);
    }
}

fn is_cert_file_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CERT_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reports the file's first certificate (the leaf of a bundle; the CA
/// certificates after it are not what an inventory is after).
fn scan_file(path: &Path, max_bytes: u64, out: &mut Outcome) {
    let source = format!("file:{}", path.display());
    match std::fs::metadata(path) {
        Ok(m) if m.len() > max_bytes => {
            out.errors
                .push(format!("{source}: larger than {max_bytes} bytes, skipped"));
            return;
        }
        Ok(_) => {}
        Err(e) => {
            out.io_error(source, &e);
            return;
        }
    }
    // A combined file may hold a private key: the text is wiped when dropped.
    let text = match std::fs::read(path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) => {
            out.io_error(source, &e);
            return;
        }
    };
    let der = match first_certificate(&text) {
        Some(d) => d,
        // DER-encoded .cer/.crt files are common on Windows-managed hosts.
        None if x509_parser::parse_x509_certificate(&text).is_ok() => text.to_vec(),
        None => return,
    };
    match describe(source.clone(), &der) {
        Ok(item) => out.items.push(item),
        Err(e) => out.errors.push(format!("{source}: {e:#}")),
    }
}

/// Decodes the first `CERTIFICATE` PEM block only; other blocks (keys
/// included) are never decoded.
fn first_certificate(text: &[u8]) -> Option<Vec<u8>> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let start = find(text, BEGIN)?;
    let end = start + find(&text[start..], END)? + END.len();
    pem::parse(&text[start..end])
        .ok()
        .map(pem::Pem::into_contents)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The inventory entry for one DER certificate.
fn describe(source: String, der: &[u8]) -> anyhow::Result<DiscoveredCertificate> {
    let info = pki::cert_info(der)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| anyhow::anyhow!("not a valid X.509 certificate"))?;
    Ok(DiscoveredCertificate {
        source,
        fingerprint_sha256: info.fingerprint,
        serial: info.serial,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names: info.names,
        not_after: info.not_after,
        certificate_pem: Some(pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))),
    })
}

/// The leaf served at `host:port[,sni]`, whatever its trust: discovery is
/// meant to find the certificates nobody manages, self-signed and expired
/// ones first.
pub async fn read_endpoint(spec: &str, timeout: Duration) -> anyhow::Result<DiscoveredCertificate> {
    let (addr, sni) = match spec.split_once(',') {
        Some((a, s)) => (a.trim(), Some(s.trim())),
        None => (spec.trim(), None),
    };
    let (host, port) = split_host_port(addr).context("expected host:port[,sni]")?;
    let name = sni.map_or_else(|| host.clone(), str::to_owned);
    let server_name = ServerName::try_from(name.clone())
        .with_context(|| format!("{name:?} is not a server name"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordOnly(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let tls = connector.connect(server_name, tcp).await?;
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no certificate served")?;
        describe(format!("tls:{spec}"), leaf)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .context("handshake timed out")?
}

/// Accepts any server certificate chain. Safe here, and only here: the
/// connection is used to read the served leaf and is closed without sending
/// a byte of application data, and the leaf is only reported as seen — it is
/// never trusted for anything. The handshake signature is still checked, so
/// the reported leaf is one the peer holds the key of.
#[derive(Debug)]
struct RecordOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for RecordOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    use tokio::io::AsyncWriteExt;

    fn self_signed(name: &str) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn cfg(paths: Vec<PathBuf>, endpoints: Vec<String>) -> DiscoveryConfig {
        DiscoveryConfig {
            paths,
            endpoints,
            max_file_bytes: 64 * 1024,
            timeout_secs: 5,
            report_interval_secs: 3600,
        }
    }

    #[tokio::test]
    async fn a_directory_scan_reports_certificates_and_never_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem, der) = self_signed("files.example.com");
        let (combined_cert, combined_key, combined_der) = self_signed("combined.example.com");
        std::fs::write(dir.path().join("site.crt"), &cert_pem).unwrap();
        std::fs::write(dir.path().join("site.key"), &key_pem).unwrap();
        // A key under a certificate extension: read, but nothing in it decoded.
        std::fs::write(dir.path().join("only-key.pem"), &key_pem).unwrap();
        // Key first, then the certificate (haproxy style).
        std::fs::write(
            dir.path().join("combined.pem"),
            format!("{combined_key}{combined_cert}"),
        )
        .unwrap();
        std::fs::write(dir.path().join("big.pem"), "x".repeat(70 * 1024)).unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        std::fs::write(dir.path().join("nested/deep.pem"), &cert_pem).unwrap();

        let out = discover(&cfg(vec![dir.path().to_owned()], vec![])).await;

        let sources: Vec<&str> = out.items.iter().map(|i| i.source.as_str()).collect();
        let d = dir.path().display();
        assert_eq!(
            sources,
            [
                format!("file:{d}/combined.pem"),
                format!("file:{d}/site.crt")
            ]
        );
        assert_eq!(
            out.items[0].fingerprint_sha256,
            pki::sha256_hex(&combined_der)
        );
        assert_eq!(out.items[0].names, ["combined.example.com"]);
        assert_eq!(out.items[1].fingerprint_sha256, pki::sha256_hex(&der));
        assert!(out.items[1].subject.contains("CN=rcgen self signed cert"));
        assert_eq!(out.items[1].subject, out.items[1].issuer);
        // The oversized file is named as skipped; the key-only file is no error.
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
        assert!(out.errors[0].contains("big.pem") && out.errors[0].contains("skipped"));

        let report = serde_json::to_string(&out.items).unwrap();
        for secret in [&key_pem, &combined_key] {
            let body = secret.lines().nth(1).unwrap();
            assert!(!report.contains(body), "key material in the report");
        }
        assert!(!report.contains("PRIVATE"));
    }

    #[tokio::test]
    async fn a_der_file_and_a_missing_path_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, der) = self_signed("der.example.com");
        let file = dir.path().join("win.cer");
        std::fs::write(&file, &der).unwrap();
        let missing = dir.path().join("nope");
        let out = discover(&cfg(vec![file.clone(), missing], vec![])).await;
        assert_eq!(out.items.len(), 1);
        assert_eq!(out.items[0].source, format!("file:{}", file.display()));
        assert_eq!(out.items[0].fingerprint_sha256, pki::sha256_hex(&der));
        assert_eq!(out.errors.len(), 1);
        assert!(out.errors[0].contains("nope"));
        assert!(
            out.unreadable.is_empty(),
            "a missing path is gone, not unreadable"
        );
    }

    #[tokio::test]
    async fn an_endpoint_serving_a_self_signed_certificate_is_read() {
        let (cert_pem, key_pem, der) = self_signed("tls.example.com");
        let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let _ = tls.shutdown().await;
        });

        let spec = format!("127.0.0.1:{port},tls.example.com");
        let out = discover(&cfg(vec![], vec![spec.clone()])).await;
        served.await.unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.items.len(), 1);
        let item = &out.items[0];
        assert_eq!(item.source, format!("tls:{spec}"));
        assert_eq!(item.fingerprint_sha256, pki::sha256_hex(&der));
        assert_eq!(item.names, ["tls.example.com"]);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_an_error_not_an_item() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let out = discover(&cfg(
            vec![],
            vec![format!("127.0.0.1:{port}"), "nonsense".into()],
        ))
        .await;
        assert!(out.items.is_empty());
        assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
        assert!(out.errors[1].contains("host:port"));
        // The server keeps what it knew of an endpoint that did not answer.
        assert_eq!(
            out.report().unreadable,
            [format!("tls:127.0.0.1:{port}"), "tls:nonsense".to_owned()]
        );
    }
}
