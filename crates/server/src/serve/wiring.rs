//! Start-up: the one place that reads configuration and wires implementations
//! to ports. Every backend is opened and checked before the listener binds, so
//! a bad database path or master key stops the server with a message naming it.

use std::io::{IsTerminal as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use certflow_blob::{ObjectBlobStore, S3Options};
use certflow_seal::{KeyProvider, KmsKeyProvider, LocalKeyProvider, MasterKey, Sealer};
use certflow_services::Services;
use std::time::Duration;

use certflow_core::ports::{
    AgentStore, BlobStore, MetadataStore, NotificationStore, RenewalLedger, SessionStore,
};
use certflow_core::renewal::RenewalQueue;
use certflow_notify::{EmailNotifier, Notifiers, SnsNotifier, WebhookNotifier};
use certflow_renewal::SqsRenewalQueue;
use certflow_store::{ChangeFeed, DbQueueOptions, PgOptions, PgStore, SqliteStore};
use secrecy::ExposeSecret;
use tracing_subscriber::EnvFilter;

use crate::auth;
use crate::config::{Config, DatabaseKind};

/// Installs the tracing subscriber (text or JSON, filter from config or `RUST_LOG`).
pub fn init_logging(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colours only for a person at a terminal: escape codes in a log file or
    // journal get in the way of every reader of it, and every request span's
    // fields are formatted (with the codes) when the span opens, whether or
    // not a line is ever written.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub(super) fn read_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("master key file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "master key file {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading master key file {}", path.display()))?;
    MasterKey::from_base64(&text).with_context(|| format!("master key file {}", path.display()))
}

/// Resolves the master key: configured key, configured file, or the embedded
/// `<data_dir>/master.key`, generated only when the data directory is new.
pub(super) fn master_key(config: &Config) -> anyhow::Result<MasterKey> {
    if let Some(key) = &config.master_key.key {
        return MasterKey::from_base64(key.expose_secret())
            .context("master_key.key (CERTFLOW_MASTER_KEY)");
    }
    if let Some(file) = &config.master_key.file {
        return read_key_file(file);
    }
    if matches!(config.database(), DatabaseKind::Postgres(_)) {
        // Replicas share the database, so they must share the key: never mint one per host.
        bail!(
            "with a PostgreSQL database, set master_key.key, master_key.file or CERTFLOW_MASTER_KEY(_FILE): every replica needs the same key"
        );
    }
    let path = config.data_dir.join("master.key");
    if path.exists() {
        return read_key_file(&path);
    }
    if config.database_path().is_some_and(|p| p.exists()) {
        bail!(
            "{} holds data but there is no master key: set master_key.key, master_key.file or CERTFLOW_MASTER_KEY to the key it was created with (expected {})",
            config.data_dir.display(),
            path.display()
        );
    }
    let key = MasterKey::generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key.to_base64().as_bytes())?;
    file.sync_all()?;
    tracing::warn!(
        path = %path.display(),
        "generated a new master key; back it up: without it the CA and private keys cannot be read"
    );
    Ok(key)
}

/// Everything `serve` and the admin commands work with, opened and checked.
pub struct Opened {
    /// The use cases.
    pub services: Services,
    /// Change notifications between replicas.
    pub feed: ChangeFeed,
    /// The metadata store's ports.
    pub store: StorePorts,
    /// ACME HTTP-01 tokens this process answers for.
    pub http01: certflow_acme::Http01Tokens,
}

/// The metadata store behind each of its ports.
#[derive(Clone)]
pub struct StorePorts {
    /// Certificates, issuers, audit, settings.
    pub metadata: Arc<dyn MetadataStore>,
    /// Renewal jobs' ledger.
    pub ledger: Arc<dyn RenewalLedger>,
    /// Subscriptions and deliveries.
    pub notifications: Arc<dyn NotificationStore>,
    /// The embedded renewal queue on the same database.
    pub db_queue: Arc<dyn RenewalQueue>,
    /// Console logins and browser sessions.
    pub sessions: Arc<dyn certflow_core::ports::SessionStore>,
    /// Agents, join tokens and the agent-identity CA.
    pub agents: Arc<dyn certflow_core::ports::AgentStore>,
    /// Certificates assigned to agents and their reports.
    pub deployments: Arc<dyn certflow_core::ports::DeploymentStore>,
    /// Certificates agents discovered on their hosts.
    pub discovery: Arc<dyn certflow_core::ports::DiscoveryStore>,
    /// ACME server accounts, EAB keys, orders, authorizations, challenges, nonces.
    pub acme: Arc<dyn certflow_core::acme::AcmeStore>,
    /// Certificates' AWS destinations and their delivery attempts.
    pub destinations: Arc<dyn certflow_core::destinations::DestinationStore>,
    /// Blobs in the same database (`blob.kind = "database"`).
    pub blobs: Arc<dyn BlobStore>,
}

