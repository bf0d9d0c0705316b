//! The ACME use cases over a real SQLite store, blob store, sealer and
//! internal CA. Expectations come from RFC 8555 (problem types, statuses,
//! key authorization), RFC 9773 (renewal window), RFC 8738 (no dns-01 for
//! IP addresses) and issue 15 (EAB bound to teams, team policy, label
//! `acme_account`, certflow does not renew ACME certificates itself).
//! The challenge validator is the port's only double: it plays a client
//! that publishes the RFC 8555 §8.1 key authorization, or one that does not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use certflow_blob::ObjectBlobStore;
use certflow_core::acme::*;
use certflow_core::model::{Actor, CertificateStatus, KeyType};
use certflow_core::policy::{IssuancePolicies, IssuancePolicy};
use certflow_core::ports::MetadataStore;
use certflow_core::{SubjectName, names::parse_name};
use certflow_pki::PrivateKey;
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_store::SqliteStore;
use serde_json::json;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{AcmeService, AcmeSettings, NewAccount, RevokeBy, ari_cert_id};
use crate::{CaSettings, Services};

struct Env {
    acme: AcmeService,
    services: Services,
    store: Arc<SqliteStore>,
    issuer: certflow_core::model::Issuer,
    _dir: tempfile::TempDir,
}

