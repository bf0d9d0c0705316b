//! The PKCS#11 backend against a real token: SoftHSM2 (Debian `softhsm2`),
//! checked with OpenSC's `pkcs11-tool`. SoftHSM reads its configuration
//! (`SOFTHSM2_CONF`) once per process, so the test re-runs itself in a child
//! process with a fresh token directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
    VerificationAlgorithm,
};
use certflow_core::ca_keys::{CaKeyBackend, CaKeyRef, CaKeyRole, CaKeyStore};
use certflow_core::{DomainError, KeyType};
use certflow_keystore::{Pkcs11Keys, Pkcs11Settings, read_pin_file};
use certflow_pki::CaPublicKey;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const HINT: &str = "apt-get install softhsm2 opensc (scripts/peers.sh does it)";
const TOKEN: &str = "certflow-test";
const PIN: &str = "1234";

/// A SoftHSM configuration and one initialised token, in `dir`.
fn init_token(dir: &Path) -> PathBuf {
    assert!(Path::new(MODULE).exists(), "{MODULE} is missing: {HINT}");
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--pin",
            PIN,
            "--so-pin",
            "5678",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap_or_else(|e| panic!("softhsm2-util: {e}: {HINT}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    conf
}

fn settings(label: &str, pin: &str) -> Pkcs11Settings {
    Pkcs11Settings {
        module: MODULE.into(),
        token_label: label.into(),
        pin: pin.to_owned().into(),
        sessions: 4,
    }
}

fn verification(kt: KeyType) -> &'static dyn VerificationAlgorithm {
    match kt {
        KeyType::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
        KeyType::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
        _ => &RSA_PKCS1_2048_8192_SHA256,
    }
}

/// Signs `message`'s digest in the token and verifies it over the message.
async fn sign_and_verify(keys: &Pkcs11Keys, key: &CaKeyRef, kt: KeyType, public: &CaPublicKey) {
    let message = b"tbsCertificate stand-in";
    let sig = keys.sign(key, kt, message).await.unwrap();
    let spki = x509_parser_bits(public.spki_der());
    UnparsedPublicKey::new(verification(kt), &spki)
        .verify(message, &sig)
        .unwrap_or_else(|_| panic!("{kt:?}: the token's signature does not verify"));
}

/// The subjectPublicKey bits of an SPKI (the last BIT STRING's content after its unused-bits octet).
fn x509_parser_bits(spki: &[u8]) -> Vec<u8> {
    // SEQUENCE { SEQUENCE alg, BIT STRING } — walk the two headers.
    fn header(d: &[u8]) -> (usize, usize) {
        let l = d[1];
        if l < 0x80 {
            (2, usize::from(l))
        } else {
            let n = usize::from(l & 0x7f);
            (
                2 + n,
                d[2..2 + n]
                    .iter()
                    .fold(0, |a, b| (a << 8) | usize::from(*b)),
            )
        }
    }
    let (h, _) = header(spki);
    let body = &spki[h..];
    let (ah, al) = header(body);
    let bits = &body[ah + al..];
    let (bh, bl) = header(bits);
    bits[bh + 1..bh + bl].to_vec()
}

fn token_dir(conf: &Path) -> PathBuf {
    conf.parent().unwrap().join("tokens")
}

fn unavailable(e: &DomainError) -> String {
    match e {
        DomainError::Unavailable { backend, reason } => {
            assert_eq!(*backend, CaKeyBackend::Pkcs11.display_name());
            reason.clone()
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// What the child process checks, with SOFTHSM2_CONF pointing at a fresh token.
async fn in_child(conf: &Path) {
    // A PIN file readable by others is refused; mode 600 is read, newline trimmed.
    let pin_file = conf.parent().unwrap().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = read_pin_file(&pin_file).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(read_pin_file(&pin_file).unwrap().expose_secret(), PIN);

    // Wrong label, wrong PIN: refused at open, naming why.
    let err = Pkcs11Keys::open(settings("no-such-token", PIN))
        .await
        .unwrap_err();
    assert!(unavailable(&err).contains("no initialised token"), "{err}");
    let err = Pkcs11Keys::open(settings(TOKEN, "9999")).await.unwrap_err();
    assert!(unavailable(&err).contains("PinIncorrect"), "{err}");

    let keys = Arc::new(Pkcs11Keys::open(settings(TOKEN, PIN)).await.unwrap());
    let mut made = Vec::new();
    for (i, kt) in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048]
        .into_iter()
        .enumerate()
    {
        let label = format!("certflow-test-{i}");
        let (key, spki) = keys.generate(CaKeyRole::Issuing, &label, kt).await.unwrap();
        assert_eq!(
            key,
            CaKeyRef::Pkcs11 {
                token: TOKEN.into(),
                label: label.clone()
            }
        );
        let public = CaPublicKey::from_spki_der("spki", &spki).unwrap();
        assert_eq!(public.key_type(), kt);
        assert_eq!(keys.public_key(&key).await.unwrap(), spki);
        sign_and_verify(&keys, &key, kt, &public).await;
        made.push((key, kt, public));
    }
    assert!(
        keys.generate(CaKeyRole::Root, "ed", KeyType::Ed25519)
            .await
            .is_err()
    );

    // OpenSC's view: the private keys are sensitive and never extractable.
    let out = Command::new("pkcs11-tool")
        .args([
            "--module",
            MODULE,
            "--token-label",
            TOKEN,
            "--login",
            "--pin",
            PIN,
            "--list-objects",
            "--type",
            "privkey",
        ])
        .output()
        .unwrap_or_else(|e| panic!("pkcs11-tool: {e}: {HINT}"));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listing}");
    let blocks: Vec<&str> = listing.split("Private Key Object").skip(1).collect();
    assert_eq!(blocks.len(), 3, "{listing}");
    for block in blocks {
        assert!(
            block.contains("never extractable") && block.contains("sensitive"),
            "{block}"
        );
        // A CA key only signs.
        assert!(block.contains("Usage:      sign"), "{block}");
        assert!(
            !block.contains("decrypt") && !block.contains("unwrap"),
            "{block}"
        );
        assert!(block.contains("certflow-test-"), "{block}");
    }

    // Many signatures at once share the four pooled sessions.
    let (key, kt, public) = made[0].clone();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (keys, key, public) = (keys.clone(), key.clone(), public.clone());
        tasks.push(tokio::spawn(async move {
            sign_and_verify(&keys, &key, kt, &public).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // The token goes away while the server runs (its directory moved away:
    // chmod does not stop root): signing fails as unavailable, naming the
    // token; back in place, the same instance signs again without a restart.
    let dir = token_dir(conf);
    let away = dir.with_extension("away");
    std::fs::rename(&dir, &away).unwrap();
    let err = keys.sign(&key, kt, &[0u8; 32]).await.unwrap_err();
    let reason = unavailable(&err);
    assert!(reason.contains(TOKEN), "{reason}");
    let err = keys.public_key(&key).await.unwrap_err();
    unavailable(&err);
    std::fs::rename(&away, &dir).unwrap();
    sign_and_verify(&keys, &key, kt, &public).await;

    // A key nobody uses is removed; afterwards it is missing, which reads
    // as unavailable (the token could be a stand-in being restored).
    let (unused, _) = keys
        .generate(
            CaKeyRole::Issuing,
            "certflow-test-unused",
            KeyType::EcdsaP256,
        )
        .await
        .unwrap();
    keys.discard(&unused).await.unwrap();
    let reason = unavailable(&keys.public_key(&unused).await.unwrap_err());
    assert!(
        reason.contains("no CKO_PRIVATE_KEY labelled 'certflow-test-unused'"),
        "{reason}"
    );
    // A key of another token is refused, naming both.
    let foreign = CaKeyRef::Pkcs11 {
        token: "other".into(),
        label: "x".into(),
    };
    let reason = unavailable(&keys.sign(&foreign, kt, &[0; 32]).await.unwrap_err());
    assert!(
        reason.contains("other") && reason.contains(TOKEN),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softhsm_token_generates_signs_and_comes_back() {
    if let Ok(conf) = std::env::var("CERTFLOW_TEST_SOFTHSM2_CONF") {
        in_child(Path::new(&conf)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = init_token(dir.path());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "softhsm_token_generates_signs_and_comes_back",
            "--nocapture",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .env("CERTFLOW_TEST_SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}
