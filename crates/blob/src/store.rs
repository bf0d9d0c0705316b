//! `object_store` adapter (local directory or S3): the one place object_store
//! errors become domain errors.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use certflow_core::ports::BlobStore;
use certflow_core::{DomainError, error::DomainResult};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use time::OffsetDateTime;

/// Where the S3 blob store is and how to reach it. Credentials are not here:
/// they come from the standard AWS chain (environment, web identity, container,
/// instance metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// The bucket; it must exist (certflow never creates buckets).
    pub bucket: String,
    /// Key prefix inside the bucket, so several deployments can share one.
    pub prefix: Option<String>,
    /// AWS region of the bucket (also signs requests to S3-compatible stores).
    pub region: String,
    /// Endpoint URL for S3-compatible stores and VPC endpoints; the regional AWS
    /// endpoint when absent. With `path_style = false` it must name the bucket.
    pub endpoint: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), which most S3-compatible stores
    /// need; virtual-hosted style (`bucket.endpoint/key`) otherwise.
    pub path_style: bool,
    /// Permit plain `http://` endpoints (local emulators only).
    pub allow_http: bool,
    /// Encrypt objects at rest with this KMS key (SSE-KMS); the bucket default
    /// encryption applies when absent.
    pub sse_kms_key_id: Option<String>,
}

/// A blob store over any `object_store` backend.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    inner: Arc<dyn ObjectStore>,
    /// The local backend (also `inner`), for `put_all`'s batch of durable
    /// writes; object_store makes each blob durable on its own.
    local: Option<Arc<LocalFileSystem>>,
    description: String,
}

impl ObjectBlobStore {
    /// A local directory (created if missing). Writes go to a temporary file and
    /// are renamed into place, so a crash never leaves a half-written blob; file and
    /// directory are fsynced, so a committed row never points at a blob the crash lost.
    pub fn local(dir: &FsPath) -> DomainResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| DomainError::Unavailable {
            backend: "blob store",
            reason: format!("cannot create {}: {e}", dir.display()),
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| DomainError::Unavailable {
            backend: "blob store",
            reason: format!("cannot open {}: {e}", dir.display()),
        })?;
        let fs = Arc::new(fs.with_automatic_cleanup(true).with_fsync(true));
        Ok(Self {
            inner: fs.clone(),
            local: Some(fs),
            description: format!("local directory {}", dir.display()),
        })
    }

    /// Wraps an already-configured backend (in-memory for tests, say).
    pub fn from_store(inner: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        Self {
            inner,
            local: None,
            description: description.into(),
        }
    }

    /// An S3 bucket (or S3-compatible store), with credentials from the standard
    /// AWS chain. Nothing is sent until first use: call [`check`](Self::check)
    /// at start-up to find out whether the bucket is reachable.
    pub fn s3(options: &S3Options) -> DomainResult<Self> {
        Self::s3_with_builder(AmazonS3Builder::from_env(), options)
    }

    /// Like [`s3`](Self::s3), over a caller's builder: how tests and embedders
    /// pass explicit credentials without touching the process environment.
    /// `options` override what the builder already holds.
    pub fn s3_with_builder(base: AmazonS3Builder, options: &S3Options) -> DomainResult<Self> {
        if options.bucket.trim().is_empty() {
            return Err(DomainError::invalid("s3.bucket", "must not be empty"));
        }
        if options.region.trim().is_empty() {
            return Err(DomainError::invalid("s3.region", "must not be empty"));
        }
        if let Some(endpoint) = &options.endpoint
            && endpoint.starts_with("http://")
            && !options.allow_http
        {
            // Said now rather than as a puzzling transport error at first use.
            return Err(DomainError::invalid(
                "s3.endpoint",
                format!("{endpoint} is plain HTTP: set allow_http (emulators only) or use https"),
            ));
        }
        let mut builder = base
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_virtual_hosted_style_request(!options.path_style)
            .with_allow_http(options.allow_http)
            // object_store's default keeps retrying for three minutes, which
            // would stall a request (and the start-up check) that long when S3
            // is down; a few quick retries still ride out throttling.
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(key) = &options.sse_kms_key_id {
            builder = builder.with_sse_kms_encryption(key);
        }
        let s3 = builder
            .build()
            .map_err(|e| DomainError::invalid("s3", e.to_string()))?;
        let prefix = options
            .prefix
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty());
        let place = match &options.endpoint {
            Some(endpoint) => format!("at {endpoint}"),
            None => format!("in {}", options.region),
        };
        let (inner, description): (Arc<dyn ObjectStore>, String) = match prefix {
            Some(prefix) => (
                Arc::new(PrefixStore::new(s3, path(prefix)?)),
                format!("S3 bucket {}/{prefix} {place}", options.bucket),
            ),
            None => (
                Arc::new(s3),
                format!("S3 bucket {} {place}", options.bucket),
            ),
        };
        Ok(Self {
            inner,
            local: None,
            description,
        })
    }

    /// Checks the store answers: lists one page under a prefix no blob uses. For
    /// S3 this proves the endpoint, the credentials and the bucket in one
    /// request (a HEAD could not tell a missing bucket from a missing key). The
    /// error names the bucket and endpoint, for the server's refusal to start.
    pub async fn check(&self) -> DomainResult<()> {
        let probe = Path::from("certflow-startup-check");
        let Err(e) = self.inner.list(Some(&probe)).try_next().await else {
            return Ok(());
        };
        let detail = describe(&e);
        // object_store reports S3's 404 as a generic list error; the S3 error
        // code in the body is what tells a missing bucket apart.
        let missing =
            matches!(e, object_store::Error::NotFound { .. }) || detail.contains("NoSuchBucket");
        let reason = if missing {
            format!("{}: the bucket does not exist ({detail})", self.description)
        } else {
            format!("{}: {detail}", self.description)
        };
        Err(DomainError::Unavailable {
            backend: "blob store",
            reason,
        })
    }

    /// Keys under a prefix with their last-modified time, for sweepers that
    /// delete blobs orphaned long enough ago (so never one a running request
    /// has just written).
    pub async fn list_with_age(&self, prefix: &str) -> DomainResult<Vec<(String, OffsetDateTime)>> {
        let prefix_path = path(prefix)?;
        let metas: Vec<_> = self
            .inner
            .list(Some(&prefix_path))
            .try_collect()
            .await
            .map_err(|e| map_err("list", prefix, e))?;
        metas
            .into_iter()
            .map(|meta| {
                let modified = meta.last_modified;
                let nanos = i128::from(modified.timestamp()) * 1_000_000_000
                    + i128::from(modified.timestamp_subsec_nanos());
                let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|e| {
                    DomainError::Internal(format!(
                        "blob {} has an impossible modification time: {e}",
                        meta.location
                    ))
                })?;
                Ok((meta.location.to_string(), at))
            })
            .collect()
    }

    /// What backend this is, for logs and `/readyz`.
    pub fn description(&self) -> &str {
        &self.description
    }
}

