//! The README's newcomer path as a test: `scripts/newcomer.sh` extracts the
//! README's marked shell blocks and runs them in a fresh directory with the
//! binaries under test on PATH (install, serve on embedded defaults, issue,
//! download, verify with the root, enrol an agent with a CLI join token,
//! install on nginx, renew, restart with dev-idp.sh's configuration), checking
//! each step's outcome. Its header says what differs from a newcomer's machine.

use std::path::Path;
use std::process::Command;

use crate::support::agent::agent_bin;
use crate::support::{BIN, require, test_logs};

/// The README's tour works as written, end to end.
#[test]
fn the_readme_tour_works_as_written() {
    for tool in ["jq", "curl", "openssl", "node", "python3"] {
        require(tool, "scripts/peers.sh installs it");
    }
    let bin_dir = Path::new(BIN).parent().unwrap();
    // The agent binary must be next to the server's (the script puts that
    // directory on PATH).
    assert_eq!(agent_bin().parent().unwrap(), bin_dir);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/newcomer.sh"))
        .arg(bin_dir)
        .env("NEWCOMER_LOGS", test_logs())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/newcomer.sh failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("the README's path works as written"),
        "{stdout}"
    );
}
