//! Group commit: concurrent writes of one kind wait in a queue while one
//! transaction commits the previous batch, then go in together.
//!
//! A queue may have several lanes ([`GroupCommit::with_lanes`]): up to that
//! many batches commit at once, so that one gathers while another waits for
//! its commit's round trips. That pays where transactions run side by side
//! (PostgreSQL) and each batch's round trips, not the server's CPU, bound
//! the rate; one lane batches most.
//!
//! A database pays per transaction, not per row: a commit's WAL flush on
//! PostgreSQL, the write lock's hand-over and the statements themselves on
//! SQLite (each crosses to sqlx's worker thread and back). Under load the
//! writes that arrive while one commit runs share the next one, so the cost
//! per write falls as concurrency rises; a lone write goes through at once,
//! as a batch of one, and waits for nobody.
//!
//! Each caller is answered only after the transaction holding its write has
//! committed (or failed): durability is exactly that of a write of its own.
//! The batch runs in a task of its own, so a caller that goes away (a client
//! disconnecting drops its request's future) can neither abort a transaction
//! that holds other callers' writes nor leave the queue without a committer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use tokio::sync::oneshot;

/// Most writes one transaction takes; the rest wait for the next.
pub(crate) const MAX_BATCH: usize = 64;

/// Commits a batch: one result per item, in order.
pub(crate) type Commit<T, R> =
    Arc<dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Vec<DomainResult<R>>> + Send>> + Send + Sync>;

struct Waiting<T, R> {
    item: T,
    reply: oneshot::Sender<DomainResult<R>>,
}

struct Queue<T, R> {
    waiting: Vec<Waiting<T, R>>,
    /// Committer tasks running (each drains the queue before it ends).
    committers: usize,
}

/// The queue of one kind of write (answered with an `R`) and how to commit
/// a batch of them.
pub(crate) struct GroupCommit<T, R = ()> {
    queue: Mutex<Queue<T, R>>,
    commit: Commit<T, R>,
    /// Most batches committing at once.
    lanes: usize,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// A queue whose batches `commit` writes.
    pub(crate) fn new(commit: Commit<T, R>) -> Arc<Self> {
        Self::with_lanes(commit, 1)
    }

    /// A queue whose batches `commit` writes, up to `lanes` batches at once.
    pub(crate) fn with_lanes(commit: Commit<T, R>, lanes: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                committers: 0,
            }),
            commit,
            lanes: lanes.max(1),
        })
    }

    /// Writes `item` in the next batch; returns once that batch committed
    /// (`Ok`) or with the item's own error.
    pub(crate) async fn submit(self: &Arc<Self>, item: T) -> DomainResult<R> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.waiting.push(Waiting { item, reply });
            let start = queue.committers < self.lanes;
            queue.committers += usize::from(start);
            start
        };
        if start {
            tokio::spawn(Arc::clone(self).drain());
        }
        answer.await.unwrap_or_else(|_| {
            Err(DomainError::Internal(
                "the group commit ended without an answer".into(),
            ))
        })
    }

    /// Commits batches until the queue is empty.
    async fn drain(self: Arc<Self>) {
        loop {
            let batch: Vec<Waiting<T, R>> = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.waiting.is_empty() {
                    queue.committers -= 1;
                    return;
                }
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).collect()
            };
            let (items, replies): (Vec<T>, Vec<_>) =
                batch.into_iter().map(|w| (w.item, w.reply)).unzip();
            let count = items.len();
            let mut results = (self.commit)(items).await;
            if results.len() != count {
                results = (0..count)
                    .map(|_| {
                        Err(DomainError::Internal(format!(
                            "a group commit of {count} writes answered {} times",
                            results.len()
                        )))
                    })
                    .collect();
            }
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away learns nothing; its write stands.
                let _ = reply.send(result);
            }
        }
    }
}

