//! Console login through OpenID Connect against a real provider
//! (oidc-provider, started here from `testdata/oidc/provider.mjs`) and the real
//! `certflow serve`: the browser is played by an HTTP client that follows
//! redirects itself, keeps the provider's cookies and posts its devInteractions
//! login and consent forms. Cookies are read from `Set-Cookie` by hand: the
//! `__Host-` session cookie is `Secure`, and this runs over plain loopback HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;

use crate::support::{Api, Server, require, start};

const COOKIE_NAME: &str = "__Host-certflow_session";

/// The OpenID provider process.
struct Op {
    child: Child,
    issuer: String,
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_op(dir: &Path, port: u16, console: &str) -> Op {
    require("node", "apt-get install nodejs (Node 20 or later)");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = manifest.join("../../testdata/oidc");
    assert!(
        fixture.join("node_modules/oidc-provider").exists(),
        "oidc-provider is required: scripts/peers.sh (npm ci in {})",
        fixture.display()
    );
    let log = dir.join(format!("op-{port}.log"));
    // Both streams to a file: the provider writes notices later, and a closed
    // pipe would kill it.
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("node")
        .arg(fixture.join("provider.mjs"))
        .env("OP_PORT", port.to_string())
        // RS256 access tokens: the bearer test covers the RSA path end to end
        // (certflow-auth's tests cover ES256).
        .env("OP_ACCESS_TOKEN_ALG", "RS256")
        .env(
            "CONSOLE_REDIRECT_URI",
            format!("{console}/console/callback"),
        )
        .env("CONSOLE_POST_LOGOUT_URI", format!("{console}/console/"))
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(issuer) = text.lines().find_map(|l| l.strip_prefix("READY ")) {
            return Op {
                child,
                issuer: issuer.to_owned(),
            };
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "oidc-provider did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Starts certflow on `port` with `[auth.oidc]` for `op` and `session` as `[auth.session]`.
fn start_certflow(dir: &Path, port: u16, op: &Op, session: &str) -> Server {
    let console = format!("http://127.0.0.1:{port}");
    let config = dir.join(format!("certflow-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[auth.oidc]
issuer = "{issuer}"
client_id = "console"
client_secret = "console-secret"
redirect_uri = "{console}/console/callback"
post_logout_redirect_uri = "{console}/console/"
scopes = ["groups"]
team_group_prefix = "team-"

[auth.oidc.roles]
admin = ["certflow-admins"]
operator = ["certflow-operators"]

[auth.session]
{session}
"#,
            issuer = op.issuer
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port}");
    start(
        &dir.join(format!("data-{port}")),
        &[
            ("CERTFLOW_SERVER__LISTEN", listen.as_str()),
            ("CERTFLOW_CONFIG", config.to_str().unwrap()),
        ],
    )
    .expect("certflow starts with [auth.oidc]")
}

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

fn location(r: &Response) -> String {
    r.headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location on {} {}", r.status(), r.url()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Every `Set-Cookie` of a response.
fn set_cookies(r: &Response) -> Vec<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The browser's side at the provider: its cookies, sent back on every request.
#[derive(Default)]
struct OpJar(BTreeMap<String, String>);

impl OpJar {
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, r: &Response) {
        for c in set_cookies(r) {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() {
                self.0.remove(k);
            } else {
                self.0.insert(k.to_owned(), v.to_owned());
            }
        }
    }
}

/// Plays the browser at the provider from `auth_url`: follows redirects, signs
/// in as `user` and consents, until the provider sends the browser to a URL
/// starting with `back_to`, which is returned (not followed).
fn authorize(
    http: &Client,
    jar: &mut OpJar,
    op: &Op,
    auth_url: &str,
    user: &str,
    back_to: &str,
) -> String {
    let mut url = auth_url.to_owned();
    for _ in 0..20 {
        if url.starts_with(back_to) {
            return url;
        }
        assert!(url.starts_with(&op.issuer), "left the provider for {url}");
        let r = http.get(&url).header(COOKIE, jar.header()).send().unwrap();
        jar.keep(&r);
        if r.status().is_redirection() {
            url = absolute(&op.issuer, &location(&r));
            continue;
        }
        let status = r.status();
        let body = r.text().unwrap();
        assert_eq!(status, 200, "{url}: {body}");
        // A devInteractions page: the login form, then the consent form.
        let prompt = if body.contains(r#"name="login""#) {
            "login"
        } else {
            "consent"
        };
        let form: &[(&str, &str)] = if prompt == "login" {
            &[("prompt", "login"), ("login", user), ("password", "any")]
        } else {
            &[("prompt", "consent")]
        };
        let r = http
            .post(&url)
            .header(COOKIE, jar.header())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .unwrap();
        jar.keep(&r);
        assert!(r.status().is_redirection(), "{prompt} form: {}", r.status());
        url = absolute(&op.issuer, &location(&r));
    }
    panic!("too many redirects from {auth_url}");
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// A query parameter of `url`.
fn param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `url` with query parameter `name` set to `value` (or removed when `None`).
fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let (base, query) = url.split_once('?').unwrap();
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
    pairs.retain(|(k, _)| k != name);
    if let Some(v) = value {
        pairs.push((name.to_owned(), v.to_owned()));
    }
    format!("{base}?{}", serde_urlencoded::to_string(pairs).unwrap())
}

/// The certflow side of one browser.
struct Console {
    http: Client,
    base: String,
}

impl Console {
    /// `GET /console/login` (with `cookie` if given); returns the provider URL it redirects to.
    fn login_url(&self, cookie: Option<&str>) -> String {
        let mut req = self.http.get(format!("{}/console/login", self.base));
        if let Some(c) = cookie {
            req = req.header(COOKIE, format!("{COOKIE_NAME}={c}"));
        }
        let r = req.send().unwrap();
        assert_eq!(r.status(), 303, "{:?}", r.text());
        location(&r)
    }

    fn callback(&self, url: &str, cookie: Option<&str>) -> Response {
        let mut req = self.http.get(url);
        if let Some(c) = cookie {
            req = req.header(COOKIE, format!("{COOKIE_NAME}={c}"));
        }
        req.send().unwrap()
    }

    /// A whole login as `user`; returns the session cookie's value.
    fn sign_in(&self, op: &Op, user: &str) -> String {
        let mut jar = OpJar::default();
        let auth = self.login_url(None);
        let cb = authorize(&self.http, &mut jar, op, &auth, user, &self.base);
        let r = self.callback(&cb, None);
        assert_eq!(r.status(), 303, "{:?}", r.text());
        session_cookie(&r)
    }

    fn session(&self, cookie: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/console/session", self.base))
            .header(COOKIE, format!("{COOKIE_NAME}={cookie}"))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    fn logout(&self, cookie: &str, csrf: Option<&str>, origin: Option<&str>) -> Response {
        let mut req = self
            .http
            .post(format!("{}/console/logout", self.base))
            .header(COOKIE, format!("{COOKIE_NAME}={cookie}"));
        if let Some(t) = csrf {
            req = req.header("X-CSRF-Token", t);
        }
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        req.send().unwrap()
    }
}

/// The session cookie set by a response, checking its attributes.
fn session_cookie(r: &Response) -> String {
    let cookies = set_cookies(r);
    let c = cookies
        .iter()
        .find(|c| c.starts_with(&format!("{COOKIE_NAME}=")))
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    let (pair, attrs) = c.split_once("; ").unwrap();
    assert_eq!(attrs, "Secure; HttpOnly; SameSite=Lax; Path=/", "{c}");
    pair.split_once('=').unwrap().1.to_owned()
}

/// A problem document's status and `type`.
fn problem(r: Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(ct, "application/problem+json", "status {status}");
    let v: Value = r.json().unwrap();
    (
        status,
        v["type"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned(),
        v["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

fn setup(session: &str) -> (tempfile::TempDir, Op, Server, Console) {
    let tmp = tempfile::tempdir().unwrap();
    let (cf_port, op_port) = (certflow_testkit::free_port(), certflow_testkit::free_port());
    let base = format!("http://127.0.0.1:{cf_port}");
    let op = start_op(tmp.path(), op_port, &base);
    let server = start_certflow(tmp.path(), cf_port, &op, session);
    assert_eq!(server.url, base);
    let console = Console {
        http: client(),
        base,
    };
    (tmp, op, server, console)
}

#[test]
fn console_login_gives_a_fresh_session_with_csrf_and_logout_ends_it() {
    let (tmp, op, server, console) = setup("");

    // The login request: a code flow with PKCE (S256), state and nonce.
    let planted = "planted-by-an-attacker";
    let auth = console.login_url(Some(planted));
    assert!(auth.starts_with(&format!("{}/auth?", op.issuer)), "{auth}");
    assert_eq!(param(&auth, "response_type").as_deref(), Some("code"));
    assert_eq!(param(&auth, "client_id").as_deref(), Some("console"));
    assert_eq!(
        param(&auth, "redirect_uri"),
        Some(format!("{}/console/callback", console.base))
    );
    assert_eq!(param(&auth, "scope").as_deref(), Some("openid groups"));
    assert_eq!(
        param(&auth, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(param(&auth, "code_challenge").unwrap().len(), 43);
    assert_eq!(param(&auth, "state").unwrap().len(), 43, "32 random bytes");
    assert!(param(&auth, "nonce").unwrap().len() >= 43);

    // The browser signs in at the provider and comes back with a code; the
    // cookie it had before login is not the one it has after (no fixation).
    let mut jar = OpJar::default();
    let cb = authorize(&console.http, &mut jar, &op, &auth, "bob", &console.base);
    let r = console.callback(&cb, Some(planted));
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), "/console/");
    let cookie = session_cookie(&r);
    assert_ne!(cookie, planted);
    assert_eq!(cookie.len(), 43, "256-bit session id");
    assert_eq!(console.session(planted).0, 401);

    // The session: subject, roles and teams from the provider's group claim.
    let (status, s) = console.session(&cookie);
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["subject"], "bob");
    assert_eq!(s["roles"], serde_json::json!(["operator"]));
    assert_eq!(s["teams"], serde_json::json!(["payments", "search"]));
    let csrf = s["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(csrf.len(), 43);
    // The stored session, read by sqlite3: no cookie, no CSRF token (it is
    // derived from the cookie), and the ID token only sealed (compared with
    // the logout's id_token_hint below).
    let port = console.base.rsplit(':').next().unwrap();
    let db = tmp.path().join(format!("data-{port}/certflow.db"));
    let sql = |q: &str| {
        let out = std::process::Command::new("sqlite3")
            .args(["-readonly", db.to_str().unwrap(), q])
            .output()
            .expect("sqlite3 (apt-get install sqlite3; scripts/peers.sh)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let columns = sql("SELECT name FROM pragma_table_info('sessions')");
    assert!(
        !columns.contains("csrf") && !columns.lines().any(|c| c == "id_token"),
        "{columns}"
    );
    let row = sql("SELECT * FROM sessions WHERE subject = 'bob'");
    assert_eq!(row.lines().count(), 1, "{row}");
    let sealed = sql("SELECT sealed_id_token FROM sessions WHERE subject = 'bob'");
    assert!(sealed.trim().len() > 100, "a sealed ID token: {sealed}");
    for secret in [cookie.as_str(), csrf.as_str()] {
        assert!(!row.contains(secret), "a session secret in the row: {row}");
    }

    // The session drives the console API: bob (operator of payments and
    // search) may request in his teams, not in others; a state change needs
    // the CSRF token, and a cross-site Origin is refused.
    let api = |method: reqwest::Method,
               path: &str,
               csrf: Option<&str>,
               origin: Option<&str>,
               body: Option<Value>| {
        let mut req = client()
            .request(method, format!("{}/console/api/v1{path}", console.base))
            .header(COOKIE, format!("{COOKIE_NAME}={cookie}"));
        if let Some(t) = csrf {
            req = req.header("X-CSRF-Token", t);
        }
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().unwrap()
    };
    let create = |team: &str| serde_json::json!({ "team": team, "names": [format!("{team}.login.example.com")] });
    assert_eq!(
        api(
            reqwest::Method::GET,
            "/certificates?team=payments",
            None,
            None,
            None
        )
        .status(),
        200
    );
    assert_eq!(
        api(
            reqwest::Method::POST,
            "/certificates",
            None,
            None,
            Some(create("payments"))
        )
        .status(),
        403,
        "no CSRF token"
    );
    assert_eq!(
        api(
            reqwest::Method::POST,
            "/certificates",
            Some(&csrf),
            Some("https://evil.example"),
            Some(create("payments"))
        )
        .status(),
        403,
        "cross-site Origin"
    );
    let r = api(
        reqwest::Method::POST,
        "/certificates",
        Some(&csrf),
        Some(&console.base),
        Some(create("payments")),
    );
    assert_eq!(r.status(), 201, "operator in payments");
    let created: Value = r.json().unwrap();
    let r = api(
        reqwest::Method::POST,
        "/certificates",
        Some(&csrf),
        None,
        Some(create("billing")),
    );
    assert_eq!(r.status(), 403, "not bob's team");
    assert_eq!(
        api(reqwest::Method::GET, "/issuers", None, None, None).status(),
        200
    );
    assert_eq!(
        api(
            reqwest::Method::POST,
            "/issuers/import",
            Some(&csrf),
            None,
            Some(serde_json::json!({}))
        )
        .status(),
        403,
        "operators do not import CAs"
    );
    let audit: Value = api(
        reqwest::Method::GET,
        &format!(
            "/audit?target=certificate/{}",
            created["id"].as_str().unwrap()
        ),
        None,
        None,
        None,
    )
    .json()
    .unwrap();
    assert_eq!(
        audit["items"][0]["subject"], s["subject"],
        "audited as bob: {audit}"
    );
    assert!(s["expires_at"].as_str().unwrap().ends_with('Z'), "{s}");
    let (status, _) = console.session("not-a-session");
    assert_eq!(status, 401);

    // State-changing requests with the cookie need the CSRF token and the console's origin.
    let (status, code, _) = problem(console.logout(&cookie, None, None));
    assert_eq!((status, code.as_str()), (403, "csrf"));
    let (status, code, _) = problem(console.logout(&cookie, Some("wrong"), None));
    assert_eq!((status, code.as_str()), (403, "csrf"));
    let (status, code, _) =
        problem(console.logout(&cookie, Some(&csrf), Some("https://evil.example")));
    assert_eq!((status, code.as_str()), (403, "csrf"));
    let (status, code, _) = problem(console.logout(&cookie, Some(&csrf), Some("null")));
    assert_eq!((status, code.as_str()), (403, "csrf"));
    assert_eq!(
        console.session(&cookie).0,
        200,
        "refused requests leave the session"
    );

    // Logout with the token from the console's origin: the session ends, the
    // cookie is expired, and the provider's end-session URL comes back.
    let r = console.logout(&cookie, Some(&csrf), Some(&console.base));
    assert_eq!(r.status(), 200);
    let cleared = set_cookies(&r);
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with(&format!("{COOKIE_NAME}=;")) && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let body: Value = r.json().unwrap();
    let end = body["end_session_url"].as_str().unwrap().to_owned();
    assert!(
        end.starts_with(&format!("{}/session/end?", op.issuer)),
        "{end}"
    );
    assert!(
        param(&end, "id_token_hint").unwrap().split('.').count() == 3,
        "{end}"
    );
    assert_eq!(
        param(&end, "post_logout_redirect_uri"),
        Some(format!("{}/console/", console.base))
    );
    // The provider accepts it (a refused hint or redirect would be a 400 page).
    let r = console
        .http
        .get(&end)
        .header(COOKIE, jar.header())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_eq!(console.session(&cookie).0, 401, "cookie no longer accepted");
    assert_eq!(console.logout(&cookie, Some(&csrf), None).status(), 401);

    // The audit trail: bob's login and logout, from where, on one session
    // reference; neither the cookie, the CSRF token nor the ID token.
    let admin = admin(&server);
    let logins = audit_events(&admin, "action=console.login&subject=bob");
    assert_eq!(logins.len(), 1, "{logins:?}");
    let login = &logins[0];
    assert_eq!(login["outcome"], "success");
    assert_eq!(login["source"], "127.0.0.1");
    assert_eq!(login["details"]["roles"], serde_json::json!(["operator"]));
    assert_eq!(
        login["details"]["teams"],
        serde_json::json!(["payments", "search"])
    );
    let target = login["target"].as_str().unwrap();
    assert!(target.starts_with("session/"), "{login}");
    let logouts = audit_events(&admin, "action=console.logout&subject=bob");
    assert_eq!(
        logouts.len(),
        1,
        "one logout (the refused ones changed nothing)"
    );
    assert_eq!(logouts[0]["target"], target);
    assert_eq!(logouts[0]["source"], "127.0.0.1");
    let all = audit_events(&admin, "subject=bob")
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    let hint = param(&end, "id_token_hint").unwrap();
    for secret in [cookie.as_str(), csrf.as_str(), hint.as_str()] {
        assert!(!all.contains(secret), "a secret in the audit trail: {all}");
    }
    // The ID token the provider accepted as hint was not in the session row
    // in the clear, nor any of its three parts.
    for part in hint.split('.').filter(|p| p.len() > 8) {
        assert!(
            !row.contains(part),
            "the ID token in the session row: {row}"
        );
    }

    // The console's requests in /metrics, by route template, valid for Prometheus.
    let metrics = reqwest::blocking::get(server.metrics_url.as_deref().unwrap())
        .unwrap()
        .text()
        .unwrap();
    for series in [
        r#"certflow_http_requests_total{group="console",route="/console/login",status="303"}"#,
        r#"certflow_http_requests_total{group="console",route="/console/callback",status="303"}"#,
        r#"certflow_http_requests_total{group="console",route="/console/logout",status="403"}"#,
        r#"certflow_http_request_duration_seconds_count{group="console",route="/console/api/v1/certificates",status="201"}"#,
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    promtool_check(&metrics);
    drop(server);
}

/// A client of the console API with the server's bootstrap admin token.
fn admin(server: &Server) -> Api {
    Api::new(server, server.token_line.as_deref().unwrap())
}

/// Audit events matching `query`, newest first.
fn audit_events(admin: &Api, query: &str) -> Vec<Value> {
    let page: Value = admin
        .get(&format!("/console/api/v1/audit?{query}&limit=100"))
        .json()
        .unwrap();
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .clone()
}

/// `promtool check metrics` (Prometheus' own parser and linter) accepts `text`.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    require("promtool", "apt-get install prometheus");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn login_attacks_are_refused() {
    let (_tmp, op, server, console) = setup("");
    let callback = format!("{}/console/callback", console.base);

    // Missing and unknown state.
    let (status, code, _) = problem(console.callback(&format!("{callback}?code=x"), None));
    assert_eq!((status, code.as_str()), (400, "login-failed"));
    let (status, code, _) =
        problem(console.callback(&format!("{callback}?code=x&state=forged"), None));
    assert_eq!((status, code.as_str()), (400, "login-failed"));

    // A replayed callback: the state was consumed by the first.
    let mut jar = OpJar::default();
    let auth = console.login_url(None);
    let cb = authorize(&console.http, &mut jar, &op, &auth, "alice", &console.base);
    assert_eq!(console.callback(&cb, None).status(), 303);
    let (status, code, detail) = problem(console.callback(&cb, None));
    assert_eq!((status, code.as_str()), (400, "login-failed"), "{detail}");

    // Code injection with another nonce: the attacker runs the authorization
    // for certflow's state and PKCE challenge but with a nonce of its own; the
    // code exchanges (same challenge) and the ID token's nonce gives it away.
    let auth = console.login_url(None);
    let forged = with_param(&auth, "nonce", Some("attacker-chosen-nonce"));
    let cb = authorize(
        &console.http,
        &mut OpJar::default(),
        &op,
        &forged,
        "alice",
        &console.base,
    );
    let (status, code, detail) = problem(console.callback(&cb, None));
    assert_eq!((status, code.as_str()), (400, "login-failed"));
    assert!(detail.contains("nonce_mismatch"), "{detail}");

    // PKCE: a stolen code is useless without the verifier (the provider refuses it).
    let auth = console.login_url(None);
    let cb = authorize(
        &console.http,
        &mut OpJar::default(),
        &op,
        &auth,
        "alice",
        &console.base,
    );
    let code_value = param(&cb, "code").unwrap();
    let r = console
        .http
        .post(format!("{}/token", op.issuer))
        .basic_auth("console", Some("console-secret"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", "authorization_code"),
                ("code", code_value.as_str()),
                ("redirect_uri", callback.as_str()),
            ])
            .unwrap(),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().unwrap();
    assert_eq!(err["error"], "invalid_grant", "{err}");
    // And an authorization request without a challenge is refused by the provider.
    let auth = console.login_url(None);
    let bare = with_param(
        &with_param(&auth, "code_challenge", None),
        "code_challenge_method",
        None,
    );
    let cb = authorize(
        &console.http,
        &mut OpJar::default(),
        &op,
        &bare,
        "alice",
        &console.base,
    );
    assert_eq!(
        param(&cb, "error").as_deref(),
        Some("invalid_request"),
        "{cb}"
    );
    let (status, code, _) = problem(console.callback(&cb, None));
    assert_eq!((status, code.as_str()), (400, "login-failed"));

    // A foreign redirect_uri: the provider refuses to send the code anywhere else.
    let auth = console.login_url(None);
    let foreign = with_param(
        &auth,
        "redirect_uri",
        Some("https://evil.example/console/callback"),
    );
    let r = console.http.get(&foreign).send().unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get(LOCATION).is_none());
    assert!(r.text().unwrap().contains("redirect_uri"));

    // Every refused callback is in the audit trail with its reason, as
    // nobody in particular, from the client's address.
    let admin = admin(&server);
    let refused = audit_events(&admin, "action=console.login&outcome=failure");
    let reasons: Vec<&str> = refused
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap())
        .collect();
    for (reason, n) in [
        ("unknown_state", 2),
        ("missing_state", 1),
        ("id_token_invalid", 1),
        ("provider_refused", 1),
    ] {
        assert_eq!(
            reasons.iter().filter(|r| **r == reason).count(),
            n,
            "{reason}: {reasons:?}"
        );
    }
    let nonce = refused
        .iter()
        .find(|e| e["details"]["reason"] == "id_token_invalid")
        .unwrap();
    assert_eq!(nonce["details"]["code"], "nonce_mismatch");
    let provider = refused
        .iter()
        .find(|e| e["details"]["reason"] == "provider_refused")
        .unwrap();
    assert_eq!(provider["details"]["code"], "invalid_request");
    for e in &refused {
        assert_eq!(e["subject"], "anonymous", "{e}");
        assert_eq!(e["source"], "127.0.0.1", "{e}");
    }
    // Alice's one good login is there too.
    let ok = audit_events(&admin, "action=console.login&outcome=success&subject=alice");
    assert_eq!(ok.len(), 1, "{ok:?}");
}

#[test]
fn idle_and_absolute_timeouts_end_sessions() {
    // Idle 3 s, absolute 9 s.
    let (_tmp, op, server, console) =
        setup("idle_timeout_minutes = 0.05\nabsolute_timeout_hours = 0.0025\n");

    // Activity keeps a session past its idle timeout; a pause longer ends it.
    let cookie = console.sign_in(&op, "bob");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(console.session(&cookie).0, 200, "at {:?}", start.elapsed());
        std::thread::sleep(Duration::from_millis(800));
    }
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(console.session(&cookie).0, 401, "idle timeout");
    let admin = admin(&server);
    let expired = audit_events(&admin, "action=console.session.expire&subject=bob");
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["details"]["reason"], "idle");
    assert_eq!(expired[0]["source"], "127.0.0.1");

    // However active, a session ends at its absolute timeout.
    let cookie = console.sign_in(&op, "bob");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(8000) {
        assert_eq!(console.session(&cookie).0, 200, "at {:?}", start.elapsed());
        std::thread::sleep(Duration::from_millis(800));
    }
    while start.elapsed() < Duration::from_millis(9500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(console.session(&cookie).0, 401, "absolute timeout");
    let expired = audit_events(&admin, "action=console.session.expire&subject=bob");
    assert_eq!(expired.len(), 2, "{expired:?}");
    assert_eq!(expired[0]["details"]["reason"], "absolute");
    // Each expiry ends a session its login started.
    let logins = audit_events(&admin, "action=console.login&subject=bob");
    let mut started: Vec<&Value> = logins.iter().map(|e| &e["target"]).collect();
    let mut ended: Vec<&Value> = expired.iter().map(|e| &e["target"]).collect();
    started.sort_by_key(|v| v.to_string());
    ended.sort_by_key(|v| v.to_string());
    assert_eq!(started, ended);
}

/// A client-credentials access token from the provider, for `client`.
fn client_token(op: &Op, client_id: &str, secret: &str) -> String {
    let r = client()
        .post(format!("{}/token", op.issuer))
        .basic_auth(client_id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&resource=urn%3Acertflow%3Aapi&scope=certs%3Aread")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "token endpoint: {:?}", r.text());
    let body: Value = r.json().unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// Automation with OIDC client-credentials tokens: the configured service
/// role and teams decide, a client without one gets nothing, and a forged or
/// altered token is a 401 with the reason in the server's log.
#[test]
fn bearer_tokens_from_the_provider_are_authorised_by_service_role() {
    let tmp = tempfile::tempdir().unwrap();
    let op_port = certflow_testkit::free_port();
    let port = certflow_testkit::free_port();
    let op = start_op(tmp.path(), op_port, &format!("http://127.0.0.1:{port}"));
    let config = tmp.path().join("bearer.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[auth.issuers]]
issuer = "{issuer}"
audience = "urn:certflow:api"
[auth.issuers.service_roles.automation-1]
role = "operator"
teams = ["payments"]
"#,
            issuer = op.issuer
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port}");
    let server = start(
        &tmp.path().join("data"),
        &[
            ("CERTFLOW_SERVER__LISTEN", listen.as_str()),
            ("CERTFLOW_CONFIG", config.to_str().unwrap()),
        ],
    )
    .expect("certflow starts with [[auth.issuers]]");
    // Without [auth.oidc] the console's pages say what to configure and
    // where the local recipe is.
    let page = client()
        .get(format!("http://127.0.0.1:{port}/console/"))
        .send()
        .unwrap();
    assert_eq!(page.status(), 503);
    let text = page.text().unwrap();
    assert!(
        text.contains("configure [auth.oidc]") && text.contains("scripts/dev-idp.sh"),
        "{text}"
    );
    let base = format!("http://127.0.0.1:{port}/console/api/v1");
    let call = |token: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = client()
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().unwrap().status().as_u16()
    };
    let create = |team: &str| serde_json::json!({ "team": team, "names": [format!("{team}.bearer.example.com")] });

    let token = client_token(&op, "automation-1", "automation-secret");
    assert_eq!(
        call(
            &token,
            reqwest::Method::GET,
            "/certificates?team=payments",
            None
        ),
        200
    );
    assert_eq!(
        call(
            &token,
            reqwest::Method::POST,
            "/certificates",
            Some(create("payments"))
        ),
        201
    );
    assert_eq!(
        call(
            &token,
            reqwest::Method::POST,
            "/certificates",
            Some(create("billing"))
        ),
        403
    );
    assert_eq!(
        call(
            &token,
            reqwest::Method::POST,
            "/issuers/import",
            Some(serde_json::json!({}))
        ),
        403
    );

    // Authenticated but without a role: nothing.
    let stranger = client_token(&op, "stranger", "stranger-secret");
    assert_eq!(
        call(
            &stranger,
            reqwest::Method::GET,
            "/certificates?team=payments",
            None
        ),
        403
    );

    // Altered payload and `alg: none`: 401, reasons logged, never the token.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let payload = parts[1].clone();
    parts[1] = format!(
        "{}{}",
        &payload[..payload.len() - 2],
        if payload.ends_with("AA") { "AB" } else { "AA" }
    );
    assert_eq!(
        call(
            &parts.join("."),
            reqwest::Method::GET,
            "/certificates?team=payments",
            None
        ),
        401
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        payload
    );
    assert_eq!(
        call(
            &none,
            reqwest::Method::GET,
            "/certificates?team=payments",
            None
        ),
        401
    );
    let log = server.log();
    assert!(log.contains("rejected bearer token"), "{log}");
    assert!(!log.contains(&token), "tokens never logged");
}
