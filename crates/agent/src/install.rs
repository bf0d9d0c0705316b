//! Atomic installation of a certificate's whole file set, with rollback.
//!
//! # Commit protocol
//!
//! The configured targets (`cert`, `key`, `fullchain`, ...) can live in
//! different directories, and no file system renames several files in one
//! step. So every target is a symbolic link into a per-certificate *store*
//! (`<first target's directory>/.certflow/<name>` unless `store_dir` says
//! otherwise), and the store holds one directory per installed version plus
//! two links, `current` and `previous`:
//!
//! ```text
//! /etc/nginx/tls/www.key  -> /etc/nginx/tls/.certflow/www/current/key.pem
//! /etc/nginx/tls/www.pem  -> /etc/nginx/tls/.certflow/www/current/fullchain.pem
//! /etc/nginx/tls/.certflow/www/current  -> v7-1718000000123456789
//! /etc/nginx/tls/.certflow/www/previous -> v6-1717000000123456789
//! ```
//!
//! Installing version N runs these steps; each leaves a consistent state if
//! the process dies right after it (`kill -9`, power loss: every file and
//! every directory entry is fsynced before the next step relies on it):
//!
//! 1. **Stage**: write every file into `vN-<nanos>.tmp/` (fsync each file,
//!    then the directory). A crash leaves a `.tmp` directory nothing points
//!    at; [`Installer::recover`] deletes it.
//! 2. **Publish**: rename it to `vN-<nanos>/`, fsync the store.
//! 3. **Adopt** (first install only, when `current` does not exist yet):
//!    copy whatever files the targets hold today into `v0-adopted-<nanos>/`
//!    and point `current` at it, so the next step changes nothing a reader sees.
//! 4. **Link**: replace each target that is not yet our link by one (a new
//!    link next to it, renamed over it, directory fsynced). Each replacement
//!    resolves to the same content as before (the adopted copy or the
//!    current version), so a crash between two targets mixes nothing.
//! 5. **Mark previous**: point `previous` at what `current` points at.
//! 6. **Commit**: point `current` at `vN-<nanos>` — one `rename(2)` of a
//!    link over a link, atomic: every target switches to version N at once.
//! 7. **Prune**: delete versions other than `current` and `previous`.
//!
//! Before step 1 the material is checked (key matches certificate, names
//! covered, chain signs the leaf, not expired): a mismatch is never staged.
//! Rollback is step 6 with `previous`. Only the commit changes what a
//! reader sees, so the certificate and key a service reads always belong
//! together, whenever the agent died.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::config::{CertConfig, InstallConfig, parse_mode};
use crate::pki;

/// What to install: one version of one certificate.
pub struct Material {
    /// The managed certificate.
    pub certificate_id: Uuid,
    /// Its version.
    pub version: u32,
    /// The leaf (DER).
    pub leaf_der: Vec<u8>,
    /// The issuing chain (DER), issuer first.
    pub chain_der: Vec<Vec<u8>>,
    /// The private key (PKCS#8 PEM), when a key or PKCS#12 target needs it.
    pub key_pem: Option<Zeroizing<String>>,
    /// The PKCS#12 password, with a `pkcs12` target.
    pub pkcs12_password: Option<Zeroizing<String>>,
}

/// What an installed version is, written next to its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// The managed certificate (nil for adopted pre-existing files).
    pub certificate_id: Uuid,
    /// Version (0 for adopted pre-existing files).
    pub version: u32,
    /// Serial, lower-case hex.
    pub serial: String,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub fingerprint_sha256: String,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When the version was staged.
    #[serde(with = "time::serde::rfc3339")]
    pub staged_at: OffsetDateTime,
}

const META: &str = "meta.json";
const CURRENT: &str = "current";
const PREVIOUS: &str = "previous";
const TMP_LINK_SUFFIX: &str = ".certflow-tmp";

/// Counts file-system actions so that tests can stop the protocol after any
/// prefix of them, as `kill -9` would.
struct Budget(std::cell::Cell<usize>);

