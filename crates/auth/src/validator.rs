//! The validator: compact JWS parsing, header policy, key selection from the
//! issuer's own JWKS, signature verification and claim checks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certflow_core::access::Principal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::claims::{Claims, TokenKind, principal_for};
use crate::config::{Flavor, IssuerConfig, SigningAlgorithm};
use crate::error::{AuthError, ConfigError, sanitise};
use crate::jwks::{KeyCache, VerifyingKey, fetch_bounded, parse_jwks};
use crate::token_cache::{DEFAULT_TOKEN_CACHE_CAPACITY, Entry, TokenCache};
use std::sync::atomic::{AtomicU64, Ordering};

/// JWKS fetches of this process (succeeded, failed), for `/metrics`: one
/// per issuer at start and then only on an unknown `kid` (rate-limited) or
/// when the cached set is older than its maximum age.
static JWKS_FETCHES: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

/// How many JWKS fetches this process made: (succeeded, failed).
pub fn jwks_fetches() -> (u64, u64) {
    (
        JWKS_FETCHES.0.load(Ordering::Relaxed),
        JWKS_FETCHES.1.load(Ordering::Relaxed),
    )
}

/// Default minimum time between two JWKS fetches of one issuer.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default age after which cached keys are refetched on next use.
pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Longest accepted token: generous for big group lists, small enough to bound work.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// An issuer's OpenID discovery document (the fields certflow uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryDocument {
    /// Must equal the configured issuer.
    pub issuer: String,
    /// Where the browser is sent to log in.
    pub authorization_endpoint: String,
    /// Where the code is exchanged for tokens.
    pub token_endpoint: String,
    /// Where the browser is sent to log out (RP-initiated logout), if supported.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// The issuer's key set.
    pub jwks_uri: String,
    /// The userinfo endpoint, if any.
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// Supported scopes, if advertised.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// Supported PKCE methods, if advertised.
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
}

struct Issuer {
    config: IssuerConfig,
    keys: KeyCache,
    discovery: tokio::sync::Mutex<Option<Arc<DiscoveryDocument>>>,
}

/// Validates bearer and ID tokens against a fixed set of trusted issuers.
/// Cheap to share behind an `Arc`; key sets are cached per issuer.
pub struct TokenValidator {
    issuers: HashMap<String, Issuer>,
    http: reqwest::Client,
    refresh_interval: Duration,
    max_age: Duration,
    access_tokens: TokenCache,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenValidator")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .field("refresh_interval", &self.refresh_interval)
            .finish_non_exhaustive()
    }
}

struct Parsed<'a> {
    alg: SigningAlgorithm,
    kid: Option<String>,
    typ: Option<String>,
    signing_input: &'a str,
    signature_b64: &'a str,
    claims: Map<String, Value>,
}

impl TokenValidator {
    /// A validator trusting `configs`; `http` fetches discovery documents and JWKS.
    pub fn new(configs: Vec<IssuerConfig>, http: reqwest::Client) -> Result<Self, ConfigError> {
        let mut issuers = HashMap::new();
        for config in configs {
            config.check().map_err(ConfigError)?;
            let iss = config.issuer.clone();
            let issuer = Issuer {
                config,
                keys: KeyCache::new(),
                discovery: tokio::sync::Mutex::new(None),
            };
            if issuers.insert(iss.clone(), issuer).is_some() {
                return Err(ConfigError(format!("issuer {iss} configured twice")));
            }
        }
        Ok(Self {
            issuers,
            http,
            refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            max_age: DEFAULT_JWKS_MAX_AGE,
            access_tokens: TokenCache::new(DEFAULT_TOKEN_CACHE_CAPACITY),
        })
    }

