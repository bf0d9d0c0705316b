//! Token validation against real issuers: oidc-provider (client credentials,
//! authorization code + PKCE, JWT access tokens) and moto's Cognito user pools.
//! Attack tokens are minted with the provider's own signing key (written out
//! by the fixture) so that each one fails on exactly the property under test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use certflow_auth::{
    AuthError, Flavor, IssuerConfig, RoleGroups, ServiceRole, TokenKind, TokenValidator,
};
use certflow_core::access::{PrincipalKind, Role};
use certflow_testkit::{Moto, free_port, http};
use serde_json::{Value, json};

const API: &str = "urn:certflow:api";
const REDIRECT: &str = "http://127.0.0.1:8080/console/callback";

// ---------------------------------------------------------------------------
// The OpenID provider fixture.

struct Op {
    child: Child,
    issuer: String,
    dir: tempfile::TempDir,
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Op {
    async fn start() -> Self {
        // The provider every suite shares (and scripts/dev-idp.sh runs).
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/oidc");
        assert!(
            fixture.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed in {}: run scripts/peers.sh (npm ci there; needs node >= 20)",
            fixture.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("op.log")).unwrap();
        let port = free_port();
        let child = match Command::new("node")
            .arg("provider.mjs")
            .current_dir(&fixture)
            .env("OP_PORT", port.to_string())
            .env("OP_KEYS_OUT", dir.path().join("keys.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                panic!("cannot start node ({e}): apt-get install nodejs, then scripts/peers.sh")
            }
        };
        let mut op = Self {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/.well-known/openid-configuration", op.issuer);
        loop {
            if let Ok(resp) = http().get(&url).send().await
                && resp.status().is_success()
            {
                return op;
            }
            if let Ok(Some(status)) = op.child.try_wait() {
                panic!("oidc-provider exited ({status}): {}", op.log());
            }
            assert!(
                Instant::now() < deadline,
                "oidc-provider not ready: {}",
                op.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("op.log")).unwrap_or_default()
    }

    /// The provider's ES256 signing key (PKCS#8) and its kid.
    fn ec_key(&self) -> (EcdsaKeyPair, String) {
        let keys: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("keys.json")).unwrap(),
        )
        .unwrap();
        let der = STANDARD
            .decode(keys["ec"]["pkcs8"].as_str().unwrap())
            .unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap();
        (pair, keys["ec"]["kid"].as_str().unwrap().to_owned())
    }

    async fn client_credentials(&self, client: &str, secret: &str) -> String {
        let resp = http()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([
                    ("grant_type", "client_credentials"),
                    ("scope", "certs:read"),
                    ("resource", API),
                ])
                .unwrap(),
            )
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "token endpoint: {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// A full browser-style login (authorization code + PKCE, devInteractions
    /// accepting any password) for `user`; returns (id_token, access_token).
    async fn login(&self, user: &str, nonce: &str) -> (String, String) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let verifier = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        let query = serde_urlencoded::to_string([
            ("client_id", "console"),
            ("response_type", "code"),
            ("scope", "openid groups"),
            ("redirect_uri", REDIRECT),
            ("nonce", nonce),
            ("state", "st"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", API),
        ])
        .unwrap();
        let mut cookies: BTreeMap<String, String> = BTreeMap::new();
        let mut next = format!("{}/auth?{query}", self.issuer);
        let mut form: Option<String> = None;
        for _ in 0..12 {
            let cookie = cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let req = match form.take() {
                Some(body) => client
                    .post(&next)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body),
                None => client.get(&next),
            };
            let resp = req.header("cookie", cookie).send().await.unwrap();
            for value in resp.headers().get_all("set-cookie") {
                let pair = value.to_str().unwrap().split(';').next().unwrap();
                let (k, v) = pair.split_once('=').unwrap();
                cookies.insert(k.to_owned(), v.to_owned());
            }
            if let Some(location) = resp.headers().get("location") {
                let location = location.to_str().unwrap();
                next = if location.starts_with('/') {
                    format!("{}{location}", self.issuer)
                } else {
                    location.to_owned()
                };
                if next.starts_with(REDIRECT) {
                    let url = reqwest::Url::parse(&next).unwrap();
                    let code = url
                        .query_pairs()
                        .find(|(k, _)| k == "code")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_else(|| panic!("no code in {next}"));
                    return self.exchange(&code, &verifier).await;
                }
                continue;
            }
            let status = resp.status();
            let page = resp.text().await.unwrap();
            assert!(status.is_success(), "{next}: {status}: {page}");
            // devInteractions page: a login form first, then a consent form.
            form = Some(if page.contains(r#"name="login""#) {
                serde_urlencoded::to_string([
                    ("prompt", "login"),
                    ("login", user),
                    ("password", "any"),
                ])
                .unwrap()
            } else {
                "prompt=consent".to_owned()
            });
        }
        panic!("login did not reach the redirect URI; log: {}", self.log());
    }

