//! Outbound HTTP to URLs a user named (webhooks today; ACME challenge
//! validation and other callers of user-supplied URLs later), under the
//! outbound policy of [`certflow_core::outbound`].
//!
//! Checking a URL's host and then letting the HTTP client resolve it again
//! would leave a window (DNS rebinding: the second answer may be 127.0.0.1).
//! So the client built here resolves names itself, through [`PolicyResolver`],
//! and hands the connector only the addresses the policy allows: the address
//! checked is the address connected to. IP literals never reach a resolver,
//! so [`check_url`] judges them before the request; redirects are not
//! followed (each hop would need the same check, and a signed body must not
//! travel somewhere nobody configured); environment proxies are ignored (a
//! proxy would resolve the name past the policy).
//!
//! Failures are reported by class ([`failure`]): the policy's refusal,
//! "connection refused", "timeout", a TLS failure, never anything the remote
//! side wrote.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use certflow_core::outbound::{OutboundPolicy, Refusal};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an outbound destination cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// The policy refuses the address (literal, or every address the name resolved to).
    Refused(Refusal),
    /// The name did not resolve to any address.
    Unresolved {
        /// The name.
        host: String,
    },
    /// Not an http(s) URL with a host.
    BadUrl(String),
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundError::Refused(r) => r.fmt(f),
            // Callers name the host next to it (as the URL's target).
            OutboundError::Unresolved { .. } => f.write_str("the name does not resolve"),
            OutboundError::BadUrl(why) => f.write_str(why),
        }
    }
}

impl StdError for OutboundError {}

/// Resolves `host` (a name, not an IP literal) and keeps the addresses the
/// policy allows, with `port`. When none is allowed, the error names the
/// first refused address and its class.
pub async fn resolve(
    policy: &OutboundPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, OutboundError> {
    let unresolved = || OutboundError::Unresolved {
        host: host.to_owned(),
    };
    let found = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| unresolved())?;
    let mut allowed = Vec::new();
    let mut refused = None;
    for addr in found {
        match policy.check_address(host, addr.ip()) {
            Ok(()) => allowed.push(addr),
            Err(r) => {
                refused.get_or_insert(r);
            }
        }
    }
    match (allowed.is_empty(), refused) {
        (false, _) => Ok(allowed),
        (true, Some(r)) => Err(OutboundError::Refused(r)),
        (true, None) => Err(unresolved()),
    }
}

/// A reqwest resolver that applies the policy to every answer (see the crate docs).
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<OutboundPolicy>,
}

impl PolicyResolver {
    /// A resolver under `policy`.
    pub fn new(policy: Arc<OutboundPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port (or the scheme's) in.
            let addrs = resolve(&policy, &host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A client builder for calls under `policy`: its resolver, no redirects, no
/// environment proxy. Callers add timeouts and their user agent.
pub fn client_builder(policy: Arc<OutboundPolicy>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(PolicyResolver::new(policy))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
}

/// Checks what `url` names by itself: an http(s) scheme, a host, and, when
/// the host is an IP literal (in any form the URL parser accepts:
/// `http://2130706433/` is 127.0.0.1), an address the policy allows. Names,
/// `localhost` included, are judged address by address when the client
/// resolves them.
pub fn check_url(policy: &OutboundPolicy, url: &reqwest::Url) -> Result<(), OutboundError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OutboundError::BadUrl(format!(
            "the URL must be http or https, not {}",
            url.scheme()
        )));
    }
    let (Some(host), Some(name)) = (url.host(), url.host_str()) else {
        return Err(OutboundError::BadUrl("the URL has no host".into()));
    };
    let ip = match host {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        url::Host::Domain(_) => return Ok(()),
    };
    policy
        .check_address(name, ip)
        .map_err(OutboundError::Refused)
}

fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// The class of a failed request, for users: the policy's refusal, a name
/// that does not resolve, "timeout", "connection refused", a TLS failure...
/// Built from error kinds only, so nothing the remote side sent (body,
/// reason phrase, certificate names) is repeated.
pub fn failure(e: &reqwest::Error) -> String {
    for cause in chain(e) {
        if let Some(o) = cause.downcast_ref::<OutboundError>() {
            return o.to_string();
        }
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => {
                    "TLS: the receiver's certificate is not valid for it (untrusted, expired or for another name)"
                }
                rustls::Error::AlertReceived(_) => "TLS: the receiver refused the handshake",
                _ => "TLS handshake failed",
            }
            .into();
        }
    }
    if e.is_timeout() {
        return "timeout".into();
    }
    let io = chain(e).find_map(|c| c.downcast_ref::<std::io::Error>());
    if let Some(io) = io {
        use std::io::ErrorKind as K;
        let class = match io.kind() {
            K::ConnectionRefused => "connection refused",
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "connection reset",
            K::TimedOut => "timeout",
            K::HostUnreachable | K::NetworkUnreachable => "host unreachable",
            K::AddrNotAvailable | K::NetworkDown => "network unavailable",
            K::UnexpectedEof => "connection closed",
            _ if e.is_connect() => "connection failed",
            _ => "request failed",
        };
        return class.into();
    }
    if e.is_connect() {
        "connection failed".into()
    } else if e.is_request() {
        // hyper's "connection closed before message completed" and the like.
        "the receiver closed the connection or sent no valid HTTP response".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use certflow_core::outbound::OutboundSettings;

    fn policy(allow: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(&OutboundSettings {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_with_the_address_and_class() {
        let err = resolve(&policy(&[]), "localhost", 80).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("refused by outbound policy: localhost resolves to ")
                && text.ends_with("which is loopback"),
            "{text}"
        );
        let allowed = resolve(&policy(&["127.0.0.0/8", "::1"]), "localhost", 80)
            .await
            .unwrap();
        assert!(
            !allowed.is_empty() && allowed.iter().all(|a| a.port() == 80),
            "{allowed:?}"
        );
        let by_name = resolve(&policy(&["localhost"]), "localhost", 81)
            .await
            .unwrap();
        assert!(!by_name.is_empty());
    }

    #[test]
    fn urls_naming_special_addresses_are_refused_before_any_connection() {
        let strict = policy(&[]);
        for (url, want) in [
            (
                "http://169.254.169.254/latest/meta-data/",
                "169.254.169.254 is link-local",
            ),
            ("http://2130706433:8080/", "127.0.0.1 is loopback"),
            ("http://0x7f.1/", "127.0.0.1 is loopback"),
            ("http://[::ffff:7f00:1]/", "is loopback"),
            ("https://[fe80::1]/", "[fe80::1] is link-local"),
            ("http://[fc00::1]/", "[fc00::1] is private"),
            ("http://10.1.2.3:8443/", "10.1.2.3 is private"),
            ("ftp://example.com/", "must be http or https"),
        ] {
            let err = check_url(&strict, &url.parse().unwrap())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
        check_url(
            &strict,
            &"https://hooks.slack.com/services/x".parse().unwrap(),
        )
        .unwrap();
        // Names wait for their addresses (the resolver refuses localhost's).
        check_url(&strict, &"http://localhost:9/".parse().unwrap()).unwrap();
        let allowing = policy(&["10.0.0.0/8"]);
        check_url(&allowing, &"http://10.1.2.3:8443/".parse().unwrap()).unwrap();
    }
}
