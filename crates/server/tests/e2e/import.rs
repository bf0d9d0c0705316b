//! Importing certificates through the CLI: a CA made with openssl becomes a
//! certflow issuer; leaves openssl signs with it (SEC 1 key, PKCS#12 from
//! `openssl pkcs12 -export`) are imported with `certflow cert import`.

use std::path::Path;

use serde_json::Value;

use crate::support::{cli, require, sh, start, stop};

fn ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out) = sh(dir, args);
    assert!(ok, "{args:?}: {out}");
    out
}

/// A CA made by openssl: ca.pem, ca.key (P-256).
fn openssl_ca(dir: &Path) {
    ok(
        dir,
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "365",
            "-subj",
            "/CN=Legacy CA/O=Corp",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A P-256 key (SEC 1, `EC PRIVATE KEY`) and a leaf for `name` signed by ca.pem/ca.key.
fn openssl_leaf(dir: &Path, stem: &str, name: &str) {
    ok(
        dir,
        &[
            "openssl",
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &format!("{stem}.key"),
        ],
    );
    ok(
        dir,
        &[
            "openssl",
            "req",
            "-new",
            "-key",
            &format!("{stem}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &format!("{stem}.csr"),
        ],
    );
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
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "90",
            "-extfile",
            &format!("{stem}.ext"),
            "-out",
            &format!("{stem}.pem"),
        ],
    );
}

#[test]
fn cli_imports_openssl_pem_and_pkcs12_and_refuses_the_duplicate() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    openssl_ca(work);
    let server = start(&work.join("data"), &[]).expect("start");
    let token = server.token_line.clone().unwrap();
    let path = |f: &str| work.join(f).to_str().unwrap().to_owned();
    let (done, out) = cli(
        &server,
        &token,
        &[
            "ca",
            "import",
            "--name",
            "legacy",
            "--cert",
            &path("ca.pem"),
            "--key",
            &path("ca.key"),
        ],
    );
    assert!(done, "{out}");

    // PEM certificate with a separate SEC 1 key file.
    openssl_leaf(work, "web", "web.example.com");
    let (done, out) = cli(
        &server,
        &token,
        &[
            "cert",
            "import",
            "--team",
            "corp",
            "--file",
            &path("web.pem"),
            "--key",
            &path("web.key"),
            "--output",
            "json",
        ],
    );
    assert!(done, "{out}");
    let cert: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cert["name"], "web.example.com");
    assert_eq!(cert["key_source"], "server");
    assert_eq!(cert["managed"], false, "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let web_id = cert["id"].as_str().unwrap().to_owned();

    // The same certificate again: refused (409), nothing new.
    let (done, out) = cli(
        &server,
        &token,
        &[
            "cert",
            "import",
            "--team",
            "corp",
            "--file",
            &path("web.pem"),
        ],
    );
    assert!(!done, "{out}");
    assert!(
        out.contains("409") || out.contains("already known"),
        "{out}"
    );

    // A PKCS#12 file as OpenSSL 3 writes it by default, taken over for renewal.
    openssl_leaf(work, "mail", "mail.example.com");
    ok(
        work,
        &[
            "openssl",
            "pkcs12",
            "-export",
            "-in",
            "mail.pem",
            "-inkey",
            "mail.key",
            "-certfile",
            "ca.pem",
            "-passout",
            "pass:p12-secret",
            "-out",
            "mail.p12",
        ],
    );
    std::fs::write(work.join("p12.pass"), "p12-secret\n").unwrap();
    let (done, out) = cli(
        &server,
        &token,
        &[
            "cert",
            "import",
            "--team",
            "corp",
            "--pkcs12",
            &path("mail.p12"),
            "--password-file",
            &path("p12.pass"),
            "--manage",
            "--output",
            "json",
        ],
    );
    assert!(done, "{out}");
    let cert: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cert["name"], "mail.example.com");
    assert_eq!(cert["key_source"], "server");
    assert_eq!(cert["managed"], true, "{out}");
    let (done, out) = cli(
        &server,
        &token,
        &["cert", "renew", cert["id"].as_str().unwrap()],
    );
    assert!(done, "{out}");

    // The inventory-only one: not renewed until taken over, then renewed.
    let (done, out) = cli(&server, &token, &["cert", "renew", &web_id]);
    assert!(!done && out.contains("inventory only"), "{out}");
    let (done, out) = cli(&server, &token, &["cert", "list"]);
    assert!(done && out.contains("(inventory)"), "{out}");
    let (done, out) = cli(
        &server,
        &token,
        &[
            "cert", "manage", &web_id, "--issuer", "legacy", "--output", "json",
        ],
    );
    assert!(done, "{out}");
    let cert: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cert["managed"], true, "{out}");
    let (done, out) = cli(&server, &token, &["cert", "manage", &web_id]);
    assert!(!done && out.contains("409"), "{out}");
    let (done, out) = cli(&server, &token, &["cert", "renew", &web_id]);
    assert!(done, "{out}");
    stop(server);
}

