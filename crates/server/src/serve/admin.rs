//! Offline administration on the server's own data (`certflow admin ...`,
//! `certflow keys rewrap`): run where the server runs, with its configuration.

use anyhow::bail;
use certflow_core::model::{Actor, AuditChainBreak, AuditChainFault, AuditChainReport};

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
        Some(b) => bail!("the audit trail is broken: {}", break_text(&b)),
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

/// What `verify-audit` prints: the rows checked, each chain's last link (to
/// record elsewhere, so a rewritten chain shows later) and where it breaks,
/// then the verdict with the first break, if any.
fn audit_report_text(r: &AuditChainReport) -> String {
    let mut out = format!(
        "checked {} audit events in {} chains\n",
        r.checked,
        r.chains.len()
    );
    for tip in &r.chains {
        let link = if tip.last_seq == 0 {
            "seq 0 (empty)".to_owned()
        } else {
            format!("seq {} hash {}", tip.last_seq, tip.last_hash)
        };
        out.push_str(&format!("chain {:>2}: {link}", tip.chain));
        if let Some(b) = &tip.first_break {
            out.push_str(&format!(", then BROKEN: {}", break_text(b)));
        }
        out.push('\n');
    }
    match &r.first_break {
        None => out.push_str("audit chain OK\n"),
        Some(b) => out.push_str(&format!("audit chain BROKEN: {}\n", break_text(b))),
    }
    out
}

/// Where a chain breaks, in words.
fn break_text(b: &AuditChainBreak) -> String {
    let event =
        b.id.map_or_else(|| "missing".to_owned(), |id| id.to_string());
    match b.reason {
        AuditChainFault::Unchained => format!("unchained (event {event} is in no chain)"),
        reason => format!(
            "chain {} seq {}: {} (event {event})",
            b.chain,
            b.seq,
            reason.as_str()
        ),
    }
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
    use certflow_core::model::{AuditChainBreak, AuditChainFault, AuditChainReport, AuditChainTip};

    use super::audit_report_text;

    fn tip(chain: u32, last_seq: u64) -> AuditChainTip {
        AuditChainTip {
            chain,
            last_seq,
            last_hash: if last_seq == 0 {
                "0".repeat(64)
            } else {
                format!("{chain:x}").repeat(64)
            },
            first_break: None,
        }
    }

    #[test]
    fn report_names_each_chains_last_link_and_the_break() {
        let mut report = AuditChainReport {
            checked: 48,
            chains: vec![tip(0, 41), tip(1, 7), tip(2, 0)],
            first_break: None,
        };
        let ok = audit_report_text(&report);
        assert_eq!(
            ok,
            format!(
                "checked 48 audit events in 3 chains\n\
                 chain  0: seq 41 hash {}\n\
                 chain  1: seq 7 hash {}\n\
                 chain  2: seq 0 (empty)\n\
                 audit chain OK\n",
                "0".repeat(64),
                "1".repeat(64)
            )
        );
        let gap = AuditChainBreak {
            chain: 1,
            seq: 8,
            id: None,
            reason: AuditChainFault::SeqGap,
        };
        report.chains[1].first_break = Some(gap.clone());
        report.first_break = Some(gap);
        let broken = audit_report_text(&report);
        assert!(
            broken.contains(&format!(
                "chain  1: seq 7 hash {}, then BROKEN: chain 1 seq 8: seq_gap (event missing)\n",
                "1".repeat(64)
            )),
            "{broken}"
        );
        assert!(
            broken.ends_with("audit chain BROKEN: chain 1 seq 8: seq_gap (event missing)\n"),
            "{broken}"
        );
    }

    #[test]
    fn an_unchained_row_is_named_without_a_chain() {
        let id = uuid::Uuid::nil();
        let report = AuditChainReport {
            checked: 0,
            chains: vec![tip(0, 0)],
            first_break: Some(AuditChainBreak {
                chain: 0,
                seq: 0,
                id: Some(id),
                reason: AuditChainFault::Unchained,
            }),
        };
        let text = audit_report_text(&report);
        assert!(
            text.ends_with(&format!(
                "audit chain BROKEN: unchained (event {id} is in no chain)\n"
            )),
            "{text}"
        );
    }
}
