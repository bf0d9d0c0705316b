//! Discovery (`DiscoveryStore`): certificates agents found on their hosts,
//! replaced per agent report, listed by status, team and agent, and taken
//! over once.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::DomainError;
use certflow_core::model::AuditQuery;
use certflow_core::ports::MetadataStore;
use serde_json::json;
use uuid::Uuid;

use crate::support::{DAY, T0, actions, at, certificate, create, event, seed_agent, seed_issuer};

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

store_case! {
    /// A report replaces the agent's view: a source seen before keeps its id
    /// and first sighting, a source no longer reported goes, the audit event
    /// carries the counts; a failed audit append writes nothing.
    async fn discovery_replace_keeps_ids_counts_and_removes_unreported<S>(store: &S)
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
}

store_case! {
    /// "Managed" is a fingerprint match with a certflow version; the list
    /// filters by it, by the agent's teams and by agent; a take-over is
    /// recorded once.
    async fn discovery_lists_by_status_team_and_agent_and_takes_over_once<S>(store: &S)
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
