//! HTTP request metrics of both listeners, rendered into `/metrics`: a
//! counter and a latency histogram per (route group, matched route, status).
//!
//! The route label is the router's matched template (`/console/api/v1/certificates/{id}`),
//! never the raw path, and requests no route matched share `route="unmatched"`:
//! the label set is bounded by the routes and statuses certflow has, however
//! many distinct URLs clients send. The group (`agent`, `console`, `pki`,
//! `probe`, `acme`, `other`) tells the two audiences apart from the public and
//! operational endpoints.
//!
//! The domain gauges of `/metrics` live in `crate::ops::gauges`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Route label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// One label set's observations.
#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    /// Cumulative is computed at render time; these are per-bucket counts.
    buckets: [u64; BUCKETS.len()],
}

/// Observations by (group, route, status), and the route labels seen.
#[derive(Default)]
struct Observed {
    series: BTreeMap<(&'static str, &'static str, u16), Series>,
    /// Each route label once, kept for the life of the process: they are
    /// the routes certflow has (and `unmatched`), so a request finds its
    /// series without allocating a key.
    routes: HashSet<&'static str>,
}

impl Observed {
    fn route(&mut self, route: &str) -> &'static str {
        if let Some(known) = self.routes.get(route) {
            return known;
        }
        let kept: &'static str = Box::leak(route.to_owned().into_boxed_str());
        self.routes.insert(kept);
        kept
    }
}

type Registry = Mutex<Observed>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The route group of a path or route template.
pub fn group_of(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "agent" => "agent",
        "console" => "console",
        "pki" => "pki",
        "healthz" | "readyz" | "metrics" => "probe",
        ".well-known" => "acme",
        "acme" => "acme-server",
        _ => "other",
    }
}

/// Records one answered request: `route` is the matched template (or
/// [`UNMATCHED`]), `path` decides the group.
pub fn observe(path: &str, route: &str, status: u16, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    let group = group_of(path);
    let Ok(mut reg) = registry().lock() else {
        return;
    };
    let route = reg.route(route);
    let series = reg.series.entry((group, route, status)).or_default();
    series.count += 1;
    series.sum += secs;
    if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
        series.buckets[i] += 1;
    }
}

/// The route label of a request: the matched template, or [`UNMATCHED`]
/// (fallbacks, including the catch-all a nested router's fallback gets).
pub fn route_label(matched: Option<&MatchedPath>) -> &str {
    match matched.map(MatchedPath::as_str) {
        Some(p) if !p.contains("__private__") && !p.contains("{*") => p,
        _ => UNMATCHED,
    }
}

/// Middleware (`Router::layer`, so it sees the matched route): times the
/// request until its response head and records it.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(req.extensions().get::<MatchedPath>()).to_owned();
    let path = if route == UNMATCHED {
        req.uri().path().to_owned()
    } else {
        route.clone()
    };
    let resp = next.run(req).await;
    observe(&path, &route, resp.status().as_u16(), started.elapsed());
    resp
}

/// A label value as the exposition format wants it.
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the ACME lint counter, the request counter and the latency
/// histogram in Prometheus text format.
pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP certflow_acme_lint_failures_total Certificates ACME CAs issued to this process that certflow's linter finds errors in (kept; the findings are in the issuance's audit event).\n\
         # TYPE certflow_acme_lint_failures_total counter\n\
         certflow_acme_lint_failures_total {}",
        certflow_services::Services::acme_lint_failures()
    );
    out.push_str(
        "# HELP certflow_http_requests_total HTTP requests by route group, matched route and status.\n\
         # TYPE certflow_http_requests_total counter\n",
    );
    let Ok(reg) = registry().lock() else {
        return;
    };
    for ((group, route, status), s) in &reg.series {
        let _ = writeln!(
            out,
            "certflow_http_requests_total{{group=\"{group}\",route=\"{}\",status=\"{status}\"}} {}",
            escape(route),
            s.count
        );
    }
    out.push_str(
        "# HELP certflow_http_request_duration_seconds Time to answer HTTP requests (to the response head) by route group, matched route and status.\n\
         # TYPE certflow_http_request_duration_seconds histogram\n",
    );
    for ((group, route, status), s) in &reg.series {
        let labels = format!(
            "group=\"{group}\",route=\"{}\",status=\"{status}\"",
            escape(route)
        );
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(s.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "certflow_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "certflow_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            s.count
        );
        let _ = writeln!(
            out,
            "certflow_http_request_duration_seconds_sum{{{labels}}} {}",
            s.sum
        );
        let _ = writeln!(
            out,
            "certflow_http_request_duration_seconds_count{{{labels}}} {}",
            s.count
        );
    }
}

