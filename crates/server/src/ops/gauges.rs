//! The domain gauges of `/metrics` that are not the renewal queue's
//! (certificates, agents, deployments, issuer reachability), all read from the
//! shared database or from this replica's last issuer probe, so every replica
//! reports the whole system; and the issuer probe that feeds them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::telemetry::metrics::escape;

/// How far ahead `certflow_certificates_expiring_without_renewal` looks.
pub const EXPIRING_WITHIN: time::Duration = time::Duration::days(7);
/// Agents not seen for this long count in `certflow_agents_not_seen`.
pub const NOT_SEEN_WITHIN: time::Duration = time::Duration::hours(1);
/// How often the API role probes every issuer.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Bound on one issuer probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/metrics` needs beyond the application state: the deployment store,
/// the drift threshold and the issuer probe's results. The API role layers it
/// as an extension; without it those families are left out.
#[derive(Clone)]
pub struct DomainMetrics {
    /// Agents and their deployments.
    pub deployments: Arc<dyn certflow_core::ports::DeploymentStore>,
    /// `[agent] drift_after_seconds`.
    pub drift_after: time::Duration,
    /// Issuer reachability, refreshed by [`spawn_issuer_probe`].
    pub issuers: IssuerHealth,
}

/// The last probe result of every issuer, by issuer name.
#[derive(Clone, Default)]
pub struct IssuerHealth(Arc<RwLock<BTreeMap<String, bool>>>);

impl IssuerHealth {
    /// A copy of the results.
    pub fn snapshot(&self) -> BTreeMap<String, bool> {
        self.0.read().map(|m| m.clone()).unwrap_or_default()
    }

    fn replace(&self, results: BTreeMap<String, bool>) {
        if let Ok(mut m) = self.0.write() {
            *m = results;
        }
    }
}

/// How to reach an ACME issuer's directory.
#[derive(Debug, Clone)]
pub struct AcmeProbe {
    /// The directory URL.
    pub directory_url: String,
    /// The CA bundle its TLS is verified with (`ca_bundle`), if not the system's.
    pub ca_bundle: Option<PathBuf>,
}

/// Probes every issuer now: an ACME issuer is up when a GET of its
/// directory answers 2xx within [`PROBE_TIMEOUT`] (TLS verified with its
/// own CA bundle); the internal CA (or an imported one) when its record and
/// its key are there: the sealed blob, or the PKCS#11 token or KMS key
/// answering within [`PROBE_TIMEOUT`]. Failures are logged once per change.
pub async fn probe_issuers(
    services: &certflow_services::Services,
    acme: &BTreeMap<String, AcmeProbe>,
    health: &IssuerHealth,
) {
    let issuers = match services.store().list_issuers().await {
        Ok(i) => i,
        Err(e) => {
            // Nothing is known about any issuer while the database is away.
            tracing::warn!(error = %e, "issuer probe: cannot list issuers");
            health.replace(BTreeMap::new());
            return;
        }
    };
    let before = health.snapshot();
    let mut results = BTreeMap::new();
    for issuer in issuers {
        let up = match issuer.kind {
            // Nothing to reach: certflow never issues from an external CA.
            certflow_core::model::IssuerKind::External => continue,
            certflow_core::model::IssuerKind::Acme => match acme.get(&issuer.name) {
                Some(probe) => probe_acme(probe).await,
                None => Err("not configured on this server".to_owned()),
            },
            // Its sealed key is in the blob store, or its token or KMS
            // answers for its key (bounded like an ACME probe).
            certflow_core::model::IssuerKind::Internal => {
                match tokio::time::timeout(PROBE_TIMEOUT, services.probe_issuer_key(&issuer)).await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("CA key: {e}")),
                    Err(_) => Err(format!("CA key: no answer within {PROBE_TIMEOUT:?}")),
                }
            }
        };
        if let Err(why) = &up
            && before.get(&issuer.name) != Some(&false)
        {
            tracing::warn!(issuer = %issuer.name, reason = %why, "issuer unreachable");
        }
        results.insert(issuer.name, up.is_ok());
    }
    health.replace(results);
}