/// DER TLV with a definite length (X.690 §8.1.3).
fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(body);
    out
}

/// The file of issue 22, written from RFC 7292 §4 and RFC 8018 A.2/A.4/B.2.5
/// rather than by the code under test: a PFX without MAC whose
/// authenticated safe holds `sections` encryptedData sections, each PBES2
/// with PBKDF2-HMAC-SHA256 at 1,000,000 iterations and AES-256-CBC over
/// one block. Deriving all their keys would cost ~0.3 s each.
fn derivation_bomb(sections: usize) -> Vec<u8> {
    const ID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    const ID_ENCRYPTED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x06];
    const PBES2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d];
    const PBKDF2: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c];
    const HMAC_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09];
    const AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
    let seq = |parts: &[Vec<u8>]| tlv(0x30, &parts.concat());
    let oid = |o: &[u8]| tlv(0x06, o);
    let pbkdf2_params = seq(&[
        tlv(0x04, &[0x5a; 8]),
        tlv(0x02, &[0x0f, 0x42, 0x40]), // 1,000,000
        seq(&[oid(HMAC_SHA256), tlv(0x05, &[])]),
    ]);
    let algorithm = seq(&[
        oid(PBES2),
        seq(&[
            seq(&[oid(PBKDF2), pbkdf2_params]),
            seq(&[oid(AES256_CBC), tlv(0x04, &[0xa5; 16])]),
        ]),
    ]);
    let encrypted_data = seq(&[
        tlv(0x02, &[0]),
        // encryptedContent is [0] IMPLICIT OCTET STRING.
        seq(&[oid(ID_DATA), algorithm, tlv(0x80, &[0x3c; 16])]),
    ]);
    let section = seq(&[oid(ID_ENCRYPTED_DATA), tlv(0xa0, &encrypted_data)]);
    let auth_safe = seq(&vec![section; sections]);
    seq(&[
        tlv(0x02, &[3]),
        seq(&[oid(ID_DATA), tlv(0xa0, &tlv(0x04, &auth_safe))]),
    ])
}

