//! Issuance policies through the use cases: a request is refused with the rule
//! and the offending value per field; a renewal against a policy tightened
//! since issuance is refused for every caller, audited, and announced once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use certflow_api::{CreateCertificateRequest, CreateSubscriptionRequest};
use certflow_blob::ObjectBlobStore;
use certflow_core::model::{Actor, AuditQuery, KeyType, Outcome};
use certflow_core::notify::{DeliveryQuery, EventKind};
use certflow_core::policy::{IssuancePolicies, IssuancePolicy};
use certflow_core::ports::NotificationStore;
use certflow_core::renewal::RenewalJob;
use certflow_core::{DomainError, FieldError};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_store::SqliteStore;
use serde_json::json;
use time::OffsetDateTime;

use crate::{CaSettings, JobOutcome, Services};

struct Env {
    store: Arc<SqliteStore>,
    blobs: Arc<ObjectBlobStore>,
    sealer: Sealer,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
        let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
            MasterKey::generate().unwrap(),
            vec![],
        )));
        let env = Self {
            store,
            blobs,
            sealer,
            _dir: dir,
        };
        env.services(IssuancePolicies::default())
            .ensure_ca(
                &CaSettings {
                    name: "internal".into(),
                    key_type: KeyType::EcdsaP256,
                    root_validity_days: 3650,
                    intermediate_validity_days: 1825,
                },
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
        env
    }

    /// Services over the same store under `policies` (a server restarted
    /// with another configuration).
    fn services(&self, policies: IssuancePolicies) -> Services {
        Services::new(
            self.store.clone(),
            self.blobs.clone(),
            self.sealer.clone(),
            None,
        )
        .with_notifications(self.store.clone())
        .with_issuance_policies(policies.compile().unwrap())
    }

    async fn kinds(&self, team: &str) -> Vec<String> {
        let mut items = NotificationStore::list_deliveries(
            self.store.as_ref(),
            &DeliveryQuery {
                team: Some(team.into()),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .items;
        items.reverse();
        items
            .iter()
            .map(|d| d.notification.kind.as_str().to_owned())
            .collect()
    }
}

fn actor() -> Actor {
    Actor {
        subject: "alice".into(),
        source: None,
    }
}

fn payments(p: IssuancePolicy) -> IssuancePolicies {
    IssuancePolicies {
        teams: [("payments".to_owned(), p)].into(),
        ..Default::default()
    }
}

fn request(names: &[&str]) -> CreateCertificateRequest {
    CreateCertificateRequest {
        team: "payments".into(),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

fn invalid(e: DomainError) -> Vec<FieldError> {
    match e {
        DomainError::Invalid(f) => f,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Each rule refuses a request on its own, naming the field, the policy, the
/// rule and the offending value; the same request fits a looser policy.
#[tokio::test]
async fn requests_are_refused_per_rule_with_field_rule_and_value() {
    let env = Env::new().await;
    let strict = env.services(payments(IssuancePolicy {
        allowed_domains: vec!["pay.example.com".into()],
        allow_wildcards: Some(false),
        allow_ip_addresses: Some(false),
        allowed_key_types: vec![KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Rsa3072],
        min_rsa_bits: Some(3072),
        max_validity_days: Some(30),
        required_extended_key_usages: vec![certflow_core::policy::ExtendedKeyUsage::ServerAuth],
        max_names: Some(2),
        ..Default::default()
    }));
    type Tweak = fn(&mut CreateCertificateRequest);
    let cases: Vec<(&[&str], Tweak, &str, &str, &str)> = vec![
        (
            &["www.example.com"],
            |r| r.validity_days = Some(30),
            "names[0]",
            "allowed_domains",
            "www.example.com",
        ),
        (
            &["*.pay.example.com"],
            |r| r.validity_days = Some(30),
            "names[0]",
            "allow_wildcards",
            "*.pay.example.com",
        ),
        (
            &["a.pay.example.com", "10.0.0.7"],
            |r| r.validity_days = Some(30),
            "names[1]",
            "allow_ip_addresses",
            "10.0.0.7",
        ),
        (
            &["a.pay.example.com"],
            |r| {
                r.validity_days = Some(30);
                r.key_type = Some("ed25519".into())
            },
            "key_type",
            "allowed_key_types",
            "ed25519",
        ),
        (
            &["a.pay.example.com"],
            |r| {
                r.validity_days = Some(30);
                r.key_type = Some("rsa-2048".into())
            },
            "key_type",
            "min_rsa_bits",
            "rsa-2048",
        ),
        (
            &["a.pay.example.com"],
            |_| {},
            "validity_days",
            "max_validity_days",
            "90",
        ),
        (
            &["a.pay.example.com"],
            |r| {
                r.validity_days = Some(30);
                r.profile = Some("tls-client".into())
            },
            "profile",
            "required_extended_key_usages",
            "tls-client",
        ),
        (
            &[
                "a.pay.example.com",
                "b.pay.example.com",
                "c.pay.example.com",
            ],
            |r| r.validity_days = Some(30),
            "names",
            "max_names",
            "3",
        ),
    ];
    for (names, tweak, field, rule, value) in cases {
        let mut req = request(names);
        // Certificate names are unique per team; the cases share SANs.
        req.name = Some(format!("case-{rule}"));
        tweak(&mut req);
        let errs = invalid(
            strict
                .create_certificate(&actor(), &req, OffsetDateTime::now_utc())
                .await
                .unwrap_err(),
        );
        assert_eq!(errs.len(), 1, "{rule}: {errs:?}");
        assert_eq!(errs[0].field, field, "{rule}");
        assert!(
            errs[0]
                .reason
                .contains(&format!("policy.teams.payments.{rule}"))
                && errs[0].reason.contains(&format!("'{value}'")),
            "{rule}: {}",
            errs[0].reason
        );
        // Without the team's policy the same request is issued.
        env.services(IssuancePolicies::default())
            .create_certificate(&actor(), &req, OffsetDateTime::now_utc())
            .await
            .unwrap_or_else(|e| panic!("{rule}: {e}"));
    }
    // Another team is not under the payments policy.
    let mut other = request(&["www.example.com"]);
    other.team = "web".into();
    strict
        .create_certificate(&actor(), &other, OffsetDateTime::now_utc())
        .await
        .unwrap();
    // What the policy allows is issued.
    let mut ok = request(&["a.pay.example.com", "b.pay.example.com"]);
    ok.validity_days = Some(30);
    ok.key_type = Some("rsa-3072".into());
    strict
        .create_certificate(&actor(), &ok, OffsetDateTime::now_utc())
        .await
        .unwrap();
}

/// A policy tightened after issuance stops every renewal path: the console's
/// and an agent's (`renew`), the worker's (`run_renewal_job`, which reports a
/// permanent refusal rather than an error to retry). Each refusal is audited;
/// the team hears once per version; the certificate keeps its version.
#[tokio::test]
async fn renewal_under_a_tightened_policy_is_refused_audited_and_announced() {
    let env = Env::new().await;
    let loose = env.services(IssuancePolicies::default());
    loose
        .create_subscription(
            &actor(),
            &CreateSubscriptionRequest {
                team: "payments".into(),
                events: EventKind::ALL.iter().map(|k| k.as_str().into()).collect(),
                channel: json!({"type": "webhook", "url": "https://hooks.example.com/hook", "format": "json"}),
            },
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let mut req = request(&["api.example.com", "*.api.example.com"]);
    req.validity_days = Some(90);
    let id = loose
        .create_certificate(&actor(), &req, OffsetDateTime::now_utc())
        .await
        .unwrap()
        .certificate
        .id;

    let tight = env.services(payments(IssuancePolicy {
        allow_wildcards: Some(false),
        max_validity_days: Some(47),
        ..Default::default()
    }));
    let errs = invalid(
        tight
            .renew(&actor(), id, None, OffsetDateTime::now_utc())
            .await
            .unwrap_err(),
    );
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["names[1]", "validity_days"], "{errs:?}");
    assert!(
        errs[0]
            .reason
            .contains("policy.teams.payments.allow_wildcards")
    );
    assert!(errs[1].reason.contains("'90'"));

    let job = RenewalJob::new(id, 1, 8, OffsetDateTime::now_utc());
    match tight
        .run_renewal_job(&job, OffsetDateTime::now_utc())
        .await
        .unwrap()
    {
        JobOutcome::PolicyRefused { reason } => {
            assert!(
                reason.contains(
                    "names[1]: '*.api.example.com' violates policy.teams.payments.allow_wildcards"
                ),
                "{reason}"
            );
            assert!(reason.contains("max_validity_days"), "{reason}");
        }
        other => panic!("expected a policy refusal, got {other:?}"),
    }
    let view = tight.certificate(id).await.unwrap();
    assert_eq!(view.versions.len(), 1, "nothing was issued");

    let refusals = tight
        .audit(&AuditQuery {
            action_prefix: Some("certificate.renewal.refused".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(refusals.len(), 2);
    assert!(refusals.iter().all(|a| a.outcome == Outcome::Failure));
    let subjects: Vec<&str> = refusals.iter().map(|a| a.actor.subject.as_str()).collect();
    assert!(subjects.contains(&"alice") && subjects.contains(&crate::RENEWAL_ACTOR));
    // One alert per version, however often the renewal is tried.
    assert_eq!(env.kinds("payments").await, ["issued", "policy-violation"]);

    // Loosened again (or the certificate changed), renewal goes through.
    let view = loose
        .renew(&actor(), id, None, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(view.certificate.current_version, 2);
}

/// A lint refusal (built here: pki's own tests craft certificates that break
/// each lint and show the CA key never signs them) is audited with every
/// finding, announced to the owning team once, and a 409 naming the lints.
#[tokio::test]
async fn lint_refusal_is_audited_and_announced() {
    let env = Env::new().await;
    let services = env.services(IssuancePolicies::default());
    services
        .create_subscription(
            &actor(),
            &CreateSubscriptionRequest {
                team: "payments".into(),
                events: vec!["policy-violation".into()],
                channel: json!({"type": "webhook", "url": "https://hooks.example.com/hook", "format": "json"}),
            },
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let refusal = certflow_pki::LintRefusal {
        findings: vec![certflow_pki::LintFinding {
            lint: "key_usage_matches_key_type",
            message: "keyEncipherment is set for a ecdsa-p256 key".into(),
        }],
    };
    let id = uuid::Uuid::now_v7();
    let owner = crate::certificates::Owner {
        actor: &actor(),
        team: "payments",
        name: "api.example.com",
    };
    for _ in 0..2 {
        match services
            .lint_refused(owner, id, 1, &refusal, OffsetDateTime::now_utc())
            .await
        {
            DomainError::Conflict(why) => {
                assert!(why.contains("key_usage_matches_key_type"), "{why}")
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
    }
    let audit = services
        .audit(&AuditQuery {
            target: Some(format!("certificate/{id}")),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[0].action, "certificate.issue.lint-refused");
    assert_eq!(audit[0].outcome, Outcome::Failure);
    assert_eq!(
        audit[0].details["findings"][0]["lint"],
        "key_usage_matches_key_type"
    );
    assert_eq!(env.kinds("payments").await, ["policy-violation"]);
}
