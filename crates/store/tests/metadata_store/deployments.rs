//! Deployments (`DeploymentStore`, with agents from `AgentStore`):
//! assignments, agents' reports, fleet statistics and drift candidates.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::DomainError;
use certflow_core::ports::MetadataStore;
use uuid::Uuid;

use crate::support::{
    DAY, T0, actions, at, certificate, create, event, seed_agent, seed_issuer, target, version,
};

fn report(
    agent: Uuid,
    cert: Uuid,
    version: u32,
    status: certflow_core::deployments::DeploymentStatus,
    secs: i64,
) -> certflow_core::deployments::Deployment {
    certflow_core::deployments::Deployment {
        agent_id: agent,
        certificate_id: cert,
        version,
        fingerprint_sha256: format!("{:064x}", u128::from(version)),
        status,
        attempted_version: (status != certflow_core::deployments::DeploymentStatus::Installed)
            .then_some(version + 1),
        error: (status != certflow_core::deployments::DeploymentStatus::Installed)
            .then(|| "reload failed".to_owned()),
        reported_at: at(secs),
        agent_version: Some("0.1.0".into()),
    }
}

store_case! {
    async fn deployments_assign_follow_versions_record_reports_and_unassign<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DeploymentStore,
    {
        use certflow_core::deployments::{Assignment, DeploymentStatus};
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "www.example.com", "web");
        let v1 = create(store, &cert).await;
        let agent = seed_agent(store, "web-1", "web").await;
        let other = seed_agent(store, "web-2", "web").await;
        let assignment = Assignment {
            agent_id: agent.id,
            certificate_id: cert.id,
            created_by: "alice".into(),
            created_at: at(T0 + 10),
        };
        assert!(
            store
                .assign(&assignment, &event("deployment.assign", "x"))
                .await
                .unwrap()
        );
        // A repeat changes nothing and records nothing.
        assert!(
            !store
                .assign(&assignment, &event("deployment.assign", "x"))
                .await
                .unwrap()
        );
        assert_eq!(actions(store, "deployment.assign").await.len(), 1);
        // Unknown agent or certificate: NotFound, nothing stored.
        let mut unknown = assignment.clone();
        unknown.certificate_id = Uuid::now_v7();
        assert!(matches!(
            store
                .assign(&unknown, &event("deployment.assign", "x"))
                .await,
            Err(DomainError::NotFound(_))
        ));
        unknown.certificate_id = cert.id;
        unknown.agent_id = Uuid::now_v7();
        assert!(matches!(
            store
                .assign(&unknown, &event("deployment.assign", "x"))
                .await,
            Err(DomainError::NotFound(_))
        ));

        let listed = store.assigned_certificates(agent.id).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].certificate_id,
                listed[0].version,
                listed[0].serial.as_str()
            ),
            (cert.id, 1, v1.serial.as_str())
        );
        assert_eq!(listed[0].names, cert.names);
        assert_eq!(listed[0].assigned_at, at(T0 + 10));
        assert!(
            store
                .assigned_certificates(other.id)
                .await
                .unwrap()
                .is_empty()
        );

        // A renewal shows in the listing at once (it joins the current version).
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        let v2 = version(&renewed, 2);
        store
            .add_version(
                &renewed,
                &v2,
                &event("certificate.renew", &target(&cert)),
                None,
            )
            .await
            .unwrap();
        let listed = store.assigned_certificates(agent.id).await.unwrap();
        assert_eq!(
            (listed[0].version, listed[0].serial.clone()),
            (2, v2.serial.clone())
        );
        assert_eq!(listed[0].issued_at, v2.created_at);

        // Reports: only for assigned certificates; the last one wins.
        assert!(matches!(
            store
                .record_deployments(
                    &[report(
                        other.id,
                        cert.id,
                        1,
                        DeploymentStatus::Installed,
                        T0
                    )],
                    &event("deployment.report", "x"),
                )
                .await,
            Err(DomainError::NotFound(_))
        ));
        let states = store.certificate_deployments(cert.id).await.unwrap();
        assert_eq!(states.len(), 1);
        assert!(states[0].last_report.is_none());
        assert_eq!(states[0].agent_name, "web-1");
        let failed = report(agent.id, cert.id, 1, DeploymentStatus::Failed, T0 + 20);
        store
            .record_deployments(
                std::slice::from_ref(&failed),
                &event("deployment.report", "x"),
            )
            .await
            .unwrap();
        let states = store.agent_deployments(agent.id).await.unwrap();
        assert_eq!(states[0].last_report.as_ref(), Some(&failed));
        assert!(!states[0].current_installed());
        let installed = report(agent.id, cert.id, 2, DeploymentStatus::Installed, T0 + 30);
        store
            .record_deployments(
                std::slice::from_ref(&installed),
                &event("deployment.report", "x"),
            )
            .await
            .unwrap();
        let states = store.certificate_deployments(cert.id).await.unwrap();
        assert_eq!(states[0].last_report.as_ref(), Some(&installed));
        assert!(states[0].current_installed());
        assert_eq!(actions(store, "deployment.report").await.len(), 2);

        // Unassigning removes the reports; a second time is NotFound.
        store
            .unassign(agent.id, cert.id, &event("deployment.unassign", "x"))
            .await
            .unwrap();
        assert!(
            store
                .assigned_certificates(agent.id)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .certificate_deployments(cert.id)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            store
                .unassign(agent.id, cert.id, &event("deployment.unassign", "x"))
                .await,
            Err(DomainError::NotFound(_))
        ));
        assert_eq!(actions(store, "deployment.unassign").await.len(), 1);
        // Assigned again, the old reports do not come back.
        assert!(
            store
                .assign(&assignment, &event("deployment.assign", "x"))
                .await
                .unwrap()
        );
        assert!(
            store.agent_deployments(agent.id).await.unwrap()[0]
                .last_report
                .is_none()
        );
    }
}

