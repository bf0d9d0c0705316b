//! `object_store` adapter: the one place object_store errors become domain errors.

use std::path::Path as FsPath;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use certflow_core::ports::BlobStore;
use certflow_core::{DomainError, error::DomainResult};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// A blob store over any `object_store` backend.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    inner: Arc<dyn ObjectStore>,
    description: String,
}

impl ObjectBlobStore {
    /// A local directory (created if missing). Writes go to a temporary file and
    /// are renamed into place, so a crash never leaves a half-written blob.
    pub fn local(dir: &FsPath) -> DomainResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| DomainError::Unavailable {
            backend: "blob store",
            reason: format!("cannot create {}: {e}", dir.display()),
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| DomainError::Unavailable {
            backend: "blob store",
            reason: format!("cannot open {}: {e}", dir.display()),
        })?;
        Ok(Self {
            inner: Arc::new(fs.with_automatic_cleanup(true)),
            description: format!("local directory {}", dir.display()),
        })
    }

    /// Wraps an already-configured backend (S3, in-memory for tests).
    pub fn from_store(inner: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        Self {
            inner,
            description: description.into(),
        }
    }

    /// What backend this is, for logs and `/readyz`.
    pub fn description(&self) -> &str {
        &self.description
    }
}

fn path(key: &str) -> DomainResult<Path> {
    Path::parse(key).map_err(|e| DomainError::Internal(format!("bad blob key {key:?}: {e}")))
}

fn map_err(op: &str, key: &str, e: object_store::Error) -> DomainError {
    match e {
        object_store::Error::NotFound { .. } => DomainError::NotFound(format!("blob {key}")),
        other => DomainError::Unavailable {
            backend: "blob store",
            reason: format!("{op} {key}: {other}"),
        },
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, key: &str, data: Bytes) -> DomainResult<()> {
        self.inner
            .put(&path(key)?, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| map_err("put", key, e))
    }

    async fn get(&self, key: &str) -> DomainResult<Bytes> {
        let got = self
            .inner
            .get(&path(key)?)
            .await
            .map_err(|e| map_err("get", key, e))?;
        got.bytes().await.map_err(|e| map_err("read", key, e))
    }

    async fn delete(&self, key: &str) -> DomainResult<()> {
        match self.inner.delete(&path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err("delete", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> DomainResult<Vec<String>> {
        let prefix_path = path(prefix)?;
        self.inner
            .list(Some(&prefix_path))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|e| map_err("list", prefix, e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_roundtrip_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectBlobStore::local(dir.path()).unwrap();
        store
            .put("certs/a/1.der", Bytes::from_static(b"one"))
            .await
            .unwrap();
        store
            .put("certs/a/2.der", Bytes::from_static(b"two"))
            .await
            .unwrap();
        assert_eq!(
            store.get("certs/a/1.der").await.unwrap(),
            Bytes::from_static(b"one")
        );
        let mut keys = store.list("certs/a").await.unwrap();
        keys.sort();
        assert_eq!(keys, vec!["certs/a/1.der", "certs/a/2.der"]);
        store.delete("certs/a/1.der").await.unwrap();
        store.delete("certs/a/1.der").await.unwrap();
        assert!(matches!(
            store.get("certs/a/1.der").await,
            Err(DomainError::NotFound(_))
        ));
        assert!(dir.path().join("certs/a/2.der").exists());
    }
}
