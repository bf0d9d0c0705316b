//! Destinations: places outside certflow's agents where a certificate is
//! pushed after every new version — AWS Certificate Manager (ACM), and
//! Elastic Load Balancing v2 listeners that serve an ACM certificate. Each
//! destination is its own outbox row: delivery is retried with backoff
//! until the current version is served, and every attempt is kept.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::error::{DomainResult, FieldError};
use crate::model::AuditEvent;

/// Longest failure reason kept, in characters.
pub const MAX_ERROR_CHARS: usize = 2000;

/// What a destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DestinationKind {
    /// An ACM certificate in one region, re-imported under the same ARN on renewal.
    AwsAcm,
    /// An ELBv2 (ALB/NLB) listener serving the ACM certificate, as its
    /// default certificate or in its SNI list.
    AwsElbv2Listener,
}

impl DestinationKind {
    /// Every kind.
    pub const ALL: [DestinationKind; 2] = [Self::AwsAcm, Self::AwsElbv2Listener];

    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwsAcm => "aws-acm",
            Self::AwsElbv2Listener => "aws-elbv2-listener",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Where a destination stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DestinationStatus {
    /// Not yet delivered (new, or a new version waits).
    Pending,
    /// The current version was delivered and read back.
    Delivered,
    /// The last attempt failed; it is retried with backoff.
    Failed,
}

impl DestinationStatus {
    /// Every status.
    pub const ALL: [DestinationStatus; 3] = [Self::Pending, Self::Delivered, Self::Failed];

    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses the stable identifier.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The AWS account and region a destination lives in, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AwsTarget {
    /// The region (`eu-west-1`).
    pub region: String,
    /// Role assumed for the calls (another account); the default
    /// credential chain's identity when `None`.
    pub role_arn: Option<String>,
    /// External id of the AssumeRole call (the role's trust policy
    /// requires it against confused deputies; not a secret in AWS's model).
    pub role_external_id: Option<String>,
}

/// A certificate's destination, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Stable identifier.
    pub id: Uuid,
    /// The certificate pushed there.
    pub certificate_id: Uuid,
    /// What it is.
    pub kind: DestinationKind,
    /// Where.
    pub target: AwsTarget,
    /// The listener (`aws-elbv2-listener` only).
    pub listener_arn: Option<String>,
    /// As the listener's default certificate rather than in its SNI list.
    pub default_certificate: bool,
    /// Delivery state.
    pub status: DestinationStatus,
    /// The ACM certificate ARN, once imported.
    pub external_id: Option<String>,
    /// The version delivered and read back.
    pub delivered_version: Option<u32>,
    /// Its serial as read back (lower-case hex).
    pub delivered_serial: Option<String>,
    /// Failed attempts since the last success (the backoff exponent).
    pub attempts: u32,
    /// Next try while not delivered.
    pub next_attempt_at: OffsetDateTime,
    /// Reason of the last failure.
    pub last_error: Option<String>,
    /// Last read-back of a delivered destination.
    pub verified_at: Option<OffsetDateTime>,
    /// Audit subject of whoever attached it.
    pub created_by: String,
    /// When it was attached.
    pub created_at: OffsetDateTime,
    /// Last change of state.
    pub updated_at: OffsetDateTime,
}

impl Destination {
    /// Whether it is bound to a load-balancer listener.
    pub fn is_listener(&self) -> bool {
        self.kind == DestinationKind::AwsElbv2Listener
    }
}

/// A destination whose certificate has a version it does not serve yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDestination {
    /// The destination (leased to the claimer).
    pub destination: Destination,
    /// The certificate's current version, to deliver.
    pub version: u32,
}

/// One attempt to deliver, kept for the console and post-mortems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationAttempt {
    /// The destination.
    pub destination_id: Uuid,
    /// 1-based, over the destination's life.
    pub attempt: u32,
    /// The version pushed.
    pub version: u32,
    /// When.
    pub at: OffsetDateTime,
    /// Failure reason, or `None` on success.
    pub error: Option<String>,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Delivered, and the destination serves `serial` (the version's).
    Delivered {
        /// The ACM ARN.
        external_id: String,
        /// Serial read back.
        serial: String,
    },
    /// Failed; tried again at `retry_at`.
    Failed {
        /// The ACM ARN, if the import went through before the failure.
        external_id: Option<String>,
        /// Why.
        error: String,
        /// When to try again.
        retry_at: OffsetDateTime,
    },
}