fn path(key: &str) -> DomainResult<Path> {
    Path::parse(key).map_err(|e| DomainError::Internal(format!("bad blob key {key:?}: {e}")))
}

/// An error and its causes on one line: object_store's own message stops at
/// "error sending request", the cause says "connection refused".
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Writes `files` (key, file, bytes) so that all are durable when it returns
/// Ok, with one fsync per file and one per directory whose entries changed,
/// however many of the files share it: each goes to a staging file beside its
/// destination (`<name>#<n>`, which object_store's listing skips), is synced,
/// then renamed into place, so a crash never leaves a half-written blob under
/// its name. On an error the staging files are removed; the caller removes
/// the blobs already renamed.
fn write_durably(files: &[(String, PathBuf, Bytes)]) -> DomainResult<()> {
    let mut staged = Vec::with_capacity(files.len());
    let result = stage_sync_rename(files, &mut staged);
    if result.is_err() {
        for tmp in &staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
    result
}

/// The steps of [`write_durably`]; `staged` collects the staging files made.
fn stage_sync_rename(
    files: &[(String, PathBuf, Bytes)],
    staged: &mut Vec<PathBuf>,
) -> DomainResult<()> {
    let mut dirty = BTreeSet::new();
    for (key, dest, data) in files {
        let fail = |op: &str, e: std::io::Error| unavailable(op, key, &e);
        let parent = dest
            .parent()
            .ok_or_else(|| DomainError::Internal(format!("bad blob key {key:?}")))?;
        create_dirs(parent, &mut dirty).map_err(|e| fail("create directory for", e))?;
        let (mut file, tmp) = stage(dest).map_err(|e| fail("stage", e))?;
        staged.push(tmp);
        file.write_all(data).map_err(|e| fail("write", e))?;
        file.sync_data().map_err(|e| fail("sync", e))?;
    }
    for ((key, dest, _), tmp) in files.iter().zip(staged.iter()) {
        std::fs::rename(tmp, dest).map_err(|e| unavailable("rename", key, &e))?;
        if let Some(parent) = dest.parent() {
            dirty.insert(parent.to_path_buf());
        }
    }
    for dir in &dirty {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| unavailable("sync directory", &dir.display().to_string(), &e))?;
    }
    Ok(())
}

/// Creates `dir` and its missing ancestors, adding each new one and the
/// existing ancestor that gained an entry to `dirty` (as object_store does).
fn create_dirs(dir: &FsPath, dirty: &mut BTreeSet<PathBuf>) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut first_existing = dir;
    while !first_existing.is_dir() {
        match first_existing.parent() {
            Some(p) => first_existing = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    let mut at = Some(dir);
    while let Some(d) = at {
        dirty.insert(d.to_path_buf());
        if d == first_existing {
            break;
        }
        at = d.parent();
    }
    Ok(())
}

/// A new staging file beside `dest`.
fn stage(dest: &FsPath) -> std::io::Result<(File, PathBuf)> {
    let mut n = 1_u32;
    loop {
        let mut tmp = dest.as_os_str().to_owned();
        tmp.push(format!("#{n}"));
        let tmp = PathBuf::from(tmp);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e),
        }
    }
}

