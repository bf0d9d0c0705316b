//! Reading a PKCS#12 file certflow did not write (RFC 7292), with the cost
//! of its password-based key derivations bounded before any of them runs.
//!
//! A PKCS#12 file chooses its own iteration counts, so decoding one costs
//! whatever its author wants: 255 encrypted sections of 1,000,000 PBKDF2
//! iterations each are ~30 s of CPU behind a 48 KiB upload. So the reader
//! first walks the structure without deriving anything and lists every
//! derivation it can see (the MAC, each encrypted section, each shrouded key
//! bag outside one); the file is refused when they exceed [`PKCS12_LIMITS`].
//! A shrouded key bag found only after decrypting a section is charged to
//! what is left of the same budget before its key is derived. Then the MAC
//! is verified (RFC 7292 §5.1), and only then is anything decrypted.
//!
//! Read: password integrity mode with an HMAC MAC keyed by the PKCS#12 KDF
//! (RFC 7292 Appendix B; SHA-1 or SHA-2), PBES2 with PBKDF2 (HMAC-SHA-1,
//! -256, -384, -512) and AES-CBC (RFC 8018): what OpenSSL 3, Java 17+ and
//! certflow's own export write. Refused, naming what: files without a MAC
//! (RFC 7292 §4 knows no mode without integrity protection; the other,
//! public-key mode, is not supported either), legacy PBES1 (RC2, 3DES:
//! `openssl pkcs12 -legacy`), scrypt, PBMAC1 (RFC 9579).

use std::num::NonZeroU32;

use aws_lc_rs::cipher::{
    AES_128, AES_192, AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use certflow_core::{DomainError, DomainResult};
use pkcs5::der::asn1::{ObjectIdentifier, OctetString};
use pkcs5::der::{AnyRef, Decode, Encode, Tag, TagNumber, Tagged};
use pkcs5::pbes2::{EncryptionScheme as Pbes2Cipher, Kdf, Pbkdf2Prf};
use pkcs12::cms::content_info::ContentInfo;
use pkcs12::cms::encrypted_data::EncryptedData;
use pkcs12::pbe_params::EncryptedPrivateKeyInfo;
use pkcs12::{CertBag, MacData, Pfx, SafeBag};
use zeroize::Zeroizing;

use crate::asn1::parse_cert;
use crate::inspect::key_matches_cert;
use crate::keys::PrivateKey;

/// Bounds on the password-based key derivations one PKCS#12 file may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pkcs12Limits {
    /// Most iterations of any one derivation (the MAC's, a section's, a key's).
    pub max_iterations: u32,
    /// Most iterations of all the file's derivations together.
    pub max_total_iterations: u64,
    /// Most derivations in one file.
    pub max_derivations: usize,
}

/// What certflow accepts. Typical files need 2–3 derivations of 2,048
/// (OpenSSL 3), 10,000 (Java) or 100,000 (certflow's export) iterations;
/// 1,000,000 per derivation leaves room above OWASP's 600,000 for
/// PBKDF2-HMAC-SHA256, and 3,000,000 in all is under a second of one core
/// (0.8 s measured on a 2-core CI machine; docs/import.md).
pub const PKCS12_LIMITS: Pkcs12Limits = Pkcs12Limits {
    max_iterations: 1_000_000,
    max_total_iterations: 3_000_000,
    max_derivations: 16,
};

const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_ENCRYPTED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.6");
const ID_PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
/// id-PBMAC1 (RFC 8018 A.5), the MAC algorithm of RFC 9579.
const ID_PBMAC1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.14");
/// pkcs-9-at-localKeyId (RFC 2985 §5.5.2): pairs a key bag with its certificate.
const LOCAL_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.21");
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA224: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.4");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// What a derivation protects, for the refusal message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Mac,
    Section,
    Key,
}

impl Use {
    fn name(self, n: usize) -> String {
        match (self, n) {
            (Use::Mac, _) => "the MAC".into(),
            (Use::Section, 1) => "1 encrypted section".into(),
            (Use::Section, n) => format!("{n} encrypted sections"),
            (Use::Key, 1) => "1 shrouded key bag".into(),
            (Use::Key, n) => format!("{n} shrouded key bags"),
        }
    }
}

/// One derivation: what it protects and its iteration count.
type Cost = (Use, u32);

/// The derivations charged so far, against the limits.
struct Budget<'a> {
    field: &'a str,
    limits: Pkcs12Limits,
    charged: Vec<Cost>,
}

