//! Envelope encryption of private keys, so a key never reaches a store
//! unencrypted: [`Sealer`] seals and opens values under data keys that a
//! [`KeyProvider`] wraps with master keys, local ([`LocalKeyProvider`]) or, with
//! the `aws-kms` feature, in AWS KMS (`KmsKeyProvider`).
//!
//! Its own crate so that the use cases can seal keys without linking the AWS
//! SDK or a blob store: only the binary that wires KMS enables the feature.

pub mod envelope;
#[cfg(feature = "aws-kms")]
mod kms;

pub use envelope::{EncryptionContext, KeyProvider, LocalKeyProvider, MasterKey, Sealer};
#[cfg(feature = "aws-kms")]
pub use kms::KmsKeyProvider;
