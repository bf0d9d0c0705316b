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

/// Destinations are counted like agents that have not installed the current
/// version: a failed one is a warning with its reason, a pending one (or one
/// serving the previous version after a renewal) is info, a delivered one is
/// clean; the report lists them, within the reader's teams.
#[tokio::test]
async fn destinations_not_serving_the_current_version_are_counted_and_listed() {
    use certflow_core::destinations::{
        AttemptOutcome, AwsTarget, DestinationKind, DestinationStore,
    };
    use certflow_core::model::AuditEvent;
    use certflow_services::destinations::AttachDestination;

    let (_dir, store, services) = crate::sqlite_services(Default::default()).await;
    // No AWS client: every delivery attempt fails, with that as its reason.
    let services = services.with_destinations(store.clone(), None, Default::default());
    let now = OffsetDateTime::now_utc();
    let admin = Actor::system();
    let mut certs = Vec::new();
    for (team, name) in [
        ("payments", "shop.example.com"),
        ("edge", "cdn.example.com"),
    ] {
        let req = CreateCertificateRequest {
            team: team.into(),
            names: vec![name.into()],
            ..Default::default()
        };
        let view = services
            .create_certificate(&admin, &req, now)
            .await
            .unwrap();
        services
            .attach_destination(
                &admin,
                view.certificate.id,
                AttachDestination {
                    kind: DestinationKind::AwsAcm,
                    target: AwsTarget {
                        region: "eu-west-1".into(),
                        role_arn: None,
                        role_external_id: None,
                    },
                    listener_arn: None,
                    default_certificate: false,
                },
                now,
            )
            .await
            .unwrap();
        certs.push(view.certificate.id);
    }
    let payments = ["payments".to_owned()];
    let report = services
        .compliance_report(None, Some(&payments), 30, now)
        .await
        .unwrap();
    assert_eq!(rules(&report, "shop.example.com"), ["not-delivered:info"]);
    assert_eq!(
        report.summary.undelivered_destinations, 1,
        "team edge left out"
    );
    assert_eq!(report.summary.by_rule["not-delivered"], 1);
    let listed = &report.undelivered_destinations;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            listed[0].certificate_id,
            listed[0].status,
            listed[0].current_version
        ),
        (certs[0], "pending", 1)
    );

    // The attempt fails: a warning naming why.
    let round = services.deliver_destinations(now).await.unwrap();
    assert_eq!(round.failed, 2);
    let report = services
        .compliance_report(None, None, 30, now)
        .await
        .unwrap();
    assert_eq!(
        rules(&report, "shop.example.com"),
        ["not-delivered:warning"]
    );
    assert_eq!(report.summary.undelivered_destinations, 2);
    let shop = report
        .items
        .iter()
        .find(|i| i.name == "shop.example.com")
        .unwrap();
    assert!(
        shop.findings[0].message.contains("no AWS client"),
        "{}",
        shop.findings[0].message
    );
    assert!(
        report
            .undelivered_destinations
            .iter()
            .all(|d| d.status == "failed" && d.last_error.is_some())
    );

    // Delivered (as the worker records it): nothing left to report for it.
    let shop_destination = services.certificate_destinations(certs[0]).await.unwrap()[0].id;
    let delivered = AttemptOutcome::Delivered {
        external_id: "arn:aws:acm:eu-west-1:123456789012:certificate/1".into(),
        serial: "01".into(),
    };
    let audit = AuditEvent::success(
        now,
        &admin,
        "certificate.destination.push",
        format!("certificate/{}", certs[0]),
        serde_json::json!({}),
    );
    store
        .record_destination_attempt(shop_destination, 1, now, &delivered, &audit)
        .await
        .unwrap();
    let report = services
        .compliance_report(None, Some(&payments), 30, now)
        .await
        .unwrap();
    assert!(rules(&report, "shop.example.com").is_empty(), "{report:?}");
    assert_eq!(report.summary.undelivered_destinations, 0);
    assert!(report.undelivered_destinations.is_empty());

    // Renewed: it still serves version 1, so it is undelivered again.
    services.renew(&admin, certs[0], None, now).await.unwrap();
    let report = services
        .compliance_report(None, Some(&payments), 30, now)
        .await
        .unwrap();
    assert_eq!(rules(&report, "shop.example.com"), ["not-delivered:info"]);
    let d = &report.undelivered_destinations[0];
    assert_eq!(
        (d.status, d.delivered_version, d.current_version),
        ("delivered", Some(1), 2)
    );
}
