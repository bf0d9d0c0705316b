//! Crash consistency: a failure injected between the blob writes and the
//! metadata commit leaves no row pointing at a missing blob, and what a crash
//! leaves behind is swept after the grace period — never before.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use certflow_api::CreateCertificateRequest;
use certflow_blob::ObjectBlobStore;
use certflow_core::model::*;
use certflow_core::ports::{BlobStore, MetadataStore, VersionCommit, VersionCommitted};
use certflow_core::{DomainError, DomainResult};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_store::SqliteStore;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{CaSettings, DownloadKind, Services};

/// The real store, except that commits of new certificates and versions fail
/// while `fail` is set: the moment between blob write and metadata commit.
/// And the next `hide_idempotency` lookups of idempotency keys find nothing:
/// a concurrent request with the same key that has not committed yet.
struct FailingCommits {
    inner: SqliteStore,
    fail: AtomicBool,
    hide_idempotency: AtomicU32,
}

impl FailingCommits {
    fn check(&self) -> DomainResult<()> {
        if self.fail.load(Ordering::SeqCst) {
            Err(DomainError::Unavailable {
                backend: "database",
                reason: "injected failure".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl MetadataStore for FailingCommits {
    async fn ping(&self) -> DomainResult<()> {
        self.inner.ping().await
    }
    async fn insert_issuer(&self, i: &Issuer, a: &AuditEvent) -> DomainResult<()> {
        self.inner.insert_issuer(i, a).await
    }
    async fn list_issuers(&self) -> DomainResult<Vec<Issuer>> {
        self.inner.list_issuers().await
    }
    async fn get_issuer(&self, id: Uuid) -> DomainResult<Option<Issuer>> {
        self.inner.get_issuer(id).await
    }
    async fn set_default_issuer(&self, id: Uuid, a: &AuditEvent) -> DomainResult<()> {
        self.inner.set_default_issuer(id, a).await
    }
    async fn create_certificate(
        &self,
        c: &Certificate,
        v: &CertificateVersion,
        a: &AuditEvent,
        i: Option<&IdempotencyRecord>,
    ) -> DomainResult<()> {
        self.check()?;
        self.inner.create_certificate(c, v, a, i).await
    }
    async fn create_certificate_with_issuer(
        &self,
        issuer: &Issuer,
        issuer_audit: &AuditEvent,
        c: &Certificate,
        v: &CertificateVersion,
        a: &AuditEvent,
    ) -> DomainResult<()> {
        self.check()?;
        self.inner
            .create_certificate_with_issuer(issuer, issuer_audit, c, v, a)
            .await
    }
    async fn create_first_version(&self, c: VersionCommit<'_>) -> DomainResult<()> {
        self.check()?;
        self.inner.create_first_version(c).await
    }
    async fn commit_version(&self, c: VersionCommit<'_>) -> DomainResult<VersionCommitted> {
        self.check()?;
        self.inner.commit_version(c).await
    }
    async fn get_idempotency(
        &self,
        scope: &str,
        key: &str,
    ) -> DomainResult<Option<IdempotencyRecord>> {
        let hide = self
            .hide_idempotency
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hide {
            return Ok(None);
        }
        self.inner.get_idempotency(scope, key).await
    }
    async fn purge_idempotency_keys(&self, before: OffsetDateTime) -> DomainResult<u64> {
        self.inner.purge_idempotency_keys(before).await
    }
    async fn revoke_version(
        &self,
        id: Uuid,
        v: u32,
        r: RevocationReason,
        at: OffsetDateTime,
        a: &AuditEvent,
    ) -> DomainResult<()> {
        self.inner.revoke_version(id, v, r, at, a).await
    }
    async fn archive_certificate(
        &self,
        id: Uuid,
        at: OffsetDateTime,
        a: &AuditEvent,
    ) -> DomainResult<()> {
        self.inner.archive_certificate(id, at, a).await
    }
    async fn manage_certificate(&self, c: &Certificate, a: &AuditEvent) -> DomainResult<()> {
        self.inner.manage_certificate(c, a).await
    }
    async fn get_certificate(&self, id: Uuid) -> DomainResult<Option<Certificate>> {
        self.inner.get_certificate(id).await
    }
    async fn list_certificates(&self, q: &CertificateQuery) -> DomainResult<Page<Certificate>> {
        self.inner.list_certificates(q).await
    }
    async fn list_versions(&self, id: Uuid) -> DomainResult<Vec<CertificateVersion>> {
        self.inner.list_versions(id).await
    }
    async fn list_revoked(&self, id: Uuid) -> DomainResult<Vec<CertificateVersion>> {
        self.inner.list_revoked(id).await
    }
    async fn due_for_renewal(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<Certificate>> {
        self.inner.due_for_renewal(now, limit).await
    }
    async fn append_audit(&self, e: &AuditEvent) -> DomainResult<()> {
        self.inner.append_audit(e).await
    }
    async fn list_audit(&self, q: &AuditQuery) -> DomainResult<Page<AuditEvent>> {
        self.inner.list_audit(q).await
    }
    async fn certificate_counts(
        &self,
        teams: Option<&[String]>,
        edges: &[OffsetDateTime],
    ) -> DomainResult<certflow_core::model::CertificateCounts> {
        self.inner.certificate_counts(teams, edges).await
    }
    async fn certificate_stats(
        &self,
        expiring_before: OffsetDateTime,
    ) -> DomainResult<certflow_core::model::CertificateStats> {
        self.inner.certificate_stats(expiring_before).await
    }
    async fn get_setting(&self, k: &str) -> DomainResult<Option<String>> {
        self.inner.get_setting(k).await
    }
    async fn put_setting(&self, k: &str, v: &str) -> DomainResult<()> {
        self.inner.put_setting(k, v).await
    }
}

struct Fixture {
    services: Services,
    store: Arc<FailingCommits>,
    blobs: Arc<ObjectBlobStore>,
    _dir: tempfile::TempDir,
}

async fn fixture(
    key: MasterKey,
    previous: Vec<MasterKey>,
    dir: Option<tempfile::TempDir>,
) -> Fixture {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let store = Arc::new(FailingCommits {
        inner: SqliteStore::open(&dir.path().join("db")).await.unwrap(),
        fail: AtomicBool::new(false),
        hide_idempotency: AtomicU32::new(0),
    });
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(key, previous)));
    let services = Services::new(store.clone(), blobs.clone(), sealer, None);
    let settings = CaSettings {
        name: "test".into(),
        key_type: KeyType::EcdsaP256,
        root_validity_days: 3650,
        intermediate_validity_days: 1825,
    };
    services
        .ensure_ca(&settings, OffsetDateTime::now_utc())
        .await
        .unwrap();
    Fixture {
        services,
        store,
        blobs,
        _dir: dir,
    }
}

fn request(name: &str) -> CreateCertificateRequest {
    CreateCertificateRequest {
        team: "payments".into(),
        names: vec![name.into()],
        ..Default::default()
    }
}

async fn certificate_blobs(blobs: &ObjectBlobStore) -> Vec<String> {
    blobs.list("certificates").await.unwrap()
}

#[tokio::test]
async fn failed_commit_leaves_no_row_and_no_blob() {
    let f = fixture(MasterKey::generate().unwrap(), vec![], None).await;
    let actor = Actor::system();
    let now = OffsetDateTime::now_utc();
    let kept = f
        .services
        .create_certificate(&actor, &request("kept.example.com"), now)
        .await
        .unwrap();
    let before = certificate_blobs(&f.blobs).await;
    assert_eq!(before.len(), 3, "cert, chain and sealed key: {before:?}");

    f.store.fail.store(true, Ordering::SeqCst);
    let err = f
        .services
        .create_certificate(&actor, &request("lost.example.com"), now)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::Unavailable { .. }), "{err}");
    let err = f
        .services
        .renew(&actor, kept.certificate.id, None, now)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::Unavailable { .. }), "{err}");
    f.store.fail.store(false, Ordering::SeqCst);

