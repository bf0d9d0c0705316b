//! Access tokens already verified, so that a client sending the same bearer
//! token on every request (an agent polling, a pipeline) pays the signature
//! verification and claim parsing once per token instead of once per request.
//!
//! Keyed by SHA-256 of the token, so holding the cache does not hold usable
//! tokens in memory and a different token can only hit an entry by a SHA-256
//! collision. An entry is honoured until the token's `exp` (never with the
//! leeway: an expired token goes back through the full check) and only while
//! the JWKS key that verified it is still in its issuer's key set, looked up
//! on every hit: a key rotated out of the set invalidates every token it
//! signed at the same moment it would have for an uncached validation.
//! Only successes are cached; the number of entries is bounded.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jsonwebtoken::jwk::Jwk;

use crate::claims::Claims;

/// Entries kept by default: one per agent of a large fleet.
pub const DEFAULT_TOKEN_CACHE_CAPACITY: usize = 10_000;

/// Key of an entry: SHA-256 of the compact token.
pub(crate) type TokenHash = [u8; 32];

/// What a hit returns and what it is checked against.
pub(crate) struct Entry {
    /// The claims as validated.
    pub(crate) claims: Arc<Claims>,
    /// The key that verified the signature, which must still be published.
    pub(crate) jwk: Jwk,
}

/// Verified access tokens by hash, at most `capacity` of them.
pub(crate) struct TokenCache {
    capacity: usize,
    entries: RwLock<HashMap<TokenHash, Arc<Entry>>>,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn hash(token: &str) -> TokenHash {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The entry of `hash`, if any (unchecked: the caller checks `exp` and the key).
    pub(crate) fn get(&self, hash: &TokenHash) -> Option<Arc<Entry>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(hash).cloned()
    }

    pub(crate) fn remove(&self, hash: &TokenHash) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.remove(hash);
    }

    /// Remembers a validated token; when full, expired entries go first,
    /// then arbitrary ones (a token evicted is only verified again).
    pub(crate) fn insert(&self, hash: TokenHash, entry: Entry, now: i64) {
        if !self.is_enabled() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&hash) {
            entries.retain(|_, e| e.claims.expires_at >= now);
            while entries.len() >= self.capacity {
                let Some(victim) = entries.keys().next().copied() else {
                    break;
                };
                entries.remove(&victim);
            }
        }
        entries.insert(hash, Arc::new(entry));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::claims::TokenKind;

    fn entry(exp: i64) -> Entry {
        Entry {
            claims: Arc::new(Claims {
                kind: TokenKind::Access,
                issuer: "https://idp.example.com".into(),
                subject: None,
                audience: Vec::new(),
                expires_at: exp,
                issued_at: None,
                client_id: None,
                scopes: Vec::new(),
                groups: Vec::new(),
                token_id: None,
                raw: serde_json::Map::new(),
            }),
            jwk: Jwk {
                common: Default::default(),
                algorithm: jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(Default::default()),
            },
        }
    }

    #[test]
    fn bounded_expired_entries_go_first() {
        let cache = TokenCache::new(3);
        cache.insert(TokenCache::hash("a"), entry(100), 50);
        cache.insert(TokenCache::hash("b"), entry(10), 50);
        cache.insert(TokenCache::hash("c"), entry(100), 50);
        cache.insert(TokenCache::hash("d"), entry(100), 50);
        assert_eq!(cache.len(), 3);
        assert!(
            cache.get(&TokenCache::hash("b")).is_none(),
            "expired entry evicted first"
        );
        for t in ["a", "c", "d"] {
            assert!(cache.get(&TokenCache::hash(t)).is_some(), "{t}");
        }
        // Full of live entries: still bounded.
        cache.insert(TokenCache::hash("e"), entry(100), 50);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&TokenCache::hash("e")).is_some());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let cache = TokenCache::new(0);
        cache.insert(TokenCache::hash("a"), entry(100), 50);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn keyed_by_sha256() {
        // SHA-256("abc") = ba7816bf...
        assert_eq!(TokenCache::hash("abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
