//! Revocation end to end: certflow's CRL and OCSP responder checked by
//! openssl (`crl -verify`, `verify -crl_check`, `ocsp`), including a serial
//! certflow never issued, a GET request (RFC 6960 appendix A.1) and garbage.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{Api, cli, require, sh, start};

fn ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out) = sh(dir, args);
    assert!(ok, "{args:?}: {out}");
    out
}

/// The CRL Number openssl prints for a PEM CRL.
fn crl_number(dir: &Path, file: &str) -> u64 {
    let out = ok(
        dir,
        &["openssl", "crl", "-in", file, "-noout", "-crlnumber"],
    );
    let hex = out.trim().trim_start_matches("crlNumber=0x");
    u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("crl number in {out}"))
}

#[test]
fn revoked_certificates_are_on_the_crl_and_answered_by_ocsp() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().to_path_buf();
    // A fixed port, so that the default public URL (written into the
    // certificates' CRL DP and AIA) is where this server really answers.
    let listen = format!("127.0.0.1:{}", certflow_testkit::free_port());
    let server = start(&work.join("data"), &[("CERTFLOW_SERVER__LISTEN", &listen)]).unwrap();
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let issuer = issuers[0]["id"].as_str().unwrap().to_owned();
    std::fs::write(
        work.join("root.pem"),
        issuers[0]["chain_pem"].as_str().unwrap(),
    )
    .unwrap();
    let intermediate = issuers[0]["issuing_cert_pem"].as_str().unwrap();
    std::fs::write(work.join("intermediate.pem"), intermediate).unwrap();
    std::fs::write(
        work.join("chain.pem"),
        format!(
            "{}{intermediate}",
            issuers[0]["chain_pem"].as_str().unwrap()
        ),
    )
    .unwrap();
    let pki = format!("{}/pki/{issuer}", server.url);

    let mut ids = Vec::new();
    for name in ["good", "bad", "old"] {
        let (status, c) = api.post(
            "/console/api/v1/certificates",
            json!({ "team": "payments", "names": [format!("{name}.example.com")] }),
        );
        assert_eq!(status, 201, "{c}");
        let id = c["id"].as_str().unwrap().to_owned();
        std::fs::write(
            work.join(format!("{name}.pem")),
            api.download(&id, "certificate"),
        )
        .unwrap();
        ids.push(id);
    }
    // The URLs relying parties follow are in the certificate.
    let uri = ok(
        &work,
        &["openssl", "x509", "-in", "good.pem", "-noout", "-ocsp_uri"],
    );
    assert_eq!(uri.trim(), format!("http://{listen}/pki/{issuer}/ocsp"));
    let ext = ok(
        &work,
        &[
            "openssl",
            "x509",
            "-in",
            "good.pem",
            "-noout",
            "-ext",
            "crlDistributionPoints,authorityInfoAccess",
        ],
    );
    assert!(
        ext.contains(&format!("URI:http://{listen}/pki/{issuer}/crl")),
        "{ext}"
    );
    assert!(
        ext.contains(&format!(
            "CA Issuers - URI:http://{listen}/pki/{issuer}/ca.crt"
        )),
        "{ext}"
    );

    // The CRL exists before any revocation (signed on first fetch or by the scheduler).
    let first = reqwest::blocking::get(format!("{pki}/crl")).unwrap();
    assert_eq!(first.status(), 200);
    std::fs::write(work.join("crl0.der"), first.bytes().unwrap()).unwrap();
    ok(
        &work,
        &[
            "openssl", "crl", "-inform", "DER", "-in", "crl0.der", "-out", "crl0.pem",
        ],
    );
    let n0 = crl_number(&work, "crl0.pem");

    // Revoke through the CLI with keyCompromise, and another through the API.
    let (done, out) = cli(
        &server,
        &token,
        &["cert", "revoke", &ids[1], "--reason", "keyCompromise"],
    );
    assert!(done, "{out}");
    let (status, r) = api.post(
        &format!("/console/api/v1/certificates/{}/revoke", ids[2]),
        json!({ "reason": "superseded" }),
    );
    assert_eq!(status, 200, "{r}");

    // The stored CRL: cache headers, 304 on its ETag, a higher number.
    let resp = reqwest::blocking::get(format!("{pki}/crl")).unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/pkix-crl");
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(h.contains_key("last-modified"), "{h:?}");
    let cc = h["cache-control"].to_str().unwrap();
    assert!(cc.starts_with("public, max-age="), "{cc}");
    std::fs::write(work.join("crl.der"), resp.bytes().unwrap()).unwrap();
    let again = reqwest::blocking::Client::new()
        .get(format!("{pki}/crl"))
        .header("If-None-Match", &etag)
        .send()
        .unwrap();
    assert_eq!(again.status(), 304);
    ok(
        &work,
        &[
            "openssl", "crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem",
        ],
    );
    assert!(
        crl_number(&work, "crl.pem") >= n0 + 2,
        "one new CRL per revocation"
    );

    // openssl verifies the CRL against the CA and lists the serial with its reason.
    let serial = |file: &str| {
        let out = ok(
            &work,
            &["openssl", "x509", "-in", file, "-noout", "-serial"],
        );
        out.trim().trim_start_matches("serial=").to_owned()
    };
    let text = ok(
        &work,
        &[
            "openssl",
            "crl",
            "-in",
            "crl.pem",
            "-CAfile",
            "chain.pem",
            "-verify",
            "-noout",
            "-text",
        ],
    );
    assert!(text.contains("verify OK"), "{text}");
    let bad_serial = serial("bad.pem");
    let at = text
        .find(&format!("Serial Number: {bad_serial}"))
        .unwrap_or_else(|| panic!("{bad_serial} not in {text}"));
    let entry = &text[at..];
    let entry = &entry[..entry[1..]
        .find("Serial Number")
        .map_or(entry.len(), |i| i + 1)];
    assert!(entry.contains("Key Compromise"), "{entry}");
    assert!(
        text.contains(&format!("Serial Number: {}", serial("old.pem"))),
        "{text}"
    );
    assert!(!text.contains(&serial("good.pem")), "{text}");

    // openssl verify with the CRL: the revoked certificate fails, the good one passes.
    let verify = |file: &str| {
        sh(
            &work,
            &[
                "openssl",
                "verify",
                "-crl_check",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "intermediate.pem",
                "-CRLfile",
                "crl.pem",
                file,
            ],
        )
    };
    let (passed, out) = verify("bad.pem");
    assert!(!passed && out.contains("certificate revoked"), "{out}");
    let (passed, out) = verify("good.pem");
    assert!(passed, "{out}");

    // OCSP by POST: good, revoked (reason and time), unknown.
    let url = format!("{pki}/ocsp");
    let ocsp = |issuer: &str, cert: &str| {
        sh(
            &work,
            &[
                "openssl",
                "ocsp",
                "-issuer",
                issuer,
                "-cert",
                cert,
                "-url",
                &url,
                "-CAfile",
                "chain.pem",
            ],
        )
    };
    let (_, out) = ocsp("intermediate.pem", "good.pem");
    assert!(
        out.contains("Response verify OK") && out.contains("good.pem: good"),
        "{out}"
    );
    assert!(
        out.contains("This Update:") && out.contains("Next Update:"),
        "{out}"
    );
    let (_, out) = ocsp("intermediate.pem", "bad.pem");
    assert!(
        out.contains("Response verify OK") && out.contains("bad.pem: revoked"),
        "{out}"
    );
    assert!(
        out.contains("Reason: keyCompromise") && out.contains("Revocation Time:"),
        "{out}"
    );

    // A certificate from another CA with a serial certflow never issued:
    // the other CA has certflow's issuing CA's exact subject (copied by
    // -x509toreq) and its own key, so the CertID openssl builds under
    // certflow's issuer (name hash of the certificate's issuer, key hash of
    // -issuer) is certflow's, with a foreign serial: unknown. Asked under the
    // other CA itself (another key hash): unauthorized, certflow does not
    // answer for that CA.
    ok(
        &work,
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "other.key",
        ],
    );
    ok(
        &work,
        &[
            "openssl",
            "x509",
            "-x509toreq",
            "-in",
            "intermediate.pem",
            "-signkey",
            "other.key",
            "-out",
            "other.csr",
        ],
    );
    std::fs::write(
        work.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    ok(
        &work,
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            "other.csr",
            "-signkey",
            "other.key",
            "-days",
            "2",
            "-extfile",
            "ca.ext",
            "-out",
            "other-ca.pem",
        ],
    );
    ok(
        &work,
        &[
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "stranger.key",
            "-out",
            "stranger.csr",
            "-subj",
            "/CN=stranger.example.com",
        ],
    );
    ok(
        &work,
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            "stranger.csr",
            "-CA",
            "other-ca.pem",
            "-CAkey",
            "other.key",
            "-set_serial",
            "0x0123456789abcdef42",
            "-days",
            "1",
            "-out",
            "stranger.pem",
        ],
    );
    let (_, out) = sh(
        &work,
        &[
            "openssl",
            "x509",
            "-in",
            "stranger.pem",
            "-noout",
            "-issuer",
        ],
    );
    let (_, mine) = sh(
        &work,
        &[
            "openssl",
            "x509",
            "-in",
            "intermediate.pem",
            "-noout",
            "-subject",
        ],
    );
    assert_eq!(
        out.trim_start_matches("issuer="),
        mine.trim_start_matches("subject=")
    );
    let (_, out) = ocsp("intermediate.pem", "stranger.pem");
    assert!(
        out.contains("Response verify OK") && out.contains("stranger.pem: unknown"),
        "{out}"
    );
    let (_, out) = ocsp("other-ca.pem", "stranger.pem");
    assert!(out.contains("unauthorized (6)"), "{out}");

    // The nonce is echoed (openssl checks it unless -no_nonce; a missing
    // echo prints "WARNING: no nonce in response").
    let (_, out) = ocsp("intermediate.pem", "good.pem");
    assert!(!out.contains("nonce"), "{out}");

    // GET: the request DER, base64, URL-encoded, in the path.
    ok(
        &work,
        &[
            "openssl",
            "ocsp",
            "-issuer",
            "intermediate.pem",
            "-cert",
            "good.pem",
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(work.join("req.der")).unwrap());
    let encoded = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let resp = reqwest::blocking::get(format!("{url}/{encoded}")).unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/ocsp-response");
    let cc = resp.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cc.starts_with("public, max-age="), "{cc}");
    std::fs::write(work.join("get.der"), resp.bytes().unwrap()).unwrap();
    let (_, out) = sh(
        &work,
        &[
            "openssl",
            "ocsp",
            "-respin",
            "get.der",
            "-issuer",
            "intermediate.pem",
            "-cert",
            "good.pem",
            "-CAfile",
            "chain.pem",
        ],
    );
    assert!(
        out.contains("Response verify OK") && out.contains("good.pem: good"),
        "{out}"
    );

    // Garbage gets malformedRequest (in a 200, as OCSP errors are), not a 500.
    let resp = reqwest::blocking::Client::new()
        .post(&url)
        .header("content-type", "application/ocsp-request")
        .body("this is not DER")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().unwrap();
    assert_eq!(body.as_ref(), &[0x30, 0x03, 0x0a, 0x01, 0x01]);
    std::fs::write(work.join("garbage.der"), &body).unwrap();
    let (_, out) = sh(
        &work,
        &["openssl", "ocsp", "-respin", "garbage.der", "-resp_text"],
    );
    assert!(out.contains("malformedrequest (1)"), "{out}");
    let resp = reqwest::blocking::get(format!("{url}/not-base64!")).unwrap();
    assert_eq!(
        resp.bytes().unwrap().as_ref(),
        &[0x30, 0x03, 0x0a, 0x01, 0x01]
    );
    // An issuer certflow does not have: unauthorized.
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/pki/{}/ocsp", server.url, uuid_zero()))
        .body(std::fs::read(work.join("req.der")).unwrap())
        .send()
        .unwrap();
    assert_eq!(
        resp.bytes().unwrap().as_ref(),
        &[0x30, 0x03, 0x0a, 0x01, 0x06]
    );
}

fn uuid_zero() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}
