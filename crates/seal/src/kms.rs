//! AWS KMS as the [`KeyProvider`]: data keys come from KMS GenerateDataKey and
//! are unwrapped by KMS Decrypt, so the master keys never leave KMS.
//!
//! The [`EncryptionContext`] goes to KMS as its encryption context: KMS itself
//! refuses to unwrap a data key for another record, and CloudTrail shows which
//! record every Decrypt was for.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region};
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeySpec, KeyState, KeyUsageType};
use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use zeroize::Zeroizing;

use crate::envelope::{DataKey, EncryptionContext, KeyProvider};

/// The backend name in `DomainError::Unavailable`, for logs and `/readyz`.
const BACKEND: &str = "kms";

/// Master keys held by AWS KMS. New data keys are generated under the current
/// key; envelopes sealed under a `previous` key still open (rotation).
///
/// Every configured key is resolved to its ARN at construction: envelopes record
/// the ARN KMS returns, and only envelopes naming a configured key are sent to
/// KMS, so an envelope pointing at some other account's key is refused here.
#[derive(Debug)]
pub struct KmsKeyProvider {
    client: Client,
    /// ARN of the key new data keys are generated under.
    current: String,
    /// ARN -> the id as configured (alias, key id or ARN), for messages.
    keys: BTreeMap<String, String>,
    /// Where KMS is, for messages: endpoint and region.
    location: String,
}

impl KmsKeyProvider {
    /// Connects to KMS with the standard AWS credential chain (environment,
    /// profile, web identity, container, instance metadata) and checks that
    /// every key exists, so a typo stops the server at start-up rather than at
    /// the first issuance.
    ///
    /// `key_id` (key id, key ARN, alias name or alias ARN) encrypts new data;
    /// `previous` keys only decrypt. `region` and `endpoint` override the
    /// environment's (`endpoint` is for VPC endpoints and emulators).
    pub async fn new(
        key_id: String,
        previous: Vec<String>,
        region: Option<String>,
        endpoint: Option<String>,
    ) -> DomainResult<Self> {
        Self::with_loader(
            aws_config::defaults(BehaviorVersion::latest()),
            key_id,
            previous,
            region,
            endpoint,
        )
        .await
    }

    /// Like [`new`](Self::new), from a caller's `aws_config` loader: how tests and
    /// embedders pass explicit credentials without touching the process
    /// environment. `region` and `endpoint` override the loader's when given.
    pub async fn with_loader(
        loader: ConfigLoader,
        key_id: String,
        previous: Vec<String>,
        region: Option<String>,
        endpoint: Option<String>,
    ) -> DomainResult<Self> {
        // Bounded waits: the SDK's defaults would let a black-holed endpoint hold
        // a seal or the start-up check for minutes. The standard retry policy
        // (3 attempts with backoff) still rides out a brief KMS hiccup.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let mut loader = loader.timeout_config(timeouts);
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let config = loader.load().await;
        let Some(region) = config.region().map(ToString::to_string) else {
            return Err(DomainError::invalid(
                "kms.region",
                "no AWS region: configure one or set AWS_REGION",
            ));
        };
        let location = match &endpoint {
            Some(endpoint) => format!("KMS at {endpoint} (region {region})"),
            None => format!("KMS in region {region}"),
        };
        let mut provider = Self {
            client: Client::new(&config),
            current: String::new(),
            keys: BTreeMap::new(),
            location,
        };
        provider.current = provider.resolve(&key_id, true).await?;
        provider.keys.insert(provider.current.clone(), key_id);
        for id in previous {
            let arn = provider.resolve(&id, false).await?;
            provider.keys.entry(arn).or_insert(id);
        }
        Ok(provider)
    }

    /// The ARN of `id` after checking it can wrap data keys. A previous key that
    /// is disabled only warns: it cannot decrypt, but the data sealed under it
    /// may not be needed, and refusing to start would stop everything else.
    async fn resolve(&self, id: &str, current: bool) -> DomainResult<String> {
        let out = self
            .client
            .describe_key()
            .key_id(id)
            .send()
            .await
            .map_err(|e| self.error("DescribeKey", id, false, e))?;
        let meta = out.key_metadata().ok_or_else(|| DomainError::Unavailable {
            backend: BACKEND,
            reason: format!(
                "{}: DescribeKey {id} returned no key metadata",
                self.location
            ),
        })?;
        // Emulators leave usage and spec out; only a declared mismatch is refused.
        let symmetric = meta
            .key_spec()
            .is_none_or(|spec| *spec == KeySpec::SymmetricDefault)
            && meta
                .key_usage()
                .is_none_or(|usage| *usage == KeyUsageType::EncryptDecrypt);
        if !symmetric {
            return Err(DomainError::invalid(
                "kms.key_id",
                format!("KMS key {id} is not a symmetric encryption key"),
            ));
        }
        let enabled = meta.enabled() && meta.key_state().is_none_or(|s| *s == KeyState::Enabled);
        if !enabled {
            let state = meta.key_state().map_or("disabled", |s| s.as_str());
            if current {
                return Err(DomainError::Unavailable {
                    backend: BACKEND,
                    reason: format!(
                        "{}: KMS key {id} is {state}: it cannot encrypt new data",
                        self.location
                    ),
                });
            }
            tracing::warn!(
                key = id,
                state,
                "previous KMS key is not enabled: data sealed under it cannot be opened"
            );
        }
        Ok(meta
            .arn()
            .map_or_else(|| meta.key_id().to_owned(), ToOwned::to_owned))
    }