async fn env(settings: AcmeSettings) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        vec![],
    )));
    let policies = IssuancePolicies {
        teams: [(
            "web".to_owned(),
            IssuancePolicy {
                allowed_domains: vec!["web.example.com".into()],
                allow_ip_addresses: Some(true),
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    };
    let services = Services::new(store.clone(), blobs, sealer, None)
        .with_notifications(store.clone())
        .with_issuance_policies(policies.compile().unwrap());
    services
        .ensure_ca(
            &CaSettings {
                name: "certflow".into(),
                key_type: KeyType::EcdsaP256,
                root_validity_days: 3650,
                intermediate_validity_days: 1825,
            },
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    let acme = AcmeService::new(&services, store.clone(), settings);
    let issuer = acme.issuer_by_name("certflow").await.unwrap();
    Env {
        acme,
        services,
        store,
        issuer,
        _dir: dir,
    }
}

fn operator() -> Actor {
    Actor {
        subject: "alice".into(),
        source: None,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
}

/// A key and its JWK (public members), as a client would hold.
fn client_key() -> (PrivateKey, serde_json::Value) {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let spki = key.public_key_der();
    let (_, parsed) = SubjectPublicKeyInfo::from_der(&spki).unwrap();
    let Ok(PublicKey::EC(point)) = parsed.parsed() else {
        panic!("not EC")
    };
    let data = point.data();
    let jwk = json!({"kty": "EC", "crv": "P-256",
                     "x": B64URL.encode(&data[1..33]), "y": B64URL.encode(&data[33..65])});
    (key, jwk)
}

fn new_account(jwk: &serde_json::Value, eab: Option<&str>) -> NewAccount {
    NewAccount {
        jwk: jwk.clone(),
        // Any unique text stands in for the RFC 7638 thumbprint here.
        thumbprint: format!("tp-{}", jwk["x"].as_str().unwrap()),
        contact: vec!["mailto:ops@web.example.com".into()],
        only_return_existing: false,
        eab_key_id: eab.map(str::to_owned),
    }
}

async fn web_account(e: &Env) -> (AcmeAccount, PrivateKey) {
    let created = e
        .acme
        .create_eab_key(&operator(), "web", now())
        .await
        .unwrap();
    let (key, jwk) = client_key();
    let (account, fresh) = e
        .acme
        .new_account(new_account(&jwk, Some(&created.key.key_id)), None, now())
        .await
        .unwrap();
    assert!(fresh);
    (account, key)
}

fn csr(names: &[&str], key: &PrivateKey) -> Vec<u8> {
    let names: Vec<SubjectName> = names.iter().map(|n| parse_name(n).unwrap()).collect();
    certflow_pki::build_csr(key, &names).unwrap()
}

/// A client that publishes exactly `token.thumbprint` (RFC 8555 §8.1) for
/// the account's thumbprint, or one whose response is wrong.
struct Client {
    thumbprint: String,
    publishes: AtomicBool,
}

#[async_trait]
impl ChallengeValidator for Client {
    async fn validate(
        &self,
        _kind: ChallengeType,
        _identifier: &AcmeIdentifier,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeValidationError> {
        if self.publishes.load(Ordering::SeqCst)
            && key_authorization == format!("{token}.{}", self.thumbprint)
        {
            Ok(())
        } else {
            Err(AcmeValidationError {
                problem_type: "incorrectResponse",
                detail: "the response did not match".into(),
            })
        }
    }
}

async fn validated_order(e: &Env, account: &AcmeAccount, names: &[&str]) -> AcmeOrder {
    let ids = names.iter().map(|n| AcmeIdentifier::dns(*n)).collect();
    let order = e
        .acme
        .new_order(account, &e.issuer, ids, None, None, now())
        .await
        .unwrap();
    let client = Client {
        thumbprint: account.thumbprint.clone(),
        publishes: AtomicBool::new(true),
    };
    for authz_id in &order.authorization_ids {
        let a = e
            .acme
            .authorization(account, *authz_id, now())
            .await
            .unwrap();
        if a.status == AuthzStatus::Valid {
            continue;
        }
        let http = a
            .challenges
            .iter()
            .find(|c| c.kind == ChallengeType::Http01)
            .unwrap();
        let (c, _) = e
            .acme
            .respond_challenge(account, http.id, None, now())
            .await
            .unwrap();
        assert_eq!(
            c.status,
            ChallengeStatus::Processing,
            "validated later, by a worker"
        );
    }
    e.acme
        .run_due_validations(&client, 10, now())
        .await
        .unwrap();
    e.acme.order(account, order.id, now()).await.unwrap()
}

#[tokio::test]
async fn accounts_need_an_eab_key_of_a_team_used_once() {
    let e = env(AcmeSettings::default()).await;
    let (_, jwk) = client_key();
    let err = e
        .acme
        .new_account(new_account(&jwk, None), None, now())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::ExternalAccountRequired);

    let created = e
        .acme
        .create_eab_key(&operator(), "web", now())
        .await
        .unwrap();
    assert_eq!(B64URL.decode(&created.hmac_key).unwrap().len(), 32);
    let (_, hmac) = e.acme.eab_key(&created.key.key_id, now()).await.unwrap();
    assert_eq!(B64URL.encode(hmac.as_slice()), created.hmac_key);
    // Stored sealed: the HMAC key is nowhere in the row.
    assert!(!created.key.hmac_sealed.contains(&created.hmac_key));

    let (account, fresh) = e
        .acme
        .new_account(new_account(&jwk, Some(&created.key.key_id)), None, now())
        .await
        .unwrap();
    assert!(fresh);
    assert_eq!(account.team, "web");
    // The same key again is the same account (RFC 8555 §7.3.1).
    let (again, fresh) = e
        .acme
        .new_account(new_account(&jwk, None), None, now())
        .await
        .unwrap();
    assert_eq!((again.id, fresh), (account.id, false));
    // The EAB key bound it: another account is refused with it.
    let (_, other) = client_key();
    let err = e
        .acme
        .new_account(new_account(&other, Some(&created.key.key_id)), None, now())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::Unauthorized);
    let mut lookup = new_account(&other, None);
    lookup.only_return_existing = true;
    let err = e.acme.new_account(lookup, None, now()).await.unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::AccountDoesNotExist);

    // A revoked key binds nothing.
    let revoked = e
        .acme
        .create_eab_key(&operator(), "web", now())
        .await
        .unwrap();
    e.acme
        .revoke_eab_key(&operator(), &revoked.key.key_id, now())
        .await
        .unwrap();
    let err = e
        .acme
        .eab_key(&revoked.key.key_id, now())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::Unauthorized);
    let listed = e.acme.list_eab_keys(Some(&["web".into()])).await.unwrap();
    assert_eq!(listed.len(), 2);

    // Deactivated: refused from then on.
    let gone = e
        .acme
        .update_account(&account, None, true, None, now())
        .await
        .unwrap();
    assert_eq!(gone.status, AccountStatus::Deactivated);
    assert_eq!(
        e.acme.account(account.id).await.unwrap_err().kind,
        AcmeErrorKind::Unauthorized
    );
}

#[tokio::test]
async fn optional_eab_puts_accounts_in_the_default_team() {
    let e = env(AcmeSettings {
        eab_required: false,
        default_team: Some("web".into()),
        ..Default::default()
    })
    .await;
    let (_, jwk) = client_key();
    let (account, _) = e
        .acme
        .new_account(new_account(&jwk, None), None, now())
        .await
        .unwrap();
    assert_eq!(account.team, "web");
    let mut bad = new_account(&client_key().1, None);
    bad.contact = vec!["tel:+1555".into()];
    assert_eq!(
        e.acme.new_account(bad, None, now()).await.unwrap_err().kind,
        AcmeErrorKind::UnsupportedContact
    );
}

#[tokio::test]
async fn names_outside_the_team_policy_are_rejected_identifiers_naming_the_rule() {
    let e = env(AcmeSettings::default()).await;
    let (account, _) = web_account(&e).await;
    let ids = vec![
        AcmeIdentifier::dns("a.web.example.com"),
        AcmeIdentifier::dns("evil.other.example.com"),
    ];
    let err = e
        .acme
        .new_order(&account, &e.issuer, ids, None, None, now())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::RejectedIdentifier);
    assert_eq!(err.subproblems.len(), 1);
    assert_eq!(
        err.subproblems[0].identifier,
        Some(AcmeIdentifier::dns("evil.other.example.com"))
    );
    assert!(
        err.detail.contains("policy.teams.web.allowed_domains"),
        "{}",
        err.detail
    );
    let doc = err.to_problem();
    assert_eq!(doc["type"], "urn:ietf:params:acme:error:rejectedIdentifier");

    let bad = e
        .acme
        .new_order(
            &account,
            &e.issuer,
            vec![AcmeIdentifier::dns("*.*.web.example.com")],
            None,
            None,
            now(),
        )
        .await
        .unwrap_err();
    assert_eq!(bad.kind, AcmeErrorKind::RejectedIdentifier);
}

