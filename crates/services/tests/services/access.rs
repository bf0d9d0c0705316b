//! `Services::certificate_for`, the one "load a certificate and check its
//! team": an unknown id is `NotFound` for everyone (admins included), another
//! team's certificate `Forbidden`, and the roles' rules come from the domain.

use certflow_core::DomainError;
use certflow_core::access::{Permission, Principal, PrincipalKind, Role};
use certflow_core::model::Actor;
use certflow_core::policy::IssuancePolicies;

fn person(roles: &[Role], teams: &[&str]) -> Principal {
    Principal {
        subject: "bob".into(),
        kind: PrincipalKind::Person,
        roles: roles.to_vec(),
        teams: teams.iter().map(|t| (*t).to_owned()).collect(),
    }
}

#[tokio::test]
async fn certificate_for_is_not_found_then_forbidden() {
    let (_dir, _store, services) = crate::sqlite_services(IssuancePolicies::default()).await;
    let id = services
        .create_certificate(
            &Actor::system(),
            &certflow_api::CreateCertificateRequest {
                team: "edge".into(),
                names: vec!["www.example.com".into()],
                ..Default::default()
            },
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap()
        .certificate
        .id;

    let operator = person(&[Role::Operator], &["edge"]);
    let found = services
        .certificate_for(&operator, Permission::KeyDownload, id)
        .await
        .unwrap();
    assert_eq!((found.id, found.team.as_str()), (id, "edge"));
    for (who, permission) in [
        (
            person(&[Role::Viewer], &["edge"]),
            Permission::CertificateWrite,
        ),
        (person(&[Role::Viewer], &["edge"]), Permission::KeyDownload),
        (
            person(&[Role::Operator], &["web"]),
            Permission::CertificateRead,
        ),
    ] {
        let err = services
            .certificate_for(&who, permission, id)
            .await
            .unwrap_err();
        assert!(matches!(err, DomainError::Forbidden(_)), "{who:?} {err:?}");
    }
    for who in [
        operator,
        person(&[Role::Admin], &[]),
        Principal::bootstrap(),
    ] {
        let err = services
            .certificate_for(&who, Permission::CertificateRead, uuid::Uuid::now_v7())
            .await
            .unwrap_err();
        assert!(matches!(err, DomainError::NotFound(_)), "{who:?} {err:?}");
    }
}
