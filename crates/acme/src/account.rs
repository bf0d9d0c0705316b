//! Where the ACME account's credentials (its private key and URL) are kept
//! between runs. The JSON handed to an [`AccountStore`] holds the private key:
//! stores must keep it encrypted; [`SealedAccountStore`] does.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use certflow_core::model::Issuer;
use certflow_core::ports::BlobStore;
use certflow_core::{DomainError, DomainResult};
use certflow_seal::{EncryptionContext, Sealer};

/// Persistence of the account credentials, as opaque JSON.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// The saved credentials, if any.
    async fn load(&self) -> DomainResult<Option<String>>;
    /// Saves (or replaces) the credentials.
    async fn save(&self, json: &str) -> DomainResult<()>;
}

/// Credentials sealed with certflow's envelope encryption in the blob store.
#[derive(Clone)]
pub struct SealedAccountStore {
    blobs: Arc<dyn BlobStore>,
    sealer: Sealer,
    key: String,
    context: EncryptionContext,
}

impl std::fmt::Debug for SealedAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedAccountStore")
            .field("key", &self.key)
            .finish()
    }
}

impl SealedAccountStore {
    /// Credentials at blob `blob_key`, sealed for `context`.
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        sealer: Sealer,
        blob_key: impl Into<String>,
        context: EncryptionContext,
    ) -> Self {
        Self {
            blobs,
            sealer,
            key: blob_key.into(),
            context,
        }
    }

    /// The account of an ACME issuer row: its `key_blob`, sealed with the
    /// context certflow's services use for an issuer's key (`ca-key`,
    /// `issuer/<id>/issuing`, version 0), so the orphan sweeper keeps the blob
    /// and `keys rewrap` re-seals it like any issuer key.
    pub fn for_issuer(blobs: Arc<dyn BlobStore>, sealer: Sealer, issuer: &Issuer) -> Self {
        let context = EncryptionContext::new(
            "default",
            "ca-key",
            &format!("issuer/{}/issuing", issuer.id),
            0,
        );
        Self::new(blobs, sealer, issuer.key_blob.clone(), context)
    }

    /// The blob key the credentials are written to.
    pub fn blob_key(&self) -> &str {
        &self.key
    }
}

#[async_trait]
impl AccountStore for SealedAccountStore {
    async fn load(&self) -> DomainResult<Option<String>> {
        let sealed = match self.blobs.get(&self.key).await {
            Ok(b) => b,
            Err(DomainError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let plain = self.sealer.open(&sealed, &self.context).await?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| DomainError::Integrity("ACME account credentials are not UTF-8".into()))?;
        Ok(Some(text.to_owned()))
    }

    async fn save(&self, json: &str) -> DomainResult<()> {
        let sealed = self.sealer.seal(json.as_bytes(), &self.context).await?;
        self.blobs.put(&self.key, Bytes::from(sealed)).await
    }
}

/// Credentials kept in memory only (tests, or a throwaway account per process).
#[derive(Clone, Default)]
pub struct MemoryAccountStore {
    inner: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for MemoryAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryAccountStore(<redacted>)")
    }
}

impl MemoryAccountStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl AccountStore for MemoryAccountStore {
    async fn load(&self) -> DomainResult<Option<String>> {
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    async fn save(&self, json: &str) -> DomainResult<()> {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = Some(json.to_owned());
        Ok(())
    }
}
