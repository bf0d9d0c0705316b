//! Discovery use cases against the real SQLite store, CA and an enrolled
//! agent: a report is checked whole (each bad field named, nothing stored),
//! and a take-over issues through the request path (policies apply), is
//! limited to the agent's teams and happens once.

use std::sync::Arc;

use certflow_api::agent::{DiscoveredCertificate, DiscoveryReport, TakeOverRequest};
use certflow_core::access::{Permission, Principal, PrincipalKind, Role, TeamScope};
use certflow_core::agents::Agent;
use certflow_core::discovery::Discovered;
use certflow_core::discovery::DiscoveryStatus;
use certflow_core::model::{Actor, AuditQuery, CertificateQuery};
use certflow_core::policy::{IssuancePolicies, IssuancePolicy};
use certflow_core::ports::MetadataStore;
use certflow_core::{DomainError, DomainResult};
use certflow_core::{KeyType, SubjectName};
use certflow_services::agents::{AgentSettings, Agents, TokenEnrolment};
use certflow_services::deployments::{DeploymentSettings, Deployments};
use certflow_services::discovery::Discovery;
use certflow_services::{CertificateView, Services};
use certflow_store::SqliteStore;
use time::OffsetDateTime;

/// Made by `openssl req -x509 -sha1 -newkey rsa:1024` (a legacy certificate).
const LEGACY: &str = include_str!("../../../../testdata/compliance/sha1-rsa1024.pem");
/// Its SHA-256 (`openssl x509 -fingerprint -sha256`).
const LEGACY_SHA256: &str = "d80fcdd6cbd8a7fb580ca96ac51d0e0d08b7f9277b2176e9f8230188656626d3";

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    services: Services,
    agents: Agents,
    deployments: Deployments,
    discovery: Discovery,
    agent: Agent,
    now: OffsetDateTime,
}

/// An agent of teams `payments` and `edge`; team `payments` may only have
/// names under `example.com`.
async fn env() -> Env {
    let mut policies = IssuancePolicies::default();
    policies.teams.insert(
        "payments".into(),
        IssuancePolicy {
            allowed_domains: vec!["example.com".into()],
            ..IssuancePolicy::default()
        },
    );
    let (dir, store, services) = crate::sqlite_services(policies).await;
    let now = OffsetDateTime::now_utc();
    let agents = Agents::new(&services, store.clone(), AgentSettings::default());
    agents.ensure_ca(now).await.unwrap();
    let deployments = Deployments::new(
        &services,
        store.clone(),
        store.clone(),
        DeploymentSettings::default(),
    )
    .with_discovery(store.clone());
    let agent = agents
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
        .unwrap()
        .agent;
    Env {
        _dir: dir,
        store,
        services,
        agents,
        discovery: Discovery::new(&deployments),
        deployments,
        agent,
        now,
    }
}

fn item(source: &str, names: &[&str]) -> DiscoveredCertificate {
    DiscoveredCertificate {
        source: source.into(),
        fingerprint_sha256: LEGACY_SHA256.into(),
        serial: "0a1b".into(),
        subject: "CN=legacy.example.com".into(),
        issuer: "CN=legacy.example.com".into(),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        not_after: OffsetDateTime::now_utc() + time::Duration::days(20),
        certificate_pem: Some(LEGACY.into()),
    }
}

