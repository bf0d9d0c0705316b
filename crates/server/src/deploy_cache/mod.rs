//! The deployment cache: per-agent answers of `GET /agent/v1/assignments`,
//! shared by the agent listener (which serves them) and the console API and
//! pages (whose assignment changes drop them), and the change-feed plumbing
//! that keeps every replica's copy current ([`watch`]).
//!
//! # Why the assignment poll is built like this
//!
//! Every agent polls `GET /agent/v1/assignments` every few seconds to
//! minutes, and almost every poll finds nothing new. So the answer for each
//! agent (its JSON body and a strong ETag over it) is kept in memory
//! ([`AssignmentCache`]): a poll whose `If-None-Match` equals the cached ETag
//! gets 304 without touching the database; only the first poll, and the
//! first after a change, reads it. Changes that alter an agent's list — a
//! new version, a revocation or archival of an assigned certificate, an
//! assignment made or removed — drop the affected entries, here at once and
//! on other replicas through the change feed ([`super::watch`]), so a
//! renewal by a worker replica reaches an API replica's agents. Each drop
//! also bumps a generation on a `tokio::sync::watch` channel: a long poll
//! (`?wait=<s>`, at most 60 s) parks on it and wakes within milliseconds of
//! a change, re-checks its own entry (a memory look-up) and answers 200 if
//! its list changed, or parks again until the wait is over (304). Entries
//! also expire after [`CACHE_MAX_AGE`] as a safety net for an announcement
//! lost in a crash.

pub mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use certflow_api::agent::{Assignment, AssignmentList};
use certflow_core::DomainError;
use certflow_core::deployments::AssignedCertificate;
use certflow_services::deployments::Deployments;
use certflow_services::discovery::Discovery;
use certflow_store::ChangeFeed;
use tokio::sync::watch as generation;
use uuid::Uuid;

use crate::errors::ApiResult;
use watch::ASSIGNMENTS_TOPIC;

/// How long a cached answer is trusted without any announcement.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(300);

/// One agent's cached answer.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The strong ETag, quoted.
    pub etag: Arc<str>,
    /// The JSON body.
    pub body: Bytes,
    certificates: Vec<Uuid>,
    loaded: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    entries: HashMap<Uuid, Cached>,
    /// Which cached agents list a certificate, to drop only those.
    by_certificate: HashMap<Uuid, HashSet<Uuid>>,
    /// One body per distinct answer, by its ETag (a digest of the body):
    /// agents deployed alike get the same body, and a fleet's answers are
    /// mostly alike, so entries share one allocation instead of a copy each
    /// (about 0.5 KB per cached agent; BENCHMARKS.md, goal 6).
    bodies: HashMap<Arc<str>, Bytes>,
}

impl Inner {
    /// Points `cached` at the shared copy of its body (and ETag), making
    /// its own the shared one if it is the first.
    fn share_body(&mut self, cached: &mut Cached) {
        if let Some((etag, body)) = self.bodies.get_key_value(&cached.etag) {
            cached.etag = etag.clone();
            cached.body = body.clone();
            return;
        }
        // Bodies no entry uses any more (only this map holds their ETag)
        // go once they are as many as the entries, so that pruning costs
        // a constant per insertion on average.
        if self.bodies.len() >= 2 * self.entries.len() + 64 {
            self.bodies.retain(|etag, _| Arc::strong_count(etag) > 1);
        }
        self.bodies.insert(cached.etag.clone(), cached.body.clone());
    }

    fn remove(&mut self, agent: Uuid) {
        if let Some(old) = self.entries.remove(&agent) {
            for c in old.certificates {
                if let Some(agents) = self.by_certificate.get_mut(&c) {
                    agents.remove(&agent);
                    if agents.is_empty() {
                        self.by_certificate.remove(&c);
                    }
                }
            }
        }
    }
}

/// Per-agent answers of `GET /agent/v1/assignments`, and a generation that
/// moves on every invalidation (what long polls wait on).
#[derive(Debug)]
pub struct AssignmentCache {
    inner: Mutex<Inner>,
    changed: generation::Sender<u64>,
    max_age: Duration,
}

impl AssignmentCache {
    /// An empty cache whose entries expire after `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changed: generation::channel(0).0,
            max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map is consistent after every statement: a panic elsewhere
        // while holding the lock cannot leave it half-updated.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent's answer, if cached and fresh, and the current generation.
    pub fn get(&self, agent: Uuid) -> (Option<Cached>, u64) {
        let inner = self.lock();
        let fresh = inner
            .entries
            .get(&agent)
            .filter(|c| c.loaded.elapsed() < self.max_age)
            .cloned();
        (fresh, inner.generation)
    }

    /// Caches an answer read at `generation`, unless something was
    /// invalidated since (the answer may predate that change).
    pub fn put(&self, agent: Uuid, cached: Cached, generation: u64) -> bool {
        let mut inner = self.lock();
        if inner.generation != generation {
            return false;
        }
        inner.remove(agent);
        let mut cached = cached;
        inner.share_body(&mut cached);
        for c in &cached.certificates {
            inner.by_certificate.entry(*c).or_default().insert(agent);
        }
        inner.entries.insert(agent, cached);
        true
    }

    fn bump(&self, inner: &mut Inner) {
        inner.generation += 1;
        self.changed.send_replace(inner.generation);
    }

    /// Drops one agent's answer.
    pub fn invalidate_agent(&self, agent: Uuid) {
        let mut inner = self.lock();
        inner.remove(agent);
        self.bump(&mut inner);
    }