impl Budget<'_> {
    /// Adds `more` and refuses the file, before any of them runs, when the
    /// total breaks a limit.
    fn charge(&mut self, more: &[Cost]) -> DomainResult<()> {
        self.charged.extend_from_slice(more);
        let total: u64 = self.charged.iter().map(|(_, i)| u64::from(*i)).sum();
        let largest = self.charged.iter().map(|(_, i)| *i).max().unwrap_or(0);
        let l = self.limits;
        if self.charged.len() <= l.max_derivations
            && largest <= l.max_iterations
            && total <= l.max_total_iterations
        {
            return Ok(());
        }
        Err(DomainError::invalid(
            self.field,
            format!(
                "PKCS#12 key derivation cost exceeds the limit: {} derivations ({}), {total} \
                 iterations in all; certflow derives at most {} keys per file, of at most {} \
                 iterations each and {} in all",
                self.charged.len(),
                self.describe(),
                l.max_derivations,
                l.max_iterations,
                l.max_total_iterations,
            ),
        ))
    }

    /// "the MAC: 2048 iterations; 255 encrypted sections: 1000000 iterations each".
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for what in [Use::Mac, Use::Section, Use::Key] {
            let counts: Vec<u32> = self
                .charged
                .iter()
                .filter(|(u, _)| *u == what)
                .map(|(_, i)| *i)
                .collect();
            let (Some(min), Some(max)) = (counts.iter().min(), counts.iter().max()) else {
                continue;
            };
            let iterations = match (counts.len(), min == max) {
                (1, _) => format!("{max} iterations"),
                (_, true) => format!("{max} iterations each"),
                (_, false) => format!("{min} to {max} iterations"),
            };
            parts.push(format!("{}: {iterations}", what.name(counts.len())));
        }
        parts.join("; ")
    }
}

fn bad(field: &str, reason: impl Into<String>) -> DomainError {
    DomainError::invalid(field, reason)
}

/// A password-based encryption certflow can undo, checked before any key is derived.
struct Pbes2 {
    prf: aws_lc_rs::pbkdf2::Algorithm,
    salt: Vec<u8>,
    iterations: NonZeroU32,
    cipher: &'static aws_lc_rs::cipher::Algorithm,
    key_len: usize,
    iv: [u8; 16],
}

impl Pbes2 {
    /// Reads the `AlgorithmIdentifier` (`oid`, whole DER `alg_der`) of a
    /// password-encrypted section or key; refuses what certflow cannot decrypt.
    fn of(field: &str, oid: ObjectIdentifier, alg_der: &[u8]) -> DomainResult<Self> {
        let unsupported = |what: &str| {
            bad(
                field,
                format!(
                    "{what} is not supported; export the file with PBES2 (PBKDF2 and AES-CBC, \
                     OpenSSL 3's default)"
                ),
            )
        };
        if oid.to_string().starts_with("1.2.840.113549.1.12.1.") {
            return Err(unsupported(
                "legacy PKCS#12 encryption (RC2, RC4 or 3DES: openssl pkcs12 -legacy)",
            ));
        }
        if oid != ID_PBES2 {
            return Err(unsupported(&format!("encryption algorithm {oid}")));
        }
        let params = match pkcs5::EncryptionScheme::from_der(alg_der) {
            Ok(pkcs5::EncryptionScheme::Pbes2(p)) => p,
            _ => {
                return Err(unsupported(
                    "this PBES2 variant (certflow reads PBKDF2 with AES-CBC)",
                ));
            }
        };
        let pbkdf2 = match &params.kdf {
            Kdf::Pbkdf2(p) => p,
            Kdf::Scrypt(_) => return Err(unsupported("scrypt key derivation")),
            _ => return Err(unsupported("this PBES2 key derivation function")),
        };
        let prf = match pbkdf2.prf {
            Pbkdf2Prf::HmacWithSha1 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA1,
            Pbkdf2Prf::HmacWithSha256 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            Pbkdf2Prf::HmacWithSha384 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA384,
            Pbkdf2Prf::HmacWithSha512 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA512,
            _ => return Err(unsupported("PBKDF2 with HMAC-SHA-224")),
        };
        let key_len = params.encryption.key_size();
        let (cipher, iv) = match params.encryption {
            Pbes2Cipher::Aes128Cbc { iv } => (&AES_128, iv),
            Pbes2Cipher::Aes192Cbc { iv } => (&AES_192, iv),
            Pbes2Cipher::Aes256Cbc { iv } => (&AES_256, iv),
            _ => return Err(unsupported("this PBES2 cipher")),
        };
        if pbkdf2.key_length.is_some_and(|n| usize::from(n) != key_len) {
            return Err(bad(field, "PBKDF2 key length does not match the cipher"));
        }
        let iterations = NonZeroU32::new(pbkdf2.iteration_count)
            .ok_or_else(|| bad(field, "PBKDF2 iteration count is 0"))?;
        Ok(Self {
            prf,
            salt: pbkdf2.salt.as_bytes().to_vec(),
            iterations,
            cipher,
            key_len,
            iv,
        })
    }