async fn probe_acme(probe: &AcmeProbe) -> Result<(), String> {
    let mut builder = reqwest::Client::builder().timeout(PROBE_TIMEOUT);
    if let Some(path) = &probe.ca_bundle {
        let pem = tokio::fs::read(path)
            .await
            .map_err(|e| format!("ca_bundle {}: {e}", path.display()))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_bundle {}: {e}", path.display()))?;
        builder = builder.tls_certs_only(roots);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let resp = client
        .get(&probe.directory_url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("directory answered {}", resp.status()))
    }
}

/// Probes the issuers every [`PROBE_INTERVAL`] (first at once) until `stop`.
pub fn spawn_issuer_probe(
    services: certflow_services::Services,
    acme: BTreeMap<String, AcmeProbe>,
    health: IssuerHealth,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => probe_issuers(&services, &acme, &health).await,
                _ = stop.changed() => return,
            }
        }
    })
}

/// Appends one gauge family: `# HELP`, `# TYPE` and a sample per label set.
fn gauge<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, value) in samples {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Appends the certificate gauges from `stats` read at `now`.
pub fn render_certificates(
    out: &mut String,
    stats: &certflow_core::model::CertificateStats,
    now: time::OffsetDateTime,
) {
    gauge(
        out,
        "certflow_certificates",
        "Certificates by status.",
        stats
            .by_status
            .iter()
            .map(|(st, n)| (vec![("status", st.as_str())], *n as f64)),
    );
    gauge(
        out,
        "certflow_certificate_expiry_min_seconds",
        "Seconds until the earliest expiry among each team's active certificates (negative: expired).",
        stats.earliest_expiry_by_team.iter().map(|(team, at)| {
            (
                vec![("team", team.as_str())],
                (*at - now).whole_seconds() as f64,
            )
        }),
    );
    gauge(
        out,
        "certflow_certificates_expiring_without_renewal",
        "Active certificates whose current version expires within the window (or has expired) with no renewal job queued or running.",
        [(
            vec![("within", "7d")],
            stats.expiring_without_renewal as f64,
        )],
    );
}

/// Appends `certflow_renewal_at_risk`: `n` certificates with less than
/// `within_secs` left on their current version.
pub fn render_at_risk(out: &mut String, n: u64, within_secs: u64) {
    let within = format!("{within_secs}s");
    gauge(
        out,
        "certflow_renewal_at_risk",
        "Active managed certificates whose current version has less time left than a renewal is expected to take ([renewal] expected_renewal_secs, the label), expired ones included: renewal has not happened in time, whatever the cause (no live worker, the CA down, a job stuck).",
        [(vec![("within", within.as_str())], n as f64)],
    );
}

/// Appends the agent and deployment gauges.
pub fn render_fleet(out: &mut String, f: &certflow_core::model::FleetStats) {
    gauge(
        out,
        "certflow_agents",
        "Agents by status.",
        [
            ("active", f.agents_active),
            ("disabled", f.agents_disabled),
            ("revoked", f.agents_revoked),
        ]
        .map(|(st, n)| (vec![("status", st)], n as f64)),
    );
    gauge(
        out,
        "certflow_agents_not_seen",
        "Active agents that have not called for the window (never since enrolment included).",
        [(vec![("within", "1h")], f.agents_not_seen as f64)],
    );
    gauge(
        out,
        "certflow_deployments",
        "Assignments of active certificates to active agents by the agent's last report (pending: none yet); drift: the current version not reported installed within [agent] drift_after_seconds of its issue.",
        [
            ("installed", f.deployments_installed),
            ("failed", f.deployments_failed),
            ("broken", f.deployments_broken),
            ("pending", f.deployments_pending),
            ("drift", f.deployments_drift),
        ]
        .map(|(st, n)| (vec![("status", st)], n as f64)),
    );
}

/// Appends `certflow_issuer_up` from the last probe.
pub fn render_issuers(out: &mut String, health: &BTreeMap<String, bool>) {
    gauge(
        out,
        "certflow_issuer_up",
        "1 when the issuer answered this replica's last probe (ACME directory reachable; internal CA key present), else 0.",
        health
            .iter()
            .map(|(name, up)| (vec![("issuer", name.as_str())], if *up { 1.0 } else { 0.0 })),
    );
}
