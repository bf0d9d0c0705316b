//! certflow's metadata store: the [`MetadataStore`](certflow_core::ports::MetadataStore)
//! port over SQLite ([`SqliteStore`]) and PostgreSQL ([`PgStore`]).
//!
//! Both run one implementation of the port (`repo`, over the `query`
//! abstraction, whose module comment explains the split), with their own
//! migrations of the same schema and the same behaviour suite in
//! `tests/metadata_store.rs`. Driver errors are translated into
//! `DomainError` in `error` and nowhere else.

mod changes;
mod codec;
mod error;
mod migrate;
mod postgres;
mod query;
mod repo;
mod sqlite;

pub use changes::ChangeFeed;
pub use postgres::{PgOptions, PgStore};
pub use sqlite::SqliteStore;
