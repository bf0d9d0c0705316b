//! The compliance report against the real SQLite store, an enrolled agent and
//! its reports: deployments are read per agent and matched to certificates;
//! a revoked version an agent still serves, an assignment never installed and
//! the reader's teams show as the rules say.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use certflow_api::CreateCertificateRequest;
use certflow_api::agent::{DeploymentReport, DeploymentStatus, ReportRequest};
use certflow_blob::{LocalKeyProvider, MasterKey, ObjectBlobStore, Sealer};
use certflow_core::model::Actor;
use certflow_core::{KeyType, SubjectName};
use certflow_services::agents::{AgentSettings, Agents, TokenEnrolment};
use certflow_services::deployments::{DeploymentSettings, Deployments};
use certflow_services::{CaSettings, Services};
use certflow_store::SqliteStore;
use time::OffsetDateTime;

fn csr() -> Vec<u8> {
    let key = certflow_pki::PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    certflow_pki::build_csr(&key, &[SubjectName::Dns("agent.invalid".into())]).unwrap()
}

fn rules(report: &certflow_services::compliance::ComplianceReport, name: &str) -> Vec<String> {
    report
        .items
        .iter()
        .find(|i| i.name == name)
        .map(|i| {
            i.findings
                .iter()
                .map(|f| format!("{}:{}", f.rule, f.severity.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn deployments_and_revocations_are_rated_per_certificate_within_the_teams() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("certflow.db"))
            .await
            .unwrap(),
    );
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        Vec::new(),
    )));
    let services = Services::new(store.clone(), blobs, sealer, None);
    let now = OffsetDateTime::now_utc();
    services
        .ensure_ca(
            &CaSettings {
                name: "test".into(),
                key_type: KeyType::EcdsaP256,
                root_validity_days: 3650,
                intermediate_validity_days: 1825,
            },
            now,
        )
        .await
        .unwrap();
    let agents = Agents::new(&services, store.clone(), AgentSettings::default());
    agents.ensure_ca(now).await.unwrap();
    let deployments = Deployments::new(
        &services,
        store.clone(),
        store.clone(),
        DeploymentSettings::default(),
    );
    let admin = Actor::system();
    let mut ids = Vec::new();
    for (team, name) in [
        ("payments", "served.example.com"),
        ("payments", "pending.example.com"),
        ("edge", "other.example.com"),
    ] {
        let req = CreateCertificateRequest {
            team: team.into(),
            names: vec![name.into()],
            ..Default::default()
        };
        ids.push(
            services
                .create_certificate(&admin, &req, now)
                .await
                .unwrap(),
        );
    }
    let enrolled = agents
        .enroll_with_token(
            &TokenEnrolment {
                subject: certflow_core::agents::token_subject("https://idp.example.com", "web-01"),
                client_id: "web-01".into(),
                teams: vec!["payments".into(), "edge".into()],
            },
            &csr(),
            None,
            None,
            now,
        )
        .await
        .unwrap();
    let agent = enrolled.agent;
    for view in &ids {
        deployments
            .assign(&admin, agent.id, view.certificate.id, now)
            .await
            .unwrap();
    }
    // The agent installs the first and third certificates, not the second.
    let installed = |v: &certflow_services::CertificateView| DeploymentReport {
        certificate_id: v.certificate.id,
        version: v.versions[0].version,
        fingerprint_sha256: v.versions[0].fingerprint_sha256.clone(),
        status: DeploymentStatus::Installed,
        attempted_version: None,
        error: None,
    };
    deployments
        .report(
            &agent,
            None,
            &ReportRequest {
                items: vec![installed(&ids[0]), installed(&ids[2])],
                agent_version: None,
            },
            now,
        )
        .await
        .unwrap();

    let fleet = Some((&deployments, &agents));
    let report = services
        .compliance_report(fleet, None, 30, now)
        .await
        .unwrap();
    assert_eq!(report.summary.certificates, 3);
    assert!(
        rules(&report, "served.example.com").is_empty(),
        "{report:?}"
    );
    assert_eq!(rules(&report, "pending.example.com"), ["not-deployed:info"]);

    // Revoked, yet still served: critical.
    services
        .revoke(&admin, ids[0].certificate.id, None, "keyCompromise", now)
        .await
        .unwrap();
    let report = services
        .compliance_report(fleet, Some(&["payments".to_owned()]), 30, now)
        .await
        .unwrap();
    assert_eq!(report.summary.certificates, 2, "team edge left out");
    assert_eq!(
        rules(&report, "served.example.com"),
        ["revoked-deployed:critical"]
    );
    let served = report
        .items
        .iter()
        .find(|i| i.name == "served.example.com")
        .unwrap();
    let msg = &served.findings[0].message;
    assert!(
        msg.contains("web-01") && msg.contains("revoked version 1"),
        "{msg}"
    );
    assert!(rules(&report, "other.example.com").is_empty());
    assert_eq!(report.summary.by_rule["revoked-deployed"], 1);
}
