//! CA keys in AWS KMS: asymmetric `SIGN_VERIFY` keys (`ECC_NIST_P256`,
//! `ECC_NIST_P384`, `RSA_2048/3072/4096`), created by certflow on first start
//! or named in the configuration; `Sign` with `MessageType = DIGEST`, the
//! public key from `GetPublicKey`. Client set-up as in `certflow-seal`'s KMS
//! key provider: the standard credential chain, bounded timeouts.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region};
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag};
use certflow_core::ca_keys::{CaKeyBackend, CaKeyRef, CaKeyRole, CaKeyStore};
use certflow_core::{DomainError, DomainResult, KeyType};
use certflow_pki::DigestAlgorithm;

const BACKEND: CaKeyBackend = CaKeyBackend::AwsKms;

/// Where the keys are and who may sign with them (`[ca.aws_kms]`).
#[derive(Debug, Clone, Default)]
pub struct KmsSettings {
    /// The region; the environment's when `None`.
    pub region: Option<String>,
    /// Another endpoint (VPC endpoint, emulator).
    pub endpoint: Option<String>,
    /// Keys that exist already, by role (key id, ARN or alias); the others
    /// are created on first start.
    pub key_ids: HashMap<CaKeyRole, String>,
    /// IAM roles allowed `kms:Sign` on the keys certflow creates (the API
    /// and worker roles); when given, the key policy lets the account
    /// administer the keys but only these roles sign. Empty: KMS's default
    /// key policy (the account's IAM policies decide).
    pub signer_role_arns: Vec<String>,
    /// Send what is signed itself (`MessageType = RAW`, KMS hashes it) when
    /// it fits KMS's 4096-byte limit, instead of its digest. For emulators
    /// that ignore `DIGEST` and hash the digest again (moto up to 5.2.6 at
    /// least); AWS KMS takes `DIGEST`, the default.
    pub raw_messages: bool,
}

/// The largest message KMS signs with `MessageType = RAW`.
const MAX_RAW_MESSAGE: usize = 4096;

/// CA keys held by AWS KMS.
#[derive(Debug)]
pub struct KmsCaKeys {
    client: Client,
    settings: KmsSettings,
    /// Where KMS is, for messages.
    location: String,
}

fn key_spec(kt: KeyType) -> Option<KeySpec> {
    Some(match kt {
        KeyType::EcdsaP256 => KeySpec::EccNistP256,
        KeyType::EcdsaP384 => KeySpec::EccNistP384,
        KeyType::Rsa2048 => KeySpec::Rsa2048,
        KeyType::Rsa3072 => KeySpec::Rsa3072,
        KeyType::Rsa4096 => KeySpec::Rsa4096,
        KeyType::Ed25519 => return None,
    })
}

fn signing_algorithm(kt: KeyType) -> SigningAlgorithmSpec {
    match kt {
        KeyType::EcdsaP384 => SigningAlgorithmSpec::EcdsaSha384,
        KeyType::EcdsaP256 => SigningAlgorithmSpec::EcdsaSha256,
        _ => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
    }
}

/// The key policy of a CA key: the account administers it (every KMS
/// action of AWS's key-administrator statement, none that uses the key), and
/// only `signers` may `kms:Sign`. `None` when there are no signers or their
/// ARNs do not name an account.
pub(crate) fn key_policy(signers: &[String]) -> Option<String> {
    let first = signers.first()?;
    let parts: Vec<&str> = first.split(':').collect();
    let (partition, account) = match parts.as_slice() {
        ["arn", partition, "iam", "", account, ..] if !account.is_empty() => (*partition, *account),
        _ => return None,
    };
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Id": "certflow-ca-key",
        "Statement": [
            {
                "Sid": "AccountAdministersTheKey",
                "Effect": "Allow",
                "Principal": { "AWS": format!("arn:{partition}:iam::{account}:root") },
                "Action": [
                    "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
                    "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
                    "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
                    "kms:CancelKeyDeletion"
                ],
                "Resource": "*"
            },
            {
                "Sid": "OnlyCertflowSigns",
                "Effect": "Allow",
                "Principal": { "AWS": signers },
                "Action": ["kms:Sign", "kms:GetPublicKey", "kms:DescribeKey"],
                "Resource": "*"
            }
        ]
    });
    Some(policy.to_string())
}

impl KmsCaKeys {
    /// Connects with the standard AWS credential chain and checks every
    /// configured key (a `SIGN_VERIFY` key, enabled).
    pub async fn new(settings: KmsSettings) -> DomainResult<Self> {
        Self::with_loader(aws_config::defaults(BehaviorVersion::latest()), settings).await
    }

