//! CA keys in a PKCS#11 token (PKCS#11 v2.40 / v3, through `cryptoki`).
//!
//! Keys are generated inside the token as token objects, private,
//! `CKA_SENSITIVE` and not `CKA_EXTRACTABLE` (so the token reports them
//! `CKA_NEVER_EXTRACTABLE`), and found again by `CKA_LABEL`. Signing uses
//! `CKM_ECDSA` over the digest (the signature comes back as `r || s` and is
//! DER-encoded here) or `CKM_RSA_PKCS` over the DigestInfo.
//!
//! Every PKCS#11 call blocks, so each runs on tokio's blocking pool. Logged-in
//! sessions are pooled (`sessions` of them at most in use at once; a call
//! beyond waits for one). When the token fails in a way a new session cannot
//! fix (removed, device error, module not initialised), the module is
//! finalised once its last session is closed and initialised afresh on the
//! next call, so a token that comes back is used again without a restart.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use certflow_core::ca_keys::{CaKeyBackend, CaKeyRef, CaKeyRole, CaKeyStore};
use certflow_core::{DomainError, DomainResult, KeyType};
use certflow_pki::{DigestAlgorithm, ecdsa_raw_to_der};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::der;

const BACKEND: CaKeyBackend = CaKeyBackend::Pkcs11;

/// How to reach the token (`[ca.pkcs11]`).
#[derive(Clone)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The user PIN.
    pub pin: SecretString,
    /// Sessions in use at once (signatures in flight); more wait.
    pub sessions: usize,
}

impl std::fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("sessions", &self.sessions)
            .finish()
    }
}

/// Reads a PIN file: refused when group or others may read it (chmod 600);
/// surrounding white space (a trailing newline) is not part of the PIN.
pub fn read_pin_file(path: &Path) -> DomainResult<SecretString> {
    let invalid = |reason: String| DomainError::invalid("ca.pkcs11.pin_file", reason);
    let meta = std::fs::metadata(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "{} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let pin = text.trim();
    if pin.is_empty() {
        return Err(invalid(format!("{} is empty", path.display())));
    }
    Ok(SecretString::from(pin.to_owned()))
}

/// The initialised module and the token's slot; finalised when the last
/// session using it is gone.
struct Ctx {
    pkcs11: Pkcs11,
    slot: Slot,
    /// Private key handles by label (handles are valid across the
    /// application's sessions).
    handles: Mutex<HashMap<String, ObjectHandle>>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Err(e) = self.pkcs11.clone().finalize() {
            tracing::debug!(error = %e, "C_Finalize");
        }
    }
}

/// A logged-in session and the module it belongs to. The session is
/// declared first so it is closed before the module can be finalised.
struct Pooled {
    session: Session,
    ctx: Arc<Ctx>,
}

#[derive(Default)]
struct Pool {
    ctx: Option<Arc<Ctx>>,
    idle: Vec<Pooled>,
}

struct Inner {
    settings: Pkcs11Settings,
    pool: Mutex<Pool>,
}

/// CA keys in one PKCS#11 token.
pub struct Pkcs11Keys {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Pkcs11Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Keys")
            .field("settings", &self.inner.settings)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding it cannot leave the pool inconsistent (it only
    // holds sessions), so a poisoned lock is taken over.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether an error means the module (or the token) is gone for every
/// session: then it is re-initialised on the next call.
fn resets(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::CryptokiNotInitialized
                | RvError::GeneralError
                | RvError::SlotIdInvalid
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

/// What a PKCS#11 error says, briefly (the module's return value and call).
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function:?} returned CKR_{rv:?}"),
        other => other.to_string(),
    }
}

impl Inner {
    fn unavailable(&self, what: &str, reason: impl std::fmt::Display) -> DomainError {
        DomainError::Unavailable {
            backend: BACKEND.display_name(),
            reason: format!(
                "token '{}' ({}): {what}: {reason}",
                self.settings.token_label,
                self.settings.module.display()
            ),
        }
    }

