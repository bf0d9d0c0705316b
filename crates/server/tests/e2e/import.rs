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
    ok(
        work,
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