/// Opens every backend and checks it answers, so a bad setting stops the server
/// at start with a message naming the backend.
pub async fn open_services(config: &Config) -> anyhow::Result<Opened> {
    // Before anything is created: the data directory and its files are the owner's alone.
    super::files::secure_data(config)?;
    let provider = key_provider(config).await?;
    let (store, feed) = open_store(config).await?;
    let (blobs, blobs_description) = open_blobs(config, &store).await?;
    tracing::info!(
        blobs = %blobs_description,
        master_key = provider.current_key_id(),
        "backends open"
    );
    // Writes through the use cases announce certificate changes, which
    // invalidate the agents' assignment answers on every replica.
    let announcing = Arc::new(crate::deploy_cache::watch::AnnouncingStore::new(
        store.metadata.clone(),
        feed.clone(),
    ));
    let mut services = Services::new(
        announcing,
        blobs,
        Sealer::new(provider),
        Some(config.pki_url()),
    )
    .with_renewal_defaults(config.renewal.policy.clone())
    .with_renewal_margin(config.renewal.margin())
    .with_issuance_policies(config.policy.compile().map_err(anyhow::Error::msg)?)
    .with_outbound_policy(Arc::new(config.outbound_policy()?));
    if let Some(keys) = ca_key_store(config).await? {
        services = services.with_ca_key_store(keys);
    }
    if config.notifications.enabled {
        services = services.with_notifications(store.notifications.clone());
    }
    services = services.with_destinations(
        store.destinations.clone(),
        Some(Arc::new(
            certflow_destinations::AwsDestinations::from_env().await,
        )),
        config.destinations.settings()?,
    );
    let http01 = certflow_acme::Http01Tokens::new();
    for (name, settings) in &config.acme {
        let (issuer, created) = services
            .ensure_acme_issuer(
                name,
                &settings.directory_url,
                time::OffsetDateTime::now_utc(),
            )
            .await
            .with_context(|| format!("[acme.{name}]"))?;
        if created {
            tracing::info!(issuer = %issuer.id, name, directory = %settings.directory_url, "registered ACME issuer");
        }
        let accounts = certflow_acme::SealedAccountStore::for_issuer(
            services.blobs().clone(),
            services.sealer().clone(),
            &issuer,
        );
        let backend =
            certflow_acme::AcmeIssuer::new(settings.clone(), Arc::new(accounts), http01.clone())
                .await
                .with_context(|| format!("[acme.{name}]"))?;
        services = services.with_issuer_backend(issuer.id, Arc::new(backend));
    }
    Ok(Opened {
        services,
        feed,
        store,
        http01,
    })
}

/// The CA key backend `[ca] key_backend` selects, opened and checked (the
/// token logged in to, the configured KMS keys described); `None` for
/// `local`, whose keys are sealed in the blob store.
pub(super) async fn ca_key_store(
    config: &Config,
) -> anyhow::Result<Option<Arc<dyn certflow_core::ca_keys::CaKeyStore>>> {
    use certflow_core::ca_keys::{CaKeyBackend, CaKeyRole};
    match config.ca_key_backend()? {
        CaKeyBackend::Local => Ok(None),
        CaKeyBackend::Pkcs11 => {
            let p = config.ca.pkcs11.as_ref().context("[ca.pkcs11]")?;
            let pin = certflow_keystore::read_pin_file(&p.pin_file)?;
            let keys = certflow_keystore::Pkcs11Keys::open(certflow_keystore::Pkcs11Settings {
                module: p.module.clone(),
                token_label: p.token_label.clone(),
                pin,
                sessions: p.sessions,
            })
            .await
            .context("[ca.pkcs11]")?;
            tracing::info!(token = %p.token_label, module = %p.module.display(), "CA keys: PKCS#11 token");
            Ok(Some(Arc::new(keys)))
        }
        CaKeyBackend::AwsKms => {
            let k = config.ca.aws_kms.as_ref().context("[ca.aws_kms]")?;
            let key_ids = [
                (CaKeyRole::Root, &k.root_key_id),
                (CaKeyRole::Issuing, &k.issuing_key_id),
                (CaKeyRole::AgentRoot, &k.agent_root_key_id),
                (CaKeyRole::AgentIssuing, &k.agent_issuing_key_id),
            ]
            .into_iter()
            .filter_map(|(role, id)| id.clone().map(|id| (role, id)))
            .collect();
            let keys = certflow_keystore::KmsCaKeys::new(certflow_keystore::KmsSettings {
                region: k.region.clone(),
                endpoint: k.endpoint.clone(),
                key_ids,
                signer_role_arns: k.signer_role_arns.clone(),
                raw_messages: k.message_type == "raw",
            })
            .await
            .context("[ca.aws_kms]")?;
            tracing::info!("CA keys: AWS KMS");
            Ok(Some(Arc::new(keys)))
        }
    }
}