    /// Derives the key (the expensive part) and decrypts.
    fn decrypt(
        &self,
        field: &str,
        password: &str,
        data: &[u8],
    ) -> DomainResult<Zeroizing<Vec<u8>>> {
        let mut key = Zeroizing::new(vec![0u8; self.key_len]);
        aws_lc_rs::pbkdf2::derive(
            self.prf,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &mut key,
        );
        let wrong = || {
            bad(
                field,
                "cannot be decrypted: the password is wrong or the file is damaged",
            )
        };
        let key = UnboundCipherKey::new(self.cipher, &key).map_err(|_| wrong())?;
        let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| wrong())?;
        let mut buf = Zeroizing::new(data.to_vec());
        let n = key
            .decrypt(
                &mut buf,
                DecryptionContext::Iv128(FixedLength::from(self.iv)),
            )
            .map_err(|_| wrong())?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// The MAC of password integrity mode (RFC 7292 §5.1, Appendix B).
struct Mac<'a> {
    digest: &'static aws_lc_rs::digest::Algorithm,
    hmac: aws_lc_rs::hmac::Algorithm,
    salt: &'a [u8],
    iterations: NonZeroU32,
    expected: &'a [u8],
}

impl<'a> Mac<'a> {
    fn of(field: &str, mac: &'a MacData) -> DomainResult<Self> {
        use aws_lc_rs::{digest, hmac};
        let (digest, hmac) = match mac.mac.algorithm.oid {
            SHA1 => (
                &digest::SHA1_FOR_LEGACY_USE_ONLY,
                hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            ),
            SHA224 => (&digest::SHA224, hmac::HMAC_SHA224),
            SHA256 => (&digest::SHA256, hmac::HMAC_SHA256),
            SHA384 => (&digest::SHA384, hmac::HMAC_SHA384),
            SHA512 => (&digest::SHA512, hmac::HMAC_SHA512),
            ID_PBMAC1 => {
                return Err(bad(
                    field,
                    "PBMAC1 MACs (RFC 9579) are not supported; export the file with an HMAC MAC \
                     (OpenSSL's default)",
                ));
            }
            other => return Err(bad(field, format!("MAC digest {other} is not supported"))),
        };
        let iterations = u32::try_from(mac.iterations)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| bad(field, "MAC iteration count is not positive"))?;
        Ok(Self {
            digest,
            hmac,
            salt: mac.mac_salt.as_bytes(),
            iterations,
            expected: mac.mac.digest.as_bytes(),
        })
    }

    /// The MAC key: RFC 7292 Appendix B.2 with ID 3 and one hash output
    /// (n = u), so only A_1 = H^r(D || I) is needed.
    fn key(&self, password: &str) -> Zeroizing<Vec<u8>> {
        let v = self.digest.block_len();
        // B.1: a BMPString (UTF-16BE) with two terminating zero octets;
        // like OpenSSL, characters beyond the BMP become surrogate pairs.
        let mut pass = Zeroizing::new(Vec::with_capacity(2 * password.len() + 2));
        for unit in password.encode_utf16() {
            pass.extend_from_slice(&unit.to_be_bytes());
        }
        pass.extend_from_slice(&[0, 0]);
        let fill = |s: &[u8]| -> Zeroizing<Vec<u8>> {
            Zeroizing::new(
                s.iter()
                    .copied()
                    .cycle()
                    .take(v * s.len().div_ceil(v))
                    .collect(),
            )
        };
        let mut ctx = aws_lc_rs::digest::Context::new(self.digest);
        ctx.update(&vec![3u8; v]);
        ctx.update(&fill(self.salt));
        ctx.update(&fill(&pass));
        let mut a = ctx.finish();
        for _ in 1..self.iterations.get() {
            a = aws_lc_rs::digest::digest(self.digest, a.as_ref());
        }
        Zeroizing::new(a.as_ref().to_vec())
    }

    fn verify(&self, field: &str, password: &str, data: &[u8]) -> DomainResult<()> {
        let key = aws_lc_rs::hmac::Key::new(self.hmac, &self.key(password));
        aws_lc_rs::hmac::verify(&key, data, self.expected).map_err(|_| {
            bad(
                field,
                "the password is wrong, or the file was altered (its MAC does not verify)",
            )
        })
    }
}

/// One section of the authenticated safe, structure read, nothing derived.
enum Section {
    Plain(Vec<SafeBag>),
    Encrypted(Pbes2, Vec<u8>),
}

/// The value of a bag: its `[0] EXPLICIT` wrapper removed.
fn bag_value<'b>(field: &str, bag: &'b SafeBag) -> DomainResult<&'b [u8]> {
    let any = AnyRef::from_der(&bag.bag_value).map_err(|_| bad(field, "malformed safe bag"))?;
    let wrapper = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber(0),
    };
    if any.tag() != wrapper {
        return Err(bad(field, "malformed safe bag"));
    }
    Ok(any.value())
}

fn safe_contents(field: &str, der: &[u8]) -> DomainResult<Vec<SafeBag>> {
    Vec::<SafeBag>::from_der(der).map_err(|_| bad(field, "malformed safe contents"))
}