    /// Sets the minimum time between JWKS fetches per issuer (default 30 s).
    pub fn with_jwks_refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Sets the age after which cached keys are refetched on next use (default 1 h).
    pub fn with_jwks_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Sets how many verified access tokens are remembered (default
    /// 10,000; 0 verifies every presentation in full). See `token_cache.rs`
    /// for when a remembered token stops being honoured.
    pub fn with_access_token_cache(mut self, capacity: usize) -> Self {
        self.access_tokens = TokenCache::new(capacity);
        self
    }

    /// The configuration of a trusted issuer.
    pub fn issuer_config(&self, issuer: &str) -> Option<&IssuerConfig> {
        self.issuers.get(issuer).map(|i| &i.config)
    }

    /// Validates a bearer access token (the part after `Bearer `).
    pub async fn validate_access_token(&self, token: &str) -> Result<Claims, AuthError> {
        self.validate_access_token_shared(token)
            .await
            .map(|c| Claims::clone(&c))
    }

    /// [`Self::validate_access_token`], the claims shared with the cache of
    /// verified tokens rather than copied out of it.
    pub async fn validate_access_token_shared(
        &self,
        token: &str,
    ) -> Result<Arc<Claims>, AuthError> {
        if !self.access_tokens.is_enabled() {
            return self
                .validate_access_token_uncached(token)
                .await
                .map(|(c, _)| Arc::new(c));
        }
        let hash = TokenCache::hash(token);
        if let Some(hit) = self.access_tokens.get(&hash) {
            let live = self.now() <= hit.claims.expires_at
                && self
                    .issuers
                    .get(&hit.claims.issuer)
                    .is_some_and(|issuer| issuer.keys.still_holds(&hit.jwk, self.max_age));
            if live {
                return Ok(hit.claims.clone());
            }
            self.access_tokens.remove(&hash);
        }
        let (claims, jwk) = self.validate_access_token_uncached(token).await?;
        let claims = Arc::new(claims);
        self.access_tokens.insert(
            hash,
            Entry {
                claims: claims.clone(),
                jwk,
            },
            self.now(),
        );
        Ok(claims)
    }

    /// The full check of an access token, and the key that verified it.
    async fn validate_access_token_uncached(
        &self,
        token: &str,
    ) -> Result<(Claims, jsonwebtoken::jwk::Jwk), AuthError> {
        let parsed = parse(token)?;
        if let Some(typ) = &parsed.typ
            && !["at+jwt", "application/at+jwt", "jwt"].contains(&typ.to_ascii_lowercase().as_str())
        {
            return Err(AuthError::WrongType { typ: sanitise(typ) });
        }
        let (issuer, jwk) = self.verify(&parsed).await?;
        let config = &issuer.config;
        let claims = self.check_common(config, parsed.claims, TokenKind::Access)?;
        if config.flavor == Flavor::Cognito {
            check_token_use(&claims, "access")?;
            // Cognito access tokens carry no `aud`: the app client is the audience.
            let client = claims
                .client_id
                .as_deref()
                .ok_or(AuthError::MissingClaim("client_id"))?;
            if !config.client_ids.iter().any(|c| c == client) {
                return Err(AuthError::ClientNotAllowed);
            }
        } else {
            let audience = config.audience.as_deref().unwrap_or_default();
            if !claims.audience.iter().any(|a| a == audience) {
                return Err(AuthError::WrongAudience);
            }
            if !config.client_ids.is_empty() {
                let client = claims
                    .client_id
                    .as_deref()
                    .ok_or(AuthError::MissingClaim("client_id"))?;
                if !config.client_ids.iter().any(|c| c == client) {
                    return Err(AuthError::ClientNotAllowed);
                }
            }
        }
        Ok((claims, jwk))
    }

    /// Validates an OpenID Connect ID token returned to `client_id` by a login
    /// that sent `expected_nonce`.
    pub async fn validate_id_token(
        &self,
        token: &str,
        expected_nonce: &str,
        client_id: &str,
    ) -> Result<Claims, AuthError> {
        let parsed = parse(token)?;
        // An access token (at+jwt) must not pass as a login.
        if let Some(typ) = &parsed.typ
            && !typ.eq_ignore_ascii_case("jwt")
        {
            return Err(AuthError::WrongType { typ: sanitise(typ) });
        }
        let (issuer, _) = self.verify(&parsed).await?;
        let config = &issuer.config;
        if !config.client_ids.is_empty() && !config.client_ids.iter().any(|c| c == client_id) {
            return Err(AuthError::ClientNotAllowed);
        }
        let claims = self.check_common(config, parsed.claims, TokenKind::Id)?;
        if config.flavor == Flavor::Cognito {
            check_token_use(&claims, "id")?;
        }
        if !claims.audience.iter().any(|a| a == client_id) {
            return Err(AuthError::WrongAudience);
        }
        let azp = claims.get_str("azp");
        if (claims.audience.len() > 1 || azp.is_some()) && azp != Some(client_id) {
            return Err(AuthError::AuthorizedPartyMismatch);
        }
        let nonce = claims.get_str("nonce").ok_or(AuthError::NonceMismatch)?;
        if !constant_time_eq(nonce.as_bytes(), expected_nonce.as_bytes()) {
            return Err(AuthError::NonceMismatch);
        }
        Ok(claims)
    }

    /// The principal for validated claims, under their issuer's mappings.
    pub fn principal(&self, claims: &Claims) -> Principal {
        principal_for(self.issuer_config(&claims.issuer), claims)
    }

    /// The issuer's discovery document (fetched once, then cached).
    pub async fn discovery(&self, issuer: &str) -> Result<Arc<DiscoveryDocument>, AuthError> {
        let issuer = self.issuers.get(issuer).ok_or(AuthError::UnknownIssuer)?;
        self.discovery_of(issuer).await
    }

    async fn discovery_of(&self, issuer: &Issuer) -> Result<Arc<DiscoveryDocument>, AuthError> {
        let mut cached = issuer.discovery.lock().await;
        if let Some(doc) = cached.as_ref() {
            return Ok(doc.clone());
        }
        let url = issuer.config.discovery_url();
        let body = fetch_bounded(&self.http, &url, "discovery").await?;
        let doc: DiscoveryDocument = serde_json::from_slice(&body).map_err(|e| {
            AuthError::IssuerUnavailable(format!("discovery {url}: invalid document: {e}"))
        })?;
        // OpenID Discovery 1.0 §4.3: a document naming another issuer is not this issuer's.
        if doc.issuer != issuer.config.issuer {
            return Err(AuthError::IssuerUnavailable(format!(
                "discovery {url}: names issuer {} instead of {}",
                sanitise(&doc.issuer),
                issuer.config.issuer
            )));
        }
        // The document must not lead the keys or the code exchange onto plain HTTP either.
        for (field, target) in [
            ("jwks_uri", &doc.jwks_uri),
            ("token_endpoint", &doc.token_endpoint),
        ] {
            crate::config::check_transport(target, issuer.config.allow_insecure_http).map_err(
                |e| AuthError::IssuerUnavailable(format!("discovery {url}: {field} {e}")),
            )?;
        }
        let doc = Arc::new(doc);
        *cached = Some(doc.clone());
        Ok(doc)
    }

    async fn jwks_url(&self, issuer: &Issuer) -> Result<String, AuthError> {
        match &issuer.config.jwks_url {
            Some(url) => Ok(url.clone()),
            None => Ok(self.discovery_of(issuer).await?.jwks_uri.clone()),
        }
    }

    /// Picks the issuer by the (unverified) `iss`, checks `alg` against its
    /// allow-list and verifies the signature with a key from its JWKS, which it returns.
    async fn verify(
        &self,
        parsed: &Parsed<'_>,
    ) -> Result<(&Issuer, jsonwebtoken::jwk::Jwk), AuthError> {
        let iss = parsed
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(AuthError::UnknownIssuer)?;
        let issuer = self.issuers.get(iss).ok_or(AuthError::UnknownIssuer)?;
        if !issuer.config.algorithms.contains(&parsed.alg) {
            return Err(AuthError::AlgorithmNotAllowed {
                alg: parsed.alg.as_str().into(),
            });
        }
        check_signature_encoding(parsed.alg, parsed.signature_b64)?;
        let keys = issuer
            .keys
            .candidates(
                parsed.kid.as_deref(),
                self.refresh_interval,
                self.max_age,
                || async {
                    let fetched = async {
                        let url = self.jwks_url(issuer).await?;
                        let body = fetch_bounded(&self.http, &url, "JWKS").await?;
                        parse_jwks(&body)
                    }
                    .await;
                    let counter = if fetched.is_ok() {
                        &JWKS_FETCHES.0
                    } else {
                        &JWKS_FETCHES.1
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    fetched
                },
            )
            .await?;
        let candidates: Vec<&VerifyingKey> = keys
            .iter()
            .filter(|k| parsed.kid.is_none() || k.kid == parsed.kid)
            .collect();
        let kid_for_errors = || parsed.kid.as_deref().map_or_else(|| "-".into(), sanitise);
        if candidates.is_empty() {
            return Err(AuthError::UnknownKey {
                kid: kid_for_errors(),
            });
        }
        let usable: Vec<&&VerifyingKey> =
            candidates.iter().filter(|k| k.fits(parsed.alg)).collect();
        if usable.is_empty() {
            return Err(AuthError::KeyMismatch {
                kid: kid_for_errors(),
                alg: parsed.alg.as_str(),
            });
        }
        for key in usable {
            let ok = jsonwebtoken::crypto::verify(
                parsed.signature_b64,
                parsed.signing_input.as_bytes(),
                &key.key,
                parsed.alg.jsonwebtoken(),
            )
            .unwrap_or(false);
            if ok {
                return Ok((issuer, key.jwk.clone()));
            }
        }
        Err(AuthError::BadSignature)
    }

    fn now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    fn check_common(
        &self,
        config: &IssuerConfig,
        raw: Map<String, Value>,
        kind: TokenKind,
    ) -> Result<Claims, AuthError> {
        let now = self.now();
        let leeway = i64::try_from(config.leeway_secs).unwrap_or(i64::MAX);
        let exp = numeric_date(&raw, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
        if now > exp.saturating_add(leeway) {
            return Err(AuthError::Expired {
                seconds_ago: now - exp,
            });
        }
        if let Some(nbf) = numeric_date(&raw, "nbf")?
            && nbf > now.saturating_add(leeway)
        {
            return Err(AuthError::NotYetValid {
                seconds_ahead: nbf - now,
            });
        }
        let iat = numeric_date(&raw, "iat")?;
        if let Some(iat) = iat
            && iat > now.saturating_add(leeway)
        {
            return Err(AuthError::IssuedInFuture {
                seconds_ahead: iat - now,
            });
        }
        let audience = match raw.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(AuthError::MissingClaim("aud"))?,
            Some(_) => return Err(AuthError::MissingClaim("aud")),
        };
        let string = |name: &'static str| -> Result<Option<String>, AuthError> {
            match raw.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(AuthError::MissingClaim(name)),
            }
        };
        let subject = string("sub")?;
        let client_id = match config.flavor {
            Flavor::Okta => string("cid")?.or(string("client_id")?),
            _ => string("client_id")?,
        }
        .or(string("azp")?);
        let scopes = match (raw.get("scope"), raw.get("scp")) {
            (Some(Value::String(s)), _) => s.split_whitespace().map(str::to_owned).collect(),
            (_, Some(Value::Array(items))) => items
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let groups = match raw.get(config.group_claim()) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(g)) => vec![g.clone()],
            _ => Vec::new(),
        };
        Ok(Claims {
            kind,
            issuer: config.issuer.clone(),
            subject,
            audience,
            expires_at: exp,
            issued_at: iat,
            client_id,
            scopes,
            groups,
            token_id: string("jti")?,
            raw,
        })
    }
}

