//! http-01 (RFC 8555 §8.3): `GET http://<name>:<port>/.well-known/acme-challenge/<token>`
//! must answer 200 with the key authorization (trailing whitespace ignored).
//! Redirects are not followed: each hop would need the same policy check,
//! and clients that validate over http-01 serve the token directly.

use std::time::Duration;

use super::resolve::Resolver;
use super::{Target, ValidationFailure};

/// The longest body read: a key authorization is ~90 bytes.
const MAX_BODY: usize = 8 * 1024;

/// The client, resolving through `resolver` (policy included), no redirects, no proxy.
pub(super) fn client(resolver: &Resolver, timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .dns_resolver(resolver.clone())
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("certflow-acme-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client for http-01: {e}"))
}

pub(super) async fn validate(
    http: &reqwest::Client,
    resolver: &Resolver,
    port: u16,
    target: &Target,
    token: &str,
    key_authorization: &str,
) -> Result<(), ValidationFailure> {
    let host = match target {
        Target::Dns(name) => name.clone(),
        Target::Ip(ip @ std::net::IpAddr::V4(_)) => ip.to_string(),
        Target::Ip(ip) => format!("[{ip}]"),
    };
    if let Target::Ip(_) = target {
        // Literals never reach the resolver: judge them here.
        resolver.addresses(target, port).await?;
    }
    let url = format!("http://{host}:{port}/.well-known/acme-challenge/{token}");
    let mut response = http.get(&url).send().await.map_err(|e| {
        own_failure(&e).unwrap_or_else(|| {
            ValidationFailure::new(
                "connection",
                format!("fetching {url}: {}", certflow_outbound::failure(&e)),
            )
        })
    })?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(ValidationFailure::new(
            "unauthorized",
            format!(
                "{url} answered {} (200 with the key authorization expected)",
                response.status().as_u16()
            ),
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        ValidationFailure::new(
            "connection",
            format!("reading {url}: {}", certflow_outbound::failure(&e)),
        )
    })? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ValidationFailure::new(
                "incorrectResponse",
                format!("{url} answered more than {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let trimmed = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(&body[..0], |end| &body[..=end]);
    if trimmed == key_authorization.as_bytes() {
        Ok(())
    } else {
        Err(ValidationFailure::new(
            "incorrectResponse",
            format!("the body of {url} is not the key authorization of this challenge"),
        ))
    }
}

/// The resolver's own failure (a name without address, a refused
/// address), when that is why the request failed.
fn own_failure(e: &reqwest::Error) -> Option<ValidationFailure> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(f) = c.downcast_ref::<ValidationFailure>() {
            return Some(f.clone());
        }
        cause = c.source();
    }
    None
}
