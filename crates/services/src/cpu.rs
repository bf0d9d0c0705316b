//! The bounded pool CPU-heavy work runs on: PKCS#12 key derivation, key
//! generation (RSA-4096 takes up to a second), signing, the compliance
//! report's certificate parsing.
//!
//! Such work must not run on the async runtime's worker threads: there are
//! only as many as cores, and one request holding one for seconds delays
//! every other request scheduled on it (`/healthz` included). Nor may it run
//! unbounded on tokio's blocking threads (512 by default): a burst would take
//! every core from the runtime. So it runs on blocking threads, at most
//! `threads` at a time (the core count by default); up to `queue` more wait
//! for a turn, and past that the operation is refused at once as
//! `Unavailable` (503, retry later) rather than queued without limit.
//!
//! Background work that bounds its own concurrency (renewal jobs: the
//! worker's `concurrency`) runs inside [`background`]: its operations wait
//! for a turn instead of being refused, and take no place in the queue, so a
//! renewal burst delays console requests by a few operations but never gets
//! them refused, and a busy pool is not a failed renewal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use certflow_core::{DomainError, DomainResult};
use tokio::sync::Semaphore;

/// Operations that may wait for a thread by default, beyond those running.
pub const DEFAULT_QUEUE: usize = 64;

tokio::task_local! {
    /// Present while a task runs background work (see [`background`]).
    static BACKGROUND: ();
}

/// Runs `work` as background work: the pool operations it makes on its own
/// task wait for a turn however many are queued, and are not counted
/// against the queue's bound. The caller bounds how many run at once.
pub async fn background<F: std::future::Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

/// A bounded pool for CPU-heavy work; cheap to clone (clones share it).
#[derive(Clone)]
pub struct CpuPool {
    inner: Arc<Inner>,
}

struct Inner {
    permits: Arc<Semaphore>,
    threads: usize,
    queue: usize,
    /// Admitted operations: running or waiting for a thread (background
    /// work excepted).
    admitted: AtomicUsize,
}

/// Counts an admitted operation until dropped (finished, failed or
/// cancelled); background work holds none.
struct Admission(Option<Arc<Inner>>);

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(inner) = &self.0 {
            inner.admitted.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl CpuPool {
    /// A pool running at most `threads` (at least 1) operations at once,
    /// with at most `queue` more waiting.
    pub fn new(threads: usize, queue: usize) -> Self {
        let threads = threads.max(1);
        Self {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(threads)),
                threads,
                queue,
                admitted: AtomicUsize::new(0),
            }),
        }
    }

    /// One thread per core this process may use, [`DEFAULT_QUEUE`] waiting.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self::new(cores, DEFAULT_QUEUE)
    }

    /// Most operations running at once.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Operations running or waiting now, background work excepted.
    pub fn admitted(&self) -> usize {
        self.inner.admitted.load(Ordering::Acquire)
    }

    /// Runs `work` on a blocking thread once one of the pool's turns is
    /// free. `what` names the work in the refusal when the queue is full
    /// (never inside [`background`]). Dropping the future while it waits
    /// gives up its place; once `work` has started it runs to the end (its
    /// turn is held until then).
    pub async fn run<T, F>(&self, what: &'static str, work: F) -> DomainResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> DomainResult<T> + Send + 'static,
    {
        let admission = if BACKGROUND.try_with(|_| ()).is_ok() {
            Admission(None)
        } else {
            self.admit(what)?
        };
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DomainError::Internal("the CPU pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _turn = (permit, admission);
            work()
        })
        .await
        .map_err(|e| DomainError::Internal(format!("{what} failed: {e}")))?
    }

    /// A place in the queue, or the refusal when it is full.
    fn admit(&self, what: &'static str) -> DomainResult<Admission> {
        let limit = self.inner.threads + self.inner.queue;
        let before = self.inner.admitted.fetch_add(1, Ordering::AcqRel);
        let admission = Admission(Some(self.inner.clone()));
        if before >= limit {
            tracing::warn!(what, limit, "CPU pool full: operation refused");
            return Err(DomainError::Unavailable {
                backend: "CPU pool",
                reason: format!(
                    "{what} refused: {} operations are running and {} waiting",
                    self.inner.threads, self.inner.queue
                ),
            });
        }
        Ok(admission)
    }
}

