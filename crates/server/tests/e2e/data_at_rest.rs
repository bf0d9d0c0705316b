//! Secrets at rest on the local disk: the real `certflow serve` with the
//! embedded defaults keeps its data directory owner-only (0700) and every
//! file in it — SQLite database, WAL, shared memory, master key, blobs
//! (certificates, sealed keys, the CA's) — 0600, whatever umask it was
//! started with; a data directory an older version left open is tightened
//! at the next start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::support::{Api, sh, start, stop};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every entry under `dir` (not `dir` itself), directories first.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                pending.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Checks the whole data directory; returns how many blob files it saw.
fn assert_owner_only(data: &Path) -> usize {
    assert_eq!(mode(data), 0o700, "data directory");
    let mut blobs = 0;
    let mut wrong = Vec::new();
    for p in tree(data) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        if mode(&p) != want {
            wrong.push(format!("{} {:o}", p.display(), mode(&p)));
        }
        if p.is_file() && p.starts_with(data.join("blobs")) {
            blobs += 1;
        }
    }
    assert!(wrong.is_empty(), "not owner-only: {wrong:#?}");
    for f in [
        "certflow.db",
        "certflow.db-wal",
        "certflow.db-shm",
        "master.key",
    ] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    blobs
}

#[test]
fn data_directory_database_and_blobs_are_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The server inherits the test's umask: only a permissive one (the
    // common 022) shows that the modes are the server's own doing.
    let (ok, umask) = sh(tmp.path(), &["sh", "-c", "umask"]);
    let umask = u32::from_str_radix(umask.trim(), 8).unwrap_or(0o777);
    assert!(
        ok && umask & 0o044 == 0,
        "run this test with a umask that lets group/others read (e.g. 022), not {umask:o}"
    );
    // Blobs in files (not the default, the database): their modes are checked too.
    let local_blobs = [("CERTFLOW_BLOB__KIND", "local")];
    let server = start(&data, &local_blobs).expect("certflow starts");
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let (status, body) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "payments", "names": ["rest.example.com"] }),
    );
    assert_eq!(status, 201, "{body}");
    let blobs = assert_owner_only(&data);
    // The CA's keys and the certificate's version at least.
    assert!(blobs >= 3, "{blobs} blob files");
    stop(server);

    // An older version's data directory: everything 0644 / 0755.
    for p in tree(&data) {
        let m = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        data.join("master.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let server = start(&data, &local_blobs).expect("certflow starts on the old directory");
    assert_owner_only(&data);
    let log = server.log();
    assert!(
        log.contains("tightened the mode of a data file") && log.contains("certflow.db"),
        "{log}"
    );
}
