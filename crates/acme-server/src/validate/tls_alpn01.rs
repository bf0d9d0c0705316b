//! tls-alpn-01 (RFC 8737): a TLS handshake to `<address>:<port>` offering
//! only the `acme-tls/1` protocol, with the name as SNI (RFC 8738 §6: the
//! reverse-DNS name of an IP identifier); the self-signed certificate must
//! name exactly that identifier and carry the critical acmeIdentifier
//! extension holding SHA-256 of the key authorization. The certificate is
//! not checked against any trust store (it is self-signed by design), but
//! the handshake signature is, so the server holds its key.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

use super::resolve::Resolver;
use super::{Target, ValidationFailure};
use crate::keyauth::tls_alpn01_digest;

/// The ALPN protocol name of RFC 8737 §6.2.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31 (RFC 8737 §6.1).
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

#[derive(Debug)]
struct SelfSignedAllowed(Arc<CryptoProvider>);

impl ServerCertVerifier for SelfSignedAllowed {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The certificate's contents are checked after the handshake.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_with_key(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_with_key(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl SelfSignedAllowed {
    /// Checks the handshake signature with the certificate's key, read with
    /// x509-parser: webpki (rustls' own helper) refuses any certificate with
    /// an unknown critical extension, and acmeIdentifier is one.
    fn verify_with_key(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let key = parsed.public_key().subject_public_key.data.as_ref();
        let algorithms = self
            .0
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .ok_or(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
        if algorithms
            .iter()
            .any(|alg| alg.verify_signature(key, message, dss.signature()).is_ok())
        {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature,
            ))
        }
    }
}

fn client_config() -> Result<Arc<rustls::ClientConfig>, ValidationFailure> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|_| ValidationFailure::new("serverInternal", "TLS client configuration"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SelfSignedAllowed(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The SNI name of `target`: the name, or the reverse-DNS name of an address (RFC 8738 §6).
pub fn sni_name(target: &Target) -> String {
    match target {
        Target::Dns(name) => name.clone(),
        Target::Ip(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Target::Ip(IpAddr::V6(v6)) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            labels.reverse();
            format!("{}.ip6.arpa", labels.join("."))
        }
    }
}

pub(super) async fn validate(
    resolver: &Resolver,
    port: u16,
    target: &Target,
    key_authorization: &str,
) -> Result<(), ValidationFailure> {
    let addrs = resolver.addresses(target, port).await?;
    let sni = sni_name(target);
    let server_name = ServerName::try_from(sni.clone()).map_err(|_| {
        ValidationFailure::new(
            "malformed",
            format!("{sni:?} is not a valid TLS server name"),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(client_config()?);
    let mut last = ValidationFailure::new("connection", "no address to connect to");
    for addr in addrs {
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => {
                last = ValidationFailure::new(
                    "connection",
                    format!("connecting to {addr}: {}", io_class(&e)),
                );
                continue;
            }
        };
        let tls = connector
            .connect(server_name.clone(), tcp)
            .await
            .map_err(|_| {
                ValidationFailure::new(
                    "tls",
                    format!("the TLS handshake with {addr} (ALPN acme-tls/1) failed"),
                )
            })?;
        let (_, conn) = tls.get_ref();
        if conn.alpn_protocol() != Some(ACME_TLS_ALPN) {
            return Err(ValidationFailure::new(
                "tls",
                format!("{addr} did not negotiate the acme-tls/1 protocol"),
            ));
        }
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| ValidationFailure::new("tls", format!("{addr} sent no certificate")))?;
        return check_certificate(leaf.as_ref(), target, key_authorization);
    }
    Err(last)
}

fn io_class(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::TimedOut => "timeout",
        K::HostUnreachable | K::NetworkUnreachable => "host unreachable",
        _ => "connection failed",
    }
}

/// Checks the validation certificate (RFC 8737 §3): one subjectAltName,
/// the identifier; a critical acmeIdentifier whose value is the DER OCTET
/// STRING of SHA-256(key authorization).
pub fn check_certificate(
    der: &[u8],
    target: &Target,
    key_authorization: &str,
) -> Result<(), ValidationFailure> {
    let wrong = |why: &str| {
        ValidationFailure::new(
            "incorrectResponse",
            format!("the tls-alpn-01 certificate {why}"),
        )
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| wrong("is not a valid X.509 certificate"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| wrong("has an invalid subjectAltName"))?
        .ok_or_else(|| wrong("has no subjectAltName"))?;
    let names = &san.value.general_names;
    let names_it = match (names.as_slice(), target) {
        ([GeneralName::DNSName(n)], Target::Dns(want)) => {
            n.trim_end_matches('.').eq_ignore_ascii_case(want)
        }
        ([GeneralName::IPAddress(bytes)], Target::Ip(ip)) => match ip {
            IpAddr::V4(v4) => *bytes == v4.octets().as_slice(),
            IpAddr::V6(v6) => *bytes == v6.octets().as_slice(),
        },
        _ => false,
    };
    if !names_it {
        return Err(wrong(
            "must name exactly the identifier being validated in its subjectAltName",
        ));
    }
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == ACME_IDENTIFIER_OID)
        .ok_or_else(|| wrong("has no acmeIdentifier extension"))?;
    if !ext.critical {
        return Err(wrong(
            "has an acmeIdentifier extension that is not critical",
        ));
    }
    let digest = tls_alpn01_digest(key_authorization);
    let mut expected = vec![0x04, 0x20];
    expected.extend_from_slice(&digest);
    if ext.value != expected.as_slice() {
        return Err(wrong(
            "carries another key authorization digest than this challenge's",
        ));
    }
    Ok(())
}
