//! [`AcmeIssuer`]: certflow's `IssuerBackend` over an ACME CA.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use certflow_core::model::Issuer;
use certflow_core::ports::{IssueRequest, IssuedCertificate, IssuerBackend};
use certflow_core::renewal::SuggestedWindow;
use certflow_core::{DomainError, DomainResult, SubjectName};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

use crate::account::AccountStore;
use crate::client::{AcmeHttp, BACKEND, ca_error, describe_problem};
use crate::dns::{Dns01Record, DnsProvider, ExecHook};
use crate::http01::Http01Tokens;
#[cfg(feature = "route53")]
use crate::route53::Route53Provider;
use crate::settings::{AcmeSettings, ChallengeKind, DnsSettings};

/// What the [`AccountStore`] keeps: the credentials and the directory they
/// belong to (pointing the issuer at another CA registers a new account).
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory_url: String,
    credentials: AccountCredentials,
}

/// Issues certificates from an ACME CA (RFC 8555): registers the account on
/// first use, orders, answers HTTP-01 or DNS-01 challenges, finalizes with the
/// caller's CSR, and asks the CA for renewal windows (ARI, RFC 9773).
pub struct AcmeIssuer {
    settings: AcmeSettings,
    store: Arc<dyn AccountStore>,
    http01: Http01Tokens,
    dns: Option<Arc<dyn DnsProvider>>,
    http: AcmeHttp,
    account: Mutex<Option<Account>>,
}

impl std::fmt::Debug for AcmeIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeIssuer")
            .field("directory_url", &self.settings.directory_url)
            .field("challenge", &self.settings.challenge)
            .finish_non_exhaustive()
    }
}

impl AcmeIssuer {
    /// Validates `settings` and builds the issuer; the DNS provider they name
    /// is created here (Route 53 with the default AWS configuration; refused
    /// when built without the `route53` feature). Nothing is sent to the CA
    /// until the first issuance.
    pub async fn new(
        settings: AcmeSettings,
        store: Arc<dyn AccountStore>,
        http01: Http01Tokens,
    ) -> DomainResult<Self> {
        settings.validate()?;
        let dns: Option<Arc<dyn DnsProvider>> = match &settings.dns {
            None => None,
            #[cfg(feature = "route53")]
            Some(DnsSettings::Route53 {
                hosted_zone_id,
                endpoint_url,
            }) => Some(Arc::new(
                Route53Provider::from_env(
                    hosted_zone_id.clone(),
                    endpoint_url.as_deref(),
                    &settings.propagation,
                )
                .await,
            )),
            #[cfg(not(feature = "route53"))]
            Some(DnsSettings::Route53 { .. }) => {
                return Err(DomainError::invalid(
                    "acme.dns.provider",
                    "route53 needs certflow-acme built with its route53 feature",
                ));
            }
            Some(DnsSettings::Exec {
                command,
                args,
                timeout_secs,
            }) => Some(Arc::new(ExecHook::new(
                command.clone(),
                args.clone(),
                Duration::from_secs(*timeout_secs),
            ))),
        };
        let http = AcmeHttp::new(
            settings.ca_bundle.as_deref(),
            Duration::from_secs(settings.request_timeout_secs),
        )?;
        Ok(Self {
            settings,
            store,
            http01,
            dns,
            http,
            account: Mutex::new(None),
        })
    }

    /// Replaces the DNS-01 provider built from the settings (an SDK client
    /// configured by the caller, or another implementation).
    pub fn with_dns_provider(mut self, provider: Arc<dyn DnsProvider>) -> Self {
        self.dns = Some(provider);
        self
    }

    /// The settings in use.
    pub fn settings(&self) -> &AcmeSettings {
        &self.settings
    }

