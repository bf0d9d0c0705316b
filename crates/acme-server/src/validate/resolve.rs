//! Name resolution for validation: hickory-resolver against the configured
//! DNS server, without a cache (a client that fixes its TXT record or its A
//! record and asks again must be looked up afresh), and the outbound policy
//! applied to every address before anything connects to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use certflow_core::outbound::OutboundPolicy;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::{Target, ValidationFailure};

/// The validation resolver (cheap to clone).
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
    policy: Arc<OutboundPolicy>,
}

/// `name` as a fully-qualified name, so no search domain is tried.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

impl Resolver {
    /// A resolver asking `server` (UDP, then TCP), or the system's
    /// configured servers when `None`.
    pub fn new(server: Option<SocketAddr>, policy: Arc<OutboundPolicy>) -> Result<Self, String> {
        let mut builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("the system DNS configuration: {e}"))?,
        };
        let opts = builder.options_mut();
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let inner = builder.build().map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(Self {
            inner: Arc::new(inner),
            policy,
        })
    }

    /// The addresses `target` stands for, with `port`, that the outbound
    /// policy allows: `dns` when the name has none, `connection` naming the
    /// refused address when the policy allows none.
    pub async fn addresses(
        &self,
        target: &Target,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ValidationFailure> {
        let (host, ips): (String, Vec<IpAddr>) = match target {
            Target::Ip(ip) => (ip.to_string(), vec![*ip]),
            Target::Dns(name) => {
                let found = self.inner.lookup_ip(fqdn(name)).await.map_err(|e| {
                    ValidationFailure::new(
                        "dns",
                        if e.is_nx_domain() || e.is_no_records_found() {
                            format!("{name} has no A or AAAA record")
                        } else {
                            format!("looking up {name} failed")
                        },
                    )
                })?;
                (name.clone(), found.iter().collect())
            }
        };
        self.allowed(&host, ips, port)
    }

    fn allowed(
        &self,
        host: &str,
        ips: Vec<IpAddr>,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ValidationFailure> {
        let mut allowed = Vec::new();
        let mut refused = None;
        for ip in ips {
            match self.policy.check_address(host, ip) {
                Ok(()) => allowed.push(SocketAddr::new(ip, port)),
                Err(r) => {
                    refused.get_or_insert(r);
                }
            }
        }
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some(r)) => Err(ValidationFailure::new("connection", r.to_string())),
            (true, None) => Err(ValidationFailure::new(
                "dns",
                format!("{host} has no address"),
            )),
        }
    }

    /// The TXT records at `name`, each record's strings concatenated
    /// (RFC 8555 §8.4 compares whole records).
    pub async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, ValidationFailure> {
        let lookup = self.inner.txt_lookup(fqdn(name)).await.map_err(|e| {
            ValidationFailure::new(
                "dns",
                if e.is_nx_domain() || e.is_no_records_found() {
                    format!("there is no TXT record at {name}")
                } else {
                    format!("looking up the TXT record at {name} failed")
                },
            )
        })?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.txt_data.concat()),
                _ => None,
            })
            .collect())
    }
}

/// reqwest's resolver for http-01: the same lookups and policy.
impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in.
            this.addresses(&Target::Dns(host), 0)
                .await
                .map(|addrs| Box::new(addrs.into_iter()) as Addrs)
                .map_err(|f| Box::new(f) as Box<dyn std::error::Error + Send + Sync>)
        })
    }
}
