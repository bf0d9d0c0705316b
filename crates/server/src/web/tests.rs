//! Unit tests of the console's pure parts (the router is driven end to end
//! in a real browser by `tests/e2e/console_ui.rs`).

use super::*;

#[test]
fn timeline_bars_scale_to_the_busiest_week_and_show_lone_certificates() {
    let start = time::macros::datetime!(2026-03-02 00:00 UTC);
    let bars = dashboard::bars(&[0, 1, 100, 50], start);
    assert_eq!(bars.len(), 4);
    assert_eq!(bars[0].h, 0);
    assert!(bars[1].h >= 2, "a single certificate is visible");
    assert_eq!(bars[2].h, 160, "the busiest week fills the plot");
    assert_eq!(bars[3].h, 80);
    assert_eq!(bars[2].y + bars[2].h, 180, "bars stand on the axis");
    assert!(
        bars.windows(2).all(|w| w[0].x + w[0].w < w[1].x),
        "no overlap"
    );
    assert_eq!(bars[0].label, "Mar 02");
    assert_eq!(bars[1].range, "Mar 09 – Mar 15");
}

#[test]
fn relative_times_read_naturally() {
    let now = time::macros::datetime!(2026-03-02 12:00 UTC);
    assert_eq!(relative(now + time::Duration::days(3), now), "in 3 days");
    assert_eq!(relative(now - time::Duration::hours(5), now), "5 hours ago");
    assert_eq!(relative(now + time::Duration::seconds(30), now), "now");
    assert_eq!(when(now), "2026-03-02 12:00 UTC");
}

#[test]
fn assets_have_content_hashed_urls() {
    assert!(assets::css_url().starts_with("/console/static/console."));
    assert!(assets::css_url().ends_with(".css"));
    assert!(assets::htmx_url().ends_with(".min.js"));
    assert_ne!(assets::css_url(), "/console/static/console.css");
}

#[test]
fn form_fields_parse_and_missing_ones_are_empty() {
    let f = Form::parse(b"csrf=abc&names=a.example.com%0Ab.example.com&x=").unwrap();
    assert_eq!(f.get("csrf"), "abc");
    assert_eq!(f.get("names"), "a.example.com\nb.example.com");
    assert_eq!(f.get("missing"), "");
}

#[test]
fn csp_forbids_inline_code_plugins_base_and_framing() {
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(CSP.contains(part), "{part}");
    }
    assert!(!CSP.contains("unsafe"));
}

#[test]
fn deployment_rows_say_what_is_served_what_failed_and_whether_it_is_late() {
    use certflow_core::deployments::{
        AssignedCertificate, Deployment, DeploymentState, DeploymentStatus,
    };
    use certflow_core::model::{CertificateStatus, KeySource};
    let t0 = time::macros::datetime!(2026-03-02 12:00 UTC);
    let hour = time::Duration::hours(1);
    let state = |report: Option<Deployment>| DeploymentState {
        agent_id: uuid::Uuid::nil(),
        agent_name: "web-01".into(),
        assigned: AssignedCertificate {
            certificate_id: uuid::Uuid::nil(),
            name: "www".into(),
            team: "web".into(),
            key_source: KeySource::Csr,
            status: CertificateStatus::Active,
            version: 2,
            serial: "02".into(),
            fingerprint_sha256: "ab".into(),
            names: vec![],
            not_after: t0 + time::Duration::days(30),
            issued_at: t0,
            assigned_at: t0,
        },
        last_report: report,
        drift_notified_version: None,
    };
    let report = |version, status, attempted, error: Option<&str>| Deployment {
        agent_id: uuid::Uuid::nil(),
        certificate_id: uuid::Uuid::nil(),
        version,
        fingerprint_sha256: "ab".into(),
        status,
        attempted_version: attempted,
        error: error.map(str::to_owned),
        reported_at: t0,
        agent_version: Some("certflow-agent/1.0".into()),
    };

    let pending = deployments::row(state(None), t0 + time::Duration::minutes(5), hour);
    assert_eq!(
        (
            pending.status.as_str(),
            pending.deployed.as_str(),
            pending.current
        ),
        ("pending", "none", 2)
    );
    assert!(!pending.drift && !pending.up_to_date);
    assert_eq!(pending.reported, "never");

    let late = deployments::row(state(None), t0 + hour, hour);
    assert!(late.drift, "not installed within the tolerance");

    let failed = deployments::row(
        state(Some(report(
            1,
            DeploymentStatus::Failed,
            Some(2),
            Some("reload failed"),
        ))),
        t0 + time::Duration::minutes(5),
        hour,
    );
    assert_eq!(failed.status, "failed");
    assert_eq!(failed.deployed, "1");
    assert_eq!(failed.error, "version 2: reload failed");
    assert_eq!(failed.agent_version, "certflow-agent/1.0");

    let done = deployments::row(
        state(Some(report(2, DeploymentStatus::Installed, None, None))),
        t0 + time::Duration::days(3),
        hour,
    );
    assert!(done.up_to_date && !done.drift);
    assert_eq!(done.error, "");
}

#[test]
fn audit_details_show_unix_times_as_dates_lists_as_lists_and_the_rest_as_it_is() {
    let t = time::macros::datetime!(2026-03-02 12:00 UTC);
    let cert = "0195a3c4-0000-7000-8000-000000000001";
    let details = serde_json::json!({
        "expires_at": t.unix_timestamp(),
        "not_after": t.unix_timestamp(),
        "version": 3,
        "huge_at": 99_999_999_999_999_i64,
        "requested_by_agent": true,
        "teams": ["a", "b"],
        "findings": [],
        "gone": null,
        "certificate_id": cert,
        "items": [{ "certificate_id": cert, "version": 2, "status": "installed" }],
    });
    let facts = audit::details(&details, &audit::Names::default());
    let shown = |term: &str| {
        assert!(facts.iter().any(|f| f.term == term), "no {term}");
        let f = facts.iter().find(|f| f.term == term).unwrap();
        f.values
            .iter()
            .map(|v| v.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(shown("expires"), "2026-03-02 12:00 UTC");
    assert_eq!(shown("not after"), "2026-03-02 12:00 UTC");
    let expires = &facts.iter().find(|f| f.term == "expires").unwrap().values[0];
    assert_eq!(expires.datetime, "2026-03-02T12:00:00Z");
    assert_eq!(shown("version"), "3", "a number that is not a time");
    assert_eq!(
        shown("huge"),
        "99999999999999",
        "past year 9999: not a time"
    );
    assert_eq!(shown("requested by agent"), "yes");
    assert_eq!(shown("teams"), "a, b");
    assert_eq!(shown("findings"), "none");
    assert!(facts.iter().all(|f| f.term != "gone"), "null is left out");
    // A certificate nobody resolved (unknown, or not the reader's) keeps its id, unlinked.
    let id = &facts
        .iter()
        .find(|f| f.term == "certificate")
        .unwrap()
        .values[0];
    assert_eq!((id.text.as_str(), id.href.as_str()), (cert, ""));
    let items = &facts.iter().find(|f| f.term == "items").unwrap().groups;
    assert_eq!(items.len(), 1);
    let terms: Vec<_> = items[0].iter().map(|l| l.term.as_str()).collect();
    assert_eq!(terms, ["certificate", "status", "version"]);
}