    /// The account URL at the CA (registering the account if needed). Not secret.
    pub async fn account_id(&self) -> DomainResult<String> {
        Ok(self.account().await?.id().to_owned())
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(self.settings.order_timeout_secs))
    }

    /// The account: cached, else restored from the store, else registered
    /// (with EAB when configured) and saved. The lock makes concurrent first
    /// issuances register once.
    async fn account(&self) -> DomainResult<Account> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        if let Some(json) = self.store.load().await? {
            let stored: StoredAccount = serde_json::from_str(&json).map_err(|_| {
                DomainError::Integrity("stored ACME account credentials are unreadable".into())
            })?;
            if stored.directory_url == self.settings.directory_url {
                let account = Account::builder_with_http(Box::new(self.http.clone()))
                    .from_credentials(stored.credentials)
                    .await
                    .map_err(ca_error)?;
                *cached = Some(account.clone());
                return Ok(account);
            }
            tracing::warn!(
                directory = %self.settings.directory_url,
                "stored ACME account belongs to another directory; registering a new account"
            );
        }
        let eab = match &self.settings.external_account_binding {
            Some(eab) => Some(ExternalAccountKey::new(
                eab.key_id.clone(),
                &eab.decoded_key()?,
            )),
            None => None,
        };
        let contact = self.settings.contact_uris();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(Box::new(self.http.clone()))
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory_url.clone(),
                eab.as_ref(),
            )
            .await
            .map_err(ca_error)?;
        let json = serde_json::to_string(&StoredAccount {
            directory_url: self.settings.directory_url.clone(),
            credentials,
        })
        .map_err(|e| DomainError::Internal(format!("ACME account encode: {e}")))?;
        self.store.save(&json).await?;
        tracing::info!(account = %account.id(), directory = %self.settings.directory_url, "registered ACME account");
        *cached = Some(account.clone());
        Ok(account)
    }

    /// A new order, with `replaces` when renewing and the CA does ARI. A CA
    /// without ARI, or one that refuses the `replaces` (already replaced,
    /// another account's certificate), gets a plain order: renewing matters
    /// more than the hint.
    async fn new_order(
        &self,
        account: &Account,
        identifiers: &[Identifier],
        replaces_der: Option<&[u8]>,
    ) -> DomainResult<Order> {
        let replaces = replaces_der.and_then(|der| {
            CertificateIdentifier::try_from(&CertificateDer::from(der))
                .map_err(|e| tracing::debug!(error = %e, "no ARI identifier for the replaced certificate"))
                .ok()
        });
        if let Some(id) = replaces {
            match account
                .new_order(&NewOrder::new(identifiers).replaces(id))
                .await
            {
                Ok(order) => return Ok(order),
                Err(instant_acme::Error::Unsupported(_)) => {}
                Err(instant_acme::Error::Api(p))
                    if p.r#type.as_deref().is_some_and(|t| {
                        t.ends_with(":alreadyReplaced") || t.ends_with(":malformed")
                    }) =>
                {
                    tracing::info!(problem = %describe_problem(&p), "ACME CA refused `replaces`; ordering without it");
                }
                Err(e) => return Err(ca_error(e)),
            }
        }
        account
            .new_order(&NewOrder::new(identifiers))
            .await
            .map_err(ca_error)
    }

    async fn issue_inner(&self, request: &IssueRequest) -> DomainResult<IssuedCertificate> {
        if request.names.is_empty() {
            return Err(DomainError::invalid(
                "names",
                "at least one name is required",
            ));
        }
        let identifiers: Vec<Identifier> = request
            .names
            .iter()
            .map(|n| match n {
                SubjectName::Dns(d) => Identifier::Dns(d.clone()),
                SubjectName::Ip(ip) => Identifier::Ip(*ip),
            })
            .collect();
        let account = self.account().await?;
        let mut order = self
            .new_order(&account, &identifiers, request.replaces_der.as_deref())
            .await?;
        tracing::info!(
            certificate = %request.certificate_id,
            order = %order.url(),
            names = identifiers.len(),
            "ACME order created"
        );

        let challenge_type = match self.settings.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        };
        let mut tokens = Vec::new();
        let mut records = Vec::new();
        let mut pending = 0usize;
        let collected = collect_challenges(&mut order, &challenge_type).await;
        let result = match collected {
            Ok(challenges) => {
                for c in challenges {
                    pending += 1;
                    match self.settings.challenge {
                        ChallengeKind::Http01 => {
                            self.http01.insert(c.token.clone(), c.key_authorization);
                            tokens.push(c.token);
                        }
                        ChallengeKind::Dns01 => {
                            records.push(Dns01Record::new(&c.identifier, c.dns_value));
                        }
                    }
                }
                self.answer_and_finalize(&mut order, &challenge_type, &records, pending, request)
                    .await
            }
            Err(e) => Err(e),
        };

        for t in &tokens {
            self.http01.remove(t);
        }
        if !records.is_empty()
            && let Some(dns) = &self.dns
            && let Err(e) = dns.cleanup(&records).await
        {
            tracing::warn!(error = %e, "DNS-01 cleanup failed; stale TXT records remain");
        }
        result
    }

    async fn answer_and_finalize(
        &self,
        order: &mut Order,
        challenge_type: &ChallengeType,
        records: &[Dns01Record],
        pending: usize,
        request: &IssueRequest,
    ) -> DomainResult<IssuedCertificate> {
        if !records.is_empty() {
            let dns = self.dns.as_ref().ok_or_else(|| {
                DomainError::invalid("acme.dns", "is required when challenge is dns-01")
            })?;
            dns.present(records).await?;
            let delay = self.settings.propagation.delay_secs;
            if delay > 0 {
                tokio::time::sleep(Duration::from_secs(delay)).await;
            }
        }
        if pending > 0 {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(ca_error)?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let mut challenge = authz
                    .challenge(challenge_type.clone())
                    .ok_or_else(|| DomainError::Internal("challenge vanished".into()))?;
                challenge.set_ready().await.map_err(ca_error)?;
            }
        }
        let status = order
            .poll_ready(&self.retry_policy())
            .await
            .map_err(ca_error)?;
        if status != OrderStatus::Ready {
            return Err(invalid_order(order).await);
        }
        order
            .finalize_csr(&request.csr_der)
            .await
            .map_err(ca_error)?;
        let chain = order
            .poll_certificate(&self.retry_policy())
            .await
            .map_err(ca_error)?;
        split_chain(&chain, request)
    }
}

