//! Shared test fixtures. Keys and CAs are cached per process because RSA-4096
//! generation takes seconds and most tests only need some key of a type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use certflow_core::KeyType;
use time::OffsetDateTime;

use crate::ca::{CaMaterial, create_ca};
use crate::keys::PrivateKey;

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(crate) fn key(kt: KeyType) -> PrivateKey {
    static KEYS: OnceLock<Mutex<HashMap<KeyType, PrivateKey>>> = OnceLock::new();
    let mut keys = KEYS.get_or_init(Default::default).lock().unwrap();
    keys.entry(kt)
        .or_insert_with(|| PrivateKey::generate(kt).unwrap())
        .clone()
}

/// "Acme" CA of this key type: a 10-year root and a 5-year intermediate.
pub(crate) fn ca(kt: KeyType) -> CaMaterial {
    static CAS: OnceLock<Mutex<HashMap<KeyType, CaMaterial>>> = OnceLock::new();
    let mut cas = CAS.get_or_init(Default::default).lock().unwrap();
    cas.entry(kt)
        .or_insert_with(|| create_ca("Acme", kt, now(), 3650, 1825).unwrap())
        .clone()
}

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/csr")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Runs openssl in `dir` and returns its stdout; fails the test on error.
pub(crate) fn openssl_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it (apt-get install openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn openssl(args: &[&str]) -> String {
    openssl_in(Path::new("."), args)
}
