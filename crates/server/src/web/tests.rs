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
