//! Configuration: defaults, then a TOML file, then `CERTFLOW_*` environment
//! variables (`__` separates sections: `CERTFLOW_SERVER__LISTEN`). Unknown keys
//! are rejected and every value is checked at start, so a typo stops the server
//! with a message instead of being ignored. Secrets live in types that never print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use certflow_core::model::KeyType;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where embedded state lives (SQLite file, blobs, generated master key).
    pub data_dir: PathBuf,
    /// HTTP listener.
    pub server: ServerConfig,
    /// Metadata store.
    pub database: DatabaseConfig,
    /// Blob store.
    pub blob: BlobConfig,
    /// Master key for envelope encryption of private keys.
    pub master_key: MasterKeyConfig,
    /// The internal CA created on first start.
    pub ca: CaConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// Auto-renewal: queue, scheduler, workers, policies.
    pub renewal: RenewalConfig,
    /// Notification channels and delivery.
    pub notifications: NotificationsConfig,
    /// Outbound calls to URLs users name (webhooks): `[outbound] allow` lists
    /// the loopback, private or link-local destinations an administrator
    /// allows; every other such address is refused.
    pub outbound: certflow_core::outbound::OutboundSettings,
    /// ACME issuers by name: `[acme.<name>]` with `directory_url`, `contact`,
    /// `challenge`, `dns`, `external_account_binding`, `ca_bundle`...
    #[serde(skip_serializing)]
    pub acme: std::collections::BTreeMap<String, certflow_acme::AcmeSettings>,
    /// The agent listener and agent identities (`[agent]`).
    pub agent: AgentConfig,
    /// Console rate limits and client addresses (`[console]`).
    pub console: ConsoleConfig,
    /// Issuance policies (`[policy.default]`, `[policy.teams.<team>]`,
    /// `[policy.issuers.<issuer name>]`): every applicable one must pass, on
    /// request and before every renewal.
    pub policy: certflow_core::policy::IssuancePolicies,
    /// Where `/metrics` is served and what it requires (`[metrics]`).
    pub metrics: MetricsConfig,
    /// Pushing certificates to AWS Certificate Manager and ELBv2 listeners (`[destinations]`).
    pub destinations: DestinationsConfig,
    /// The ACME server (`[acme_server]`, off by default).
    pub acme_server: AcmeServerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("certflow-data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            blob: BlobConfig::default(),
            master_key: MasterKeyConfig::default(),
            ca: CaConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            renewal: RenewalConfig::default(),
            notifications: NotificationsConfig::default(),
            outbound: Default::default(),
            acme: Default::default(),
            agent: Default::default(),
            console: ConsoleConfig::default(),
            policy: Default::default(),
            metrics: MetricsConfig::default(),
            destinations: DestinationsConfig::default(),
            acme_server: AcmeServerConfig::default(),
        }
    }
}

/// `[renewal]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenewalConfig {
    /// `database` (embedded queue in the metadata store) or `sqs`.
    pub queue: String,
    /// Seconds between scheduler scans.
    pub scheduler_interval_secs: u64,
    /// Attempts before a job is dead-lettered.
    pub max_attempts: u32,
    /// Lease (visibility timeout) of a delivery, seconds: a running job's
    /// worker extends it every third by heartbeat, so it is how long the job
    /// of a worker that died (killed, crashed, cut off) waits before another
    /// worker takes it over. It does not bound how long a renewal may run:
    /// that is `work_timeout_secs`. (Before `work_timeout_secs` existed the
    /// default was 300; a configuration that still says 300 keeps a 300 s
    /// takeover, and the start-up margin check says what that costs.)
    pub lease_secs: u64,
    /// Longest a renewal attempt may run in a live worker, seconds: then it is
    /// cut short and counted as a failed attempt (retried with backoff).
    pub work_timeout_secs: u64,
    /// How long one renewal normally takes, seconds (internal CA: well under
    /// a second; ACME HTTP-01: seconds; DNS-01: the propagation wait). The
    /// margin checks use it, and a certificate whose current version has less
    /// time left than this is `renewal-at-risk`.
    pub expected_renewal_secs: u64,
    /// Jobs one worker process works on at once.
    pub concurrency: u32,
    /// First retry delay, seconds (doubles per attempt, with jitter).
    pub backoff_base_secs: u64,
    /// Longest retry delay, seconds.
    pub backoff_cap_secs: u64,
    /// Amazon SQS queue, when `queue = "sqs"`.
    #[serde(skip_serializing)]
    pub sqs: Option<certflow_renewal::SqsOptions>,
    /// Renewal policies for new certificates that bring none: `[renewal.policy.default]`,
    /// `[renewal.policy.teams.<team>]`, `[renewal.policy.issuers.<issuer name>]`.
    pub policy: certflow_core::renewal::RenewalDefaults,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        Self {
            queue: "database".into(),
            scheduler_interval_secs: 60,
            max_attempts: 8,
            lease_secs: 15,
            work_timeout_secs: 300,
            expected_renewal_secs: 30,
            // The knee of the renewal bench on two cores (BENCHMARKS.md, goal
            // 4): SQLite 710/s at 16, 930/s at 32, 955/s at 64. Below the CPU
            // pool's queue (64), so a burst of key generations is not refused.
            concurrency: 32,
            backoff_base_secs: 30,
            backoff_cap_secs: 3600,
            sqs: None,
            policy: certflow_core::renewal::RenewalDefaults::default(),
        }
    }
}

impl RenewalConfig {
    /// The worst-case renewal times these settings allow, for the margin
    /// checks (see [`certflow_core::renewal::RenewalMargin`]).
    pub fn margin(&self) -> certflow_core::renewal::RenewalMargin {
        certflow_core::renewal::RenewalMargin {
            scan_interval: std::time::Duration::from_secs(self.scheduler_interval_secs),
            takeover: std::time::Duration::from_secs(self.lease_secs),
            renewal: std::time::Duration::from_secs(self.expected_renewal_secs),
            retry: std::time::Duration::from_secs(self.backoff_base_secs),
        }
    }
}

/// `[notifications]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// Record and deliver notifications at all.
    pub enabled: bool,
    /// Delivery loop tuning (`[notifications.delivery]`).
    pub delivery: certflow_notify::DispatcherSettings,
    /// Expiry warnings and the daily digest (`[notifications.expiry]`).
    pub expiry: certflow_notify::ExpirySettings,
    /// Webhook client (`[notifications.webhook]`).
    pub webhook: certflow_notify::WebhookSettings,
    /// SMTP server for email subscriptions (`[notifications.smtp]`); email is off without it.
    #[serde(skip_serializing)]
    pub smtp: Option<certflow_notify::SmtpSettings>,
    /// Amazon SNS for SNS subscriptions (`[notifications.sns]`).
    pub sns: Option<AwsEndpoint>,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            delivery: Default::default(),
            expiry: Default::default(),
            webhook: Default::default(),
            smtp: None,
            sns: None,
        }
    }
}

