//! CloudWatch Embedded Metric Format: with `[log] emf = true` the API role
//! prints the domain gauges of `/metrics` to stdout every [`INTERVAL`] as EMF
//! JSON lines, which the awslogs driver ships and CloudWatch Logs turns into
//! metrics in namespace [`NAMESPACE`] with no agent or `PutMetricData` call.
//!
//! One line carries the dimensionless gauges; each issuer gets a line of its
//! own with `IssuerUp` under dimension `Issuer`. EMF takes a metric's value
//! and a dimension's value from the top-level member of that name, so one
//! document can hold only one `IssuerUp` and one `Issuer`: several issuers
//! cannot share a line, whatever dimension sets it declares.
//!
//! The gauges are read once by [`gather`], which `/metrics` uses too.

use std::collections::BTreeMap;
use std::time::Duration;

use certflow_core::model::{CertificateQuery, CertificateStats, CertificateStatus, FleetStats};
use certflow_core::notify::{DeliveryQuery, DeliveryState};
use certflow_core::renewal::QueueStats;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::gauges::{DomainMetrics, EXPIRING_WITHIN, NOT_SEEN_WITHIN};
use crate::state::AppState;

/// The CloudWatch namespace of the metrics.
pub const NAMESPACE: &str = "certflow";
/// How often the lines are written.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The domain gauges at one instant; a read that failed is `None` (or left
/// out) and logged, so the others still get out.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Certificates by status, expiries, expiring without renewal.
    pub certificates: Option<CertificateStats>,
    /// Agents and deployments (API role only: needs [`DomainMetrics`]).
    pub fleet: Option<FleetStats>,
    /// Issuer reachability from this replica's last probe (API role only).
    pub issuers: Option<BTreeMap<String, bool>>,
    /// The renewal queue.
    pub queue: Option<QueueStats>,
    /// Active managed certificates whose current version has less time
    /// left than `[renewal] expected_renewal_secs` (expired ones included),
    /// with that threshold in seconds.
    pub renewal_at_risk: Option<(u64, u64)>,
    /// Notification deliveries by state (those that could be counted).
    pub deliveries: Vec<(DeliveryState, u64)>,
}

/// Reads every domain gauge once, for `/metrics` and for EMF alike.
pub async fn gather(
    state: &AppState,
    domain: Option<&DomainMetrics>,
    now: OffsetDateTime,
) -> Gauges {
    let mut g = Gauges::default();
    match state
        .services
        .store()
        .certificate_stats(now + EXPIRING_WITHIN)
        .await
    {
        Ok(stats) => g.certificates = Some(stats),
        Err(e) => tracing::warn!(error = %e, "metrics: certificate stats unavailable"),
    }
    if let Some(domain) = domain {
        match domain
            .deployments
            .fleet_stats(now - NOT_SEEN_WITHIN, now - domain.drift_after)
            .await
        {
            Ok(fleet) => g.fleet = Some(fleet),
            Err(e) => tracing::warn!(error = %e, "metrics: agent and deployment stats unavailable"),
        }
        g.issuers = Some(domain.issuers.snapshot());
    }
    match state.renewal.queue.stats().await {
        Ok(s) => g.queue = Some(s),
        Err(e) => tracing::warn!(error = %e, "metrics: renewal queue stats unavailable"),
    }
    if let Some(margin) = state.services.renewal_margin() {
        let within = time::Duration::try_from(margin.renewal).unwrap_or(time::Duration::MAX);
        let at_risk = CertificateQuery {
            status: Some(CertificateStatus::Active),
            managed: Some(true),
            expires_before: Some(now.saturating_add(within)),
            limit: 1,
            ..CertificateQuery::default()
        };
        match state.services.store().list_certificates(&at_risk).await {
            Ok(page) => g.renewal_at_risk = Some((page.total, margin.renewal.as_secs())),
            Err(e) => tracing::warn!(error = %e, "metrics: renewals at risk unavailable"),
        }
    }
    for st in DeliveryState::ALL {
        let q = DeliveryQuery {
            state: Some(st),
            limit: 1,
            ..Default::default()
        };
        if let Ok(page) = state.renewal.notifications.list_deliveries(&q).await {
            g.deliveries.push((st, page.total));
        }
    }
    g
}