/// Commits `batch` with `together` (one transaction for all, in the fewest
/// statements: even a batch of one goes this way first); should that fail
/// (a name taken, a key reused...), each write with `alone`, in a
/// transaction of its own, so each gets the answer it would have had alone
/// and the others still commit.
/// `what` names the writes in the log line of a failed group.
///
/// (Closures returning futures rather than async closures: a boxed `Send`
/// future over an async closure hits rustc's "not general enough" limits.)
pub(crate) async fn together_or_alone<'a, T, R, Together, Alone>(
    what: &str,
    batch: &'a [T],
    together: impl FnOnce(&'a [T]) -> Together,
    alone: impl Fn(&'a T) -> Alone,
) -> Vec<DomainResult<R>>
where
    Together: Future<Output = DomainResult<Vec<R>>>,
    Alone: Future<Output = DomainResult<R>>,
{
    if !batch.is_empty() {
        match together(batch).await {
            // A wrong count is caught by the drain, which fails them all.
            Ok(answers) => return answers.into_iter().map(Ok).collect(),
            Err(e) => tracing::debug!(
                batch = batch.len(),
                error = %e,
                "a group of {what} failed together; committing each alone"
            ),
        }
    }
    let mut results = Vec::with_capacity(batch.len());
    for item in batch {
        results.push(alone(item).await);
    }
    results
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_batches_and_each_gets_its_own_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&batches);
        let group = GroupCommit::new(Arc::new(move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                items
                    .into_iter()
                    .map(|i| {
                        if i % 7 == 0 {
                            Err(DomainError::Conflict(format!("{i}")))
                        } else {
                            Ok(())
                        }
                    })
                    .collect()
            }) as Pin<Box<dyn Future<Output = _> + Send>>
        }));
        let tasks: Vec<_> = (1..=100u32)
            .map(|i| {
                let group = Arc::clone(&group);
                tokio::spawn(async move { (i, group.submit(i).await) })
            })
            .collect();
        for task in tasks {
            let (i, result) = task.await.unwrap();
            match result {
                Err(DomainError::Conflict(which)) => {
                    assert_eq!(i % 7, 0);
                    assert_eq!(which, i.to_string());
                }
                Ok(()) => assert_ne!(i % 7, 0),
                Err(e) => panic!("{e}"),
            }
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 100, "100 concurrent writes took {n} transactions");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_two_lanes_a_slow_batch_does_not_hold_up_the_next() {
        let (release, held) = tokio::sync::watch::channel(false);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (now, peak) = (Arc::clone(&running), Arc::clone(&most));
        let group = GroupCommit::with_lanes(
            Arc::new(move |items: Vec<u32>| {
                let (now, peak, mut held) = (Arc::clone(&now), Arc::clone(&peak), held.clone());
                Box::pin(async move {
                    peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    if items.contains(&0) {
                        held.wait_for(|go| *go).await.unwrap();
                    } else {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    now.fetch_sub(1, Ordering::SeqCst);
                    items.into_iter().map(|_| Ok(())).collect()
                }) as Pin<Box<dyn Future<Output = _> + Send>>
            }),
            2,
        );
        let slow = tokio::spawn({
            let group = Arc::clone(&group);
            async move { group.submit(0).await }
        });
        // The held batch is [0] alone: the others are submitted once it runs.
        while running.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let others: Vec<_> = (1..=30u32)
            .map(|i| {
                let group = Arc::clone(&group);
                tokio::spawn(async move { group.submit(i).await })
            })
            .collect();
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            futures::future::join_all(others),
        )
        .await
        .unwrap();
        for r in done {
            r.unwrap().unwrap();
        }
        assert!(!slow.is_finished());
        release.send(true).unwrap();
        slow.await.unwrap().unwrap();
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_does_not_stop_the_batch() {
        let committed = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&committed);
        let group = GroupCommit::new(Arc::new(move |items: Vec<u32>| {
            let seen = Arc::clone(&seen);
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                seen.fetch_add(items.len(), Ordering::SeqCst);
                items.into_iter().map(|_| Ok(())).collect()
            }) as Pin<Box<dyn Future<Output = _> + Send>>
        }));
        // The first caller is dropped while its batch commits.
        let dropped = tokio::time::timeout(std::time::Duration::from_millis(5), group.submit(1));
        assert!(dropped.await.is_err());
        group.submit(2).await.unwrap();
        assert_eq!(committed.load(Ordering::SeqCst), 2);
    }
}