#[tokio::test]
async fn wildcards_only_through_dns_01_and_ip_addresses_never_through_it() {
    let e = env(AcmeSettings::default()).await;
    let (account, _) = web_account(&e).await;
    let ids = vec![
        AcmeIdentifier::dns("*.web.example.com"),
        AcmeIdentifier::ip("127.0.0.1"),
    ];
    let order = e
        .acme
        .new_order(&account, &e.issuer, ids, None, None, now())
        .await
        .unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    let wild = e
        .acme
        .authorization(&account, order.authorization_ids[0], now())
        .await
        .unwrap();
    assert!(wild.wildcard);
    assert_eq!(wild.identifier, AcmeIdentifier::dns("web.example.com"));
    assert_eq!(
        wild.challenges.iter().map(|c| c.kind).collect::<Vec<_>>(),
        vec![ChallengeType::Dns01]
    );
    let ip = e
        .acme
        .authorization(&account, order.authorization_ids[1], now())
        .await
        .unwrap();
    assert!(ip.challenges.iter().all(|c| c.kind != ChallengeType::Dns01));
    assert!(
        ip.challenges
            .iter()
            .all(|c| B64URL.decode(&c.token).unwrap().len() >= 16)
    );
}

#[tokio::test]
async fn order_validate_finalize_download_revoke() {
    let e = env(AcmeSettings::default()).await;
    let (account, account_key) = web_account(&e).await;
    let names = ["www.web.example.com", "api.web.example.com"];
    let ids: Vec<AcmeIdentifier> = names.iter().map(|n| AcmeIdentifier::dns(*n)).collect();
    let pending = e
        .acme
        .new_order(&account, &e.issuer, ids, None, None, now())
        .await
        .unwrap();
    let cert_key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let err = e
        .acme
        .finalize(&account, pending.id, &csr(&names, &cert_key), None, now())
        .await
        .unwrap_err();
    assert_eq!((err.kind, err.status), (AcmeErrorKind::OrderNotReady, 403));

    let ready = validated_order(&e, &account, &names).await;
    assert_eq!(
        ready.status,
        OrderStatus::Ready,
        "authorizations reused for the second order"
    );
    let order = e.acme.order(&account, pending.id, now()).await.unwrap();
    assert_eq!(order.status, OrderStatus::Ready);

    let err = e
        .acme
        .finalize(
            &account,
            order.id,
            &csr(&names[..1], &cert_key),
            None,
            now(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::BadCsr);
    let err = e
        .acme
        .finalize(&account, order.id, &csr(&names, &account_key), None, now())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::BadCsr);
    assert!(err.detail.contains("account key"), "{}", err.detail);

    let valid = e
        .acme
        .finalize(&account, order.id, &csr(&names, &cert_key), None, now())
        .await
        .unwrap();
    assert_eq!(valid.status, OrderStatus::Valid);
    let cert = e
        .services
        .certificate(valid.certificate_id.unwrap())
        .await
        .unwrap();
    assert_eq!(cert.certificate.team, "web");
    assert_eq!(
        cert.certificate.labels.get("acme_account"),
        Some(&account.id.to_string())
    );
    assert!(
        !cert.certificate.managed,
        "the ACME client renews it, not certflow"
    );
    let pem = e.acme.certificate_chain(&account, order.id).await.unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(
        pem.matches("BEGIN CERTIFICATE").count() >= 2,
        "leaf and chain"
    );
    let leaf = certflow_pki::parse_pem_certs("c", &pem).unwrap().remove(0);

    // Renewal information: the policy's window, then "renew now" ends it at once.
    let ari = ari_cert_id(&leaf).unwrap();
    let info = e.acme.renewal_info(&ari, now()).await.unwrap();
    let v = &cert.versions[0];
    assert!(info.window.start > v.not_before && info.window.end < v.not_after);
    let asked = now();
    assert!(
        e.acme
            .renew_now(&operator(), cert.certificate.id, asked)
            .await
            .unwrap()
    );
    let info = e.acme.renewal_info(&ari, now()).await.unwrap();
    assert!(info.window.end <= asked && info.window.start <= info.window.end);

    // `replaces` (RFC 9773 §5): a certificate of this account sharing an
    // identifier with the new order; not another account's, not unrelated names.
    let (stranger, _) = web_account(&e).await;
    let same = vec![AcmeIdentifier::dns(names[0])];
    e.acme
        .new_order(
            &account,
            &e.issuer,
            same.clone(),
            Some(ari.clone()),
            None,
            now(),
        )
        .await
        .unwrap();
    let err = e
        .acme
        .new_order(&stranger, &e.issuer, same, Some(ari.clone()), None, now())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::Malformed, "{}", err.detail);
    let other = vec![AcmeIdentifier::dns("other.web.example.com")];
    let err = e
        .acme
        .new_order(&account, &e.issuer, other, Some(ari.clone()), None, now())
        .await
        .unwrap_err();
    assert!(
        err.detail.contains("shares no identifier"),
        "{}",
        err.detail
    );

    // Revocation: another account may not; reason 7 does not exist; then once.
    let err = e
        .acme
        .revoke(RevokeBy::Account(&stranger), &leaf, None, None, now())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::Unauthorized);
    let err = e
        .acme
        .revoke(RevokeBy::Account(&account), &leaf, Some(7), None, now())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::BadRevocationReason);
    e.acme
        .revoke(RevokeBy::Account(&account), &leaf, Some(1), None, now())
        .await
        .unwrap();
    let err = e
        .acme
        .revoke(RevokeBy::CertificateKey, &leaf, None, None, now())
        .await
        .unwrap_err();
    assert_eq!(err.kind, AcmeErrorKind::AlreadyRevoked);
    let after = e.services.certificate(cert.certificate.id).await.unwrap();
    assert!(after.versions[0].revoked_at.is_some());

    // The client renews (a new order for the same names, no `replaces`):
    // the inventory keeps one active entry, the one before archived; a
    // revoked one stays revoked.
    let mut issued = Vec::new();
    for _ in 0..2 {
        let again = validated_order(&e, &account, &names).await;
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let valid = e
            .acme
            .finalize(&account, again.id, &csr(&names, &key), None, now())
            .await
            .unwrap();
        issued.push(valid.certificate_id.unwrap());
    }
    let status = |id| {
        let services = e.services.clone();
        async move { services.certificate(id).await.unwrap().certificate.status }
    };
    assert_eq!(
        status(cert.certificate.id).await,
        CertificateStatus::Revoked
    );
    assert_eq!(status(issued[0]).await, CertificateStatus::Archived);
    assert_eq!(status(issued[1]).await, CertificateStatus::Active);
}