    async fn exchange(&self, code: &str, verifier: &str) -> (String, String) {
        let resp = http()
            .post(format!("{}/token", self.issuer))
            .basic_auth("console", Some("console-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", verifier),
                    ("resource", API),
                ])
                .unwrap(),
            )
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        (
            body["id_token"]
                .as_str()
                .unwrap_or_else(|| panic!("{body}"))
                .to_owned(),
            body["access_token"].as_str().unwrap().to_owned(),
        )
    }

    fn config(&self) -> IssuerConfig {
        let mut c = IssuerConfig::new(&self.issuer, Some(API.to_owned()));
        c.roles = RoleGroups {
            admin: vec!["certflow-admins".into()],
            operator: vec!["certflow-operators".into()],
            viewer: vec!["certflow-viewers".into()],
        };
        c.team_group_prefix = Some("team-".into());
        c.service_roles.insert(
            "agent-1".into(),
            ServiceRole {
                role: Role::Operator,
                teams: vec!["payments".into()],
            },
        );
        c
    }
}

// ---------------------------------------------------------------------------
// Token forging helpers.

fn random_bytes<const N: usize>() -> [u8; N] {
    aws_lc_rs::rand::generate(&SystemRandom::new())
        .unwrap()
        .expose()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn sign_es256(key: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64json(header), b64json(claims));
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn fresh_ec_key() -> EcdsaKeyPair {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap()
}

fn public_jwk(key: &EcdsaKeyPair, kid: &str) -> Value {
    let point = key.public_key().as_ref();
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    })
}