    /// Drops the answers of every agent that lists `certificate`.
    pub fn invalidate_certificate(&self, certificate: Uuid) {
        let mut inner = self.lock();
        for agent in inner
            .by_certificate
            .get(&certificate)
            .cloned()
            .unwrap_or_default()
        {
            inner.remove(agent);
        }
        self.bump(&mut inner);
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.by_certificate.clear();
        inner.bodies.clear();
        self.bump(&mut inner);
    }

    /// Wakes on every invalidation.
    pub fn subscribe(&self) -> generation::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How many agents have a cached answer.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no agent has a cached answer.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the deployment routes (agent and console) share.
#[derive(Clone)]
pub struct DeployState {
    /// The use cases.
    pub deployments: Deployments,
    /// The discovery use cases (over the same deployments).
    pub discovery: Discovery,
    /// The agents' assignment answers.
    pub cache: Arc<AssignmentCache>,
    feed: ChangeFeed,
}

impl DeployState {
    /// State over `deployments`, announcing assignment changes on `feed`.
    pub fn new(deployments: Deployments, feed: ChangeFeed) -> Self {
        Self {
            discovery: Discovery::new(&deployments),
            deployments,
            cache: Arc::new(AssignmentCache::new(CACHE_MAX_AGE)),
            feed,
        }
    }

    /// After an agent's assignments changed: drop its answer here at once,
    /// and on every replica through the feed.
    pub async fn assignments_changed(&self, agent: Uuid) {
        self.cache.invalidate_agent(agent);
        if let Err(e) = self
            .feed
            .publish(&format!("{ASSIGNMENTS_TOPIC}{agent}"))
            .await
        {
            tracing::warn!(%agent, error = %e, "cannot announce an assignment change");
        }
    }

    /// The agent's answer: cached, or read and cached.
    pub async fn current(&self, agent: Uuid) -> ApiResult<Cached> {
        let (cached, generation) = self.cache.get(agent);
        if let Some(c) = cached {
            return Ok(c);
        }
        let items: Vec<Assignment> = self
            .deployments
            .assignments(agent)
            .await?
            .into_iter()
            .map(assignment_view)
            .collect();
        let certificates = items.iter().map(|a| a.certificate_id).collect();
        let body = serde_json::to_vec(&AssignmentList { items })
            .map_err(|e| DomainError::Internal(format!("encoding assignments: {e}")))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let cached = Cached {
            etag: format!("\"{}\"", hex::encode(&digest.as_ref()[..16])).into(),
            body: Bytes::from(body),
            certificates,
            loaded: Instant::now(),
        };
        self.cache.put(agent, cached.clone(), generation);
        Ok(cached)
    }
}

/// The wire form of an assignment.
pub fn assignment_view(a: AssignedCertificate) -> Assignment {
    Assignment {
        certificate_id: a.certificate_id,
        name: a.name,
        names: a.names.iter().map(|n| n.to_text()).collect(),
        key_source: a.key_source.as_str().into(),
        status: a.status.as_str().into(),
        version: a.version,
        serial: a.serial,
        fingerprint_sha256: a.fingerprint_sha256,
        not_after: a.not_after,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cached(certs: &[Uuid]) -> Cached {
        Cached {
            etag: "\"x\"".into(),
            body: Bytes::from_static(b"{}"),
            certificates: certs.to_vec(),
            loaded: Instant::now(),
        }
    }

    #[test]
    fn invalidation_drops_only_the_agents_concerned_and_wakes_waiters() {
        let cache = AssignmentCache::new(Duration::from_secs(60));
        let (a, b, c1, c2) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let g = cache.get(a).1;
        assert!(cache.put(a, cached(&[c1]), g));
        assert!(cache.put(b, cached(&[c1, c2]), g));
        let rx = cache.subscribe();
        cache.invalidate_certificate(c2);
        assert!(rx.has_changed().unwrap());
        assert!(cache.get(a).0.is_some());
        assert!(cache.get(b).0.is_none());
        cache.invalidate_certificate(c1);
        assert!(cache.is_empty());
        // An answer read before an invalidation is not cached.
        let g = cache.get(a).1;
        cache.invalidate_agent(b);
        assert!(!cache.put(a, cached(&[c1]), g));
        assert!(cache.get(a).0.is_none());
        // Expired entries read as absent.
        let short = AssignmentCache::new(Duration::ZERO);
        let g = short.get(a).1;
        assert!(short.put(a, cached(&[]), g));
        assert!(short.get(a).0.is_none());
    }

    #[test]
    fn alike_answers_share_one_body_and_unused_bodies_go() {
        let cache = AssignmentCache::new(Duration::from_secs(60));
        let answer = |tag: &str| Cached {
            etag: format!("\"{tag}\"").into(),
            body: Bytes::from(format!("{{\"items\":[\"{tag}\"]}}").into_bytes()),
            certificates: Vec::new(),
            loaded: Instant::now(),
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let g = cache.get(a).1;
        assert!(cache.put(a, answer("one"), g));
        assert!(cache.put(b, answer("one"), g));
        let (ca, cb) = (cache.get(a).0.unwrap(), cache.get(b).0.unwrap());
        assert_eq!(ca.body.as_ptr(), cb.body.as_ptr());
        assert!(Arc::ptr_eq(&ca.etag, &cb.etag));
        drop((ca, cb));
        // Answers that nobody holds any more are pruned as others arrive.
        for i in 0..200 {
            let agent = Uuid::now_v7();
            let g = cache.get(agent).1;
            assert!(cache.put(agent, answer(&i.to_string()), g));
            cache.invalidate_agent(agent);
        }
        let inner = cache.lock();
        assert!(inner.bodies.len() <= 2 * inner.entries.len() + 64);
        assert!(inner.bodies.contains_key("\"one\""));
    }
}
