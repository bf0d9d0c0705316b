//! Where a CA's private key lives, and the port that signs with keys
//! certflow never holds (a PKCS#11 token, AWS KMS).
//!
//! An issuer's `key_blob` (and `root_key_blob`) column holds a [`CaKeyRef`]
//! as text: a blob key for a key sealed in the blob store (the local
//! backend, and every row written before other backends existed), an RFC 7512
//! `pkcs11:` URI, or `aws-kms:<key ARN>`. No blob key contains a colon, so
//! old rows read back as [`CaKeyRef::Sealed`] unchanged.

use async_trait::async_trait;

use crate::error::DomainResult;
use crate::model::KeyType;

/// Where CA keys are kept (`[ca] key_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaKeyBackend {
    /// Generated in process, sealed in the blob store under the master key.
    Local,
    /// Generated inside a PKCS#11 token, sensitive and never extractable.
    Pkcs11,
    /// Asymmetric AWS KMS keys (`SIGN_VERIFY`).
    AwsKms,
}

impl CaKeyBackend {
    /// Every backend, in documentation order.
    pub const ALL: [CaKeyBackend; 3] = [Self::Local, Self::Pkcs11, Self::AwsKms];

    /// The configuration value: `local`, `pkcs11`, `aws-kms`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Pkcs11 => "pkcs11",
            Self::AwsKms => "aws-kms",
        }
    }

    /// Parses a configuration value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// The backend as problem documents and logs name it (`the PKCS#11 token
    /// is unavailable`).
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Local => "CA key store",
            Self::Pkcs11 => "PKCS#11 token",
            Self::AwsKms => "AWS KMS CA key",
        }
    }
}

/// A CA private key's location, as stored in an issuer's `key_blob` column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CaKeyRef {
    /// Sealed in the blob store under this blob key.
    Sealed(String),
    /// A private key object of a PKCS#11 token, found by token and object label.
    Pkcs11 {
        /// The token's label (CKA_LABEL of the token).
        token: String,
        /// The key objects' CKA_LABEL (private and public key share it).
        label: String,
    },
    /// An AWS KMS asymmetric key, by ARN (or key id).
    AwsKms {
        /// The key's ARN as KMS returned it.
        key_id: String,
    },
}

/// RFC 7512 §2.3 percent-encoding of a path attribute value: everything but
/// unreserved characters and a few safe ones.
fn pct(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unpct(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl CaKeyRef {
    /// Reads a stored reference. Anything that is not a well-formed
    /// `pkcs11:` or `aws-kms:` reference is a blob key.
    pub fn parse(stored: &str) -> Self {
        if let Some(key_id) = stored.strip_prefix("aws-kms:")
            && !key_id.is_empty()
        {
            return Self::AwsKms {
                key_id: key_id.to_owned(),
            };
        }
        if let Some(path) = stored.strip_prefix("pkcs11:") {
            let mut token = None;
            let mut label = None;
            for attr in path.split(';') {
                match attr.split_once('=') {
                    Some(("token", v)) => token = unpct(v),
                    Some(("object", v)) => label = unpct(v),
                    _ => {}
                }
            }
            if let (Some(token), Some(label)) = (token, label) {
                return Self::Pkcs11 { token, label };
            }
        }
        Self::Sealed(stored.to_owned())
    }

    /// The text stored in the issuer row.
    pub fn to_stored(&self) -> String {
        match self {
            Self::Sealed(blob) => blob.clone(),
            Self::Pkcs11 { token, label } => {
                format!(
                    "pkcs11:token={};object={};type=private",
                    pct(token),
                    pct(label)
                )
            }
            Self::AwsKms { key_id } => format!("aws-kms:{key_id}"),
        }
    }

    /// Which backend holds the key.
    pub fn backend(&self) -> CaKeyBackend {
        match self {
            Self::Sealed(_) => CaKeyBackend::Local,
            Self::Pkcs11 { .. } => CaKeyBackend::Pkcs11,
            Self::AwsKms { .. } => CaKeyBackend::AwsKms,
        }
    }

    /// The blob key of a sealed key, `None` for keys held elsewhere.
    pub fn blob(&self) -> Option<&str> {
        match self {
            Self::Sealed(blob) => Some(blob),
            _ => None,
        }
    }
}

impl std::fmt::Display for CaKeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_stored())
    }
}

