//! The outside probe's parsing findings (issue 22), against the real binary
//! over HTTP with openssl's requests and certificates: CSRs that are not DER,
//! names IDNA would rewrite, and an import refused with 409 that must leave
//! no issuer behind (nor control bytes on the issuers list).

use std::path::Path;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::{Api, key_and_csr, require, sh, start, stop};

const CERTIFICATES: &str = "/console/api/v1/certificates";
const IMPORT: &str = "/console/api/v1/certificates/import";

fn ok(dir: &Path, args: &[&str]) {
    let (done, out) = sh(dir, args);
    assert!(done, "{args:?}: {out}");
}

/// The DER inside a one-block PEM text.
fn pem_der(text: &str) -> Vec<u8> {
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn csr_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
}

/// Where the DER encoding starting at `at` ends (definite lengths).
fn tlv_end(der: &[u8], at: usize) -> usize {
    let l = der[at + 1];
    if l < 0x80 {
        return at + 2 + usize::from(l);
    }
    let n = usize::from(l & 0x7f);
    let len = der[at + 2..at + 2 + n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    at + 2 + n + len
}

/// A CA made by openssl (`<stem>-ca.pem`, `<stem>-ca.key`, P-256) named `subject`,
/// and a leaf for `name` it signs (`<stem>-leaf.pem`): leaf then CA, as PEM.
fn openssl_bundle(dir: &Path, stem: &str, subject: &str, name: &str) -> String {
    let (ca_pem, ca_key, leaf) = (
        format!("{stem}-ca.pem"),
        format!("{stem}-ca.key"),
        format!("{stem}-leaf.pem"),
    );
    ok(
        dir,
        &[
            "openssl",
            "req",
            "-x509",
            "-utf8",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca_pem,
            "-days",
            "365",
            "-subj",
            subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    key_and_csr(dir, stem);
    std::fs::write(
        dir.join(format!("{stem}.ext")),
        format!("subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    ok(
        dir,
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            &format!("{stem}.csr"),
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "90",
            "-extfile",
            &format!("{stem}.ext"),
            "-out",
            &leaf,
        ],
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    format!("{}{}", read(&leaf), read(&ca_pem))
}

fn reasons(problem: &Value, field: &str) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errs| {
            errs.iter()
                .filter(|e| e["field"] == field)
                .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn probe_findings_are_refused_and_leave_nothing_behind() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let server = start(&work.join("data"), &[]).expect("start");
    let api = Api::new(&server, server.token_line.as_deref().unwrap());

    // CSRs: the probe's two tag changes of a request openssl made.
    let (_, csr) = key_and_csr(work, "probe.example.com");
    let der = pem_der(&csr);
    // SEQUENCE { CertificationRequestInfo, AlgorithmIdentifier, BIT STRING }
    let cri = if der[1] < 0x80 {
        2
    } else {
        2 + usize::from(der[1] & 0x7f)
    };
    let signature = tlv_end(&der, tlv_end(&der, cri));
    let mut outer = der.clone();
    outer[0] = 0x70;
    let mut bit_string = der.clone();
    bit_string[signature] = 0x83;
    for (what, bytes, needle) in [
        ("outer SEQUENCE tag 0x70", outer, "expected SEQUENCE"),
        (
            "signature BIT STRING tag 0x83",
            bit_string,
            "expected BIT STRING",
        ),
    ] {
        let (status, problem) = api.post(
            CERTIFICATES,
            json!({ "team": "web", "names": ["probe.example.com"], "csr": csr_pem(&bytes) }),
        );
        assert_eq!(status, 400, "{what}: {problem}");
        let why = reasons(&problem, "csr");
        assert!(
            why.iter()
                .any(|r| r.contains("not DER") && r.contains(needle)),
            "{what}: {problem}"
        );
    }

    // Names UTS 46 would rewrite, refused naming the character.
    for (name, needle) in [
        (
            "a\u{200b}.zw.example.com",
            "U+200B ZERO WIDTH SPACE at character 2",
        ),
        (
            "www\u{ff0e}example.com",
            "U+FF0E FULLWIDTH FULL STOP at character 4",
        ),
        ("p\u{430}ypal.example.com", "mixes scripts"),
    ] {
        let (status, problem) = api.post(CERTIFICATES, json!({ "team": "web", "names": [name] }));
        assert_eq!(status, 400, "{name:?}: {problem}");
        assert!(
            reasons(&problem, "names[0]")
                .iter()
                .any(|r| r.contains(needle)),
            "{name:?}: {problem}"
        );
    }
    let (status, issued) = api.post(CERTIFICATES, json!({ "team": "web", "csr": csr }));
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["names"], json!(["probe.example.com"]), "{issued}");

    // An import refused with 409 (name taken) records no external issuer.
    let first = openssl_bundle(work, "corp", "/CN=Corp CA", "a.example.com");
    let (status, body) = api.post(
        IMPORT,
        json!({ "team": "web", "pem": first, "name": "shared" }),
    );
    assert_eq!(status, 201, "{body}");
    let issuers = |api: &Api| -> Value { api.get("/console/api/v1/issuers").json().unwrap() };
    let before = issuers(&api);
    let evil = openssl_bundle(
        work,
        "evil",
        "/CN=Ev\u{1}il\u{1b}[31m\u{202e}CA",
        "b.example.com",
    );
    let (status, body) = api.post(
        IMPORT,
        json!({ "team": "web", "pem": evil.clone(), "name": "shared" }),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(issuers(&api), before, "a refused import leaves no issuer");

    // Imported under another name, that CA's name is listed escaped.
    let (status, body) = api.post(
        IMPORT,
        json!({ "team": "web", "pem": evil, "name": "evil" }),
    );
    assert_eq!(status, 201, "{body}");
    let after = issuers(&api);
    let names: Vec<&str> = after
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names.len(), before.as_array().unwrap().len() + 1, "{after}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(r"external: Ev\01il\1B[31m\E2\80\AECA")),
        "{names:?}"
    );
    assert!(
        !after.to_string().contains("\\u0001") && !after.to_string().contains('\u{202e}'),
        "{after}"
    );
    stop(server);
}