pub(super) async fn key_provider(config: &Config) -> anyhow::Result<Arc<dyn KeyProvider>> {
    let mk = &config.master_key;
    if mk.provider == "kms" {
        let key_id = mk.kms_key_id.clone().context("master_key.kms_key_id")?;
        let provider = KmsKeyProvider::new(
            key_id,
            mk.kms_previous_key_ids.clone(),
            mk.kms_region.clone(),
            mk.kms_endpoint.clone(),
        )
        .await
        .context("AWS KMS master key")?;
        return Ok(Arc::new(provider));
    }
    let key = master_key(config)?;
    let previous = mk
        .previous
        .iter()
        .map(|k| MasterKey::from_base64(k.expose_secret()))
        .collect::<Result<Vec<_>, _>>()
        .context("master_key.previous")?;
    Ok(Arc::new(LocalKeyProvider::new(key, previous)))
}

/// The configured blob store and a description of it for logs: the metadata
/// database's own (`database`), or a directory or S3 bucket, checked.
pub(super) async fn open_blobs(
    config: &Config,
    store: &StorePorts,
) -> anyhow::Result<(Arc<dyn BlobStore>, String)> {
    let b = &config.blob;
    let kind = config.blob_kind();
    if kind == "database" {
        return Ok((store.blobs.clone(), "the metadata database".into()));
    }
    let blobs = if kind == "s3" {
        let options = S3Options {
            bucket: b.bucket.clone().unwrap_or_default(),
            prefix: b.prefix.clone(),
            region: b.region.clone().unwrap_or_default(),
            endpoint: b.endpoint.clone(),
            path_style: b.path_style,
            allow_http: b.allow_http,
            sse_kms_key_id: b.sse_kms_key_id.clone(),
        };
        ObjectBlobStore::s3(&options).context("S3 blob store")?
    } else {
        ObjectBlobStore::local(&config.blob_path()).context("blob store")?
    };
    blobs
        .check()
        .await
        .with_context(|| format!("blob store {}", blobs.description()))?;
    let description = blobs.description().to_owned();
    Ok((Arc::new(blobs), description))
}

/// Opens the configured metadata store (migrating it), or says which and why not.
/// One store behind each of its ports.
pub(super) fn ports<S>(store: Arc<S>, db_queue: Arc<dyn RenewalQueue>) -> StorePorts
where
    S: MetadataStore
        + RenewalLedger
        + AgentStore
        + SessionStore
        + NotificationStore
        + certflow_core::ports::DeploymentStore
        + certflow_core::ports::DiscoveryStore
        + certflow_core::acme::AcmeStore
        + certflow_core::destinations::DestinationStore
        + BlobStore
        + 'static,
{
    StorePorts {
        blobs: store.clone(),
        metadata: store.clone(),
        ledger: store.clone(),
        agents: store.clone(),
        deployments: store.clone(),
        discovery: store.clone(),
        acme: store.clone(),
        destinations: store.clone(),
        sessions: store.clone(),
        notifications: store,
        db_queue,
    }
}

pub(super) async fn open_store(config: &Config) -> anyhow::Result<(StorePorts, ChangeFeed)> {
    // Also for the admin commands that open only the store.
    super::files::secure_data(config)?;
    match config.database() {
        DatabaseKind::Sqlite(path) => {
            let store = SqliteStore::open(&path)
                .await
                .with_context(|| format!("database {}", path.display()))?;
            tracing::info!(database = %path.display(), "SQLite metadata store");
            let db_queue = Arc::new(store.renewal_queue(DbQueueOptions::default()));
            Ok((ports(Arc::new(store), db_queue), ChangeFeed::local()))
        }
        DatabaseKind::Postgres(url) => {
            let timeout = config.database.statement_timeout_secs;
            let options = PgOptions {
                max_connections: config.database.max_connections,
                statement_timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
                connect_timeout: Duration::from_secs(config.database.connect_timeout_secs),
            };
            // The store's errors name host, port and database but never the password.
            let store = PgStore::connect(&url, options)
                .await
                .context("PostgreSQL database")?;
            let feed = store
                .change_feed()
                .await
                .context("PostgreSQL change feed")?;
            tracing::info!("PostgreSQL metadata store");
            let db_queue = Arc::new(store.renewal_queue(DbQueueOptions::default()));
            Ok((ports(Arc::new(store), db_queue), feed))
        }
    }
}

