//! Offline administration on the server's own data (`certflow admin ...`,
//! `certflow keys rewrap`): run where the server runs, with its configuration.

use anyhow::bail;
use certflow_core::model::Actor;

use super::wiring::{open_services, open_store};
use crate::auth;
use crate::config::{Config, DatabaseKind};

/// `certflow admin sweep-blobs`: one sweep now, with the configured grace period.
pub async fn sweep_blobs(config: &Config, grace_hours: Option<u64>) -> anyhow::Result<()> {
    let services = open_services(config).await?.services;
    let hours = grace_hours.unwrap_or(config.blob.orphan_grace_hours);
    let r = services
        .sweep_orphan_blobs(
            time::Duration::hours(i64::try_from(hours).unwrap_or(i64::MAX / 3600)),
            time::OffsetDateTime::now_utc(),
        )
        .await?;
    println!(
        "scanned {} blobs, deleted {} orphans, kept {} younger than {hours} h; \
         purged {} idempotency keys older than 24 h",
        r.scanned,
        r.deleted.len(),
        r.young_orphans,
        r.idempotency_keys_purged
    );
    for key in r.deleted {
        println!("deleted {key}");
    }
    Ok(())
}

/// `certflow admin verify-audit`: walks the audit hash chain; an error (so a
/// non-zero exit) if it is broken.
pub async fn verify_audit(config: &Config) -> anyhow::Result<()> {
    let (store, _) = open_store(config).await?;
    let report = store.metadata.verify_audit_chain().await?;
    print!("{}", audit_report_text(&report));
    match report.first_break {
        None => Ok(()),
        Some(b) => bail!(
            "the audit chain is broken at seq {} ({})",
            b.seq,
            b.reason.as_str()
        ),
    }
}

/// `certflow admin verify-store`: checks that metadata and blobs agree (every
/// version numbered in order, its certificate and chain readable, its key
/// opening under the master key and matching its certificate) and lists the
/// blobs nothing references; an error (so a non-zero exit) on any problem, or
/// on an unreferenced blob older than `orphan_grace_hours`, which the sweeper
/// should have deleted.
pub async fn verify_store(config: &Config) -> anyhow::Result<()> {
    let services = open_services(config).await?.services;
    let report = services
        .verify_store(time::OffsetDateTime::now_utc())
        .await?;
    let grace = time::Duration::hours(
        i64::try_from(config.blob.orphan_grace_hours).unwrap_or(i64::MAX / 3600),
    );
    print!("{}", store_report_text(&report, grace));
    let stale = report
        .unreferenced
        .iter()
        .filter(|(_, age)| *age >= grace)
        .count();
    if !report.problems.is_empty() || stale > 0 {
        bail!(
            "the store is inconsistent: {} problems, {stale} orphan blobs past the sweeper's grace",
            report.problems.len()
        );
    }
    Ok(())
}

/// What `verify-store` prints: the counts, then each problem and each
/// unreferenced blob on its own line.
fn store_report_text(r: &certflow_services::StoreReport, grace: time::Duration) -> String {
    let stale = r
        .unreferenced
        .iter()
        .filter(|(_, age)| *age >= grace)
        .count();
    let mut out = format!(
        "checked {} certificates, {} versions, {} keys: {} problems; {} unreferenced blobs ({stale} older than the grace)\n",
        r.certificates,
        r.versions,
        r.keys,
        r.problems.len(),
        r.unreferenced.len()
    );
    for p in &r.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    for (key, age) in &r.unreferenced {
        out.push_str(&format!(
            "unreferenced: {key} ({} s old)\n",
            age.whole_seconds()
        ));
    }
    out
}

/// `certflow admin agent-ca`: prints the agent-identity CA chain (issuing CA
/// first, then up to the root) as PEM, for a TLS-terminating gateway's trust
/// store (an ALB trust store, API Gateway's truststore).
pub async fn print_agent_ca(config: &Config) -> anyhow::Result<()> {
    let (store, _) = open_store(config).await?;
    let Some(ca) = store.agents.get_agent_ca().await? else {
        bail!(
            "no agent-identity CA yet: it is created when `certflow serve` (api role) first starts"
        );
    };
    print!("{}", ca.issuing_cert_pem);
    if !ca.issuing_cert_pem.ends_with('\n') {
        println!();
    }
    print!("{}", ca.chain_pem);
    Ok(())
}

/// What `verify-audit` prints: the rows checked, the last link (to record
/// elsewhere, so a rewritten chain shows later) and the first break, if any.
fn audit_report_text(r: &certflow_core::model::AuditChainReport) -> String {
    let mut out = format!(
        "checked {} audit events; last seq {} hash {}\n",
        r.checked, r.last_seq, r.last_hash
    );
    match &r.first_break {
        None => out.push_str("audit chain OK\n"),
        Some(b) => out.push_str(&format!(
            "audit chain BROKEN at seq {}: {} (event {})\n",
            b.seq,
            b.reason.as_str(),
            b.id.map_or_else(|| "missing".to_owned(), |id| id.to_string())
        )),
    }
    out
}

/// `certflow keys rewrap`: re-seal every private key and webhook secret under the current master key.
pub async fn rewrap_keys(config: &Config) -> anyhow::Result<()> {
    let opened = open_services(config).await?;
    let services = opened.services.clone();
    let actor = Actor {
        subject: "admin-cli".into(),
        source: None,
    };
    let r = services
        .rewrap_keys(&actor, time::OffsetDateTime::now_utc())
        .await?;
    // The agent-identity CA's keys are sealed under the same master key.
    let agents = certflow_services::agents::Agents::new(
        &services,
        opened.store.agents.clone(),
        certflow_services::agents::AgentSettings::default(),
    );
    let (agent_keys, agent_rewrapped) = agents.rewrap_keys().await?;
    println!(
        "{} sealed keys, {} re-wrapped under the current master key",
        r.keys + agent_keys,
        r.rewrapped + agent_rewrapped
    );
    Ok(())
}

/// `certflow admin rotate-bootstrap-token`: works on the data directly, for
/// when the token is lost. Restart the server to pick up the new hash.
pub async fn rotate_bootstrap_token(config: &Config) -> anyhow::Result<()> {
    let (store, feed) = open_store(config).await?;
    let token = auth::rotate_bootstrap_token(store.metadata.as_ref()).await?;
    feed.publish("settings").await?;
    println!("export CERTFLOW_TOKEN={token}");
    if matches!(config.database(), DatabaseKind::Sqlite(_)) {
        eprintln!("certflow: a running server accepts the new token within 30 seconds");
    }
    Ok(())
}

#[cfg(test)]
mod verify_audit_tests {
    use certflow_core::model::{AuditChainBreak, AuditChainFault, AuditChainReport};

    use super::audit_report_text;

    #[test]
    fn report_names_the_last_link_and_the_break() {
        let mut report = AuditChainReport {
            checked: 41,
            last_seq: 41,
            last_hash: "ab".repeat(32),
            first_break: None,
        };
        let ok = audit_report_text(&report);
        assert!(ok.contains("checked 41 audit events"), "{ok}");
        assert!(ok.contains(&"ab".repeat(32)), "{ok}");
        assert!(ok.contains("audit chain OK"), "{ok}");
        report.first_break = Some(AuditChainBreak {
            seq: 42,
            id: None,
            reason: AuditChainFault::SeqGap,
        });
        let broken = audit_report_text(&report);
        assert!(
            broken.contains("BROKEN at seq 42: seq_gap (event missing)"),
            "{broken}"
        );
    }
}
