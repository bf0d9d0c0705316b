//! The compliance report against the real SQLite store, an enrolled agent and
//! its reports: deployments are read per agent and matched to certificates;
//! a revoked version an agent still serves, an assignment never installed and
//! the reader's teams show as the rules say.

use certflow_api::CreateCertificateRequest;
use certflow_api::agent::{DeploymentReport, DeploymentStatus, ReportRequest};
use certflow_core::model::Actor;
use certflow_services::agents::{AgentSettings, Agents, TokenEnrolment};
use certflow_services::deployments::{DeploymentSettings, Deployments};
use time::OffsetDateTime;

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
    let (_dir, store, services) = crate::sqlite_services(Default::default()).await;
    let now = OffsetDateTime::now_utc();
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
            &crate::agent_csr(),
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