    /// Like [`new`](Self::new) from a caller's loader (tests pass explicit
    /// credentials); `settings.region` and `endpoint` override the loader's.
    pub async fn with_loader(loader: ConfigLoader, settings: KmsSettings) -> DomainResult<Self> {
        if !settings.signer_role_arns.is_empty() && key_policy(&settings.signer_role_arns).is_none()
        {
            return Err(DomainError::invalid(
                "ca.aws_kms.signer_role_arns",
                "must be IAM role ARNs (arn:aws:iam::<account>:role/<name>)",
            ));
        }
        // Bounded waits, as for the master key: a black-holed endpoint must
        // fail an issuance in seconds (503), not hold it for minutes.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let mut loader = loader.timeout_config(timeouts);
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let config = loader.load().await;
        let Some(region) = config.region().map(ToString::to_string) else {
            return Err(DomainError::invalid(
                "ca.aws_kms.region",
                "no AWS region: configure one or set AWS_REGION",
            ));
        };
        let location = match &settings.endpoint {
            Some(endpoint) => format!("KMS at {endpoint} (region {region})"),
            None => format!("KMS in region {region}"),
        };
        let keys = Self {
            client: Client::new(&config),
            settings,
            location,
        };
        for id in keys.settings.key_ids.values() {
            keys.describe(id).await?;
        }
        Ok(keys)
    }

    /// The ARN and spec of `id`, once it is known to be an enabled signing key.
    async fn describe(&self, id: &str) -> DomainResult<(String, Option<KeySpec>)> {
        let out = self
            .client
            .describe_key()
            .key_id(id)
            .send()
            .await
            .map_err(|e| self.error("DescribeKey", id, e))?;
        let meta = out.key_metadata().ok_or_else(|| {
            self.unavailable(format!("DescribeKey {id} returned no key metadata"))
        })?;
        if meta
            .key_usage()
            .is_some_and(|u| *u != KeyUsageType::SignVerify)
        {
            return Err(DomainError::invalid(
                "ca.aws_kms",
                format!("KMS key {id} is not a SIGN_VERIFY key"),
            ));
        }
        let enabled = meta.enabled() && meta.key_state().is_none_or(|s| *s == KeyState::Enabled);
        if !enabled {
            let state = meta.key_state().map_or("disabled", |s| s.as_str());
            return Err(self.unavailable(format!("KMS key {id} is {state}: it cannot sign")));
        }
        let arn = meta
            .arn()
            .map_or_else(|| meta.key_id().to_owned(), ToOwned::to_owned);
        Ok((arn, meta.key_spec().cloned()))
    }

    fn unavailable(&self, reason: String) -> DomainError {
        DomainError::Unavailable {
            backend: BACKEND.display_name(),
            reason: format!("{}: {reason}", self.location),
        }
    }

    fn error<E>(&self, op: &str, key: &str, err: SdkError<E>) -> DomainError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(_) => self.unavailable(format!(
                "{op} {key}: {}: {}",
                err.code().unwrap_or("unknown error"),
                err.message().unwrap_or_default()
            )),
            // Not an answer from KMS: connection refused, DNS, TLS, timeouts,
            // missing credentials.
            _ => self.unavailable(format!(
                "{op} {key}: cannot reach KMS: {}",
                DisplayErrorContext(&err)
            )),
        }
    }

    fn key_id(key: &CaKeyRef) -> DomainResult<&str> {
        match key {
            CaKeyRef::AwsKms { key_id } => Ok(key_id),
            other => Err(DomainError::Internal(format!(
                "a {} key was sent to the AWS KMS backend",
                other.backend().as_str()
            ))),
        }
    }
}

#[async_trait]
impl CaKeyStore for KmsCaKeys {
    fn backend(&self) -> CaKeyBackend {
        BACKEND
    }

