//! Envelope encryption (AES-256-GCM). Each blob gets a fresh data key; the data
//! key is wrapped by a master key from a [`KeyProvider`]: a local key, or AWS KMS
//! through `KmsKeyProvider` (feature `aws-kms`; the provider shape follows KMS
//! GenerateDataKey / Decrypt). The encryption context is bound at both levels
//! (AEAD associated data for the value and for locally wrapped data keys, the
//! KMS encryption context for KMS-wrapped ones), so an envelope moved to another
//! record fails to open.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{digest, rand};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use certflow_core::DomainError;
use certflow_core::error::DomainResult;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// What a sealed value belongs to: tenant, kind, owning record and version.
///
/// It is bound into every envelope twice: as the AEAD's associated data (see
/// [`as_bytes`](Self::as_bytes)) and, with AWS KMS, as the KMS encryption
/// context (see [`to_map`](Self::to_map)), so an envelope copied to another
/// record fails to open with either provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionContext {
    tenant: String,
    kind: String,
    record: String,
    version: u32,
    /// The associated data, rendered once: `as_bytes` hands out a borrow.
    aad: String,
}

impl EncryptionContext {
    /// The context of a private key: tenant, kind, owning record and version.
    pub fn new(tenant: &str, kind: &str, record: &str, version: u32) -> Self {
        // This exact rendering is the associated data of every envelope sealed so
        // far: changing a single byte would make all of them unreadable.
        let aad =
            format!("certflow:v1;tenant={tenant};kind={kind};record={record};version={version}");
        Self {
            tenant: tenant.to_owned(),
            kind: kind.to_owned(),
            record: record.to_owned(),
            version,
            aad,
        }
    }

    /// The tenant the value belongs to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// What the value is (`cert-key`, `ca-key`...).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The owning record's id.
    pub fn record(&self) -> &str {
        &self.record
    }

    /// The version of the value within its record.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The bytes fed to the AEAD as associated data.
    pub fn as_bytes(&self) -> &[u8] {
        self.aad.as_bytes()
    }

    /// The context as a KMS encryption context. KMS logs it in CloudTrail in
    /// clear, which is fine: it names records, it holds no secret. The
    /// `certflow` entry versions the scheme like the `certflow:v1` of the AAD.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("certflow".to_owned(), "v1".to_owned()),
            ("tenant".to_owned(), self.tenant.clone()),
            ("kind".to_owned(), self.kind.clone()),
            ("record".to_owned(), self.record.clone()),
            ("version".to_owned(), self.version.to_string()),
        ])
    }
}

/// A 256-bit master key. Never printed.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, <redacted>)", self.id)
    }
}

impl MasterKey {
    /// From 32 raw bytes. The id is derived from the key, so the same key always
    /// has the same id and a wrong key is recognised before any decryption.
    pub fn from_bytes(bytes: &[u8]) -> DomainResult<Self> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            DomainError::invalid(
                "master_key",
                format!("must be 32 bytes, got {}", bytes.len()),
            )
        })?;
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"certflow master key id v1");
        ctx.update(&key);
        let id = format!("local:{}", hex::encode(&ctx.finish().as_ref()[..8]));
        Ok(Self {
            id,
            key: Zeroizing::new(key),
        })
    }

    /// From base64 text (standard alphabet, whitespace ignored).
    pub fn from_base64(text: &str) -> DomainResult<Self> {
        let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut bytes = B64
            .decode(cleaned.as_bytes())
            .map_err(|_| DomainError::invalid("master_key", "is not valid base64"))?;
        let key = Self::from_bytes(&bytes);
        bytes.zeroize();
        key
    }

    /// A fresh random key.
    pub fn generate() -> DomainResult<Self> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::fill(bytes.as_mut())
            .map_err(|_| DomainError::Internal("random source failed".into()))?;
        Self::from_bytes(bytes.as_ref())
    }

    /// The key as base64, for writing a newly generated key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.key.as_ref()))
    }

    /// Stable, non-secret identifier of this key.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A plaintext data key and its wrapped form.
pub struct DataKey {
    /// The plaintext key; zeroed on drop.
    pub plaintext: Zeroizing<[u8; 32]>,
    /// The key wrapped by the master key, safe to store.
    pub wrapped: Vec<u8>,
    /// Id of the master key that wrapped it.
    pub key_id: String,
}

/// Source of data keys: wraps and unwraps them under master keys.
#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// Id of the master key new data is encrypted under.
    fn current_key_id(&self) -> &str;
    /// A fresh data key, wrapped under the current master key and bound to `context`.
    async fn generate_data_key(&self, context: &EncryptionContext) -> DomainResult<DataKey>;
    /// Unwraps a data key wrapped under master key `key_id` for `context`.
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> DomainResult<Zeroizing<[u8; 32]>>;
}

/// Master keys held in process memory (from config, env or file): the embedded default.
/// The first key encrypts new data; the others only decrypt (rotation).
#[derive(Debug)]
pub struct LocalKeyProvider {
    current: String,
    keys: BTreeMap<String, MasterKey>,
}

