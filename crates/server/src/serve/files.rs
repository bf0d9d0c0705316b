//! Data at rest on the local disk: the data directory is the owner's alone
//! (0700), and so are the SQLite database with its `-wal`/`-shm` files and
//! the blob files (0600), like `master.key`. New files get these modes from
//! the process umask (077), set before anything is created, so every file
//! the server or SQLite or `object_store` creates is owner-only whatever
//! library made it (child processes such as DNS-01 hooks inherit it).
//! Files an older version or a looser umask left readable by group or
//! others are tightened at start, with a warning naming them; a file the
//! process may not change stops the start with a message, as a loose
//! `master.key` does.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};

use crate::config::Config;

/// Bits that give group or others any access.
const OTHERS: u32 = 0o077;

/// Sets the umask to 077 and makes the data directory (created 0700 if
/// new), the SQLite database files and the local blob store owner-only.
pub(super) fn secure_data(config: &Config) -> anyhow::Result<()> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(OTHERS));
    tighten_existing(config)
}

/// The data directory (created 0700 if new), the SQLite database files and
/// the local blob store made owner-only; the umask is left alone.
fn tighten_existing(config: &Config) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    if let Err(e) = tighten(dir, 0o700) {
        // With PostgreSQL, S3 and KMS nothing secret lives there (a container's
        // volume may well belong to root): then a warning is enough.
        if holds_embedded_state(config) {
            return Err(e);
        }
        tracing::warn!(error = %e, "the data directory is open to others; it holds no secret in this configuration");
    }
    if let Some(db) = config.database_path() {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            tighten(Path::new(&name), 0o600)?;
        }
    }
    if config.blob_kind() == "local" {
        let blobs = config.blob_path();
        // Walked only when its root was loose: a tree this version made is
        // owner-only from the start, and a large one is not stat'ed at every start.
        if tighten(&blobs, 0o700)? {
            let n = tighten_tree(&blobs)?;
            tracing::warn!(path = %blobs.display(), files = n, "made every blob owner-only (0600, directories 0700)");
        }
    }
    Ok(())
}

/// Whether secrets live in the data directory: the SQLite database, the
/// local blob store or a generated master key.
fn holds_embedded_state(config: &Config) -> bool {
    let under = |p: &Path| p.starts_with(&config.data_dir);
    config.database_path().is_some_and(|p| under(&p))
        || (config.blob_kind() == "local" && under(&config.blob_path()))
        || (config.master_key.provider == "local"
            && config.master_key.key.is_none()
            && config.master_key.file.is_none())
}

/// Gives `path` `mode` if it exists with group or other bits; true if it
/// had to. Refuses (naming the file) when it cannot.
fn tighten(path: &Path, mode: u32) -> anyhow::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    let current = meta.permissions().mode() & 0o777;
    if meta.file_type().is_symlink() || current & OTHERS == 0 {
        return Ok(false);
    }
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        bail!(
            "{} is open to group or others (mode {current:o}) and cannot be changed ({e}); chmod {mode:o} it",
            path.display()
        );
    }
    tracing::warn!(path = %path.display(), was = format!("{current:o}"), now = format!("{mode:o}"), "tightened the mode of a data file");
    Ok(true)
}

/// Makes every file under `dir` 0600 and every directory 0700; returns how
/// many entries it changed.
fn tighten_tree(dir: &Path) -> anyhow::Result<u64> {
    let mut changed = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                changed += u64::from(tighten_quietly(&path, 0o700)?);
                pending.push(path);
            } else if kind.is_file() {
                changed += u64::from(tighten_quietly(&path, 0o600)?);
            }
        }
    }
    Ok(changed)
}

/// [`tighten`] without a log line per file.
fn tighten_quietly(path: &Path, mode: u32) -> anyhow::Result<bool> {
    let current = std::fs::symlink_metadata(path)
        .with_context(|| format!("checking {}", path.display()))?
        .permissions()
        .mode();
    if current & OTHERS == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| {
        format!(
            "{} is open to group or others and cannot be changed; chmod {mode:o} it",
            path.display()
        )
    })?;
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn loose_files_of_an_older_data_directory_are_made_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let blobs = data.join("blobs");
        std::fs::create_dir_all(blobs.join("certificates/x")).unwrap();
        for (p, m) in [
            (data.join("certflow.db"), 0o644),
            (data.join("certflow.db-wal"), 0o644),
            (blobs.join("certificates/x/key.enc"), 0o644),
        ] {
            std::fs::write(&p, b"x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        for d in [&data, &blobs, &blobs.join("certificates")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let config = Config {
            data_dir: data.clone(),
            ..Default::default()
        };
        // The umask is the process's: a unit test leaves it to the e2e test.
        tighten_existing(&config).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("certflow.db")), 0o600);
        assert_eq!(mode(&data.join("certflow.db-wal")), 0o600);
        assert_eq!(mode(&blobs), 0o700);
        assert_eq!(mode(&blobs.join("certificates")), 0o700);
        assert_eq!(mode(&blobs.join("certificates/x")), 0o700);
        assert_eq!(mode(&blobs.join("certificates/x/key.enc")), 0o600);
        // A new data directory is created owner-only.
        let fresh = Config {
            data_dir: tmp.path().join("fresh"),
            ..Default::default()
        };
        tighten_existing(&fresh).unwrap();
        assert_eq!(mode(&tmp.path().join("fresh")), 0o700);
    }
}