fn check_token_use(claims: &Claims, expected: &'static str) -> Result<(), AuthError> {
    match claims.get_str("token_use") {
        Some(found) if found == expected => Ok(()),
        found => Err(AuthError::WrongTokenUse {
            expected,
            found: found.map_or_else(|| "-".into(), sanitise),
        }),
    }
}

/// The pure stage of token validation, before any issuer or key is looked
/// up: splits and decodes the compact JWS, applies the header policy, and
/// checks the signature's encoding and the date claims' types. The parsing
/// entry point of the `jws` fuzz target (fuzz/, RELIABILITY.md).
pub fn parse_compact_jws(token: &str) -> Result<(), AuthError> {
    let parsed = parse(token)?;
    check_signature_encoding(parsed.alg, parsed.signature_b64)?;
    for name in ["exp", "nbf", "iat"] {
        numeric_date(&parsed.claims, name)?;
    }
    Ok(())
}

/// Splits and decodes a compact JWS and applies the header policy.
fn parse(token: &str) -> Result<Parsed<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let header: Map<String, Value> = decode_json(header_b64, "header")?;
    // Key-carrying headers first: whatever else the token claims, it does not get to pick its key.
    for name in ["jku", "jwk", "x5u", "x5c"] {
        if header.contains_key(name) {
            return Err(AuthError::ForbiddenHeader(name));
        }
    }
    if header.contains_key("crit") {
        return Err(AuthError::CriticalHeader);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(AuthError::Malformed("header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::Unsigned);
    }
    let alg = SigningAlgorithm::parse(alg)
        .ok_or_else(|| AuthError::AlgorithmNotAllowed { alg: sanitise(alg) })?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed("kid is not a string")),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.clone()),
        Some(_) => return Err(AuthError::Malformed("typ is not a string")),
    };
    if signature_b64.is_empty() {
        return Err(AuthError::Unsigned);
    }
    let claims: Map<String, Value> = decode_json(payload_b64, "payload")?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    Ok(Parsed {
        alg,
        kid,
        typ,
        signing_input,
        signature_b64,
        claims,
    })
}