/// The encryption of a shrouded key bag; other bags need no derivation.
fn shrouded_key(field: &str, bag: &SafeBag) -> DomainResult<Option<(Pbes2, Vec<u8>)>> {
    if bag.bag_id != pkcs12::PKCS_12_PKCS8_KEY_BAG_OID {
        return Ok(None);
    }
    let info = EncryptedPrivateKeyInfo::from_der(bag_value(field, bag)?)
        .map_err(|_| bad(field, "malformed shrouded key bag"))?;
    let alg = &info.encryption_algorithm;
    let alg_der = alg
        .to_der()
        .map_err(|_| bad(field, "malformed shrouded key bag"))?;
    let pbes2 = Pbes2::of(field, alg.oid, &alg_der)?;
    Ok(Some((pbes2, info.encrypted_data.as_bytes().to_vec())))
}

/// The derivations `bags` ask for.
fn key_costs(field: &str, bags: &[SafeBag]) -> DomainResult<Vec<Cost>> {
    let mut out = Vec::new();
    for bag in bags {
        if let Some((p, _)) = shrouded_key(field, bag)? {
            out.push((Use::Key, p.iterations.get()));
        }
    }
    Ok(out)
}

/// Reads every section's structure and the derivations it asks for.
fn sections(field: &str, auth_safe: &[u8]) -> DomainResult<(Vec<Section>, Vec<Cost>)> {
    let malformed = || bad(field, "malformed PKCS#12 authenticated safe");
    let infos = Vec::<ContentInfo>::from_der(auth_safe).map_err(|_| malformed())?;
    let mut out = Vec::with_capacity(infos.len());
    let mut costs = Vec::new();
    for info in infos {
        let content = info.content.to_der().map_err(|_| malformed())?;
        match info.content_type {
            ID_DATA => {
                let octets = OctetString::from_der(&content).map_err(|_| malformed())?;
                let bags = safe_contents(field, octets.as_bytes())?;
                costs.extend(key_costs(field, &bags)?);
                out.push(Section::Plain(bags));
            }
            ID_ENCRYPTED_DATA => {
                let data = EncryptedData::from_der(&content).map_err(|_| malformed())?;
                let eci = data.enc_content_info;
                let alg_der = eci.content_enc_alg.to_der().map_err(|_| malformed())?;
                let pbes2 = Pbes2::of(field, eci.content_enc_alg.oid, &alg_der)?;
                costs.push((Use::Section, pbes2.iterations.get()));
                let ciphertext = eci
                    .encrypted_content
                    .map(|c| c.as_bytes().to_vec())
                    .unwrap_or_default();
                out.push(Section::Encrypted(pbes2, ciphertext));
            }
            other => {
                return Err(bad(
                    field,
                    format!("a section of content type {other} is not supported"),
                ));
            }
        }
    }
    Ok((out, costs))
}

/// A bag's content with its `localKeyId`, which pairs a key with its certificate.
type WithId<T> = (T, Option<Vec<u8>>);

/// Certificates and keys found.
#[derive(Default)]
struct Found {
    certs: Vec<WithId<Vec<u8>>>,
    keys: Vec<WithId<Zeroizing<Vec<u8>>>>,
}

fn local_key_id(bag: &SafeBag) -> Option<Vec<u8>> {
    let attrs = bag.bag_attributes.as_ref()?;
    let attr = attrs.iter().find(|a| a.oid == LOCAL_KEY_ID)?;
    attr.values.iter().next().map(|v| v.value().to_vec())
}

impl Found {
    /// Takes what `bag` holds; decrypts a shrouded key (already charged).
    fn add(&mut self, field: &str, bag: &SafeBag, password: &str) -> DomainResult<()> {
        let id = local_key_id(bag);
        if let Some((pbes2, ciphertext)) = shrouded_key(field, bag)? {
            self.keys
                .push((pbes2.decrypt(field, password, &ciphertext)?, id));
        } else if bag.bag_id == pkcs12::PKCS_12_KEY_BAG_OID {
            self.keys
                .push((Zeroizing::new(bag_value(field, bag)?.to_vec()), id));
        } else if bag.bag_id == pkcs12::PKCS_12_CERT_BAG_OID {
            let cert = CertBag::from_der(bag_value(field, bag)?)
                .map_err(|_| bad(field, "malformed certificate bag"))?;
            if cert.cert_id != pkcs12::PKCS_12_X509_CERT_OID {
                return Err(bad(field, "holds a certificate that is not X.509"));
            }
            let der = cert.cert_value.as_bytes().to_vec();
            if !self.certs.iter().any(|(d, _)| *d == der) {
                self.certs.push((der, id));
            }
        }
        // CRL, secret and nested safe-contents bags carry nothing certflow imports.
        Ok(())
    }

