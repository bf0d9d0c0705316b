//! Entry points over certflow-pki: every input is untrusted bytes from a
//! request body; each returns normally (an error is a fine outcome), a panic
//! or a hang is the bug.

/// CSR upload (PEM or DER: console API, agent enrolment, ACME finalize):
/// `parse_csr` and its strict DER pass (der_strict.rs).
pub fn csr(data: &[u8]) {
    let _ = certflow_pki::parse_csr("csr", data);
}

/// The unauthenticated OCSP endpoint's hand-written DER reader (ocsp.rs,
/// der_strict.rs).
pub fn ocsp_request(data: &[u8]) {
    let _ = certflow_pki::parse_ocsp_request(data);
}

/// Password of the PKCS#12 seed files.
pub const PKCS12_PASSWORD: &str = "fuzz";

/// PKCS#12 import (`read_pkcs12_within`). The iteration limits are lowered
/// so one input costs milliseconds, not a second; the limit checks run
/// unchanged, only their thresholds differ.
pub fn pkcs12(data: &[u8]) {
    let limits = certflow_pki::Pkcs12Limits {
        max_iterations: 4096,
        max_total_iterations: 16_384,
        max_derivations: 16,
    };
    let _ = certflow_pki::read_pkcs12_within("pkcs12_base64", data, PKCS12_PASSWORD, limits);
}

/// Import of a PEM bundle, what the import use case does with it before any
/// store access: the certificates (strict DER), the private key when the
/// bundle holds one, the leaf's facts, whether the key matches the leaf and
/// whether the next certificate signed it.
pub fn import_pem(data: &[u8]) {
    let Ok(pem) = std::str::from_utf8(data) else {
        return;
    };
    let certs = certflow_pki::parse_pem_certs("pem", pem);
    let key = if pem.contains("PRIVATE KEY-----") {
        certflow_pki::PrivateKey::from_pem("pem", pem).ok()
    } else {
        None
    };
    let Ok(certs) = certs else {
        return;
    };
    for der in &certs {
        let _ = certflow_pki::inspect(der);
    }
    if let (Some(leaf), Some(key)) = (certs.first(), &key) {
        let _ = certflow_pki::key_matches_cert(key, leaf);
    }
    if let [leaf, issuer, ..] = certs.as_slice() {
        let _ = certflow_pki::is_signed_by(leaf, issuer);
    }
}