/// The protocol was stopped by the test budget (never in production).
#[derive(Debug, thiserror::Error)]
#[error("stopped by the test budget")]
struct Stopped;

impl Budget {
    fn tick(&self) -> Result<(), Stopped> {
        match self.0.get() {
            0 => Err(Stopped),
            n => {
                self.0.set(n - 1);
                Ok(())
            }
        }
    }
}

/// One file of a version: (name, content, holds a secret).
type VersionFile = (&'static str, Zeroizing<Vec<u8>>, bool);

/// Installs one configured certificate's files.
#[derive(Debug, Clone)]
pub struct Installer {
    label: String,
    store: PathBuf,
    install: InstallConfig,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
    key_mode: u32,
}

impl Installer {
    /// Resolves the store directory and the owner and group.
    pub fn new(cfg: &CertConfig) -> anyhow::Result<Self> {
        let label = cfg.label();
        let install = cfg.install.clone();
        let store = match &install.store_dir {
            Some(d) => d.clone(),
            None => {
                let first = install
                    .targets()
                    .first()
                    .and_then(|(_, p)| p.parent().map(Path::to_path_buf))
                    .context("no install target")?;
                first.join(".certflow").join(&label)
            }
        };
        let uid = install
            .owner
            .as_deref()
            .map(|o| {
                lookup_id("/etc/passwd", o).with_context(|| format!("owner {o:?}: no such user"))
            })
            .transpose()?;
        let gid = install
            .group
            .as_deref()
            .map(|g| {
                lookup_id("/etc/group", g).with_context(|| format!("group {g:?}: no such group"))
            })
            .transpose()?;
        Ok(Self {
            label,
            store,
            uid,
            gid,
            mode: install
                .mode
                .as_deref()
                .and_then(parse_mode)
                .unwrap_or(0o644),
            key_mode: install
                .key_mode
                .as_deref()
                .and_then(parse_mode)
                .unwrap_or(0o600),
            install,
        })
    }

    /// The store directory.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// The version the targets serve now (None before the first install).
    pub fn current(&self) -> Option<VersionMeta> {
        self.meta_of(CURRENT)
    }

    /// The version a rollback returns to.
    pub fn previous(&self) -> Option<VersionMeta> {
        self.meta_of(PREVIOUS)
    }

    fn meta_of(&self, link: &str) -> Option<VersionMeta> {
        let text = fs::read_to_string(self.store.join(link).join(META)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Whether every target is our link (a target replaced by hand is not).
    pub fn targets_linked(&self) -> bool {
        self.install.targets().iter().all(|(file, path)| {
            fs::read_link(path).ok() == Some(self.store.join(CURRENT).join(file))
        })
    }

    /// Removes what a process that died mid-install left behind: staging
    /// directories and temporary links (never anything a target resolves to).
    pub fn recover(&self) -> io::Result<()> {
        if let Ok(entries) = fs::read_dir(&self.store) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    fs::remove_dir_all(e.path())?;
                } else if name.ends_with(TMP_LINK_SUFFIX) {
                    fs::remove_file(e.path())?;
                }
            }
        }
        for (_, path) in self.install.targets() {
            let tmp = tmp_link(path);
            if fs::symlink_metadata(&tmp).is_ok() {
                fs::remove_file(&tmp)?;
            }
        }
        Ok(())
    }

    /// Describes what an install would change (for `--dry-run`).
    pub fn describe(&self) -> Vec<String> {
        self.install
            .targets()
            .iter()
            .map(|(file, path)| {
                let state = if fs::read_link(path).ok() == Some(self.store.join(CURRENT).join(file))
                {
                    "switches with the new version"
                } else if fs::symlink_metadata(path).is_ok() {
                    "replaced by a link (the present file is kept for rollback)"
                } else {
                    "created as a link"
                };
                format!(
                    "{} -> {}: {state}",
                    path.display(),
                    self.store.join(CURRENT).join(file).display()
                )
            })
            .collect()
    }

    /// Checks the material and installs it atomically (see the module docs).
    pub fn install(&self, m: &Material, requested: &[String]) -> anyhow::Result<VersionMeta> {
        self.install_steps(m, requested, &Budget(std::cell::Cell::new(usize::MAX)))
    }

    fn install_steps(
        &self,
        m: &Material,
        requested: &[String],
        budget: &Budget,
    ) -> anyhow::Result<VersionMeta> {
        let needs_key = self.install.key.is_some() || self.install.pkcs12.is_some();
        if needs_key && m.key_pem.is_none() {
            anyhow::bail!("no private key to install");
        }
        let now = OffsetDateTime::now_utc();
        let info = pki::check_material(
            &m.leaf_der,
            &m.chain_der,
            m.key_pem.as_deref().map(String::as_str),
            requested,
            now,
        )?;
        let meta = VersionMeta {
            certificate_id: m.certificate_id,
            version: m.version,
            serial: info.serial,
            fingerprint_sha256: info.fingerprint,
            not_after: info.not_after,
            staged_at: now,
        };
        self.recover()
            .context("cleaning up an interrupted install")?;
        mkdir(&self.store)?;

        // 1. Stage.
        let name = format!("v{}-{}", m.version, nanos());
        let staging = self.store.join(format!("{name}.tmp"));
        budget.tick()?;
        fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        for (file, bytes, secret) in self.files(m, &meta)? {
            budget.tick()?;
            self.write_file(&staging.join(file), &bytes, secret)?;
        }
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))?;
        fsync_dir(&staging)?;

        // 2. Publish.
        budget.tick()?;
        fs::rename(&staging, self.store.join(&name))?;
        fsync_dir(&self.store)?;

        // 3. Adopt what the targets hold today, on the first install.
        if fs::symlink_metadata(self.store.join(CURRENT)).is_err() {
            self.adopt(budget)?;
        }

        // 4. Link the targets.
        let current = self.store.join(CURRENT);
        for (file, path) in self.install.targets() {
            let want = current.join(file);
            if fs::read_link(path).ok() == Some(want.clone()) {
                continue;
            }
            let dir = parent(path)?;
            mkdir(dir)?;
            budget.tick()?;
            replace_link(path, &want)?;
        }

        // 5. Mark previous.
        if let Ok(old) = fs::read_link(&current) {
            budget.tick()?;
            replace_link(&self.store.join(PREVIOUS), &old)?;
        }

        // 6. Commit.
        budget.tick()?;
        replace_link(&current, Path::new(&name))?;

        // 7. Prune.
        budget.tick()?;
        self.prune()?;
        Ok(meta)
    }

    /// Points `current` back at `previous` (step 6 of the protocol with the
    /// previous version) and returns what is now current.
    pub fn rollback(&self) -> anyhow::Result<Option<VersionMeta>> {
        let prev = fs::read_link(self.store.join(PREVIOUS))
            .context("no previous version to roll back to")?;
        replace_link(&self.store.join(CURRENT), &prev)?;
        Ok(self.current())
    }

    /// Takes the certificate out of service: removes every target that is
    /// our link (a target replaced by hand is left alone), the `current` and
    /// `previous` links, and then the version directories nothing points at
    /// any more (their key belongs to a revoked certificate). Returns the
    /// version that was served. A later install starts afresh.
    pub fn remove(&self) -> anyhow::Result<Option<VersionMeta>> {
        let served = self.current();
        let current = self.store.join(CURRENT);
        for (file, path) in self.install.targets() {
            if fs::read_link(path).ok() == Some(current.join(file)) {
                fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
                fsync_dir(parent(path)?)?;
            }
        }
        if fs::symlink_metadata(&self.store).is_err() {
            return Ok(served);
        }
        for link in [CURRENT, PREVIOUS] {
            let path = self.store.join(link);
            if fs::symlink_metadata(&path).is_ok() {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        self.prune()?;
        Ok(served)
    }

    /// The files of a version: (name, content, holds a secret).
    fn files(&self, m: &Material, meta: &VersionMeta) -> anyhow::Result<Vec<VersionFile>> {
        let leaf = pki::cert_pem(&m.leaf_der);
        let chain: String = m.chain_der.iter().map(|d| pki::cert_pem(d)).collect();
        let public = |s: String| Zeroizing::new(s.into_bytes());
        let mut out = vec![
            ("cert.pem", public(leaf.clone()), false),
            (META, public(serde_json::to_string_pretty(meta)?), false),
        ];
        if self.install.chain.is_some() {
            out.push(("chain.pem", public(chain.clone()), false));
        }
        if self.install.fullchain.is_some() {
            out.push(("fullchain.pem", public(format!("{leaf}{chain}")), false));
        }
        if let (Some(_), Some(k)) = (&self.install.key, &m.key_pem) {
            out.push(("key.pem", Zeroizing::new(k.as_bytes().to_vec()), true));
        }
        if self.install.pkcs12.is_some() {
            let (Some(k), Some(pw)) = (&m.key_pem, &m.pkcs12_password) else {
                anyhow::bail!("a PKCS#12 target needs the key and a password");
            };
            out.push((
                "bundle.p12",
                Zeroizing::new(pkcs12(&self.label, m, k, pw)?),
                true,
            ));
        }
        Ok(out)
    }

    /// Writes, fsyncs, sets the mode (whatever the umask) and the owner.
    fn write_file(&self, path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
        let mode = if secret { self.key_mode } else { self.mode };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(bytes)?;
        if self.uid.is_some() || self.gid.is_some() {
            std::os::unix::fs::fchown(&f, self.uid, self.gid)
                .with_context(|| format!("chown {}", path.display()))?;
        }
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        Ok(())
    }

    /// Copies the files the targets hold now into an adopted version and
    /// makes it current (nothing a reader sees changes).
    fn adopt(&self, budget: &Budget) -> anyhow::Result<()> {
        let name = format!("v0-adopted-{}", nanos());
        let staging = self.store.join(format!("{name}.tmp"));
        budget.tick()?;
        fs::create_dir(&staging)?;
        for (file, path) in self.install.targets() {
            // Follows links: an unmanaged link's content is what is served.
            if let Ok(meta) = fs::metadata(path)
                && meta.is_file()
            {
                budget.tick()?;
                let bytes = Zeroizing::new(fs::read(path)?);
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(staging.join(file))?;
                f.write_all(&bytes)?;
                // Keep the original owner when we may (as root); a copy owned by us is fine otherwise.
                let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
                f.set_permissions(fs::Permissions::from_mode(
                    meta.permissions().mode() & 0o777,
                ))?;
                f.sync_all()?;
            }
        }
        if let Ok(pem) = fs::read_to_string(staging.join("cert.pem"))
            .or_else(|_| fs::read_to_string(staging.join("fullchain.pem")))
            && let Ok(ders) = pki::pem_certs(&pem)
            && let Some(der) = ders.first()
            && let Ok(info) = pki::cert_info(der)
        {
            let meta = VersionMeta {
                certificate_id: Uuid::nil(),
                version: 0,
                serial: info.serial,
                fingerprint_sha256: info.fingerprint,
                not_after: info.not_after,
                staged_at: OffsetDateTime::now_utc(),
            };
            fs::write(staging.join(META), serde_json::to_string_pretty(&meta)?)?;
            File::open(staging.join(META))?.sync_all()?;
        }
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))?;
        fsync_dir(&staging)?;
        budget.tick()?;
        fs::rename(&staging, self.store.join(&name))?;
        fsync_dir(&self.store)?;
        budget.tick()?;
        replace_link(&self.store.join(CURRENT), Path::new(&name))?;
        Ok(())
    }

    /// Deletes versions that neither `current` nor `previous` points at.
    fn prune(&self) -> anyhow::Result<()> {
        let keep: Vec<OsString> = [CURRENT, PREVIOUS]
            .iter()
            .filter_map(|l| fs::read_link(self.store.join(l)).ok())
            .map(PathBuf::into_os_string)
            .collect();
        for e in fs::read_dir(&self.store)?.flatten() {
            let name = e.file_name();
            let s = name.to_string_lossy();
            if s.starts_with('v') && !s.ends_with(".tmp") && !keep.contains(&name) {
                fs::remove_dir_all(e.path())?;
            }
        }
        fsync_dir(&self.store)?;
        Ok(())
    }
}

