//! The ACME server's state (`AcmeStore`, issue 15): what RFC 8555 and the
//! issue ask of the database every replica shares — an EAB key binds one
//! account of its team, a nonce is accepted once, an order obeys the
//! open-order bound, a challenge is validated by one worker at a time and
//! its outcome moves the authorization, expired state is purged.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::DomainError;
use certflow_core::acme::{
    AccountStatus, AcmeAccount, AcmeAuthorization, AcmeCertificate, AcmeChallenge, AcmeIdentifier,
    AcmeOrder, AcmeStore, AuthzStatus, ChallengeStatus, ChallengeType, EabKey, OrderStatus,
    ValidationOutcome,
};
use certflow_core::ports::MetadataStore;
use serde_json::json;
use uuid::Uuid;

use crate::support::{DAY, T0, actions, assert_conflict, assert_not_found, at, event, warm_up};

fn eab(key_id: &str, team: &str) -> EabKey {
    EabKey {
        key_id: key_id.into(),
        team: team.into(),
        hmac_sealed: "sealed:opaque".into(),
        created_by: "alice".into(),
        created_at: at(T0),
        expires_at: at(T0 + DAY),
        revoked_at: None,
        account_id: None,
    }
}

fn account(thumbprint: &str, team: &str, eab_key_id: Option<&str>) -> AcmeAccount {
    AcmeAccount {
        id: Uuid::now_v7(),
        team: team.into(),
        jwk: json!({"kty": "EC", "crv": "P-256", "x": thumbprint, "y": "y"}),
        thumbprint: thumbprint.into(),
        status: AccountStatus::Valid,
        contact: vec!["mailto:ops@example.com".into()],
        eab_key_id: eab_key_id.map(str::to_owned),
        created_at: at(T0),
        updated_at: at(T0),
    }
}

fn authz(account_id: Uuid, name: &str, wildcard: bool, expires: i64) -> AcmeAuthorization {
    let id = Uuid::now_v7();
    let challenge = |kind| AcmeChallenge {
        id: Uuid::now_v7(),
        authz_id: id,
        kind,
        token: format!("token-{}", Uuid::now_v7().simple()),
        status: ChallengeStatus::Pending,
        attempts: 0,
        next_attempt_at: None,
        lease_until: None,
        error: None,
        validated_at: None,
    };
    let kinds: &[ChallengeType] = if wildcard {
        &[ChallengeType::Dns01]
    } else {
        &[
            ChallengeType::Http01,
            ChallengeType::Dns01,
            ChallengeType::TlsAlpn01,
        ]
    };
    AcmeAuthorization {
        id,
        account_id,
        identifier: AcmeIdentifier::dns(name),
        wildcard,
        status: AuthzStatus::Pending,
        expires: at(expires),
        challenges: kinds.iter().map(|k| challenge(*k)).collect(),
        created_at: at(T0),
    }
}

fn order(account_id: Uuid, authzs: &[&AcmeAuthorization], created: i64) -> AcmeOrder {
    AcmeOrder {
        id: Uuid::now_v7(),
        account_id,
        issuer_id: Uuid::now_v7(),
        status: OrderStatus::Pending,
        identifiers: authzs.iter().map(|a| a.identifier.clone()).collect(),
        authorization_ids: authzs.iter().map(|a| a.id).collect(),
        expires: at(created + DAY),
        certificate_id: None,
        certificate_version: None,
        error: None,
        replaces: None,
        created_at: at(created),
        updated_at: at(created),
    }
}

async fn seed_account<S: AcmeStore>(store: &S, thumbprint: &str) -> AcmeAccount {
    let a = account(thumbprint, "web", None);
    store
        .create_account(&a, at(T0), &event("acme.account.create", "x"))
        .await
        .unwrap();
    a
}

