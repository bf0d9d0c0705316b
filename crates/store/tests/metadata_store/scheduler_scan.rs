//! The scheduler's pass on the ledger: a page of jobs inserted in one
//! transaction (`insert_renewal_jobs`), and the due versions without a job
//! paged by keyset (`due_without_job`), which must agree with
//! `due_for_renewal` on what is due and in which order.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::model::{Certificate, Issuer};
use certflow_core::renewal::{DueVersion, RenewalJob, RenewalQueue};
use time::Duration;
use uuid::Uuid;

use crate::support::{
    DAY, Stores, T0, assert_conflict, at, certificate, create, event, seed_issuer, target, version,
};

/// An active certificate that becomes due for renewal at `renew_after`.
fn renewing(issuer: &Issuer, name: &str, renew_after: i64) -> Certificate {
    Certificate {
        not_after: at(renew_after + 30 * DAY),
        renew_after: at(renew_after),
        ..certificate(issuer, name, "payments")
    }
}

/// Every page of `due_without_job(now, _, limit)`, each after the last row
/// of the one before, until a short page.
async fn pages(store: &dyn Stores, now: i64, limit: u32) -> Vec<Vec<DueVersion>> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .due_without_job(at(now), after.as_ref(), limit)
            .await
            .unwrap();
        let last = page.len() < limit as usize;
        after = page.last().copied();
        pages.push(page);
        if last {
            return pages;
        }
    }
}

fn certificate_ids(due: &[DueVersion]) -> Vec<Uuid> {
    due.iter().map(|d| d.certificate_id).collect()
}

store_case! {
    /// New jobs go in, a second job of a `(certificate, version)` does not
    /// (stored or earlier in the same batch), each answered in order.
    async fn insert_renewal_jobs_inserts_each_version_once(store: &dyn Stores) {
        let issuer = seed_issuer(store).await;
        let a = renewing(&issuer, "a.example.com", T0);
        let b = renewing(&issuer, "b.example.com", T0);
        create(store, &a).await;
        create(store, &b).await;
        assert_eq!(store.insert_renewal_jobs(&[]).await.unwrap(), Vec::<bool>::new());

        let stored = RenewalJob::new(a.id, 1, 5, at(T0));
        assert!(store.insert_renewal_job(&stored).await.unwrap());
        let batch = vec![
            RenewalJob::new(a.id, 1, 5, at(T0 + 1)),
            RenewalJob::new(b.id, 1, 5, at(T0 + 1)),
            RenewalJob::new(b.id, 1, 3, at(T0 + 2)),
            RenewalJob::new(a.id, 2, 5, at(T0 + 1)),
        ];
        let inserted = store.insert_renewal_jobs(&batch).await.unwrap();
        assert_eq!(inserted, vec![false, true, false, true]);
        for (job, inserted) in batch.iter().zip(&inserted) {
            let got = store.get_renewal_job(job.id).await.unwrap();
            assert_eq!(got.as_ref(), inserted.then_some(job), "{job:?}");
        }
        assert_eq!(store.get_renewal_job(stored.id).await.unwrap(), Some(stored));
    }
}

store_case! {
    /// A batch holding an id that exists fails whole: nothing of it is stored.
    async fn insert_renewal_jobs_with_an_existing_id_stores_nothing(store: &dyn Stores) {
        let issuer = seed_issuer(store).await;
        let a = renewing(&issuer, "a.example.com", T0);
        let b = renewing(&issuer, "b.example.com", T0);
        create(store, &a).await;
        create(store, &b).await;
        let stored = RenewalJob::new(a.id, 1, 5, at(T0));
        assert!(store.insert_renewal_job(&stored).await.unwrap());
        let fresh = RenewalJob::new(b.id, 1, 5, at(T0));
        let same_id = RenewalJob {
            version: 9,
            ..stored.clone()
        };
        assert_conflict(
            store.insert_renewal_jobs(&[fresh.clone(), same_id]).await,
            &["renewal job", "already exists"],
        );
        assert_eq!(store.get_renewal_job(fresh.id).await.unwrap(), None);
        assert_eq!(store.get_renewal_job(stored.id).await.unwrap(), Some(stored));
    }
}

