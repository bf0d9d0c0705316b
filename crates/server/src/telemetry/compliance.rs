//! The compliance gauges of `/metrics`: what the last whole-inventory report
//! computed by this process found (recorded by the API and the console page).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::RwLock;

use certflow_core::compliance::{Severity, rules};
use certflow_services::compliance::ComplianceReport;

/// Counts by (rule, severity) of the last whole-inventory report this
/// process computed, and when.
type Snapshot = (time::OffsetDateTime, BTreeMap<(String, String), u64>);

/// The report reads every certificate (see
/// `Services::compliance_report`), too much for every scrape: `/metrics`
/// exports the last whole-inventory report this process computed (an
/// admin's, without `team`) instead, with its time.
static LAST: RwLock<Option<Snapshot>> = RwLock::new(None);

/// Keeps `report`'s counts for `/metrics` (only reports over every team).
pub fn record(report: &ComplianceReport) {
    if let Ok(mut last) = LAST.write() {
        *last = Some((report.generated_at, report.summary.by_rule_severity.clone()));
    }
}

/// Appends `certflow_compliance_findings{rule,severity}` (every pair, zeros
/// included, so that alert expressions always have a series) and
/// `certflow_compliance_report_timestamp_seconds`, once a whole-inventory
/// report was computed by this process.
pub fn render_metrics(out: &mut String) {
    let Some((at, counts)) = LAST.read().ok().and_then(|l| l.clone()) else {
        return;
    };
    out.push_str("# HELP certflow_compliance_findings Findings of the last whole-inventory compliance report computed by this process, by rule and severity.\n# TYPE certflow_compliance_findings gauge\n");
    for rule in rules::ALL {
        for severity in Severity::ALL {
            let n = counts
                .get(&(rule.to_owned(), severity.as_str().to_owned()))
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "certflow_compliance_findings{{rule=\"{rule}\",severity=\"{}\"}} {n}",
                severity.as_str()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP certflow_compliance_report_timestamp_seconds When that report was computed.\n# TYPE certflow_compliance_report_timestamp_seconds gauge\ncertflow_compliance_report_timestamp_seconds {}",
        at.unix_timestamp()
    );
}
