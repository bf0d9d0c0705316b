//! A real Prometheus (Debian's `prometheus`) scrapes a running `certflow
//! serve` every second with the shipped scrape configuration and alert
//! rules: through the metrics listener, with the metrics bearer token, the
//! certflow series arrive with the values the test caused, the rules
//! evaluate healthily, and a condition the test makes real (a certificate
//! expiring within 7 days with no renewal in progress) fires its alert. The
//! copies differ from `deploy/prometheus/` only in the scrape target, the
//! intervals (1 s) and that alert's `for:` (1 s instead of 30 min).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Api, require, start};

/// A Prometheus process on a free loopback port; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus with the shipped scrape configuration aimed at
    /// `target` (`host:port`) every second, sending `token`, with `rules` as
    /// its rule file, and waits until it is ready.
    fn start(dir: &Path, target: &str, token: &str, rules: &str) -> Prometheus {
        require(
            "prometheus",
            "apt-get install prometheus (scripts/peers.sh)",
        );
        std::fs::write(dir.join("alerts.yml"), rules).unwrap();
        std::fs::write(dir.join("certflow-metrics.token"), token).unwrap();
        std::fs::write(dir.join("prometheus.yml"), test_config(target)).unwrap();
        let port = certflow_testkit::free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/-/ready", p.url)).send()
                && r.status().is_success()
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = client()
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .unwrap();
        let v: Value = r.json().unwrap();
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }

    /// The instant vector of `expr`.
    fn query(&self, expr: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", expr)])["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `expr` until its single sample's value is `want` (as Prometheus
    /// prints it), returning the sample.
    fn wait_for(&self, expr: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = self.query(expr);
            if let [one] = result.as_slice()
                && one["value"][1] == want
            {
                return one.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{expr} never became {want}: {result:?}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The shipped scrape configuration with `target` instead of the
/// loopback default and 1 s intervals.
fn test_config(target: &str) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/prometheus.yml"),
    )
    .unwrap();
    let config = shipped
        .replace("'127.0.0.1:9464'", &format!("'{target}'"))
        .replace("interval: 30s", "interval: 1s");
    assert!(
        config.contains(target) && !config.contains("30s"),
        "the shipped scrape configuration changed shape:\n{shipped}"
    );
    config
}

/// The shipped rules with the expiring-without-renewal alert's `for:`
/// shortened, so the test need not wait 30 minutes.
fn test_rules() -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/alerts.yml"),
    )
    .unwrap();
    let alert = "- alert: CertflowCertificateExpiringWithoutRenewal";
    let at = shipped
        .find(alert)
        .expect("the shipped rules have the alert");
    let (head, tail) = shipped.split_at(at);
    let tail = tail.replacen("for: 30m", "for: 1s", 1);
    assert_ne!(tail, shipped[at..], "the alert's `for: 30m` moved");
    format!("{head}{tail}")
}

#[test]
fn prometheus_scrapes_certflow_and_evaluates_the_shipped_alerts() {
    let tmp = tempfile::tempdir().unwrap();
    let metrics_token = "prometheus-scrapes-with-this-token";
    let server = start(
        &tmp.path().join("data"),
        &[("CERTFLOW_METRICS__BEARER_TOKEN", metrics_token)],
    )
    .expect("certflow starts");
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);

    // Two certificates: one for 90 days, one expiring in 3 days whose
    // renewal is not due before 90% of its life, so nothing renews it yet.
    for (name, days, fraction) in [
        ("later.example.com", 90, 0.6667),
        ("soon.example.com", 3, 0.9),
    ] {
        let (status, body) = api.post(
            "/console/api/v1/certificates",
            json!({
                "team": "payments", "names": [name], "validity_days": days,
                "renewal": {"renew_at_fraction": fraction, "jitter_fraction": 0.0},
            }),
        );
        assert_eq!(status, 201, "{body}");
    }

    // The metrics listener, not the console listener.
    let target = server
        .metrics_url
        .as_deref()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    assert_ne!(server.url, format!("http://{target}"));
    let prom_dir = tmp.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom = Prometheus::start(&prom_dir, &target, metrics_token, &test_rules());

    // The scrape works and the series carry what the test did.
    prom.wait_for(r#"up{job="certflow"}"#, "1");
    prom.wait_for(r#"certflow_certificates{status="active"}"#, "2");
    prom.wait_for(r#"certflow_certificates{status="revoked"}"#, "0");
    prom.wait_for(
        r#"certflow_certificates_expiring_without_renewal{within="7d"}"#,
        "1",
    );
    prom.wait_for(r#"certflow_issuer_up{issuer="certflow"}"#, "1");
    prom.wait_for(
        r#"certflow_renewal_jobs{queue="database",state="dead"}"#,
        "0",
    );
    prom.wait_for(r#"certflow_agents{status="active"}"#, "0");
    prom.wait_for(r#"certflow_deployments{status="drift"}"#, "0");
    let min = prom.query(r#"certflow_certificate_expiry_min_seconds{team="payments"}"#);
    let secs: f64 = min[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(
        (2.9 * 86_400.0..=3.0 * 86_400.0).contains(&secs),
        "earliest expiry of payments: {secs} s"
    );
    // The console requests of this test, by route template.
    let created = prom.query(
        r#"certflow_http_requests_total{group="console",route="/console/api/v1/certificates",status="201"}"#,
    );
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["value"][1], "2");

    // Every shipped rule evaluates without error against the real series.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = prom.api("/api/v1/rules", &[]);
        let group = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "certflow")
            .cloned()
            .expect("the certflow rule group is loaded");
        let rules = group["rules"].as_array().unwrap();
        assert!(rules.len() >= 9, "{group}");
        let evaluated = rules.iter().all(|r| r["health"] == "ok");
        if evaluated {
            break;
        }
        assert!(Instant::now() < deadline, "rules unhealthy: {group:#}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // The condition the test made real fires its alert; the healthy ones stay quiet.
    let deadline = Instant::now() + Duration::from_secs(30);
    let alerts = loop {
        let alerts = prom.api("/api/v1/alerts", &[])["alerts"]
            .as_array()
            .cloned()
            .unwrap();
        let firing = alerts.iter().any(|a| {
            a["labels"]["alertname"] == "CertflowCertificateExpiringWithoutRenewal"
                && a["state"] == "firing"
        });
        if firing {
            break alerts;
        }
        assert!(Instant::now() < deadline, "never fired: {alerts:#?}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let names: Vec<&str> = alerts
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["CertflowCertificateExpiringWithoutRenewal"],
        "{alerts:#?}"
    );
    assert_eq!(alerts[0]["labels"]["severity"], "critical");
    assert_eq!(
        alerts[0]["annotations"]["summary"],
        "1 certificate(s) expire within 7 days and no renewal is in progress"
    );
}