/// One EMF document: `dimensions` (name, value) become top-level members
/// and the directive's single dimension set; `metrics` (name, unit, value)
/// become top-level numbers and the directive's metric definitions.
fn document(
    timestamp_ms: i64,
    dimensions: &[(&str, &str)],
    metrics: &[(&str, &str, f64)],
) -> String {
    let mut root = Map::new();
    for (name, value) in dimensions {
        root.insert((*name).to_owned(), Value::from(*value));
    }
    for (name, _, value) in metrics {
        root.insert((*name).to_owned(), Value::from(*value));
    }
    let dimension_set: Vec<&str> = dimensions.iter().map(|(n, _)| *n).collect();
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, unit, _)| json!({ "Name": name, "Unit": unit }))
        .collect();
    root.insert(
        "_aws".to_owned(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                // An empty dimension set publishes the metrics without dimensions.
                "Dimensions": [dimension_set],
                "Metrics": definitions,
            }],
        }),
    );
    Value::Object(root).to_string()
}

/// The EMF lines of `g` at `now`: the dimensionless gauges that were read
/// (none when no read succeeded), then one `IssuerUp` line per issuer.
pub fn render(g: &Gauges, now: OffsetDateTime) -> Vec<String> {
    let ts = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let mut metrics: Vec<(&str, &str, f64)> = Vec::new();
    if let Some(c) = &g.certificates {
        metrics.push((
            "CertificatesExpiringWithoutRenewal",
            "Count",
            c.expiring_without_renewal as f64,
        ));
    }
    if let Some((n, _)) = g.renewal_at_risk {
        metrics.push(("RenewalsAtRisk", "Count", n as f64));
    }
    if let Some(q) = &g.queue {
        metrics.push(("RenewalJobsFailing", "Count", q.failing as f64));
        metrics.push(("RenewalJobsDead", "Count", q.dead as f64));
        metrics.push((
            "RenewalOldestJobAgeSeconds",
            "Seconds",
            q.oldest_age_secs as f64,
        ));
    }
    if let Some(f) = &g.fleet {
        metrics.push(("DeploymentsDrift", "Count", f.deployments_drift as f64));
        metrics.push((
            "DeploymentsFailed",
            "Count",
            (f.deployments_failed + f.deployments_broken) as f64,
        ));
    }
    if let Some((_, n)) = g
        .deliveries
        .iter()
        .find(|(st, _)| *st == DeliveryState::Failed)
    {
        metrics.push(("NotificationDeliveriesFailed", "Count", *n as f64));
    }
    let mut lines = Vec::new();
    if !metrics.is_empty() {
        lines.push(document(ts, &[], &metrics));
    }
    for (issuer, up) in g.issuers.iter().flatten() {
        let value = if *up { 1.0 } else { 0.0 };
        lines.push(document(
            ts,
            &[("Issuer", issuer.as_str())],
            &[("IssuerUp", "None", value)],
        ));
    }
    lines
}

