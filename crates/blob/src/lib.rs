//! Where certflow keeps bytes: certificates, chains and encrypted private keys.
//!
//! [`ObjectBlobStore`] adapts any `object_store` backend (a local directory
//! today, S3 in production) to the [`BlobStore`](certflow_core::ports::BlobStore)
//! port. [`envelope`] encrypts private keys before they reach any store, so a key
//! never touches disk unencrypted.

pub mod envelope;
mod store;

pub use envelope::{EncryptionContext, KeyProvider, LocalKeyProvider, MasterKey, Sealer};
pub use store::ObjectBlobStore;
