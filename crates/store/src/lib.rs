//! certflow's metadata store: the [`MetadataStore`](certflow_core::ports::MetadataStore)
//! port over SQLite (PostgreSQL follows with its own migrations and the same
//! behaviour suite in `tests/metadata_store.rs`).
//!
//! Driver errors are translated into `DomainError` here and nowhere else.

mod codec;
mod error;
mod sqlite;

pub use sqlite::SqliteStore;
