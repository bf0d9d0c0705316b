//! One issuer's signing keys: fetched from its configured JWKS URL only,
//! cached, and refreshed on an unknown `kid` at most once per interval.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use serde::Deserialize;

use crate::config::SigningAlgorithm;
use crate::error::{AuthError, sanitise};

/// Bound on a JWKS or discovery response: a real one is a few kilobytes.
pub(crate) const MAX_METADATA_BYTES: usize = 512 * 1024;
/// Bound on one metadata fetch, so a slow issuer cannot hold the refresh lock.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<String>,
    pub(crate) jwk: Jwk,
    pub(crate) key: DecodingKey,
}

impl VerifyingKey {
    /// Whether this key may verify `alg` (type, curve, and the key's own `alg`/`use` if set).
    pub(crate) fn fits(&self, alg: SigningAlgorithm) -> bool {
        if let Some(key_alg) = &self.jwk.common.key_algorithm
            && key_alg.to_string() != alg.as_str()
        {
            return false;
        }
        if let Some(key_use) = &self.jwk.common.public_key_use
            && *key_use != PublicKeyUse::Signature
        {
            return false;
        }
        use SigningAlgorithm as S;
        match (&self.jwk.algorithm, alg) {
            (
                AlgorithmParameters::RSA(_),
                S::RS256 | S::RS384 | S::RS512 | S::PS256 | S::PS384 | S::PS512,
            ) => true,
            (AlgorithmParameters::EllipticCurve(p), S::ES256) => p.curve == EllipticCurve::P256,
            (AlgorithmParameters::EllipticCurve(p), S::ES384) => p.curve == EllipticCurve::P384,
            (AlgorithmParameters::OctetKeyPair(p), S::EdDSA) => p.curve == EllipticCurve::Ed25519,
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS, keeping only usable public keys: symmetric (`oct`) keys
/// and anything unparsable are dropped, never turned into secrets.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<VerifyingKey>, AuthError> {
    let doc: JwksDocument = serde_json::from_slice(body)
        .map_err(|_| AuthError::IssuerUnavailable("JWKS is not a JSON key set".into()))?;
    let mut keys = Vec::new();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if !matches!(
            jwk.algorithm,
            AlgorithmParameters::RSA(_)
                | AlgorithmParameters::EllipticCurve(_)
                | AlgorithmParameters::OctetKeyPair(_)
        ) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            jwk,
            key,
        });
    }
    Ok(keys)
}

struct Snapshot {
    keys: Arc<Vec<VerifyingKey>>,
    fetched_at: Option<Instant>,
}

/// Cached key set of one issuer.
pub(crate) struct KeyCache {
    snapshot: RwLock<Snapshot>,
    /// Time of the last fetch attempt; held across a fetch so concurrent
    /// misses wait for one refresh instead of each starting their own.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl KeyCache {
    pub(crate) fn new() -> Self {
        Self {
            snapshot: RwLock::new(Snapshot {
                keys: Arc::new(Vec::new()),
                fetched_at: None,
            }),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    fn current(&self) -> (Arc<Vec<VerifyingKey>>, Option<Instant>) {
        match self.snapshot.read() {
            Ok(s) => (s.keys.clone(), s.fetched_at),
            Err(poisoned) => {
                let s = poisoned.into_inner();
                (s.keys.clone(), s.fetched_at)
            }
        }
    }

    fn store(&self, keys: Vec<VerifyingKey>) {
        let snapshot = Snapshot {
            keys: Arc::new(keys),
            fetched_at: Some(Instant::now()),
        };
        match self.snapshot.write() {
            Ok(mut s) => *s = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }

    /// Whether `jwk` is in the current set and the set is younger than
    /// `max_age` (an older set is refetched by the next full validation,
    /// which is where a key removed by the issuer is noticed).
    pub(crate) fn still_holds(&self, jwk: &Jwk, max_age: Duration) -> bool {
        let (keys, fetched_at) = self.current();
        fetched_at.is_some_and(|t| t.elapsed() < max_age) && keys.iter().any(|k| k.jwk == *jwk)
    }

    /// The keys that may verify a token with `kid` and `alg`, refreshing the
    /// set when the `kid` is unknown or the cache is older than `max_age` —
    /// but fetching at most once per `min_interval`.
    pub(crate) async fn candidates<F, Fut>(
        &self,
        kid: Option<&str>,
        min_interval: Duration,
        max_age: Duration,
        fetch: F,
    ) -> Result<Arc<Vec<VerifyingKey>>, AuthError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<VerifyingKey>, AuthError>>,
    {
        let fresh = |fetched_at: Option<Instant>| fetched_at.is_some_and(|t| t.elapsed() < max_age);
        let (keys, fetched_at) = self.current();
        if fresh(fetched_at) && has_kid(&keys, kid) {
            return Ok(keys);
        }
        let mut last_attempt = self.refresh.lock().await;
        // Another caller may have refreshed while this one waited for the lock.
        let (keys, fetched_at) = self.current();
        if fresh(fetched_at) && has_kid(&keys, kid) {
            return Ok(keys);
        }
        if last_attempt.is_some_and(|t| t.elapsed() < min_interval) {
            return Self::settle(keys, fetched_at, kid);
        }
        *last_attempt = Some(Instant::now());
        match fetch().await {
            Ok(new_keys) => {
                self.store(new_keys);
                let (keys, fetched_at) = self.current();
                Self::settle(keys, fetched_at, kid)
            }
            Err(e) if fetched_at.is_none() => Err(e),
            Err(e) => {
                // Availability over freshness: the previous set was valid when
                // fetched; an issuer that rotates a compromised key out also
                // stops minting tokens with it.
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the cached keys");
                Self::settle(keys, fetched_at, kid)
            }
        }
    }

    fn settle(
        keys: Arc<Vec<VerifyingKey>>,
        fetched_at: Option<Instant>,
        kid: Option<&str>,
    ) -> Result<Arc<Vec<VerifyingKey>>, AuthError> {
        if fetched_at.is_none() {
            return Err(AuthError::IssuerUnavailable(
                "JWKS not fetched yet (retry after the refresh interval)".into(),
            ));
        }
        if has_kid(&keys, kid) {
            Ok(keys)
        } else {
            Err(AuthError::UnknownKey {
                kid: kid.map_or_else(|| "-".into(), sanitise),
            })
        }
    }
}

fn has_kid(keys: &[VerifyingKey], kid: Option<&str>) -> bool {
    match kid {
        Some(kid) => keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
        None => !keys.is_empty(),
    }
}

/// GETs `url` and returns its body, bounded in size and time.
pub(crate) async fn fetch_bounded(
    http: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<Vec<u8>, AuthError> {
    let unavailable = |detail: String| AuthError::IssuerUnavailable(format!("{what}: {detail}"));
    let work = async {
        let mut resp = http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| unavailable(format!("GET {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("GET {url}: HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| unavailable(format!("GET {url}: {e}")))?
        {
            if body.len() + chunk.len() > MAX_METADATA_BYTES {
                return Err(unavailable(format!(
                    "GET {url}: larger than {MAX_METADATA_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| unavailable(format!("GET {url}: timed out")))?
}
