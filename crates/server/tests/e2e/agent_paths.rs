//! The agent's other paths end to end, with files and openssl only (no
//! service to reload): a certificate whose key the server generated
//! (`key = "server"`), installed as PEM files and a password-protected
//! PKCS#12, with the key download audited as the agent's; and `--dry-run`,
//! which says what it would do and changes nothing on disk.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::agent::{agent, agent_server, join_token, private, run_context};
use crate::support::{Api, require, sh, stop};

/// Every file under `dir` (relative paths, sorted): what a run left on disk.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A server-keyed certificate created by an operator and assigned to the
/// agent: `--dry-run` before enrolment and before the install changes
/// nothing and says what it would do; `once` installs the PEM files (key
/// 0600, matching the certificate) and a PKCS#12 that opens with the
/// configured password; the key download is audited as the agent's, with
/// no key material in the trail; a dry run with nothing to do says so.
#[test]
fn server_keyed_certificate_installs_pem_and_pkcs12_after_a_dry_run() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (server, api, listen) = agent_server(dir, &[]);

    // The operator creates the certificate; certflow generates and seals its key.
    let (status, c) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "name": "shared", "names": ["shared.example.test"], "key_type": "ecdsa-p256" }),
    );
    assert_eq!(status, 201, "{c}");
    let cert_id = c["id"].as_str().unwrap().to_owned();
    let serial = c["versions"][0]["serial"].as_str().unwrap().to_owned();

    join_token(&api, dir, "app-01", "web");
    private(&dir.join("p12-password"), "s3cret-p12\n");
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let config = dir.join("agent.toml");
    private(
        &config,
        &format!(
            r#"server = "https://{listen}"
ca_file = "{d}/server-ca.pem"
state_dir = "{d}/state"
agent_name = "app-01"

[auth]
join_token_file = "{d}/join-token"

[[certificate]]
name = "shared"
id = "{cert_id}"
key = "server"

[certificate.install]
cert = "{t}/shared.crt"
fullchain = "{t}/shared-fullchain.pem"
key = "{t}/shared.key"
pkcs12 = "{t}/shared.p12"
pkcs12_password_file = "{d}/p12-password"
"#,
            d = dir.display(),
            t = tls.display(),
        ),
    );
    let ctx = |what: &str, out: &str, err: &str| run_context(&server, what, out, err);

    // Dry run on a fresh host: says it would enrol, creates nothing, uses
    // not the join token, exits 1 (not everything is served).
    let (code, out, err) = agent(&config, &["once", "--dry-run"]);
    assert_eq!(code, Some(1), "{}", ctx("dry run (fresh)", &out, &err));
    assert!(
        out.contains("would enrol at"),
        "{}",
        ctx("dry run (fresh)", &out, &err)
    );
    assert!(!dir.join("state").exists(), "the dry run made a state dir");
    assert!(tree(&tls).is_empty(), "{:?}", tree(&tls));

    // A real run enrols (the join token still works); nothing assigned yet.
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(1), "{}", ctx("once (unassigned)", &out, &err));
    assert!(
        err.contains("not assigned"),
        "{}",
        ctx("once (unassigned)", &out, &err)
    );
    assert!(tree(&tls).is_empty(), "{:?}", tree(&tls));
    let list: Value = api.get("/console/api/v1/agents").json().unwrap();
    let agent_id = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "app-01")
        .unwrap_or_else(|| panic!("app-01 not enrolled: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, view) = api.post(
        &format!("/console/api/v1/agents/{agent_id}/assignments"),
        json!({ "certificate_id": cert_id }),
    );
    assert_eq!(status, 201, "{view}");

    // Dry run with the assignment in place: names the version and the
    // targets, writes neither the targets nor the store, fetches no key.
    let state_before = tree(&dir.join("state"));
    let (code, out, err) = agent(&config, &["once", "--dry-run"]);
    assert_eq!(code, Some(1), "{}", ctx("dry run (assigned)", &out, &err));
    assert!(
        out.contains("shared: would install version 1")
            && out.contains(&serial)
            && out.contains("over nothing"),
        "{}",
        ctx("dry run (assigned)", &out, &err)
    );
    assert!(tree(&tls).is_empty(), "{:?}", tree(&tls));
    assert_eq!(tree(&dir.join("state")), state_before);
    let key_downloads = |api: &Api| -> Vec<Value> {
        let audit: Value = api
            .get(&format!(
                "/console/api/v1/audit?target=certificate/{cert_id}&action=certificate.key.download"
            ))
            .json()
            .unwrap();
        audit["items"].as_array().unwrap().clone()
    };
    assert!(
        key_downloads(&api).is_empty(),
        "the dry run fetched the key"
    );

    // The install.
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("once (install)", &out, &err));
    for f in [
        "shared.crt",
        "shared-fullchain.pem",
        "shared.key",
        "shared.p12",
    ] {
        assert!(tls.join(f).exists(), "{f} missing: {:?}", tree(&tls));
    }
    let mode = |f: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(tls.join(f)).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode("shared.key"), 0o600);
    assert_eq!(mode("shared.p12"), 0o600);
    // The key is the one of the certificate (public keys compared by openssl).
    let (ok, cert_pub) = sh(
        &tls,
        &["openssl", "x509", "-in", "shared.crt", "-noout", "-pubkey"],
    );
    assert!(ok, "{cert_pub}");
    let (ok, key_pub) = sh(&tls, &["openssl", "pkey", "-in", "shared.key", "-pubout"]);
    assert!(ok, "{key_pub}");
    assert_eq!(cert_pub, key_pub, "key does not match certificate");
    let (ok, text) = sh(
        &tls,
        &["openssl", "x509", "-in", "shared.crt", "-noout", "-serial"],
    );
    assert!(ok, "{text}");
    let want = serial.replace(':', "").to_uppercase();
    assert!(
        text.to_uppercase().contains(&want),
        "{text} vs serial {serial}"
    );
    // The PKCS#12 opens with the password file, holds the leaf and the key.
    let pass = format!("file:{}", dir.join("p12-password").display());
    let (ok, p12) = sh(
        &tls,
        &[
            "openssl",
            "pkcs12",
            "-in",
            "shared.p12",
            "-passin",
            &pass,
            "-nokeys",
            "-clcerts",
        ],
    );
    assert!(ok, "{p12}");
    let leaf_in_p12 = dir.join("p12-leaf.pem");
    std::fs::write(&leaf_in_p12, &p12).unwrap();
    let (ok, text) = sh(
        dir,
        &[
            "openssl",
            "x509",
            "-in",
            leaf_in_p12.to_str().unwrap(),
            "-noout",
            "-serial",
        ],
    );
    assert!(ok && text.to_uppercase().contains(&want), "{text}");
    let (ok, p12_key) = sh(
        &tls,
        &[
            "openssl",
            "pkcs12",
            "-in",
            "shared.p12",
            "-passin",
            &pass,
            "-nocerts",
            "-nodes",
        ],
    );
    assert!(ok && p12_key.contains("PRIVATE KEY"), "{p12_key}");
    let (ok, wrong) = sh(
        &tls,
        &[
            "openssl",
            "pkcs12",
            "-in",
            "shared.p12",
            "-passin",
            "pass:wrong",
            "-nokeys",
        ],
    );
    assert!(!ok, "the PKCS#12 opened with a wrong password: {wrong}");

    // The server sees it installed, and the key download is the agent's.
    let d: Value = api
        .get(&format!(
            "/console/api/v1/certificates/{cert_id}/deployments"
        ))
        .json()
        .unwrap();
    assert_eq!(d[0]["status"], "installed", "{d}");
    assert_eq!(d[0]["agent_name"], "app-01", "{d}");
    let downloads = key_downloads(&api);
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(downloads[0]["subject"], agent_id.as_str(), "{downloads:?}");
    let all_audit = api.text("/console/api/v1/audit?limit=500");
    assert!(
        !all_audit.contains("PRIVATE KEY"),
        "key material in the audit trail"
    );
    assert!(!server.log().contains("PRIVATE KEY"), "key material logged");

    // A second run has nothing to do: served, no second key download; a
    // dry run says so instead of printing nothing.
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("once (idle)", &out, &err));
    assert_eq!(key_downloads(&api).len(), 1);
    let (code, out, err) = agent(&config, &["once", "--dry-run"]);
    assert_eq!(code, Some(0), "{}", ctx("dry run (idle)", &out, &err));
    assert!(
        out.contains("shared: up to date (version 1")
            && out.contains("nothing to do: 1 certificate up to date"),
        "{}",
        ctx("dry run (idle)", &out, &err)
    );
    stop(server);
}

