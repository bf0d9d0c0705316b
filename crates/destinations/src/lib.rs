//! certflow's destinations on AWS: certificates imported into AWS
//! Certificate Manager (`ImportCertificate`, re-imported under the same ARN
//! on renewal) and bound to Elastic Load Balancing v2 listeners
//! (`ModifyListener` for the default certificate, `AddListenerCertificates`
//! for the SNI list), read back with `GetCertificate` and
//! `DescribeListenerCertificates`.
//!
//! Credentials come from the SDK's default chain (the ECS task role, the
//! environment, a profile), optionally exchanged per destination for a role
//! (`AssumeRole`, with an external id). Endpoints follow the SDK's standard
//! variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_ACM`,
//! `AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2`), for VPC endpoints and emulators.
//! The private key leaves certflow only inside the `ImportCertificate` call.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_acm::config::SharedCredentialsProvider;
use aws_sdk_acm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_acm::primitives::Blob;
use aws_sdk_elasticloadbalancingv2::types::Certificate as ListenerCertificate;
use certflow_core::destinations::{AwsTarget, DestinationPusher, PushBundle};
use tokio::sync::Mutex;

/// Session name of the assumed roles, shown in the target account's CloudTrail.
const SESSION_NAME: &str = "certflow-destinations";
/// Tag naming the certificate on the ACM certificate.
pub const TAG_CERTIFICATE_ID: &str = "certflow:certificate-id";
/// Tag naming the certificate's name.
pub const TAG_CERTIFICATE_NAME: &str = "certflow:certificate-name";
/// Tag naming the team; the worker role's IAM policy is scoped by it (`certflow:managed`).
pub const TAG_MANAGED: &str = "certflow:managed";

#[derive(Clone)]
struct Clients {
    acm: aws_sdk_acm::Client,
    elb: aws_sdk_elasticloadbalancingv2::Client,
}

/// Pushes to ACM and ELBv2 with the SDK, one client pair per (region, role).
pub struct AwsDestinations {
    base: SdkConfig,
    clients: Mutex<HashMap<AwsTarget, Clients>>,
}

impl std::fmt::Debug for AwsDestinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsDestinations").finish_non_exhaustive()
    }
}

/// The reason of an SDK failure, as users see it: the service's code and
/// message when it answered, the transport's cause otherwise.
fn reason<E, R>(what: &str, e: SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                _ => DisplayErrorContext(&e).to_string(),
            }
        }
        _ => DisplayErrorContext(&e).to_string(),
    };
    format!("{what}: {text}")
}

impl AwsDestinations {
    /// Loads the SDK's default configuration (credential chain, endpoint
    /// variables) with bounded timeouts: a slow AWS stalls one attempt, not the worker.
    pub async fn from_env() -> Self {
        // Every client names its destination's region: a placeholder here
        // keeps the loader from asking the instance metadata service for one.
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .operation_timeout(Duration::from_secs(90))
                    .build(),
            )
            .load()
            .await;
        Self::from_sdk_config(base)
    }

    /// Over a configuration the caller loaded.
    pub fn from_sdk_config(base: SdkConfig) -> Self {
        Self {
            base,
            clients: Mutex::new(HashMap::new()),
        }
    }

    async fn clients(&self, target: &AwsTarget) -> Clients {
        let mut cache = self.clients.lock().await;
        if let Some(c) = cache.get(target) {
            return c.clone();
        }
        let region = Region::new(target.region.clone());
        let mut acm = aws_sdk_acm::config::Builder::from(&self.base).region(region.clone());
        let mut elb = aws_sdk_elasticloadbalancingv2::config::Builder::from(&self.base)
            .region(region.clone());
        if let Some(role) = &target.role_arn {
            let mut assume = AssumeRoleProvider::builder(role.clone())
                .session_name(SESSION_NAME)
                .region(region)
                .configure(&self.base);
            if let Some(id) = &target.role_external_id {
                assume = assume.external_id(id.clone());
            }
            let shared = SharedCredentialsProvider::new(assume.build().await);
            acm.set_credentials_provider(Some(shared.clone()));
            elb.set_credentials_provider(Some(shared));
        }
        let c = Clients {
            acm: aws_sdk_acm::Client::from_conf(acm.build()),
            elb: aws_sdk_elasticloadbalancingv2::Client::from_conf(elb.build()),
        };
        cache.insert(target.clone(), c.clone());
        c
    }
}

fn tag(key: &str, value: &str) -> Result<aws_sdk_acm::types::Tag, String> {
    aws_sdk_acm::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
        .map_err(|e| format!("tag {key}: {e}"))
}