store_case! {
    /// An EAB key binds exactly one account of its own team, and only while
    /// unrevoked and unexpired; the refused attempts change nothing.
    async fn acme_eab_key_binds_one_account_of_its_team<S>(store: &S)
    where
        S: MetadataStore + AcmeStore,
    {
        store.insert_eab_key(&eab("kid-1", "web"), &event("acme.eab.create", "x")).await.unwrap();
        assert_conflict(
            store.insert_eab_key(&eab("kid-1", "web"), &event("acme.eab.create", "x")).await,
            &["kid-1"],
        );
        let now = at(T0 + 60);
        // Another team's account may not use it.
        let foreign = account("t-foreign", "other", Some("kid-1"));
        let refused = store.create_account(&foreign, now, &event("acme.account.create", "x")).await;
        assert!(matches!(refused, Err(DomainError::Forbidden(_))), "{refused:?}");
        assert!(store.get_account(foreign.id).await.unwrap().is_none());

        let first = account("t-1", "web", Some("kid-1"));
        store.create_account(&first, now, &event("acme.account.create", "x")).await.unwrap();
        let key = store.get_eab_key("kid-1").await.unwrap().unwrap();
        assert_eq!(key.account_id, Some(first.id));
        assert_eq!(store.get_account(first.id).await.unwrap().unwrap(), first);
        assert_eq!(store.get_account_by_thumbprint("t-1").await.unwrap().unwrap().id, first.id);

        // Used: a second account is refused.
        let second = account("t-2", "web", Some("kid-1"));
        let refused = store.create_account(&second, now, &event("acme.account.create", "x")).await;
        assert!(matches!(refused, Err(DomainError::Forbidden(_))), "{refused:?}");
        assert!(store.get_account_by_thumbprint("t-2").await.unwrap().is_none());

        // Expired and revoked keys bind nothing.
        store.insert_eab_key(&eab("kid-2", "web"), &event("acme.eab.create", "x")).await.unwrap();
        let late = account("t-3", "web", Some("kid-2"));
        let refused = store.create_account(&late, at(T0 + DAY), &event("acme.account.create", "x")).await;
        assert!(matches!(refused, Err(DomainError::Forbidden(_))), "{refused:?}");
        let revoked = store.revoke_eab_key("kid-2", now, &event("acme.eab.revoke", "x")).await.unwrap();
        assert_eq!(revoked.revoked_at, Some(now));
        assert_conflict(store.revoke_eab_key("kid-2", now, &event("acme.eab.revoke", "x")).await, &["already revoked"]);
        assert_not_found(store.revoke_eab_key("nope", now, &event("acme.eab.revoke", "x")).await);
        let refused = store.create_account(&late, now, &event("acme.account.create", "x")).await;
        assert!(matches!(refused, Err(DomainError::Forbidden(_))), "{refused:?}");

        // Listing by team, newest first; the sealed HMAC comes along but is never serialised.
        store.insert_eab_key(&EabKey { created_at: at(T0 + 5), ..eab("kid-3", "other") }, &event("acme.eab.create", "x")).await.unwrap();
        let web: Vec<String> = store.list_eab_keys(Some(&["web".to_owned()][..]), 10).await.unwrap().into_iter().map(|k| k.key_id).collect();
        assert_eq!(web.len(), 2);
        assert!(web.contains(&"kid-1".to_owned()) && web.contains(&"kid-2".to_owned()));
        let all = store.list_eab_keys(None, 10).await.unwrap();
        assert_eq!(all[0].key_id, "kid-3");
        assert!(store.list_eab_keys(Some(&[][..]), 10).await.unwrap().is_empty());
        assert!(!serde_json::to_string(&all[0]).unwrap().contains("sealed:opaque"));
        assert_eq!(actions(store, "acme.").await.len(), 5);
    }
}

store_case! {
    /// Of accounts racing for one EAB key exactly one is created.
    async fn acme_concurrent_accounts_with_one_eab_key_create_one<S>(store: &S)
    where
        S: MetadataStore + AcmeStore,
    {
        warm_up(store).await;
        store.insert_eab_key(&eab("kid-race", "web"), &event("acme.eab.create", "x")).await.unwrap();
        let accounts: Vec<AcmeAccount> =
            (0..4).map(|i| account(&format!("race-{i}"), "web", Some("kid-race"))).collect();
        let audit = event("acme.account.create", "x");
        let results = crate::support::futures_join_all(
            accounts.iter().map(|a| store.create_account(a, at(T0 + 1), &audit)),
        )
        .await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(DomainError::Forbidden(_)))));
    }
}

