//! Where certflow keeps bytes: certificates, chains and encrypted private keys.
//!
//! [`ObjectBlobStore`] adapts any `object_store` backend (a local directory, or
//! S3 in production) to the [`BlobStore`](certflow_core::ports::BlobStore)
//! port. [`envelope`] encrypts private keys before they reach any store, so a key
//! never touches disk unencrypted; its master keys are local
//! ([`LocalKeyProvider`]) or in AWS KMS ([`KmsKeyProvider`]).

pub mod envelope;
mod kms;
mod store;

pub use envelope::{EncryptionContext, KeyProvider, LocalKeyProvider, MasterKey, Sealer};
pub use kms::KmsKeyProvider;
pub use store::{ObjectBlobStore, S3Options};