#[tokio::test]
async fn failed_validations_retry_with_backoff_then_invalidate_the_order() {
    let settings = AcmeSettings {
        validation_attempts: 2,
        ..Default::default()
    };
    let e = env(settings).await;
    let (account, _) = web_account(&e).await;
    let order = e
        .acme
        .new_order(
            &account,
            &e.issuer,
            vec![AcmeIdentifier::dns("x.web.example.com")],
            None,
            None,
            now(),
        )
        .await
        .unwrap();
    let a = e
        .acme
        .authorization(&account, order.authorization_ids[0], now())
        .await
        .unwrap();
    let http = a.challenges[0].id;
    e.acme
        .respond_challenge(&account, http, None, now())
        .await
        .unwrap();
    let client = Client {
        thumbprint: account.thumbprint.clone(),
        publishes: AtomicBool::new(false),
    };
    let t0 = now();
    assert_eq!(
        e.acme.run_due_validations(&client, 10, t0).await.unwrap(),
        1
    );
    let (c, _) = e.acme.challenge(&account, http, t0).await.unwrap();
    assert_eq!(c.status, ChallengeStatus::Processing);
    assert_eq!(
        c.error.as_ref().unwrap()["type"],
        "urn:ietf:params:acme:error:incorrectResponse"
    );
    let retry_at = c.next_attempt_at.unwrap();
    assert!(retry_at > t0, "backoff");
    assert_eq!(
        e.acme.run_due_validations(&client, 10, t0).await.unwrap(),
        0,
        "not due yet"
    );
    assert_eq!(
        e.acme
            .run_due_validations(&client, 10, retry_at)
            .await
            .unwrap(),
        1
    );
    let (c, a) = e.acme.challenge(&account, http, retry_at).await.unwrap();
    assert_eq!(
        (c.status, a.status),
        (ChallengeStatus::Invalid, AuthzStatus::Invalid)
    );
    let order = e.acme.order(&account, order.id, retry_at).await.unwrap();
    assert_eq!(order.status, OrderStatus::Invalid);
    assert_eq!(
        order.error.unwrap()["subproblems"][0]["identifier"]["value"],
        "x.web.example.com"
    );
}