store_case! {
    /// Accounts: one per key; status and contact change compare-and-set;
    /// a key change moves the thumbprint and refuses a key in use.
    async fn acme_accounts_update_and_change_key<S>(store: &S)
    where
        S: MetadataStore + AcmeStore,
    {
        let a = seed_account(store, "k-a").await;
        let b = seed_account(store, "k-b").await;
        assert_conflict(
            store.create_account(&account("k-a", "web", None), at(T0), &event("acme.account.create", "x")).await,
            &["already exists"],
        );
        let e = event("acme.account.key-change", "x");
        assert_conflict(
            store.change_account_key(a.id, "k-a", &json!({"kty": "EC"}), "k-b", at(T0 + 1), &e).await,
            &["new key"],
        );
        store.change_account_key(a.id, "k-a", &json!({"kty": "OKP"}), "k-a2", at(T0 + 2), &e).await.unwrap();
        assert!(store.get_account_by_thumbprint("k-a").await.unwrap().is_none());
        let moved = store.get_account_by_thumbprint("k-a2").await.unwrap().unwrap();
        assert_eq!((moved.id, moved.jwk["kty"].as_str()), (a.id, Some("OKP")));
        // A stale old thumbprint changes nothing.
        assert_conflict(
            store.change_account_key(a.id, "k-a", &json!({}), "k-a3", at(T0 + 3), &e).await,
            &["changed meanwhile"],
        );

        let deactivated = AcmeAccount { status: AccountStatus::Deactivated, contact: vec![], updated_at: at(T0 + 4), ..b.clone() };
        store.update_account(&deactivated, AccountStatus::Valid, &event("acme.account.deactivate", "x")).await.unwrap();
        let stored = store.get_account(b.id).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.contact.len()), (AccountStatus::Deactivated, 0));
        assert_conflict(
            store.update_account(&deactivated, AccountStatus::Valid, &event("acme.account.deactivate", "x")).await,
            &["deactivated"],
        );
        // A deactivated account's key never changes again.
        assert_conflict(
            store.change_account_key(b.id, "k-b", &json!({}), "k-b2", at(T0 + 5), &e).await,
            &["deactivated"],
        );
        let ghost = account("ghost", "web", None);
        assert_not_found(store.update_account(&ghost, AccountStatus::Valid, &e).await);
    }
}

store_case! {
    /// Orders and their new authorizations commit together; the open-order
    /// bound counts unfinished unexpired orders; order and authorization
    /// status change compare-and-set; reuse finds a live authorization of
    /// the same account, identifier and wildcard flag only.
    async fn acme_orders_authorizations_bound_and_reuse<S>(store: &S)
    where
        S: MetadataStore + AcmeStore,
    {
        let a = seed_account(store, "o-a").await;
        let other = seed_account(store, "o-b").await;
        let z1 = authz(a.id, "www.example.com", false, T0 + DAY);
        let z2 = authz(a.id, "example.com", true, T0 + DAY);
        let o1 = order(a.id, &[&z1, &z2], T0);
        store.create_order(&o1, &[z1.clone(), z2.clone()], 2, &event("acme.order.create", "x")).await.unwrap();
        assert_eq!(store.get_order(o1.id).await.unwrap().unwrap(), o1);
        let got = store.get_authorization(z1.id).await.unwrap().unwrap();
        assert_eq!(got, z1);
        assert_eq!(got.challenges.iter().map(|c| c.kind).collect::<Vec<_>>(),
                   vec![ChallengeType::Http01, ChallengeType::Dns01, ChallengeType::TlsAlpn01]);
        assert_eq!(store.get_challenge(z1.challenges[1].id).await.unwrap().unwrap(), z1.challenges[1]);

        // Reuse: same account, identifier and flag, alive long enough.
        let hit = store.find_reusable_authorization(a.id, &AcmeIdentifier::dns("www.example.com"), false, at(T0 + 10)).await.unwrap();
        assert_eq!(hit.map(|h| h.id), Some(z1.id));
        for (acct, name, wildcard, until) in [
            (other.id, "www.example.com", false, T0 + 10),
            (a.id, "www.example.com", true, T0 + 10),
            (a.id, "example.com", false, T0 + 10),
            (a.id, "www.example.com", false, T0 + DAY),
        ] {
            let miss = store.find_reusable_authorization(acct, &AcmeIdentifier::dns(name), wildcard, at(until)).await.unwrap();
            assert!(miss.is_none(), "{name} {wildcard} {until}");
        }

        // The second order reuses z1; a third exceeds the bound of 2.
        let o2 = order(a.id, &[&z1], T0 + 1);
        store.create_order(&o2, &[], 2, &event("acme.order.create", "x")).await.unwrap();
        let z3 = authz(a.id, "api.example.com", false, T0 + DAY);
        let o3 = order(a.id, &[&z3], T0 + 2);
        assert_conflict(store.create_order(&o3, std::slice::from_ref(&z3), 2, &event("acme.order.create", "x")).await, &["2"]);
        assert!(store.get_authorization(z3.id).await.unwrap().is_none(), "nothing half-written");
        // Another account has its own bound; a finished order no longer counts.
        let ob = order(other.id, &[&z3], T0 + 2);
        store.create_order(&ob, &[], 2, &event("acme.order.create", "x")).await.unwrap();
        let invalid = AcmeOrder { status: OrderStatus::Invalid, error: Some(json!({"type": "x"})), updated_at: at(T0 + 3), ..o2.clone() };
        store.update_order(&invalid, OrderStatus::Pending, None).await.unwrap();
        assert_conflict(store.update_order(&invalid, OrderStatus::Pending, None).await, &["no longer pending"]);
        assert_eq!(store.get_order(o2.id).await.unwrap().unwrap(), invalid);
        store.create_order(&o3, std::slice::from_ref(&z3), 2, &event("acme.order.create", "x")).await.unwrap();

        store.set_authorization_status(z2.id, AuthzStatus::Pending, AuthzStatus::Deactivated, &event("acme.authz.deactivate", "x")).await.unwrap();
        assert_conflict(
            store.set_authorization_status(z2.id, AuthzStatus::Pending, AuthzStatus::Deactivated, &event("acme.authz.deactivate", "x")).await,
            &["no longer pending"],
        );
        assert_eq!(store.get_authorization(z2.id).await.unwrap().unwrap().status, AuthzStatus::Deactivated);
    }
}

