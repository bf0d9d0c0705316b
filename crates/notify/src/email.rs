//! Email over SMTP (one server for the whole installation; each
//! [`Channel::Email`] names its recipients).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use certflow_core::notify::{Channel, Notification, Notifier};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::SetupError;
use crate::text::{body, error_chain, subject};

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpTls {
    /// Plain text (a relay on the same host or network only).
    None,
    /// Plain connection upgraded with STARTTLS, which is required (default port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (default port 465).
    Tls,
}

fn default_timeout_secs() -> u64 {
    15
}

/// The SMTP server notifications go through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Server host name (also the name its TLS certificate must carry).
    pub host: String,
    /// Port; by default 25, 587 or 465 after `tls`.
    #[serde(default)]
    pub port: Option<u16>,
    /// Connection protection.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Login, if the server wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Sender, e.g. `certflow <certflow@example.com>`.
    pub from: String,
    /// Connect and per-command timeout, seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// PEM bundle of extra trust anchors (a private relay's CA), added to the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl SmtpSettings {
    /// Settings for `host:port` with defaults for the rest.
    pub fn new(host: impl Into<String>, port: u16, tls: SmtpTls, from: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: Some(port),
            tls,
            username: None,
            password: None,
            from: from.into(),
            timeout_secs: default_timeout_secs(),
            ca_file: None,
        }
    }

    /// The port in use.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }
}

/// Delivers [`Channel::Email`] notifications: a plain-text message with the facts.
#[derive(Clone)]
pub struct EmailNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
}

impl std::fmt::Debug for EmailNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailNotifier")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl EmailNotifier {
    /// Checks the settings and prepares the transport; connects only when sending.
    pub fn new(settings: &SmtpSettings) -> Result<Self, SetupError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| SetupError(format!("smtp.from {:?}: {e}", settings.from)))?;
        let port = settings.effective_port();
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(port)
            .timeout(Some(Duration::from_secs(settings.timeout_secs.max(1))));
        if settings.tls != SmtpTls::None {
            let mut params = TlsParameters::builder(settings.host.clone());
            if let Some(path) = &settings.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| SetupError(format!("smtp.ca_file {}: {e}", path.display())))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| SetupError(format!("smtp.ca_file {}: {e}", path.display())))?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| SetupError(format!("smtp TLS: {}", error_chain(&e))))?;
            builder = builder.tls(match settings.tls {
                SmtpTls::Tls => Tls::Wrapper(params),
                _ => Tls::Required(params),
            });
        }
        match (&settings.username, &settings.password) {
            (Some(user), Some(pass)) => {
                builder = builder.credentials(Credentials::new(
                    user.clone(),
                    pass.expose_secret().to_owned(),
                ));
            }
            (None, None) => {}
            _ => {
                return Err(SetupError(
                    "smtp.username and smtp.password go together".into(),
                ));
            }
        }
        Ok(Self {
            transport: builder.build(),
            from,
            server: format!("{}:{port}", settings.host),
        })
    }

    /// The message [`Notifier::deliver`] sends, for previews and tests.
    pub fn message(&self, to: &[String], n: &Notification) -> Result<Message, String> {
        if to.is_empty() {
            return Err("email channel has no recipients".into());
        }
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject(n))
            // Receivers' mail clients thread and de-duplicate on it.
            .message_id(Some(format!("<{}@certflow>", n.id)))
            .header(ContentType::TEXT_PLAIN);
        for addr in to {
            let mbox: Mailbox = addr
                .parse()
                .map_err(|e| format!("invalid recipient {addr:?}: {e}"))?;
            builder = builder.to(mbox);
        }
        builder
            .body(body(n))
            .map_err(|e| format!("cannot build the message: {e}"))
    }
}

#[async_trait]
impl Notifier for EmailNotifier {
    fn kind(&self) -> &'static str {
        "email"
    }

    async fn deliver(&self, channel: &Channel, n: &Notification) -> Result<(), String> {
        let Channel::Email { to } = channel else {
            return Err(format!("not an email channel: {}", channel.kind()));
        };
        let message = self.message(to, n)?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP {}: {}", self.server, error_chain(&e)))
    }
}