/// Region and optional endpoint of an AWS service (the endpoint for emulators
/// or VPC endpoints); credentials come from the SDK's default chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsEndpoint {
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// Endpoint URL override.
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the console listener.
    pub listen: SocketAddr,
    /// Externally reachable base URL of the console listener (console links,
    /// the ACME directory). Defaults to `http(s)://<listen>`.
    pub public_url: Option<String>,
    /// Base URL of `/pki/*` written into certificates (CA issuers, CRL,
    /// OCSP): plain `http://`, as RFC 5280 relying parties fetch them.
    /// Defaults to `public_url`, or `http://<server.tls.http_listen>`
    /// with `[server.tls]`.
    pub pki_url: Option<String>,
    /// On SIGTERM, seconds to keep accepting requests with `/readyz` at 503
    /// (so load balancers take the replica out) before the listener closes.
    pub drain_delay_secs: u64,
    /// Then, longest wait for requests in flight to finish, seconds.
    pub drain_timeout_secs: u64,
    /// HTTPS on the console listener (`[server.tls]`); plain HTTP without it.
    pub tls: Option<ServerTlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            pki_url: None,
            drain_delay_secs: 0,
            drain_timeout_secs: 30,
            tls: None,
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (default `<data_dir>/certflow.db`) or
    /// `postgres://user@host:5432/db?sslmode=verify-full`. A password in the URL is
    /// accepted but better given as `PGPASSWORD` or a `.pgpass` file.
    pub url: Option<String>,
    /// PostgreSQL pool size per replica.
    pub max_connections: u32,
    /// PostgreSQL `statement_timeout`, seconds (0 keeps the server's).
    pub statement_timeout_secs: u64,
    /// How long to wait for the database at start and for a pooled connection, seconds.
    pub connect_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
            statement_timeout_secs: 30,
            connect_timeout_secs: 5,
        }
    }
}

/// Which metadata store the configuration selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

/// `[blob]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobConfig {
    /// `database` (blobs in the metadata database), `local` (a directory) or
    /// `s3`. Unset: `local` where an earlier install left `<data_dir>/blobs`
    /// (or `path` is set), else `database`.
    pub kind: String,
    /// Local directory; defaults to `<data_dir>/blobs`.
    pub path: Option<PathBuf>,
    /// S3 bucket (kind = "s3").
    pub bucket: Option<String>,
    /// Key prefix inside the bucket, e.g. `certflow/prod`.
    pub prefix: Option<String>,
    /// AWS region of the bucket.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, a VPC endpoint); AWS by default.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible stores.
    pub path_style: bool,
    /// Allow a plain-HTTP endpoint (local emulators only).
    pub allow_http: bool,
    /// Encrypt objects with SSE-KMS under this KMS key.
    pub sse_kms_key_id: Option<String>,
    /// Unreferenced blobs younger than this are kept (an issuance may be in flight).
    pub orphan_grace_hours: u64,
    /// How often each server sweeps orphan blobs (0 disables the sweeper).
    pub sweep_interval_minutes: u64,
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self {
            kind: String::new(),
            path: None,
            bucket: None,
            prefix: None,
            region: None,
            endpoint: None,
            path_style: false,
            allow_http: false,
            sse_kms_key_id: None,
            orphan_grace_hours: 24,
            sweep_interval_minutes: 60,
        }
    }
}

/// `[master_key]`: which key encrypts private keys. `provider = "local"` (default):
/// one of `key` (base64 of 32 bytes; env `CERTFLOW_MASTER_KEY`) or `file` (env
/// `CERTFLOW_MASTER_KEY_FILE`); with neither, SQLite deployments generate
/// `<data_dir>/master.key` on first start. `provider = "kms"`: AWS KMS data keys
/// under `kms_key_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterKeyConfig {
    /// `local` or `kms`.
    pub provider: String,
    /// The key itself, base64.
    #[serde(skip_serializing)]
    pub key: Option<SecretString>,
    /// A file holding the key, base64.
    pub file: Option<PathBuf>,
    /// Earlier keys, base64: they still decrypt, never encrypt (rotation).
    #[serde(skip_serializing)]
    pub previous: Vec<SecretString>,
    /// KMS key id or ARN that wraps new data keys.
    pub kms_key_id: Option<String>,
    /// Earlier KMS keys: still decrypt (rotation).
    pub kms_previous_key_ids: Vec<String>,
    /// KMS region (default: the SDK's region chain).
    pub kms_region: Option<String>,
    /// KMS endpoint (VPC endpoint or emulator).
    pub kms_endpoint: Option<String>,
}

impl Default for MasterKeyConfig {
    fn default() -> Self {
        Self {
            provider: "local".into(),
            key: None,
            file: None,
            previous: Vec::new(),
            kms_key_id: None,
            kms_previous_key_ids: Vec::new(),
            kms_region: None,
            kms_endpoint: None,
        }
    }
}

/// `[ca]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// Organisation name in the CA subjects.
    pub name: String,
    /// `ecdsa-p256` (default), `ecdsa-p384`, `rsa-2048`, `rsa-3072`, `rsa-4096`, `ed25519`.
    pub key_type: String,
    /// Root CA validity in days.
    pub root_validity_days: u32,
    /// Issuing CA validity in days.
    pub intermediate_validity_days: u32,
    /// Where the keys of CAs created from now on live: `local` (default:
    /// generated here, sealed in the blob store), `pkcs11` (generated inside
    /// a token, `[ca.pkcs11]`) or `aws-kms` (`[ca.aws_kms]`). Existing CAs
    /// keep their keys where they are.
    pub key_backend: String,
    /// The token, when `key_backend = "pkcs11"`.
    #[serde(skip_serializing)]
    pub pkcs11: Option<CaPkcs11Config>,
    /// AWS KMS, when `key_backend = "aws-kms"`.
    #[serde(skip_serializing)]
    pub aws_kms: Option<CaAwsKmsConfig>,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            name: "certflow".into(),
            key_type: "ecdsa-p256".into(),
            root_validity_days: 3650,
            intermediate_validity_days: 1825,
            key_backend: "local".into(),
            pkcs11: None,
            aws_kms: None,
        }
    }
}

/// `[ca.pkcs11]`: the PKCS#11 token CA keys are generated in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaPkcs11Config {
    /// The module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the (initialised) token.
    pub token_label: String,
    /// A file holding the user PIN (mode 600, like the master key file).
    pub pin_file: PathBuf,
    /// Sessions (signatures in flight) at most; more wait.
    #[serde(default = "default_pkcs11_sessions")]
    pub sessions: usize,
}

fn default_pkcs11_sessions() -> usize {
    4
}