/// One challenge to answer.
struct PendingChallenge {
    identifier: String,
    token: String,
    key_authorization: String,
    dns_value: String,
}

/// The pending authorizations' challenges of `kind`; authorizations already
/// valid (reused) need nothing.
async fn collect_challenges(
    order: &mut Order,
    kind: &ChallengeType,
) -> DomainResult<Vec<PendingChallenge>> {
    let mut out = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(ca_error)?;
        let identifier = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(DomainError::Conflict(format!(
                    "ACME CA: authorization for {identifier} is {other:?}"
                )));
            }
        }
        let offered: Vec<String> = authz
            .challenges
            .iter()
            .map(|c| challenge_name(&c.r#type))
            .collect();
        let Some(challenge) = authz.challenge(kind.clone()) else {
            return Err(DomainError::Conflict(format!(
                "ACME CA offers no {} challenge for {identifier} (offered: {})",
                challenge_name(kind),
                offered.join(", ")
            )));
        };
        let ka = challenge.key_authorization();
        out.push(PendingChallenge {
            identifier,
            token: challenge.token.clone(),
            key_authorization: ka.as_str().to_owned(),
            dns_value: ka.dns_value(),
        });
    }
    Ok(out)
}

fn challenge_name(kind: &ChallengeType) -> String {
    match kind {
        ChallengeType::Http01 => "http-01".into(),
        ChallengeType::Dns01 => "dns-01".into(),
        ChallengeType::TlsAlpn01 => "tls-alpn-01".into(),
        ChallengeType::DeviceAttest01 => "device-attest-01".into(),
        ChallengeType::Unknown(other) => other.clone(),
        other => format!("{other:?}"),
    }
}

/// Why an order went invalid, from its authorizations' challenge errors.
async fn invalid_order(order: &mut Order) -> DomainError {
    let mut reasons = Vec::new();
    if let Some(p) = &order.state().error {
        reasons.push(describe_problem(p));
    }
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(mut authz) = authz else { continue };
        if authz.refresh().await.is_err() {
            continue;
        }
        let identifier = authz.identifier().to_string();
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                reasons.push(format!("{identifier}: {}", describe_problem(p)));
            }
        }
    }
    if reasons.is_empty() {
        reasons.push("no reason given".into());
    }
    DomainError::Conflict(format!("ACME order invalid: {}", reasons.join("; ")))
}

/// The leaf (first certificate) as DER and the rest as PEM; the leaf must
/// certify the request's key, or the CA answered another order.
fn split_chain(chain_pem: &str, request: &IssueRequest) -> DomainResult<IssuedCertificate> {
    let blocks = pem::parse_many(chain_pem).map_err(|e| DomainError::Unavailable {
        backend: BACKEND,
        reason: format!("certificate chain is not PEM: {e}"),
    })?;
    let mut certs = blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE");
    let leaf = certs.next().ok_or_else(|| DomainError::Unavailable {
        backend: BACKEND,
        reason: "certificate chain is empty".into(),
    })?;
    let rest: Vec<pem::Pem> = certs.collect();
    let (_, cert) =
        X509Certificate::from_der(leaf.contents()).map_err(|e| DomainError::Unavailable {
            backend: BACKEND,
            reason: format!("leaf certificate does not parse: {e}"),
        })?;
    let expected: Option<&[u8]> = if request.spki_der.is_empty() {
        None
    } else {
        Some(&request.spki_der)
    };
    let csr_key = X509CertificationRequest::from_der(&request.csr_der)
        .ok()
        .map(|(_, csr)| csr.certification_request_info.subject_pki.raw);
    if let Some(key) = expected.or(csr_key)
        && key != cert.public_key().raw
    {
        return Err(DomainError::Conflict(
            "ACME CA returned a certificate for another key than the request's".into(),
        ));
    }
    Ok(IssuedCertificate {
        cert_der: leaf.contents().to_vec(),
        chain_pem: if rest.is_empty() {
            String::new()
        } else {
            pem::encode_many(&rest)
        },
    })
}

#[async_trait]
impl IssuerBackend for AcmeIssuer {
    async fn issue(
        &self,
        issuer: &Issuer,
        request: &IssueRequest,
        _now: OffsetDateTime,
    ) -> DomainResult<IssuedCertificate> {
        let result = self.issue_inner(request).await;
        match &result {
            Ok(_) => {
                tracing::info!(issuer = %issuer.name, certificate = %request.certificate_id, "ACME certificate issued")
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.name, certificate = %request.certificate_id, error = %e, "ACME issuance failed")
            }
        }
        result
    }

    async fn renewal_info(
        &self,
        _issuer: &Issuer,
        cert_der: &[u8],
    ) -> DomainResult<Option<SuggestedWindow>> {
        let Ok(id) = CertificateIdentifier::try_from(&CertificateDer::from(cert_der)) else {
            // No authority key identifier: ARI cannot name this certificate.
            return Ok(None);
        };
        let account = self.account().await?;
        match account.renewal_info(&id).await {
            Ok((info, _)) => Ok(Some(SuggestedWindow {
                start: info.suggested_window.start,
                end: info.suggested_window.end,
            })),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(ca_error(e)),
        }
    }
}