fn unavailable(op: &str, key: &str, e: &std::io::Error) -> DomainError {
    DomainError::Unavailable {
        backend: "blob store",
        reason: format!("{op} {key}: {e}"),
    }
}

fn map_err(op: &str, key: &str, e: object_store::Error) -> DomainError {
    match e {
        object_store::Error::NotFound { .. } => DomainError::NotFound(format!("blob {key}")),
        other => DomainError::Unavailable {
            backend: "blob store",
            reason: format!("{op} {key}: {}", describe(&other)),
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

    async fn put_all(&self, blobs: Vec<(String, Bytes)>) -> DomainResult<()> {
        let Some(fs) = &self.local else {
            // Remote stores: one request per blob, all in flight at once.
            futures::future::try_join_all(
                blobs
                    .into_iter()
                    .map(|(key, data)| async move { self.put(&key, data).await }),
            )
            .await?;
            return Ok(());
        };
        let mut files = Vec::with_capacity(blobs.len());
        for (key, data) in blobs {
            let file = fs
                .path_to_filesystem(&path(&key)?)
                .map_err(|e| map_err("put", &key, e))?;
            files.push((key, file, data));
        }
        tokio::task::spawn_blocking(move || write_durably(&files))
            .await
            .map_err(|e| DomainError::Internal(format!("blob writer task failed: {e}")))?
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

    async fn list_with_age(&self, prefix: &str) -> DomainResult<Vec<(String, OffsetDateTime)>> {
        // Inherent methods win name resolution: this calls the S3/local implementation.
        ObjectBlobStore::list_with_age(self, prefix).await
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

    fn options() -> S3Options {
        S3Options {
            bucket: "certs".into(),
            prefix: Some("/prod/eu/".into()),
            region: "eu-west-1".into(),
            endpoint: None,
            path_style: false,
            allow_http: false,
            sse_kms_key_id: Some("alias/certflow".into()),
        }
    }

    #[test]
    fn s3_options_are_validated_without_network() {
        let base = || {
            AmazonS3Builder::new()
                .with_access_key_id("k")
                .with_secret_access_key("s")
        };
        let store = ObjectBlobStore::s3_with_builder(base(), &options()).unwrap();
        assert_eq!(store.description(), "S3 bucket certs/prod/eu in eu-west-1");

        let mut empty = options();
        empty.bucket = " ".into();
        assert!(matches!(
            ObjectBlobStore::s3_with_builder(base(), &empty),
            Err(DomainError::Invalid(_))
        ));
        let mut plain = options();
        plain.endpoint = Some("http://minio.internal:9000".into());
        plain.path_style = true;
        assert!(matches!(
            ObjectBlobStore::s3_with_builder(base(), &plain),
            Err(DomainError::Invalid(_))
        ));
        plain.allow_http = true;
        let store = ObjectBlobStore::s3_with_builder(base(), &plain).unwrap();
        assert!(store.description().contains("http://minio.internal:9000"));
    }

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

    #[tokio::test]
    async fn local_put_all_writes_every_blob_and_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectBlobStore::local(dir.path()).unwrap();
        let batch = |tag: &'static [u8]| {
            vec![
                (
                    "certificates/c1/v1-0a/key.enc".to_owned(),
                    Bytes::from_static(tag),
                ),
                (
                    "certificates/c1/v1-0a/cert.der".to_owned(),
                    Bytes::from_static(b"cert"),
                ),
                (
                    "certificates/c1/v1-0a/chain.pem".to_owned(),
                    Bytes::from_static(b"chain"),
                ),
            ]
        };
        store.put_all(batch(b"key")).await.unwrap();
        // Overwriting a batch (a retried write) replaces the blobs.
        store.put_all(batch(b"key2")).await.unwrap();
        assert_eq!(
            store.get("certificates/c1/v1-0a/key.enc").await.unwrap(),
            Bytes::from_static(b"key2")
        );
        assert_eq!(
            store.get("certificates/c1/v1-0a/chain.pem").await.unwrap(),
            Bytes::from_static(b"chain")
        );
        let mut keys = store.list("certificates").await.unwrap();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "certificates/c1/v1-0a/cert.der",
                "certificates/c1/v1-0a/chain.pem",
                "certificates/c1/v1-0a/key.enc"
            ]
        );
        let on_disk = std::fs::read_dir(dir.path().join("certificates/c1/v1-0a"))
            .unwrap()
            .count();
        assert_eq!(on_disk, 3, "staging files left behind");
    }

    #[tokio::test]
    async fn local_put_all_failure_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectBlobStore::local(dir.path()).unwrap();
        // A file where the batch needs a directory: the second blob cannot be written.
        store
            .put("certificates/c2", Bytes::from_static(b"in the way"))
            .await
            .unwrap();
        let err = store
            .put_all(vec![
                ("other/ok.der".to_owned(), Bytes::from_static(b"ok")),
                (
                    "certificates/c2/v1-0a/cert.der".to_owned(),
                    Bytes::from_static(b"x"),
                ),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, DomainError::Unavailable { .. }), "{err:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("other"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "staging files left behind: {left:?}");
    }
}