    assert_eq!(
        certificate_blobs(&f.blobs).await,
        before,
        "the failed commits' blobs were removed"
    );
    let page = f
        .services
        .list(&CertificateQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    let view = f.services.certificate(kept.certificate.id).await.unwrap();
    assert_eq!(view.versions.len(), 1);
    // Every row's blobs exist.
    f.services
        .download(kept.certificate.id, None, DownloadKind::FullChain)
        .await
        .unwrap();
    f.services
        .download_key(&actor, kept.certificate.id, None, now)
        .await
        .unwrap();
}

/// Two requests with one idempotency key that both sign: the second's commit
/// fails on the key, it removes its blobs and answers with the first's result.
#[tokio::test]
async fn losing_idempotent_request_removes_its_blobs_and_replays_the_winner() {
    let f = fixture(MasterKey::generate().unwrap(), vec![], None).await;
    let actor = Actor::system();
    // Whole seconds, as stored, so that replayed versions compare equal.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let req = request("once.example.com");
    let first = f
        .services
        .create_certificate_idempotent(&actor, &req, Some("k"), now)
        .await
        .unwrap();
    let blobs = certificate_blobs(&f.blobs).await;

    // The second request's lookup ran before the first committed.
    f.store.hide_idempotency.store(1, Ordering::SeqCst);
    let second = f
        .services
        .create_certificate_idempotent(&actor, &req, Some("k"), now)
        .await
        .unwrap();
    assert_eq!(f.store.hide_idempotency.load(Ordering::SeqCst), 0);
    assert_eq!(second.certificate.id, first.certificate.id);
    assert_eq!(second.versions, first.versions);
    assert_eq!(certificate_blobs(&f.blobs).await, blobs);
    let page = f
        .services
        .list(&CertificateQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);

    // The same for renewals.
    let id = first.certificate.id;
    let renewed = f
        .services
        .renew_idempotent(&actor, id, None, Some("r"), now)
        .await
        .unwrap();
    let blobs = certificate_blobs(&f.blobs).await;
    f.store.hide_idempotency.store(1, Ordering::SeqCst);
    let again = f
        .services
        .renew_idempotent(&actor, id, None, Some("r"), now)
        .await
        .unwrap();
    assert_eq!(again.versions, renewed.versions);
    assert_eq!(again.versions.len(), 2);
    assert_eq!(certificate_blobs(&f.blobs).await, blobs);

    // Another actor's key is another key.
    let other = Actor {
        subject: "bob".into(),
        source: None,
    };
    let bobs = f
        .services
        .renew_idempotent(&other, id, None, Some("r"), now)
        .await
        .unwrap();
    assert_eq!(bobs.versions.len(), 3);
    // A failed commit without a key conflict is not turned into a replay.
    f.store.fail.store(true, Ordering::SeqCst);
    let err = f
        .services
        .renew_idempotent(&actor, id, None, Some("fresh"), now)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::Unavailable { .. }), "{err}");
    f.store.fail.store(false, Ordering::SeqCst);
    // A reused key with another request is refused, whatever the state.
    let err = f
        .services
        .create_certificate_idempotent(&actor, &request("other.example.com"), Some("k"), now)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::IdempotencyKeyReused(_)), "{err}");
}