impl LocalKeyProvider {
    /// `current` encrypts; `previous` stay readable.
    pub fn new(current: MasterKey, previous: Vec<MasterKey>) -> Self {
        let id = current.id().to_owned();
        let mut keys: BTreeMap<String, MasterKey> = previous
            .into_iter()
            .map(|k| (k.id().to_owned(), k))
            .collect();
        keys.insert(id.clone(), current);
        Self { current: id, keys }
    }
}

fn aead_seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> DomainResult<Vec<u8>> {
    let unbound =
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| DomainError::Internal("aead key".into()))?;
    let key = LessSafeKey::new(unbound);
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce).map_err(|_| DomainError::Internal("random source failed".into()))?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| DomainError::Internal("aead seal failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    buf.zeroize();
    Ok(out)
}

fn aead_open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

#[async_trait]
impl KeyProvider for LocalKeyProvider {
    fn current_key_id(&self) -> &str {
        &self.current
    }

    async fn generate_data_key(&self, context: &EncryptionContext) -> DomainResult<DataKey> {
        let master = self
            .keys
            .get(&self.current)
            .ok_or_else(|| DomainError::Internal("current master key missing".into()))?;
        let mut plaintext = Zeroizing::new([0u8; 32]);
        rand::fill(plaintext.as_mut())
            .map_err(|_| DomainError::Internal("random source failed".into()))?;
        let wrapped = aead_seal(&master.key, context.as_bytes(), plaintext.as_ref())?;
        Ok(DataKey {
            plaintext,
            wrapped,
            key_id: self.current.clone(),
        })
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> DomainResult<Zeroizing<[u8; 32]>> {
        let master = self.keys.get(key_id).ok_or_else(|| {
            DomainError::Integrity(format!(
                "data is encrypted under master key {key_id}, which is not configured (configured: {})",
                self.keys.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let plain = aead_open(&master.key, context.as_bytes(), wrapped).ok_or_else(|| {
            DomainError::Integrity(
                "data key does not decrypt: it belongs to another record or was altered".into(),
            )
        })?;
        let key: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
            DomainError::Integrity("unwrapped data key has the wrong length".into())
        })?;
        Ok(Zeroizing::new(key))
    }
}

/// The stored form of a sealed value.
#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u8,
    alg: String,
    kid: String,
    wdk: String,
    ct: String,
}

/// Seals and opens values (private keys) with envelope encryption.
#[derive(Clone)]
pub struct Sealer {
    provider: Arc<dyn KeyProvider>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer({})", self.provider.current_key_id())
    }
}

impl Sealer {
    /// A sealer over a key provider.
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self { provider }
    }

    /// Id of the master key new envelopes are sealed under.
    pub fn current_key_id(&self) -> &str {
        self.provider.current_key_id()
    }

    /// Encrypts `plaintext` for `context`; the result is safe to store anywhere.
    pub async fn seal(
        &self,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> DomainResult<Vec<u8>> {
        let dk = self.provider.generate_data_key(context).await?;
        let ct = aead_seal(&dk.plaintext, context.as_bytes(), plaintext)?;
        let env = Envelope {
            v: 1,
            alg: "AES-256-GCM".into(),
            kid: dk.key_id,
            wdk: B64.encode(&dk.wrapped),
            ct: B64.encode(&ct),
        };
        serde_json::to_vec(&env).map_err(|e| DomainError::Internal(format!("envelope encode: {e}")))
    }

    /// Decrypts an envelope sealed for `context`. A wrong master key, another
    /// record's envelope or altered bytes give `Integrity`, never garbage.
    pub async fn open(
        &self,
        sealed: &[u8],
        context: &EncryptionContext,
    ) -> DomainResult<Zeroizing<Vec<u8>>> {
        let env: Envelope = serde_json::from_slice(sealed)
            .map_err(|_| DomainError::Integrity("not a certflow envelope".into()))?;
        if env.v != 1 || env.alg != "AES-256-GCM" {
            return Err(DomainError::Integrity(format!(
                "unsupported envelope v{} {}",
                env.v, env.alg
            )));
        }
        let wrapped = B64
            .decode(env.wdk.as_bytes())
            .map_err(|_| DomainError::Integrity("envelope data key is not base64".into()))?;
        let ct = B64
            .decode(env.ct.as_bytes())
            .map_err(|_| DomainError::Integrity("envelope ciphertext is not base64".into()))?;
        let dek = self
            .provider
            .decrypt_data_key(&env.kid, &wrapped, context)
            .await?;
        aead_open(&dek, context.as_bytes(), &ct).ok_or_else(|| {
            DomainError::Integrity(
                "ciphertext does not decrypt: altered or bound to another record".into(),
            )
        })
    }

    /// The master key id an envelope was sealed under (for rewrap and diagnostics).
    pub fn key_id_of(sealed: &[u8]) -> DomainResult<String> {
        let env: Envelope = serde_json::from_slice(sealed)
            .map_err(|_| DomainError::Integrity("not a certflow envelope".into()))?;
        Ok(env.kid)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sealer(current: &MasterKey, previous: Vec<MasterKey>) -> Sealer {
        Sealer::new(Arc::new(LocalKeyProvider::new(current.clone(), previous)))
    }

    #[tokio::test]
    async fn seal_open_roundtrip_and_no_plaintext_in_envelope() {
        let key = MasterKey::generate().unwrap();
        let s = sealer(&key, vec![]);
        let ctx = EncryptionContext::new("default", "cert-key", "abc", 1);
        let secret = b"-----BEGIN PRIVATE KEY----- very secret";
        let sealed = s.seal(secret, &ctx).await.unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"very secret"));
        assert_eq!(s.open(&sealed, &ctx).await.unwrap().as_slice(), secret);
        assert_eq!(Sealer::key_id_of(&sealed).unwrap(), key.id());
    }