    /// The leaf (the key's certificate, when there is a key), its issuers
    /// in order, then any other certificate; and the key.
    fn into_bundle(self, field: &str) -> DomainResult<(Vec<Vec<u8>>, Option<PrivateKey>)> {
        if self.certs.is_empty() {
            return Err(bad(field, "holds no certificate"));
        }
        if self.keys.len() > 1 {
            return Err(bad(
                field,
                format!(
                    "holds {} private keys; certflow imports one certificate with its key, \
                     so export them one at a time",
                    self.keys.len()
                ),
            ));
        }
        let key = match self.keys.into_iter().next() {
            None => None,
            Some((der, id)) => Some((
                PrivateKey::from_pkcs8_der(&der).map_err(|e| rename(e, field))?,
                id,
            )),
        };
        let mut rest = self.certs;
        let leaf_at = key.as_ref().and_then(|(key, id)| {
            id.as_ref()
                .and_then(|id| rest.iter().position(|(_, c)| c.as_ref() == Some(id)))
                .or_else(|| rest.iter().position(|(der, _)| key_matches_cert(key, der)))
        });
        let mut ordered = vec![rest.remove(leaf_at.unwrap_or(0)).0];
        // Issuers by name, as far as the file carries them.
        loop {
            let last = parse_cert(field, ordered[ordered.len() - 1].as_slice())?;
            let issuer = last.issuer().as_raw();
            if issuer == last.subject().as_raw() {
                break;
            }
            let mut next = None;
            for (i, (der, _)) in rest.iter().enumerate() {
                if parse_cert(field, der)?.subject().as_raw() == issuer {
                    next = Some(i);
                    break;
                }
            }
            match next {
                Some(i) => ordered.push(rest.remove(i).0),
                None => break,
            }
        }
        ordered.extend(rest.into_iter().map(|(der, _)| der));
        Ok((ordered, key.map(|(k, _)| k)))
    }
}

/// A key's errors name the file's field.
fn rename(e: DomainError, field: &str) -> DomainError {
    match e {
        DomainError::Invalid(errs) => DomainError::Invalid(
            errs.into_iter()
                .map(|mut fe| {
                    fe.field = field.to_owned();
                    fe
                })
                .collect(),
        ),
        other => other,
    }
}

/// Reads a password-protected PKCS#12 file (for import): its certificates
/// (the key's certificate first, then its issuers, then any other) and its
/// private key, if it holds one, within [`PKCS12_LIMITS`]. Errors name
/// `field`, never the password. CPU-heavy by design (key derivation): run it
/// off the async runtime.
pub fn read_pkcs12(
    field: &str,
    der: &[u8],
    password: &str,
) -> DomainResult<(Vec<Vec<u8>>, Option<PrivateKey>)> {
    read_pkcs12_within(field, der, password, PKCS12_LIMITS)
}