    /// Turns an SDK error into a domain error. `opening` is true for Decrypt of
    /// stored data, where a refusal means the envelope does not belong here.
    fn error<E>(&self, op: &str, key: &str, opening: bool, err: SdkError<E>) -> DomainError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (code, message) = match &err {
            SdkError::ServiceError(_) => (
                err.code().unwrap_or("unknown error").to_owned(),
                err.message().unwrap_or_default().to_owned(),
            ),
            // Not an answer from KMS: connection refused, DNS, TLS, timeouts,
            // missing credentials. The error context names the root cause.
            _ => {
                return DomainError::Unavailable {
                    backend: BACKEND,
                    reason: format!(
                        "{op} {key}: cannot reach {}: {}",
                        self.location,
                        DisplayErrorContext(&err)
                    ),
                };
            }
        };
        match code.as_str() {
            "InvalidCiphertextException" if opening => DomainError::Integrity(format!(
                "KMS refused to unwrap the data key under {key} ({code}): the envelope belongs to another record or was altered"
            )),
            // AWS answers IncorrectKeyException when the ciphertext was wrapped
            // under another key than the one named; emulators may say AccessDenied.
            "IncorrectKeyException" if opening => DomainError::Integrity(format!(
                "the data key was not wrapped under KMS key {key} ({code}): the envelope was altered"
            )),
            "NotFoundException" if opening => DomainError::Integrity(format!(
                "data is encrypted under KMS key {key}, which no longer exists ({code})"
            )),
            "NotFoundException" => DomainError::Unavailable {
                backend: BACKEND,
                reason: format!(
                    "KMS key {key} does not exist in {} or is not visible to these credentials ({code})",
                    self.location
                ),
            },
            _ => DomainError::Unavailable {
                backend: BACKEND,
                reason: format!("{op} {key} at {}: {code}: {message}", self.location),
            },
        }
    }
}

/// The encryption context as the SDK wants it.
fn kms_context(context: &EncryptionContext) -> HashMap<String, String> {
    context.to_map().into_iter().collect()
}

/// Takes the key out of the SDK's buffer into memory zeroed on drop; the buffer
/// itself is zeroed before it is freed. (Copies inside the HTTP stack are beyond
/// our reach.)
fn data_key(blob: Option<Blob>) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(blob?.into_inner());
    let key: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(Zeroizing::new(key))
}

#[async_trait]
impl KeyProvider for KmsKeyProvider {
    fn current_key_id(&self) -> &str {
        &self.current
    }

    async fn generate_data_key(&self, context: &EncryptionContext) -> DomainResult<DataKey> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.current)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(kms_context(context)))
            .send()
            .await
            .map_err(|e| self.error("GenerateDataKey", &self.current, false, e))?;
        let key_id = out.key_id.unwrap_or_else(|| self.current.clone());
        let wrapped = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| {
                DomainError::Internal("KMS GenerateDataKey returned no wrapped key".into())
            })?;
        let plaintext = data_key(out.plaintext).ok_or_else(|| {
            DomainError::Internal("KMS GenerateDataKey did not return a 256-bit key".into())
        })?;
        Ok(DataKey {
            plaintext,
            wrapped,
            key_id,
        })
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> DomainResult<Zeroizing<[u8; 32]>> {
        // The key id comes from stored data: only configured keys are asked for,
        // so a forged envelope cannot make us decrypt under an arbitrary key.
        if !self.keys.contains_key(key_id) {
            return Err(DomainError::Integrity(format!(
                "data is encrypted under KMS key {key_id}, which is not configured (configured: {})",
                self.keys.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context(Some(kms_context(context)))
            .send()
            .await
            .map_err(|e| self.error("Decrypt", key_id, true, e))?;
        data_key(out.plaintext)
            .ok_or_else(|| DomainError::Integrity("unwrapped data key has the wrong length".into()))
    }
}
