//! Talking to certflow: enrolment (join token or OIDC client-credentials
//! token), the mTLS client built from the identity certificate, identity
//! renewal before expiry, conditional long-polling of assignments, bundles,
//! agent-requested certificates and reports.

use std::time::{Duration, Instant};

use anyhow::Context;
use certflow_api::agent::{
    AgentCertificateRequest, AgentRenewRequest, Assignment, AssignmentList, CertificateBundle,
    DiscoveryReport, EnrollRequest, IdentityView, RenewIdentityRequest, ReportRequest,
};
use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::config::{Config, KeyType};
use crate::pki;
use crate::state::{StateDir, write_atomic};

/// A failed call, split by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer (connection refused, TLS failure, timeout): back off and retry.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error status.
    #[error("{method} {path}: {status}: {detail}")]
    Status {
        /// Request method.
        method: &'static str,
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The problem document's detail (or title).
        detail: String,
    },
}

/// The agent's identity certificate and key.
struct Identity {
    cert_pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// A cached client-credentials access token.
struct Token {
    value: Zeroizing<String>,
    refresh_at: Instant,
}

/// The connection to certflow and the agent's credentials.
pub struct Client {
    cfg: Config,
    state: StateDir,
    base: String,
    /// No client certificate: enrolment only.
    anon: reqwest::Client,
    /// With the identity certificate: every other route.
    mtls: Option<reqwest::Client>,
    identity: Option<Identity>,
    token_http: reqwest::Client,
    token: Option<Token>,
    etag: Option<String>,
    assignments: Option<Vec<Assignment>>,
    /// The last poll brought a new list.
    changed: bool,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

fn user_agent() -> String {
    format!("certflow-agent/{}", env!("CARGO_PKG_VERSION"))
}

fn server_roots(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).with_context(|| format!("ca_file {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("ca_file {}: not a PEM bundle", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "ca_file {}: no certificate",
        path.display()
    );
    Ok(certs)
}

impl Client {
    /// Builds the clients and loads a saved identity.
    pub fn new(cfg: &Config, state: StateDir) -> anyhow::Result<Self> {
        let roots = server_roots(&cfg.ca_file)?;
        let anon = reqwest::Client::builder()
            .tls_certs_only(roots)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(user_agent())
            .build()?;
        let mut tb = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(user_agent());
        if let Some(ca) = &cfg.auth.token_ca_file {
            tb = tb.tls_certs_only(server_roots(ca)?);
        }
        let mut c = Self {
            cfg: cfg.clone(),
            state,
            base: cfg.server.trim_end_matches('/').to_owned(),
            anon,
            mtls: None,
            identity: None,
            token_http: tb.build()?,
            token: None,
            etag: None,
            assignments: None,
            changed: false,
        };
        c.load_identity()?;
        Ok(c)
    }

    fn load_identity(&mut self) -> anyhow::Result<()> {
        let key = self.state.read_secret(&self.state.identity("key.pem"));
        let cert = std::fs::read_to_string(self.state.identity("cert.pem")).ok();
        let (Some(key_pem), Some(cert_pem)) = (key, cert) else {
            return Ok(());
        };
        let der = pki::pem_certs(&cert_pem)?
            .into_iter()
            .next()
            .context("identity/cert.pem holds no certificate")?;
        let info = pki::cert_info(&der)?;
        let id = reqwest::Identity::from_pem(format!("{cert_pem}{}", key_pem.as_str()).as_bytes())
            .context("identity certificate and key are unusable")?;
        self.mtls = Some(
            reqwest::Client::builder()
                .tls_certs_only(server_roots(&self.cfg.ca_file)?)
                .identity(id)
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(600))
                .user_agent(user_agent())
                .build()?,
        );
        self.identity = Some(Identity {
            cert_pem,
            not_before: info.not_before,
            not_after: info.not_after,
        });
        Ok(())
    }

    /// Whether an identity certificate is on disk.
    pub fn enrolled(&self) -> bool {
        self.identity.is_some()
    }

    /// End of the identity's validity.
    pub fn identity_not_after(&self) -> Option<OffsetDateTime> {
        self.identity.as_ref().map(|i| i.not_after)
    }

