//! certflow's metadata store: the [`MetadataStore`](certflow_core::ports::MetadataStore)
//! port over SQLite ([`SqliteStore`]) and PostgreSQL ([`PgStore`]), with the
//! renewal ledger and notification ports and the embedded renewal queue
//! ([`DbRenewalQueue`]) on the same database.
//!
//! Both run one implementation of the port (`repo`, over the `query`
//! abstraction, whose module comment explains the split), with their own
//! migrations of the same schema and the same behaviour suite in
//! `tests/metadata_store.rs`. Driver errors are translated into
//! `DomainError` in `error` and nowhere else.

mod agents;
mod audit;
mod changes;
mod codec;
mod deployments;
mod discovery;
mod error;
mod migrate;
mod notify;
mod postgres;
mod query;
mod queue;
mod renewal;
mod repo;
mod sessions;
mod sqlite;
mod store;

pub use changes::ChangeFeed;
pub use postgres::{PgOptions, PgStore};
pub use queue::{Clock, DbQueueOptions, DbRenewalQueue};
pub use sqlite::SqliteStore;
pub use store::SqlStore;