impl Default for CaAwsKmsConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            root_key_id: None,
            issuing_key_id: None,
            agent_root_key_id: None,
            agent_issuing_key_id: None,
            signer_role_arns: Vec::new(),
            message_type: "digest".into(),
        }
    }
}

/// `[ca.aws_kms]`: AWS KMS holds the CA keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaAwsKmsConfig {
    /// Region (the environment's when unset).
    pub region: Option<String>,
    /// Another endpoint (a VPC endpoint, an emulator).
    pub endpoint: Option<String>,
    /// Existing keys to use (key id, ARN or alias) instead of creating them:
    /// the issuers' root and issuing CA, the agent-identity CA's root and
    /// issuing CA. Each is a `SIGN_VERIFY` key of `ca.key_type`.
    pub root_key_id: Option<String>,
    /// See `root_key_id`.
    pub issuing_key_id: Option<String>,
    /// See `root_key_id`.
    pub agent_root_key_id: Option<String>,
    /// See `root_key_id`.
    pub agent_issuing_key_id: Option<String>,
    /// IAM roles (the API and worker roles) allowed `kms:Sign` on the keys
    /// certflow creates; the key policy then gives the account only key
    /// administration. Empty: KMS's default key policy.
    pub signer_role_arns: Vec<String>,
    /// `digest` (default): KMS signs the SHA-256/384 digest certflow sends
    /// (`MessageType = DIGEST`). `raw`: the TBS itself when it is at most
    /// 4096 bytes (the digest otherwise), for emulators that do not
    /// implement `DIGEST` (moto).
    pub message_type: String,
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept the bootstrap admin token (break-glass access). Turn off once SSO works.
    pub bootstrap_token: bool,
    /// Browser login to the console through OpenID Connect (`[auth.oidc]`); off when absent.
    #[serde(skip_serializing)]
    pub oidc: Option<OidcConfig>,
    /// Console browser sessions (`[auth.session]`).
    pub session: SessionConfig,
    /// OIDC issuers whose access tokens are accepted as bearer tokens
    /// (`[[auth.issuers]]`: issuer, audience or client_ids, flavor, role and team mapping).
    #[serde(skip_serializing)]
    pub issuers: Vec<certflow_auth::IssuerConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            bootstrap_token: true,
            oidc: None,
            session: SessionConfig::default(),
            issuers: Vec::new(),
        }
    }
}

/// `[auth.oidc]`: browser login to the console through an OpenID provider
/// (authorization code with PKCE). The provider's own fields (`issuer`,
/// `discovery_url`, `jwks_url`, `algorithms`, `group_claim`, `[auth.oidc.roles]`,
/// `team_group_prefix`, `[auth.oidc.teams]`...) are certflow-auth's
/// [`IssuerConfig`](certflow_auth::IssuerConfig), flattened into this table.
#[derive(Debug, Clone, Serialize)]
pub struct OidcConfig {
    /// OAuth client id of the console (the ID token's `aud`).
    pub client_id: String,
    /// Its client secret (sent with HTTP Basic to the token endpoint).
    #[serde(skip_serializing)]
    pub client_secret: SecretString,
    /// The console's callback as registered at the provider, exactly:
    /// `https://certflow.example.com/console/callback`.
    pub redirect_uri: String,
    /// Scopes requested besides `openid` (e.g. `groups`, `profile`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Where the provider sends the browser after logout (registered there too).
    #[serde(default)]
    pub post_logout_redirect_uri: Option<String>,
    /// The provider's name on the console's sign-in page ("Sign in with
    /// <name>"); default: the issuer's host.
    #[serde(default)]
    pub display_name: Option<String>,
    /// The provider: issuer, keys, group → role and team mapping.
    #[serde(flatten)]
    pub provider: certflow_auth::IssuerConfig,
}

// By hand: serde's `flatten` would let a misspelt key through silently. The
// keys left after the client's own go to `IssuerConfig`, which refuses unknown ones.
impl<'de> Deserialize<'de> for OidcConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        fn field<T: serde::de::DeserializeOwned, E: Error>(
            map: &mut serde_json::Map<String, Value>,
            key: &'static str,
        ) -> Result<Option<T>, E> {
            map.remove(key)
                .map(|v| serde_json::from_value(v).map_err(|e| E::custom(format!("{key}: {e}"))))
                .transpose()
        }
        let mut map = serde_json::Map::<String, Value>::deserialize(d)?;
        let required = |v: Option<_>, key| v.ok_or_else(|| D::Error::missing_field(key));
        let client_id = required(field(&mut map, "client_id")?, "client_id")?;
        let client_secret = field(&mut map, "client_secret")?
            .ok_or_else(|| D::Error::missing_field("client_secret"))?;
        let redirect_uri = required(field(&mut map, "redirect_uri")?, "redirect_uri")?;
        let scopes = field(&mut map, "scopes")?.unwrap_or_default();
        let post_logout_redirect_uri = field(&mut map, "post_logout_redirect_uri")?;
        let display_name = field(&mut map, "display_name")?;
        let provider = serde_json::from_value(Value::Object(map)).map_err(D::Error::custom)?;
        Ok(Self {
            client_id,
            client_secret,
            redirect_uri,
            scopes,
            post_logout_redirect_uri,
            display_name,
            provider,
        })
    }
}

impl OidcConfig {
    /// The provider's name for people: `display_name`, else the issuer's
    /// host (`login.example.com` of `https://login.example.com/realms/x`).
    pub fn provider_name(&self) -> String {
        if let Some(name) = self.display_name.as_deref().map(str::trim)
            && !name.is_empty()
        {
            return name.to_owned();
        }
        let issuer = &self.provider.issuer;
        let rest = issuer.split_once("://").map_or(issuer.as_str(), |(_, r)| r);
        let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        // Credentials in the issuer URL are never shown.
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        if host.is_empty() {
            "your identity provider".to_owned()
        } else {
            host.to_owned()
        }
    }
}

/// `[auth.session]`: console browser sessions. Fractions are allowed
/// (`idle_timeout_minutes = 0.05` is 3 seconds, for tests).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session with no request for this long ends.
    pub idle_timeout_minutes: f64,
    /// A session ends this long after login, whatever the activity.
    pub absolute_timeout_hours: f64,
    /// Origin allowed to change state with the session cookie
    /// (`https://certflow.example.com`); default: the origin of `auth.oidc.redirect_uri`.
    pub console_origin: Option<String>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout_minutes: 30.0,
            absolute_timeout_hours: 12.0,
            console_origin: None,
        }
    }
}

impl SessionConfig {
    /// The idle timeout.
    pub fn idle_timeout(&self) -> time::Duration {
        time::Duration::seconds_f64(self.idle_timeout_minutes * 60.0)
    }

    /// The absolute timeout.
    pub fn absolute_timeout(&self) -> time::Duration {
        time::Duration::seconds_f64(self.absolute_timeout_hours * 3600.0)
    }
}

