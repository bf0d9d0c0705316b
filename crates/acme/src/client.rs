//! The HTTPS client instant-acme talks through (rustls on aws-lc-rs, with an
//! optional CA bundle and per-request timeouts), and the translation of its
//! errors into domain errors.

use std::error::Error as StdError;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certflow_core::DomainError;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient, Problem};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub(crate) const BACKEND: &str = "ACME CA";

/// A shareable HTTPS client; every account builder gets a boxed clone.
#[derive(Clone)]
pub(crate) struct AcmeHttp {
    client: HyperClient<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl AcmeHttp {
    pub(crate) fn new(ca_bundle: Option<&Path>, timeout: Duration) -> Result<Self, DomainError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca_bundle {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| bundle_error(path, &e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bundle_error(path, &e.to_string()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bundle_error(path, "no usable certificate"));
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| DomainError::Internal(format!("TLS configuration: {e}")))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                builder.with_tls_config(config)
            }
            None => builder
                .with_provider_and_platform_verifier(provider)
                .map_err(|e| DomainError::Internal(format!("TLS configuration: {e}")))?,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = builder
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            client: HyperClient::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }
}

fn bundle_error(path: &Path, reason: &str) -> DomainError {
    DomainError::invalid("acme.ca_bundle", format!("{}: {reason}", path.display()))
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.client.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(rsp)) => Ok(BytesResponse::from(rsp)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Other(
                    format!("no response within {}s", timeout.as_secs()).into(),
                )),
            }
        })
    }
}

/// The error and its causes on one line (hyper's top-level message alone says
/// little: "client error (Connect)").
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A problem document as users see it: type, detail, and per-identifier subproblems.
pub(crate) fn describe_problem(p: &Problem) -> String {
    let mut out = format!(
        "{}: {}",
        p.r#type.as_deref().unwrap_or("about:blank"),
        p.detail.as_deref().unwrap_or("(no detail)")
    );
    for sub in &p.subproblems {
        out.push_str("; ");
        if let Some(id) = &sub.identifier {
            out.push_str(&format!("{}: ", id.authorized(false)));
        }
        out.push_str(&format!(
            "{}: {}",
            sub.r#type.as_deref().unwrap_or("about:blank"),
            sub.detail.as_deref().unwrap_or("(no detail)")
        ));
    }
    out
}

/// Refusals (problem documents) become `Conflict` with the CA's words;
/// transport failures and garbled answers become `Unavailable`.
pub(crate) fn ca_error(e: instant_acme::Error) -> DomainError {
    use instant_acme::Error as E;
    match e {
        // Left over after instant-acme's own badNonce retries, or the CA's own
        // failure: nothing the user can fix, so "retry later" rather than a refusal.
        E::Api(p)
            if p.r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":badNonce") || t.ends_with(":serverInternal")) =>
        {
            DomainError::Unavailable {
                backend: BACKEND,
                reason: describe_problem(&p),
            }
        }
        E::Api(p) => DomainError::Conflict(format!("ACME CA refused: {}", describe_problem(&p))),
        E::Timeout(_) => DomainError::Unavailable {
            backend: BACKEND,
            reason: "the order did not progress before the order timeout".into(),
        },
        E::Unsupported(what) => {
            DomainError::Conflict(format!("the ACME CA does not support {what}"))
        }
        E::Crypto | E::KeyRejected => DomainError::Internal(format!("ACME account key: {e}")),
        E::InvalidUri(u) => DomainError::invalid("acme.directory_url", u.to_string()),
        other => DomainError::Unavailable {
            backend: BACKEND,
            reason: chain(&other),
        },
    }
}
