#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use time::macros::datetime;

const NB: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);

fn policy(fraction: f64, days: Option<u32>, jitter: f64) -> RenewalPolicy {
    RenewalPolicy {
        renew_at_fraction: fraction,
        renew_before_days: days,
        jitter_fraction: jitter,
    }
}

#[test]
fn default_policy_renews_at_two_thirds_plus_up_to_a_tenth_of_the_rest() {
    let na = NB + Duration::days(90);
    let p = RenewalPolicy::default();
    assert_eq!(p.renew_after(NB, na, None, 0.0), NB + Duration::days(60));
    let w = p.window(NB, na);
    assert_eq!(w.start, NB + Duration::days(60));
    assert_eq!(w.end, NB + Duration::days(63));
    let late = p.renew_after(NB, na, None, 0.999_999);
    assert!(late > NB + Duration::days(62) && late <= w.end, "{late}");
}

#[test]
fn fixed_lead_time_wins_when_earlier() {
    // 2/3 of 90 days is day 60; 45 days before expiry is day 45.
    let na = NB + Duration::days(90);
    let p = policy(2.0 / 3.0, Some(45), 0.0);
    assert_eq!(p.renew_after(NB, na, None, 0.5), NB + Duration::days(45));
    // 10 days before expiry is day 80: the fraction (day 60) is earlier and wins.
    let p = policy(2.0 / 3.0, Some(10), 0.0);
    assert_eq!(p.renew_after(NB, na, None, 0.5), NB + Duration::days(60));
}

#[test]
fn lead_time_longer_than_the_lifetime_means_renew_at_once() {
    let na = NB + Duration::days(7);
    let p = policy(2.0 / 3.0, Some(30), 0.0);
    assert_eq!(p.renew_after(NB, na, None, 0.3), NB);
}

#[test]
fn two_minute_certificate_renews_after_eighty_seconds() {
    let na = NB + Duration::seconds(120);
    let at = RenewalPolicy::default().renew_after(NB, na, None, 0.0);
    assert_eq!(at, NB + Duration::seconds(80));
}

#[test]
fn ari_window_is_followed_when_it_is_earlier() {
    let na = NB + Duration::days(90);
    let ari = SuggestedWindow {
        start: NB + Duration::days(10),
        end: NB + Duration::days(11),
    };
    let at = RenewalPolicy::default().renew_after(NB, na, Some(ari), 0.5);
    assert_eq!(at, NB + Duration::days(10) + Duration::hours(12));
}

#[test]
fn ari_window_later_than_the_policy_allows_is_ignored() {
    let na = NB + Duration::days(90);
    let ari = SuggestedWindow {
        start: NB + Duration::days(85),
        end: NB + Duration::days(86),
    };
    let p = RenewalPolicy::default();
    assert_eq!(
        p.renew_after(NB, na, Some(ari), 0.0),
        NB + Duration::days(60)
    );
    // An inverted window is nonsense from the CA: ignored too.
    let bad = SuggestedWindow {
        start: NB + Duration::days(20),
        end: NB + Duration::days(10),
    };
    assert_eq!(
        p.renew_after(NB, na, Some(bad), 0.0),
        NB + Duration::days(60)
    );
}

#[test]
fn validation_names_each_bad_field() {
    let err = policy(1.0, Some(0), 0.9).validate("renewal").unwrap_err();
    let text = err.to_string();
    for field in [
        "renewal.renew_at_fraction",
        "renewal.renew_before_days",
        "renewal.jitter_fraction",
    ] {
        assert!(text.contains(field), "{text}");
    }
    assert!(RenewalPolicy::default().validate("renewal").is_ok());
}

#[test]
fn defaults_resolve_team_then_issuer_then_global() {
    let mut d = RenewalDefaults::default();
    d.teams.insert("payments".into(), policy(0.5, None, 0.0));
    d.issuers
        .insert("letsencrypt".into(), policy(0.75, Some(30), 0.1));
    assert_eq!(d.resolve("payments", "letsencrypt").renew_at_fraction, 0.5);
    assert_eq!(d.resolve("web", "letsencrypt").renew_at_fraction, 0.75);
    assert_eq!(d.resolve("web", "internal"), RenewalPolicy::default());
}