    /// Loads and initialises the module and finds the token.
    fn open(&self) -> DomainResult<Arc<Ctx>> {
        let s = &self.settings;
        let pkcs11 = Pkcs11::new(&s.module)
            .map_err(|e| self.unavailable("loading the module", describe(&e)))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(self.unavailable("C_Initialize", describe(&e))),
        }
        let slots = pkcs11
            .get_slots_with_initialized_token()
            .map_err(|e| self.unavailable("listing slots", describe(&e)))?;
        let slot = slots.into_iter().find(|slot| {
            pkcs11
                .get_token_info(*slot)
                .is_ok_and(|t| t.label().trim_end() == s.token_label)
        });
        let Some(slot) = slot else {
            let _ = pkcs11.finalize();
            return Err(
                self.unavailable("finding the token", "no initialised token has this label")
            );
        };
        Ok(Arc::new(Ctx {
            pkcs11,
            slot,
            handles: Mutex::new(HashMap::new()),
        }))
    }

    /// An idle logged-in session, or a new one (initialising the module first
    /// when it is not).
    fn checkout(&self) -> DomainResult<Pooled> {
        let ctx = {
            let mut pool = lock(&self.pool);
            if let Some(pooled) = pool.idle.pop() {
                return Ok(pooled);
            }
            match &pool.ctx {
                Some(ctx) => ctx.clone(),
                None => {
                    let ctx = self.open()?;
                    pool.ctx = Some(ctx.clone());
                    ctx
                }
            }
        };
        let session = match ctx.pkcs11.open_rw_session(ctx.slot) {
            Ok(s) => s,
            Err(e) => {
                if resets(&e) {
                    self.reset(&ctx);
                }
                return Err(self.unavailable("opening a session", describe(&e)));
            }
        };
        let pin = AuthPin::from(self.settings.pin.expose_secret().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            // Login is per application: the first session logged every other in.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => {
                if resets(&e) {
                    self.reset(&ctx);
                }
                return Err(self.unavailable("logging in", describe(&e)));
            }
        }
        Ok(Pooled { session, ctx })
    }

    fn checkin(&self, pooled: Pooled) {
        let mut pool = lock(&self.pool);
        let current = pool
            .ctx
            .as_ref()
            .is_some_and(|ctx| Arc::ptr_eq(ctx, &pooled.ctx));
        if current && pool.idle.len() < self.settings.sessions {
            pool.idle.push(pooled);
        }
    }

    /// Forgets the module instance `ctx` (if still current) and its idle
    /// sessions; it is finalised when its last session in use is returned.
    fn reset(&self, ctx: &Arc<Ctx>) {
        let mut pool = lock(&self.pool);
        if pool.ctx.as_ref().is_some_and(|c| Arc::ptr_eq(c, ctx)) {
            tracing::warn!(token = %self.settings.token_label, "PKCS#11 token failed: the module will be initialised again on the next use");
            pool.ctx = None;
            pool.idle.clear();
        }
    }

    /// Runs `op` on a pooled session; `what` names it in errors.
    fn with_session<T>(
        &self,
        what: &str,
        op: impl FnOnce(&Session, &Ctx) -> Result<T, Failure>,
    ) -> DomainResult<T> {
        let pooled = self.checkout()?;
        match op(&pooled.session, &pooled.ctx) {
            Ok(v) => {
                self.checkin(pooled);
                Ok(v)
            }
            Err(Failure::Token(e)) => {
                lock(&pooled.ctx.handles).clear();
                if resets(&e) {
                    self.reset(&pooled.ctx);
                } else {
                    self.checkin(pooled);
                }
                Err(self.unavailable(what, describe(&e)))
            }
            Err(Failure::Missing(why)) => {
                // Modules read their token once (SoftHSM does): one whose
                // storage came back shows its objects only after C_Finalize
                // and C_Initialize.
                self.reset(&pooled.ctx);
                Err(self.unavailable(what, why))
            }
            Err(Failure::Domain(e)) => {
                self.checkin(pooled);
                Err(e)
            }
        }
    }

    fn check_token(&self, key: &CaKeyRef) -> DomainResult<String> {
        match key {
            CaKeyRef::Pkcs11 { token, label } if *token == self.settings.token_label => {
                Ok(label.clone())
            }
            CaKeyRef::Pkcs11 { token, .. } => Err(DomainError::Unavailable {
                backend: BACKEND.display_name(),
                reason: format!(
                    "the key is in token '{token}', and this server uses token '{}' ([ca.pkcs11] token_label)",
                    self.settings.token_label
                ),
            }),
            other => Err(DomainError::Internal(format!(
                "a {} key was sent to the PKCS#11 backend",
                other.backend().as_str()
            ))),
        }
    }
}