    /// Enrols when there is no usable identity, renews it once two thirds
    /// of its lifetime have passed, and re-enrols (OIDC token, or a new
    /// join token dropped into the file) when it expired while the host was off.
    pub async fn ensure_identity(&mut self) -> anyhow::Result<()> {
        let now = OffsetDateTime::now_utc();
        let Some(id) = &self.identity else {
            return self.enroll().await.context("enrolment");
        };
        if now >= id.not_after {
            tracing::warn!(not_after = %id.not_after, "identity certificate expired; enrolling again");
            return self.enroll().await.context(
                "re-enrolment after the identity expired (an OIDC client or a new join token is needed)",
            );
        }
        let life = id.not_after - id.not_before;
        if now >= id.not_before + life * 2 / 3 {
            match self.renew_identity().await {
                Ok(()) => {
                    tracing::info!(not_after = ?self.identity_not_after(), "identity renewed")
                }
                // The current identity still works; try again next cycle.
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "identity renewal failed"),
            }
        }
        Ok(())
    }

    async fn bearer_for_enrolment(&mut self) -> anyhow::Result<Zeroizing<String>> {
        if self.cfg.auth.token_endpoint.is_some() {
            return self.oidc_token().await;
        }
        let file = self
            .cfg
            .auth
            .join_token_file
            .as_ref()
            .context("no join token file")?;
        let t = std::fs::read_to_string(file)
            .with_context(|| format!("join token {}", file.display()))?;
        Ok(Zeroizing::new(t.trim().to_owned()))
    }