fn person(roles: &[Role], teams: &[&str]) -> Principal {
    Principal {
        subject: "alice".into(),
        kind: PrincipalKind::Person,
        roles: roles.to_vec(),
        teams: teams.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn alice() -> Actor {
    Actor {
        subject: "alice".into(),
        source: None,
    }
}

/// What `principal` lists, composed as the console composes it: the domain
/// decides the teams (one asked for, or the readable ones), the use case lists.
async fn list_as(
    e: &Env,
    principal: &Principal,
    status: DiscoveryStatus,
    agent_id: Option<uuid::Uuid>,
    team: Option<&str>,
) -> DomainResult<Vec<Discovered>> {
    let teams = principal.scope(Permission::CertificateRead, team)?;
    e.discovery.list(&teams, status, agent_id).await
}

/// A take-over by `principal`, composed as the console composes it: the
/// discovery must be visible to it (else `NotFound`), then it must hold
/// `CertificateWrite` on the requested team (else `Forbidden`).
async fn take_over_as(
    e: &Env,
    principal: &Principal,
    actor: &Actor,
    id: uuid::Uuid,
    req: &TakeOverRequest,
    now: OffsetDateTime,
) -> DomainResult<CertificateView> {
    let teams = principal.readable_teams();
    e.discovery.get(&teams, id).await?;
    principal.authorize(Permission::CertificateWrite, Some(&req.team))?;
    e.discovery.take_over(actor, &teams, id, req, now).await
}

async fn count(store: &SqliteStore, action: &str) -> usize {
    store
        .list_audit(&AuditQuery {
            action_prefix: Some(action.into()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .items
        .len()
}

async fn certificates(store: &SqliteStore) -> u64 {
    store
        .list_certificates(&CertificateQuery {
            limit: 10,
            ..CertificateQuery::default()
        })
        .await
        .unwrap()
        .total
}

#[tokio::test]
async fn each_bad_field_refuses_the_whole_report_and_stores_nothing() {
    let e = env().await;
    let good = || item("file:/etc/ssl/legacy.pem", &["legacy.example.com"]);
    type Edit = Box<dyn Fn(&mut DiscoveredCertificate)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "items[1].source",
            Box::new(|i| i.source = "/etc/ssl/x.pem".into()),
        ),
        ("items[1].source", Box::new(|i| i.source = "tls:".into())),
        (
            "items[1].source",
            Box::new(|i| i.source = format!("file:/{}", "a".repeat(1100))),
        ),
        (
            "items[1].source",
            Box::new(|i| i.source = "file:/etc/ssl/legacy.pem".into()),
        ),
        (
            "items[1].fingerprint_sha256",
            Box::new(|i| i.fingerprint_sha256 = i.fingerprint_sha256.to_uppercase()),
        ),
        (
            "items[1].fingerprint_sha256",
            Box::new(|i| i.fingerprint_sha256 = "abc".into()),
        ),
        (
            "items[1].names",
            Box::new(|i| i.names = (0..101).map(|n| format!("n{n}.example.com")).collect()),
        ),
        ("items[1].serial", Box::new(|i| i.serial = "xyz".into())),
        (
            "items[1].certificate_pem",
            Box::new(|i| i.certificate_pem = Some("not pem".into())),
        ),
        (
            "items[1].certificate_pem",
            // A CERTIFICATE block that is not DER.
            Box::new(|i| {
                i.certificate_pem =
                    Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into())
            }),
        ),
        (
            "items[1].certificate_pem",
            // Parses, but is not the certificate the fingerprint names.
            Box::new(|i| i.fingerprint_sha256 = "0".repeat(64)),
        ),
        (
            "items[1].certificate_pem",
            Box::new(|i| i.certificate_pem = Some(format!("{LEGACY}{LEGACY}"))),
        ),
    ];
    for (field, edit) in &cases {
        let mut bad = item("tls:127.0.0.1:443", &["legacy.example.com"]);
        edit(&mut bad);
        let err = e
            .discovery
            .record(
                &e.agent,
                None,
                &DiscoveryReport {
                    items: vec![good(), bad.clone()],
                    unreadable: Vec::new(),
                },
                e.now,
            )
            .await
            .unwrap_err();
        let DomainError::Invalid(errors) = err else {
            panic!("{field}: {err:?}");
        };
        assert!(
            errors.iter().any(|f| f.field == *field),
            "{field}: {errors:?}"
        );
    }
    let too_many = DiscoveryReport {
        items: (0..2001)
            .map(|n| item(&format!("file:/c/{n}.pem"), &[]))
            .collect(),
        unreadable: Vec::new(),
    };
    let DomainError::Invalid(errors) = e
        .discovery
        .record(&e.agent, None, &too_many, e.now)
        .await
        .unwrap_err()
    else {
        panic!("too many items accepted");
    };
    assert_eq!(errors[0].field, "items");
    // Unreadable sources are sources too; one both read and unreadable is a contradiction.
    for (unreadable, field) in [
        (vec!["/etc/ssl".to_owned()], "unreadable[0]"),
        (
            vec!["tls:a:443".to_owned(), good().source.clone()],
            "unreadable[1]",
        ),
    ] {
        let report = DiscoveryReport {
            items: vec![good()],
            unreadable,
        };
        let DomainError::Invalid(errors) = e
            .discovery
            .record(&e.agent, None, &report, e.now)
            .await
            .unwrap_err()
        else {
            panic!("{field}: bad unreadable source accepted");
        };
        assert_eq!(errors[0].field, field, "{errors:?}");
    }
    // Nothing stored, nothing audited.
    assert!(
        e.discovery
            .list(&TeamScope::All, DiscoveryStatus::All, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(count(&e.store, "agent.discovery").await, 0);

    // The good report alone is stored; PEM absent is fine too.
    let mut no_pem = item("tls:127.0.0.1:443", &["legacy.example.com"]);
    no_pem.certificate_pem = None;
    let sync = e
        .discovery
        .record(
            &e.agent,
            None,
            &DiscoveryReport {
                items: vec![good(), no_pem],
                unreadable: Vec::new(),
            },
            e.now,
        )
        .await
        .unwrap();
    assert_eq!((sync.items, sync.new, sync.removed), (2, 2, 0));
    let listed = e
        .discovery
        .list(&TeamScope::All, DiscoveryStatus::Unmanaged, None)
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    let with_pem = listed
        .iter()
        .find(|d| d.item.source.starts_with("file:"))
        .unwrap();
    assert_eq!(
        with_pem.item.certificate_der.as_deref(),
        Some(&certflow_pki::parse_pem_certs("x", LEGACY).unwrap()[0][..])
    );
    // Team scope: a viewer of another team sees nothing.
    assert!(
        list_as(
            &e,
            &person(&[Role::Viewer], &["other"]),
            DiscoveryStatus::All,
            None,
            None
        )
        .await
        .unwrap()
        .is_empty()
    );
    assert_eq!(
        list_as(
            &e,
            &person(&[Role::Viewer], &["edge"]),
            DiscoveryStatus::All,
            None,
            None
        )
        .await
        .unwrap()
        .len(),
        2
    );
    // One team asked for: only if the caller may read it.
    let viewer = person(&[Role::Viewer], &["edge"]);
    assert_eq!(
        list_as(&e, &viewer, DiscoveryStatus::All, None, Some("edge"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(matches!(
        list_as(&e, &viewer, DiscoveryStatus::All, None, Some("payments")).await,
        Err(DomainError::Forbidden(_))
    ));
}

#[tokio::test]
async fn take_over_issues_through_policy_within_the_agents_teams_once() {
    let e = env().await;
    e.discovery
        .record(
            &e.agent,
            Some("192.0.2.9".into()),
            &DiscoveryReport {
                items: vec![
                    item("file:/etc/ssl/legacy.pem", &["legacy.example.com"]),
                    item("tls:127.0.0.1:8443", &["intranet.corp"]),
                ],
                unreadable: Vec::new(),
            },
            e.now,
        )
        .await
        .unwrap();
    let rows = e
        .discovery
        .list(&TeamScope::All, DiscoveryStatus::Unmanaged, None)
        .await
        .unwrap();
    let legacy = rows
        .iter()
        .find(|d| d.item.source.starts_with("file:"))
        .unwrap();
    let corp = rows
        .iter()
        .find(|d| d.item.source.starts_with("tls:"))
        .unwrap();
    let req = |team: &str| TakeOverRequest {
        team: team.into(),
        issuer: None,
        name: None,
    };
    let operator = person(&[Role::Operator], &["payments", "edge", "other"]);

    // A team the agent is not in.
    let err = take_over_as(&e, &operator, &alice(), legacy.id, &req("other"), e.now)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DomainError::Invalid(f) if f[0].field == "team"),
        "{err:?}"
    );
    // A viewer may not.
    let err = take_over_as(
        &e,
        &person(&[Role::Viewer], &["payments"]),
        &alice(),
        legacy.id,
        &req("payments"),
        e.now,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DomainError::Forbidden(_)), "{err:?}");
    // The team's policy refuses names outside example.com.
    let err = take_over_as(&e, &operator, &alice(), corp.id, &req("payments"), e.now)
        .await
        .unwrap_err();
    let DomainError::Invalid(fields) = &err else {
        panic!("{err:?}");
    };
    assert!(
        fields.iter().any(|f| f.field.starts_with("names")),
        "{fields:?}"
    );
    assert_eq!(certificates(&e.store).await, 0);
    assert_eq!(count(&e.store, "discovery.take-over").await, 0);

    // Two take-overs at once (two people clicking): one issues, the other
    // is refused before issuing anything.
    // Under different display names, so no name conflict stands in for the claim.
    let actor = alice();
    let named = |name: &str| TakeOverRequest {
        name: Some(name.to_owned()),
        ..req("payments")
    };
    let (one, two) = (named("legacy-a"), named("legacy-b"));
    let (first, second) = tokio::join!(
        take_over_as(&e, &operator, &actor, legacy.id, &one, e.now),
        take_over_as(&e, &operator, &actor, legacy.id, &two, e.now),
    );
    let (view, lost) = match (first, second) {
        (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
        other => panic!("exactly one take-over should win: {other:?}"),
    };
    assert!(matches!(lost, DomainError::Conflict(_)), "{lost:?}");
    assert_eq!(certificates(&e.store).await, 1);
    assert_eq!(view.certificate.team, "payments");
    assert_eq!(
        view.certificate.names,
        [SubjectName::Dns("legacy.example.com".into())]
    );
    // RSA-1024 is not a key type certflow generates: the default is used.
    assert_eq!(view.certificate.key_type, KeyType::EcdsaP256);
    let assigned = e.deployments.assignments(e.agent.id).await.unwrap();
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].certificate_id, view.certificate.id);
    let row = e
        .discovery
        .list(&TeamScope::All, DiscoveryStatus::All, None)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == legacy.id)
        .unwrap();
    assert_eq!(row.taken_over_certificate_id, Some(view.certificate.id));
    assert_eq!(count(&e.store, "discovery.take-over").await, 1);

    // Twice: a conflict, and no second certificate.
    let err = take_over_as(&e, &operator, &alice(), legacy.id, &req("edge"), e.now)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::Conflict(_)), "{err:?}");
    assert_eq!(certificates(&e.store).await, 1);

    // A discovered certificate certflow manages cannot be taken over.
    let versions = e.store.list_versions(view.certificate.id).await.unwrap();
    let mut managed = item("tls:127.0.0.1:443", &["legacy.example.com"]);
    managed.fingerprint_sha256 = versions[0].fingerprint_sha256.clone();
    managed.certificate_pem = None;
    e.discovery
        .record(
            &e.agent,
            None,
            &DiscoveryReport {
                items: vec![managed],
                unreadable: Vec::new(),
            },
            e.now,
        )
        .await
        .unwrap();
    let row = e
        .discovery
        .list(&TeamScope::All, DiscoveryStatus::Managed, None)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(row.managed, Some((view.certificate.id, 1)));
    let err = take_over_as(&e, &operator, &alice(), row.id, &req("edge"), e.now)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::Conflict(_)), "{err:?}");
    // Unknown, and invisible to a caller outside the agent's teams.
    let err = take_over_as(
        &e,
        &person(&[Role::Operator], &["other"]),
        &alice(),
        row.id,
        &req("other"),
        e.now,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DomainError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn unmanaged_discoveries_are_rated_in_the_compliance_report() {
    let e = env().await;
    let issued = e
        .services
        .create_certificate(
            &alice(),
            &certflow_api::CreateCertificateRequest {
                team: "edge".into(),
                names: vec!["www.example.com".into()],
                ..Default::default()
            },
            e.now,
        )
        .await
        .unwrap();
    let issuer = e.services.issuers().await.unwrap().remove(0);
    // Legacy: SHA-1, RSA-1024, self-signed, expiring in 20 days.
    let legacy = item("file:/etc/ssl/legacy.pem", &["legacy.example.com"]);
    // No leaf sent, issued by certflow's CA (by DN), far from expiry.
    let mut ours = item("tls:127.0.0.1:8443", &["other.example.com"]);
    ours.certificate_pem = None;
    ours.fingerprint_sha256 = "ab".repeat(32);
    ours.issuer = issuer.subject.clone();
    ours.not_after = e.now + time::Duration::days(200);
    // A certflow version: managed, not rated as a discovery.
    let mut managed = ours.clone();
    managed.source = "tls:127.0.0.1:443".into();
    managed.fingerprint_sha256 = issued.versions[0].fingerprint_sha256.clone();
    e.discovery
        .record(
            &e.agent,
            None,
            &DiscoveryReport {
                items: vec![legacy, ours, managed],
                unreadable: Vec::new(),
            },
            e.now,
        )
        .await
        .unwrap();

    let report = e
        .services
        .compliance_report(Some((&e.deployments, &e.agents)), None, 30, e.now)
        .await
        .unwrap();
    assert_eq!(report.summary.discovered, 2);
    assert_eq!(report.summary.certificates, 3);
    assert_eq!(report.discovered.len(), 1, "{:?}", report.discovered);
    let d = &report.discovered[0];
    assert_eq!(d.source, "file:/etc/ssl/legacy.pem");
    assert_eq!(d.agent_name, "web-01");
    let rules: Vec<String> = d
        .findings
        .iter()
        .map(|f| format!("{}:{}", f.rule, f.severity.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            "weak-key:critical",
            "weak-signature:critical",
            "expiring:warning",
            "unknown-issuer:warning"
        ]
    );
    assert_eq!(report.summary.by_rule["weak-signature"], 1);
    // The JSON keeps its fields and adds `discovered`.
    let json = serde_json::to_value(&report).unwrap();
    for k in [
        "generated_at",
        "expiring_within_days",
        "summary",
        "items",
        "discovered",
    ] {
        assert!(json.get(k).is_some(), "{k}");
    }
    // Team scope: the agent is in payments and edge, not in "other".
    let scoped = e
        .services
        .compliance_report(
            Some((&e.deployments, &e.agents)),
            Some(&["other".to_owned()]),
            30,
            e.now,
        )
        .await
        .unwrap();
    assert!(scoped.discovered.is_empty());
    assert_eq!(scoped.summary.discovered, 0);

    // Once taken over, the replacement is what certflow rates.
    take_over_as(
        &e,
        &person(&[Role::Admin], &[]),
        &alice(),
        list_as(
            &e,
            &person(&[Role::Admin], &[]),
            DiscoveryStatus::Unmanaged,
            None,
            None,
        )
        .await
        .unwrap()
        .iter()
        .find(|d| d.item.source == "file:/etc/ssl/legacy.pem")
        .unwrap()
        .id,
        &TakeOverRequest {
            team: "payments".into(),
            issuer: None,
            name: None,
        },
        e.now,
    )
    .await
    .unwrap();
    let report = e
        .services
        .compliance_report(Some((&e.deployments, &e.agents)), None, 30, e.now)
        .await
        .unwrap();
    assert!(report.discovered.is_empty(), "{:?}", report.discovered);
    assert_eq!(report.summary.discovered, 1);
}