store_case! {
    async fn fleet_stats_count_agents_and_deployments<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DeploymentStore,
    {
        use certflow_core::agents::AgentStatus;
        use certflow_core::deployments::{Assignment, DeploymentStatus};
        use certflow_core::model::FleetStats;
        assert_eq!(
            store.fleet_stats(at(T0), at(T0)).await.unwrap(),
            FleetStats::default()
        );
        let issuer = seed_issuer(store).await;
        let www = certificate(&issuer, "www.example.com", "web");
        let api = certificate(&issuer, "api.example.com", "web");
        create(store, &www).await; // version 1 issued at T0 + DAY
        create(store, &api).await;
        let quiet = seed_agent(store, "quiet", "web").await;
        let busy = seed_agent(store, "busy", "web").await;
        let off = seed_agent(store, "off", "web").await;
        let gone = seed_agent(store, "gone", "web").await;
        store.touch_agent(busy.id, at(T0 + 7200)).await.unwrap();
        let pairs = [
            (&quiet, &www, None),
            (&busy, &www, Some(DeploymentStatus::Installed)),
            (&busy, &api, Some(DeploymentStatus::Failed)),
            (&quiet, &api, Some(DeploymentStatus::Broken)),
            // A disabled agent's report is nobody's incident.
            (&off, &www, Some(DeploymentStatus::Failed)),
        ];
        for (agent, cert, status) in pairs {
            store
                .assign(
                    &Assignment {
                        agent_id: agent.id,
                        certificate_id: cert.id,
                        created_by: "alice".into(),
                        created_at: at(T0),
                    },
                    &event("deployment.assign", "x"),
                )
                .await
                .unwrap();
            if let Some(status) = status {
                store
                    .record_deployments(
                        &[report(agent.id, cert.id, 1, status, T0 + DAY)],
                        &event("deployment.report", "x"),
                    )
                    .await
                    .unwrap();
            }
        }
        for (agent, status) in [(&off, AgentStatus::Disabled), (&gone, AgentStatus::Revoked)] {
            store
                .set_agent_status(agent.id, status, &event("agent.status", "x"))
                .await
                .unwrap();
        }
        let stats = store
            .fleet_stats(at(T0 + 3600), at(T0 + DAY))
            .await
            .unwrap();
        assert_eq!(
            stats,
            FleetStats {
                agents_active: 2,
                agents_disabled: 1,
                agents_revoked: 1,
                // "quiet" was never seen after its enrolment at T0.
                agents_not_seen: 1,
                deployments_installed: 1,
                deployments_failed: 1,
                deployments_broken: 1,
                deployments_pending: 1,
                // Every active pair but the installed one, once late.
                deployments_drift: 3,
            }
        );
        // Not late yet: issued after the drift instant.
        let early = store
            .fleet_stats(at(T0 + 3600), at(T0 + DAY - 1))
            .await
            .unwrap();
        assert_eq!(early.deployments_drift, 0);
        // Seen within the window: nobody is missing.
        assert_eq!(
            store
                .fleet_stats(at(T0), at(T0 + DAY))
                .await
                .unwrap()
                .agents_not_seen,
            0
        );
        // An archived certificate leaves the counts.
        store
            .archive_certificate(api.id, at(T0), &event("certificate.archive", "x"))
            .await
            .unwrap();
        let after = store
            .fleet_stats(at(T0 + 3600), at(T0 + DAY))
            .await
            .unwrap();
        assert_eq!(
            (
                after.deployments_failed,
                after.deployments_broken,
                after.deployments_drift
            ),
            (0, 0, 1)
        );
    }
}

