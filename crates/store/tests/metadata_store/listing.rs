//! Listing certificates (`list_certificates`): each filter alone and
//! combined, search, sorting, paging, limits, and the per-status counts.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use std::collections::BTreeMap;

use certflow_core::model::{
    AuditQuery, Certificate, CertificateQuery, CertificateStatus, RevocationReason, SortKey,
};
use certflow_core::ports::MetadataStore;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::support::{
    DAY, T0, at, certificate, create, dns, event, ids, ip, issuer, query, seed_issuer, sorted,
    target,
};

store_case! {
    async fn list_filters_by_issuer(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let other = issuer("other", false);
        store
            .insert_issuer(&other, &event("issuer.import", "issuer/other"))
            .await
            .unwrap();
        let a = certificate(&main, "a.example.com", "t");
        let b = certificate(&other, "b.example.com", "t");
        let c = certificate(&other, "c.example.com", "u");
        for cert in [&a, &b, &c] {
            create(store, cert).await;
        }
        let by = |issuer: Uuid| CertificateQuery {
            issuer_id: Some(issuer),
            ..query()
        };
        assert_eq!(ids(store, &by(main.id)).await, vec![a.id]);
        assert_eq!(
            sorted(ids(store, &by(other.id)).await),
            sorted(vec![b.id, c.id])
        );
        // Combined with another filter, and counted.
        let page = store
            .list_certificates(&CertificateQuery {
                team: Some("u".into()),
                ..by(other.id)
            })
            .await
            .unwrap();
        assert_eq!((page.total, page.items[0].id), (1, c.id));
        // An unknown issuer matches nothing.
        assert!(ids(store, &by(Uuid::new_v4())).await.is_empty());
    }
}

store_case! {
    /// The dashboard's numbers: by status and cumulative active expiries per
    /// edge, within the teams asked for, in one statement.
    async fn certificate_counts_group_by_status_and_edges(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let expiring = |name: &str, team: &str, days: i64| {
            let mut c = certificate(&issuer, name, team);
            c.not_after = at(T0 + days * DAY);
            c
        };
        let edges = [at(T0), at(T0 + 7 * DAY), at(T0 + 30 * DAY)];
        let empty = store.certificate_counts(None, &edges).await.unwrap();
        assert_eq!(empty.active_expiring_before, vec![0, 0, 0]);
        assert_eq!(empty.by_status.len(), CertificateStatus::ALL.len());

        let expired = expiring("expired.example.com", "a", -1);
        let week = expiring("week.example.com", "a", 3);
        let month = expiring("month.example.com", "b", 20);
        let far = certificate(&issuer, "far.example.com", "b"); // 90 days
        let archived = expiring("archived.example.com", "a", 2);
        for c in [&expired, &week, &month, &far, &archived] {
            create(store, c).await;
        }
        store
            .archive_certificate(archived.id, at(T0), &event("certificate.archive", "x"))
            .await
            .unwrap();
        let all = store.certificate_counts(None, &edges).await.unwrap();
        let n = |c: &certflow_core::model::CertificateCounts, st| {
            c.by_status.iter().find(|(s, _)| *s == st).unwrap().1
        };
        assert_eq!(n(&all, CertificateStatus::Active), 4);
        assert_eq!(n(&all, CertificateStatus::Archived), 1);
        assert_eq!(n(&all, CertificateStatus::Revoked), 0);
        // Archived certificates never count as expiring.
        assert_eq!(all.active_expiring_before, vec![1, 2, 3]);

        let a = store
            .certificate_counts(Some(&["a".to_owned()]), &edges)
            .await
            .unwrap();
        assert_eq!(n(&a, CertificateStatus::Active), 2);
        assert_eq!(a.active_expiring_before, vec![1, 2, 2]);
        let both = store
            .certificate_counts(Some(&["a".to_owned(), "b".to_owned()]), &edges)
            .await
            .unwrap();
        assert_eq!(both, all);
        let none = store.certificate_counts(Some(&[]), &edges).await.unwrap();
        assert_eq!(none, empty);
    }
}

struct Fixture {
    api: Uuid,
    billing: Uuid,
    db: Uuid,
    legacy: Uuid,
    percent: Uuid,
    underscore: Uuid,
}