store_case! {
    /// Answering a challenge makes it processing once; workers claim due
    /// challenges with a lease, never the same one twice while leased; an
    /// outcome is recorded only at the claimed attempt; valid and invalid
    /// move the authorization.
    async fn acme_challenges_claim_lease_retry_and_finish<S>(store: &S)
    where
        S: MetadataStore + AcmeStore,
    {
        let a = seed_account(store, "c-a").await;
        let z1 = authz(a.id, "one.example.com", false, T0 + DAY);
        let z2 = authz(a.id, "two.example.com", false, T0 + DAY);
        let o = order(a.id, &[&z1, &z2], T0);
        store.create_order(&o, &[z1.clone(), z2.clone()], 10, &event("acme.order.create", "x")).await.unwrap();
        let http1 = z1.challenges[0].id;
        let now = at(T0 + 10);
        assert!(store.start_challenge(http1, now, &event("acme.challenge.respond", "x")).await.unwrap());
        assert!(!store.start_challenge(http1, now, &event("acme.challenge.respond", "x")).await.unwrap());
        // Another challenge of the same authorization is not processed too.
        assert!(!store.start_challenge(z1.challenges[1].id, now, &event("acme.challenge.respond", "x")).await.unwrap());
        let started = store.get_challenge(http1).await.unwrap().unwrap();
        assert_eq!((started.status, started.next_attempt_at), (ChallengeStatus::Processing, Some(now)));
        assert!(store.start_challenge(z2.challenges[2].id, now, &event("acme.challenge.respond", "x")).await.unwrap());

        // Not due before `now`; then each claimed once while leased.
        assert!(store.claim_due_challenges(at(T0 + 9), at(T0 + 70), 10).await.unwrap().is_empty());
        let claimed = store.claim_due_challenges(now, at(T0 + 70), 10).await.unwrap();
        assert_eq!(claimed.len(), 2);
        assert!(claimed.iter().all(|c| c.attempts == 1 && c.lease_until == Some(at(T0 + 70))));
        assert!(store.claim_due_challenges(at(T0 + 20), at(T0 + 80), 10).await.unwrap().is_empty());

        // Retry: processing, due later, error shown.
        let retry = ValidationOutcome::Retry { next_attempt_at: at(T0 + 30), error: json!({"type": "urn:ietf:params:acme:error:connection"}) };
        store.finish_challenge(http1, 1, &retry, at(T0 + 11), &event("acme.challenge.attempt", "x")).await.unwrap();
        let c = store.get_challenge(http1).await.unwrap().unwrap();
        assert_eq!((c.status, c.next_attempt_at, c.lease_until), (ChallengeStatus::Processing, Some(at(T0 + 30)), None));
        assert_eq!(c.error.unwrap()["type"], "urn:ietf:params:acme:error:connection");
        // A stale attempt number is refused.
        assert_conflict(
            store.finish_challenge(http1, 1, &ValidationOutcome::Valid, at(T0 + 12), &event("acme.challenge.attempt", "x")).await,
            &["attempt 1"],
        );
        // A lost worker's lease runs out and another worker takes over;
        // the retried challenge is due again too.
        let mut retaken: Vec<(Uuid, u32)> = store.claim_due_challenges(at(T0 + 70), at(T0 + 130), 10).await.unwrap().iter().map(|c| (c.id, c.attempts)).collect();
        retaken.sort();
        let mut expected = vec![(http1, 2), (z2.challenges[2].id, 2)];
        expected.sort();
        assert_eq!(retaken, expected);
        store.finish_challenge(z2.challenges[2].id, 2, &ValidationOutcome::Invalid { error: json!({"type": "tls"}) }, at(T0 + 71), &event("acme.challenge.attempt", "x")).await.unwrap();
        assert_eq!(store.get_authorization(z2.id).await.unwrap().unwrap().status, AuthzStatus::Invalid);
        store.finish_challenge(http1, 2, &ValidationOutcome::Valid, at(T0 + 72), &event("acme.challenge.attempt", "x")).await.unwrap();
        let c = store.get_challenge(http1).await.unwrap().unwrap();
        assert_eq!((c.status, c.validated_at, c.error), (ChallengeStatus::Valid, Some(at(T0 + 72)), None));
        assert_eq!(store.get_authorization(z1.id).await.unwrap().unwrap().status, AuthzStatus::Valid);
        assert!(store.claim_due_challenges(at(T0 + 500), at(T0 + 600), 10).await.unwrap().is_empty());
    }
}