impl std::fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPool")
            .field("threads", &self.inner.threads)
            .field("queue", &self.inner.queue)
            .field("admitted", &self.admitted())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// At most `threads` run at once, `queue` more wait, the rest are
    /// refused naming the work; finished operations free their place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_at_most_threads_at_once_and_refuses_past_the_queue() {
        let pool = CpuPool::new(2, 3);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (pool, running, peak, gate) =
                (pool.clone(), running.clone(), peak.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                pool.run("test work", move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    gate.lock().unwrap().recv().unwrap();
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }));
        }
        while pool.admitted() < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = pool.run("a sixth", || Ok(())).await.unwrap_err();
        assert!(
            matches!(&refused, DomainError::Unavailable { backend: "CPU pool", reason }
                if reason == "a sixth refused: 2 operations are running and 3 waiting"),
            "{refused:?}"
        );
        for _ in 0..5 {
            release.send(()).unwrap();
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(pool.admitted(), 0);
        assert_eq!(pool.run("after", || Ok(7)).await.unwrap(), 7);
    }

    /// An operation holding one of `pool`'s threads, once it is admitted,
    /// until `release` is sent.
    pub(crate) async fn occupy(
        pool: &CpuPool,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<DomainResult<()>>,
    ) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run("busy", move || {
                    gate.recv().unwrap();
                    Ok(())
                })
                .await
            })
        };
        while pool.admitted() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (release, busy)
    }

    /// A waiting operation whose caller gives up leaves the queue.
    #[tokio::test]
    async fn a_cancelled_wait_gives_up_its_place() {
        let pool = CpuPool::new(1, 0);
        let (release, busy) = occupy(&pool).await;
        // The queue is 0: the next one is refused, and refusing frees nothing.
        assert!(pool.run("second", || Ok(())).await.is_err());
        assert_eq!(pool.admitted(), 1);
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        let waiting = CpuPool::new(1, 1);
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let hold = {
            let p = waiting.clone();
            tokio::spawn(async move {
                p.run("hold", move || {
                    gate.recv().map_err(|_| DomainError::Internal("x".into()))
                })
                .await
            })
        };
        while waiting.admitted() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let queued =
            tokio::time::timeout(Duration::from_millis(50), waiting.run("queued", || Ok(())));
        assert!(queued.await.is_err(), "it waits for the busy thread");
        assert_eq!(waiting.admitted(), 1, "the abandoned wait left the queue");
        release.send(()).unwrap();
        hold.await.unwrap().unwrap();
    }

    /// Background work waits for a turn past the queue's bound and takes no
    /// place in it: interactive operations are admitted as before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_work_waits_instead_of_being_refused() {
        let pool = CpuPool::new(1, 0);
        let (release, busy) = occupy(&pool).await;
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(background(async move {
                let (a, b, c) = tokio::join!(
                    pool.run("renewal a", || Ok(1)),
                    pool.run("renewal b", || Ok(2)),
                    pool.run("renewal c", || Ok(3)),
                );
                (a.unwrap(), b.unwrap(), c.unwrap())
            }))
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "they wait for the busy thread");
        assert_eq!(pool.admitted(), 1, "background work holds no place");
        assert!(
            pool.run("console", || Ok(())).await.is_err(),
            "the queue's bound holds for interactive work"
        );
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(waiting.await.unwrap(), (1, 2, 3));
        assert_eq!(pool.admitted(), 0);
    }

    #[tokio::test]
    async fn a_panic_is_an_internal_error_and_frees_its_turn() {
        let pool = CpuPool::new(1, 0);
        let e = pool
            .run::<(), _>("doomed", || panic!("boom"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, DomainError::Internal(ref m) if m.starts_with("doomed failed")),
            "{e:?}"
        );
        assert_eq!(pool.run("next", || Ok(1)).await.unwrap(), 1);
    }
}