/// With `enabled`, writes the EMF lines to stdout every [`INTERVAL`] (first
/// after one interval, once the issuer probe has run) until `stop`.
pub fn spawn(
    enabled: bool,
    state: AppState,
    domain: DomainMetrics,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !enabled {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + INTERVAL, INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = OffsetDateTime::now_utc();
                    let gauges = gather(&state, Some(&domain), now).await;
                    // Straight to stdout, not through tracing: CloudWatch wants the
                    // EMF object as the whole log event, not inside a log record.
                    let mut out = std::io::stdout().lock();
                    for line in render(&gauges, now) {
                        let _ = std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes());
                    }
                    let _ = std::io::Write::flush(&mut out);
                }
                _ = stop.changed() => return,
            }
        }
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use certflow_core::model::CertificateStatus;

    fn sample() -> Gauges {
        Gauges {
            certificates: Some(CertificateStats {
                by_status: vec![(CertificateStatus::Active, 4)],
                earliest_expiry_by_team: vec![],
                expiring_without_renewal: 2,
            }),
            fleet: Some(FleetStats {
                deployments_failed: 1,
                deployments_broken: 2,
                deployments_drift: 5,
                ..Default::default()
            }),
            issuers: Some(BTreeMap::from([
                ("internal".to_owned(), true),
                ("letsencrypt \"prod\"".to_owned(), false),
            ])),
            queue: Some(QueueStats {
                queued: 3,
                running: 1,
                dead: 6,
                failing: 7,
                oldest_age_secs: 120,
            }),
            deliveries: vec![(DeliveryState::Pending, 0), (DeliveryState::Failed, 9)],
            renewal_at_risk: Some((3, 30)),
        }
    }

    /// Checks one line against the EMF specification's structure and returns
    /// it parsed: `_aws` with a millisecond `Timestamp` and `CloudWatchMetrics`
    /// directives, each metric a numeric top-level member, each dimension a
    /// string top-level member.
    fn check(line: &str, now: OffsetDateTime) -> Value {
        assert!(!line.contains('\n'), "one line: {line}");
        let doc: Value = serde_json::from_str(line).unwrap();
        let aws = &doc["_aws"];
        assert_eq!(
            aws["Timestamp"].as_i64().unwrap(),
            (now.unix_timestamp_nanos() / 1_000_000) as i64
        );
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert!(!directives.is_empty());
        for d in directives {
            assert_eq!(d["Namespace"], NAMESPACE);
            for set in d["Dimensions"].as_array().unwrap() {
                let set = set.as_array().unwrap();
                assert!(set.len() <= 30);
                for dim in set {
                    let name = dim.as_str().unwrap();
                    assert!(
                        doc[name].is_string(),
                        "dimension {name} has no member: {line}"
                    );
                }
            }
            let metrics = d["Metrics"].as_array().unwrap();
            assert!(!metrics.is_empty() && metrics.len() <= 100);
            for m in metrics {
                let name = m["Name"].as_str().unwrap();
                assert!(doc[name].is_number(), "metric {name} has no number: {line}");
                assert!(m["Unit"].is_string());
            }
        }
        doc
    }

    #[test]
    fn emf_lines_follow_the_specification_and_carry_the_gauges() {
        let now = OffsetDateTime::from_unix_timestamp_nanos(1_790_000_000_123_456_789).unwrap();
        let lines = render(&sample(), now);
        assert_eq!(lines.len(), 3, "{lines:?}");
        let main = check(&lines[0], now);
        assert_eq!(
            main["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
        for (name, value) in [
            ("CertificatesExpiringWithoutRenewal", 2.0),
            ("RenewalsAtRisk", 3.0),
            ("RenewalJobsFailing", 7.0),
            ("RenewalJobsDead", 6.0),
            ("RenewalOldestJobAgeSeconds", 120.0),
            ("DeploymentsDrift", 5.0),
            ("DeploymentsFailed", 3.0),
            ("NotificationDeliveriesFailed", 9.0),
        ] {
            assert_eq!(main[name].as_f64(), Some(value), "{name}");
        }
        let named: Vec<&str> = main["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(named.len(), 8);
        for (line, issuer, up) in [
            (&lines[1], "internal", 1.0),
            (&lines[2], "letsencrypt \"prod\"", 0.0),
        ] {
            let doc = check(line, now);
            assert_eq!(doc["Issuer"], issuer);
            assert_eq!(doc["IssuerUp"].as_f64(), Some(up));
            assert_eq!(
                doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
                json!([["Issuer"]])
            );
        }
    }

    #[test]
    fn a_failed_read_leaves_its_metrics_out_not_zero() {
        let now = OffsetDateTime::now_utc();
        let mut g = sample();
        g.queue = None;
        g.fleet = None;
        g.issuers = None;
        let lines = render(&g, now);
        assert_eq!(lines.len(), 1);
        let doc = check(&lines[0], now);
        assert!(doc.get("RenewalJobsFailing").is_none());
        assert!(doc.get("DeploymentsDrift").is_none());
        assert_eq!(
            doc["CertificatesExpiringWithoutRenewal"].as_f64(),
            Some(2.0)
        );
        assert!(render(&Gauges::default(), now).is_empty());
    }
}