fn service_claims(op: &Op) -> Value {
    let t = now();
    json!({
        "iss": op.issuer, "sub": "agent-1", "client_id": "agent-1", "aud": API,
        "iat": t, "exp": t + 300, "scope": "certs:read", "jti": "forged-1",
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

// ---------------------------------------------------------------------------
// Small HTTP servers: a JWKS proxy that counts its requests, and an attacker
// host that must never be contacted.

struct CountingServer {
    url: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn counting_server(upstream: Option<String>, attacker_jwks: Value) -> CountingServer {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        let upstream = upstream.clone();
        let attacker_jwks = attacker_jwks.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            match upstream {
                Some(url) => {
                    let body = http().get(url).send().await.unwrap().text().await.unwrap();
                    ([("content-type", "application/json")], body)
                }
                None => (
                    [("content-type", "application/json")],
                    attacker_jwks.to_string(),
                ),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    CountingServer { url, hits, task }
}

// ---------------------------------------------------------------------------
// oidc-provider: the happy paths.

#[tokio::test]
async fn client_credentials_token_validates_and_maps_to_service_principal() {
    let op = Op::start().await;
    let validator = TokenValidator::new(vec![op.config()], http()).unwrap();

    let token = op.client_credentials("agent-1", "agent-secret").await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header["typ"], "at+jwt",
        "the fixture issues RFC 9068 tokens"
    );
    assert_eq!(header["alg"], "ES256");

    let claims = validator.validate_access_token(&token).await.unwrap();
    assert_eq!(claims.kind, TokenKind::Access);
    assert_eq!(claims.issuer, op.issuer);
    assert_eq!(claims.client_id.as_deref(), Some("agent-1"));
    assert_eq!(claims.audience, vec![API.to_owned()]);
    assert_eq!(claims.scopes, vec!["certs:read".to_owned()]);
    assert!(claims.is_service());
    let principal = validator.principal(&claims);
    assert_eq!(principal.subject, "agent-1");
    assert_eq!(
        principal.kind,
        PrincipalKind::Service {
            client_id: "agent-1".into()
        }
    );
    assert_eq!(principal.roles, vec![Role::Operator]);
    assert_eq!(principal.teams, vec!["payments".to_owned()]);

    // A client with no service role is authenticated but gets no role at all.
    let stranger = op.client_credentials("stranger", "stranger-secret").await;
    let claims = validator.validate_access_token(&stranger).await.unwrap();
    let principal = validator.principal(&claims);
    assert_eq!(
        principal.kind,
        PrincipalKind::Service {
            client_id: "stranger".into()
        }
    );
    assert!(principal.roles.is_empty() && principal.teams.is_empty());

    // With client_ids set, other clients' tokens are refused outright.
    let mut restricted = op.config();
    restricted.client_ids = vec!["agent-1".into()];
    let restricted = TokenValidator::new(vec![restricted], http()).unwrap();
    assert!(restricted.validate_access_token(&token).await.is_ok());
    assert_eq!(
        restricted.validate_access_token(&stranger).await,
        Err(AuthError::ClientNotAllowed)
    );
}

#[tokio::test]
async fn browser_login_id_token_and_person_access_token_map_groups() {
    let op = Op::start().await;
    let validator = TokenValidator::new(vec![op.config()], http()).unwrap();

    let (id_token, access_token) = op.login("bob", "nonce-bob-1").await;
    let claims = validator
        .validate_id_token(&id_token, "nonce-bob-1", "console")
        .await
        .unwrap();
    assert_eq!(claims.kind, TokenKind::Id);
    assert_eq!(claims.subject.as_deref(), Some("bob"));
    let person = validator.principal(&claims);
    assert_eq!(person.kind, PrincipalKind::Person);
    assert_eq!(person.subject, "bob");
    assert_eq!(person.roles, vec![Role::Operator]);
    assert_eq!(
        person.teams,
        vec!["payments".to_owned(), "search".to_owned()]
    );

    // The person's access token for the API maps the same way.
    let claims = validator
        .validate_access_token(&access_token)
        .await
        .unwrap();
    assert!(!claims.is_service());
    assert_eq!(validator.principal(&claims), person);

    // Replayed into another login, for another client, or swapped with the access token.
    assert_eq!(
        validator
            .validate_id_token(&id_token, "nonce-other", "console")
            .await,
        Err(AuthError::NonceMismatch)
    );
    assert_eq!(
        validator
            .validate_id_token(&id_token, "nonce-bob-1", "other-client")
            .await,
        Err(AuthError::WrongAudience)
    );
    assert!(matches!(
        validator
            .validate_id_token(&access_token, "nonce-bob-1", "console")
            .await,
        Err(AuthError::WrongType { .. })
    ));
    assert_eq!(
        validator.validate_access_token(&id_token).await,
        Err(AuthError::WrongAudience),
        "an ID token (aud = client) is no API access token"
    );

    let (id_token, _) = op.login("alice", "nonce-alice").await;
    let claims = validator
        .validate_id_token(&id_token, "nonce-alice", "console")
        .await
        .unwrap();
    let alice = validator.principal(&claims);
    assert_eq!(alice.roles, vec![Role::Admin]);
    assert_eq!(alice.teams, vec!["payments".to_owned()]);
}

#[tokio::test]
async fn discovery_document_exposes_login_endpoints() {
    let op = Op::start().await;
    let validator = TokenValidator::new(vec![op.config()], http()).unwrap();
    let doc = validator.discovery(&op.issuer).await.unwrap();
    assert_eq!(doc.issuer, op.issuer);
    assert_eq!(doc.authorization_endpoint, format!("{}/auth", op.issuer));
    assert_eq!(doc.token_endpoint, format!("{}/token", op.issuer));
    assert_eq!(
        doc.end_session_endpoint.as_deref(),
        Some(format!("{}/session/end", op.issuer).as_str())
    );
    assert_eq!(doc.jwks_uri, format!("{}/jwks", op.issuer));
    assert!(
        doc.code_challenge_methods_supported
            .contains(&"S256".to_owned())
    );
    assert_eq!(
        validator.discovery("https://elsewhere.example").await.err(),
        Some(AuthError::UnknownIssuer)
    );

    // A discovery document naming another issuer is refused.
    let mut wrong = op.config();
    wrong.issuer = format!("{}/other", op.issuer);
    wrong.discovery_url = Some(format!("{}/.well-known/openid-configuration", op.issuer));
    let v = TokenValidator::new(vec![wrong.clone()], http()).unwrap();
    assert!(
        v.discovery(&wrong.issuer)
            .await
            .unwrap_err()
            .is_unavailable()
    );
}

// ---------------------------------------------------------------------------
// oidc-provider: the attack table.

#[tokio::test]
async fn attack_tokens_are_rejected_each_for_its_own_reason() {
    let op = Op::start().await;
    let validator = TokenValidator::new(vec![op.config()], http()).unwrap();
    let (op_key, op_kid) = op.ec_key();
    let es256 = json!({"alg": "ES256", "typ": "at+jwt", "kid": op_kid});

    // Control: a token minted here with the provider's key validates, so each
    // rejection below is down to the one property changed.
    let control = sign_es256(&op_key, &es256, &service_claims(&op));
    validator.validate_access_token(&control).await.unwrap();
    let typ_jwt = sign_es256(
        &op_key,
        &json!({"alg": "ES256", "typ": "JWT", "kid": op_kid}),
        &service_claims(&op),
    );
    validator.validate_access_token(&typ_jwt).await.unwrap();
    let within_leeway = sign_es256(
        &op_key,
        &es256,
        &with(service_claims(&op), "exp", json!(now() - 30)),
    );
    validator
        .validate_access_token(&within_leeway)
        .await
        .expect("30 s past exp is inside the 60 s leeway");

    let real = op.client_credentials("agent-1", "agent-secret").await;
    let parts: Vec<&str> = real.split('.').collect();

    // The attacker's own key, and a host that would serve it.
    let attacker = fresh_ec_key();
    let attacker_host = counting_server(None, json!({"keys": [public_jwk(&attacker, "k1")]})).await;

    // HS256 keyed with the provider's public key bytes (the classic RS/HS confusion).
    let jwks: Value = http()
        .get(format!("{}/jwks", op.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ec_jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "EC")
        .unwrap();
    let mut point = vec![4u8];
    point.extend(
        URL_SAFE_NO_PAD
            .decode(ec_jwk["x"].as_str().unwrap())
            .unwrap(),
    );
    point.extend(
        URL_SAFE_NO_PAD
            .decode(ec_jwk["y"].as_str().unwrap())
            .unwrap(),
    );
    let hs_input = format!(
        "{}.{}",
        b64json(&json!({"alg": "HS256", "typ": "at+jwt", "kid": op_kid})),
        b64json(&service_claims(&op))
    );
    let hs_tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &point),
        hs_input.as_bytes(),
    );
    let hs256 = format!("{hs_input}.{}", URL_SAFE_NO_PAD.encode(hs_tag.as_ref()));

    let tampered = {
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["client_id"] = json!("agent-admin");
        payload["sub"] = json!("agent-admin");
        format!("{}.{}.{}", parts[0], b64json(&payload), parts[2])
    };
    let zero_sig = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );

    let cases: Vec<(&str, String, AuthError)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64json(&json!({"alg": "none", "typ": "at+jwt"})),
                b64json(&service_claims(&op))
            ),
            AuthError::Unsigned,
        ),
        (
            "HS256 keyed with the provider's public key",
            hs256,
            AuthError::AlgorithmNotAllowed {
                alg: "HS256".into(),
            },
        ),
        (
            "unknown kid, signed with a fresh key",
            sign_es256(
                &attacker,
                &json!({"alg": "ES256", "typ": "at+jwt", "kid": "rotated-maybe"}),
                &service_claims(&op),
            ),
            AuthError::UnknownKey {
                kid: "rotated-maybe".into(),
            },
        ),
        (
            "provider's kid, signed with a fresh key",
            sign_es256(&attacker, &es256, &service_claims(&op)),
            AuthError::BadSignature,
        ),
        (
            "kid of the provider's RSA key on an ES256 token",
            sign_es256(
                &op_key,
                &json!({"alg": "ES256", "typ": "at+jwt", "kid": "rsa-1"}),
                &service_claims(&op),
            ),
            AuthError::KeyMismatch {
                kid: "rsa-1".into(),
                alg: "ES256",
            },
        ),
        (
            "wrong iss (validly signed)",
            sign_es256(
                &op_key,
                &es256,
                &with(service_claims(&op), "iss", json!("https://evil.example")),
            ),
            AuthError::UnknownIssuer,
        ),
        (
            "wrong aud (validly signed)",
            sign_es256(
                &op_key,
                &es256,
                &with(service_claims(&op), "aud", json!(["urn:other:api"])),
            ),
            AuthError::WrongAudience,
        ),
        (
            "expired beyond leeway",
            sign_es256(
                &op_key,
                &es256,
                &with(service_claims(&op), "exp", json!(now() - 120)),
            ),
            AuthError::Expired { seconds_ago: 120 },
        ),
        (
            "nbf in the future",
            sign_es256(
                &op_key,
                &es256,
                &with(service_claims(&op), "nbf", json!(now() + 600)),
            ),
            AuthError::NotYetValid { seconds_ahead: 600 },
        ),
        (
            "no exp",
            sign_es256(&op_key, &es256, &{
                let mut c = service_claims(&op);
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            AuthError::MissingClaim("exp"),
        ),
        (
            "header jku pointing at the attacker",
            sign_es256(
                &attacker,
                &json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1",
                        "jku": format!("{}/jwks.json", attacker_host.url)}),
                &service_claims(&op),
            ),
            AuthError::ForbiddenHeader("jku"),
        ),
        (
            "header jwk embedding the attacker's key",
            sign_es256(
                &attacker,
                &json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1",
                        "jwk": public_jwk(&attacker, "k1")}),
                &service_claims(&op),
            ),
            AuthError::ForbiddenHeader("jwk"),
        ),
        (
            "header x5u pointing at the attacker",
            sign_es256(
                &attacker,
                &json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1",
                        "x5u": format!("{}/cert.pem", attacker_host.url)}),
                &service_claims(&op),
            ),
            AuthError::ForbiddenHeader("x5u"),
        ),
        (
            "ES256 signature r = s = 0",
            zero_sig,
            AuthError::SignatureEncoding("ES256"),
        ),
        ("tampered payload", tampered, AuthError::BadSignature),
        (
            "unexpected typ",
            sign_es256(
                &op_key,
                &json!({"alg": "ES256", "typ": "secevent+jwt", "kid": op_kid}),
                &service_claims(&op),
            ),
            AuthError::WrongType {
                typ: "secevent+jwt".into(),
            },
        ),
        (
            "crit extension",
            sign_es256(
                &op_key,
                &json!({"alg": "ES256", "kid": op_kid, "crit": ["exp"], "exp": 1}),
                &service_claims(&op),
            ),
            AuthError::CriticalHeader,
        ),
        (
            "not a JWS",
            "not.a-token".into(),
            AuthError::Malformed("not three dot-separated parts"),
        ),
    ];

    let mut reasons = Vec::new();
    for (name, token, expected) in &cases {
        let got = validator.validate_access_token(token).await;
        match (&got, expected) {
            // Seconds drift by one if the clock ticks between minting and checking.
            (Err(AuthError::Expired { seconds_ago }), AuthError::Expired { seconds_ago: want }) => {
                assert!((seconds_ago - want).abs() <= 2, "{name}: {got:?}")
            }
            (
                Err(AuthError::NotYetValid { seconds_ahead }),
                AuthError::NotYetValid {
                    seconds_ahead: want,
                },
            ) => assert!((seconds_ahead - want).abs() <= 2, "{name}: {got:?}"),
            _ => assert_eq!(got.as_ref(), Err(expected), "{name}"),
        }
        let err = got.unwrap_err();
        let message = err.to_string();
        assert!(
            !message.contains(token.as_str()) && !message.contains("eyJ"),
            "{name}: error echoes the token: {message}"
        );
        println!("{name:45} → {} ({message})", err.reason());
        reasons.push(message);
    }
    // Only the two genuine signature failures share a reason.
    let mut distinct = reasons.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), reasons.len() - 1, "{reasons:?}");

    assert_eq!(
        attacker_host.hits.load(Ordering::SeqCst),
        0,
        "the validator contacted a URL named by a token header"
    );
    // The provider's real token is still fine after all that.
    validator.validate_access_token(&real).await.unwrap();
}