/// Six certificates covering every filter dimension.
async fn listing_fixture(store: &dyn MetadataStore) -> Fixture {
    let issuer = seed_issuer(store).await;
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };

    let mut api = certificate(&issuer, "api.example.com", "payments");
    api.names = vec![dns("api.example.com"), dns("www.api.example.com")];
    api.labels = labels(&[("env", "prod"), ("tier", "web")]);
    api.not_after = at(T0 + 30 * DAY);

    let mut billing = certificate(&issuer, "Billing Portal", "billing");
    billing.names = vec![dns("billing.internal"), ip("10.1.2.3")];
    billing.labels = labels(&[("env", "prod"), ("tier", "web")]);
    billing.not_after = at(T0 + 60 * DAY);

    let mut db = certificate(&issuer, "db", "payments");
    db.names = vec![dns("db.example.net")];
    db.labels = labels(&[("env", "staging"), ("tier", "data")]);
    db.not_after = at(T0 + 10 * DAY);

    let mut legacy = certificate(&issuer, "legacy.example.com", "payments");
    legacy.labels = labels(&[("env", "prod")]);
    legacy.not_after = at(T0 + 5 * DAY);

    let mut percent = certificate(&issuer, "100%-ready", "qa");
    percent.names = vec![dns("ready.example.org")];
    percent.not_after = at(T0 + 90 * DAY);

    let mut underscore = certificate(&issuer, "100x-ready", "qa");
    underscore.names = vec![dns("other.example.org")];
    underscore.labels = labels(&[("env", "prod")]);
    underscore.not_after = at(T0 + 91 * DAY);

    for cert in [&api, &billing, &db, &legacy, &percent, &underscore] {
        create(store, cert).await;
    }
    store
        .revoke_version(
            db.id,
            1,
            RevocationReason::KeyCompromise,
            at(T0 + DAY),
            &event("certificate.revoke", &target(&db)),
        )
        .await
        .unwrap();
    store
        .archive_certificate(
            legacy.id,
            at(T0 + DAY),
            &event("certificate.archive", &target(&legacy)),
        )
        .await
        .unwrap();
    Fixture {
        api: api.id,
        billing: billing.id,
        db: db.id,
        legacy: legacy.id,
        percent: percent.id,
        underscore: underscore.id,
    }
}

store_case! {
    async fn list_filters_each_alone(store: &dyn MetadataStore) {
        let f = listing_fixture(store).await;
        let check = |q: CertificateQuery, want: Vec<Uuid>| async move {
            let page = store.list_certificates(&q).await.unwrap();
            assert_eq!(
                sorted(page.items.iter().map(|c| c.id).collect()),
                sorted(want.clone()),
                "{q:?}"
            );
            assert_eq!(page.total, want.len() as u64, "{q:?}");
        };
        let search = |s: &str| CertificateQuery {
            search: Some(s.into()),
            ..query()
        };

        check(
            query(),
            vec![f.api, f.billing, f.db, f.legacy, f.percent, f.underscore],
        )
        .await;
        // Search: name or any SAN, case-insensitive substring.
        check(search("EXAMPLE.com"), vec![f.api, f.legacy]).await;
        check(
            search("example"),
            vec![f.api, f.db, f.legacy, f.percent, f.underscore],
        )
        .await;
        check(search("portal"), vec![f.billing]).await;
        check(search("www.api"), vec![f.api]).await;
        check(search("10.1.2"), vec![f.billing]).await;
        check(search("nothing-matches"), vec![]).await;
        // Team.
        let team = |t: &str| CertificateQuery {
            team: Some(t.into()),
            ..query()
        };
        check(team("payments"), vec![f.api, f.db, f.legacy]).await;
        check(team("Payments"), vec![]).await;
        // Several teams at once (a person's teams), exact names; none matches nothing.
        let teams = |ts: &[&str]| CertificateQuery {
            teams: Some(ts.iter().map(|t| (*t).to_owned()).collect()),
            ..query()
        };
        check(
            teams(&["payments", "qa"]),
            vec![f.api, f.db, f.legacy, f.percent, f.underscore],
        )
        .await;
        check(teams(&["billing", "nobody"]), vec![f.billing]).await;
        check(teams(&["Payments"]), vec![]).await;
        check(teams(&[]), vec![]).await;
        check(
            CertificateQuery {
                team: Some("qa".into()),
                ..teams(&["payments", "qa"])
            },
            vec![f.percent, f.underscore],
        )
        .await;
        // Labels: all must match.
        let labels = |pairs: &[(&str, &str)]| CertificateQuery {
            labels: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..query()
        };
        check(
            labels(&[("env", "prod")]),
            vec![f.api, f.billing, f.legacy, f.underscore],
        )
        .await;
        check(
            labels(&[("env", "prod"), ("tier", "web")]),
            vec![f.api, f.billing],
        )
        .await;
        check(labels(&[("env", "prod"), ("tier", "data")]), vec![]).await;
        check(labels(&[("tier", "")]), vec![]).await;
        // Status.
        let status = |s: CertificateStatus| CertificateQuery {
            status: Some(s),
            ..query()
        };
        check(
            status(CertificateStatus::Active),
            vec![f.api, f.billing, f.percent, f.underscore],
        )
        .await;
        check(status(CertificateStatus::Revoked), vec![f.db]).await;
        check(status(CertificateStatus::Archived), vec![f.legacy]).await;
        // Expiry: strictly before, to the second.
        let before = |t: OffsetDateTime| CertificateQuery {
            expires_before: Some(t),
            ..query()
        };
        check(before(at(T0 + 30 * DAY)), vec![f.db, f.legacy]).await;
        check(
            before(at(T0 + 30 * DAY) + Duration::milliseconds(500)),
            vec![f.api, f.db, f.legacy],
        )
        .await;
        check(before(at(T0)), vec![]).await;
    }
}

