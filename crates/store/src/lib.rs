//! certflow's metadata store: the [`MetadataStore`](certflow_core::ports::MetadataStore)
//! port over SQLite ([`SqliteStore`]) and PostgreSQL ([`PgStore`]), with the
//! renewal ledger and notification ports and the embedded renewal queue
//! ([`DbRenewalQueue`]) on the same database.
//!
//! Both are one type, [`SqlStore`] over a backend, so each port is
//! implemented once (a module a port: `certificates` for `MetadataStore`,
//! `renewal`, `notify`, `sessions`, `agents`, `deployments`, `discovery`), over
//! the `query` abstraction, whose module comment explains the split. Each
//! backend has its own migrations of the same schema and runs the same
//! behaviour suite in `tests/metadata_store/`. Driver errors are translated
//! into `DomainError` in `error` and nowhere else.

mod acme;
mod agents;
mod audit;
mod blobs;
mod certificates;
mod changes;
mod codec;
mod deployments;
mod destinations;
mod discovery;
mod error;
mod group_commit;
mod migrate;
mod notify;
mod postgres;
mod query;
mod queue;
mod renewal;
mod sessions;
mod sqlite;
mod store;

pub use changes::ChangeFeed;
pub use postgres::{PgOptions, PgStore};
pub use queue::{Clock, DbQueueOptions, DbRenewalQueue};
pub use sqlite::SqliteStore;
pub use store::SqlStore;
