//! The S3 backend against moto_server, over object_store's real S3 client (and
//! the AWS SDK for the KMS key of SSE-KMS). Each test starts its own moto
//! (under a second), so tests share no state and need no reset. The KMS key
//! provider's tests moved with it to certflow-seal (tests/kms.rs).
//!
//! moto_server must be installed (`scripts/peers.sh`): without it these tests
//! fail, they never skip, so a CI machine missing it cannot pass silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_kms::config::{Credentials, Region};
use bytes::Bytes;
use certflow_blob::{ObjectBlobStore, S3Options};
use certflow_core::DomainError;
use certflow_core::ports::BlobStore;
use certflow_testkit::{Moto, free_port, http};
use object_store::aws::AmazonS3Builder;
use object_store::signer::Signer as _;
use time::OffsetDateTime;

const REGION: &str = "eu-west-1";
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing";

/// A loopback endpoint nothing listens on: connections are refused at once.
fn closed_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// What these tests do with a moto: buckets, S3 options, KMS keys.
trait MotoExt {
    async fn create_bucket(&self, bucket: &str);
    fn s3_options(&self, bucket: &str, prefix: Option<&str>) -> S3Options;
    fn kms_admin(&self) -> aws_sdk_kms::Client;
    async fn create_key(&self, alias: Option<&str>) -> String;
}

impl MotoExt for Moto {
    /// Buckets are made over plain HTTP: moto does not check signatures, and a
    /// whole S3 SDK only for this would double the build.
    async fn create_bucket(&self, bucket: &str) {
        let body = format!(
            "<CreateBucketConfiguration><LocationConstraint>{REGION}</LocationConstraint></CreateBucketConfiguration>"
        );
        let resp = http()
            .put(format!("{}/{bucket}", self.endpoint))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "create bucket: {resp:?}");
    }

    fn s3_options(&self, bucket: &str, prefix: Option<&str>) -> S3Options {
        S3Options {
            bucket: bucket.into(),
            prefix: prefix.map(Into::into),
            region: REGION.into(),
            endpoint: Some(self.endpoint.clone()),
            path_style: true,
            allow_http: true,
            sse_kms_key_id: None,
        }
    }

    /// The key-management client used to set KMS up, outside the code under test.
    fn kms_admin(&self) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(credentials())
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// A symmetric key, optionally under an alias; returns its ARN.
    async fn create_key(&self, alias: Option<&str>) -> String {
        let kms = self.kms_admin();
        let key = kms.create_key().send().await.unwrap();
        let meta = key.key_metadata().unwrap();
        if let Some(alias) = alias {
            kms.create_alias()
                .alias_name(alias)
                .target_key_id(meta.key_id())
                .send()
                .await
                .unwrap();
        }
        meta.arn().unwrap().to_owned()
    }
}

fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "certflow-tests")
}

fn s3_store(options: &S3Options) -> ObjectBlobStore {
    let base = AmazonS3Builder::new()
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY);
    ObjectBlobStore::s3_with_builder(base, options).unwrap()
}

async fn sorted(store: &ObjectBlobStore, prefix: &str) -> Vec<String> {
    let mut keys = store.list(prefix).await.unwrap();
    keys.sort();
    keys
}

/// What every blob store must do; run against the local directory and S3.
async fn blob_contract(store: &ObjectBlobStore) {
    store.check().await.unwrap();
    // S3 keeps whole seconds, truncated: allow for that and a little skew.
    let before = OffsetDateTime::now_utc() - Duration::from_secs(2);
    assert!(matches!(
        store.get("contract/missing.der").await,
        Err(DomainError::NotFound(_))
    ));
    for (key, data) in [
        ("contract/a/1.der", "one"),
        ("contract/a/2.der", "two"),
        ("contract/b/1.der", "bee"),
    ] {
        store.put(key, Bytes::from(data)).await.unwrap();
    }
    assert_eq!(store.get("contract/a/1.der").await.unwrap(), "one");
    store
        .put("contract/a/1.der", Bytes::from_static(b"uno"))
        .await
        .unwrap();
    assert_eq!(store.get("contract/a/1.der").await.unwrap(), "uno");

    assert_eq!(
        sorted(store, "contract/a").await,
        ["contract/a/1.der", "contract/a/2.der"]
    );
    assert_eq!(sorted(store, "contract").await.len(), 3);
    assert!(store.list("elsewhere").await.unwrap().is_empty());

    let after = OffsetDateTime::now_utc() + Duration::from_secs(2);
    let mut aged = store.list_with_age("contract/a").await.unwrap();
    aged.sort();
    assert_eq!(
        aged.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["contract/a/1.der", "contract/a/2.der"]
    );
    for (key, at) in &aged {
        assert!(before <= *at && *at <= after, "{key} modified at {at}");
    }

    store.delete("contract/a/1.der").await.unwrap();
    store.delete("contract/a/1.der").await.unwrap();
    assert!(matches!(
        store.get("contract/a/1.der").await,
        Err(DomainError::NotFound(_))
    ));
    assert_eq!(sorted(store, "contract/a").await, ["contract/a/2.der"]);
}

