//! The issuers behind the `IssuerBackend` port: the internal CA, signing
//! with its key wherever that lives (sealed in the blob store and unsealed
//! while in use, or in a PKCS#11 token or AWS KMS behind the `CaKeyStore`
//! port), and whatever the server registered for other issuers (ACME CAs),
//! looked up by issuer id.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use certflow_core::ca_keys::{CaKeyBackend, CaKeyRef, CaKeyStore};
use certflow_core::model::{Issuer, IssuerKind, KeyType};
use certflow_core::ports::{BlobStore, IssueRequest, IssuedCertificate, IssuerBackend};
use certflow_core::renewal::SuggestedWindow;
use certflow_core::{DomainError, error::DomainResult};
use certflow_pki::{CaPublicKey, IssuerUrls, LeafRequest, LintRefusal, PrivateKey, ToBeSigned};
use certflow_seal::{EncryptionContext, Sealer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ca::key_context;
use crate::cpu::CpuPool;

/// A CA's signing key for one operation.
pub(crate) enum CaSigner {
    /// Unsealed into memory (kept while in use: [`UnsealedKeys`]), wiped
    /// when dropped; it signs on the CPU pool.
    Local(PrivateKey, CpuPool),
    /// Held by a token or KMS, which signs the digest of what is signed.
    Remote {
        /// The backend.
        store: Arc<dyn CaKeyStore>,
        /// The key in it.
        key: CaKeyRef,
    },
}

impl CaSigner {
    /// The key's signature over `tbs` (not yet checked: `finish` does that).
    pub(crate) async fn signature(&self, tbs: &ToBeSigned) -> DomainResult<Vec<u8>> {
        match self {
            Self::Local(key, cpu) => {
                let (key, message) = (key.clone(), tbs.message().to_vec());
                cpu.run("signing", move || key.sign(&message)).await
            }
            Self::Remote { store, key } => {
                // Refuses key types no backend signs digests for (Ed25519).
                tbs.digest()?;
                store.sign(key, tbs.key_type(), tbs.message()).await
            }
        }
    }

    /// Signs `tbs` and returns the finished DER, once its signature
    /// verifies under the CA's public key.
    pub(crate) async fn sign(&self, tbs: ToBeSigned) -> DomainResult<Vec<u8>> {
        let signature = self.signature(&tbs).await?;
        tbs.finish(&signature)
    }
}

/// certflow's own CA: signs with the issuing key unsealed while in use, or
/// through the configured CA key backend.
#[derive(Clone)]
pub struct InternalCa {
    blobs: Arc<dyn BlobStore>,
    sealer: Sealer,
    public_url: Option<String>,
    /// Building, linting and local signing run here, off the async runtime.
    pub(crate) cpu: CpuPool,
    keys: Option<Arc<dyn CaKeyStore>>,
    sealed: SealedKeys,
    unsealed: UnsealedKeys,
}

/// Sealed CA keys as read from the blob store, by blob key, so that signing
/// does not read the database each time (unsealed: [`UnsealedKeys`]). A
/// CA key's blob never changes what it holds: each CA's keys are written
/// under a fresh id, and `keys rewrap` re-seals the same key under the
/// current master key, which leaves the bytes read before it openable by
/// the key ring this process runs with.
///
/// A std mutex, not tokio's: it is held for one map lookup or insert and
/// never across an await, so it cannot stall the runtime.
#[derive(Clone, Default)]
struct SealedKeys(Arc<std::sync::Mutex<HashMap<String, bytes::Bytes>>>);

impl SealedKeys {
    /// Beyond this many CA keys the cache starts over (there are a handful).
    const MAX: usize = 256;

    fn get(&self, blob: &str) -> Option<bytes::Bytes> {
        self.0.lock().ok()?.get(blob).cloned()
    }

    fn remember(&self, blob: &str, sealed: &bytes::Bytes) {
        if let Ok(mut keys) = self.0.lock() {
            if keys.len() >= Self::MAX {
                keys.clear();
            }
            keys.insert(blob.to_owned(), sealed.clone());
        }
    }
}

/// CA keys unsealed and loaded, by blob key and encryption context (an
/// unsealing under another context fails, and so must a kept key's
/// lookup), kept while they sign: each is
/// dropped (and wiped) once unused for [`UnsealedKeys::IDLE`]. Unsealing
/// per signature cost an envelope's decryption and a key load (a scalar
/// multiplication) per certificate, about 5 % of an issuance's CPU, and with
/// an AWS KMS master key a KMS `Decrypt` call per certificate (latency,
/// price, and the account's request quota). A key kept a minute longer adds
/// little exposure: the master key that opens it is in this process's
/// memory anyway (local key ring), or a KMS call away.
///
/// A std mutex, held for one map operation, never across an await.
#[derive(Clone, Default)]
struct UnsealedKeys(Arc<std::sync::Mutex<HashMap<Vec<u8>, Unsealed>>>);

/// An unsealed key and when it last signed.
struct Unsealed {
    key: PrivateKey,
    used: tokio::time::Instant,
    /// Which keeping of the key this is: the task dropping one never drops
    /// a later one kept under the same blob key.
    kept: u64,
}

impl UnsealedKeys {
    /// How long an unused key stays in memory.
    const IDLE: std::time::Duration = std::time::Duration::from_secs(60);
    /// Beyond this many keys the cache starts over (there are a handful).
    const MAX: usize = 256;

    /// Where the key unsealed from `blob` under `context` is kept.
    fn slot(blob: &str, context: &EncryptionContext) -> Vec<u8> {
        [blob.as_bytes(), &[0], context.as_bytes()].concat()
    }

    /// The key unsealed from `blob` under `context`, if it is kept; marks
    /// it used.
    fn get(&self, blob: &str, context: &EncryptionContext) -> Option<PrivateKey> {
        let mut keys = self.0.lock().ok()?;
        let hot = keys.get_mut(&Self::slot(blob, context))?;
        hot.used = tokio::time::Instant::now();
        Some(hot.key.clone())
    }

    /// Keeps `key`, unsealed from `blob` under `context`, until it has
    /// been unused for [`Self::IDLE`]. Outside a runtime nothing could drop
    /// it later, so nothing is kept.
    fn keep(&self, blob: &str, context: &EncryptionContext, key: &PrivateKey) {
        static KEPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(mut keys) = self.0.lock() else {
            return;
        };
        if keys.len() >= Self::MAX {
            keys.clear();
        }
        let kept = KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hot = Unsealed {
            key: key.clone(),
            used: tokio::time::Instant::now(),
            kept,
        };
        let slot = Self::slot(blob, context);
        keys.insert(slot.clone(), hot);
        drop(keys);
        runtime.spawn(Self::drop_when_idle(Arc::downgrade(&self.0), slot, kept));
    }

    /// Drops the key kept as `kept` in `slot` once it has been unused for
    /// [`Self::IDLE`]; ends early if it is gone (replaced, cleared, or the
    /// CA itself dropped).
    async fn drop_when_idle(
        keys: std::sync::Weak<std::sync::Mutex<HashMap<Vec<u8>, Unsealed>>>,
        slot: Vec<u8>,
        kept: u64,
    ) {
        let mut until = tokio::time::Instant::now() + Self::IDLE;
        loop {
            tokio::time::sleep_until(until).await;
            let Some(keys) = keys.upgrade() else {
                return;
            };
            let Ok(mut keys) = keys.lock() else {
                return;
            };
            match keys.get(&slot) {
                Some(hot) if hot.kept == kept => {
                    let idle_until = hot.used + Self::IDLE;
                    if idle_until <= tokio::time::Instant::now() {
                        keys.remove(&slot);
                        return;
                    }
                    until = idle_until;
                }
                _ => return,
            }
        }
    }
}

impl InternalCa {
    pub(crate) fn new(
        blobs: Arc<dyn BlobStore>,
        sealer: Sealer,
        public_url: Option<String>,
        cpu: CpuPool,
    ) -> Self {
        Self {
            blobs,
            sealer,
            public_url,
            cpu,
            keys: None,
            sealed: SealedKeys::default(),
            unsealed: UnsealedKeys::default(),
        }
    }

    /// New CAs get their keys from `keys` (see `Services::with_ca_key_store`).
    pub(crate) fn set_key_store(&mut self, keys: Arc<dyn CaKeyStore>) {
        self.keys = Some(keys);
    }

    /// The backend new CA keys are made in.
    pub(crate) fn key_store(&self) -> Option<&Arc<dyn CaKeyStore>> {
        self.keys.as_ref()
    }

    fn urls(&self, issuer: &Issuer) -> Option<IssuerUrls> {
        self.public_url.as_ref().map(|base| IssuerUrls {
            ca_issuers: format!("{base}/pki/{}/ca.crt", issuer.id),
            crl: format!("{base}/pki/{}/crl", issuer.id),
            ocsp: Some(format!("{base}/pki/{}/ocsp", issuer.id)),
        })
    }

    /// The configured backend when it holds `key`; otherwise unavailable,
    /// saying which backend holds it and what this server is configured with.
    fn store_for(&self, key: &CaKeyRef, owner: &str) -> DomainResult<Arc<dyn CaKeyStore>> {
        match &self.keys {
            Some(store) if store.backend() == key.backend() => Ok(store.clone()),
            configured => Err(DomainError::Unavailable {
                backend: key.backend().display_name(),
                reason: format!(
                    "the key of {owner} is held by the {} key backend, and this server has [ca] key_backend = \"{}\": configure [ca.{}] to use it",
                    key.backend().as_str(),
                    configured
                        .as_ref()
                        .map_or(CaKeyBackend::Local, |s| s.backend())
                        .as_str(),
                    key.backend().as_str().replace('-', "_"),
                ),
            }),
        }
    }

    /// The signer of the key stored as `stored` (an issuer's `key_blob`):
    /// unsealed under `context` when sealed (or kept from an earlier
    /// unsealing: [`UnsealedKeys`]); `owner` names the CA in errors.
    pub(crate) async fn signer(
        &self,
        stored: &str,
        context: &EncryptionContext,
        owner: &str,
    ) -> DomainResult<CaSigner> {
        let blob = match CaKeyRef::parse(stored) {
            CaKeyRef::Sealed(blob) => blob,
            remote => {
                return Ok(CaSigner::Remote {
                    store: self.store_for(&remote, owner)?,
                    key: remote,
                });
            }
        };
        let key = match self.unsealed.get(&blob, context) {
            Some(key) => key,
            None => {
                let key = self.unseal(&blob, context, owner).await?;
                self.unsealed.keep(&blob, context, &key);
                key
            }
        };
        Ok(CaSigner::Local(key, self.cpu.clone()))
    }

    /// Unseals the key sealed in `blob` under `context`.
    async fn unseal(
        &self,
        blob: &str,
        context: &EncryptionContext,
        owner: &str,
    ) -> DomainResult<PrivateKey> {
        let sealed = match self.sealed.get(blob) {
            Some(sealed) => sealed,
            None => {
                let sealed = self.blobs.get(blob).await.map_err(|e| match e {
                    DomainError::NotFound(_) => DomainError::Integrity(format!(
                        "the signing key of {owner} is missing from the blob store"
                    )),
                    other => other,
                })?;
                self.sealed.remember(blob, &sealed);
                sealed
            }
        };
        let der = self.sealer.open(&sealed, context).await.map_err(|e| {
            DomainError::Integrity(format!(
                "cannot unseal the signing key of {owner} ({e}); is this the master key it was created with?"
            ))
        })?;
        PrivateKey::from_pkcs8_der(&der)
    }

    /// Checks that the key stored as `stored` is usable and belongs to the
    /// CA certificate `cert_der` (at start: a wrong master key or a token
    /// without the key stops the server with the reason). A sealed key is
    /// unsealed afresh, not taken from the keys kept in use.
    pub(crate) async fn check_key(
        &self,
        stored: &str,
        context: &EncryptionContext,
        owner: &str,
        cert_der: &[u8],
    ) -> DomainResult<()> {
        let expected = CaPublicKey::of_certificate(cert_der)?;
        let actual = match CaKeyRef::parse(stored) {
            CaKeyRef::Sealed(blob) => CaPublicKey::from_spki_der(
                "key",
                &self.unseal(&blob, context, owner).await?.public_key_der(),
            )?,
            remote => CaPublicKey::from_spki_der(
                "key",
                &self.store_for(&remote, owner)?.public_key(&remote).await?,
            )?,
        };
        if !actual.same_key(&expected) {
            return Err(DomainError::Integrity(format!(
                "the key of {owner} ({stored}) is not the key of its CA certificate"
            )));
        }
        Ok(())
    }

    /// Whether the key stored as `stored` is reachable, cheaply: the sealed
    /// blob is there, or the backend answers for the key (the issuer probe).
    pub(crate) async fn probe_key(&self, stored: &str, owner: &str) -> DomainResult<()> {
        match CaKeyRef::parse(stored) {
            CaKeyRef::Sealed(blob) => self.blobs.get(&blob).await.map(|_| ()),
            remote => self
                .store_for(&remote, owner)?
                .public_key(&remote)
                .await
                .map(|_| ()),
        }
    }

    /// The signer of an issuer's issuing key.
    pub(crate) async fn issuer_signer(&self, issuer: &Issuer) -> DomainResult<CaSigner> {
        self.signer(
            &issuer.key_blob,
            &key_context(issuer.id, "issuing"),
            &format!("issuer '{}'", issuer.name),
        )
        .await
    }

    /// Issues after pre-issuance linting: the certificate, or the lints that
    /// refused it (the CA key then signed nothing).
    pub(crate) async fn issue_linted(
        &self,
        issuer: &Issuer,
        request: &IssueRequest,
        now: OffsetDateTime,
    ) -> DomainResult<Result<IssuedCertificate, LintRefusal>> {
        let ca_der = certflow_pki::parse_pem_certs("issuing_cert_pem", &issuer.issuing_cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::Internal("issuer has no certificate".into()))?;
        let urls = self.urls(issuer);
        let request = request.clone();
        let prepare = move || {
            // Building and linting (one certificate, a placeholder signature).
            certflow_pki::prepare_leaf(
                &ca_der,
                &LeafRequest {
                    profile: request.profile,
                    names: &request.names,
                    spki_der: &request.spki_der,
                    key_type: request.key_type,
                    validity_days: request.validity_days,
                    validity_secs: request.validity_secs,
                    now,
                    urls: urls.as_ref(),
                },
            )
        };
        let cert_der = match self.issuer_signer(issuer).await? {
            // A key in memory: building, linting, signing and checking the
            // signature in one go, on the CPU pool unless that is cheap.
            CaSigner::Local(key, cpu) => {
                let inline = signs_inline(key.key_type());
                let sign = move || {
                    Ok(match prepare()? {
                        Ok(tbs) => {
                            let signature = key.sign(tbs.message())?;
                            Ok(tbs.finish(&signature)?)
                        }
                        Err(refusal) => Err(refusal),
                    })
                };
                let signed = if inline {
                    sign()?
                } else {
                    cpu.run("signing", sign).await?
                };
                match signed {
                    Ok(cert_der) => cert_der,
                    Err(refusal) => return Ok(Err(refusal)),
                }
            }
            remote => {
                let tbs = match self.cpu.run("signing", prepare).await? {
                    Ok(tbs) => tbs,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                remote.sign(tbs).await?
            }
        };
        Ok(Ok(IssuedCertificate {
            cert_der,
            chain_pem: format!("{}{}", issuer.issuing_cert_pem, issuer.chain_pem),
        }))
    }
}

#[async_trait]
impl IssuerBackend for InternalCa {
    async fn issue(
        &self,
        issuer: &Issuer,
        request: &IssueRequest,
        now: OffsetDateTime,
    ) -> DomainResult<IssuedCertificate> {
        self.issue_linted(issuer, request, now)
            .await?
            .map_err(|refusal| DomainError::Conflict(refusal.to_string()))
    }

    async fn renewal_info(
        &self,
        _issuer: &Issuer,
        _cert_der: &[u8],
    ) -> DomainResult<Option<SuggestedWindow>> {
        // The internal CA has no opinion: the certificate's policy decides.
        Ok(None)
    }
}

/// Whether an issuance under a CA key of `key_type` runs on the request's
/// own task rather than the CPU pool. The cost bound is the key type: with a
/// P-256 or Ed25519 key, building, linting, signing and checking the
/// signature take about 100 µs (the CSR's check, already made inline, about
/// half that), while a trip to the pool costs two thread switches, 5–6 % of
/// an issuance's CPU (BENCHMARKS.md). P-384 and RSA signatures cost several
/// times more (an RSA-4096 one, milliseconds) and go to the pool.
fn signs_inline(key_type: KeyType) -> bool {
    matches!(key_type, KeyType::EcdsaP256 | KeyType::Ed25519)
}

/// Backends by issuer: the internal CA for internal issuers, registered ones otherwise.
#[derive(Clone)]
pub(crate) struct Backends {
    pub(crate) internal: InternalCa,
    pub(crate) external: HashMap<Uuid, Arc<dyn IssuerBackend>>,
}

impl Backends {
    /// The backend that signs for `issuer`.
    pub(crate) fn get(&self, issuer: &Issuer) -> DomainResult<&dyn IssuerBackend> {
        match issuer.kind {
            IssuerKind::Internal => Ok(&self.internal),
            IssuerKind::Acme => self
                .external
                .get(&issuer.id)
                .map(|b| b.as_ref())
                .ok_or_else(|| DomainError::Unavailable {
                    backend: "issuer",
                    reason: format!(
                        "ACME issuer '{}' is not configured on this server (add it under [[acme]])",
                        issuer.name
                    ),
                }),
            IssuerKind::External => Err(DomainError::Conflict(format!(
                "issuer '{}' is an external CA: certflow cannot issue from it",
                issuer.name
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use certflow_blob::ObjectBlobStore;
    use certflow_core::KeyType;
    use certflow_seal::envelope::DataKey;
    use certflow_seal::{KeyProvider, LocalKeyProvider, MasterKey};
    use zeroize::Zeroizing;

    use super::*;

    /// The local key ring, counting the data keys it unwraps (one per unsealing).
    struct Counting {
        inner: LocalKeyProvider,
        opened: AtomicU32,
    }

    #[async_trait]
    impl KeyProvider for Counting {
        fn current_key_id(&self) -> &str {
            self.inner.current_key_id()
        }
        async fn generate_data_key(&self, context: &EncryptionContext) -> DomainResult<DataKey> {
            self.inner.generate_data_key(context).await
        }
        async fn decrypt_data_key(
            &self,
            key_id: &str,
            wrapped: &[u8],
            context: &EncryptionContext,
        ) -> DomainResult<Zeroizing<[u8; 32]>> {
            self.opened.fetch_add(1, Ordering::SeqCst);
            self.inner.decrypt_data_key(key_id, wrapped, context).await
        }
    }

    #[tokio::test]
    async fn a_sealed_ca_key_is_unsealed_once_while_it_signs_and_afresh_when_checked() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::local(dir.path()).unwrap());
        let counting = Arc::new(Counting {
            inner: LocalKeyProvider::new(MasterKey::generate().unwrap(), vec![]),
            opened: AtomicU32::new(0),
        });
        let sealer = Sealer::new(counting.clone());
        let ca = InternalCa::new(blobs.clone(), sealer.clone(), None, CpuPool::new(1, 4));
        let context = key_context(Uuid::now_v7(), "issuing");
        let m = certflow_pki::create_ca(
            "Test",
            KeyType::EcdsaP256,
            OffsetDateTime::now_utc(),
            3650,
            365,
        )
        .unwrap();
        let key = &m.issuing_key;
        let sealed = sealer.seal(key.pkcs8_der(), &context).await.unwrap();
        blobs.put("ca/key", sealed.into()).await.unwrap();
        for _ in 0..3 {
            let CaSigner::Local(signing, _) =
                ca.signer("ca/key", &context, "test CA").await.unwrap()
            else {
                panic!("a sealed key signs locally");
            };
            assert_eq!(signing.public_key_der(), key.public_key_der());
        }
        assert_eq!(counting.opened.load(Ordering::SeqCst), 1);
        // Kept or not, the key opens only under the context it was sealed for.
        let other = key_context(Uuid::now_v7(), "issuing");
        assert!(matches!(
            ca.signer("ca/key", &other, "test CA").await,
            Err(DomainError::Integrity(_))
        ));
        assert_eq!(counting.opened.load(Ordering::SeqCst), 2);
        ca.check_key("ca/key", &context, "test CA", &m.issuing_cert_der)
            .await
            .unwrap();
        assert_eq!(
            counting.opened.load(Ordering::SeqCst),
            3,
            "a check unseals afresh"
        );
    }

    /// An internal CA on `pool` and one of its issuers, with a fresh
    /// `key_type` key sealed into `dir`.
    async fn issuer_on(
        dir: &std::path::Path,
        pool: CpuPool,
        key_type: KeyType,
    ) -> (InternalCa, Issuer) {
        let blobs: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::local(dir).unwrap());
        let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
            MasterKey::generate().unwrap(),
            vec![],
        )));
        let now = OffsetDateTime::now_utc();
        let m = certflow_pki::create_ca("Test", key_type, now, 3650, 365).unwrap();
        let id = Uuid::now_v7();
        let key_blob = format!("issuers/{id}/key");
        let sealed = sealer
            .seal(m.issuing_key.pkcs8_der(), &key_context(id, "issuing"))
            .await
            .unwrap();
        blobs.put(&key_blob, sealed.into()).await.unwrap();
        let issuer = Issuer {
            id,
            name: "test".into(),
            kind: IssuerKind::Internal,
            is_default: true,
            key_type,
            issuing_cert_pem: certflow_pki::cert_to_pem(&m.issuing_cert_der),
            chain_pem: String::new(),
            key_blob,
            root_key_blob: None,
            subject: "CN=Test".into(),
            not_after: now + time::Duration::days(365),
            created_at: now,
        };
        (InternalCa::new(blobs, sealer, None, pool), issuer)
    }

    /// A request for a fresh P-256 key's certificate.
    fn leaf_request() -> IssueRequest {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        IssueRequest {
            certificate_id: Uuid::now_v7(),
            names: vec![certflow_core::names::SubjectName::Dns(
                "a.example.com".into(),
            )],
            profile: certflow_core::profile::Profile::TlsServer,
            validity_days: 30,
            validity_secs: None,
            csr_der: Vec::new(),
            spki_der: key.public_key_der(),
            key_type: KeyType::EcdsaP256,
            replaces_der: None,
        }
    }

    /// The cost bound of signing inline is the CA key's type: under P-256 or
    /// Ed25519 a certificate is signed while the CPU pool is busy and its
    /// queue full; under P-384 or RSA it needs the pool, and is refused
    /// (503) as any pool work is when the queue is full.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cheap_ca_keys_sign_inline_and_dear_ones_on_the_cpu_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pool = CpuPool::new(1, 0);
        let (release, busy) = crate::cpu::tests::occupy(&pool).await;
        for (key_type, inline) in [
            (KeyType::EcdsaP256, true),
            (KeyType::Ed25519, true),
            (KeyType::EcdsaP384, false),
            (KeyType::Rsa2048, false),
        ] {
            let (ca, issuer) = issuer_on(dir.path(), pool.clone(), key_type).await;
            let issued = ca
                .issue(&issuer, &leaf_request(), OffsetDateTime::now_utc())
                .await;
            match issued {
                Ok(issued) if inline => {
                    let ca_der = certflow_pki::parse_pem_certs("ca", &issuer.issuing_cert_pem)
                        .unwrap()
                        .remove(0);
                    assert!(
                        certflow_pki::is_signed_by(&issued.cert_der, &ca_der),
                        "{key_type:?}"
                    );
                }
                Err(DomainError::Unavailable { backend, .. }) if !inline => {
                    assert_eq!(backend, "CPU pool", "{key_type:?}");
                }
                other => panic!("{key_type:?}: {other:?}"),
            }
        }
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_key_is_dropped_a_minute_after_its_last_use() {
        let kept = UnsealedKeys::default();
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let context = key_context(Uuid::now_v7(), "issuing");
        kept.keep("ca/key", &context, &key);
        let settle = || async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::advance(std::time::Duration::from_secs(50)).await;
        settle().await;
        assert!(
            kept.get("ca/key", &context).is_some(),
            "used 50 s after it was kept"
        );
        tokio::time::advance(std::time::Duration::from_secs(50)).await;
        settle().await;
        assert!(
            kept.get("ca/key", &context).is_some(),
            "used 50 s after its last use"
        );
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        settle().await;
        assert!(kept.get("ca/key", &context).is_none(), "unused for 61 s");
        assert!(kept.0.lock().unwrap().is_empty());
    }
}