fn decode_json(part: &str, what: &'static str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| {
        AuthError::Malformed(if what == "header" {
            "header is not base64url"
        } else {
            "payload is not base64url"
        })
    })?;
    serde_json::from_slice(&bytes).map_err(|_| {
        AuthError::Malformed(if what == "header" {
            "header is not a JSON object"
        } else {
            "payload is not a JSON object"
        })
    })
}

/// Rejects ECDSA signatures that are not two in-range-looking scalars before
/// they reach the verifier: a defence in depth against "psychic signature"
/// bugs (CVE-2022-21449), where r = s = 0 verified everything.
fn check_signature_encoding(alg: SigningAlgorithm, signature_b64: &str) -> Result<(), AuthError> {
    let size = match alg {
        SigningAlgorithm::ES256 => 32,
        SigningAlgorithm::ES384 => 48,
        _ => return Ok(()),
    };
    let sig = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
    if sig.len() != 2 * size {
        return Err(AuthError::SignatureEncoding(alg.as_str()));
    }
    let (r, s) = sig.split_at(size);
    if r.iter().all(|b| *b == 0) || s.iter().all(|b| *b == 0) {
        return Err(AuthError::SignatureEncoding(alg.as_str()));
    }
    Ok(())
}

fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            // NumericDate may be fractional (RFC 7519 §2); whole seconds suffice.
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(AuthError::MissingClaim(name)),
        Some(_) => Err(AuthError::MissingClaim(name)),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
