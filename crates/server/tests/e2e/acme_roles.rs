//! HTTP-01 with the roles split into processes: the worker that orders a
//! certificate would publish its HTTP-01 tokens in its own memory, which no
//! listener serves when it has no api role, so such a worker is refused at
//! start with a message naming the issuer, the cause and the two ways out;
//! an api+worker process and a worker on DNS-01 start.

use crate::support::{start_with, stop};

fn config(dir: &std::path::Path, challenge: &str) -> String {
    let path = dir.join(format!("{challenge}.toml"));
    let mut toml = "[acme.public]\ndirectory_url = \"https://127.0.0.1:9/dir\"\n".to_owned();
    if challenge == "dns-01" {
        toml.push_str("challenge = \"dns-01\"\n[acme.public.dns]\nprovider = \"exec\"\ncommand = \"/bin/true\"\n");
    } else {
        toml.push_str("challenge = \"http-01\"\n");
    }
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

#[test]
fn a_worker_without_the_api_role_is_refused_for_http01_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let http01 = config(dir, "http-01");
    let env = [("CERTFLOW_CONFIG", http01.as_str())];
    for args in [
        &["worker"][..],
        &["serve", "--roles", "worker,scheduler"][..],
    ] {
        let err = match start_with(args, &dir.join("data"), &env) {
            Ok(s) => {
                stop(s);
                panic!("{args:?} started with an HTTP-01 issuer and no api role");
            }
            Err(e) => e,
        };
        for needle in ["[acme.public]", "http-01", "api", "dns-01"] {
            assert!(err.contains(needle), "{args:?}: {needle:?} not in: {err}");
        }
    }
    // With the api role in the same process, or on DNS-01, it starts.
    let both = start_with(&["serve", "--roles", "api,worker"], &dir.join("data"), &env)
        .unwrap_or_else(|e| panic!("api,worker: {e}"));
    stop(both);
    let dns01 = config(dir, "dns-01");
    let worker = start_with(
        &["worker"],
        &dir.join("data"),
        &[("CERTFLOW_CONFIG", dns01.as_str())],
    )
    .unwrap_or_else(|e| panic!("a DNS-01 worker: {e}"));
    stop(worker);
}