/// Delivery counts, for metrics and the compliance report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationStats {
    /// Destinations per (kind, status).
    pub by_status: Vec<(DestinationKind, DestinationStatus, u64)>,
}

/// Stores destinations and their attempts; every change that users make is
/// audited in the same transaction.
#[async_trait]
pub trait DestinationStore: Send + Sync {
    /// Attaches a destination (pending, due now).
    async fn insert_destination(&self, d: &Destination, audit: &AuditEvent) -> DomainResult<()>;
    /// A certificate's destinations, oldest first.
    async fn certificate_destinations(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<Destination>>;
    /// One destination.
    async fn get_destination(&self, id: Uuid) -> DomainResult<Option<Destination>>;
    /// Detaches a destination (its attempts go with it); `NotFound` if absent.
    async fn delete_destination(&self, id: Uuid, audit: &AuditEvent) -> DomainResult<()>;
    /// Leases up to `limit` destinations of active certificates that do not
    /// serve the current version and whose next attempt has come (at once
    /// when a new version appeared since their last attempt).
    async fn claim_destinations(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<DueDestination>>;
    /// Records an attempt at delivering `version`, its outcome, and the
    /// push's audit event, and releases the lease.
    async fn record_destination_attempt(
        &self,
        id: Uuid,
        version: u32,
        at: OffsetDateTime,
        outcome: &AttemptOutcome,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// A destination's attempts, newest first, at most `limit`.
    async fn destination_attempts(
        &self,
        id: Uuid,
        limit: u32,
    ) -> DomainResult<Vec<DestinationAttempt>>;
    /// Delivered destinations last read back before `before`, with the
    /// current version of their certificate.
    async fn verify_candidates(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<DueDestination>>;
    /// Records a read-back: still serving (`drift: None`), or drifted,
    /// which makes it pending again with `reason`.
    async fn record_verification(
        &self,
        id: Uuid,
        at: OffsetDateTime,
        drift: Option<&str>,
    ) -> DomainResult<()>;
    /// Counts per kind and status.
    async fn destination_stats(&self) -> DomainResult<DestinationStats>;
    /// Destinations of active certificates of `teams` (every team when
    /// `None`) that do not serve their certificate's current version, with
    /// that version (the compliance report).
    async fn undelivered_destinations(
        &self,
        teams: Option<&[String]>,
    ) -> DomainResult<Vec<DueDestination>>;
}

/// What is pushed: one version's certificate, chain and private key.
pub struct PushBundle {
    /// The certificate.
    pub certificate_id: Uuid,
    /// Its name (tagged on the ACM certificate).
    pub name: String,
    /// Its team (tagged too: the worker role's permissions are scoped by tag).
    pub team: String,
    /// The version.
    pub version: u32,
    /// The leaf, PEM.
    pub certificate_pem: String,
    /// The intermediates, PEM (no root).
    pub chain_pem: String,
    /// PKCS#8 PEM key; wiped on drop, never logged.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for PushBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushBundle")
            .field("certificate_id", &self.certificate_id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Pushes certificates to AWS. Errors are the reasons shown to users (the
/// service's message, never key material).
#[async_trait]
pub trait DestinationPusher: Send + Sync {
    /// Imports `bundle` into ACM, re-importing under `arn` when given: the ARN.
    async fn import(
        &self,
        target: &AwsTarget,
        arn: Option<&str>,
        bundle: &PushBundle,
    ) -> Result<String, String>;
    /// The PEM of the certificate ACM holds under `arn` (`GetCertificate`).
    async fn served_certificate(&self, target: &AwsTarget, arn: &str) -> Result<String, String>;
    /// Binds `arn` to the listener: as its default certificate, or in its SNI list.
    async fn bind(
        &self,
        target: &AwsTarget,
        listener_arn: &str,
        arn: &str,
        default_certificate: bool,
    ) -> Result<(), String>;
    /// The certificate ARNs the listener serves (`DescribeListenerCertificates`).
    async fn listener_certificates(
        &self,
        target: &AwsTarget,
        listener_arn: &str,
    ) -> Result<Vec<String>, String>;
    /// Removes `arn` from the listener's SNI list.
    async fn unbind(&self, target: &AwsTarget, listener_arn: &str, arn: &str)
    -> Result<(), String>;
    /// Deletes the ACM certificate (ACM refuses while a listener uses it).
    async fn delete_certificate(&self, target: &AwsTarget, arn: &str) -> Result<(), String>;
}

/// Checks an attach request's fields: the region and ARNs are AWS-shaped.
pub fn validate_target(
    kind: DestinationKind,
    target: &AwsTarget,
    listener_arn: Option<&str>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let region_ok = !target.region.is_empty()
        && target.region.len() <= 32
        && target
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && target.region.contains('-');
    if !region_ok {
        errors.push(FieldError::new(
            "region",
            "must be an AWS region such as eu-west-1",
        ));
    }
    if let Some(role) = &target.role_arn
        && !(role.starts_with("arn:aws") && role.contains(":iam::") && role.contains(":role/"))
    {
        errors.push(FieldError::new(
            "role_arn",
            "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
        ));
    }
    if let Some(id) = &target.role_external_id {
        // AWS: 2-1224 characters of [\w+=,.@:/-].
        let ok = (2..=1224).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@:/-".contains(&b));
        if !ok {
            errors.push(FieldError::new(
                "role_external_id",
                "must be 2-1224 characters of letters, digits and _+=,.@:/-",
            ));
        }
        if target.role_arn.is_none() {
            errors.push(FieldError::new(
                "role_external_id",
                "needs role_arn (it is sent with AssumeRole)",
            ));
        }
    }
    match (kind, listener_arn) {
        (DestinationKind::AwsElbv2Listener, None) => errors.push(FieldError::new(
            "listener_arn",
            "required for an aws-elbv2-listener destination",
        )),
        (DestinationKind::AwsElbv2Listener, Some(arn))
            if !(arn.starts_with("arn:aws")
                && arn.contains(":elasticloadbalancing:")
                && arn.contains(":listener/")
                && arn.len() <= 512) =>
        {
            errors.push(FieldError::new(
                "listener_arn",
                "must be an ELBv2 listener ARN (arn:aws:elasticloadbalancing:<region>:<account>:listener/...)",
            ));
        }
        (DestinationKind::AwsAcm, Some(_)) => errors.push(FieldError::new(
            "listener_arn",
            "only for an aws-elbv2-listener destination",
        )),
        _ => {}
    }
    errors
}

/// Backoff before attempt `attempts + 1`: `base · 2^attempts`, capped.
pub fn backoff(attempts: u32, base: time::Duration, cap: time::Duration) -> time::Duration {
    let factor = 2i32.saturating_pow(attempts.min(30));
    (base * factor).min(cap)
}

/// Keeps the first [`MAX_ERROR_CHARS`] characters of a failure reason.
pub fn clip_error(error: &str) -> String {
    error.chars().take(MAX_ERROR_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(region: &str) -> AwsTarget {
        AwsTarget {
            region: region.into(),
            role_arn: None,
            role_external_id: None,
        }
    }

    #[test]
    fn a_listener_destination_needs_a_listener_arn() {
        let e = validate_target(
            DestinationKind::AwsElbv2Listener,
            &target("eu-west-1"),
            None,
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "listener_arn");
        let ok = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/lb/50dc6c495c0c9188/f2f7dc8efc522ab2";
        assert!(
            validate_target(
                DestinationKind::AwsElbv2Listener,
                &target("eu-west-1"),
                Some(ok)
            )
            .is_empty()
        );
    }

    #[test]
    fn regions_and_roles_are_aws_shaped() {
        assert!(!validate_target(DestinationKind::AwsAcm, &target("EU WEST"), None).is_empty());
        let mut t = target("eu-west-1");
        t.role_external_id = Some("x1".into());
        let e = validate_target(DestinationKind::AwsAcm, &t, None);
        assert!(
            e.iter().any(|e| e.reason.contains("needs role_arn")),
            "{e:?}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = time::Duration::seconds;
        assert_eq!(backoff(0, s(30), s(3600)), s(30));
        assert_eq!(backoff(3, s(30), s(3600)), s(240));
        assert_eq!(backoff(40, s(30), s(3600)), s(3600));
    }
}
