//! CA keys that never leave their backend: the [`CaKeyStore`] port over a
//! PKCS#11 token ([`Pkcs11Keys`], on `cryptoki`) and over AWS KMS
//! ([`KmsCaKeys`], on `aws-sdk-kms`). An adapter crate: only the server
//! links it; the use cases see the port.
//!
//! Both sign digests (the TBS is hashed in process by `certflow-pki`), so
//! the TBS never leaves certflow and the backend's answer is checked against
//! the CA's public key before anything is published.
//!
//! [`CaKeyStore`]: certflow_core::ca_keys::CaKeyStore

mod der;
mod kms;
mod pkcs11;

pub use kms::{KmsCaKeys, KmsSettings};
pub use pkcs11::{Pkcs11Keys, Pkcs11Settings, read_pin_file};