fn pkcs12(label: &str, m: &Material, key_pem: &str, password: &str) -> anyhow::Result<Vec<u8>> {
    use p12_keystore::{
        Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKeyChain,
    };
    let key_der = Zeroizing::new(
        pem::parse(key_pem)
            .map_err(|_| anyhow::anyhow!("unreadable private key"))?
            .into_contents(),
    );
    let key = p12_keystore::PrivateKey::from_der(&key_der)
        .map_err(|_| anyhow::anyhow!("key rejected by the PKCS#12 encoder"))?;
    let mut certs =
        vec![Certificate::from_der(&m.leaf_der).map_err(|_| anyhow::anyhow!("bad leaf"))?];
    for d in &m.chain_der {
        certs.push(Certificate::from_der(d).map_err(|_| anyhow::anyhow!("bad chain certificate"))?);
    }
    let id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &m.leaf_der)
        .as_ref()
        .to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        label,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(id, key, certs)),
    );
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(100_000)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .mac_iterations(100_000)
        .write()
        .map_err(|_| anyhow::anyhow!("PKCS#12 encoding failed"))
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn parent(path: &Path) -> anyhow::Result<&Path> {
    path.parent()
        .with_context(|| format!("{} has no directory", path.display()))
}

fn tmp_link(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TMP_LINK_SUFFIX}"))
}