    async fn generate(
        &self,
        role: CaKeyRole,
        label: &str,
        key_type: KeyType,
    ) -> DomainResult<(CaKeyRef, Vec<u8>)> {
        let spec = key_spec(key_type).ok_or_else(|| {
            DomainError::invalid(
                "ca.key_type",
                "the aws-kms key backend holds ECDSA P-256/P-384 and RSA keys",
            )
        })?;
        let arn = if let Some(id) = self.settings.key_ids.get(&role) {
            let (arn, actual) = self.describe(id).await?;
            if actual.is_some_and(|a| a != spec) {
                return Err(DomainError::invalid(
                    "ca.aws_kms",
                    format!(
                        "KMS key {id} ({} key) is not a {} key, as ca.key_type = \"{}\" needs",
                        role.as_str(),
                        spec.as_str(),
                        key_type.as_str()
                    ),
                ));
            }
            arn
        } else {
            let mut create = self
                .client
                .create_key()
                .key_spec(spec.clone())
                .key_usage(KeyUsageType::SignVerify)
                .description(format!("certflow CA key {label}"));
            for (k, v) in [("certflow:label", label), ("certflow:role", role.as_str())] {
                let tag = Tag::builder()
                    .tag_key(k)
                    .tag_value(v)
                    .build()
                    .map_err(|e| DomainError::Internal(format!("KMS tag: {e}")))?;
                create = create.tags(tag);
            }
            if let Some(policy) = key_policy(&self.settings.signer_role_arns) {
                create = create.policy(policy);
            }
            let out = create
                .send()
                .await
                .map_err(|e| self.error("CreateKey", label, e))?;
            let meta = out
                .key_metadata()
                .ok_or_else(|| self.unavailable("CreateKey returned no key metadata".into()))?;
            let arn = meta
                .arn()
                .map_or_else(|| meta.key_id().to_owned(), ToOwned::to_owned);
            tracing::info!(key = %arn, label, key_spec = spec.as_str(), "CA key created in AWS KMS");
            arn
        };
        let key = CaKeyRef::AwsKms { key_id: arn };
        let spki = self.public_key(&key).await?;
        Ok((key, spki))
    }

    async fn public_key(&self, key: &CaKeyRef) -> DomainResult<Vec<u8>> {
        let id = Self::key_id(key)?;
        let out = self
            .client
            .get_public_key()
            .key_id(id)
            .send()
            .await
            .map_err(|e| self.error("GetPublicKey", id, e))?;
        if out
            .key_usage()
            .is_some_and(|u| *u != KeyUsageType::SignVerify)
        {
            return Err(DomainError::Integrity(format!(
                "KMS key {id} is not a SIGN_VERIFY key"
            )));
        }
        out.public_key
            .map(Blob::into_inner)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| self.unavailable(format!("GetPublicKey {id} returned no key")))
    }

    async fn sign(
        &self,
        key: &CaKeyRef,
        key_type: KeyType,
        message: &[u8],
    ) -> DomainResult<Vec<u8>> {
        let id = Self::key_id(key)?;
        let alg = DigestAlgorithm::for_key_type(key_type)
            .ok_or_else(|| DomainError::Internal("Ed25519 keys are not held in KMS".into()))?;
        let (message, message_type) =
            if self.settings.raw_messages && message.len() <= MAX_RAW_MESSAGE {
                (message.to_vec(), MessageType::Raw)
            } else {
                (alg.digest(message), MessageType::Digest)
            };
        let out = self
            .client
            .sign()
            .key_id(id)
            .message(Blob::new(message))
            .message_type(message_type)
            .signing_algorithm(signing_algorithm(key_type))
            .send()
            .await
            .map_err(|e| self.error("Sign", id, e))?;
        out.signature
            .map(Blob::into_inner)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.unavailable(format!("Sign {id} returned no signature")))
    }

    async fn discard(&self, key: &CaKeyRef) -> DomainResult<()> {
        let id = Self::key_id(key)?;
        let configured = self
            .settings
            .key_ids
            .values()
            .any(|c| c == id || id.ends_with(&format!("/{c}")));
        if configured {
            return Ok(());
        }
        self.client
            .schedule_key_deletion()
            .key_id(id)
            .pending_window_in_days(7)
            .send()
            .await
            .map_err(|e| self.error("ScheduleKeyDeletion", id, e))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_key_policy_lets_only_the_signers_sign() {
        assert_eq!(key_policy(&[]), None);
        assert_eq!(key_policy(&["not-an-arn".into()]), None);
        let roles = vec![
            "arn:aws:iam::123456789012:role/certflow-api".to_owned(),
            "arn:aws:iam::123456789012:role/certflow-worker".to_owned(),
        ];
        let policy: serde_json::Value = serde_json::from_str(&key_policy(&roles).unwrap()).unwrap();
        let statements = policy["Statement"].as_array().unwrap();
        let admin = &statements[0];
        assert_eq!(admin["Principal"]["AWS"], "arn:aws:iam::123456789012:root");
        let admin_actions: Vec<&str> = admin["Action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            !admin_actions
                .iter()
                .any(|a| *a == "kms:Sign" || *a == "kms:*")
        );
        assert_eq!(statements[1]["Principal"]["AWS"], serde_json::json!(roles));
        assert!(
            statements[1]["Action"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("kms:Sign"))
        );
    }
}
