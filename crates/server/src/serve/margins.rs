//! The renewal margins at start: what the `[renewal]` settings take in the
//! worst case (a scan's wait, a dead worker's takeover, a failed attempt and
//! its retry), the shortest lifetime each renewal policy then keeps safe, and
//! the active certificates with less time left at renewal than that. Warnings
//! only: a server that refuses to start renews nothing at all, and a new
//! certificate is checked (and warned about) when it is created.

use certflow_core::error::DomainResult;
use certflow_core::model::{Certificate, CertificateQuery, CertificateStatus, SortKey};
use certflow_core::ports::MetadataStore;
use certflow_core::renewal::{MarginFit, RenewalMargin, RenewalPolicy};

use crate::config::RenewalConfig;

/// How many of the soonest-expiring active certificates the start-up check
/// reads: short-lived certificates are always among them.
const SOONEST: u32 = 200;

/// A lease this long only delays takeover: heartbeats keep a live worker's
/// job however long it runs.
const LONG_LEASE_SECS: u64 = 60;

/// Logs the margins of `renewal` and warns about the certificates of `store`
/// that do not fit them. A failed read is logged, never fatal.
pub(super) async fn check(renewal: &RenewalConfig, store: &dyn MetadataStore) {
    let margin = renewal.margin();
    for (key, policy) in policies(renewal) {
        tracing::info!("{}", policy_line(&key, policy, &margin));
    }
    if renewal.lease_secs > LONG_LEASE_SECS {
        tracing::warn!(
            "renewal.lease_secs = {}: the jobs of a worker that dies wait that long before \
             another worker takes them over. Heartbeats keep a live worker's job however long \
             it runs, and renewal.work_timeout_secs ({}) bounds a stuck attempt, so a long \
             lease only delays takeover; the default is 15",
            renewal.lease_secs,
            renewal.work_timeout_secs
        );
    }
    match soonest_expiring(store).await {
        Ok(certs) => {
            if let Some(line) = certificates_line(&certs, &margin) {
                tracing::warn!("{line}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "renewal margins: cannot read the certificates"),
    }
}

/// Every configured renewal policy with its configuration key.
fn policies(renewal: &RenewalConfig) -> Vec<(String, &RenewalPolicy)> {
    let p = &renewal.policy;
    std::iter::once(("renewal.policy.default".to_owned(), &p.default))
        .chain(
            p.teams
                .iter()
                .map(|(k, v)| (format!("renewal.policy.teams.{k}"), v)),
        )
        .chain(
            p.issuers
                .iter()
                .map(|(k, v)| (format!("renewal.policy.issuers.{k}"), v)),
        )
        .collect()
}

/// The shortest lifetime `policy` keeps through the worst case of `margin`.
fn policy_line(key: &str, policy: &RenewalPolicy, margin: &RenewalMargin) -> String {
    let needed = time::Duration::try_from(margin.through_retry()).unwrap_or(time::Duration::MAX);
    let shortest = match policy.shortest_lifetime_leaving(needed) {
        Some(l) => format!("of at least {} s", l.whole_seconds()),
        None => "of no lifetime up to ten years".to_owned(),
    };
    format!(
        "renewal margins: certificates under {key} (renew_at_fraction {}, jitter_fraction {}) \
         {shortest} renew in time through the worst case of these settings, {}",
        policy.renew_at_fraction,
        policy.jitter_fraction,
        margin.explain()
    )
}

/// Active managed certificates, soonest-expiring first.
async fn soonest_expiring(store: &dyn MetadataStore) -> DomainResult<Vec<Certificate>> {
    let page = store
        .list_certificates(&CertificateQuery {
            status: Some(CertificateStatus::Active),
            managed: Some(true),
            sort: SortKey::NotAfter,
            limit: SOONEST,
            ..CertificateQuery::default()
        })
        .await?;
    Ok(page.items)
}

/// The warning about those of `certs` whose current version has less time
/// left at renewal than `margin` needs, naming the tightest; `None` when all fit.
fn certificates_line(certs: &[Certificate], margin: &RenewalMargin) -> Option<String> {
    let short: Vec<(&Certificate, time::Duration, MarginFit)> = certs
        .iter()
        .map(|c| {
            let left = c.not_after - c.renew_after;
            (c, left, margin.fit(left))
        })
        .filter(|(_, _, fit)| *fit != MarginFit::Fits)
        .collect();
    let (tightest, left, fit) = short.iter().min_by_key(|(_, left, _)| *left)?;
    let consequence = match fit {
        MarginFit::NoRetry => "a failed attempt after a dead worker lets it expire",
        _ => "a worker dying mid-renewal (or the scheduler's wait) lets it expire",
    };
    Some(format!(
        "renewal margins: {} of the {} soonest-expiring active certificates have less time \
         left at renewal than the worst case of the [renewal] settings needs, {}; the \
         tightest, {} ({}), has {} s: {consequence}. Lower those settings, or give these \
         certificates longer lifetimes or an earlier renewal (renew_at_fraction, \
         jitter_fraction)",
        short.len(),
        certs.len(),
        margin.explain(),
        tightest.name,
        tightest.id,
        left.whole_seconds()
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_policy_is_named_with_the_shortest_lifetime_it_keeps_safe() {
        let mut renewal = RenewalConfig::default();
        renewal.policy.teams.insert(
            "payments".into(),
            RenewalPolicy {
                renew_at_fraction: 0.5,
                renew_before_days: None,
                jitter_fraction: 0.0,
            },
        );
        let lines: Vec<String> = policies(&renewal)
            .into_iter()
            .map(|(key, p)| policy_line(&key, p, &renewal.margin()))
            .collect();
        // Defaults: 60 + 15 + 30 + 30 + 30 = 165 s; 2/3 with 10 % jitter
        // leaves 0.3 of the lifetime: 550 s. Half, no jitter: 330 s.
        assert!(
            lines[0].contains("renewal.policy.default")
                && lines[0].contains("at least 550 s")
                && lines[0].contains("165 s = scheduler_interval_secs 60"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("renewal.policy.teams.payments")
                && lines[1].contains("at least 330 s"),
            "{}",
            lines[1]
        );
    }

    fn cert(name: &str, left_at_renewal: i64) -> Certificate {
        let now = time::OffsetDateTime::now_utc();
        Certificate {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
            team: "payments".into(),
            labels: Default::default(),
            profile: certflow_core::Profile::TlsServer,
            key_type: certflow_core::model::KeyType::EcdsaP256,
            key_source: certflow_core::model::KeySource::Server,
            names: vec![],
            validity_days: 1,
            validity_secs: None,
            issuer_id: uuid::Uuid::new_v4(),
            renewal: RenewalPolicy::default(),
            status: CertificateStatus::Active,
            managed: true,
            current_version: 1,
            not_after: now + time::Duration::seconds(left_at_renewal),
            renew_after: now,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn the_tightest_certificate_is_named() {
        let margin = RenewalConfig::default().margin();
        assert_eq!(certificates_line(&[cert("roomy", 3600)], &margin), None);
        let line = certificates_line(
            &[cert("roomy", 3600), cert("tight", 90), cert("ok-ish", 120)],
            &margin,
        )
        .unwrap();
        assert!(
            line.contains("2 of the 3") && line.contains("tight (") && line.contains("has 90 s"),
            "{line}"
        );
        assert!(line.contains("a worker dying mid-renewal"), "{line}");
        let line = certificates_line(&[cert("ok-ish", 120)], &margin).unwrap();
        assert!(
            line.contains("a failed attempt after a dead worker"),
            "{line}"
        );
    }
}
