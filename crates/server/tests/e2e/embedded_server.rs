//! The server on its embedded defaults (SQLite, local blobs, a generated
//! master key): what it issues verified by openssl and pkilint (every key
//! type, both profiles, a CSR, PKCS#12, the CRL), the CLI, a restart that
//! keeps CA, certificates and keys, the master key required; an imported CA
//! that issues; bad configuration refused with the key named; and the
//! `healthcheck` command.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::peers::pkilint_errors;
use crate::support::{Api, BIN, cli, require, sh, start, stop};

#[test]
fn embedded_server_issues_verifiable_certificates_and_survives_restart() {
    require("openssl", "apt-get install openssl");
    require(
        "lint_pkix_cert",
        "pip install pkilint (scripts/peers.sh does it)",
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let work: PathBuf = tmp.path().to_path_buf();

    // A public base URL: the CA/B lint refuses loopback AIA/CRL URLs as internal names.
    // And an issuance policy from the environment, for team "capped" only.
    let public = [
        ("CERTFLOW_SERVER__PUBLIC_URL", "http://pki.example.com:8080"),
        ("CERTFLOW_POLICY__TEAMS__CAPPED__MAX_NAMES", "1"),
    ];
    let server = start(&data, &public).expect("first start");
    let token = server
        .token_line
        .clone()
        .expect("first start prints the bootstrap token");
    let api = Api::new(&server, &token);
    let health: Value = reqwest::blocking::get(format!("{}/readyz", server.url))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    let issuer = &issuers[0];
    let chain = issuer["chain_pem"].as_str().unwrap();
    std::fs::write(work.join("root.pem"), chain).unwrap();
    std::fs::write(
        work.join("intermediate.pem"),
        issuer["issuing_cert_pem"].as_str().unwrap(),
    )
    .unwrap();
    for ca in ["root.pem", "intermediate.pem"] {
        let errs = pkilint_errors("lint_pkix_cert", &work.join(ca));
        assert!(errs.is_empty(), "{ca}: {errs:?}");
    }

    // One certificate of every key type, server-generated keys.
    let mut ids = Vec::new();
    for kt in [
        "ecdsa-p256",
        "ecdsa-p384",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "ed25519",
    ] {
        let (status, c) = api.post(
            "/console/api/v1/certificates",
            json!({ "team": "payments", "names": [format!("{kt}.example.com")], "key_type": kt, "labels": { "kt": kt } }),
        );
        assert_eq!(status, 201, "{kt}: {c}");
        let id = c["id"].as_str().unwrap().to_owned();
        let leaf = work.join(format!("{kt}.pem"));
        std::fs::write(&leaf, api.download(&id, "certificate")).unwrap();
        let (ok, out) = sh(
            &work,
            &[
                "openssl",
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "intermediate.pem",
                leaf.to_str().unwrap(),
            ],
        );
        assert!(ok && out.contains(": OK"), "{kt}: {out}");
        // The CA/B Forum profile allows only RSA and ECDSA keys: Ed25519 is for private PKI.
        let linters: &[&str] = if kt == "ed25519" {
            &["lint_pkix_cert"]
        } else {
            &["lint_pkix_cert", "lint_cabf_serverauth_cert"]
        };
        for linter in linters {
            let errs = pkilint_errors(linter, &leaf);
            assert!(errs.is_empty(), "{kt} {linter}: {errs:?}");
        }
        // The tls-client profile of the same key type: RFC 5280 lint only
        // (the CA/B profile is for TLS server certificates).
        let (status, client) = api.post(
            "/console/api/v1/certificates",
            json!({ "team": "clients", "name": format!("{kt}-client"), "names": [format!("{kt}-client.example.com")], "key_type": kt, "profile": "tls-client" }),
        );
        assert_eq!(status, 201, "{kt} tls-client: {client}");
        let client_leaf = work.join(format!("{kt}-client.pem"));
        std::fs::write(
            &client_leaf,
            api.download(client["id"].as_str().unwrap(), "certificate"),
        )
        .unwrap();
        let errs = pkilint_errors("lint_pkix_cert", &client_leaf);
        assert!(errs.is_empty(), "{kt} tls-client: {errs:?}");
        // The private key matches the certificate.
        let key = work.join(format!("{kt}.key"));
        std::fs::write(&key, api.download(&id, "key")).unwrap();
        let (_, cert_pub) = sh(
            &work,
            &[
                "openssl",
                "x509",
                "-in",
                leaf.to_str().unwrap(),
                "-noout",
                "-pubkey",
            ],
        );
        let (_, key_pub) = sh(
            &work,
            &["openssl", "pkey", "-in", key.to_str().unwrap(), "-pubout"],
        );
        assert_eq!(cert_pub, key_pub, "{kt}: key does not match certificate");
        ids.push(id);
    }

    // The configured policy refuses with a problem naming field, rule and value.
    let (status, problem) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "capped", "names": ["a.example.com", "b.example.com"] }),
    );
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "names");
    let reason = problem["errors"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("'2' violates policy.teams.capped.max_names"),
        "{reason}"
    );

    // From a CSR made by openssl: proof of possession, the key never leaves.
    let (ok, out) = sh(
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
            "csr.key",
            "-out",
            "req.csr",
            "-subj",
            "/CN=csr.example.com",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
    assert!(ok, "{out}");
    let (status, c) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "names": ["csr.example.com"], "csr": std::fs::read_to_string(work.join("req.csr")).unwrap() }),
    );
    assert_eq!(status, 201, "{c}");
    let csr_id = c["id"].as_str().unwrap().to_owned();
    std::fs::write(
        work.join("csr-leaf.pem"),
        api.download(&csr_id, "certificate"),
    )
    .unwrap();
    let (_, text) = sh(
        &work,
        &["openssl", "x509", "-in", "csr-leaf.pem", "-noout", "-text"],
    );
    assert!(
        text.contains("CA:FALSE") && !text.contains("CA:TRUE"),
        "{text}"
    );

    // PKCS#12 opens with openssl and holds the key.
    let resp = api
        .http
        .post(format!(
            "{}/console/api/v1/certificates/{}/pkcs12",
            api.base, ids[0]
        ))
        .bearer_auth(&token)
        .json(&json!({ "password": "correct horse" }))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    std::fs::write(work.join("bundle.p12"), resp.bytes().unwrap()).unwrap();
    let (ok, out) = sh(
        &work,
        &[
            "openssl",
            "pkcs12",
            "-in",
            "bundle.p12",
            "-passin",
            "pass:correct horse",
            "-nodes",
            "-info",
        ],
    );
    assert!(ok && out.contains("PRIVATE KEY"), "{out}");

    // Revoke one; the issuer's CRL (served publicly) lists it and openssl agrees.
    let (status, r) = api.post(
        &format!("/console/api/v1/certificates/{}/revoke", ids[0]),
        json!({ "reason": "keyCompromise" }),
    );
    assert_eq!(status, 200, "{r}");
    let crl = reqwest::blocking::get(format!(
        "{}/pki/{}/crl",
        server.url,
        issuer["id"].as_str().unwrap()
    ))
    .unwrap()
    .bytes()
    .unwrap();
    std::fs::write(work.join("crl.der"), &crl).unwrap();
    let (ok, out) = sh(
        &work,
        &[
            "openssl", "crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = sh(
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
            "ecdsa-p256.pem",
        ],
    );
    assert!(!ok && out.contains("revoked"), "{out}");

    // The CLI speaks to the same API.
    let (ok, out) = cli(
        &server,
        &token,
        &["cert", "list", "--team", "payments", "--output", "json"],
    );
    assert!(ok, "{out}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["total"], 6);
    let (ok, out) = cli(
        &server,
        &token,
        &[
            "cert",
            "create",
            "--team",
            "ops",
            "--san",
            "cli.example.com",
            "--label",
            "env=dev",
        ],
    );
    assert!(ok && out.contains("cli.example.com"), "{out}");
    let (ok, out) = cli(
        &server,
        &token,
        &[
            "cert",
            "create",
            "--team",
            "ops",
            "--san",
            "bad_name.example.com",
        ],
    );
    assert!(
        !ok && out.contains("names[0]") && out.contains("LDH"),
        "{out}"
    );
    let (ok, out) = cli(&server, &token, &["cert", "renew", &ids[1]]);
    assert!(ok && out.contains("superseded"), "{out}");
    let (ok, out) = cli(&server, &token, &["ca", "show"]);
    assert!(ok && out.contains("Issuing CA"), "{out}");
    let (ok, out) = cli(&server, "cfb_wrong", &["cert", "list"]);
    assert!(!ok && out.contains("401"), "{out}");

    let before: Value = api
        .get(&format!("/console/api/v1/certificates/{}", ids[1]))
        .json()
        .unwrap();
    stop(server);

    // Restart: same CA, same certificates, keys still decrypt, no new token printed.
    let server = start(&data, &public).expect("restart");
    assert!(
        server.token_line.is_none(),
        "the bootstrap token is printed only once"
    );
    let api = Api::new(&server, &token);
    let after: Value = api
        .get(&format!("/console/api/v1/certificates/{}", ids[1]))
        .json()
        .unwrap();
    assert_eq!(before["versions"], after["versions"]);
    let issuers_after: Value = api.get("/console/api/v1/issuers").json().unwrap();
    assert_eq!(issuers_after[0]["chain_pem"], issuer["chain_pem"]);
    assert!(api.download(&ids[1], "key").contains("PRIVATE KEY"));
    let audit: Value = api
        .get("/console/api/v1/audit?action=certificate.key.download")
        .json()
        .unwrap();
    assert!(audit["total"].as_u64().unwrap() >= 8, "{audit}");
    stop(server);

    // The master key is required: a wrong one or none stops the server with a clear message.
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let err = start(&data, &[("CERTFLOW_MASTER_KEY", wrong)])
        .err()
        .expect("wrong master key must stop the server");
    assert!(err.contains("master key"), "{err}");
    let key_file = data.join("master.key");
    std::fs::rename(&key_file, tmp.path().join("saved.key")).unwrap();
    let err = start(&data, &[])
        .err()
        .expect("missing master key must stop the server");
    assert!(err.contains("no master key"), "{err}");
    // The key from a file elsewhere works (mode 600 required).
    let saved = tmp.path().join("saved.key");
    let server = start(
        &data,
        &[("CERTFLOW_MASTER_KEY_FILE", saved.to_str().unwrap())],
    )
    .expect("start with key file");
    let api = Api::new(&server, &token);
    assert!(api.download(&ids[1], "key").contains("PRIVATE KEY"));
}