/// The agent binary enrols with an OIDC client-credentials token (no join
/// token): the server maps the client to its team, the agent requests and
/// installs its certificate; with its identity files deleted, the next run
/// re-enrols with a fresh token as the same agent.
#[test]
fn oidc_client_enrols_installs_and_re_enrols_as_the_same_agent() {
    require("openssl", "apt-get install openssl");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let op = crate::agents::start_op(dir);
    let server_config = dir.join("certflow.toml");
    std::fs::write(
        &server_config,
        format!(
            r#"
[[auth.issuers]]
issuer = "{issuer}"
audience = "urn:certflow:api"
[auth.issuers.service_roles.agent-1]
role = "viewer"
teams = ["api"]
"#,
            issuer = op.issuer
        ),
    )
    .unwrap();
    let (server, api, listen) =
        agent_server(dir, &[("CERTFLOW_CONFIG", server_config.to_str().unwrap())]);
    private(&dir.join("client-secret"), "agent-secret\n");
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let config = dir.join("agent.toml");
    private(
        &config,
        &format!(
            r#"server = "https://{listen}"
ca_file = "{d}/server-ca.pem"
state_dir = "{d}/state"

[auth]
token_endpoint = "{issuer}/token"
client_id = "agent-1"
client_secret_file = "{d}/client-secret"
resource = "urn:certflow:api"
scope = "certs:read"

[[certificate]]
name = "api"
names = ["api.example.test"]

[certificate.install]
fullchain = "{t}/api.pem"
key = "{t}/api.key"
"#,
            d = dir.display(),
            t = tls.display(),
            issuer = op.issuer,
        ),
    );
    let ctx = |what: &str, out: &str, err: &str| run_context(&server, what, out, err);

    // First run: token, enrolment, CSR for a key made here, install.
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("once (enrol)", &out, &err));
    let list: Value = api.get("/console/api/v1/agents").json().unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let agent_id = items[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(items[0]["teams"], json!(["api"]), "team from service_roles");
    // The agent list shows no token subject; the name is the client id.
    assert_eq!(items[0]["name"], "agent-1", "{list}");
    let first_identity = items[0]["certificate_serial"].as_str().unwrap().to_owned();
    let identity = dir.join("state/identity/cert.pem");
    let (ok, text) = sh(
        dir,
        &[
            "openssl",
            "x509",
            "-in",
            identity.to_str().unwrap(),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        ok && text.contains(&format!("URI:urn:certflow:agent:{agent_id}")),
        "{text}"
    );
    let (_, cert_pub) = sh(
        &tls,
        &["openssl", "x509", "-in", "api.pem", "-noout", "-pubkey"],
    );
    let (_, key_pub) = sh(&tls, &["openssl", "pkey", "-in", "api.key", "-pubout"]);
    assert!(cert_pub.contains("PUBLIC KEY") && cert_pub == key_pub);
    let installed = std::fs::read(tls.join("api.pem")).unwrap();
    let page: Value = api
        .get("/console/api/v1/certificates?search=api.example.test")
        .json()
        .unwrap();
    let cert_id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let d: Value = api
        .get(&format!(
            "/console/api/v1/certificates/{cert_id}/deployments"
        ))
        .json()
        .unwrap();
    assert_eq!(d[0]["status"], "installed", "{d}");

    // The host loses its identity: the next run re-enrols with a new
    // token as the same agent, and the installed certificate stays.
    std::fs::remove_dir_all(dir.join("state/identity")).unwrap();
    let (code, out, err) = agent(&config, &["once"]);
    assert_eq!(code, Some(0), "{}", ctx("once (re-enrol)", &out, &err));
    let list: Value = api.get("/console/api/v1/agents").json().unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "a second agent: {list}");
    assert_eq!(items[0]["id"], agent_id.as_str(), "{list}");
    assert_ne!(
        items[0]["certificate_serial"].as_str(),
        Some(first_identity.as_str()),
        "the identity was not replaced: {list}"
    );
    let (ok, text) = sh(
        dir,
        &[
            "openssl",
            "x509",
            "-in",
            identity.to_str().unwrap(),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        ok && text.contains(&format!("URI:urn:certflow:agent:{agent_id}")),
        "{text}"
    );
    assert_eq!(std::fs::read(tls.join("api.pem")).unwrap(), installed);
    let audit: Value = api
        .get(&format!("/console/api/v1/audit?target=agent/{agent_id}"))
        .json()
        .unwrap();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"agent.enroll") && actions.contains(&"agent.reenroll"),
        "{actions:?}"
    );
    assert!(!server.log().contains("agent-secret"), "secret logged");
    stop(server);
}