impl AuthConfig {
    /// The console origin: configured, or that of the OIDC redirect URI.
    pub fn console_origin(&self) -> Option<String> {
        if let Some(origin) = &self.session.console_origin {
            return Some(origin.trim_end_matches('/').to_owned());
        }
        let uri = &self.oidc.as_ref()?.redirect_uri;
        let (scheme, rest) = uri.split_once("://")?;
        let host = rest.split(['/', '?', '#']).next()?;
        Some(format!("{scheme}://{host}"))
    }

    fn check_console(&self) -> anyhow::Result<()> {
        let s = &self.session;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(s.idle_timeout_minutes) || !positive(s.absolute_timeout_hours) {
            bail!("auth.session.idle_timeout_minutes and absolute_timeout_hours must be positive");
        }
        if s.idle_timeout() > s.absolute_timeout() {
            bail!("auth.session.idle_timeout_minutes must not exceed absolute_timeout_hours");
        }
        for issuer in &self.issuers {
            issuer
                .check()
                .map_err(|e| anyhow::anyhow!("[[auth.issuers]]: {e}"))?;
        }
        let Some(oidc) = &self.oidc else {
            return Ok(());
        };
        if oidc.client_id.is_empty() {
            bail!("auth.oidc.client_id is required");
        }
        if !(oidc.redirect_uri.starts_with("https://") || oidc.redirect_uri.starts_with("http://"))
            || !oidc.redirect_uri.ends_with("/console/callback")
        {
            bail!(
                "auth.oidc.redirect_uri must be an http(s) URL ending in /console/callback, got {:?}",
                oidc.redirect_uri
            );
        }
        let mut provider = oidc.provider.clone();
        provider
            .audience
            .get_or_insert_with(|| oidc.client_id.clone());
        provider
            .check()
            .map_err(|e| anyhow::anyhow!("[auth.oidc]: {e}"))?;
        Ok(())
    }
}

/// `[console]`: rate limits of `/console/*` and where client addresses come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Requests a second per authenticated subject on the console API and
    /// session routes (per client IP for requests that are not authenticated).
    pub rate_limit_per_sec: f64,
    /// Burst size of that limit.
    pub rate_limit_burst: f64,
    /// `/console/login` and `/console/callback` requests a minute per client IP.
    pub login_rate_limit_per_min: f64,
    /// Burst size of the login limit.
    pub login_rate_limit_burst: f64,
    /// Peers (CIDRs: the load balancer) whose `X-Forwarded-For` names the
    /// client, for rate limits and the audit trail's `source`.
    pub trusted_proxies: Vec<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_sec: 20.0,
            rate_limit_burst: 40.0,
            login_rate_limit_per_min: 60.0,
            login_rate_limit_burst: 30.0,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ConsoleConfig {
    /// Checks values that types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.rate_limit_per_sec) || !positive(self.login_rate_limit_per_min) {
            bail!(
                "console.rate_limit_per_sec and console.login_rate_limit_per_min must be positive"
            );
        }
        if !(self.rate_limit_burst >= 1.0 && self.login_rate_limit_burst >= 1.0) {
            bail!("console.rate_limit_burst and console.login_rate_limit_burst must be at least 1");
        }
        self.proxies().map(|_| ())
    }

    /// The parsed `trusted_proxies`.
    pub fn proxies(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        cidrs("console.trusted_proxies", &self.trusted_proxies)
    }
}

/// `list` as networks (a bare address is a /32 or /128); errors name `field`.
fn cidrs(field: &str, list: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    list.iter()
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| format!("{field}: {p:?} is not a CIDR"))
        })
        .collect()
}

/// `[agent]`: the agent listener and agent identities.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Address of the agent listener (TLS), or `"off"`: `127.0.0.1:8443` by
    /// default, so the embedded defaults are the whole product on one machine.
    #[serde(with = "listen_or_off")]
    pub listen: Option<SocketAddr>,
    /// Names of the listener's certificate, issued by the internal CA at start.
    pub server_names: Vec<String>,
    /// A PEM certificate chain to serve instead (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Lifetime of agent identity certificates, seconds (default 24 h).
    pub identity_validity_secs: u32,
    /// Header carrying the client certificate (URL-encoded PEM) from a
    /// TLS-terminating gateway, e.g. `X-Amzn-Mtls-Clientcert`.
    pub client_cert_header: Option<String>,
    /// Peers (CIDRs) whose `client_cert_header` is believed.
    pub trusted_proxies: Vec<String>,
    /// Requests a second per agent (per client IP before authentication).
    pub rate_limit_per_sec: f64,
    /// Burst size of the rate limit.
    pub rate_limit_burst: f64,
    /// Every agent request needs a valid OIDC access token bound to the
    /// agent, not only those of agents enrolled with one; join-token
    /// enrolment is then refused. Needs `[[auth.issuers]]`.
    pub require_token: bool,
    /// A new version of an assigned certificate not reported installed by
    /// the agent this long after it was issued is drift (`deployment-drift`).
    pub drift_after_seconds: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            cert_file: None,
            key_file: None,
            identity_validity_secs: 86_400,
            client_cert_header: None,
            trusted_proxies: Vec::new(),
            rate_limit_per_sec: 20.0,
            rate_limit_burst: 40.0,
            require_token: false,
            drift_after_seconds: 3600,
        }
    }
}

impl AgentConfig {
    /// Checks values that types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(60..=certflow_pki::MAX_AGENT_IDENTITY_SECS).contains(&self.identity_validity_secs) {
            bail!(
                "agent.identity_validity_secs must be between 60 and {}",
                certflow_pki::MAX_AGENT_IDENTITY_SECS
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("agent.cert_file and agent.key_file go together");
        }
        if self.listen.is_some() && self.cert_file.is_none() && self.server_names.is_empty() {
            bail!("agent.server_names (or agent.cert_file) is required with agent.listen");
        }
        self.proxies()?;
        if let Some(h) = &self.client_cert_header
            && axum::http::HeaderName::try_from(h.as_str()).is_err()
        {
            bail!("agent.client_cert_header {h:?} is not a valid header name");
        }
        if !(60..=30 * 86_400).contains(&self.drift_after_seconds) {
            bail!("agent.drift_after_seconds must be between 60 and 2592000 (30 days)");
        }
        if !(self.rate_limit_per_sec > 0.0 && self.rate_limit_burst >= 1.0) {
            bail!(
                "agent.rate_limit_per_sec must be positive and agent.rate_limit_burst at least 1"
            );
        }
        Ok(())
    }

    /// The parsed `trusted_proxies`.
    pub fn proxies(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        cidrs("agent.trusted_proxies", &self.trusted_proxies)
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `certflow=debug`.
    pub level: String,
    /// The API role prints the domain gauges to stdout every minute as
    /// CloudWatch Embedded Metric Format lines (see the EMF task of the `ops` module).
    pub emf: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
            emf: false,
        }
    }
}