store_case! {
    /// Concurrent workers on one database never hold the same challenge.
    async fn acme_concurrent_claims_share_out_challenges<S>(store: &S)
    where
        S: MetadataStore + AcmeStore,
    {
        warm_up(store).await;
        let a = seed_account(store, "w-a").await;
        let zs: Vec<AcmeAuthorization> = (0..6).map(|i| authz(a.id, &format!("n{i}.example.com"), false, T0 + DAY)).collect();
        let o = order(a.id, &zs.iter().collect::<Vec<_>>(), T0);
        store.create_order(&o, &zs, 10, &event("acme.order.create", "x")).await.unwrap();
        for z in &zs {
            assert!(store.start_challenge(z.challenges[0].id, at(T0 + 1), &event("acme.challenge.respond", "x")).await.unwrap());
        }
        let claims = crate::support::futures_join_all((0..4).map(|_| store.claim_due_challenges(at(T0 + 2), at(T0 + 60), 2))).await;
        let mut ids: Vec<Uuid> = claims.into_iter().flat_map(|r| r.unwrap()).map(|c| c.id).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "a challenge was claimed twice");
        assert!(n >= 2);
    }
}

store_case! {
    /// A nonce is accepted once and never after it expires.
    async fn acme_nonces_are_single_use<S>(store: &S)
    where
        S: MetadataStore + AcmeStore,
    {
        warm_up(store).await;
        store.insert_nonce("n-1", at(T0 + 60)).await.unwrap();
        store.insert_nonce("n-2", at(T0 + 60)).await.unwrap();
        assert_conflict(store.insert_nonce("n-1", at(T0 + 60)).await, &["nonce"]);
        let takes = crate::support::futures_join_all((0..4).map(|_| store.take_nonce("n-1", at(T0)))).await;
        assert_eq!(takes.iter().filter(|t| *t.as_ref().unwrap()).count(), 1);
        assert!(!store.take_nonce("never-issued", at(T0)).await.unwrap());
        assert!(!store.take_nonce("n-2", at(T0 + 60)).await.unwrap(), "expired");
        assert!(!store.take_nonce("n-2", at(T0)).await.unwrap(), "gone once refused");
    }
}