#[async_trait]
impl DestinationPusher for AwsDestinations {
    async fn import(
        &self,
        target: &AwsTarget,
        arn: Option<&str>,
        bundle: &PushBundle,
    ) -> Result<String, String> {
        let c = self.clients(target).await;
        let mut req = c
            .acm
            .import_certificate()
            .certificate(Blob::new(bundle.certificate_pem.as_bytes()))
            .private_key(Blob::new(bundle.key_pem.as_bytes()));
        if !bundle.chain_pem.trim().is_empty() {
            req = req.certificate_chain(Blob::new(bundle.chain_pem.as_bytes()));
        }
        let name: String = bundle.name.chars().take(256).collect();
        let tags = vec![
            tag(TAG_CERTIFICATE_ID, &bundle.certificate_id.to_string())?,
            tag(TAG_CERTIFICATE_NAME, &name)?,
            tag(TAG_MANAGED, &bundle.team)?,
        ];
        req = match arn {
            // ACM takes no tags on a re-import: they are set again below.
            Some(arn) => req.certificate_arn(arn),
            None => req.set_tags(Some(tags.clone())),
        };
        let out = req
            .send()
            .await
            .map_err(|e| reason("ACM ImportCertificate", e))?;
        let imported = out
            .certificate_arn()
            .map(str::to_owned)
            .ok_or_else(|| "ACM ImportCertificate: no certificate ARN in the answer".to_owned())?;
        if arn.is_some() {
            // Real ACM keeps the first import's tags, but an emulator (moto)
            // or a tag removed by hand would leave the certificate outside
            // the worker role's tag-scoped policy: setting them is idempotent.
            c.acm
                .add_tags_to_certificate()
                .certificate_arn(&imported)
                .set_tags(Some(tags))
                .send()
                .await
                .map_err(|e| reason("ACM AddTagsToCertificate", e))?;
        }
        Ok(imported)
    }

    async fn served_certificate(&self, target: &AwsTarget, arn: &str) -> Result<String, String> {
        let c = self.clients(target).await;
        let out = c
            .acm
            .get_certificate()
            .certificate_arn(arn)
            .send()
            .await
            .map_err(|e| reason("ACM GetCertificate", e))?;
        out.certificate()
            .map(str::to_owned)
            .ok_or_else(|| format!("ACM GetCertificate: no certificate under {arn}"))
    }

    async fn bind(
        &self,
        target: &AwsTarget,
        listener_arn: &str,
        arn: &str,
        default_certificate: bool,
    ) -> Result<(), String> {
        let c = self.clients(target).await;
        let cert = ListenerCertificate::builder().certificate_arn(arn).build();
        if default_certificate {
            c.elb
                .modify_listener()
                .listener_arn(listener_arn)
                .certificates(cert)
                .send()
                .await
                .map_err(|e| reason("ELBv2 ModifyListener", e))?;
        } else {
            c.elb
                .add_listener_certificates()
                .listener_arn(listener_arn)
                .certificates(cert)
                .send()
                .await
                .map_err(|e| reason("ELBv2 AddListenerCertificates", e))?;
        }
        Ok(())
    }

    async fn listener_certificates(
        &self,
        target: &AwsTarget,
        listener_arn: &str,
    ) -> Result<Vec<String>, String> {
        let c = self.clients(target).await;
        let mut arns = Vec::new();
        let mut marker: Option<String> = None;
        // Bounded: a listener holds at most a few hundred certificates.
        for _ in 0..100 {
            let out = c
                .elb
                .describe_listener_certificates()
                .listener_arn(listener_arn)
                .set_marker(marker.clone())
                .send()
                .await
                .map_err(|e| reason("ELBv2 DescribeListenerCertificates", e))?;
            arns.extend(
                out.certificates()
                    .iter()
                    .filter_map(|c| c.certificate_arn().map(str::to_owned)),
            );
            match out.next_marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        Ok(arns)
    }

    async fn unbind(
        &self,
        target: &AwsTarget,
        listener_arn: &str,
        arn: &str,
    ) -> Result<(), String> {
        let c = self.clients(target).await;
        c.elb
            .remove_listener_certificates()
            .listener_arn(listener_arn)
            .certificates(ListenerCertificate::builder().certificate_arn(arn).build())
            .send()
            .await
            .map_err(|e| reason("ELBv2 RemoveListenerCertificates", e))?;
        Ok(())
    }

    async fn delete_certificate(&self, target: &AwsTarget, arn: &str) -> Result<(), String> {
        let c = self.clients(target).await;
        c.acm
            .delete_certificate()
            .certificate_arn(arn)
            .send()
            .await
            .map_err(|e| reason("ACM DeleteCertificate", e))?;
        Ok(())
    }
}