    #[tokio::test]
    async fn other_context_wrong_key_and_tampering_fail_cleanly() {
        let key = MasterKey::generate().unwrap();
        let s = sealer(&key, vec![]);
        let ctx = EncryptionContext::new("default", "cert-key", "abc", 1);
        let sealed = s.seal(b"k", &ctx).await.unwrap();
        let other = EncryptionContext::new("default", "cert-key", "abc", 2);
        assert!(matches!(
            s.open(&sealed, &other).await,
            Err(DomainError::Integrity(_))
        ));
        let wrong = sealer(&MasterKey::generate().unwrap(), vec![]);
        let err = wrong.open(&sealed, &ctx).await.unwrap_err();
        assert!(err.to_string().contains("not configured"), "{err}");
        let mut env: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        let mut ct = B64.decode(env["ct"].as_str().unwrap()).unwrap();
        let last = ct.len() - 1;
        ct[last] ^= 1;
        env["ct"] = B64.encode(&ct).into();
        let tampered = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            s.open(&tampered, &ctx).await,
            Err(DomainError::Integrity(_))
        ));
        assert!(matches!(
            s.open(b"garbage", &ctx).await,
            Err(DomainError::Integrity(_))
        ));
    }

    #[tokio::test]
    async fn rotation_keeps_old_data_readable() {
        let old = MasterKey::generate().unwrap();
        let new = MasterKey::generate().unwrap();
        let ctx = EncryptionContext::new("default", "ca-key", "x", 0);
        let sealed_old = sealer(&old, vec![]).seal(b"old", &ctx).await.unwrap();
        let rotated = sealer(&new, vec![old.clone()]);
        assert_eq!(
            rotated.open(&sealed_old, &ctx).await.unwrap().as_slice(),
            b"old"
        );
        let sealed_new = rotated.seal(b"new", &ctx).await.unwrap();
        assert_eq!(Sealer::key_id_of(&sealed_new).unwrap(), new.id());
    }

    /// An envelope sealed before `EncryptionContext` kept its fields: the
    /// associated data must not have changed by a byte, or stored keys are lost.
    #[tokio::test]
    async fn envelopes_sealed_by_earlier_versions_still_open() {
        let ctx = EncryptionContext::new(
            "default",
            "cert-key",
            "0190a8e2-0000-7000-8000-000000000001",
            3,
        );
        assert_eq!(
            ctx.as_bytes(),
            b"certflow:v1;tenant=default;kind=cert-key;record=0190a8e2-0000-7000-8000-000000000001;version=3"
        );
        let sealed = br#"{"v":1,"alg":"AES-256-GCM","kid":"local:0c3d5448d0f54cb5","wdk":"/xyl/SGhnjr78G8UlOtEolOEbig2Q7JQ8q3OX7UJxegKHP1qBAcRPx63mJOmNaEjtsJMVmv7z8k+O9WJ","ct":"qRx7308OnAgZa31/3GImqMRr0kTMbdBhHjWQgej8j9JHFOqBalUxs/JIUbHl0XimNxVug43vYx19sHv2yTgk"}"#;
        let s = sealer(&MasterKey::from_bytes(&[0x42; 32]).unwrap(), vec![]);
        assert_eq!(
            s.open(sealed, &ctx).await.unwrap().as_slice(),
            b"-----BEGIN PRIVATE KEY-----\nvector\n"
        );
    }

    #[test]
    fn context_keeps_its_fields_and_maps_for_kms() {
        let ctx = EncryptionContext::new("t1", "ca-key", "rec", 7);
        assert_eq!(
            (ctx.tenant(), ctx.kind(), ctx.record(), ctx.version()),
            ("t1", "ca-key", "rec", 7)
        );
        let map = ctx.to_map();
        assert_eq!(map["tenant"], "t1");
        assert_eq!(map["kind"], "ca-key");
        assert_eq!(map["record"], "rec");
        assert_eq!(map["version"], "7");
        assert_eq!(map["certflow"], "v1");
        assert_ne!(
            map,
            EncryptionContext::new("t1", "ca-key", "rec", 8).to_map()
        );
    }

    #[test]
    fn master_key_parsing_and_redaction() {
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("!!!").is_err());
        let k = MasterKey::generate().unwrap();
        let again = MasterKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(k.id(), again.id());
        assert!(!format!("{k:?}").contains(k.to_base64().as_str()));
    }
}
