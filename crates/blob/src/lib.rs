//! Where certflow keeps bytes: certificates, chains and encrypted private keys.
//!
//! [`ObjectBlobStore`] adapts any `object_store` backend (a local directory, or
//! S3 in production) to the [`BlobStore`](certflow_core::ports::BlobStore)
//! port. Private keys arrive already sealed (certflow-seal): a key never
//! touches disk unencrypted.

mod store;

pub use store::{ObjectBlobStore, S3Options};
