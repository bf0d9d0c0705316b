//! Entry point over certflow-api (wire types).

use certflow_api::agent::ReportRequest;

/// `POST /agent/v1/reports` body: the JSON the handler deserializes; what
/// deserializes must serialize and read back unchanged.
pub fn agent_report(data: &[u8]) {
    let Ok(report) = serde_json::from_slice::<ReportRequest>(data) else {
        return;
    };
    let again = serde_json::to_vec(&report)
        .ok()
        .and_then(|json| serde_json::from_slice::<ReportRequest>(&json).ok());
    assert_eq!(again.as_ref(), Some(&report), "agent report round trip");
}
