//! `POST /agent/v1/reports`: what each certificate's host serves now and how
//! the last attempt went. Errors are the agent's own messages, which never
//! carry key material.

use certflow_api::agent::{DeploymentReport, DeploymentStatus, ReportRequest};
use uuid::Uuid;

use crate::client::Client;
use crate::install::VersionMeta;

/// One entry: `served` is what the targets hold after the attempt.
pub fn entry(
    certificate_id: Uuid,
    served: Option<&VersionMeta>,
    status: DeploymentStatus,
    attempted_version: Option<u32>,
    error: Option<String>,
) -> DeploymentReport {
    let version = served.map_or(0, |m| m.version);
    DeploymentReport {
        certificate_id,
        version,
        fingerprint_sha256: served
            .map(|m| m.fingerprint_sha256.clone())
            .unwrap_or_default(),
        status,
        attempted_version: attempted_version.filter(|v| *v != version),
        error: error.map(|e| e.chars().take(1000).collect()),
    }
}

/// Sends the entries (nothing when empty).
pub async fn send(client: &mut Client, items: Vec<DeploymentReport>) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let n = items.len();
    client
        .report(&ReportRequest {
            items,
            agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        })
        .await?;
    tracing::debug!(entries = n, "report sent");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_reports_the_served_and_the_attempted_version() {
        let meta = VersionMeta {
            certificate_id: Uuid::nil(),
            version: 3,
            serial: "0a".into(),
            fingerprint_sha256: "ab".into(),
            not_after: time::OffsetDateTime::UNIX_EPOCH,
            staged_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let e = entry(
            Uuid::nil(),
            Some(&meta),
            DeploymentStatus::Failed,
            Some(4),
            Some("reload failed".into()),
        );
        assert_eq!(
            (
                e.version,
                e.attempted_version,
                e.fingerprint_sha256.as_str()
            ),
            (3, Some(4), "ab")
        );
        let e = entry(
            Uuid::nil(),
            Some(&meta),
            DeploymentStatus::Installed,
            Some(3),
            None,
        );
        assert_eq!(e.attempted_version, None);
        let e = entry(Uuid::nil(), None, DeploymentStatus::Failed, Some(1), None);
        assert_eq!((e.version, e.fingerprint_sha256.as_str()), (0, ""));
    }
}