/// `[metrics]`: `/metrics` names every team's certificates and the fleet's
/// state, so it is not on the console listener by default. It has its own
/// listener (`listen`, loopback by default; `"off"` turns it off) and, when a
/// bearer token is configured, every `/metrics` request must present it
/// (`Authorization: Bearer <token>`), on that listener and on the console
/// listener, which then serves `/metrics` too.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the metrics listener (`/metrics` only, plain HTTP), or `"off"`.
    #[serde(with = "listen_or_off")]
    pub listen: Option<SocketAddr>,
    /// The bearer token scrapers must send (env `CERTFLOW_METRICS__BEARER_TOKEN`).
    #[serde(skip_serializing)]
    pub bearer_token: Option<SecretString>,
    /// A file holding the bearer token (its first line).
    pub bearer_token_file: Option<PathBuf>,
}

/// Destinations (`[destinations]`): the worker role pushes every new
/// version to the AWS Certificate Manager and ELBv2 listener destinations
/// attached to its certificate, with the SDK's default credentials and
/// endpoint variables (`AWS_ENDPOINT_URL`...).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DestinationsConfig {
    /// Deliver at all (workers); attaching works either way.
    pub enabled: bool,
    /// How often a worker looks for due destinations.
    pub poll_interval_secs: u64,
    /// First retry after a failure; doubled per failure.
    pub backoff_base_secs: u64,
    /// Longest wait between retries.
    pub backoff_cap_secs: u64,
    /// How often a delivered destination is read back (drift check).
    pub verify_interval_secs: u64,
}

impl Default for DestinationsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval_secs: 10,
            backoff_base_secs: 30,
            backoff_cap_secs: 3600,
            verify_interval_secs: 3600,
        }
    }
}

impl DestinationsConfig {
    /// The use cases' settings; zero intervals are refused.
    pub fn settings(&self) -> anyhow::Result<certflow_services::destinations::DestinationSettings> {
        let secs = |name: &str, v: u64| -> anyhow::Result<time::Duration> {
            if v == 0 {
                bail!("destinations.{name} must be at least 1");
            }
            Ok(time::Duration::seconds(
                i64::try_from(v).unwrap_or(i64::MAX / 2),
            ))
        };
        if self.poll_interval_secs == 0 {
            bail!("destinations.poll_interval_secs must be at least 1");
        }
        Ok(certflow_services::destinations::DestinationSettings {
            backoff_base: secs("backoff_base_secs", self.backoff_base_secs)?,
            backoff_cap: secs("backoff_cap_secs", self.backoff_cap_secs)?,
            lease: time::Duration::minutes(5),
            verify_every: secs("verify_interval_secs", self.verify_interval_secs)?,
        })
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            bearer_token: None,
            bearer_token_file: None,
        }
    }
}

impl MetricsConfig {
    /// The configured bearer token, read from its file if need be; an empty
    /// one is refused (it would let every request through a naive check).
    pub fn token(&self) -> anyhow::Result<Option<SecretString>> {
        use secrecy::ExposeSecret as _;
        let token = match (&self.bearer_token, &self.bearer_token_file) {
            (Some(_), Some(_)) => {
                bail!("set metrics.bearer_token or metrics.bearer_token_file, not both")
            }
            (Some(t), None) => t.expose_secret().trim().to_owned(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("metrics.bearer_token_file {}", file.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        if token.len() < 16 {
            bail!("the metrics bearer token must be at least 16 characters");
        }
        Ok(Some(SecretString::from(token)))
    }
}

/// `listen = "host:port"` or `"off"` (also `""`).
mod listen_or_off {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "" | "off" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{addr:?} is not an address (host:port) or \"off\""
                ))
            }),
        }
    }
}

/// Environment variables under the prefix that are not configuration keys.
const NOT_CONFIG: [&str; 5] = ["CONFIG", "URL", "TOKEN", "MASTER_KEY", "MASTER_KEY_FILE"];

