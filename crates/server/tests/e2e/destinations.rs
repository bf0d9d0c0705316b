//! Destinations end to end (issue 19) against moto server's ACM, EC2 and
//! ELBv2: a VPC, two subnets, an application load balancer, a target group
//! and an HTTPS listener are made in moto; a server-keyed certificate gets
//! an ACM destination and a listener (SNI) destination. Expectations come
//! from the issue and the AWS APIs, read back from moto directly (not
//! through certflow): ACM holds the current version's serial, the listener
//! lists the ARN; after a renewal ACM holds the new serial under the same
//! ARN and the listener still serves it. Failing destinations (a listener
//! that does not exist, a region the listener is not in) show their reason,
//! are retried, raise `deployment-failed`, and delay neither the renewal
//! nor the other destinations. A CSR-keyed certificate is refused with 400.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::peers::{Moto, Receiver};
use crate::support::{ALLOW_LOOPBACK_WEBHOOKS, Api, key_and_csr, require, start, wait_for};

const REGION: &str = "eu-west-1";

/// A query-protocol call (EC2, ELBv2) to moto: the XML answer. moto reads
/// the region from the credential scope and checks no signature.
fn query(moto: &Moto, service: &str, version: &str, params: &[(&str, &str)]) -> String {
    let mut form: Vec<(&str, &str)> = vec![("Version", version)];
    form.extend_from_slice(params);
    let r = reqwest::blocking::Client::new()
        .post(&moto.endpoint)
        .header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 Credential=test/20261206/{REGION}/{service}/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(&form).unwrap())
        .send()
        .unwrap();
    let status = r.status();
    let body = r.text().unwrap();
    assert!(status.is_success(), "{service} {params:?}: {status} {body}");
    body
}

/// Every text of `<tag>...</tag>` in `xml`.
fn tags(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_owned()))
        .collect()
}

fn tag(xml: &str, name: &str) -> String {
    tags(xml, name)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no <{name}> in {xml}"))
}

/// An ACM call over its JSON protocol.
fn acm(moto: &Moto, target: &str, body: Value) -> Value {
    acm_in(moto, None, target, body)
}

