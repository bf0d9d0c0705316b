//! Bearer-token validation for certflow: turns `Authorization: Bearer <JWT>`
//! (and OpenID Connect ID tokens from a browser login) into verified
//! [`Claims`] and an access [`Principal`](certflow_core::access::Principal).
//!
//! Trust is per configured issuer ([`IssuerConfig`]): the token's unverified
//! `iss` only selects which configured issuer to check against; keys come
//! from that issuer's JWKS URL and nowhere else (`jku`, `jwk`, `x5u`, `x5c`
//! headers are refused, never fetched). Only asymmetric algorithms can be
//! allowed. See the crate README for tested Okta and Cognito configurations.

mod claims;
mod config;
mod error;
mod jwks;
mod token_cache;
mod validator;

pub use claims::{Claims, TokenKind};
pub use config::{Flavor, IssuerConfig, RoleGroups, ServiceRole, SigningAlgorithm};
pub use error::{AuthError, ConfigError};
pub use token_cache::DEFAULT_TOKEN_CACHE_CAPACITY;
pub use validator::{
    DEFAULT_JWKS_MAX_AGE, DEFAULT_JWKS_REFRESH_INTERVAL, DiscoveryDocument, TokenValidator,
    jwks_fetches, parse_compact_jws,
};

/// The token of an `Authorization` header value (`Bearer <token>`, scheme case-insensitive).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}