store_case! {
    /// Certificate origins by serial and "renew now" on every version.
    async fn acme_certificates_and_renew_now<S>(store: &S)
    where
        S: MetadataStore + AcmeStore,
    {
        let cert = Uuid::now_v7();
        let origin = |version: u32, serial: &str| AcmeCertificate {
            certificate_id: cert,
            version,
            serial: serial.into(),
            order_id: Uuid::now_v7(),
            account_id: Uuid::now_v7(),
            renew_now_at: None,
        };
        store.insert_acme_certificate(&origin(1, "0a")).await.unwrap();
        store.insert_acme_certificate(&origin(2, "0b")).await.unwrap();
        assert_conflict(store.insert_acme_certificate(&origin(2, "0c")).await, &["already recorded"]);
        assert_eq!(store.get_acme_certificate("0b").await.unwrap().unwrap().version, 2);
        assert!(store.get_acme_certificate("ff").await.unwrap().is_none());
        assert_eq!(store.set_renew_now(cert, at(T0 + 5), &event("acme.certificate.renew-now", "x")).await.unwrap(), 2);
        let all = store.acme_certificates_of(cert).await.unwrap();
        assert_eq!(all.iter().map(|c| (c.version, c.renew_now_at)).collect::<Vec<_>>(),
                   vec![(2, Some(at(T0 + 5))), (1, Some(at(T0 + 5)))]);
        assert_eq!(store.set_renew_now(Uuid::now_v7(), at(T0), &event("acme.certificate.renew-now", "x")).await.unwrap(), 0);
        assert_eq!(actions(store, "acme.certificate").await, vec!["acme.certificate.renew-now"]);
    }
}

store_case! {
    /// The sweep removes expired nonces, expired unfinished orders, finished
    /// orders past retention and expired authorizations no order names.
    async fn acme_purge_removes_expired_state<S>(store: &S)
    where
        S: MetadataStore + AcmeStore,
    {
        let a = seed_account(store, "p-a").await;
        store.insert_nonce("old", at(T0 + 10)).await.unwrap();
        store.insert_nonce("fresh", at(T0 + 1000)).await.unwrap();
        let z_old = authz(a.id, "old.example.com", false, T0 + 100);
        let z_kept = authz(a.id, "kept.example.com", false, T0 + 100);
        let z_live = authz(a.id, "live.example.com", false, T0 + 10 * DAY);
        let expired = AcmeOrder { expires: at(T0 + 100), ..order(a.id, &[&z_old], T0) };
        let valid = AcmeOrder { status: OrderStatus::Valid, expires: at(T0 + 100), ..order(a.id, &[&z_kept], T0) };
        let live = order(a.id, &[&z_live], T0 + 1);
        store.create_order(&expired, std::slice::from_ref(&z_old), 10, &event("acme.order.create", "x")).await.unwrap();
        store.create_order(&valid, std::slice::from_ref(&z_kept), 10, &event("acme.order.create", "x")).await.unwrap();
        store.create_order(&live, std::slice::from_ref(&z_live), 10, &event("acme.order.create", "x")).await.unwrap();

        let purged = store.purge_expired_acme(at(T0 + 200), at(T0 - DAY)).await.unwrap();
        assert_eq!((purged.nonces, purged.orders, purged.authorizations), (1, 1, 1));
        assert!(store.get_order(expired.id).await.unwrap().is_none());
        assert!(store.get_authorization(z_old.id).await.unwrap().is_none());
        assert!(store.get_challenge(z_old.challenges[0].id).await.unwrap().is_none());
        // The valid order stays (retention), and so does the authorization it names.
        assert!(store.get_order(valid.id).await.unwrap().is_some());
        assert!(store.get_authorization(z_kept.id).await.unwrap().is_some());
        assert!(store.get_authorization(z_live.id).await.unwrap().is_some());
        assert!(store.take_nonce("fresh", at(T0 + 200)).await.unwrap());

        let purged = store.purge_expired_acme(at(T0 + 200), at(T0 + 1)).await.unwrap();
        assert_eq!((purged.orders, purged.authorizations), (1, 1));
        assert!(store.get_order(live.id).await.unwrap().is_some());
    }
}