impl Config {
    /// Loads defaults, then `file` (if given; it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig.merge(
            Env::prefixed("CERTFLOW_")
                .filter(|k| {
                    !NOT_CONFIG
                        .iter()
                        .any(|n| k.as_str().eq_ignore_ascii_case(n))
                })
                .split("__"),
        );
        if let Ok(key) = std::env::var("CERTFLOW_MASTER_KEY") {
            fig = fig.merge(("master_key.key", key));
        }
        if let Ok(path) = std::env::var("CERTFLOW_MASTER_KEY_FILE") {
            fig = fig.merge(("master_key.file", path));
        }
        let config: Config = fig.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration: {}", msgs.join("; "))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The `/pki/*` base URL written into certificates must be plain HTTP.
    fn validate_pki_url(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.server.pki_url
            && !url.starts_with("http://")
        {
            bail!(
                "server.pki_url must start with http:// (certificates point relying parties at CRL, OCSP and CA certificates over plain HTTP), got {url:?}"
            );
        }
        if self.server.tls.is_some() && !self.pki_url().starts_with("http://") {
            bail!(
                "with [server.tls], the CRL, OCSP and CA-certificate URLs written into certificates must stay plain http:// \
                     (a relying party cannot need TLS to check TLS): set server.tls.http_listen (e.g. \"0.0.0.0:80\", a plain-HTTP \
                     listener for /pki/* and ACME http-01 answers) or server.pki_url (where a load balancer serves /pki/* over HTTP)"
            );
        }
        Ok(())
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.server.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("server.public_url must start with http:// or https://, got {url:?}");
        }
        if let Some(url) = &self.database.url
            && !["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|p| url.starts_with(p))
        {
            bail!("database.url must start with sqlite:, postgres:// or postgresql://");
        }
        if self.database.max_connections == 0 {
            bail!("database.max_connections must be at least 1");
        }
        self.ca_key_type()?;
        if self.ca.root_validity_days == 0 || self.ca.intermediate_validity_days == 0 {
            bail!("ca.root_validity_days and ca.intermediate_validity_days must be positive");
        }
        if self.ca.intermediate_validity_days > self.ca.root_validity_days {
            bail!("ca.intermediate_validity_days must not exceed ca.root_validity_days");
        }
        self.ca_key_backend()?;
        match self.blob.kind.as_str() {
            "" | "local" | "database" => {}
            "s3" => {
                if self.blob.bucket.as_deref().unwrap_or("").is_empty() {
                    bail!("blob.bucket is required when blob.kind = \"s3\"");
                }
                if self.blob.region.is_none() {
                    bail!("blob.region is required when blob.kind = \"s3\"");
                }
            }
            other => bail!("blob.kind must be \"database\", \"local\" or \"s3\", got {other:?}"),
        }
        match self.master_key.provider.as_str() {
            "local" => {}
            "kms" => {
                if self.master_key.kms_key_id.is_none() {
                    bail!("master_key.kms_key_id is required when master_key.provider = \"kms\"");
                }
            }
            other => bail!("master_key.provider must be \"local\" or \"kms\", got {other:?}"),
        }
        if self.master_key.key.is_some() && self.master_key.file.is_some() {
            bail!("set master_key.key or master_key.file, not both");
        }
        match self.renewal.queue.as_str() {
            "database" => {}
            "sqs" => {
                if self.renewal.sqs.is_none() {
                    bail!(
                        "[renewal.sqs] (queue_url, region) is required when renewal.queue = \"sqs\""
                    );
                }
            }
            other => bail!("renewal.queue must be \"database\" or \"sqs\", got {other:?}"),
        }
        if self.renewal.max_attempts == 0 || self.renewal.concurrency == 0 {
            bail!("renewal.max_attempts and renewal.concurrency must be at least 1");
        }
        if self.renewal.lease_secs < 1
            || self.renewal.scheduler_interval_secs < 1
            || self.renewal.work_timeout_secs < 1
            || self.renewal.expected_renewal_secs < 1
        {
            bail!(
                "renewal.lease_secs, renewal.scheduler_interval_secs, renewal.work_timeout_secs \
                 and renewal.expected_renewal_secs must be at least 1"
            );
        }
        for (name, acme) in &self.acme {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!("[acme.{name}]: issuer names are 1-64 characters of a-z, 0-9, '-' or '_'");
            }
            acme.validate()
                .map_err(|e| anyhow::anyhow!("[acme.{name}]: {e}"))?;
        }
        self.renewal
            .policy
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.agent.validate()?;
        self.console.validate()?;
        self.outbound_policy()?;
        self.policy
            .compile()
            .map_err(|e| anyhow::anyhow!("invalid issuance policy: {e}"))?;
        self.auth.check_console()?;
        self.metrics.token()?;
        if let Some(tls) = &self.server.tls {
            tls.validate()?;
        }
        self.validate_pki_url()?;
        self.acme_server.validate()?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(
                "log.format must be \"text\" or \"json\", got {:?}",
                self.log.format
            );
        }
        Ok(())
    }

    /// The CA key backend, checked against its section and the key type.
    pub fn ca_key_backend(&self) -> anyhow::Result<certflow_core::ca_keys::CaKeyBackend> {
        use certflow_core::ca_keys::CaKeyBackend;
        let backend = CaKeyBackend::parse(&self.ca.key_backend).with_context(|| {
            format!(
                "ca.key_backend must be \"local\", \"pkcs11\" or \"aws-kms\", got {:?}",
                self.ca.key_backend
            )
        })?;
        match backend {
            CaKeyBackend::Local => {}
            CaKeyBackend::Pkcs11 if self.ca.pkcs11.is_none() => bail!(
                "[ca.pkcs11] (module, token_label, pin_file) is required when ca.key_backend = \"pkcs11\""
            ),
            CaKeyBackend::AwsKms if self.ca.aws_kms.is_none() => bail!(
                "[ca.aws_kms] (region, or key ids) is required when ca.key_backend = \"aws-kms\""
            ),
            _ if self.ca_key_type()? == KeyType::Ed25519 => bail!(
                "ca.key_type = \"ed25519\" needs ca.key_backend = \"local\": tokens and KMS sign digests, and Ed25519 signs whole messages"
            ),
            _ => {}
        }
        if let Some(p) = &self.ca.pkcs11
            && p.sessions == 0
        {
            bail!("ca.pkcs11.sessions must be at least 1");
        }
        if let Some(k) = &self.ca.aws_kms
            && !matches!(k.message_type.as_str(), "digest" | "raw")
        {
            bail!(
                "ca.aws_kms.message_type must be \"digest\" or \"raw\", got {:?}",
                k.message_type
            );
        }
        Ok(backend)
    }

    /// The parsed CA key type.
    pub fn ca_key_type(&self) -> anyhow::Result<KeyType> {
        KeyType::parse(&self.ca.key_type).with_context(|| {
            let all: Vec<&str> = KeyType::ALL.iter().map(|k| k.as_str()).collect();
            format!(
                "ca.key_type {:?} is not one of {}",
                self.ca.key_type,
                all.join(", ")
            )
        })
    }

    /// The outbound policy of `[outbound]`.
    pub fn outbound_policy(&self) -> anyhow::Result<certflow_core::outbound::OutboundPolicy> {
        certflow_core::outbound::OutboundPolicy::new(&self.outbound).map_err(anyhow::Error::msg)
    }

    /// The selected metadata store.
    pub fn database(&self) -> DatabaseKind {
        match &self.database.url {
            Some(url) if url.starts_with("postgres") => DatabaseKind::Postgres(url.clone()),
            Some(url) => DatabaseKind::Sqlite(PathBuf::from(
                url.trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:"),
            )),
            None => DatabaseKind::Sqlite(self.data_dir.join("certflow.db")),
        }
    }

    /// Path of the SQLite database file, when SQLite is selected.
    pub fn database_path(&self) -> Option<PathBuf> {
        match self.database() {
            DatabaseKind::Sqlite(p) => Some(p),
            DatabaseKind::Postgres(_) => None,
        }
    }

    /// The blob store in use: `blob.kind` when set; unset, `local` if a
    /// directory is configured or an earlier install's `<data_dir>/blobs`
    /// exists (so its blobs stay readable), else `database`.
    pub fn blob_kind(&self) -> &str {
        match self.blob.kind.as_str() {
            "" if self.blob.path.is_some() || self.blob_path().is_dir() => "local",
            "" => "database",
            kind => kind,
        }
    }

    /// Directory of the local blob store.
    pub fn blob_path(&self) -> PathBuf {
        self.blob
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("blobs"))
    }

    /// The base URL written into certificates.
    pub fn public_url(&self) -> String {
        self.server.public_url.clone().unwrap_or_else(|| {
            let scheme = if self.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", self.server.listen)
        })
    }

    /// The base URL of `/pki/*` written into certificates (AIA, CRL, OCSP).
    pub fn pki_url(&self) -> String {
        if let Some(url) = &self.server.pki_url {
            return url.clone();
        }
        match &self.server.tls {
            Some(ServerTlsConfig {
                http_listen: Some(addr),
                ..
            }) => format!("http://{addr}"),
            _ => self.public_url(),
        }
    }
}

/// `[server.tls]`: the console listener's certificate, issued by the
/// internal CA for `server_names` (and renewed before it expires), or read
/// from `cert_file`/`key_file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTlsConfig {
    /// Names (DNS names or IP addresses) of the issued certificate.
    pub server_names: Vec<String>,
    /// A PEM certificate chain to serve instead (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Lifetime of the issued certificate, days; renewed at two thirds of it.
    pub validity_days: u32,
    /// A plain-HTTP listener beside the HTTPS one for what must not need
    /// TLS: `/pki/*` (CRL, OCSP, CA certificates) and ACME http-01 answers.
    pub http_listen: Option<SocketAddr>,
}