#[tokio::test]
async fn nonces_are_accepted_once_and_orders_expire() {
    let e = env(AcmeSettings::default()).await;
    let n = e.acme.new_nonce(now()).await.unwrap();
    e.acme.consume_nonce(&n, now()).await.unwrap();
    assert_eq!(
        e.acme.consume_nonce(&n, now()).await.unwrap_err().kind,
        AcmeErrorKind::BadNonce
    );

    let (account, _) = web_account(&e).await;
    let order = e
        .acme
        .new_order(
            &account,
            &e.issuer,
            vec![AcmeIdentifier::dns("y.web.example.com")],
            None,
            None,
            now(),
        )
        .await
        .unwrap();
    let later = now() + Duration::days(2);
    assert_eq!(
        e.acme
            .order(&account, order.id, later)
            .await
            .unwrap()
            .status,
        OrderStatus::Invalid
    );
    let purged = e.acme.purge_expired(later).await.unwrap();
    assert!(purged.orders >= 1 && purged.authorizations >= 1);
    let err = e.acme.order(&account, order.id, later).await.unwrap_err();
    assert_eq!(err.status, 404);
    // Someone else's order is as unknown as a missing one.
    let (other, _) = web_account(&e).await;
    let mine = e
        .acme
        .new_order(
            &account,
            &e.issuer,
            vec![AcmeIdentifier::dns("z.web.example.com")],
            None,
            None,
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        e.acme
            .order(&other, mine.id, now())
            .await
            .unwrap_err()
            .status,
        404
    );
    assert!(e.store.ping().await.is_ok());
}
