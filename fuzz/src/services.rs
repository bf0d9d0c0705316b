//! Entry point over certflow-services.

use certflow_api::agent::DiscoveryReport;

/// `POST /agent/v1/discovered` body: JSON, then the whole-report check
/// (`validate_report`, which parses each item's certificate PEM).
pub fn discovery_report(data: &[u8]) {
    if let Ok(report) = serde_json::from_slice::<DiscoveryReport>(data) {
        let _ = certflow_services::discovery::validate_report(&report);
    }
}