store_case! {
    async fn drift_candidates_are_late_uninstalled_and_not_yet_announced<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DeploymentStore,
    {
        use certflow_core::deployments::{Assignment, DeploymentStatus};
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "api.example.com", "web");
        create(store, &cert).await; // version 1 issued at T0 + DAY
        let late = seed_agent(store, "late", "web").await;
        let done = seed_agent(store, "done", "web").await;
        let off = seed_agent(store, "off", "web").await;
        for a in [&late, &done, &off] {
            store
                .assign(
                    &Assignment {
                        agent_id: a.id,
                        certificate_id: cert.id,
                        created_by: "alice".into(),
                        created_at: at(T0),
                    },
                    &event("deployment.assign", "x"),
                )
                .await
                .unwrap();
        }
        store
            .record_deployments(
                &[report(
                    done.id,
                    cert.id,
                    1,
                    DeploymentStatus::Installed,
                    T0 + DAY,
                )],
                &event("deployment.report", "x"),
            )
            .await
            .unwrap();
        store
            .set_agent_status(
                off.id,
                certflow_core::agents::AgentStatus::Disabled,
                &event("agent.disable", "x"),
            )
            .await
            .unwrap();
        let names = |v: Vec<certflow_core::deployments::DeploymentState>| {
            v.into_iter().map(|s| s.agent_name).collect::<Vec<_>>()
        };
        // Not late yet.
        assert!(
            store
                .drift_candidates(at(T0 + DAY - 1), 100)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            names(store.drift_candidates(at(T0 + DAY), 100).await.unwrap()),
            ["late"]
        );
        store
            .mark_drift_notified(late.id, cert.id, 1)
            .await
            .unwrap();
        assert!(
            store
                .drift_candidates(at(T0 + 9 * DAY), 100)
                .await
                .unwrap()
                .is_empty()
        );
        // A new version is late for everyone, "done" included, once each.
        let mut renewed = cert.clone();
        renewed.current_version = 2;
        store
            .add_version(
                &renewed,
                &version(&renewed, 2),
                &event("certificate.renew", "x"),
                None,
            )
            .await
            .unwrap();
        let late_v2 = store.drift_candidates(at(T0 + 9 * DAY), 100).await.unwrap();
        // Ties on the issue time go by agent id (UUIDv7: enrolment order).
        assert_eq!(names(late_v2.clone()), ["late", "done"]);
        assert!(late_v2.iter().all(|s| s.assigned.version == 2));
        assert_eq!(
            store
                .drift_candidates(at(T0 + 9 * DAY), 1)
                .await
                .unwrap()
                .len(),
            1
        );
        // Marking an older version does not undo a newer mark.
        store
            .mark_drift_notified(done.id, cert.id, 2)
            .await
            .unwrap();
        store
            .mark_drift_notified(done.id, cert.id, 1)
            .await
            .unwrap();
        assert_eq!(
            names(store.drift_candidates(at(T0 + 9 * DAY), 100).await.unwrap()),
            ["late"]
        );
        // An archived certificate is not late anywhere.
        store
            .archive_certificate(
                cert.id,
                at(T0 + 9 * DAY),
                &event("certificate.archive", "x"),
            )
            .await
            .unwrap();
        assert!(
            store
                .drift_candidates(at(T0 + 9 * DAY), 100)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