#[tokio::test]
async fn unknown_kid_refetches_jwks_at_most_once_per_window() {
    let op = Op::start().await;
    let proxy = counting_server(Some(format!("{}/jwks", op.issuer)), Value::Null).await;
    let mut config = op.config();
    config.jwks_url = Some(format!("{}/jwks", proxy.url));
    let window = Duration::from_secs(2);
    let validator = TokenValidator::new(vec![config], http())
        .unwrap()
        .with_jwks_refresh_interval(window);
    let fetches = || proxy.hits.load(Ordering::SeqCst);

    let real = op.client_credentials("agent-1", "agent-secret").await;
    validator.validate_access_token(&real).await.unwrap();
    assert_eq!(fetches(), 1, "first use fetches the JWKS");
    validator.validate_access_token(&real).await.unwrap();
    assert_eq!(fetches(), 1, "known kid: served from the cache");

    let attacker = fresh_ec_key();
    let unknown = |kid: &str| {
        sign_es256(
            &attacker,
            &json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}),
            &service_claims(&op),
        )
    };
    // Inside the window of the first fetch, an unknown kid is refused without a fetch.
    assert_eq!(
        validator
            .validate_access_token(&unknown("w"))
            .await
            .unwrap_err()
            .reason(),
        "unknown_key"
    );
    assert_eq!(fetches(), 1, "rate limit counts the first fetch too");

    tokio::time::sleep(window).await;
    let started = Instant::now();
    // A burst of unknown kids, sequential and concurrent: one refetch in total.
    for i in 0..5 {
        let err = validator
            .validate_access_token(&unknown(&format!("x{i}")))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "unknown_key");
    }
    let burst: Vec<_> = (0..20).map(|i| unknown(&format!("y{i}"))).collect();
    let results =
        futures::future::join_all(burst.iter().map(|t| validator.validate_access_token(t))).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap_err().reason() == "unknown_key")
    );
    assert!(started.elapsed() < window, "test too slow for its window");
    assert_eq!(fetches(), 2, "25 unknown kids in one window: one refetch");

    tokio::time::sleep(window).await;
    validator
        .validate_access_token(&unknown("z"))
        .await
        .unwrap_err();
    assert_eq!(fetches(), 3, "next window: one more refetch");
    // The process-wide counter behind certflow_jwks_refreshes_total saw them
    // (at least: other tests may share the process under `cargo test`).
    assert!(certflow_auth::jwks_fetches().0 >= 3);
    validator.validate_access_token(&real).await.unwrap();
    assert_eq!(fetches(), 3);
}

