//! Behaviour suite of the store's ports on SQLite and PostgreSQL, one test
//! binary, being split into one module per port or concern; [`support`]
//! holds the stores under test and the fixtures several modules seed.
//!
//! Every case in [`suite`] is an async function over `&dyn MetadataStore`
//! (or `&dyn Stores`, or `&S` bounded by the ports it needs) and knows
//! nothing about the backend. Each backend runs them through
//! `metadata_store_suite!` with its own way of opening a fresh, empty store:
//! `sqlite_memory`, `sqlite_file` and `postgres` at the bottom. The cases
//! already in a module of their port (`settings`, `issuers`, `certificates`, `listing`, `due`, `audit`, `idempotency`, `renewal`, `notify`)
//! define and register themselves with `store_case!`.
//! Backend-specific behaviour (files, reopening, connecting, migrating) is
//! tested outside the suite.
//!
//! The PostgreSQL tests need a server: `postgres://postgres@127.0.0.1:5432/postgres`
//! (trust authentication) unless `CERTFLOW_TEST_PG_URL` names another. Each
//! test creates its own database and drops it afterwards. Without a server
//! they fail, saying how to start one; they never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Defines a suite case and registers it on every backend: the `async fn` as
/// written, and next to it a module of the same name with one
/// `#[tokio::test]` per backend, each passing the case a fresh store.
macro_rules! store_case {
    ($(#[$attr:meta])* async fn $case:ident $($signature_and_body:tt)*) => {
        $(#[$attr])*
        async fn $case $($signature_and_body)*

        mod $case {
            #[tokio::test]
            async fn sqlite_memory() {
                let (store, _guard) = crate::support::sqlite_memory().await;
                super::$case(&store).await;
            }

            #[tokio::test]
            async fn sqlite_file() {
                let (store, _guard) = crate::support::sqlite_file().await;
                super::$case(&store).await;
            }

            #[tokio::test]
            async fn postgres() {
                let (store, _guard) = crate::support::postgres().await;
                super::$case(&store).await;
            }
        }
    };
}

mod support;

mod audit;
mod audit_chain;
mod audit_secrets;
mod backends;
mod certificates;
mod due;
mod idempotency;
mod issuers;
mod listing;
mod notify;
mod renewal;
mod settings;

/// Backend-agnostic cases not yet in the module of their port.
mod suite {
    use certflow_core::DomainError;
    use certflow_core::model::AuditQuery;
    use certflow_core::ports::MetadataStore;
    use serde_json::json;
    use uuid::Uuid;

    use crate::support::{
        DAY, T0, actions, at, certificate, create, event, seed_agent, seed_issuer, target, version,
    };

    pub async fn ping_answers(store: &dyn MetadataStore) {
        store.ping().await.unwrap();
    }

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

    pub async fn deployments_assign_follow_versions_record_reports_and_unassign<S>(store: &S)
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

    pub async fn fleet_stats_count_agents_and_deployments<S>(store: &S)
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

    pub async fn drift_candidates_are_late_uninstalled_and_not_yet_announced<S>(store: &S)
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

    fn found(
        source: &str,
        fingerprint: &str,
        der: Option<&[u8]>,
    ) -> certflow_core::discovery::DiscoveredItem {
        certflow_core::discovery::DiscoveredItem {
            source: source.into(),
            fingerprint_sha256: fingerprint.into(),
            serial: "0a".into(),
            subject: "CN=legacy.example.com".into(),
            issuer: "CN=Some Other CA".into(),
            names: vec!["legacy.example.com".into(), "192.0.2.1".into()],
            not_after: at(T0 + 30 * DAY),
            certificate_der: der.map(<[u8]>::to_vec),
        }
    }

    async fn discovered_sources<S>(store: &S, agent: Uuid) -> Vec<String>
    where
        S: certflow_core::ports::DiscoveryStore,
    {
        use certflow_core::discovery::{DiscoveryQuery, DiscoveryStatus};
        store
            .list_discovered(&DiscoveryQuery {
                status: DiscoveryStatus::All,
                agent_id: Some(agent),
                ..DiscoveryQuery::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.item.source)
            .collect()
    }

    /// A report replaces the agent's view: a source seen before keeps its id
    /// and first sighting, a source no longer reported goes, the audit event
    /// carries the counts; a failed audit append writes nothing.
    pub async fn discovery_replace_keeps_ids_counts_and_removes_unreported<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DiscoveryStore,
    {
        use certflow_core::discovery::DiscoverySync;
        let agent = seed_agent(store, "web-1", "web").await;
        let other = seed_agent(store, "db-1", "db").await;
        let fp = |n: u128| format!("{n:064x}");
        let sync = store
            .replace_discovered(
                agent.id,
                &[
                    found("file:/etc/ssl/a.pem", &fp(0xa1), Some(b"der-a")),
                    found("tls:127.0.0.1:443", &fp(0xa2), None),
                ],
                &[],
                at(T0),
                &event("agent.discovery", "agent/web-1"),
            )
            .await
            .unwrap();
        assert_eq!(
            sync,
            DiscoverySync {
                items: 2,
                new: 2,
                removed: 0,
                kept: 0
            }
        );
        store
            .replace_discovered(
                other.id,
                &[found("file:/etc/ssl/a.pem", &fp(0xb1), None)],
                &[],
                at(T0),
                &event("agent.discovery", "agent/db-1"),
            )
            .await
            .unwrap();
        let before = store
            .list_discovered(&certflow_core::discovery::DiscoveryQuery {
                status: certflow_core::discovery::DiscoveryStatus::All,
                agent_id: Some(agent.id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(before.len(), 2);
        let tls = before
            .iter()
            .find(|d| d.item.source == "tls:127.0.0.1:443")
            .unwrap()
            .clone();
        let file = before
            .iter()
            .find(|d| d.item.source == "file:/etc/ssl/a.pem")
            .unwrap();
        assert_eq!(
            file.item,
            found("file:/etc/ssl/a.pem", &fp(0xa1), Some(b"der-a"))
        );
        assert_eq!((file.first_seen, file.last_seen), (at(T0), at(T0)));
        assert_eq!(file.agent_name, "web-1");
        assert_eq!(file.agent_teams, ["web"]);
        assert_eq!((file.managed, file.taken_over_certificate_id), (None, None));

        // The file went away, the endpoint now serves another certificate,
        // and a new file appeared.
        let mut changed = found("tls:127.0.0.1:443", &fp(0xa3), Some(b"der-c"));
        changed.serial = "0c".into();
        let audit = event("agent.discovery", "agent/web-1");
        let sync = store
            .replace_discovered(
                agent.id,
                &[changed.clone(), found("file:/srv/b.crt", &fp(0xa4), None)],
                &[],
                at(T0 + 10),
                &audit,
            )
            .await
            .unwrap();
        assert_eq!(
            sync,
            DiscoverySync {
                items: 2,
                new: 1,
                removed: 1,
                kept: 0
            }
        );
        assert_eq!(
            discovered_sources(store, agent.id).await,
            ["file:/srv/b.crt", "tls:127.0.0.1:443"]
        );
        let again = store.get_discovered(tls.id).await.unwrap().unwrap();
        assert_eq!(again.item, changed);
        assert_eq!((again.first_seen, again.last_seen), (at(T0), at(T0 + 10)));
        // The other agent's row with the same source is its own.
        assert_eq!(
            discovered_sources(store, other.id).await,
            ["file:/etc/ssl/a.pem"]
        );

        let events = store
            .list_audit(&AuditQuery {
                action_prefix: Some("agent.discovery".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .items;
        assert_eq!(events.len(), 3);
        let last = events.iter().find(|e| e.id == audit.id).unwrap();
        assert_eq!(
            last.details,
            json!({ "why": "test", "items": 2, "new": 1, "removed": 1, "kept": 0 })
        );

        // The same audit event again fails to append: nothing of the
        // report is kept (the empty report would have removed both rows).
        assert!(matches!(
            store
                .replace_discovered(agent.id, &[], &[], at(T0 + 20), &audit)
                .await,
            Err(DomainError::Conflict(_))
        ));
        assert_eq!(discovered_sources(store, agent.id).await.len(), 2);
        // Sources unreadable this time stay as they were: the endpoint
        // itself, and files under an unreadable directory.
        let sync = store
            .replace_discovered(
                agent.id,
                &[],
                &["tls:127.0.0.1:443".to_owned(), "file:/srv".to_owned()],
                at(T0 + 15),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        assert_eq!((sync.removed, sync.kept), (0, 2));
        let kept = store.get_discovered(tls.id).await.unwrap().unwrap();
        assert_eq!((kept.item, kept.last_seen), (changed.clone(), at(T0 + 10)));
        assert_eq!(discovered_sources(store, agent.id).await.len(), 2);
        // An empty report clears the agent's view.
        let sync = store
            .replace_discovered(
                agent.id,
                &[],
                &[],
                at(T0 + 20),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        assert_eq!(
            sync,
            DiscoverySync {
                items: 0,
                new: 0,
                removed: 2,
                kept: 0
            }
        );
        assert!(discovered_sources(store, agent.id).await.is_empty());
        assert!(matches!(
            store
                .replace_discovered(
                    Uuid::now_v7(),
                    &[],
                    &[],
                    at(T0),
                    &event("agent.discovery", "x")
                )
                .await,
            Err(DomainError::NotFound(_))
        ));
    }

    /// "Managed" is a fingerprint match with a certflow version; the list
    /// filters by it, by the agent's teams and by agent; a take-over is
    /// recorded once.
    pub async fn discovery_lists_by_status_team_and_agent_and_takes_over_once<S>(store: &S)
    where
        S: MetadataStore + certflow_core::ports::AgentStore + certflow_core::ports::DiscoveryStore,
    {
        use certflow_core::discovery::{DiscoveryQuery, DiscoveryStatus};
        let issuer = seed_issuer(store).await;
        let cert = certificate(&issuer, "www.example.com", "web");
        let v1 = create(store, &cert).await;
        let web = seed_agent(store, "web-1", "web").await;
        let db = seed_agent(store, "db-1", "db").await;
        store
            .replace_discovered(
                web.id,
                &[
                    found("file:/etc/ssl/managed.pem", &v1.fingerprint_sha256, None),
                    found("file:/etc/ssl/legacy.pem", &format!("{:064x}", 0xee), None),
                ],
                &[],
                at(T0),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        store
            .replace_discovered(
                db.id,
                &[found("tls:db:5432", &format!("{:064x}", 0xdd), None)],
                &[],
                at(T0),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        let list = |status, teams: Option<&[&str]>, agent_id| {
            let q = DiscoveryQuery {
                status,
                teams: teams.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
                agent_id,
            };
            async move {
                store
                    .list_discovered(&q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| d.item.source)
                    .collect::<Vec<_>>()
            }
        };
        // Ordered by agent name, then source.
        assert_eq!(
            list(DiscoveryStatus::All, None, None).await,
            [
                "tls:db:5432",
                "file:/etc/ssl/legacy.pem",
                "file:/etc/ssl/managed.pem"
            ]
        );
        assert_eq!(
            list(DiscoveryStatus::Unmanaged, None, None).await,
            ["tls:db:5432", "file:/etc/ssl/legacy.pem"]
        );
        assert_eq!(
            list(DiscoveryStatus::Managed, None, None).await,
            ["file:/etc/ssl/managed.pem"]
        );
        assert_eq!(
            list(DiscoveryStatus::All, Some(&["db", "other"]), None).await,
            ["tls:db:5432"]
        );
        assert!(list(DiscoveryStatus::All, Some(&[]), None).await.is_empty());
        assert_eq!(
            list(DiscoveryStatus::Unmanaged, Some(&["web"]), Some(web.id)).await,
            ["file:/etc/ssl/legacy.pem"]
        );
        assert!(
            list(DiscoveryStatus::All, Some(&["web"]), Some(db.id))
                .await
                .is_empty()
        );

        let all = store
            .list_discovered(&DiscoveryQuery {
                status: DiscoveryStatus::All,
                ..DiscoveryQuery::default()
            })
            .await
            .unwrap();
        let managed = all
            .iter()
            .find(|d| d.item.source.ends_with("managed.pem"))
            .unwrap();
        assert_eq!(managed.managed, Some((cert.id, 1)));
        let legacy = all
            .iter()
            .find(|d| d.item.source.ends_with("legacy.pem"))
            .unwrap();
        assert_eq!(legacy.managed, None);
        assert_eq!(store.get_discovered(Uuid::now_v7()).await.unwrap(), None);

        // One take-over at a time: a claim holds until released, taken over,
        // or stale.
        let claim = |claimed: i64, stale: i64| {
            store.claim_discovered_take_over(legacy.id, at(claimed), at(stale))
        };
        assert!(claim(T0 + 100, T0).await.unwrap());
        assert!(!claim(T0 + 101, T0).await.unwrap(), "held by the first");
        store.release_discovered_take_over(legacy.id).await.unwrap();
        assert!(claim(T0 + 102, T0).await.unwrap(), "released");
        assert!(
            claim(T0 + 2000, T0 + 1000).await.unwrap(),
            "a claim older than the timeout is a crashed one"
        );
        assert!(matches!(
            store
                .claim_discovered_take_over(Uuid::now_v7(), at(T0), at(T0))
                .await,
            Err(DomainError::NotFound(_))
        ));

        store
            .set_discovered_taken_over(legacy.id, cert.id, &event("discovery.take-over", "x"))
            .await
            .unwrap();
        assert_eq!(
            store
                .get_discovered(legacy.id)
                .await
                .unwrap()
                .unwrap()
                .taken_over_certificate_id,
            Some(cert.id)
        );
        assert!(matches!(
            store
                .set_discovered_taken_over(legacy.id, cert.id, &event("discovery.take-over", "x"))
                .await,
            Err(DomainError::Conflict(_))
        ));
        assert!(matches!(
            store
                .set_discovered_taken_over(
                    Uuid::now_v7(),
                    cert.id,
                    &event("discovery.take-over", "x")
                )
                .await,
            Err(DomainError::NotFound(_))
        ));
        assert_eq!(actions(store, "discovery.take-over").await.len(), 1);
        assert!(
            !claim(T0 + 5000, T0 + 4000).await.unwrap(),
            "taken over: no claim, however old the last one"
        );
        // The next report keeps the take-over record of a source seen before.
        store
            .replace_discovered(
                web.id,
                &[found(
                    "file:/etc/ssl/legacy.pem",
                    &format!("{:064x}", 0xee),
                    None,
                )],
                &[],
                at(T0 + 5),
                &event("agent.discovery", "x"),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .get_discovered(legacy.id)
                .await
                .unwrap()
                .unwrap()
                .taken_over_certificate_id,
            Some(cert.id)
        );
    }
}

/// Runs every suite case as a `#[tokio::test]`; `$open` yields `(store, guard)`
/// where the guard keeps the backend's resources alive for the test.
macro_rules! metadata_store_suite {
    ($open:expr) => {
        metadata_store_suite!(@cases $open;
            ping_answers,
            deployments_assign_follow_versions_record_reports_and_unassign,
            drift_candidates_are_late_uninstalled_and_not_yet_announced,
            fleet_stats_count_agents_and_deployments,
            discovery_replace_keeps_ids_counts_and_removes_unreported,
            discovery_lists_by_status_team_and_agent_and_takes_over_once,
        );
    };
    (@cases $open:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let (store, _guard) = $open;
                crate::suite::$case(&store).await;
            }
        )*
    };
}

mod sqlite_memory {
    metadata_store_suite!(crate::support::sqlite_memory().await);
}

mod sqlite_file {
    metadata_store_suite!(crate::support::sqlite_file().await);
}

mod postgres {
    metadata_store_suite!(crate::support::postgres().await);
}