/// Checks that `text` is valid Prometheus text exposition (format 0.0.4):
/// every line a `# HELP`, `# TYPE` or sample line with well-formed labels
/// and value, `HELP` and `TYPE` at most once per family and before its
/// samples, and each family's samples together. For tests of `/metrics`.
#[cfg(test)]
pub fn check_exposition(text: &str) -> Result<(), String> {
    use std::collections::BTreeSet;
    let mut helped = BTreeSet::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut finished = BTreeSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (parts.next(), parts.next(), parts.next());
            let name = name
                .filter(|n| metric_name(n))
                .ok_or_else(|| at("bad name"))?;
            match kind {
                Some("HELP") if !helped.insert(name.to_owned()) => {
                    return Err(at("second HELP"));
                }
                Some("TYPE") => {
                    let t = tail.unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(at("unknown type"));
                    }
                    if typed.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(at("second TYPE"));
                    }
                }
                _ => {}
            }
            if current.as_deref() != Some(name) {
                if finished.contains(name) {
                    return Err(at("family split"));
                }
                if let Some(prev) = current.replace(name.to_owned()) {
                    finished.insert(prev);
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(at("no value")),
        };
        if !metric_name(name) {
            return Err(at("bad metric name"));
        }
        let rest = match rest.strip_prefix('{') {
            Some(r) => {
                let end = labels_end(r).ok_or_else(|| at("bad labels"))?;
                &r[end + 1..]
            }
            None => rest,
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| at("no value"))?;
        if !matches!(value, "+Inf" | "-Inf" | "NaN") && value.parse::<f64>().is_err() {
            return Err(at("bad value"));
        }
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err(at("bad timestamp"));
        }
        if fields.next().is_some() {
            return Err(at("trailing text"));
        }
        let family = typed
            .iter()
            .filter(|(f, t)| {
                name == f.as_str()
                    || (t.as_str() == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f.as_str())))
            })
            .map(|(f, _)| f.clone())
            .next()
            .unwrap_or_else(|| name.to_owned());
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return Err(at("family split"));
            }
            if let Some(prev) = current.replace(family) {
                finished.insert(prev);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
fn metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Index of the `}` closing a label list (after its `{`), checking each
/// `name="value"` pair and escape on the way.
#[cfg(test)]
fn labels_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        if bytes.get(i) == Some(&b'}') {
            return Some(i);
        }
        let eq = s[i..].find('=')? + i;
        if !metric_name(&s[i..eq]) || s[i..eq].contains(':') {
            return None;
        }
        i = eq + 1;
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        loop {
            match bytes.get(i)? {
                b'\\' => {
                    if !matches!(bytes.get(i + 1)?, b'\\' | b'"' | b'n') {
                        return None;
                    }
                    i += 2;
                }
                b'"' => break,
                b'\n' => return None,
                _ => i += 1,
            }
        }
        i += 1;
        match bytes.get(i)? {
            b',' => i += 1,
            b'}' => return Some(i),
            _ => return None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_the_first_segment() {
        assert_eq!(group_of("/agent/v1/whoami"), "agent");
        assert_eq!(group_of("/console/api/v1/certificates/{id}"), "console");
        assert_eq!(group_of("/console/login"), "console");
        assert_eq!(group_of("/pki/{issuer}/crl"), "pki");
        assert_eq!(group_of("/readyz"), "probe");
        assert_eq!(group_of("/metrics"), "probe");
        assert_eq!(group_of("/.well-known/acme-challenge/{token}"), "acme");
        assert_eq!(group_of("/acme/{issuer}/new-order"), "acme-server");
        assert_eq!(group_of("/wp-admin/x.php"), "other");
    }

    #[test]
    fn histogram_is_cumulative_and_the_text_is_valid() {
        let route = "/test/histogram/{id}";
        for ms in [0, 3, 40, 40, 20_000] {
            observe(route, route, 200, Duration::from_millis(ms));
        }
        observe(route, "a\"b\\c\nd", 404, Duration::from_millis(1));
        let mut out = String::new();
        render(&mut out);
        check_exposition(&out).unwrap();
        let line = |suffix: &str| {
            out.lines()
                .find(|l| {
                    l.starts_with("certflow_http_request_duration_seconds_")
                        && l.contains(&format!("route=\"{route}\""))
                        && l.contains(suffix)
                })
                .unwrap_or_else(|| panic!("{suffix} missing:\n{out}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(line("le=\"0.001\""), "1");
        assert_eq!(line("le=\"0.005\""), "2");
        assert_eq!(line("le=\"0.05\""), "4");
        assert_eq!(line("le=\"10\""), "4");
        assert_eq!(line("le=\"+Inf\""), "5");
        assert_eq!(line("_count{"), "5");
        assert!(out.contains(
            "certflow_http_requests_total{group=\"other\",route=\"/test/histogram/{id}\",status=\"200\"} 5"
        ));
        // Label values are escaped.
        assert!(out.contains("route=\"a\\\"b\\\\c\\nd\""), "{out}");
        // The ACME lint counter is there from the start, at 0 or more.
        assert!(
            out.lines()
                .any(|l| l.starts_with("certflow_acme_lint_failures_total ")),
            "{out}"
        );
    }

    #[test]
    fn the_checker_refuses_what_prometheus_would() {
        let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\"} 1\n\
                  # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
        check_exposition(ok).unwrap();
        for bad in [
            "a b c d\n",
            "9a 1\n",
            "a{l=v} 1\n",
            "a{l=\"v} 1\n",
            "a{l=\"\\x\"} 1\n",
            "a 1 x\n",
            "a one\n",
            "# TYPE a counter\n# TYPE a counter\n",
            "# HELP a x\n# HELP a y\n",
            "# TYPE a wibble\n",
            "a 1\nb 1\na 2\n",
        ] {
            assert!(check_exposition(bad).is_err(), "accepted {bad:?}");
        }
    }
}
