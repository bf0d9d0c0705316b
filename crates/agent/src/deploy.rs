//! After an install: the reload command (with a timeout) and the check, by a
//! TLS handshake to the verification target, that the new certificate is the
//! one served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::config::{ReloadConfig, VerifyConfig, split_host_port};
use crate::pki;

/// Runs the reload command with `sh -c`; a non-zero exit or the timeout is an error
/// carrying the end of its output.
pub async fn reload(r: &ReloadConfig) -> anyhow::Result<()> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&r.command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting reload command {:?}", r.command))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let collect = async {
        let mut o = Vec::new();
        let mut e = Vec::new();
        if let Some(s) = out.as_mut() {
            let _ = s.read_to_end(&mut o).await;
        }
        if let Some(s) = err.as_mut() {
            let _ = s.read_to_end(&mut e).await;
        }
        let status = child.wait().await;
        (status, o, e)
    };
    let limit = Duration::from_secs(r.timeout_secs);
    match tokio::time::timeout(limit, collect).await {
        Err(_) => anyhow::bail!(
            "reload command {:?} timed out after {}s (killed)",
            r.command,
            r.timeout_secs
        ),
        Ok((status, o, e)) => {
            let status = status?;
            if status.success() {
                return Ok(());
            }
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
            let tail: String = text
                .trim()
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            anyhow::bail!("reload command {:?} failed ({status}): {tail}", r.command)
        }
    }
}

/// Handshakes with the target until it serves `want_fingerprint` (the
/// service may take a moment to pick up a reload), trusting only the
/// certificate's own issuing chain and checking the name (SNI).
pub async fn verify(
    v: &VerifyConfig,
    leaf_der: &[u8],
    chain_der: &[Vec<u8>],
    want_fingerprint: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(v.timeout_secs);
    let mut last;
    loop {
        match served(v, leaf_der, chain_der).await {
            Ok(fp) if fp == want_fingerprint => return Ok(()),
            Ok(fp) => last = format!("it serves the certificate with SHA-256 {fp}"),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "verification of {} failed after {}s: {last} (wanted SHA-256 {want_fingerprint})",
                v.address,
                v.timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The SHA-256 of the leaf the target serves, after full verification.
pub async fn served(
    v: &VerifyConfig,
    leaf_der: &[u8],
    chain_der: &[Vec<u8>],
) -> anyhow::Result<String> {
    let (host, port) = split_host_port(&v.address).context("verify.address")?;
    let mut roots = rustls::RootCertStore::empty();
    // The issuing chain is the trust anchor; a certificate without one trusts itself.
    let anchors: Vec<&[u8]> = if chain_der.is_empty() {
        vec![leaf_der]
    } else {
        chain_der.iter().map(Vec::as_slice).collect()
    };
    for der in anchors {
        roots
            .add(CertificateDer::from(der.to_vec()))
            .context("the issuing chain is not usable as a trust anchor")?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = v.sni.clone().unwrap_or_else(|| host.clone());
    let server_name = ServerName::try_from(name.clone())
        .with_context(|| format!("{name:?} is not a server name"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let tls = connector.connect(server_name, tcp).await?;
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no certificate served")?;
        Ok::<_, anyhow::Error>(pki::sha256_hex(leaf))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .context("handshake timed out")?
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn cmd(c: &str, t: u64) -> ReloadConfig {
        ReloadConfig {
            command: c.into(),
            timeout_secs: t,
        }
    }

    #[tokio::test]
    async fn reload_outcomes() {
        reload(&cmd("true", 5)).await.unwrap();
        let e = reload(&cmd("echo nginx: emerg bad >&2; exit 3", 5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nginx: emerg bad"), "{e}");
        let t0 = Instant::now();
        let e = reload(&cmd("sleep 30", 1)).await.unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn verify_against_nothing_fails_with_the_reason() {
        let ca = crate::pki::tests::TestCa::new();
        let key = pki::generate_key(crate::config::KeyType::EcdsaP256).unwrap();
        let leaf = ca.leaf(&key, &["a.example.com"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let v = VerifyConfig {
            address: format!("127.0.0.1:{port}"),
            sni: Some("a.example.com".into()),
            timeout_secs: 1,
        };
        let e = verify(&v, &leaf, &[ca.der()], "00").await.unwrap_err();
        assert!(e.to_string().contains("verification of 127.0.0.1"), "{e}");
    }
}