/// Issue 22: CPU-heavy requests run on the server's bounded CPU pool, not on
/// its async workers. The heaviest PKCS#12 file certflow accepts (`openssl
/// pkcs12 -export -iter 1000000`: three derivations of 1,000,000
/// iterations, the whole budget) and RSA-4096 key generations, all at once,
/// leave `/healthz` answering fast; the over-budget file is refused with a
/// 400 problem from its structure alone, before any key is derived.
#[test]
fn cpu_heavy_requests_leave_healthz_fast_and_the_over_budget_pkcs12_is_refused_unread() {
    use std::time::{Duration, Instant};

    use base64::Engine as _;
    use serde_json::json;

    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    openssl_ca(work);
    const IMPORTS: usize = 4;
    let mut files = Vec::new();
    for i in 0..IMPORTS {
        let stem = format!("heavy{i}");
        openssl_leaf(work, &stem, &format!("{stem}.example.com"));
        ok(
            work,
            &[
                "openssl",
                "pkcs12",
                "-export",
                "-inkey",
                &format!("{stem}.key"),
                "-in",
                &format!("{stem}.pem"),
                "-certfile",
                "ca.pem",
                "-iter",
                "1000000",
                "-passout",
                "pass:s3cret",
                "-out",
                &format!("{stem}.p12"),
            ],
        );
        files.push(std::fs::read(work.join(format!("{stem}.p12"))).unwrap());
    }
    let info = ok(
        work,
        &[
            "openssl",
            "pkcs12",
            "-info",
            "-noout",
            "-passin",
            "pass:s3cret",
            "-in",
            "heavy0.p12",
        ],
    );
    assert!(info.contains("MAC: sha256, Iteration 1000000"), "{info}");
    assert_eq!(
        info.matches("Iteration 1000000, PRF hmacWithSHA256")
            .count(),
        2,
        "{info}"
    );

    // OpenSSL reads the bomb's structure as meant (a one-section copy: it
    // then fails to decrypt the made-up block).
    std::fs::write(work.join("one.p12"), derivation_bomb(1)).unwrap();
    let (_, one) = sh(
        work,
        &[
            "openssl",
            "pkcs12",
            "-info",
            "-noout",
            "-nomacver",
            "-passin",
            "pass:x",
            "-in",
            "one.p12",
        ],
    );
    assert!(
        one.contains("PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC, Iteration 1000000, PRF hmacWithSHA256"),
        "{one}"
    );
    let bomb = derivation_bomb(255);
    let b64 = base64::engine::general_purpose::STANDARD;
    let bomb_b64 = b64.encode(&bomb);
    assert!(bomb_b64.len() <= 48 * 1024, "{}", bomb_b64.len());

    let server = start(&work.join("data"), &[]).expect("start");
    let api = crate::support::Api::new(&server, &server.token_line.clone().unwrap());
    let import = |der: &[u8]| json!({ "team": "corp", "pkcs12_base64": b64.encode(der), "password": "s3cret" });

    // Alone: what the heaviest accepted file costs.
    let t = Instant::now();
    let (status, body) = api.post("/console/api/v1/certificates/import", import(&files[0]));
    let accepted = t.elapsed();
    assert_eq!(status, 201, "{body}");

    // The bomb: refused by its structure, naming the cost and the limit.
    let t = Instant::now();
    let r = api
        .http
        .post(format!("{}/console/api/v1/certificates/import", server.url))
        .bearer_auth(&api.token)
        .json(&json!({ "team": "corp", "pkcs12_base64": bomb_b64, "password": "s3cret" }))
        .send()
        .unwrap();
    let refused = t.elapsed();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "pkcs12_base64: PKCS#12 key derivation cost exceeds the limit: 255 \
                         derivations (255 encrypted sections: 1000000 iterations each), \
                         255000000 iterations in all; certflow derives at most 16 keys per file, \
                         of at most 1000000 iterations each and 3000000 in all"
        ),
        "{problem}"
    );
    assert!(
        refused * 10 < accepted,
        "the bomb took {refused:?} to refuse; one accepted file takes {accepted:?}: was anything derived?"
    );

    // Everything at once: the other heavy imports and RSA-4096 generations.
    let began = Instant::now();
    let mut jobs = Vec::new();
    for der in &files[1..] {
        let (http, url, token, body) = (
            api.http.clone(),
            server.url.clone(),
            api.token.clone(),
            import(der),
        );
        jobs.push(std::thread::spawn(move || {
            let r = http
                .post(format!("{url}/console/api/v1/certificates/import"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .unwrap();
            (r.status().as_u16(), r.text().unwrap())
        }));
    }
    for i in 0..4 {
        let (http, url, token) = (api.http.clone(), server.url.clone(), api.token.clone());
        jobs.push(std::thread::spawn(move || {
            let r = http
                .post(format!("{url}/console/api/v1/certificates"))
                .bearer_auth(token)
                .json(&json!({ "team": "corp", "names": [format!("rsa{i}.example.com")], "key_type": "rsa-4096" }))
                .send()
                .unwrap();
            (r.status().as_u16(), r.text().unwrap())
        }));
    }
    let probe = reqwest::blocking::Client::new();
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    while jobs.iter().any(|j| !j.is_finished()) {
        let t = Instant::now();
        let r = probe.get(format!("{}/healthz", server.url)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        slowest = slowest.max(t.elapsed());
        probes += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let busy = began.elapsed();
    for j in jobs {
        let (status, body) = j.join().unwrap();
        assert_eq!(status, 201, "{body}");
    }
    // Machines are noisy (tests run in parallel): a generous absolute bound,
    // and well under the work's own duration. Before the pool, two heavy
    // imports alone held /healthz for seconds.
    assert!(
        probes >= 10,
        "{probes} probes in {busy:?}: the work was too short to tell"
    );
    assert!(
        slowest < Duration::from_millis(500) && slowest * 4 < busy,
        "/healthz took up to {slowest:?} while the work ran for {busy:?} ({probes} probes)"
    );
    eprintln!(
        "heavy import alone {accepted:?}, bomb refused in {refused:?}; {} imports + 4 RSA-4096 \
         in {busy:?}, /healthz at worst {slowest:?} over {probes} probes",
        IMPORTS - 1
    );
    stop(server);
}