store_case! {
    async fn list_filters_combined(store: &dyn MetadataStore) {
        let f = listing_fixture(store).await;
        let q = CertificateQuery {
            search: Some("example".into()),
            team: Some("payments".into()),
            labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
            status: Some(CertificateStatus::Active),
            expires_before: Some(at(T0 + 31 * DAY)),
            ..query()
        };
        assert_eq!(ids(store, &q).await, vec![f.api]);
        // Without the status filter the archived one matches too (sorted by name).
        let any_status = CertificateQuery {
            status: None,
            ..q.clone()
        };
        assert_eq!(ids(store, &any_status).await, vec![f.api, f.legacy]);
        let none = CertificateQuery {
            team: Some("qa".into()),
            ..q
        };
        let page = store.list_certificates(&none).await.unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.total, 0);
    }
}

store_case! {
    async fn search_escapes_like_wildcards(store: &dyn MetadataStore) {
        let f = listing_fixture(store).await;
        let search = |s: &str| CertificateQuery {
            search: Some(s.into()),
            ..query()
        };
        // `%` and `_` match themselves only.
        assert_eq!(ids(store, &search("100%")).await, vec![f.percent]);
        assert_eq!(ids(store, &search("0%-")).await, vec![f.percent]);
        assert!(ids(store, &search("100_")).await.is_empty());
        assert_eq!(ids(store, &search("%")).await, vec![f.percent]);
        assert!(ids(store, &search("_")).await.is_empty());
        assert!(ids(store, &search("\\")).await.is_empty());
        // Quotes are data, not SQL.
        assert!(ids(store, &search("' OR '1'='1")).await.is_empty());
    }
}

store_case! {
    async fn list_sorts_both_directions_with_id_tie_break(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        let mut certs = Vec::new();
        // Pairs share not_after and created_at so the id decides within a pair.
        for (i, name) in ["delta", "alpha", "echo", "charlie", "bravo", "foxtrot"]
            .iter()
            .enumerate()
        {
            let i = i as i64;
            let mut cert = certificate(&issuer, &format!("{name}.example.com"), "t");
            cert.not_after = at(T0 + (10 + i / 2) * DAY);
            cert.created_at = at(T0 + 100 - i / 2);
            create(store, &cert).await;
            certs.push(cert);
        }
        fn key(sort: SortKey, c: &Certificate) -> (String, i64) {
            match sort {
                SortKey::Name => (c.name.clone(), 0),
                SortKey::NotAfter => (String::new(), c.not_after.unix_timestamp()),
                SortKey::CreatedAt => (String::new(), c.created_at.unix_timestamp()),
            }
        }
        for sort in [SortKey::Name, SortKey::NotAfter, SortKey::CreatedAt] {
            let mut want = certs.clone();
            want.sort_by_key(|c| (key(sort, c), c.id));
            let want: Vec<Uuid> = want.iter().map(|c| c.id).collect();
            let asc = CertificateQuery { sort, ..query() };
            assert_eq!(ids(store, &asc).await, want, "{sort:?} ascending");
            let desc = CertificateQuery {
                sort,
                descending: true,
                ..query()
            };
            let mut reversed = want.clone();
            reversed.reverse();
            assert_eq!(ids(store, &desc).await, reversed, "{sort:?} descending");
        }
    }
}