store_case! {
    /// More jobs than one statement takes are still one batch, all stored,
    /// each with its certificate's notAfter as its urgency (the queue hands
    /// out the soonest-expiring first).
    async fn insert_renewal_jobs_takes_large_batches(store: &dyn Stores) {
        let issuer = seed_issuer(store).await;
        let mut certs = Vec::new();
        for i in 0..400 {
            let mut cert = renewing(&issuer, &format!("c{i}.example.com"), T0);
            cert.not_after = at(T0 + 30 * DAY + i64::from(i));
            create(store, &cert).await;
            certs.push(cert);
        }
        // Two versions each, newest certificate first: 800 rows.
        let jobs: Vec<RenewalJob> = certs
            .iter()
            .rev()
            .flat_map(|c| [1, 2].map(|v| RenewalJob::new(c.id, v, 5, at(T0))))
            .collect();
        let inserted = store.insert_renewal_jobs(&jobs).await.unwrap();
        assert_eq!(inserted, vec![true; 800]);
        let again = store.insert_renewal_jobs(&jobs[..10]).await.unwrap();
        assert_eq!(again, vec![false; 10]);
        let got = store
            .queue()
            .receive(2, std::time::Duration::from_secs(60), std::time::Duration::ZERO)
            .await
            .unwrap();
        let got: Vec<Uuid> = got.iter().map(|d| d.job.certificate_id).collect();
        assert_eq!(got, vec![certs[0].id, certs[0].id]);
    }
}

store_case! {
    /// The pages, concatenated, are `due_for_renewal`'s answer: due, active,
    /// managed, no job for the current version, by `(renew_after, id)`,
    /// ties in one second split across pages included.
    async fn due_without_job_pages_through_what_is_due(store: &dyn Stores) {
        let issuer = seed_issuer(store).await;
        let base = T0 + 60 * DAY;
        let mut certs = Vec::new();
        // Seven due in one second, three in others, one due a second late.
        for i in 0..7 {
            certs.push(renewing(&issuer, &format!("tie{i}.example.com"), base - DAY));
        }
        certs.push(renewing(&issuer, "old.example.com", base - 9 * DAY));
        certs.push(renewing(&issuer, "now.example.com", base));
        certs.push(renewing(&issuer, "job.example.com", base - 2 * DAY));
        let late = renewing(&issuer, "late.example.com", base + 1);
        let unmanaged = Certificate {
            managed: false,
            ..renewing(&issuer, "inventory.example.com", base - DAY)
        };
        for cert in certs.iter().chain([&late, &unmanaged]) {
            create(store, cert).await;
        }
        let with_job = certs.iter().find(|c| c.name == "job.example.com").unwrap();
        store
            .insert_renewal_job(&RenewalJob::new(with_job.id, 1, 5, at(base)))
            .await
            .unwrap();
        // Half a second past `base`: whole seconds, as due_for_renewal.
        let now = at(base) + Duration::milliseconds(500);
        let expected: Vec<Uuid> = store
            .due_for_renewal(now, 1000)
            .await
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(expected.len(), 9);

        for limit in [1, 2, 3, 4, 9, 10, 1000] {
            let pages = pages(store, base, limit).await;
            let got: Vec<Uuid> = pages.iter().flat_map(|p| certificate_ids(p)).collect();
            assert_eq!(got, expected, "limit {limit}");
            assert!(pages.iter().all(|p| p.len() <= limit as usize));
        }
        let all = store.due_without_job(now, None, 1000).await.unwrap();
        for (due, id) in all.iter().zip(&expected) {
            let cert = certs.iter().find(|c| c.id == *id).unwrap();
            assert_eq!(
                *due,
                DueVersion {
                    certificate_id: cert.id,
                    version: 1,
                    renew_after: cert.renew_after,
                }
            );
        }
    }
}

store_case! {
    /// A page starts after the cursor whatever happened before it: versions
    /// given a job meanwhile drop out, and a renewed certificate is judged on
    /// its new version and renew_after.
    async fn due_without_job_resumes_after_the_cursor(store: &dyn Stores) {
        let issuer = seed_issuer(store).await;
        let base = T0 + 60 * DAY;
        let a = renewing(&issuer, "a.example.com", base - 4 * DAY);
        let b = renewing(&issuer, "b.example.com", base - 3 * DAY);
        let c = renewing(&issuer, "c.example.com", base - 2 * DAY);
        let d = renewing(&issuer, "d.example.com", base - DAY);
        for cert in [&a, &b, &c, &d] {
            create(store, cert).await;
        }
        let first = store.due_without_job(at(base), None, 2).await.unwrap();
        assert_eq!(certificate_ids(&first), vec![a.id, b.id]);
        // C gets its job from another scheduler; A is renewed, due again
        // later than D.
        store
            .insert_renewal_job(&RenewalJob::new(c.id, 1, 5, at(base)))
            .await
            .unwrap();
        let renewed = Certificate {
            current_version: 2,
            renew_after: at(base - DAY / 2),
            ..a.clone()
        };
        store
            .add_version(
                &renewed,
                &version(&renewed, 2),
                &event("certificate.renew", &target(&a)),
                None,
            )
            .await
            .unwrap();
        let next = store
            .due_without_job(at(base), first.last(), 2)
            .await
            .unwrap();
        assert_eq!(certificate_ids(&next), vec![d.id, a.id]);
        assert_eq!(next[1].version, 2);
        let last = store
            .due_without_job(at(base), next.last(), 2)
            .await
            .unwrap();
        assert!(last.is_empty(), "{last:?}");
    }
}