/// Atomically makes `path` a link to `target`: a new link beside it renamed
/// over it, then the directory fsynced.
fn replace_link(path: &Path, target: &Path) -> anyhow::Result<()> {
    let tmp = tmp_link(path);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", tmp.display())),
    }
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    fsync_dir(parent(path)?)?;
    Ok(())
}

fn mkdir(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        if let Some(p) = dir.parent() {
            fsync_dir(p)?;
        }
    }
    Ok(())
}

/// Makes a directory's entries (renames, new files) durable.
pub fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

/// A uid or gid from a number or a name in `/etc/passwd` or `/etc/group`
/// (names served only by NSS modules such as LDAP need the number).
fn lookup_id(db: &str, who: &str) -> Option<u32> {
    if let Ok(n) = who.parse() {
        return Some(n);
    }
    fs::read_to_string(db).ok()?.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(who))
            .then(|| f.nth(1)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::KeyType;
    use crate::pki::tests::TestCa;

    fn cfg(dir: &Path) -> CertConfig {
        let text = format!(
            r#"name = "www"
names = ["www.example.com"]
[install]
cert = "{d}/certs/www.crt"
fullchain = "{d}/certs/www-full.pem"
key = "{d}/private/www.key"
"#,
            d = dir.display()
        );
        toml::from_str(&text).unwrap()
    }

    fn material(ca: &TestCa, version: u32) -> (Material, String) {
        let key = pki::generate_key(KeyType::EcdsaP256).unwrap();
        let leaf = ca.leaf(&key, &["www.example.com"]);
        let fp = pki::sha256_hex(&leaf);
        (
            Material {
                certificate_id: Uuid::nil(),
                version,
                leaf_der: leaf,
                chain_der: vec![ca.der()],
                key_pem: Some(key),
                pkcs12_password: None,
            },
            fp,
        )
    }

    /// What a service reading the targets would load: (cert fingerprint, key matches), or None if absent.
    fn served(dir: &Path) -> Option<(String, String)> {
        let cert = fs::read_to_string(dir.join("certs/www.crt")).ok();
        let full = fs::read_to_string(dir.join("certs/www-full.pem")).ok();
        let key = fs::read_to_string(dir.join("private/www.key")).ok();
        match (cert, full, key) {
            (None, None, None) => None,
            (Some(c), Some(f), Some(k)) => {
                let der = pki::pem_certs(&c).unwrap().remove(0);
                let fder = pki::pem_certs(&f).unwrap().remove(0);
                assert_eq!(der, fder, "cert and fullchain disagree");
                let info = pki::cert_info(&der).unwrap();
                assert_eq!(
                    pki::key_public(&k).unwrap(),
                    info.public_key,
                    "certificate and key mismatched"
                );
                Some((info.fingerprint, k))
            }
            other => panic!("a partial set is served: {other:?}"),
        }
    }

    /// Writes an unmanaged pair (as a host had before the agent).
    fn preexisting(dir: &Path, ca: &TestCa) -> String {
        let (m, fp) = material(ca, 0);
        fs::create_dir_all(dir.join("certs")).unwrap();
        fs::create_dir_all(dir.join("private")).unwrap();
        let pem = pki::cert_pem(&m.leaf_der);
        fs::write(dir.join("certs/www.crt"), &pem).unwrap();
        fs::write(
            dir.join("certs/www-full.pem"),
            format!("{pem}{}", pki::cert_pem(&ca.der())),
        )
        .unwrap();
        fs::write(
            dir.join("private/www.key"),
            m.key_pem.as_deref().unwrap().as_str(),
        )
        .unwrap();
        fp
    }

    #[test]
    fn install_modes_links_and_rollback() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = TestCa::new();
        let inst = Installer::new(&cfg(dir)).unwrap();
        let (m1, fp1) = material(&ca, 1);
        let meta = inst.install(&m1, &["www.example.com".into()]).unwrap();
        assert_eq!(meta.fingerprint_sha256, fp1);
        assert_eq!(served(dir).unwrap().0, fp1);
        assert!(inst.targets_linked());
        let key_mode = fs::metadata(dir.join("private/www.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(key_mode, 0o600);
        let cert_mode = fs::metadata(dir.join("certs/www.crt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(cert_mode, 0o644);
        let (m2, fp2) = material(&ca, 2);
        inst.install(&m2, &[]).unwrap();
        assert_eq!(served(dir).unwrap().0, fp2);
        assert_eq!(inst.current().unwrap().version, 2);
        assert_eq!(inst.previous().unwrap().version, 1);
        let back = inst.rollback().unwrap().unwrap();
        assert_eq!(back.version, 1);
        assert_eq!(served(dir).unwrap().0, fp1);
        // A third install prunes what neither link names.
        let (m3, _) = material(&ca, 3);
        inst.install(&m3, &[]).unwrap();
        let versions = fs::read_dir(inst.store())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('v'))
            .count();
        assert_eq!(versions, 2);
    }

    /// `on_revoked = "remove"`: the targets the agent linked, its links and
    /// versions go; a target replaced by hand stays; a later install
    /// starts afresh; a second removal finds nothing to do.
    #[test]
    fn remove_takes_only_what_the_agent_installed_out_of_service() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = TestCa::new();
        let inst = Installer::new(&cfg(dir)).unwrap();
        let (m1, _) = material(&ca, 1);
        inst.install(&m1, &[]).unwrap();
        let (m2, _) = material(&ca, 2);
        inst.install(&m2, &[]).unwrap();
        assert!(served(dir).is_some());

        let removed = inst.remove().unwrap().unwrap();
        assert_eq!(removed.version, 2);
        assert_eq!(served(dir), None, "no target is left");
        for link in [CURRENT, PREVIOUS] {
            assert!(
                fs::symlink_metadata(inst.store().join(link)).is_err(),
                "{link}"
            );
        }
        let left: Vec<String> = fs::read_dir(inst.store())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.is_empty(),
            "versions (and their keys) pruned: {left:?}"
        );
        assert!(inst.current().is_none());
        assert!(inst.remove().unwrap().is_none(), "nothing left to remove");

        // Installed again, then a target replaced by hand: that file stays.
        let (m3, fp3) = material(&ca, 3);
        inst.install(&m3, &[]).unwrap();
        assert_eq!(served(dir).unwrap().0, fp3);
        assert!(inst.targets_linked());
        fs::remove_file(dir.join("certs/www.crt")).unwrap();
        fs::write(dir.join("certs/www.crt"), "operator's file").unwrap();
        assert_eq!(inst.remove().unwrap().unwrap().version, 3);
        assert_eq!(
            fs::read_to_string(dir.join("certs/www.crt")).unwrap(),
            "operator's file"
        );
        assert!(fs::symlink_metadata(dir.join("private/www.key")).is_err());
        assert!(fs::symlink_metadata(dir.join("certs/www-full.pem")).is_err());
    }

    #[test]
    fn a_mismatch_is_never_staged() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = TestCa::new();
        let inst = Installer::new(&cfg(dir)).unwrap();
        let (m1, fp1) = material(&ca, 1);
        inst.install(&m1, &[]).unwrap();
        let (mut bad, _) = material(&ca, 2);
        bad.key_pem = m1.key_pem.clone();
        let e = inst.install(&bad, &[]).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let (m3, _) = material(&ca, 3);
        let e = inst
            .install(&m3, &["other.example.com".into()])
            .unwrap_err();
        assert!(e.to_string().contains("other.example.com"), "{e}");
        assert_eq!(served(dir).unwrap().0, fp1);
        assert_eq!(inst.current().unwrap().version, 1);
    }

    /// Stops the protocol after every prefix of its file-system actions (as
    /// `kill -9` would), checks what a service would read, then lets a new
    /// process recover and finish — on a fresh host, over pre-existing
    /// unmanaged files, and over a managed previous version.
    #[test]
    fn a_crash_after_any_step_never_leaves_a_mismatched_pair() {
        for scenario in ["fresh", "adopt", "upgrade"] {
            let mut k = 0;
            loop {
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path();
                let ca = TestCa::new();
                let inst = Installer::new(&cfg(dir)).unwrap();
                let before = match scenario {
                    "fresh" => None,
                    "adopt" => Some(preexisting(dir, &ca)),
                    _ => {
                        let (m, fp) = material(&ca, 1);
                        inst.install(&m, &[]).unwrap();
                        Some(fp)
                    }
                };
                let (m, fp) = material(&ca, 2);
                let r = inst.install_steps(&m, &[], &Budget(std::cell::Cell::new(k)));
                let now = served(dir).map(|s| s.0);
                match &r {
                    Err(e) if e.is::<Stopped>() => {
                        assert!(
                            now == before || now.as_deref() == Some(fp.as_str()),
                            "{scenario}: after {k} actions neither the old nor the new set is served"
                        );
                    }
                    Err(e) => panic!("{scenario}: {e:#}"),
                    Ok(_) => assert_eq!(now.as_deref(), Some(fp.as_str())),
                }
                // A restarted agent recovers and installs again.
                inst.recover().unwrap();
                let leftovers: Vec<_> = fs::read_dir(inst.store())
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.ends_with(".tmp") || n.ends_with(TMP_LINK_SUFFIX))
                            .collect()
                    })
                    .unwrap_or_default();
                assert!(leftovers.is_empty(), "{leftovers:?}");
                inst.install(&m, &[]).unwrap();
                assert_eq!(served(dir).unwrap().0, fp);
                if r.is_ok() {
                    assert!(k > 5, "{scenario}: the protocol has more than {k} steps");
                    break;
                }
                k += 1;
            }
        }
    }

    #[test]
    fn pkcs12_target_opens_and_owner_is_looked_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca = TestCa::new();
        let mut c = cfg(dir);
        c.install.pkcs12 = Some(dir.join("www.p12"));
        c.install.group = Some(String::from("0"));
        let inst = Installer::new(&c).unwrap();
        let (mut m, _) = material(&ca, 1);
        m.pkcs12_password = Some(Zeroizing::new("pw".into()));
        inst.install(&m, &[]).unwrap();
        let p12 = fs::read(dir.join("www.p12")).unwrap();
        let ks = p12_keystore::KeyStore::from_pkcs12(
            &p12,
            "pw",
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .unwrap();
        let (alias, chain) = ks.private_key_chain().unwrap();
        assert_eq!(alias, "www");
        assert_eq!(chain.certs().len(), 2);
        assert_eq!(lookup_id("/etc/passwd", "root"), Some(0));
        assert_eq!(lookup_id("/etc/passwd", "no-such-user-here"), None);
    }
}
