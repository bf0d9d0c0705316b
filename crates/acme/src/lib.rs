//! ACME (RFC 8555) issuance for certflow: [`AcmeIssuer`] implements the core
//! `IssuerBackend` port over any ACME CA (Let's Encrypt, a private CA,
//! pebble). It registers its account on first use (with external account
//! binding when configured) and keeps the credentials through an
//! [`AccountStore`] ([`SealedAccountStore`] encrypts them in the blob store);
//! proves names with HTTP-01 ([`Http01Tokens`] + [`http01_router`]) or DNS-01
//! ([`DnsProvider`]: [`ExecHook`], or `Route53Provider` with the `route53`
//! feature); finalizes with the caller's CSR; and reads the CA's renewal window
//! (ARI, RFC 9773).
//!
//! Errors: a CA that cannot be reached is `Unavailable { backend: "ACME CA" }`;
//! a refusal (a problem document) is `Conflict` carrying the CA's problem type
//! and detail. `badNonce` answers are retried by instant-acme itself.

mod account;
mod client;
mod dns;
mod http01;
mod issuer;
#[cfg(feature = "route53")]
mod route53;
mod settings;

pub use account::{AccountStore, MemoryAccountStore, SealedAccountStore};
pub use dns::{Dns01Record, DnsProvider, ExecHook};
pub use http01::{Http01Tokens, http01_router};
pub use issuer::AcmeIssuer;
#[cfg(feature = "route53")]
pub use route53::Route53Provider;
pub use settings::{AcmeSettings, ChallengeKind, DnsSettings, EabSettings, PropagationSettings};