#[tokio::test]
async fn blob_contract_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    blob_contract(&ObjectBlobStore::local(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn blob_contract_s3() {
    let moto = Moto::start().await;
    moto.create_bucket("certflow-blobs").await;
    let store = s3_store(&moto.s3_options("certflow-blobs", None));
    assert!(store.description().contains("certflow-blobs"));
    blob_contract(&store).await;
}

#[tokio::test]
async fn s3_prefix_isolates_deployments() {
    let moto = Moto::start().await;
    moto.create_bucket("shared-bucket").await;
    let a = s3_store(&moto.s3_options("shared-bucket", Some("tenant-a")));
    let b = s3_store(&moto.s3_options("shared-bucket", Some("/tenant-b/nested/")));
    let whole = s3_store(&moto.s3_options("shared-bucket", None));

    a.put("certs/x.der", Bytes::from_static(b"a"))
        .await
        .unwrap();
    b.put("certs/x.der", Bytes::from_static(b"b"))
        .await
        .unwrap();
    assert_eq!(a.get("certs/x.der").await.unwrap(), "a");
    assert_eq!(b.get("certs/x.der").await.unwrap(), "b");
    // Keys come back relative to the prefix, so callers never see it.
    assert_eq!(sorted(&a, "certs").await, ["certs/x.der"]);
    assert_eq!(a.list_with_age("certs").await.unwrap()[0].0, "certs/x.der");
    assert_eq!(
        sorted(&whole, "").await,
        ["tenant-a/certs/x.der", "tenant-b/nested/certs/x.der"]
    );
    b.delete("certs/x.der").await.unwrap();
    assert_eq!(a.get("certs/x.der").await.unwrap(), "a");
    assert!(b.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn s3_sse_kms_put_stores_encrypted() {
    let moto = Moto::start().await;
    moto.create_bucket("sealed-bucket").await;
    let key_arn = moto.create_key(None).await;
    let mut options = moto.s3_options("sealed-bucket", None);
    options.sse_kms_key_id = Some(key_arn.clone());
    let store = s3_store(&options);
    store
        .put("keys/k.json", Bytes::from_static(b"envelope"))
        .await
        .unwrap();
    assert_eq!(store.get("keys/k.json").await.unwrap(), "envelope");
    // object_store hides response headers: ask S3 directly what it recorded,
    // through a presigned URL (objects are private).
    let signer = AmazonS3Builder::new()
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_region(REGION)
        .with_endpoint(&moto.endpoint)
        .with_allow_http(true)
        .with_bucket_name("sealed-bucket")
        .build()
        .unwrap();
    let url = signer
        .signed_url(
            reqwest::Method::HEAD,
            &object_store::path::Path::from("keys/k.json"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let head = http().head(url).send().await.unwrap();
    assert!(head.status().is_success(), "{head:?}");
    let header = |name: &str| {
        head.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("x-amz-server-side-encryption"), "aws:kms");
    assert_eq!(
        header("x-amz-server-side-encryption-aws-kms-key-id"),
        key_arn
    );
}

#[tokio::test]
async fn s3_check_unreachable_endpoint_is_unavailable() {
    let endpoint = closed_endpoint();
    let options = S3Options {
        bucket: "certflow-prod".into(),
        prefix: None,
        region: REGION.into(),
        endpoint: Some(endpoint.clone()),
        path_style: true,
        allow_http: true,
        sse_kms_key_id: None,
    };
    let started = Instant::now();
    let err = s3_store(&options).check().await.unwrap_err();
    let DomainError::Unavailable { backend, reason } = &err else {
        panic!("expected Unavailable, got {err}");
    };
    assert_eq!(*backend, "blob store");
    assert!(
        reason.contains("certflow-prod")
            && reason.contains(&endpoint)
            && reason.contains("Connection refused"),
        "{reason}"
    );
    // Bounded retries: a dead S3 must not hold start-up for minutes.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn s3_check_missing_bucket_names_it() {
    let moto = Moto::start().await;
    let err = s3_store(&moto.s3_options("no-such-bucket", None))
        .check()
        .await
        .unwrap_err();
    let DomainError::Unavailable { reason, .. } = &err else {
        panic!("expected Unavailable, got {err}");
    };
    assert!(
        reason.contains("S3 bucket no-such-bucket") && reason.contains("the bucket does not exist"),
        "{reason}"
    );
}