/// A JWKS endpoint whose key set the test replaces, counting its fetches.
async fn switchable_jwks(initial: Value) -> (String, Arc<std::sync::Mutex<Value>>, CountingServer) {
    let current = Arc::new(std::sync::Mutex::new(initial));
    let hits = Arc::new(AtomicUsize::new(0));
    let (served, counter) = (current.clone(), hits.clone());
    let app = axum::Router::new().fallback(move || {
        let body = served.lock().unwrap().to_string();
        counter.fetch_add(1, Ordering::SeqCst);
        async move { ([("content-type", "application/json")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let server = CountingServer {
        url: url.clone(),
        hits,
        task,
    };
    (format!("{url}/jwks"), current, server)
}

#[tokio::test]
async fn remembered_tokens_end_with_their_key_in_the_jwks() {
    let (old, new) = (fresh_ec_key(), fresh_ec_key());
    let (jwks_url, jwks, server) =
        switchable_jwks(json!({"keys": [public_jwk(&old, "old")]})).await;
    let issuer = "https://issuer.certflow.test";
    let mut config = IssuerConfig::new(issuer, Some(API.to_owned()));
    config.jwks_url = Some(jwks_url);
    let validator = TokenValidator::new(vec![config], http())
        .unwrap()
        .with_jwks_refresh_interval(Duration::ZERO);
    let claims = |jti: &str| {
        let t = now();
        json!({"iss": issuer, "sub": "agent-1", "client_id": "agent-1", "aud": API,
               "iat": t, "exp": t + 300, "jti": jti})
    };
    let header = |kid: &str| json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
    let token = sign_es256(&old, &header("old"), &claims("t1"));

    let first = validator.validate_access_token(&token).await.unwrap();
    for _ in 0..3 {
        // Served from memory: the same claims, no new JWKS fetch.
        assert_eq!(
            validator.validate_access_token(&token).await.unwrap(),
            first
        );
        assert_eq!(
            *validator
                .validate_access_token_shared(&token)
                .await
                .unwrap(),
            first
        );
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // The issuer rotates the old key out; a token of the new key makes the
    // validator refetch the set, and from then on the remembered token is refused.
    *jwks.lock().unwrap() = json!({"keys": [public_jwk(&new, "new")]});
    let rotated = sign_es256(&new, &header("new"), &claims("t2"));
    validator.validate_access_token(&rotated).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    for _ in 0..2 {
        let err = validator.validate_access_token(&token).await.unwrap_err();
        assert_eq!(err.reason(), "unknown_key", "{err}");
    }

    // The same kid with other key material is another key: still refused.
    *jwks.lock().unwrap() = json!({"keys": [public_jwk(&new, "new"), public_jwk(&new, "old")]});
    let err = validator.validate_access_token(&token).await.unwrap_err();
    assert_eq!(err.reason(), "bad_signature", "{err}");

    // A cache of zero verifies every time and answers the same.
    let (jwks_url, _jwks, uncached_server) =
        switchable_jwks(json!({"keys": [public_jwk(&old, "old")]})).await;
    let mut config = IssuerConfig::new(issuer, Some(API.to_owned()));
    config.jwks_url = Some(jwks_url);
    let uncached = TokenValidator::new(vec![config], http())
        .unwrap()
        .with_access_token_cache(0);
    assert_eq!(uncached.validate_access_token(&token).await.unwrap(), first);
    assert_eq!(uncached.validate_access_token(&token).await.unwrap(), first);
    assert_eq!(uncached_server.hits.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------
// Cognito (moto).

struct Pool {
    id: String,
    console_client: String,
    other_client: String,
}

async fn cognito_pool(moto: &Moto) -> (aws_sdk_cognitoidentityprovider::Client, Pool) {
    use aws_sdk_cognitoidentityprovider::types::ExplicitAuthFlowsType;
    let client = aws_sdk_cognitoidentityprovider::Client::new(&moto.sdk_config().await);
    let pool = client
        .create_user_pool()
        .pool_name("certflow")
        .send()
        .await
        .unwrap();
    let id = pool.user_pool().unwrap().id().unwrap().to_owned();
    let mut clients = Vec::new();
    for name in ["console", "other"] {
        let c = client
            .create_user_pool_client()
            .user_pool_id(&id)
            .client_name(name)
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowUserPasswordAuth)
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
            .send()
            .await
            .unwrap();
        clients.push(
            c.user_pool_client()
                .unwrap()
                .client_id()
                .unwrap()
                .to_owned(),
        );
    }
    client
        .admin_create_user()
        .user_pool_id(&id)
        .username("carol")
        .send()
        .await
        .unwrap();
    client
        .admin_set_user_password()
        .user_pool_id(&id)
        .username("carol")
        .password("Corr3ct-Horse!")
        .permanent(true)
        .send()
        .await
        .unwrap();
    for group in ["certflow-operators", "team-payments", "dev-null"] {
        client
            .create_group()
            .user_pool_id(&id)
            .group_name(group)
            .send()
            .await
            .unwrap();
        client
            .admin_add_user_to_group()
            .user_pool_id(&id)
            .username("carol")
            .group_name(group)
            .send()
            .await
            .unwrap();
    }
    let other_client = clients.pop().unwrap();
    let console_client = clients.pop().unwrap();
    (
        client,
        Pool {
            id,
            console_client,
            other_client,
        },
    )
}

async fn password_login(
    client: &aws_sdk_cognitoidentityprovider::Client,
    app_client: &str,
) -> (String, String) {
    let out = client
        .initiate_auth()
        .auth_flow(aws_sdk_cognitoidentityprovider::types::AuthFlowType::UserPasswordAuth)
        .client_id(app_client)
        .auth_parameters("USERNAME", "carol")
        .auth_parameters("PASSWORD", "Corr3ct-Horse!")
        .send()
        .await
        .unwrap();
    let result = out.authentication_result().unwrap();
    (
        result.access_token().unwrap().to_owned(),
        result.id_token().unwrap().to_owned(),
    )
}

fn cognito_config(moto: &Moto, pool: &Pool) -> IssuerConfig {
    let mut c = IssuerConfig::new(
        format!(
            "https://cognito-idp.{}.amazonaws.com/{}",
            certflow_testkit::AWS_REGION,
            pool.id
        ),
        None,
    );
    c.flavor = Flavor::Cognito;
    c.jwks_url = Some(format!(
        "{}/{}/.well-known/jwks.json",
        moto.endpoint, pool.id
    ));
    c.client_ids = vec![pool.console_client.clone()];
    c.roles.operator = vec!["certflow-operators".into()];
    c.team_group_prefix = Some("team-".into());
    c
}

#[tokio::test]
async fn cognito_access_token_validates_and_maps_groups() {
    let moto = Moto::start().await;
    let (client, pool) = cognito_pool(&moto).await;
    let validator = TokenValidator::new(vec![cognito_config(&moto, &pool)], http()).unwrap();

    let (access, id) = password_login(&client, &pool.console_client).await;
    let claims = validator.validate_access_token(&access).await.unwrap();
    assert_eq!(
        claims.client_id.as_deref(),
        Some(pool.console_client.as_str())
    );
    assert!(
        claims.audience.is_empty(),
        "Cognito access tokens carry no aud"
    );
    let mut groups = claims.groups.clone();
    groups.sort();
    assert_eq!(groups, ["certflow-operators", "dev-null", "team-payments"]);
    let principal = validator.principal(&claims);
    assert_eq!(principal.kind, PrincipalKind::Person);
    assert_eq!(Some(principal.subject.as_str()), claims.subject.as_deref());
    assert_eq!(principal.roles, vec![Role::Operator]);
    assert_eq!(principal.teams, vec!["payments".to_owned()]);

    // The ID token is not a bearer token, whatever its signature.
    assert_eq!(
        validator.validate_access_token(&id).await,
        Err(AuthError::WrongTokenUse {
            expected: "access",
            found: "id".into()
        })
    );
    // An ID token is checked as one, but moto's carry no nonce.
    assert_eq!(
        validator
            .validate_id_token(&id, "n", &pool.console_client)
            .await,
        Err(AuthError::NonceMismatch)
    );

    // Same pool, same keys, but an app client certflow does not accept.
    let (other_access, _) = password_login(&client, &pool.other_client).await;
    assert_eq!(
        validator.validate_access_token(&other_access).await,
        Err(AuthError::ClientNotAllowed)
    );
}

// ---------------------------------------------------------------------------
// Configuration.

#[test]
fn configuration_refuses_hmac_unknown_fields_and_incomplete_issuers() {
    let parse = |toml_like: Value| serde_json::from_value::<IssuerConfig>(toml_like);
    let ok = parse(json!({
        "issuer": "https://example.okta.com/oauth2/default",
        "audience": "api://default",
        "flavor": "okta",
        "roles": {"admin": ["certflow-admins"]},
        "team_group_prefix": "team-",
        "service_roles": {"0oa-automation": {"role": "operator", "teams": ["payments"]}},
    }))
    .unwrap();
    assert_eq!(ok.group_claim(), "groups");
    assert_eq!(ok.leeway_secs, 60);
    assert_eq!(
        ok.discovery_url(),
        "https://example.okta.com/oauth2/default/.well-known/openid-configuration"
    );
    assert!(TokenValidator::new(vec![ok], http()).is_ok());

    for alg in ["HS256", "none"] {
        assert!(
            parse(json!({"issuer": "i", "audience": "a", "algorithms": [alg]})).is_err(),
            "{alg} must not be configurable"
        );
    }
    assert!(parse(json!({"issuer": "i", "audience": "a", "audiance": "typo"})).is_err());
    assert!(parse(json!({"issuer": "i", "audience": "a", "roles": {"superuser": ["x"]}})).is_err());

    let cognito = parse(json!({"issuer": "i", "flavor": "cognito"})).unwrap();
    assert_eq!(cognito.group_claim(), "cognito:groups");
    assert!(TokenValidator::new(vec![cognito], http()).is_err());
    let no_audience = parse(json!({"issuer": "i"})).unwrap();
    assert!(TokenValidator::new(vec![no_audience], http()).is_err());
    let twice = IssuerConfig::new("i", Some("a".into()));
    assert!(TokenValidator::new(vec![twice.clone(), twice], http()).is_err());

    assert_eq!(
        certflow_auth::bearer_token("Bearer abc.def.ghi"),
        Some("abc.def.ghi")
    );
    assert_eq!(certflow_auth::bearer_token("bearer  abc"), Some("abc"));
    assert_eq!(certflow_auth::bearer_token("Basic abc"), None);
    assert_eq!(certflow_auth::bearer_token("Bearer "), None);
}