    async fn enroll(&mut self) -> anyhow::Result<()> {
        let bearer = self.bearer_for_enrolment().await?;
        let key = pki::generate_key(KeyType::EcdsaP256)?;
        let cn = self
            .cfg
            .agent_name
            .clone()
            .unwrap_or_else(|| "certflow-agent".into());
        let body = EnrollRequest {
            csr: pki::csr(&key, &cn, &[])?,
            name: self.cfg.agent_name.clone(),
        };
        let path = "/agent/v1/enroll";
        let rb = self
            .anon
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer.as_str())
            .json(&body);
        let view: IdentityView =
            expect_json("POST", path, rb.send().await, StatusCode::CREATED).await?;
        self.save_identity(&key, &view)?;
        tracing::info!(agent_id = %view.agent_id, name = %view.name, not_after = %view.not_after, "enrolled");
        Ok(())
    }

    async fn renew_identity(&mut self) -> anyhow::Result<()> {
        let key = pki::generate_key(KeyType::EcdsaP256)?;
        let cn = self
            .cfg
            .agent_name
            .clone()
            .unwrap_or_else(|| "certflow-agent".into());
        let body = RenewIdentityRequest {
            csr: pki::csr(&key, &cn, &[])?,
        };
        let view: IdentityView = self
            .post("/agent/v1/identity/renew", &body, StatusCode::OK)
            .await?;
        self.save_identity(&key, &view)
    }

    fn save_identity(
        &mut self,
        key: &Zeroizing<String>,
        view: &IdentityView,
    ) -> anyhow::Result<()> {
        // The certificate must be for our key before we throw the old pair away.
        let der = pki::pem_certs(&view.certificate_pem)?
            .into_iter()
            .next()
            .context("no identity certificate in the answer")?;
        anyhow::ensure!(
            pki::key_public(key)? == pki::cert_info(&der)?.public_key,
            "the identity certificate is not for the key we sent"
        );
        // Key first: a crash in between leaves a new key with the old
        // certificate, which fails to load and leads to re-enrolment.
        write_atomic(&self.state.identity("key.pem"), key.as_bytes(), 0o600)?;
        write_atomic(
            &self.state.identity("cert.pem"),
            view.certificate_pem.as_bytes(),
            0o644,
        )?;
        write_atomic(
            &self.state.identity("ca.pem"),
            view.ca_chain_pem.as_bytes(),
            0o644,
        )?;
        self.load_identity()
    }

    /// The client-credentials token, from cache until it nears expiry.
    async fn oidc_token(&mut self) -> anyhow::Result<Zeroizing<String>> {
        if let Some(t) = &self.token
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let a = &self.cfg.auth;
        let endpoint = a.token_endpoint.clone().context("no token endpoint")?;
        let client_id = a.client_id.clone().unwrap_or_default();
        let secret = match (&a.client_secret, &a.client_secret_file) {
            (Some(s), _) => Zeroizing::new(s.clone()),
            (None, Some(f)) => Zeroizing::new(
                std::fs::read_to_string(f)
                    .with_context(|| format!("client secret {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => anyhow::bail!("no client secret"),
        };
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        for (k, v) in [
            ("resource", &a.resource),
            ("audience", &a.audience),
            ("scope", &a.scope),
        ] {
            if let Some(v) = v {
                form.push((k, v));
            }
        }
        let body = serde_urlencoded::to_string(&form)?;
        let resp = self
            .token_http
            .post(&endpoint)
            .basic_auth(&client_id, Some(secret.as_str()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| CallError::Unreachable(format!("token endpoint {endpoint}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            // The body of a token error names the reason (invalid_client...), never the secret.
            let text: String = resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            anyhow::bail!("token endpoint {endpoint}: {status}: {text}");
        }
        let t: TokenResponse = resp.json().await.context("token endpoint answer")?;
        let life = Duration::from_secs(t.expires_in.unwrap_or(300));
        // Refresh at 80 % of the lifetime, and at least 30 s before the end.
        let early = (life / 5).max(Duration::from_secs(30)).min(life);
        let value = Zeroizing::new(t.access_token);
        self.token = Some(Token {
            value: value.clone(),
            refresh_at: Instant::now() + (life - early),
        });
        Ok(value)
    }

    fn mtls(&self) -> anyhow::Result<&reqwest::Client> {
        self.mtls.as_ref().context("not enrolled")
    }

    /// An mTLS request; with OIDC client credentials configured it also
    /// carries the access token (the server wants both from a token-enrolled agent).
    async fn request(
        &mut self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let token = if self.cfg.auth.token_endpoint.is_some() {
            Some(self.oidc_token().await?)
        } else {
            None
        };
        let mut rb = self.mtls()?.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t.as_str());
        }
        Ok(rb)
    }

    /// `GET /agent/v1/assignments` with `If-None-Match` and `?wait=`: the
    /// list when it changed (or on the first call), `None` on 304.
    pub async fn poll(&mut self, wait: u64) -> anyhow::Result<Option<Vec<Assignment>>> {
        let path = "/agent/v1/assignments";
        let mut rb = self
            .request(reqwest::Method::GET, path)
            .await?
            .timeout(Duration::from_secs(wait + 30));
        if wait > 0 {
            rb = rb.query(&[("wait", wait)]);
        }
        if let (Some(e), Some(_)) = (&self.etag, &self.assignments) {
            rb = rb.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            self.changed = false;
            return Ok(None);
        }
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let list: AssignmentList = expect_json("GET", path, Ok(resp), StatusCode::OK).await?;
        self.etag = etag;
        self.assignments = Some(list.items.clone());
        self.changed = true;
        Ok(Some(list.items))
    }

    /// The last list received.
    pub fn assignments(&self) -> Option<&[Assignment]> {
        self.assignments.as_deref()
    }

    /// Whether the last poll brought a new list (poll again at once: more may follow).
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Forgets the ETag so the next poll fetches the list (after a change we made).
    pub fn invalidate(&mut self) {
        self.etag = None;
    }

    /// `GET /agent/v1/certificates/{id}`.
    pub async fn bundle(&mut self, id: uuid::Uuid) -> anyhow::Result<CertificateBundle> {
        let path = format!("/agent/v1/certificates/{id}");
        let rb = self.request(reqwest::Method::GET, &path).await?;
        expect_json("GET", &path, rb.send().await, StatusCode::OK).await
    }

    /// `POST /agent/v1/certificates`.
    pub async fn request_certificate(
        &mut self,
        req: &AgentCertificateRequest,
    ) -> anyhow::Result<Assignment> {
        let a = self
            .post("/agent/v1/certificates", req, StatusCode::CREATED)
            .await?;
        self.invalidate();
        Ok(a)
    }

    /// `POST /agent/v1/certificates/{id}/renew`.
    pub async fn renew_certificate(
        &mut self,
        id: uuid::Uuid,
        csr: Option<String>,
    ) -> anyhow::Result<Assignment> {
        let path = format!("/agent/v1/certificates/{id}/renew");
        let a = self
            .post(&path, &AgentRenewRequest { csr }, StatusCode::OK)
            .await?;
        self.invalidate();
        Ok(a)
    }

    /// `POST /agent/v1/reports`.
    pub async fn report(&mut self, req: &ReportRequest) -> anyhow::Result<()> {
        let path = "/agent/v1/reports";
        let resp = self
            .request(reqwest::Method::POST, path)
            .await?
            .json(req)
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(status_error("POST", path, resp).await.into())
    }

    /// `POST /agent/v1/discovered`: the whole current discovery view (it
    /// replaces what this agent reported before).
    pub async fn report_discovered(&mut self, report: &DiscoveryReport) -> anyhow::Result<()> {
        let path = "/agent/v1/discovered";
        let resp = self
            .request(reqwest::Method::POST, path)
            .await?
            .json(report)
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(status_error("POST", path, resp).await.into())
    }

    async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
        want: StatusCode,
    ) -> anyhow::Result<T> {
        let rb = self.request(reqwest::Method::POST, path).await?.json(body);
        expect_json("POST", path, rb.send().await, want).await
    }

    /// Identity details for `status`.
    pub fn identity_summary(&self) -> Option<String> {
        let id = self.identity.as_ref()?;
        let der = pki::pem_certs(&id.cert_pem).ok()?.into_iter().next()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or("?")
            .to_owned();
        let uri = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|s| {
                s.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
            })
            .unwrap_or_default();
        Some(format!(
            "{cn} {uri} (identity valid until {})",
            id.not_after
        ))
    }
}

async fn status_error(method: &'static str, path: &str, resp: reqwest::Response) -> CallError {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    let detail = v["detail"]
        .as_str()
        .or(v["title"].as_str())
        .unwrap_or("no detail")
        .to_owned();
    CallError::Status {
        method,
        path: path.to_owned(),
        status,
        detail,
    }
}

async fn expect_json<T: DeserializeOwned>(
    method: &'static str,
    path: &str,
    r: reqwest::Result<reqwest::Response>,
    want: StatusCode,
) -> anyhow::Result<T> {
    let resp = r.map_err(|e| CallError::Unreachable(e.to_string()))?;
    if resp.status() != want && !(want == StatusCode::OK && resp.status().is_success()) {
        return Err(status_error(method, path, resp).await.into());
    }
    resp.json()
        .await
        .with_context(|| format!("{method} {path}: unexpected answer"))
}

/// Whether an error means "the server is not there" (back off) rather than a refusal.
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<CallError>(),
            Some(CallError::Unreachable(_))
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_told_apart_from_a_refusal() {
        let e: anyhow::Error = CallError::Unreachable("refused".into()).into();
        assert!(is_unreachable(&e.context("poll")));
        let e: anyhow::Error = CallError::Status {
            method: "GET",
            path: "/x".into(),
            status: 403,
            detail: "disabled".into(),
        }
        .into();
        assert!(!is_unreachable(&e));
        assert!(e.to_string().contains("403: disabled"));
    }

    #[test]
    fn a_saved_identity_is_loaded_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = crate::pki::tests::TestCa::new();
        std::fs::write(tmp.path().join("ca.pem"), &ca.pem).unwrap();
        let cfg: Config = toml::from_str(&format!(
            "server = \"https://127.0.0.1:1\"\nca_file = \"{d}/ca.pem\"\nstate_dir = \"{d}/state\"\n[auth]\njoin_token_file = \"{d}/jt\"\n",
            d = tmp.path().display()
        ))
        .unwrap();
        let state = StateDir::open(&cfg.state_dir).unwrap();
        let mut c = Client::new(&cfg, state.clone()).unwrap();
        assert!(!c.enrolled());
        let key = pki::generate_key(KeyType::EcdsaP256).unwrap();
        let cert = pki::cert_pem(&ca.leaf(&key, &["agent.example"]));
        let view = IdentityView {
            agent_id: uuid::Uuid::nil(),
            name: "a".into(),
            teams: vec![],
            certificate_pem: cert.clone(),
            ca_chain_pem: ca.pem.clone(),
            not_after: OffsetDateTime::now_utc(),
        };
        // A certificate for another key is refused and nothing is written.
        let other = pki::generate_key(KeyType::EcdsaP256).unwrap();
        assert!(c.save_identity(&other, &view).is_err());
        assert!(!state.identity("key.pem").exists());
        c.save_identity(&key, &view).unwrap();
        assert!(c.enrolled());
        let again = Client::new(&cfg, state).unwrap();
        assert!(again.enrolled());
    }
}
