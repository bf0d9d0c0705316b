//! Rate limits: a small per-key token bucket ([`RateLimiter`], shared by the
//! agent listener and the console) and the console's limits
//! ([`ConsoleLimits`]): per authenticated subject on the console API and
//! session routes, per client IP for requests that are not (yet)
//! authenticated, and a tighter per-IP bucket on `/console/login` and
//! `/console/callback`, which cost a provider round trip and an audit record
//! each. A refusal is a 429 problem document with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::ConsoleConfig;
use crate::errors::ApiError;

/// Keys tracked before idle buckets are dropped (a full bucket forgets nothing).
const MAX_KEYS: usize = 10_000;

/// Token buckets by key: `rate` tokens a second, at most `burst` saved up.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `rate` requests a second per key, bursts of `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate: rate.max(0.001),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; `Err(seconds until one is available)` when empty.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            // Buckets that refilled completely carry no state worth keeping.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        let refilled =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            let wait = ((1.0 - refilled) / self.rate).ceil();
            // The float is small and positive: seconds until the next token.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Err(wait.max(1.0) as u64)
        }
    }
}

/// 429 `rate-limited` problem document with `Retry-After: retry_after`.
pub fn too_many(retry_after: u64) -> Response {
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!("slow down; retry in {retry_after} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// A request refused by a console limit: answers 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Seconds until the bucket has a token again.
    pub retry_after: u64,
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        too_many(self.retry_after)
    }
}

/// The console's rate limits and where its clients' addresses come from.
pub struct ConsoleLimits {
    /// Per subject (authenticated) or per client IP (not authenticated).
    requests: RateLimiter,
    /// Per client IP on `/console/login` and `/console/callback`.
    login: RateLimiter,
    /// Peers whose `X-Forwarded-For` is believed.
    proxies: Vec<ipnet::IpNet>,
}

impl ConsoleLimits {
    /// The limits of `[console]`.
    pub fn new(config: &ConsoleConfig) -> anyhow::Result<Self> {
        let proxies = config.proxies()?;
        Ok(Self {
            requests: RateLimiter::new(config.rate_limit_per_sec, config.rate_limit_burst),
            login: RateLimiter::new(
                config.login_rate_limit_per_min / 60.0,
                config.login_rate_limit_burst,
            ),
            proxies,
        })
    }

    /// The client's address: the TCP peer, or — when the peer is a trusted
    /// proxy — the right-most `X-Forwarded-For` entry that is not one (the
    /// left part of that header is whatever the client wrote).
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let trusted = |ip: &IpAddr| self.proxies.iter().any(|n| n.contains(ip));
        let peer = peer?;
        if !trusted(&peer) {
            return Some(peer);
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // A malformed entry ends what can be believed.
                break;
            };
            client = ip;
            if !trusted(&ip) {
                break;
            }
        }
        Some(client)
    }

    /// One request of the authenticated `subject`; the 429 answer when its bucket is empty.
    pub fn subject(&self, subject: &str) -> Result<(), Limited> {
        self.requests
            .check(&format!("subject:{subject}"), Instant::now())
            .map_err(|s| refused("subject", s))
    }

    /// One request from `ip` that is not authenticated.
    pub fn anonymous(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        self.requests
            .check(&ip_key(ip), Instant::now())
            .map_err(|s| refused("ip", s))
    }

    /// One `/console/login` or `/console/callback` request from `ip`.
    pub fn login(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        self.login
            .check(&ip_key(ip), Instant::now())
            .map_err(|s| refused("login", s))
    }
}

fn ip_key(ip: Option<IpAddr>) -> String {
    match ip {
        Some(ip) => format!("ip:{ip}"),
        // In-process callers (tests) have no address: one bucket for all of them.
        None => "ip:-".to_owned(),
    }
}

fn refused(bucket: &'static str, retry_after: u64) -> Limited {
    tracing::info!(bucket, retry_after, "console request rate-limited");
    Limited { retry_after }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let limiter = RateLimiter::new(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check("a", t0), Ok(()));
        }
        assert_eq!(limiter.check("a", t0), Err(1));
        // Other keys have their own bucket.
        assert_eq!(limiter.check("b", t0), Ok(()));
        // Half a second at 2/s buys one token.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limiter.check("a", t1), Ok(()));
        assert!(limiter.check("a", t1).is_err());
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", t2), Ok(()));
        }
        assert!(limiter.check("a", t2).is_err());
    }

    #[test]
    fn a_slow_rate_asks_for_a_long_wait() {
        // 6 a minute: the next token is 10 s away.
        let limiter = RateLimiter::new(0.1, 1.0);
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", t0), Ok(()));
        assert_eq!(limiter.check("a", t0), Err(10));
    }

    fn limits(proxies: &[&str]) -> ConsoleLimits {
        ConsoleLimits::new(&ConsoleConfig {
            trusted_proxies: proxies.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn client_ip_believes_forwarded_for_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.0.0.7"),
        );
        // Without trusted proxies the peer is the client, whatever the header says.
        let none = limits(&[]);
        assert_eq!(
            none.client_ip(Some(ip("10.0.0.5")), &h),
            Some(ip("10.0.0.5"))
        );
        // Behind 10.0.0.0/8: the right-most untrusted hop; the spoofed left part is ignored.
        let lb = limits(&["10.0.0.0/8"]);
        assert_eq!(
            lb.client_ip(Some(ip("10.0.0.5")), &h),
            Some(ip("203.0.113.9"))
        );
        // A peer outside the trusted range cannot choose its address.
        assert_eq!(
            lb.client_ip(Some(ip("198.51.100.1")), &h),
            Some(ip("198.51.100.1"))
        );
        // Garbage stops the walk at the last believable hop.
        let mut bad = HeaderMap::new();
        bad.insert("x-forwarded-for", HeaderValue::from_static("x, 10.0.0.9"));
        assert_eq!(
            lb.client_ip(Some(ip("10.0.0.5")), &bad),
            Some(ip("10.0.0.9"))
        );
        assert!(
            ConsoleLimits::new(&ConsoleConfig {
                trusted_proxies: vec!["not-a-net".into()],
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn login_bucket_is_per_minute_and_separate() {
        let limits = ConsoleLimits::new(&ConsoleConfig {
            login_rate_limit_per_min: 6.0,
            login_rate_limit_burst: 2.0,
            ..Default::default()
        })
        .unwrap();
        let ip = Some("192.0.2.1".parse().unwrap());
        assert!(limits.login(ip).is_ok());
        assert!(limits.login(ip).is_ok());
        let refused = limits.login(ip).unwrap_err().into_response();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = refused.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=10).contains(&wait), "{wait}");
        // The general bucket of that address is untouched.
        assert!(limits.anonymous(ip).is_ok());
    }
}