/// The renewal queue the configuration selects.
pub(super) async fn renewal_queue(
    config: &Config,
    store: &StorePorts,
) -> anyhow::Result<Arc<dyn RenewalQueue>> {
    match (config.renewal.queue.as_str(), &config.renewal.sqs) {
        ("sqs", Some(options)) => {
            let queue = SqsRenewalQueue::from_options(options.clone(), store.ledger.clone()).await;
            Ok(Arc::new(queue))
        }
        _ => Ok(store.db_queue.clone()),
    }
}

/// The notifiers the configuration enables (webhook always; SNS and email when configured).
pub(super) async fn notifiers(config: &Config) -> anyhow::Result<Notifiers> {
    let n = &config.notifications;
    let webhook = WebhookNotifier::new(&n.webhook, Arc::new(config.outbound_policy()?))
        .map_err(|e| anyhow::anyhow!("notifications.webhook: {}", e.0))?;
    let mut notifiers = Notifiers::new().with(Arc::new(webhook));
    if let Some(sns) = &n.sns {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(sns.region.clone()));
        if let Some(url) = &sns.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        notifiers.insert(Arc::new(SnsNotifier::from_sdk_config(&loader.load().await)));
    }
    if let Some(smtp) = &n.smtp {
        notifiers.insert(Arc::new(
            EmailNotifier::new(smtp).map_err(|e| anyhow::anyhow!("notifications.smtp: {}", e.0))?,
        ));
    }
    Ok(notifiers)
}

/// The deployment use cases.
pub(super) fn deployments(
    config: &Config,
    opened: &Opened,
) -> certflow_services::deployments::Deployments {
    certflow_services::deployments::Deployments::new(
        &opened.services,
        opened.store.deployments.clone(),
        opened.store.agents.clone(),
        certflow_services::deployments::DeploymentSettings {
            drift_after: time::Duration::seconds(
                i64::try_from(config.agent.drift_after_seconds).unwrap_or(i64::MAX),
            ),
        },
    )
    .with_discovery(opened.store.discovery.clone())
}

/// A validator for the configured `[[auth.issuers]]`, if any.
pub(super) fn token_validator(
    config: &Config,
) -> anyhow::Result<Option<certflow_auth::TokenValidator>> {
    if config.auth.issuers.is_empty() {
        return Ok(None);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client for JWKS")?;
    let validator = certflow_auth::TokenValidator::new(config.auth.issuers.clone(), http)
        .map_err(|e| anyhow::anyhow!("[[auth.issuers]]: {e}"))?;
    Ok(Some(validator))
}

/// The bearer-token authenticators the configuration enables.
pub(super) fn bearer_authenticators(
    config: &Config,
) -> anyhow::Result<Vec<Arc<dyn auth::BearerAuthenticator>>> {
    Ok(match token_validator(config)? {
        Some(validator) => vec![Arc::new(auth::OidcBearer(validator))],
        None => Vec::new(),
    })
}

/// The ACME server's use cases, with `[acme_server]`'s settings.
pub(super) fn acme_service(
    config: &Config,
    opened: &Opened,
) -> certflow_services::acme::AcmeService {
    let a = &config.acme_server;
    let settings = certflow_services::acme::AcmeSettings {
        eab_required: a.eab_required(),
        default_team: a.default_team.clone(),
        authz_reuse: time::Duration::seconds(
            i64::try_from(a.authz_reuse_secs).unwrap_or(i64::MAX / 2),
        ),
        ..Default::default()
    };
    certflow_services::acme::AcmeService::new(&opened.services, opened.store.acme.clone(), settings)
}

/// The challenge validators of `[acme_server]`, under the outbound policy.
pub(super) fn acme_validators(
    config: &Config,
) -> anyhow::Result<certflow_acme_server::ChallengeValidators> {
    let a = &config.acme_server;
    let settings = certflow_acme_server::ValidatorSettings {
        http01_port: a.http01_port,
        tls_alpn01_port: a.tls_alpn01_port,
        dns_resolver: a.dns_resolver_addr()?,
        timeout: Duration::from_secs(a.validation_timeout_secs),
    };
    certflow_acme_server::ChallengeValidators::new(settings, Arc::new(config.outbound_policy()?))
        .map_err(|e| anyhow::anyhow!("[acme_server]: {e}"))
}
