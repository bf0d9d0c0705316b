//! Wire views of domain objects that the console API and the console pages
//! both show, so the two never disagree on status or drift.

use certflow_api::agent::DeploymentView;
use certflow_core::deployments::DeploymentState;
use time::OffsetDateTime;

/// The console's view of one deployment state at `now`.
pub fn view(
    s: DeploymentState,
    now: OffsetDateTime,
    drift_after: time::Duration,
) -> DeploymentView {
    let drift = s.drifting(now, drift_after);
    let report = s.last_report;
    DeploymentView {
        agent_id: s.agent_id,
        agent_name: s.agent_name,
        certificate_id: s.assigned.certificate_id,
        current_version: s.assigned.version,
        deployed_version: report.as_ref().map(|d| d.version),
        fingerprint_sha256: report.as_ref().map(|d| d.fingerprint_sha256.clone()),
        status: report
            .as_ref()
            .map_or("pending", |d| d.status.as_str())
            .to_owned(),
        error: report.as_ref().and_then(|d| d.error.clone()),
        reported_at: report.as_ref().map(|d| d.reported_at),
        drift,
    }
}