store_case! {
    async fn list_pages_are_stable_and_counted(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        for i in 0..23 {
            let mut cert = certificate(
                &issuer,
                &format!("host{:02}.example.com", i % 7),
                &format!("team{i}"),
            );
            // Many ties on not_after: only the id keeps pages apart.
            cert.not_after = at(T0 + (i % 3) * DAY);
            create(store, &cert).await;
        }
        for (sort, descending) in [(SortKey::NotAfter, false), (SortKey::Name, true)] {
            let all = ids(
                store,
                &CertificateQuery {
                    sort,
                    descending,
                    ..query()
                },
            )
            .await;
            assert_eq!(all.len(), 23);
            let mut paged = Vec::new();
            for offset in (0..25).step_by(5) {
                let page = store
                    .list_certificates(&CertificateQuery {
                        sort,
                        descending,
                        limit: 5,
                        offset,
                        ..query()
                    })
                    .await
                    .unwrap();
                assert_eq!(page.total, 23);
                assert!(page.items.len() <= 5);
                paged.extend(page.items.into_iter().map(|c| c.id));
            }
            assert_eq!(paged, all, "{sort:?}");
        }
        let beyond = store
            .list_certificates(&CertificateQuery {
                offset: 100,
                ..query()
            })
            .await
            .unwrap();
        assert!(beyond.items.is_empty());
        assert_eq!(beyond.total, 23);
        let filtered = store
            .list_certificates(&CertificateQuery {
                search: Some("host03".into()),
                limit: 2,
                ..query()
            })
            .await
            .unwrap();
        assert_eq!(filtered.items.len(), 2);
        assert_eq!(filtered.total, 3);
    }
}

store_case! {
    /// Names sort by their bytes (as Rust's `str` does), not by a locale's
    /// rules that ignore punctuation or case.
    async fn name_order_is_byte_order(store: &dyn MetadataStore) {
        let main = seed_issuer(store).await;
        let names = [
            "b",
            "B",
            "a-c",
            "ab",
            "_x",
            "Zeta",
            "e",
            "\u{e9}clair",
            "a c",
            "10",
            "9",
        ];
        let mut want = Vec::new();
        for name in names {
            let cert = certificate(&main, name, "t");
            create(store, &cert).await;
            want.push((name.to_owned(), cert.id));
        }
        want.sort();
        let by_name = CertificateQuery {
            sort: SortKey::Name,
            ..query()
        };
        assert_eq!(
            ids(store, &by_name).await,
            want.iter().map(|(_, id)| *id).collect::<Vec<_>>()
        );

        // Issuers created at the same time list by name.
        let mut issuers = Vec::new();
        for name in ["b", "B", "_x", "a c", "a-c"] {
            let other = issuer(name, false);
            store
                .insert_issuer(&other, &event("issuer.import", "issuer/other"))
                .await
                .unwrap();
            issuers.push((other.name.clone(), other.id));
        }
        issuers.sort();
        let listed: Vec<Uuid> = store
            .list_issuers()
            .await
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        let mut expected = vec![main.id];
        expected.extend(issuers.iter().map(|(_, id)| *id));
        assert_eq!(listed, expected);
    }
}

store_case! {
    async fn list_limit_is_clamped(store: &dyn MetadataStore) {
        let issuer = seed_issuer(store).await;
        for i in 0..501 {
            create(
                store,
                &certificate(&issuer, &format!("h{i:03}.example.com"), "t"),
            )
            .await;
        }
        let page = |limit| CertificateQuery {
            limit,
            ..CertificateQuery::default()
        };
        let zero = store.list_certificates(&page(0)).await.unwrap();
        assert_eq!((zero.items.len(), zero.total), (1, 501));
        let huge = store.list_certificates(&page(10_000)).await.unwrap();
        assert_eq!((huge.items.len(), huge.total), (500, 501));
        let audit = store
            .list_audit(&AuditQuery {
                limit: 10_000,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!((audit.items.len(), audit.total), (500, 502));
    }
}