#[test]
fn imported_ca_issues_and_bad_config_is_refused() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    // An existing CA made with openssl.
    let (ok, out) = sh(
        work,
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "365",
            "-subj",
            "/CN=Corp Imported CA/O=Corp",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    assert!(ok, "{out}");
    let server = start(&work.join("data"), &[]).expect("start");
    let token = server.token_line.clone().unwrap();
    let (ok, out) = cli(
        &server,
        &token,
        &[
            "ca",
            "import",
            "--name",
            "corp",
            "--cert",
            work.join("ca.pem").to_str().unwrap(),
            "--key",
            work.join("ca.key").to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    assert!(ok, "{out}");
    let imported: Value = serde_json::from_str(&out).unwrap();
    let api = Api::new(&server, &token);
    let (status, c) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "corp", "names": ["imported.example.com"], "issuer_id": imported["id"] }),
    );
    assert_eq!(status, 201, "{c}");
    std::fs::write(
        work.join("leaf.pem"),
        api.download(c["id"].as_str().unwrap(), "certificate"),
    )
    .unwrap();
    let (ok, out) = sh(
        work,
        &["openssl", "verify", "-CAfile", "ca.pem", "leaf.pem"],
    );
    assert!(ok, "{out}");
    // A key that does not belong to the certificate is refused, nothing imported.
    let (_, _) = sh(
        work,
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "other.key",
        ],
    );
    let (ok, out) = cli(
        &server,
        &token,
        &[
            "ca",
            "import",
            "--name",
            "bad",
            "--cert",
            work.join("ca.pem").to_str().unwrap(),
            "--key",
            work.join("other.key").to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("key"), "{out}");
    let issuers: Value = api.get("/console/api/v1/issuers").json().unwrap();
    assert_eq!(issuers.as_array().unwrap().len(), 2);

    // Bad configuration stops the server with the key named.
    let err = start(&work.join("data2"), &[("CERTFLOW_CA__KEY_TYPE", "dsa")])
        .err()
        .unwrap();
    assert!(err.contains("ca.key_type"), "{err}");
    let err = start(&work.join("data3"), &[("CERTFLOW_SERVER__LISTNE", "x")])
        .err()
        .unwrap();
    assert!(err.contains("listne"), "{err}");
}
/// `certflow healthcheck` is the container image's health probe (no shell or
/// curl in it): 0 when the server answers, non-zero with the reason otherwise.
#[test]
fn healthcheck_command_tells_up_from_down() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).unwrap();
    let probe = |url: &str| {
        Command::new(BIN)
            .args(["healthcheck", "--url", url])
            .env_clear()
            .output()
            .unwrap()
    };
    let up = probe(&format!("{}/healthz", server.url));
    assert!(up.status.success(), "{up:?}");
    let missing = probe(&format!("{}/no-such-probe", server.url));
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{missing:?}"
    );
    stop(server);
    let closed = format!("http://127.0.0.1:{}/healthz", certflow_testkit::free_port());
    assert!(!probe(&closed).status.success());
}
