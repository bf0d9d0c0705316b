use super::*;
use time::macros::datetime;

#[test]
fn default_policy_renews_at_two_thirds_without_jitter_seed() {
    let nb = datetime!(2026-01-01 0:00 UTC);
    let na = nb + Duration::days(90);
    let at = RenewalPolicy::default().renew_after(nb, na, None, 0.0);
    assert_eq!(at, nb + Duration::days(60));
}
