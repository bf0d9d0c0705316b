//! A small per-key token bucket (per agent once authenticated, per client
//! IP before) and the agent API's request counters, labelled by audience so
//! agent traffic can be told from console traffic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

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

/// Request counts by (audience, route, status).
type Counters = Mutex<BTreeMap<(&'static str, String, u16), u64>>;

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(Default::default)
}

/// Counts one request of `audience` on `route` answered with `status`.
pub fn record(audience: &'static str, route: &str, status: u16) {
    if let Ok(mut c) = counters().lock() {
        *c.entry((audience, route.to_owned(), status)).or_insert(0) += 1;
    }
}

/// The counters in Prometheus text format.
pub fn render() -> String {
    let mut out = String::from(
        "# HELP certflow_agent_api_requests_total Agent API requests by audience, route and status.\n\
         # TYPE certflow_agent_api_requests_total counter\n",
    );
    if let Ok(c) = counters().lock() {
        for ((audience, route, status), n) in c.iter() {
            out.push_str(&format!(
                "certflow_agent_api_requests_total{{audience=\"{audience}\",route=\"{route}\",status=\"{status}\"}} {n}\n"
            ));
        }
    }
    out
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
    fn counters_render_with_the_audience_label() {
        record("agent", "/agent/v1/whoami", 200);
        assert!(render().contains(
            "certflow_agent_api_requests_total{audience=\"agent\",route=\"/agent/v1/whoami\",status=\"200\"}"
        ));
    }
}