#[test]
fn backoff_doubles_and_caps() {
    let base = StdDuration::from_secs(10);
    let cap = StdDuration::from_secs(300);
    assert_eq!(backoff(1, base, cap, 1.0), StdDuration::from_secs(10));
    assert_eq!(backoff(2, base, cap, 1.0), StdDuration::from_secs(20));
    assert_eq!(backoff(3, base, cap, 0.0), StdDuration::from_secs(20));
    assert_eq!(backoff(50, base, cap, 1.0), cap);
}

#[test]
fn jitter_seed_spreads_a_fleet() {
    // 1,000 certificates issued together: their seeds cover [0, 1) evenly enough
    // that no tenth of the window gets more than twice its share.
    let mut buckets = [0u32; 10];
    for _ in 0..1000 {
        let u = jitter_seed(Uuid::now_v7(), 1);
        assert!((0.0..1.0).contains(&u));
        buckets[(u * 10.0) as usize] += 1;
    }
    assert!(buckets.iter().all(|&b| b > 50 && b < 200), "{buckets:?}");
    let id = Uuid::now_v7();
    assert_eq!(jitter_seed(id, 3), jitter_seed(id, 3));
    assert_ne!(jitter_seed(id, 3), jitter_seed(id, 4));
}

#[test]
fn job_state_round_trips() {
    for s in [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Dead,
    ] {
        assert_eq!(JobState::parse(s.as_str()), Some(s));
    }
    assert_eq!(JobState::parse("nope"), None);
}

fn any_policy() -> impl Strategy<Value = RenewalPolicy> {
    (0.01f64..0.99, proptest::option::of(1u32..400), 0.0f64..=0.5)
        .prop_map(|(f, d, j)| policy(f, d, j))
}

proptest! {
    /// Whatever the policy, lifetime and jitter: renewal is never before
    /// issuance, never at or after expiry, and inside the policy's window.
    #[test]
    fn renewal_time_lies_inside_the_lifetime(
        p in any_policy(),
        lifetime_secs in 120i64..(5 * 365 * 86_400),
        u in 0.0f64..1.0,
    ) {
        let na = NB + Duration::seconds(lifetime_secs);
        let w = p.window(NB, na);
        let at = p.renew_after(NB, na, None, u);
        prop_assert!(at >= NB);
        prop_assert!(at < na, "renew at {at} not before expiry {na}");
        prop_assert!(at >= w.start && at <= w.end);
        // Never later than the fraction or the lead time asks, beyond the jitter share.
        let by_fraction = NB + Duration::seconds(lifetime_secs) * p.renew_at_fraction;
        prop_assert!(w.start <= by_fraction);
        if let Some(days) = p.renew_before_days {
            prop_assert!(w.start <= (na - Duration::days(i64::from(days))).max(NB));
        }
        // At least half of the remaining lifetime is left when renewal starts at the latest.
        prop_assert!(na - w.end >= (na - w.start) / 2);
    }

    /// Jitter moves renewal monotonically: a larger seed never renews earlier.
    #[test]
    fn jitter_is_monotonic(p in any_policy(), days in 1i64..800, a in 0.0f64..1.0, b in 0.0f64..1.0) {
        let na = NB + Duration::days(days);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(p.renew_after(NB, na, None, lo) <= p.renew_after(NB, na, None, hi));
    }

    /// An ARI window is followed only when it ends no later than the policy's window.
    #[test]
    fn ari_never_delays_beyond_the_policy(
        p in any_policy(),
        days in 2i64..400,
        s in 0i64..(400 * 86_400),
        len in 0i64..(30 * 86_400),
        u in 0.0f64..1.0,
    ) {
        let na = NB + Duration::days(days);
        let ari = SuggestedWindow { start: NB + Duration::seconds(s), end: NB + Duration::seconds(s + len) };
        let at = p.renew_after(NB, na, Some(ari), u);
        prop_assert!(at <= p.window(NB, na).end);
    }

    /// Backoff stays within [step/2, cap] and never shrinks as attempts grow (at equal seed).
    #[test]
    fn backoff_is_bounded_and_non_decreasing(attempt in 1u32..64, base_ms in 1u64..60_000, cap_s in 1u64..86_400, u in 0.0f64..=1.0) {
        let base = StdDuration::from_millis(base_ms);
        let cap = StdDuration::from_secs(cap_s).max(base);
        let d = backoff(attempt, base, cap, u);
        prop_assert!(d <= cap);
        prop_assert!(d >= base.min(cap) / 2);
        prop_assert!(backoff(attempt + 1, base, cap, u) >= d);
    }
}