/// Why an operation on a session failed: the token said no, a key is not
/// (or no longer) in it, or what it returned makes no sense to certflow.
enum Failure {
    Token(CkError),
    /// A key object is missing: the token may be a stand-in while the real
    /// one is restored, so this is unavailable (503, retried), not an
    /// integrity failure; the reason says which object.
    Missing(String),
    Domain(DomainError),
}

impl From<CkError> for Failure {
    fn from(e: CkError) -> Self {
        Self::Token(e)
    }
}

/// The one object of `class` labelled `label`.
fn find(session: &Session, class: ObjectClass, label: &str) -> Result<ObjectHandle, Failure> {
    let found = session.find_objects(&[
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Failure::Missing(format!(
            "the token has no {class} labelled '{label}' (deleted, or another token with this label?)"
        ))),
        _ => Err(Failure::Domain(DomainError::Integrity(format!(
            "the token has {} objects of class {class} labelled '{label}'",
            found.len()
        )))),
    }
}

/// Runs `op` with the private key labelled `label`: its cached handle
/// first, and once more with a handle found afresh if the token no longer
/// knows the cached one (it was re-read, e.g. after coming back).
fn with_private_key<T>(
    session: &Session,
    ctx: &Ctx,
    label: &str,
    op: impl Fn(ObjectHandle) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let cached = lock(&ctx.handles).get(label).copied();
    if let Some(h) = cached {
        match op(h) {
            Err(Failure::Token(CkError::Pkcs11(
                RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                _,
            ))) => {
                lock(&ctx.handles).remove(label);
            }
            other => return other,
        }
    }
    let h = find(session, ObjectClass::PRIVATE_KEY, label)?;
    lock(&ctx.handles).insert(label.to_owned(), h);
    op(h)
}

/// The SubjectPublicKeyInfo of the public key object labelled `label`.
fn spki(session: &Session, label: &str) -> Result<Vec<u8>, Failure> {
    let public = find(session, ObjectClass::PUBLIC_KEY, label)?;
    let attrs = session.get_attributes(
        public,
        &[
            AttributeType::EcParams,
            AttributeType::EcPoint,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
        ],
    )?;
    let (mut params, mut point, mut modulus, mut exponent) = (None, None, None, None);
    for a in attrs {
        match a {
            Attribute::EcParams(v) => params = Some(v),
            Attribute::EcPoint(v) => point = Some(v),
            Attribute::Modulus(v) => modulus = Some(v),
            Attribute::PublicExponent(v) => exponent = Some(v),
            _ => {}
        }
    }
    let bad = |why: &str| {
        Failure::Domain(DomainError::Integrity(format!(
            "the public key '{label}' in the token: {why}"
        )))
    };
    match (params, point, modulus, exponent) {
        (Some(params), Some(point), _, _) => {
            let point = der::ec_point(&point).ok_or_else(|| bad("not an uncompressed EC point"))?;
            Ok(der::ec_spki(&params, point))
        }
        (_, _, Some(n), Some(e)) => Ok(der::rsa_spki(&n, &e)),
        _ => Err(bad("neither an EC nor an RSA public key")),
    }
}

impl Pkcs11Keys {
    /// Opens the token now (module, token label, PIN), so a wrong setting
    /// stops the server at start with the reason.
    pub async fn open(settings: Pkcs11Settings) -> DomainResult<Self> {
        let sessions = settings.sessions.max(1);
        let keys = Self {
            inner: Arc::new(Inner {
                settings,
                pool: Mutex::new(Pool::default()),
            }),
            permits: Arc::new(Semaphore::new(sessions)),
        };
        keys.blocking(|inner| inner.with_session("checking the token", |_, _| Ok(())))
            .await?;
        Ok(keys)
    }