#[tokio::test]
async fn sweep_purges_idempotency_keys_after_a_day() {
    let f = fixture(MasterKey::generate().unwrap(), vec![], None).await;
    let actor = Actor::system();
    let now = OffsetDateTime::now_utc();
    let req = request("once.example.com");
    let first = f
        .services
        .create_certificate_idempotent(&actor, &req, Some("k"), now)
        .await
        .unwrap();
    let report = f
        .services
        .sweep_orphan_blobs(time::Duration::hours(1), now + time::Duration::hours(23))
        .await
        .unwrap();
    assert_eq!(report.idempotency_keys_purged, 0);
    let report = f
        .services
        .sweep_orphan_blobs(time::Duration::hours(1), now + time::Duration::hours(25))
        .await
        .unwrap();
    assert_eq!(report.idempotency_keys_purged, 1);
    // The key is free again: the same request now issues a new certificate,
    // refused here only because the name is taken.
    let err = f
        .services
        .create_certificate_idempotent(&actor, &req, Some("k"), now)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::Conflict(_)), "{err}");
    assert_eq!(
        f.services
            .certificate(first.certificate.id)
            .await
            .unwrap()
            .versions
            .len(),
        1
    );
}

#[tokio::test]
async fn sweeper_deletes_crash_leftovers_only_after_the_grace_period() {
    let f = fixture(MasterKey::generate().unwrap(), vec![], None).await;
    let actor = Actor::system();
    let now = OffsetDateTime::now_utc();
    let kept = f
        .services
        .create_certificate(&actor, &request("kept.example.com"), now)
        .await
        .unwrap();
    // What a process killed after its blob writes leaves: blobs of a certificate and
    // of a version that were never committed.
    let orphans = [
        format!("certificates/{}/v1-00ff/cert.der", Uuid::now_v7()),
        format!("certificates/{}/v2-00aa/key.enc", kept.certificate.id),
        format!("issuers/{}/issuing-key.enc", Uuid::now_v7()),
    ];
    for o in &orphans {
        f.blobs
            .put(o, Bytes::from_static(b"leftover"))
            .await
            .unwrap();
    }
    let young = f
        .services
        .sweep_orphan_blobs(time::Duration::hours(1), OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(young.deleted.is_empty(), "{young:?}");
    assert_eq!(young.young_orphans, 3);

    let later = OffsetDateTime::now_utc() + time::Duration::hours(2);
    let swept = f
        .services
        .sweep_orphan_blobs(time::Duration::hours(1), later)
        .await
        .unwrap();
    let mut deleted = swept.deleted.clone();
    deleted.sort();
    let mut want = orphans.to_vec();
    want.sort();
    assert_eq!(deleted, want);
    for o in &orphans {
        assert!(matches!(
            f.blobs.get(o).await,
            Err(DomainError::NotFound(_))
        ));
    }
    // Everything referenced survived.
    f.services
        .download(kept.certificate.id, None, DownloadKind::FullChain)
        .await
        .unwrap();
    f.services
        .download_key(&actor, kept.certificate.id, None, now)
        .await
        .unwrap();
    let again = f
        .services
        .sweep_orphan_blobs(time::Duration::ZERO, later)
        .await
        .unwrap();
    assert!(again.deleted.is_empty(), "{again:?}");
}

#[tokio::test]
async fn rewrap_moves_every_key_to_the_current_master_key() {
    let old = MasterKey::generate().unwrap();
    let f = fixture(old.clone(), vec![], None).await;
    let actor = Actor::system();
    let now = OffsetDateTime::now_utc();
    let c = f
        .services
        .create_certificate(&actor, &request("a.example.com"), now)
        .await
        .unwrap();
    let dir = f._dir;

    // Rotate: the new key encrypts, the old one still decrypts.
    let new = MasterKey::generate().unwrap();
    let f = fixture(new.clone(), vec![old.clone()], Some(dir)).await;
    let report = f.services.rewrap_keys(&actor, now).await.unwrap();
    assert_eq!(
        report,
        crate::RewrapReport {
            keys: 3,
            rewrapped: 3
        }
    );
    let again = f.services.rewrap_keys(&actor, now).await.unwrap();
    assert_eq!(again.rewrapped, 0);

    // Now the old key is no longer needed.
    let dir = f._dir;
    let f = fixture(new, vec![], Some(dir)).await;
    assert!(
        f.services
            .download_key(&actor, c.certificate.id, None, now)
            .await
            .unwrap()
            .contains("PRIVATE KEY")
    );
    f.services
        .create_certificate(&actor, &request("b.example.com"), now)
        .await
        .unwrap();
    // And the old key alone can no longer read anything.
    let dir = f._dir;
    let err = match fixture_result(old, dir).await {
        Ok(_) => panic!("the old master key must not open re-wrapped keys"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("master key"), "{err}");
}

async fn fixture_result(key: MasterKey, dir: tempfile::TempDir) -> DomainResult<()> {
    let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await?);
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs"))?);
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(key, vec![])));
    let services = Services::new(store, blobs, sealer, None);
    let settings = CaSettings {
        name: "test".into(),
        key_type: KeyType::EcdsaP256,
        root_validity_days: 3650,
        intermediate_validity_days: 1825,
    };
    services
        .ensure_ca(&settings, OffsetDateTime::now_utc())
        .await
        .map(|_| ())
}

