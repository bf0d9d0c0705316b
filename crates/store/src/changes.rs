//! Cross-replica change signals, so what a replica keeps in memory (the
//! bootstrap-token hash today, the agents' ETag index later) is dropped when
//! another replica changes the data behind it. PostgreSQL carries them with
//! LISTEN/NOTIFY; an SQLite deployment is one process, so the feed is local.

use std::time::Duration;

use certflow_core::{DomainError, DomainResult};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

/// The PostgreSQL channel certflow notifies on.
const CHANNEL: &str = "certflow_changes";

/// Publishes and delivers change topics (e.g. `settings`).
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    tx: broadcast::Sender<String>,
    pool: Option<PgPool>,
}

impl ChangeFeed {
    /// A feed within this process only.
    pub fn local() -> Self {
        let (tx, _) = broadcast::channel(64);
        Self { tx, pool: None }
    }

    /// A feed over PostgreSQL LISTEN/NOTIFY. The listener reconnects on its own;
    /// after a reconnect it emits `*` ("anything may have changed"), because
    /// notifications sent while it was away are lost.
    pub(crate) async fn postgres(pool: PgPool) -> DomainResult<Self> {
        let (tx, _) = broadcast::channel(64);
        let mut listener =
            PgListener::connect_with(&pool)
                .await
                .map_err(|e| DomainError::Unavailable {
                    backend: "database",
                    reason: format!("LISTEN: {e}"),
                })?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(|e| DomainError::Unavailable {
                backend: "database",
                reason: format!("LISTEN: {e}"),
            })?;
        let sender = tx.clone();
        tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        let _ = sender.send(n.payload().to_owned());
                    }
                    // The connection dropped; sqlx reconnects on the next call.
                    Ok(None) => {
                        let _ = sender.send("*".to_owned());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "change listener failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self {
            tx,
            pool: Some(pool),
        })
    }

    /// Tells every replica (this one included) that `topic` changed.
    pub async fn publish(&self, topic: &str) -> DomainResult<()> {
        match &self.pool {
            Some(pool) => sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(topic)
                .execute(pool)
                .await
                .map(|_| ())
                .map_err(|e| DomainError::Unavailable {
                    backend: "database",
                    reason: format!("NOTIFY: {e}"),
                }),
            None => {
                let _ = self.tx.send(topic.to_owned());
                Ok(())
            }
        }
    }

    /// Receives topics published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }
}