impl Default for ServerTlsConfig {
    fn default() -> Self {
        Self {
            server_names: Vec::new(),
            cert_file: None,
            key_file: None,
            validity_days: 90,
            http_listen: None,
        }
    }
}

impl ServerTlsConfig {
    /// Checks values that types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("server.tls.cert_file and server.tls.key_file go together");
        }
        match (self.cert_file.is_some(), self.server_names.is_empty()) {
            (true, false) => bail!(
                "[server.tls]: set server_names (a certificate from the internal CA) or cert_file/key_file, not both"
            ),
            (false, true) => {
                bail!("[server.tls] needs server_names (or cert_file and key_file)")
            }
            _ => {}
        }
        if !(1..=397).contains(&self.validity_days) {
            bail!("server.tls.validity_days must be between 1 and 397");
        }
        Ok(())
    }
}

/// `[acme_server]`: the ACME server (RFC 8555) on the console listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeServerConfig {
    /// Serve `/acme/<issuer>/...` at all.
    pub enabled: bool,
    /// External account binding: `"required"` (accounts belong to the team
    /// of their EAB key) or `"optional"` (without one, `default_team`).
    pub eab: String,
    /// The team of accounts registered without EAB (with `eab = "optional"`).
    pub default_team: Option<String>,
    /// Port of http-01 validation requests (RFC 8555: 80).
    pub http01_port: u16,
    /// Port of tls-alpn-01 validation connections (RFC 8737: 443).
    pub tls_alpn01_port: u16,
    /// DNS server for every validation lookup (`127.0.0.1:8053`, or an
    /// address for port 53); the system resolver when unset.
    pub dns_resolver: Option<String>,
    /// Bound on one validation attempt, seconds.
    pub validation_timeout_secs: u64,
    /// A valid authorization is reused by the same account this long, seconds (0: never).
    pub authz_reuse_secs: u64,
    /// Requests a minute per account.
    pub per_account_per_minute: u32,
    /// Requests a minute per client address.
    pub per_address_per_minute: u32,
    /// Largest request body, bytes.
    pub body_limit_bytes: usize,
}

impl Default for AcmeServerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            eab: "required".into(),
            default_team: None,
            http01_port: 80,
            tls_alpn01_port: 443,
            dns_resolver: None,
            validation_timeout_secs: 10,
            authz_reuse_secs: 86_400,
            per_account_per_minute: 300,
            per_address_per_minute: 600,
            body_limit_bytes: 64 * 1024,
        }
    }
}

impl AcmeServerConfig {
    /// Whether accounts need an EAB key.
    pub fn eab_required(&self) -> bool {
        self.eab == "required"
    }