/// The renewal fraction divides the lifetime from issuance, not from the
/// backdated notBefore: a 60 s certificate at fraction 0.3 is due 18 s after
/// issuance, not at once.
#[tokio::test]
async fn short_lived_certificates_are_not_due_at_issuance() {
    let f = fixture(MasterKey::generate().unwrap(), vec![], None).await;
    let now = OffsetDateTime::now_utc();
    let mut req = request("short.example.com");
    req.validity_seconds = Some(60);
    req.renewal = Some(certflow_api::RenewalPolicyView {
        renew_at_fraction: 0.3,
        renew_before_days: None,
        jitter_fraction: 0.0,
    });
    let view = f
        .services
        .create_certificate(&Actor::system(), &req, now)
        .await
        .unwrap();
    let v = &view.versions[0];
    assert!(v.not_before < v.created_at, "notBefore is backdated");
    let due = view.certificate.renew_after - v.created_at;
    assert!(
        (time::Duration::seconds(17)..=time::Duration::seconds(19)).contains(&due),
        "due {due} after issuance"
    );
}

/// A replacement whose issuance fails after the revocation committed: the
/// revocation stands, the answer says the replacement failed, and the
/// failure is audited for someone to renew — nothing is half-written.
#[tokio::test]
async fn a_failed_replacement_leaves_the_revocation_standing_and_says_so() {
    let f = fixture(MasterKey::generate().unwrap(), vec![], None).await;
    let actor = Actor::system();
    let now = OffsetDateTime::now_utc();
    let id = f
        .services
        .create_certificate(&actor, &request("replaced.example.com"), now)
        .await
        .unwrap()
        .certificate
        .id;
    let before = certificate_blobs(&f.blobs).await;
    f.store.fail.store(true, Ordering::SeqCst);
    let r = f
        .services
        .revoke_with(&actor, id, None, "superseded", true, now)
        .await
        .unwrap();
    f.store.fail.store(false, Ordering::SeqCst);
    match &r.replacement {
        Some(crate::Replacement::Failed { error }) => {
            assert!(error.contains("injected failure"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.revoked_version, 1);
    assert_eq!(r.view.certificate.status, CertificateStatus::Revoked);
    assert_eq!(r.view.versions.len(), 1);
    assert_eq!(r.view.versions[0].status, VersionStatus::Revoked);
    assert_eq!(certificate_blobs(&f.blobs).await, before, "no orphan blobs");
    let audit = f
        .services
        .audit(&AuditQuery {
            target: Some(format!("certificate/{id}")),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    let failed = &audit[0];
    assert_eq!(failed.action, "certificate.replacement.failed");
    assert_eq!(failed.outcome, Outcome::Failure);
    assert_eq!(failed.details["revoked_version"], 1);
    assert_eq!(audit[1].action, "certificate.revoke");
    assert_eq!(audit[1].details["replace"], true);
    // Renewing by hand afterwards brings the certificate back.
    let view = f.services.renew(&actor, id, None, now).await.unwrap();
    assert_eq!(view.certificate.status, CertificateStatus::Active);
    assert_eq!(view.certificate.current_version, 2);
}

#[tokio::test]
async fn verify_store_opens_every_key_and_names_what_is_wrong() {
    let f = fixture(MasterKey::generate().unwrap(), vec![], None).await;
    let actor = Actor::system();
    let now = OffsetDateTime::now_utc();
    let a = f
        .services
        .create_certificate(&actor, &request("a.example.com"), now)
        .await
        .unwrap();
    let b = f
        .services
        .create_certificate(&actor, &request("b.example.com"), now)
        .await
        .unwrap();
    f.services
        .renew(&actor, a.certificate.id, None, now)
        .await
        .unwrap();
    // What a process killed after its blob writes leaves behind.
    let orphan = format!("certificates/{}/v9-00ff/cert.der", a.certificate.id);
    f.blobs
        .put(&orphan, Bytes::from_static(b"leftover"))
        .await
        .unwrap();

    let clean = f.services.verify_store(now).await.unwrap();
    assert!(clean.problems.is_empty(), "{clean:?}");
    assert_eq!((clean.certificates, clean.versions, clean.keys), (2, 3, 3));
    let unreferenced: Vec<&str> = clean.unreferenced.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(unreferenced, [orphan.as_str()]);

    // b's key blob replaced by a's (sealed for another record: must not
    // open), and a's current certificate replaced by b's (not the one its
    // row describes).
    let va = f.store.list_versions(a.certificate.id).await.unwrap();
    let vb = f.store.list_versions(b.certificate.id).await.unwrap();
    let a_key = f.blobs.get(va[0].key_blob.as_ref().unwrap()).await.unwrap();
    f.blobs
        .put(vb[0].key_blob.as_ref().unwrap(), a_key)
        .await
        .unwrap();
    let b_cert = f.blobs.get(&vb[0].cert_blob).await.unwrap();
    f.blobs.put(&va[0].cert_blob, b_cert).await.unwrap();
    let broken = f.services.verify_store(now).await.unwrap();
    assert_eq!(broken.problems.len(), 3, "{:?}", broken.problems);
    let text = broken.problems.join("\n");
    assert!(
        text.contains(&format!("certificate {} version 1: key", b.certificate.id))
            && text.contains("does not open"),
        "{text}"
    );
    assert!(
        text.contains(&format!("certificate {} version 2: ", a.certificate.id))
            && text.contains(&format!("the row says {}", va[0].serial)),
        "{text}"
    );
    assert!(
        text.contains("does not belong to its certificate"),
        "{text}"
    );
}

/// A request naming no issuer gets the default: a new default set through
/// the services is used at once; one set by another replica (straight in
/// the shared database here) once the change feed says so.
#[tokio::test]
async fn requests_without_an_issuer_follow_the_default_as_it_changes() {
    let f = fixture(MasterKey::generate().unwrap(), vec![], None).await;
    let actor = Actor::system();
    let now = OffsetDateTime::now_utc();
    let issued_by = |name: &'static str| {
        let services = f.services.clone();
        async move {
            services
                .create_certificate(&Actor::system(), &request(name), now)
                .await
                .unwrap()
                .certificate
                .issuer_id
        }
    };
    let first = issued_by("a.example.com").await;
    let ca = certflow_pki::create_ca("Second", KeyType::EcdsaP256, now, 3650, 1825).unwrap();
    let second = f
        .services
        .import_ca(
            &actor,
            &certflow_api::ImportCaRequest {
                name: "second".into(),
                certificate_pem: certflow_pki::cert_to_pem(&ca.issuing_cert_der),
                private_key_pem: ca.issuing_key.to_pem().to_string(),
                chain_pem: Some(
                    ca.chain_der
                        .iter()
                        .map(|d| certflow_pki::cert_to_pem(d))
                        .collect(),
                ),
                make_default: true,
            },
            now,
        )
        .await
        .unwrap();
    assert_ne!(first, second.id);
    assert_eq!(issued_by("b.example.com").await, second.id, "set here");

    let audit = AuditEvent::success(
        now,
        &actor,
        "issuer.set-default",
        "issuer/x",
        serde_json::json!({}),
    );
    f.store.set_default_issuer(first, &audit).await.unwrap();
    assert_eq!(
        issued_by("c.example.com").await,
        second.id,
        "kept until the feed tells"
    );
    f.services.forget_issuers();
    assert_eq!(issued_by("d.example.com").await, first, "set elsewhere");
}
