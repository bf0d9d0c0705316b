//! ACME (RFC 8555) issuance for certflow: [`AcmeIssuer`] implements the core
//! `IssuerBackend` port over any ACME CA (Let's Encrypt, a private CA,
//! pebble). It registers its account on first use (with external account
//! binding when configured) and keeps the credentials through an
//! [`AccountStore`] ([`SealedAccountStore`] encrypts them in the blob store);
//! proves names with HTTP-01 ([`Http01Tokens`] + [`http01_router`]) or DNS-01
//! ([`DnsProvider`]: [`Route53Provider`], [`ExecHook`]); finalizes with the
//! caller's CSR; and reads the CA's renewal window (ARI, RFC 9773).
//!
//! Errors: a CA that cannot be reached is `Unavailable { backend: "ACME CA" }`;
//! a refusal (a problem document) is `Conflict` carrying the CA's problem type
//! and detail. `badNonce` answers are retried by instant-acme itself.

mod account;
mod client;
mod dns;
mod http01;
mod issuer;
mod settings;

pub use account::{AccountStore, MemoryAccountStore, SealedAccountStore};
pub use dns::{Dns01Record, DnsProvider, ExecHook, Route53Provider};
pub use http01::{Http01Tokens, http01_router};
pub use issuer::AcmeIssuer;
pub use settings::{AcmeSettings, ChallengeKind, DnsSettings, EabSettings, PropagationSettings};