    /// The parsed `dns_resolver`.
    pub fn dns_resolver_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        let Some(r) = self.dns_resolver.as_deref().filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        r.parse::<SocketAddr>()
            .or_else(|_| {
                r.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .map(Some)
            .with_context(|| {
                format!("acme_server.dns_resolver {r:?} is not an address (127.0.0.1:8053)")
            })
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (self.eab.as_str(), &self.default_team) {
            ("required", _) | ("optional", Some(_)) => {}
            ("optional", None) => {
                bail!("acme_server.default_team is required with acme_server.eab = \"optional\"")
            }
            (other, _) => {
                bail!("acme_server.eab must be \"required\" or \"optional\", got {other:?}")
            }
        }
        self.dns_resolver_addr()?;
        if self.http01_port == 0 || self.tls_alpn01_port == 0 {
            bail!("acme_server.http01_port and acme_server.tls_alpn01_port must not be 0");
        }
        if !(1..=120).contains(&self.validation_timeout_secs) {
            bail!("acme_server.validation_timeout_secs must be between 1 and 120");
        }
        if self.per_account_per_minute == 0 || self.per_address_per_minute == 0 {
            bail!(
                "acme_server.per_account_per_minute and acme_server.per_address_per_minute must be at least 1"
            );
        }
        if !(4096..=1024 * 1024).contains(&self.body_limit_bytes) {
            bail!("acme_server.body_limit_bytes must be between 4096 and 1048576");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_embedded() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(
            c.database_path(),
            Some(PathBuf::from("certflow-data/certflow.db"))
        );
        assert_eq!(c.public_url(), "http://127.0.0.1:8080");
    }

    /// Unset, the blob store is the database for a new data directory and
    /// stays the directory an earlier install filled; set, it is as set.
    #[test]
    fn blob_kind_defaults_to_the_database_unless_blob_files_exist() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        assert_eq!(c.blob_kind(), "database");
        std::fs::create_dir_all(dir.path().join("data").join("blobs")).unwrap();
        assert_eq!(c.blob_kind(), "local");
        c.blob.kind = "database".into();
        assert_eq!(c.blob_kind(), "database");
        c.validate().unwrap();
        c.blob.kind = "files".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("\"database\", \"local\" or \"s3\""), "{err}");
        let c = Config {
            data_dir: dir.path().join("other"),
            blob: BlobConfig {
                path: Some(dir.path().join("elsewhere")),
                ..BlobConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(c.blob_kind(), "local");
    }

    /// `[acme_server]` is off by default with EAB required; `[server.tls]`
    /// turns the console listener (and the default public URL) to HTTPS.
    #[test]
    fn acme_server_and_console_tls_settings() {
        let d = Config::default();
        assert!(!d.acme_server.enabled && d.acme_server.eab_required());
        assert!(d.server.tls.is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[server.tls]\nserver_names = [\"localhost\"]\n[acme_server]\nenabled = true\n\
             http01_port = 5002\ntls_alpn01_port = 5001\ndns_resolver = \"127.0.0.1:8053\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("server.tls.http_listen"), "{err}");
        std::fs::write(
            &file,
            "[server.tls]\nserver_names = [\"localhost\"]\nhttp_listen = \"127.0.0.1:8081\"\n\
             [acme_server]\nenabled = true\n\
             http01_port = 5002\ntls_alpn01_port = 5001\ndns_resolver = \"127.0.0.1:8053\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.public_url(), "https://127.0.0.1:8080");
        // Relying parties reach CRL, OCSP and CA certificates without TLS.
        assert_eq!(c.pki_url(), "http://127.0.0.1:8081");
        assert_eq!(c.server.tls.as_ref().unwrap().server_names, ["localhost"]);
        assert_eq!(
            c.acme_server.dns_resolver_addr().unwrap(),
            Some("127.0.0.1:8053".parse().unwrap())
        );
        assert_eq!(
            (c.acme_server.http01_port, c.acme_server.tls_alpn01_port),
            (5002, 5001)
        );
        for (bad, key) in [
            ("[server.tls]\n", "server_names"),
            (
                "[server.tls]\nserver_names = [\"a\"]\ncert_file = \"c\"\nkey_file = \"k\"\n",
                "not both",
            ),
            (
                "[acme_server]\neab = \"optional\"\n",
                "acme_server.default_team",
            ),
            ("[acme_server]\neab = \"maybe\"\n", "acme_server.eab"),
            (
                "[server]\npki_url = \"https://pki.example.com\"\n",
                "server.pki_url must start with http://",
            ),
            (
                "[acme_server]\ndns_resolver = \"resolver\"\n",
                "acme_server.dns_resolver",
            ),
        ] {
            std::fs::write(&file, bad).unwrap();
            let err = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    /// The whole product on one machine: the agent listener is on by
    /// default, on loopback; `listen = "off"` (or `""`) turns it off.
    #[test]
    fn agent_listener_is_on_by_default_and_off_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let on = Config::load(Some(&file)).unwrap();
        assert_eq!(on.agent.listen, Some("127.0.0.1:8443".parse().unwrap()));
        for off in ["off", ""] {
            std::fs::write(&file, format!("[agent]\nlisten = \"{off}\"\n")).unwrap();
            assert_eq!(Config::load(Some(&file)).unwrap().agent.listen, None);
        }
        std::fs::write(&file, "[agent]\nlisten = \"0.0.0.0:9443\"\n").unwrap();
        assert_eq!(
            Config::load(Some(&file)).unwrap().agent.listen,
            Some("0.0.0.0:9443".parse().unwrap())
        );
        std::fs::write(&file, "[agent]\nlisten = \"8443\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("agent.listen") && err.contains("off"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:9000\"\nlisenn = 1\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("lisenn"), "{err}");
        std::fs::write(&file, "[ca]\nkey_type = \"dsa\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("ca.key_type") && err.contains("ecdsa-p256"),
            "{err}"
        );
        std::fs::write(&file, "[database]\nurl = \"mysql://x\"\n").unwrap();
        assert!(
            Config::load(Some(&file))
                .unwrap_err()
                .to_string()
                .contains("database.url")
        );
        std::fs::write(
            &file,
            "[database]\nurl = \"postgres://db.internal/certflow?sslmode=require\"\n",
        )
        .unwrap();
        assert_eq!(
            Config::load(Some(&file)).unwrap().database(),
            DatabaseKind::Postgres("postgres://db.internal/certflow?sslmode=require".into())
        );
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
    }

    #[test]
    fn policy_section_is_loaded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[policy.default]\nallowed_domains = [\"example.com\"]\nallow_ip_addresses = false\n\
             [policy.teams.payments]\nallowed_key_types = [\"ecdsa-p256\", \"rsa-3072\"]\n\
             max_validity_days = 30\nrequired_extended_key_usages = [\"serverAuth\"]\n\
             [policy.issuers.letsencrypt]\nallow_wildcards = false\nmax_names = 10\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.policy.teams["payments"].max_validity_days, Some(30));
        assert!(!c.policy.compile().unwrap().is_empty());
        for (bad, needle) in [
            (
                "[policy.default]\nallowed_patterns = [\"(x\"]\n",
                "allowed_patterns",
            ),
            ("[policy.teams.web]\nallowed_key_types = [\"dsa\"]\n", "dsa"),
            ("[policy.default]\nmax_name = 3\n", "max_name"),
        ] {
            std::fs::write(&file, bad).unwrap();
            let err = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn the_sign_in_page_names_the_provider_or_its_host() {
        let oidc = |name: Option<&str>| -> OidcConfig {
            let mut v = serde_json::json!({
                "issuer": "https://login.example.com/realms/ops",
                "client_id": "c",
                "client_secret": "s",
                "redirect_uri": "https://certflow.example.com/console/callback",
            });
            if let Some(name) = name {
                v["display_name"] = name.into();
            }
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(oidc(None).provider_name(), "login.example.com");
        assert_eq!(oidc(Some("Example SSO")).provider_name(), "Example SSO");
        assert_eq!(oidc(Some("  ")).provider_name(), "login.example.com");
    }

    #[test]
    fn an_identity_provider_over_plain_http_is_refused_unless_loopback_or_switched_on() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let oidc = |issuer: &str, extra: &str| {
            format!(
                "[auth.oidc]\nissuer = \"{issuer}\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
                 redirect_uri = \"https://certflow.example.com/console/callback\"\n{extra}"
            )
        };
        let issuers = |issuer: &str, extra: &str| {
            format!("[[auth.issuers]]\nissuer = \"{issuer}\"\naudience = \"api\"\n{extra}")
        };
        for (toml, needle) in [
            (oidc("http://idp.example.com", ""), "[auth.oidc]"),
            (
                oidc(
                    "https://idp.example.com",
                    "jwks_url = \"http://keys.example.com/jwks\"\n",
                ),
                "jwks_url",
            ),
            (issuers("http://idp.example.com", ""), "[[auth.issuers]]"),
            (
                issuers(
                    "https://idp.example.com",
                    "discovery_url = \"http://10.1.2.3/.well-known/openid-configuration\"\n",
                ),
                "discovery_url",
            ),
        ] {
            std::fs::write(&file, &toml).unwrap();
            let err = format!("{:#}", Config::load(Some(&file)).unwrap_err());
            assert!(
                err.contains(needle)
                    && err.contains("plain http://")
                    && err.contains("allow_insecure_http"),
                "{toml}: {err}"
            );
        }
        for toml in [
            oidc("http://127.0.0.1:8090", ""),
            oidc("http://localhost:8090", ""),
            issuers("http://[::1]:8090", ""),
            oidc("http://idp.dev.internal", "allow_insecure_http = true\n"),
            issuers("http://idp.dev.internal", "allow_insecure_http = true\n"),
        ] {
            std::fs::write(&file, &toml).unwrap();
            let loaded = Config::load(Some(&file));
            assert!(loaded.is_ok(), "{toml}: {:?}", loaded.err());
        }
    }

    #[test]
    fn outbound_allow_list_is_loaded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[outbound]\nallow = [\"10.0.0.0/8\", \"hooks.internal.example\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        let policy = c.outbound_policy().unwrap();
        policy.check_literal("10.1.2.3").unwrap();
        assert!(policy.check_literal("127.0.0.1").is_err());
        assert!(policy.host_allowed("hooks.internal.example"));
        std::fs::write(&file, "[outbound]\nallow = [\"10.0.0.0/40\"]\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("outbound.allow") && err.contains("10.0.0.0/40"),
            "{err}"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config {
            master_key: MasterKeyConfig {
                key: Some(SecretString::from("c2VjcmV0LXZhbHVl")),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("c2VjcmV0LXZhbHVl"));
    }
}