/// [`read_pkcs12`] under other limits.
pub fn read_pkcs12_within(
    field: &str,
    der: &[u8],
    password: &str,
    limits: Pkcs12Limits,
) -> DomainResult<(Vec<Vec<u8>>, Option<PrivateKey>)> {
    let not_p12 = || bad(field, "not a PKCS#12 file (RFC 7292 PFX, DER)");
    let pfx = Pfx::from_der(der).map_err(|_| not_p12())?;
    if pfx.auth_safe.content_type == ID_SIGNED_DATA {
        return Err(bad(
            field,
            "public-key integrity mode (a signed PKCS#12 file) is not supported",
        ));
    }
    if pfx.auth_safe.content_type != ID_DATA {
        return Err(not_p12());
    }
    let auth_safe = pfx
        .auth_safe
        .content
        .to_der()
        .ok()
        .and_then(|d| OctetString::from_der(&d).ok())
        .ok_or_else(not_p12)?;
    // Everything the file asks for is known (or refused) before any derivation.
    let mac = pfx
        .mac_data
        .as_ref()
        .map(|m| Mac::of(field, m))
        .transpose()?;
    let (sections, mut costs) = sections(field, auth_safe.as_bytes())?;
    if let Some(m) = &mac {
        costs.insert(0, (Use::Mac, m.iterations.get()));
    }
    let mut budget = Budget {
        field,
        limits,
        charged: Vec::new(),
    };
    budget.charge(&costs)?;
    let Some(mac) = mac else {
        return Err(bad(
            field,
            "has no MAC, so nothing protects its integrity (RFC 7292 §4); export it with one \
             (openssl pkcs12 -export without -nomac)",
        ));
    };
    mac.verify(field, password, auth_safe.as_bytes())?;
    let mut found = Found::default();
    for section in sections {
        let bags = match section {
            Section::Plain(bags) => bags,
            Section::Encrypted(pbes2, ciphertext) => {
                let plain = pbes2.decrypt(field, password, &ciphertext)?;
                let bags = safe_contents(field, &plain)?;
                // Keys inside an encrypted section were invisible until now.
                budget.charge(&key_costs(field, &bags)?)?;
                bags
            }
        };
        for bag in &bags {
            found.add(field, bag, password)?;
        }
    }
    found.into_bundle(field)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use certflow_core::{KeyType, Profile, SubjectName};
    use pkcs5::der::asn1::Any;
    use pkcs12::cms::content_info::ContentInfo;
    use pkcs12::pfx::Version;

    use super::*;
    use crate::testutil::{ca, now, openssl_in, tempdir};

    /// A leaf under the test CA, its key, and (root, intermediate) PEM files in `dir`.
    fn fixture(dir: &Path) -> (Vec<u8>, crate::CaMaterial) {
        let m = ca(KeyType::EcdsaP256);
        let key = crate::testutil::key(KeyType::EcdsaP256);
        let names = [SubjectName::Dns("p12.example.com".into())];
        let leaf = crate::issue::issue_leaf(
            &m.issuing_cert_der,
            &m.issuing_key,
            &crate::issue::LeafRequest {
                profile: Profile::TlsServer,
                names: &names,
                spki_der: &key.public_key_der(),
                key_type: KeyType::EcdsaP256,
                validity_days: 30,
                validity_secs: None,
                now: now(),
                urls: None,
            },
        )
        .unwrap();
        std::fs::write(dir.join("leaf.pem"), crate::cert_to_pem(&leaf)).unwrap();
        std::fs::write(dir.join("key.pem"), key.to_pem().as_bytes()).unwrap();
        // Root first: the reader must put the issuing CA right after the leaf.
        let chain = format!(
            "{}{}",
            crate::cert_to_pem(&m.root_cert_der),
            crate::cert_to_pem(&m.issuing_cert_der)
        );
        std::fs::write(dir.join("chain.pem"), chain).unwrap();
        (leaf, m)
    }

    /// `openssl pkcs12 -export` of the fixture with `extra` options; the file's bytes.
    fn export(dir: &Path, extra: &[&str]) -> Vec<u8> {
        let mut args = vec![
            "pkcs12",
            "-export",
            "-inkey",
            "key.pem",
            "-in",
            "leaf.pem",
            "-certfile",
            "chain.pem",
            "-passout",
            "pass:s3cret",
            "-out",
            "out.p12",
        ];
        args.extend_from_slice(extra);
        openssl_in(dir, &args);
        std::fs::read(dir.join("out.p12")).unwrap()
    }

    fn err(r: DomainResult<(Vec<Vec<u8>>, Option<PrivateKey>)>) -> String {
        match r {
            Ok(_) => panic!("read"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reads_what_openssl_writes_leaf_then_issuers() {
        let dir = tempdir();
        let (leaf, m) = fixture(dir.path());
        for extra in [
            &[][..],
            &["-macalg", "sha1"],
            &[
                "-keypbe",
                "AES-128-CBC",
                "-certpbe",
                "AES-192-CBC",
                "-macalg",
                "sha512",
            ],
            &["-iter", "600000"],
        ] {
            let p12 = export(dir.path(), extra);
            let (certs, key) = read_pkcs12("f", &p12, "s3cret").unwrap();
            assert_eq!(
                certs,
                vec![
                    leaf.clone(),
                    m.issuing_cert_der.clone(),
                    m.root_cert_der.clone()
                ],
                "{extra:?}"
            );
            let key = key.unwrap();
            assert!(key_matches_cert(&key, &leaf), "{extra:?}");
        }
    }

    /// `-passout pass:` is how OpenSSL writes a file with an empty password.
    #[test]
    fn reads_an_empty_password_as_openssl_writes_it() {
        let dir = tempdir();
        let (leaf, _) = fixture(dir.path());
        openssl_in(
            dir.path(),
            &[
                "pkcs12",
                "-export",
                "-inkey",
                "key.pem",
                "-in",
                "leaf.pem",
                "-passout",
                "pass:",
                "-out",
                "empty.p12",
            ],
        );
        let p12 = std::fs::read(dir.path().join("empty.p12")).unwrap();
        let (certs, key) = read_pkcs12("f", &p12, "").unwrap();
        assert_eq!(certs, vec![leaf]);
        assert!(key.is_some());
        let e = err(read_pkcs12("f", &p12, "x"));
        assert!(e.contains("MAC does not verify"), "{e}");
    }

    #[test]
    fn reads_certflows_own_export() {
        let dir = tempdir();
        let (leaf, m) = fixture(dir.path());
        let key = crate::testutil::key(KeyType::EcdsaP256);
        let chain = vec![m.issuing_cert_der.clone(), m.root_cert_der.clone()];
        let p12 = crate::pkcs12(&leaf, &chain, &key, "pw", "x").unwrap();
        let (certs, got) = read_pkcs12("f", &p12, "pw").unwrap();
        assert_eq!(certs[0], leaf);
        assert_eq!(got.unwrap().pkcs8_der(), key.pkcs8_der());
    }

    #[test]
    fn the_mac_is_checked_and_required() {
        let dir = tempdir();
        fixture(dir.path());
        let p12 = export(dir.path(), &[]);
        let e = err(read_pkcs12("f", &p12, "wrong"));
        assert!(
            e.contains("f: the password is wrong, or the file was altered"),
            "{e}"
        );
        // One bit of the certificates' ciphertext changed (well inside the authSafe).
        let mut altered = p12.clone();
        let at = altered.len() / 2;
        altered[at] ^= 1;
        let e = err(read_pkcs12("f", &altered, "s3cret"));
        assert!(
            e.contains("MAC does not verify") || e.contains("malformed"),
            "{e}"
        );
        let e = err(read_pkcs12("f", &export(dir.path(), &["-nomac"]), "s3cret"));
        assert!(e.contains("has no MAC"), "{e}");
    }

    #[test]
    fn unsupported_encryption_is_named() {
        let dir = tempdir();
        fixture(dir.path());
        let e = err(read_pkcs12(
            "f",
            &export(dir.path(), &["-legacy"]),
            "s3cret",
        ));
        assert!(e.contains("legacy PKCS#12 encryption"), "{e}");
        let e = err(read_pkcs12("f", b"\x30\x03\x02\x01\x03", "x"));
        assert!(e.contains("not a PKCS#12 file"), "{e}");
    }

    /// `p12` with its sections replaced and its MAC recomputed (or dropped).
    fn rebuild(p12: &[u8], sections: Vec<ContentInfo>, password: Option<&str>) -> Vec<u8> {
        let pfx = Pfx::from_der(p12).unwrap();
        let auth_safe = sections.to_der().unwrap();
        let mac_data = password.map(|pw| {
            let mut mac_data = pfx.mac_data.clone().unwrap();
            let mac = Mac::of("f", &mac_data).unwrap();
            let key = aws_lc_rs::hmac::Key::new(mac.hmac, &mac.key(pw));
            let tag = aws_lc_rs::hmac::sign(&key, &auth_safe);
            mac_data.mac.digest = OctetString::new(tag.as_ref()).unwrap();
            mac_data
        });
        Pfx {
            version: Version::V3,
            auth_safe: ContentInfo {
                content_type: ID_DATA,
                content: Any::encode_from(&OctetString::new(auth_safe).unwrap()).unwrap(),
            },
            mac_data,
        }
        .to_der()
        .unwrap()
    }

    fn authenticated_safe(p12: &[u8]) -> Vec<ContentInfo> {
        let pfx = Pfx::from_der(p12).unwrap();
        let octets = OctetString::from_der(&pfx.auth_safe.content.to_der().unwrap()).unwrap();
        Vec::<ContentInfo>::from_der(octets.as_bytes()).unwrap()
    }

    /// The issue 22 file: 255 encrypted sections of 1,000,000 iterations
    /// each, no MAC. Refused from its structure alone, far faster than the
    /// worst file accepted (whose three derivations add up to the limit).
    #[test]
    fn the_derivation_budget_is_checked_before_deriving() {
        let dir = tempdir();
        let (leaf, _) = fixture(dir.path());
        let worst = export(dir.path(), &["-iter", "1000000"]);
        let t = Instant::now();
        let (certs, _) = read_pkcs12("f", &worst, "s3cret").unwrap();
        let accepted = t.elapsed();
        assert_eq!(certs[0], leaf);

        // OpenSSL's encrypted section with one block of ciphertext: no
        // bigger than the 48 KiB import limit allows, never decrypted anyway.
        let sections = authenticated_safe(&worst);
        let template = sections
            .iter()
            .find(|s| s.content_type == ID_ENCRYPTED_DATA)
            .unwrap();
        let mut data = EncryptedData::from_der(&template.content.to_der().unwrap()).unwrap();
        data.enc_content_info.encrypted_content = Some(OctetString::new([7u8; 16]).unwrap());
        let encrypted = ContentInfo {
            content_type: ID_ENCRYPTED_DATA,
            content: Any::encode_from(&data).unwrap(),
        };
        let bomb = rebuild(&worst, vec![encrypted; 255], None);
        assert!(bomb.len() < 48 * 1024, "{}", bomb.len());
        let t = Instant::now();
        let e = err(read_pkcs12("f", &bomb, "s3cret"));
        let refused = t.elapsed();
        assert!(
            e.contains(
                "PKCS#12 key derivation cost exceeds the limit: 255 derivations \
                        (255 encrypted sections: 1000000 iterations each), 255000000 iterations \
                        in all; certflow derives at most 16 keys per file, of at most 1000000 \
                        iterations each and 3000000 in all"
            ),
            "{e}"
        );
        assert!(
            refused * 20 < accepted,
            "refused in {refused:?}, the worst accepted file takes {accepted:?}"
        );

        // The same worst file is refused under lower limits, naming each part.
        let e = err(read_pkcs12_within(
            "f",
            &worst,
            "s3cret",
            Pkcs12Limits {
                max_total_iterations: 2_000_000,
                ..PKCS12_LIMITS
            },
        ));
        assert!(
            e.contains(
                "3 derivations (the MAC: 1000000 iterations; 1 encrypted section: \
                        1000000 iterations; 1 shrouded key bag: 1000000 iterations)"
            ),
            "{e}"
        );
        // One derivation over the per-derivation bound.
        let e = err(read_pkcs12(
            "f",
            &export(dir.path(), &["-iter", "1000001"]),
            "s3cret",
        ));
        assert!(e.contains("cost exceeds the limit"), "{e}");
    }

    /// Shrouded keys inside an encrypted section are invisible until it is
    /// decrypted: they are charged to the same budget before their keys are derived.
    #[test]
    fn keys_inside_an_encrypted_section_are_charged_too() {
        let dir = tempdir();
        let (leaf, _) = fixture(dir.path());
        let p12 = export(dir.path(), &[]);
        let sections = authenticated_safe(&p12);
        let mut bags = Vec::new();
        for s in &sections {
            match s.content_type {
                ID_DATA => {
                    let octets = OctetString::from_der(&s.content.to_der().unwrap()).unwrap();
                    bags.extend(safe_contents("f", octets.as_bytes()).unwrap());
                }
                _ => {
                    let data = EncryptedData::from_der(&s.content.to_der().unwrap()).unwrap();
                    let alg = &data.enc_content_info.content_enc_alg;
                    let pbes2 = Pbes2::of("f", alg.oid, &alg.to_der().unwrap()).unwrap();
                    let plain = pbes2
                        .decrypt(
                            "f",
                            "s3cret",
                            data.enc_content_info
                                .encrypted_content
                                .as_ref()
                                .unwrap()
                                .as_bytes(),
                        )
                        .unwrap();
                    bags.extend(safe_contents("f", &plain).unwrap());
                }
            }
        }
        // Decoded bags keep their `[0]` wrapper, which encoding adds again.
        for bag in &mut bags {
            bag.bag_value = bag_value("f", bag).unwrap().to_vec();
        }
        let key_bag = bags
            .iter()
            .find(|b| b.bag_id == pkcs12::PKCS_12_PKCS8_KEY_BAG_OID)
            .unwrap()
            .clone();
        let template = sections
            .iter()
            .find(|s| s.content_type == ID_ENCRYPTED_DATA)
            .unwrap();
        // One encrypted section holding the certificates and `keys` copies of the key.
        let nested = |keys: usize| {
            let mut inner: Vec<SafeBag> = bags
                .iter()
                .filter(|b| b.bag_id != pkcs12::PKCS_12_PKCS8_KEY_BAG_OID)
                .cloned()
                .collect();
            inner.extend(std::iter::repeat_n(key_bag.clone(), keys));
            let mut data = EncryptedData::from_der(&template.content.to_der().unwrap()).unwrap();
            let alg = &data.enc_content_info.content_enc_alg;
            let pbes2 = Pbes2::of("f", alg.oid, &alg.to_der().unwrap()).unwrap();
            let mut key = vec![0u8; pbes2.key_len];
            aws_lc_rs::pbkdf2::derive(
                pbes2.prf,
                pbes2.iterations,
                &pbes2.salt,
                b"s3cret",
                &mut key,
            );
            let cipher = aws_lc_rs::cipher::PaddedBlockEncryptingKey::cbc_pkcs7(
                UnboundCipherKey::new(pbes2.cipher, &key).unwrap(),
            )
            .unwrap();
            let mut buf = inner.to_der().unwrap();
            cipher
                .less_safe_encrypt(
                    &mut buf,
                    aws_lc_rs::cipher::EncryptionContext::Iv128(FixedLength::from(pbes2.iv)),
                )
                .unwrap();
            data.enc_content_info.encrypted_content = Some(OctetString::new(buf).unwrap());
            let section = ContentInfo {
                content_type: ID_ENCRYPTED_DATA,
                content: Any::encode_from(&data).unwrap(),
            };
            rebuild(&p12, vec![section], Some("s3cret"))
        };
        let (certs, key) = read_pkcs12("f", &nested(1), "s3cret").unwrap();
        assert_eq!(certs[0], leaf);
        assert!(key.is_some());
        let e = err(read_pkcs12("f", &nested(2), "s3cret"));
        assert!(e.contains("f: holds 2 private keys"), "{e}");
        let e = err(read_pkcs12("f", &nested(20), "s3cret"));
        assert!(
            e.contains(
                "22 derivations (the MAC: 2048 iterations; 1 encrypted section: 2048 \
                        iterations; 20 shrouded key bags: 2048 iterations each)"
            ),
            "{e}"
        );
    }
}