/// A 3-minute certificate renewing at half its life with 10 % jitter has 81 s
/// left at worst; without jitter, 90 s.
#[test]
fn least_left_at_renewal_is_at_the_end_of_the_window() {
    let three_minutes = Duration::seconds(180);
    assert_eq!(
        policy(0.5, None, 0.1).least_left_at_renewal(three_minutes),
        Duration::seconds(81)
    );
    assert_eq!(
        policy(0.5, None, 0.0).least_left_at_renewal(three_minutes),
        Duration::seconds(90)
    );
    // A lead time longer than the lifetime renews at issuance.
    assert_eq!(
        policy(0.5, Some(30), 0.0).least_left_at_renewal(three_minutes),
        three_minutes
    );
}

#[test]
fn shortest_lifetime_leaving_inverts_least_left() {
    let p = policy(0.5, None, 0.1);
    // 165 s at 0.45 of the lifetime: 366.67 s, so 367 s.
    let l = p.shortest_lifetime_leaving(Duration::seconds(165)).unwrap();
    assert_eq!(l, Duration::seconds(367));
    assert!(p.least_left_at_renewal(l) >= Duration::seconds(165));
    assert!(p.least_left_at_renewal(l - Duration::seconds(1)) < Duration::seconds(165));
    // Ten years at 0.99 and full jitter leave about 18 days.
    assert_eq!(
        policy(0.99, None, 0.5).shortest_lifetime_leaving(Duration::days(100)),
        None
    );
}

fn margin(scan: u64, takeover: u64, renewal: u64, retry: u64) -> RenewalMargin {
    RenewalMargin {
        scan_interval: StdDuration::from_secs(scan),
        takeover: StdDuration::from_secs(takeover),
        renewal: StdDuration::from_secs(renewal),
        retry: StdDuration::from_secs(retry),
    }
}

#[test]
fn margin_fit_names_what_the_time_left_affords() {
    let m = margin(60, 15, 30, 30);
    assert_eq!(m.through_takeover(), StdDuration::from_secs(105));
    assert_eq!(m.through_retry(), StdDuration::from_secs(165));
    assert_eq!(m.fit(Duration::seconds(165)), MarginFit::Fits);
    assert_eq!(m.fit(Duration::seconds(164)), MarginFit::NoRetry);
    assert_eq!(m.fit(Duration::seconds(105)), MarginFit::NoRetry);
    assert_eq!(m.fit(Duration::seconds(104)), MarginFit::NoTakeover);
    assert_eq!(m.fit(Duration::seconds(-5)), MarginFit::NoTakeover);
    let why = m.explain();
    for key in [
        "165 s",
        "scheduler_interval_secs 60",
        "lease_secs 15",
        "expected_renewal_secs 30",
        "backoff_base_secs 30",
    ] {
        assert!(why.contains(key), "{why}");
    }
    // The old 300 s lease: a 3-minute certificate at half its life (90 s
    // left) cannot ride out a dead worker even with a 1 s scan.
    assert_eq!(
        margin(1, 300, 5, 1).fit(Duration::seconds(90)),
        MarginFit::NoTakeover
    );
    assert_eq!(
        margin(1, 15, 5, 1).fit(Duration::seconds(90)),
        MarginFit::Fits
    );
}
