//! The state directory: the agent's identity, the keys it generated, and
//! what happened to each certificate last time. Every file is replaced
//! atomically (temporary file, fsync, rename, fsync of the directory).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use certflow_api::agent::DeploymentStatus;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::install::fsync_dir;

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// What the agent remembers about one certificate between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertState {
    /// The certificate's id once known.
    #[serde(default)]
    pub certificate_id: Option<Uuid>,
    /// Outcome of the last attempt.
    #[serde(default)]
    pub last_status: Option<DeploymentStatus>,
    /// Its error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The version last attempted.
    #[serde(default)]
    pub attempted_version: Option<u32>,
    /// Consecutive failures of that version (spaces out retries).
    #[serde(default)]
    pub failures: u32,
    /// No new attempt of the failed version before this.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub retry_after: Option<OffsetDateTime>,
    /// When this record changed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
    /// The revoked version last warned about (`on_revoked = "keep"`).
    #[serde(default)]
    pub revoked_warned: Option<u32>,
    /// The revoked version whose files were removed (`on_revoked = "remove"`).
    #[serde(default)]
    pub revoked_removed: Option<u32>,
}

impl StateDir {
    /// Opens (and creates, mode 0700) the state directory.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        for d in [
            root.to_path_buf(),
            root.join("identity"),
            root.join("keys"),
            root.join("certs"),
        ] {
            if !d.is_dir() {
                fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            }
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 0700 {}", d.display()))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Opens an existing state directory without changing it (`status`, `--dry-run`).
    pub fn existing(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// A file of the identity (`key.pem`, `cert.pem`, `ca.pem`).
    pub fn identity(&self, file: &str) -> PathBuf {
        self.root.join("identity").join(file)
    }

    /// The agent-generated key of a certificate (`next` for one awaiting its certificate).
    pub fn key(&self, label: &str, next: bool) -> PathBuf {
        let suffix = if next { ".next.pem" } else { ".pem" };
        self.root.join("keys").join(format!("{label}{suffix}"))
    }

    /// Reads a private file (identity or certificate key).
    pub fn read_secret(&self, path: &Path) -> Option<Zeroizing<String>> {
        fs::read_to_string(path).ok().map(Zeroizing::new)
    }

    /// The record of one certificate (default when none).
    pub fn cert_state(&self, label: &str) -> CertState {
        fs::read_to_string(self.root.join("certs").join(format!("{label}.json")))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Saves the record of one certificate.
    pub fn save_cert_state(&self, label: &str, s: &CertState) -> anyhow::Result<()> {
        let path = self.root.join("certs").join(format!("{label}.json"));
        write_atomic(&path, serde_json::to_string_pretty(s)?.as_bytes(), 0o600)
    }
}

/// Replaces `path` with `bytes` atomically, at `mode`, durably.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file needs a directory")?;
    let name = path
        .file_name()
        .context("a file needs a name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    fsync_dir(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let st = StateDir::open(&tmp.path().join("state")).unwrap();
        assert_eq!(st.cert_state("www"), CertState::default());
        let s = CertState {
            last_status: Some(DeploymentStatus::Failed),
            last_error: Some("reload failed".into()),
            attempted_version: Some(3),
            failures: 1,
            ..CertState::default()
        };
        st.save_cert_state("www", &s).unwrap();
        assert_eq!(st.cert_state("www"), s);
        let mode = fs::metadata(tmp.path().join("state/certs/www.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(tmp.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