/// An ACM call in `account` (moto's own header; its default account otherwise).
fn acm_in(moto: &Moto, account: Option<&str>, target: &str, body: Value) -> Value {
    let mut r = reqwest::blocking::Client::new().post(&moto.endpoint);
    if let Some(account) = account {
        r = r.header("x-moto-account-id", account);
    }
    let r = r
        .header("X-Amz-Target", format!("CertificateManager.{target}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 Credential=test/20261206/{REGION}/acm/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .body(body.to_string())
        .send()
        .unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap_or(Value::Null);
    assert!(status.is_success(), "ACM {target}: {status} {v}");
    v
}

/// Hex serial without leading zeros, lower case (openssl prints upper case).
fn norm(serial: &str) -> String {
    let s = serial.replace(':', "").to_ascii_lowercase();
    let t = s.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

/// Serial of the certificate ACM holds under `arn`, by openssl.
fn acm_serial(moto: &Moto, dir: &std::path::Path, arn: &str) -> String {
    acm_serial_in(moto, None, dir, arn)
}

/// Serial of the certificate ACM holds under `arn` in `account`, by openssl.
fn acm_serial_in(moto: &Moto, account: Option<&str>, dir: &std::path::Path, arn: &str) -> String {
    let pem = acm_in(
        moto,
        account,
        "GetCertificate",
        json!({ "CertificateArn": arn }),
    )["Certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = dir.join("acm.pem");
    std::fs::write(&file, pem).unwrap();
    let (ok, out) = crate::support::sh(
        dir,
        &[
            "openssl",
            "x509",
            "-noout",
            "-serial",
            "-in",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "openssl: {out}");
    norm(out.trim().trim_start_matches("serial="))
}

fn listener_certificates(moto: &Moto, listener: &str) -> Vec<String> {
    let xml = query(
        moto,
        "elasticloadbalancing",
        "2015-12-01",
        &[
            ("Action", "DescribeListenerCertificates"),
            ("ListenerArn", listener),
        ],
    );
    tags(&xml, "CertificateArn")
}

/// VPC, two subnets, ALB, target group, HTTPS listener (with a placeholder
/// ACM certificate as its default): the listener ARN.
fn load_balancer(moto: &Moto) -> String {
    let ec2 = |p: &[(&str, &str)]| query(moto, "ec2", "2016-11-15", p);
    let vpc = tag(
        &ec2(&[("Action", "CreateVpc"), ("CidrBlock", "10.0.0.0/16")]),
        "vpcId",
    );
    let mut subnets = Vec::new();
    for (cidr, az) in [("10.0.1.0/24", "eu-west-1a"), ("10.0.2.0/24", "eu-west-1b")] {
        let xml = ec2(&[
            ("Action", "CreateSubnet"),
            ("VpcId", &vpc),
            ("CidrBlock", cidr),
            ("AvailabilityZone", az),
        ]);
        subnets.push(tag(&xml, "subnetId"));
    }
    let elb = |p: &[(&str, &str)]| query(moto, "elasticloadbalancing", "2015-12-01", p);
    let lb = tag(
        &elb(&[
            ("Action", "CreateLoadBalancer"),
            ("Name", "web"),
            ("Subnets.member.1", &subnets[0]),
            ("Subnets.member.2", &subnets[1]),
        ]),
        "LoadBalancerArn",
    );
    let tg = tag(
        &elb(&[
            ("Action", "CreateTargetGroup"),
            ("Name", "web"),
            ("Protocol", "HTTP"),
            ("Port", "80"),
            ("VpcId", &vpc),
        ]),
        "TargetGroupArn",
    );
    let placeholder = acm(
        moto,
        "RequestCertificate",
        json!({ "DomainName": "placeholder.example.com" }),
    )["CertificateArn"]
        .as_str()
        .unwrap()
        .to_owned();
    tag(
        &elb(&[
            ("Action", "CreateListener"),
            ("LoadBalancerArn", &lb),
            ("Protocol", "HTTPS"),
            ("Port", "443"),
            ("Certificates.member.1.CertificateArn", &placeholder),
            ("DefaultActions.member.1.Type", "forward"),
            ("DefaultActions.member.1.TargetGroupArn", &tg),
        ]),
        "ListenerArn",
    )
}

fn destinations(api: &Api, cert: &str) -> Vec<Value> {
    let r = api.get(&format!("/console/api/v1/certificates/{cert}/destinations"));
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    v["items"].as_array().unwrap().clone()
}

fn current_serial(api: &Api, cert: &str) -> (u64, String) {
    let v: Value = api
        .get(&format!("/console/api/v1/certificates/{cert}"))
        .json()
        .unwrap();
    let current = v["current_version"].as_u64().unwrap();
    let serial = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["version"].as_u64() == Some(current))
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    (current, norm(&serial))
}

fn compliance(api: &Api) -> Value {
    let r = api.get("/console/api/v1/compliance");
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

#[test]
fn acm_and_listener_destinations_follow_renewals() {
    require("openssl", "apt-get install openssl");
    let started = Instant::now();
    let moto = Moto::start();
    let listener = load_balancer(&moto);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let hook_port = certflow_testkit::free_port();
    let hook = Receiver::listen(hook_port);
    let server = start(
        &dir.join("data"),
        &[
            ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("CERTFLOW_DESTINATIONS__POLL_INTERVAL_SECS", "1"),
            ("CERTFLOW_DESTINATIONS__BACKOFF_BASE_SECS", "1"),
            ("CERTFLOW_DESTINATIONS__BACKOFF_CAP_SECS", "2"),
            ("CERTFLOW_NOTIFICATIONS__DELIVERY__POLL_INTERVAL_SECS", "1"),
            ALLOW_LOOPBACK_WEBHOOKS,
        ],
    )
    .unwrap_or_else(|e| panic!("server did not start: {e}"));
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let (status, sub) = api.post(
        "/console/api/v1/subscriptions",
        json!({ "team": "web", "events": ["deployment-failed"],
                "channel": { "type": "webhook", "url": format!("http://127.0.0.1:{hook_port}/hook"), "format": "json" } }),
    );
    assert_eq!(status, 201, "{sub}");

    let (status, cert) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "names": ["shop.example.com"] }),
    );
    assert_eq!(status, 201, "{cert}");
    let id = cert["id"].as_str().unwrap().to_owned();
    let path = format!("/console/api/v1/certificates/{id}/destinations");

    // A listener that does not exist and a region the listener is not in:
    // attached first, so the good destinations are claimed after them.
    let missing = listener.replace(listener.rsplit('/').next().unwrap(), "0123456789abcdef");
    let (status, bad) = api.post(
        &path,
        json!({ "kind": "aws-elbv2-listener", "region": REGION, "listener_arn": missing }),
    );
    assert_eq!(status, 201, "{bad}");
    let (status, wrong_region) = api.post(
        &path,
        json!({ "kind": "aws-elbv2-listener", "region": "us-east-2", "listener_arn": listener }),
    );
    assert_eq!(status, 201, "{wrong_region}");
    let (status, acm_dest) = api.post(&path, json!({ "kind": "aws-acm", "region": REGION }));
    assert_eq!(status, 201, "{acm_dest}");
    assert_eq!(acm_dest["kind"], "aws-acm");
    assert_eq!(acm_dest["status"], "pending");
    let (status, lb_dest) = api.post(
        &path,
        json!({ "kind": "aws-elbv2-listener", "region": REGION, "listener_arn": listener, "default": false }),
    );
    assert_eq!(status, 201, "{lb_dest}");
    // The same listener twice is a conflict.
    let (status, dup) = api.post(
        &path,
        json!({ "kind": "aws-elbv2-listener", "region": REGION, "listener_arn": listener }),
    );
    assert_eq!(status, 409, "{dup}");

    let by_id = |items: &[Value], want: &Value| -> Value {
        items
            .iter()
            .find(|d| d["id"] == want["id"])
            .cloned()
            .unwrap()
    };
    let (v1, serial1) = current_serial(&api, &id);
    let items = wait_for(
        &server,
        Duration::from_secs(30),
        "both destinations delivered",
        || {
            let items = destinations(&api, &id);
            let done = [&acm_dest, &lb_dest].iter().all(|want| {
                let d = by_id(&items, want);
                d["status"] == "delivered" && d["delivered_version"].as_u64() == Some(v1)
            });
            done.then_some(items)
        },
    );
    let arn = by_id(&items, &acm_dest)["external_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        by_id(&items, &lb_dest)["external_id"].as_str(),
        Some(arn.as_str()),
        "the listener serves the ACM destination's certificate"
    );
    assert_eq!(
        acm_serial(&moto, dir, &arn),
        serial1,
        "ACM holds version {v1}"
    );
    assert!(
        listener_certificates(&moto, &listener).contains(&arn),
        "the listener lists {arn}"
    );
    let tags = acm(
        &moto,
        "ListTagsForCertificate",
        json!({ "CertificateArn": arn }),
    );
    assert!(
        tags.to_string().contains(&id),
        "the ACM certificate is tagged with the certificate id: {tags}"
    );

    // The failures: shown with their reason, and retried.
    let failed = wait_for(&server, Duration::from_secs(20), "failures retried", || {
        let items = destinations(&api, &id);
        let (b, w) = (by_id(&items, &bad), by_id(&items, &wrong_region));
        let retried = |d: &Value| d["status"] == "failed" && d["attempts"].as_u64() >= Some(2);
        (retried(&b) && retried(&w)).then_some((b, w))
    });
    for d in [&failed.0, &failed.1] {
        let reason = d["last_error"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            reason.contains("listener"),
            "reason names the listener: {d}"
        );
    }
    // The compliance report counts them like undeployed agents: a warning
    // each, with the reason, and listed.
    let report = compliance(&api);
    assert_eq!(report["summary"]["undelivered_destinations"], 2, "{report}");
    assert_eq!(report["summary"]["by_rule"]["not-delivered"], 2);
    let listed = report["undelivered_destinations"].as_array().unwrap();
    for want in [&bad, &wrong_region] {
        let d = listed
            .iter()
            .find(|d| d["destination_id"] == want["id"])
            .unwrap_or_else(|| panic!("{want} not listed in {report}"));
        assert_eq!(d["status"], "failed");
        assert_eq!(d["certificate_id"], id.as_str());
        assert!(d["last_error"].is_string());
    }
    let findings = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["certificate_id"] == id.as_str())
        .unwrap()["findings"]
        .clone();
    assert!(
        findings
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["rule"] == "not-delivered" && f["severity"] == "warning")
            .count()
            == 2,
        "{findings}"
    );
    let attempts: Value = api
        .get(&format!("{path}/{}/attempts", bad["id"].as_str().unwrap()))
        .json()
        .unwrap();
    let attempts = attempts.as_array().unwrap();
    assert!(attempts.len() >= 2, "every attempt recorded: {attempts:?}");
    assert!(attempts.iter().all(|a| a["error"].is_string()));
    wait_for(
        &server,
        Duration::from_secs(20),
        "deployment-failed alert",
        || {
            hook.bodies
                .lock()
                .unwrap()
                .iter()
                .any(|b| b["kind"] == "deployment-failed" && b["certificate_id"] == id.as_str())
                .then_some(())
        },
    );

    // Renew: the new serial under the same ARN, and the listener still serves it.
    let (status, renewed) = api.post(
        &format!("/console/api/v1/certificates/{id}/renew"),
        json!({}),
    );
    assert_eq!(
        status, 200,
        "renewal is not blocked by failing destinations: {renewed}"
    );
    let (v2, serial2) = current_serial(&api, &id);
    assert_eq!(v2, v1 + 1);
    assert_ne!(serial2, serial1);
    wait_for(
        &server,
        Duration::from_secs(30),
        "version 2 delivered",
        || {
            let items = destinations(&api, &id);
            [&acm_dest, &lb_dest]
                .iter()
                .all(|want| by_id(&items, want)["delivered_version"].as_u64() == Some(v2))
                .then_some(())
        },
    );
    let items = destinations(&api, &id);
    assert_eq!(
        by_id(&items, &acm_dest)["external_id"].as_str(),
        Some(arn.as_str())
    );
    assert_eq!(
        acm_serial(&moto, dir, &arn),
        serial2,
        "re-imported under the same ARN"
    );
    assert!(listener_certificates(&moto, &listener).contains(&arn));
    let imported = acm(&moto, "ListCertificates", json!({}))["CertificateSummaryList"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["DomainName"] == "shop.example.com")
        .count();
    assert_eq!(
        imported, 1,
        "one ACM certificate for the certificate, not one per version"
    );
    for d in [&bad, &wrong_region] {
        assert_eq!(by_id(&items, d)["status"], "failed");
    }

    // The audit trail records each push, never the key.
    let audit = api.text(&format!(
        "/console/api/v1/audit?target=certificate/{id}&limit=200"
    ));
    assert!(audit.contains("certificate.destination.push"), "{audit}");
    assert!(audit.contains("certificate.destination.attach"));
    assert!(!audit.contains("PRIVATE KEY"));

    // Detach the failing one.
    let r = api
        .http
        .delete(format!(
            "{}{path}/{}",
            api.base,
            bad["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(destinations(&api, &id).len(), 3);
    let r = api
        .http
        .delete(format!(
            "{}{path}/{}",
            api.base,
            wrong_region["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    // What is left serves the current version: nothing to report.
    let report = compliance(&api);
    assert_eq!(report["summary"]["undelivered_destinations"], 0, "{report}");
    assert_eq!(report["undelivered_destinations"], json!([]));

    // A CSR-keyed certificate cannot be pushed: certflow has no key.
    let (_, csr) = key_and_csr(dir, "csr-keyed");
    let (status, csr_cert) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "names": ["csr-keyed.example.com"], "csr": csr }),
    );
    assert_eq!(status, 201, "{csr_cert}");
    let (status, problem) = api.post(
        &format!(
            "/console/api/v1/certificates/{}/destinations",
            csr_cert["id"].as_str().unwrap()
        ),
        json!({ "kind": "aws-acm", "region": REGION }),
    );
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem.to_string().contains("signing request"),
        "the problem says why: {problem}"
    );
    eprintln!("destinations e2e: {:?}", started.elapsed());
}

/// A destination in another account, reached through `role_arn`: certflow
/// calls STS `AssumeRole` (session name `certflow-destinations`, the
/// external id given) and imports with the role's credentials. moto puts
/// what those credentials create in the role's account, so the ARN names
/// that account and the certificate is found there, not in the default one;
/// moto's recorded AssumeRole call shows role, session name and external id.
/// moto does not evaluate trust policies: that the external id is checked is
/// AWS's part.
#[test]
fn a_destination_in_another_account_is_reached_through_an_assumed_role() {
    require("openssl", "apt-get install openssl");
    const ACCOUNT: &str = "111122223333";
    let role = format!("arn:aws:iam::{ACCOUNT}:role/certflow-destinations");
    let moto = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = start(
        &dir.join("data"),
        &[
            ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("CERTFLOW_DESTINATIONS__POLL_INTERVAL_SECS", "1"),
            ("CERTFLOW_DESTINATIONS__BACKOFF_BASE_SECS", "1"),
            ("CERTFLOW_DESTINATIONS__BACKOFF_CAP_SECS", "2"),
        ],
    )
    .unwrap_or_else(|e| panic!("server did not start: {e}"));
    let token = server.token_line.clone().unwrap();
    let api = Api::new(&server, &token);
    let (status, cert) = api.post(
        "/console/api/v1/certificates",
        json!({ "team": "web", "names": ["cross-account.example.com"] }),
    );
    assert_eq!(status, 201, "{cert}");
    let id = cert["id"].as_str().unwrap().to_owned();
    let (status, d) = api.post(
        &format!("/console/api/v1/certificates/{id}/destinations"),
        json!({ "kind": "aws-acm", "region": REGION, "role_arn": role,
                "role_external_id": "certflow-e2e" }),
    );
    assert_eq!(status, 201, "{d}");
    assert_eq!(d["role_arn"], role.as_str());
    assert!(
        d.get("role_external_id").is_none(),
        "the external id is not shown: {d}"
    );

    let (v1, serial1) = current_serial(&api, &id);
    let delivered = wait_for(
        &server,
        Duration::from_secs(30),
        "delivered through the role",
        || {
            destinations(&api, &id)
                .into_iter()
                .find(|x| x["status"] == "delivered" && x["delivered_version"].as_u64() == Some(v1))
        },
    );
    let arn = delivered["external_id"].as_str().unwrap().to_owned();
    assert!(
        arn.starts_with(&format!("arn:aws:acm:{REGION}:{ACCOUNT}:certificate/")),
        "imported in the role's account: {arn}"
    );
    assert_eq!(acm_serial_in(&moto, Some(ACCOUNT), dir, &arn), serial1);
    let default_account = acm(&moto, "ListCertificates", json!({}))["CertificateSummaryList"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        default_account, 0,
        "nothing imported with the base credentials"
    );

    let state: Value = reqwest::blocking::get(format!("{}/moto-api/data.json", moto.endpoint))
        .unwrap()
        .json()
        .unwrap();
    let assumed = state["sts"]["AssumedRole"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        assumed.iter().any(|a| a["role_arn"] == role.as_str()
            && a["external_id"] == "certflow-e2e"
            && a["session_name"] == "certflow-destinations"),
        "AssumeRole with the external id: {assumed:?}"
    );

    // Renewed: re-imported under the same ARN in that account.
    let (status, renewed) = api.post(
        &format!("/console/api/v1/certificates/{id}/renew"),
        json!({}),
    );
    assert_eq!(status, 200, "{renewed}");
    let (v2, serial2) = current_serial(&api, &id);
    wait_for(
        &server,
        Duration::from_secs(30),
        "version 2 through the role",
        || {
            destinations(&api, &id)
                .into_iter()
                .find(|x| x["delivered_version"].as_u64() == Some(v2))
        },
    );
    let items = destinations(&api, &id);
    assert_eq!(items[0]["external_id"].as_str(), Some(arn.as_str()));
    assert_eq!(acm_serial_in(&moto, Some(ACCOUNT), dir, &arn), serial2);
}