    /// Runs `f` on the blocking pool with a session permit.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> DomainResult<T> + Send + 'static,
    ) -> DomainResult<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| DomainError::Internal("PKCS#11 session permits closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| DomainError::Internal(format!("PKCS#11 call: {e}")))?
    }
}

#[async_trait]
impl CaKeyStore for Pkcs11Keys {
    fn backend(&self) -> CaKeyBackend {
        BACKEND
    }

    async fn generate(
        &self,
        _role: CaKeyRole,
        label: &str,
        key_type: KeyType,
    ) -> DomainResult<(CaKeyRef, Vec<u8>)> {
        let label = label.to_owned();
        self.blocking(move |inner| {
            let (mechanism, public_attrs) = match (der::ec_params(key_type), key_type) {
                (Some(params), _) => (
                    Mechanism::EccKeyPairGen,
                    vec![Attribute::EcParams(params.to_vec())],
                ),
                (None, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096) => {
                    let bits: u64 = match key_type {
                        KeyType::Rsa2048 => 2048,
                        KeyType::Rsa3072 => 3072,
                        _ => 4096,
                    };
                    (
                        Mechanism::RsaPkcsKeyPairGen,
                        vec![
                            Attribute::ModulusBits(bits.into()),
                            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                        ],
                    )
                }
                _ => {
                    return Err(DomainError::invalid(
                        "ca.key_type",
                        "the pkcs11 key backend holds ECDSA P-256/P-384 and RSA keys",
                    ));
                }
            };
            let id = label.as_bytes().to_vec();
            // A CA key signs and does nothing else (least privilege: a
            // module's defaults may allow decrypting and unwrapping too).
            let mut public = vec![
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            public.extend(public_attrs);
            let private = vec![
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id),
            ];
            let spki = inner.with_session("generating a key pair", |session, _| {
                session.generate_key_pair(&mechanism, &public, &private)?;
                spki(session, &label)
            })?;
            tracing::info!(token = %inner.settings.token_label, label, key_type = key_type.as_str(), "CA key pair generated in the PKCS#11 token");
            Ok((
                CaKeyRef::Pkcs11 {
                    token: inner.settings.token_label.clone(),
                    label,
                },
                spki,
            ))
        })
        .await
    }

    async fn public_key(&self, key: &CaKeyRef) -> DomainResult<Vec<u8>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let label = inner.check_token(&key)?;
            inner.with_session("reading a public key", |session, ctx| {
                // The private half must be there too: it is what signs.
                with_private_key(session, ctx, &label, |_| Ok(()))?;
                spki(session, &label)
            })
        })
        .await
    }

    async fn sign(
        &self,
        key: &CaKeyRef,
        key_type: KeyType,
        message: &[u8],
    ) -> DomainResult<Vec<u8>> {
        let key = key.clone();
        let alg = DigestAlgorithm::for_key_type(key_type)
            .ok_or_else(|| DomainError::Internal("Ed25519 keys are not held in tokens".into()))?;
        // Only the digest goes to the token.
        let digest = alg.digest(message);
        self.blocking(move |inner| {
            let label = inner.check_token(&key)?;
            inner.with_session("signing", |session, ctx| {
                with_private_key(session, ctx, &label, |handle| {
                    if key_type.is_rsa() {
                        let data = [alg.digest_info_prefix(), &digest].concat();
                        Ok(session.sign(&Mechanism::RsaPkcs, handle, &data)?)
                    } else {
                        let raw = session.sign(&Mechanism::Ecdsa, handle, &digest)?;
                        ecdsa_raw_to_der(&raw).map_err(Failure::Domain)
                    }
                })
            })
        })
        .await
    }

    async fn discard(&self, key: &CaKeyRef) -> DomainResult<()> {
        let key = key.clone();
        self.blocking(move |inner| {
            let label = inner.check_token(&key)?;
            inner.with_session("deleting an unused key", |session, ctx| {
                for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                    let handle = find(session, class, &label)?;
                    session.destroy_object(handle)?;
                }
                lock(&ctx.handles).remove(&label);
                Ok(())
            })
        })
        .await
    }
}