/// Which CA key a new key is for: a backend may map roles to keys that exist
/// already (KMS key ids in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaKeyRole {
    /// The root of the certificate issuers' hierarchy.
    Root,
    /// The issuing CA that signs certificates, CRLs and the OCSP responder.
    Issuing,
    /// The root of the agent-identity CA.
    AgentRoot,
    /// The agent-identity issuing CA.
    AgentIssuing,
}

impl CaKeyRole {
    /// Stable name (`root`, `issuing`, `agent-root`, `agent-issuing`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Issuing => "issuing",
            Self::AgentRoot => "agent-root",
            Self::AgentIssuing => "agent-issuing",
        }
    }
}

/// CA keys that never leave their backend. Signing takes what is signed (a
/// DER TBSCertificate or TBSCertList), signs its digest (SHA-384 for
/// `ecdsa-p384`, SHA-256 for P-256 and RSA; backends send only the digest
/// where they can) and returns the signature as X.509 carries it: DER
/// `Ecdsa-Sig-Value` for ECDSA, PKCS#1 v1.5 for RSA. Ed25519 is not offered
/// (it signs whole messages).
///
/// Errors: the backend unreachable, or refusing for a reason that may pass
/// (token removed, throttling, credentials expired), is
/// `DomainError::Unavailable` naming the backend; a key that is missing or of
/// the wrong type is `Integrity`.
#[async_trait]
pub trait CaKeyStore: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> CaKeyBackend;

    /// Makes a key pair of `key_type` for `role` inside the backend
    /// (labelled `label` where the backend has labels), or adopts the key
    /// configured for that role; returns its reference and its
    /// SubjectPublicKeyInfo DER.
    async fn generate(
        &self,
        role: CaKeyRole,
        label: &str,
        key_type: KeyType,
    ) -> DomainResult<(CaKeyRef, Vec<u8>)>;

    /// The SubjectPublicKeyInfo DER of an existing key.
    async fn public_key(&self, key: &CaKeyRef) -> DomainResult<Vec<u8>>;

    /// Signs `message` with `key`, a key of `key_type`.
    async fn sign(
        &self,
        key: &CaKeyRef,
        key_type: KeyType,
        message: &[u8],
    ) -> DomainResult<Vec<u8>>;

    /// Removes a key [`generate`](Self::generate) made that nothing uses (a
    /// replica lost the race to create the CA). Best effort.
    async fn discard(&self, key: &CaKeyRef) -> DomainResult<()>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_and_old_blob_keys_stay_sealed() {
        let refs = [
            CaKeyRef::Sealed("issuers/0190/issuing-key.enc".into()),
            CaKeyRef::Pkcs11 {
                token: "certflow CA; 1".into(),
                label: "certflow-issuer-0190-root".into(),
            },
            CaKeyRef::AwsKms {
                key_id: "arn:aws:kms:eu-west-1:123456789012:key/abcd".into(),
            },
        ];
        for r in refs {
            assert_eq!(CaKeyRef::parse(&r.to_stored()), r, "{r}");
        }
        assert_eq!(
            CaKeyRef::Pkcs11 {
                token: "a b;c".into(),
                label: "x".into()
            }
            .to_stored(),
            "pkcs11:token=a%20b%3Bc;object=x;type=private"
        );
        // Half a reference is not one.
        assert_eq!(
            CaKeyRef::parse("pkcs11:object=x"),
            CaKeyRef::Sealed("pkcs11:object=x".into())
        );
        assert_eq!(CaKeyRef::parse("aws-kms:").backend(), CaKeyBackend::Local);
        for b in CaKeyBackend::ALL {
            assert_eq!(CaKeyBackend::parse(b.as_str()), Some(b));
        }
    }
}
