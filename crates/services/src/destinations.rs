//! Destinations: a certificate pushed to AWS Certificate Manager and bound
//! to load-balancer listeners after every new version and on attach.
//!
//! Each destination row is its own outbox entry (like notification
//! deliveries): the worker claims the destinations whose certificate has a
//! version they do not serve, pushes it, reads back what AWS serves, and
//! records the attempt; a failure is retried with exponential backoff, shown
//! with its reason, and tells the team once per version
//! (`deployment-failed`). Destinations are independent of each other and of
//! renewal: a failing one delays nothing else. A delivered destination is
//! read back now and then; another serial there is drift
//! (`deployment-drift`) and the current version is pushed again.
//!
//! The private key leaves certflow only inside `ImportCertificate`; the
//! audit trail records each push (`certificate.destination.push`) without it.

use std::sync::Arc;

use certflow_core::destinations::{
    AttemptOutcome, AwsTarget, Destination, DestinationAttempt, DestinationKind, DestinationPusher,
    DestinationStats, DestinationStatus, DestinationStore, DueDestination, PushBundle, backoff,
    clip_error, validate_target,
};
use certflow_core::model::{Actor, AuditEvent, CertificateStatus, KeySource};
use certflow_core::notify::{EventKind, Notification};
use certflow_core::{DomainError, DomainResult};
use serde_json::json;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::{DownloadKind, Services};

/// Audit subject of the worker's pushes.
pub const DESTINATIONS_ACTOR: &str = "system:destinations";
/// Most destinations one delivery round pushes.
const BATCH: u32 = 50;

/// Delivery settings (`[destinations]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationSettings {
    /// First retry after this long; doubled per failure.
    pub backoff_base: Duration,
    /// Longest wait between retries.
    pub backoff_cap: Duration,
    /// How long a claimed destination stays leased to its worker.
    pub lease: Duration,
    /// A delivered destination is read back this often (drift check).
    pub verify_every: Duration,
}

impl Default for DestinationSettings {
    fn default() -> Self {
        Self {
            backoff_base: Duration::seconds(30),
            backoff_cap: Duration::hours(1),
            lease: Duration::minutes(5),
            verify_every: Duration::hours(1),
        }
    }
}

/// The destination ports the use cases need.
#[derive(Clone)]
pub(crate) struct DestinationPorts {
    pub(crate) store: Arc<dyn DestinationStore>,
    pub(crate) pusher: Option<Arc<dyn DestinationPusher>>,
    pub(crate) settings: Arc<DestinationSettings>,
}

/// What the console asks to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachDestination {
    /// What.
    pub kind: DestinationKind,
    /// Where.
    pub target: AwsTarget,
    /// The listener (`aws-elbv2-listener`).
    pub listener_arn: Option<String>,
    /// As the listener's default certificate.
    pub default_certificate: bool,
}

/// What a round of deliveries did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryRound {
    /// Destinations that now serve the current version.
    pub delivered: usize,
    /// Attempts that failed (retried later).
    pub failed: usize,
}

fn actor() -> Actor {
    Actor {
        subject: DESTINATIONS_ACTOR.into(),
        source: None,
    }
}

fn target(id: Uuid) -> String {
    format!("certificate/{id}")
}

/// Serial of the certificate in `pem` (lower-case hex, as certflow stores serials).
fn serial_of(pem: &str) -> Result<String, String> {
    let ders = certflow_pki::parse_pem_certs("certificate", pem).map_err(|e| e.to_string())?;
    let der = ders
        .first()
        .ok_or_else(|| "AWS returned no certificate".to_owned())?;
    certflow_pki::inspect(der)
        .map(|i| i.serial_hex.to_ascii_lowercase())
        .map_err(|e| e.to_string())
}

/// Drops self-signed certificates (roots) from a PEM chain: ACM wants the
/// intermediates, and servers should not send the root.
fn without_roots(chain_pem: &str) -> DomainResult<String> {
    let mut out = String::new();
    for der in certflow_pki::parse_pem_certs("chain", chain_pem)? {
        let info = certflow_pki::inspect(&der)?;
        if info.subject != info.issuer {
            out.push_str(&certflow_pki::cert_to_pem(&der));
        }
    }
    Ok(out)
}

impl Services {
    /// Wires destinations: `store` for attach/list/detach and the outbox,
    /// `pusher` for the pushes (the worker) and detach's clean-up.
    pub fn with_destinations(
        mut self,
        store: Arc<dyn DestinationStore>,
        pusher: Option<Arc<dyn DestinationPusher>>,
        settings: DestinationSettings,
    ) -> Self {
        self.destinations = Some(DestinationPorts {
            store,
            pusher,
            settings: Arc::new(settings),
        });
        self
    }

    fn destination_ports(&self) -> DomainResult<&DestinationPorts> {
        self.destinations
            .as_ref()
            .ok_or_else(|| DomainError::Unavailable {
                backend: "destinations",
                reason: "destinations are not configured on this server".into(),
            })
    }

    fn pusher(&self) -> DomainResult<&Arc<dyn DestinationPusher>> {
        self.destination_ports()?
            .pusher
            .as_ref()
            .ok_or_else(|| DomainError::Unavailable {
                backend: "destinations",
                reason: "no AWS client on this server".into(),
            })
    }

    /// Attaches a destination to a certificate whose key certflow holds; it
    /// is delivered by the next worker round. A CSR-keyed certificate is
    /// refused: certflow has no key to import.
    pub async fn attach_destination(
        &self,
        actor: &Actor,
        certificate_id: Uuid,
        req: AttachDestination,
        now: OffsetDateTime,
    ) -> DomainResult<Destination> {
        let ports = self.destination_ports()?;
        let cert = self
            .store
            .get_certificate(certificate_id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("certificate {certificate_id}")))?;
        if cert.key_source == KeySource::Csr {
            return Err(DomainError::invalid(
                "kind",
                format!(
                    "certificate {certificate_id} was issued for a certificate signing request: \
                     its private key is held by the requester, not by certflow, so it cannot be \
                     imported into AWS Certificate Manager (only server-keyed certificates can be pushed)"
                ),
            ));
        }
        if cert.status != CertificateStatus::Active {
            return Err(DomainError::Conflict(format!(
                "certificate {certificate_id} is {}; only active certificates are delivered",
                cert.status.as_str()
            )));
        }
        let errors = validate_target(req.kind, &req.target, req.listener_arn.as_deref());
        if !errors.is_empty() {
            return Err(DomainError::Invalid(errors));
        }
        let d = Destination {
            id: Uuid::now_v7(),
            certificate_id,
            kind: req.kind,
            target: req.target,
            listener_arn: req.listener_arn,
            default_certificate: req.default_certificate
                && req.kind == DestinationKind::AwsElbv2Listener,
            status: DestinationStatus::Pending,
            external_id: None,
            delivered_version: None,
            delivered_serial: None,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            verified_at: None,
            created_by: actor.subject.clone(),
            created_at: now,
            updated_at: now,
        };
        let audit = AuditEvent::success(
            now,
            actor,
            "certificate.destination.attach",
            target(certificate_id),
            json!({
                "destination_id": d.id, "kind": d.kind.as_str(), "region": d.target.region,
                "role_arn": d.target.role_arn, "listener_arn": d.listener_arn,
                "default": d.default_certificate, "team": cert.team,
            }),
        );
        ports.store.insert_destination(&d, &audit).await?;
        Ok(d)
    }

    /// A certificate's destinations.
    pub async fn certificate_destinations(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<Destination>> {
        self.destination_ports()?
            .store
            .certificate_destinations(certificate_id)
            .await
    }

    /// A certificate's destination, `NotFound` if it is another's.
    async fn destination_of(&self, certificate_id: Uuid, id: Uuid) -> DomainResult<Destination> {
        self.destination_ports()?
            .store
            .get_destination(id)
            .await?
            .filter(|d| d.certificate_id == certificate_id)
            .ok_or_else(|| DomainError::NotFound(format!("destination {id}")))
    }

    /// A destination's last attempts, newest first.
    pub async fn destination_attempts(
        &self,
        certificate_id: Uuid,
        id: Uuid,
    ) -> DomainResult<Vec<DestinationAttempt>> {
        self.destination_of(certificate_id, id).await?;
        self.destination_ports()?
            .store
            .destination_attempts(id, 100)
            .await
    }

    /// Detaches a destination. A listener stops serving the certificate in
    /// its SNI list (a default certificate stays: a listener must have one).
    /// With `delete_certificate`, an ACM destination's certificate is
    /// deleted from ACM too, unless a listener destination still uses it
    /// (and ACM itself refuses while any listener does).
    pub async fn detach_destination(
        &self,
        actor: &Actor,
        certificate_id: Uuid,
        id: Uuid,
        delete_certificate: bool,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let d = self.destination_of(certificate_id, id).await?;
        let mut removed = None;
        if let Some(arn) = d.external_id.as_deref() {
            // Only a delivery that succeeded once bound the ARN to the
            // listener; one that never did (a listener that does not exist)
            // has nothing to unbind and must not block its own removal.
            if let (true, Some(listener), false, true) = (
                d.is_listener(),
                d.listener_arn.as_deref(),
                d.default_certificate,
                d.delivered_version.is_some(),
            ) {
                self.pusher()?
                    .unbind(&d.target, listener, arn)
                    .await
                    .map_err(|e| {
                        DomainError::Conflict(format!("the listener still serves {arn}: {e}"))
                    })?;
            }
            if delete_certificate && !d.is_listener() {
                let siblings = self.certificate_destinations(certificate_id).await?;
                if siblings.iter().any(|s| {
                    s.id != d.id && s.is_listener() && s.external_id.as_deref() == Some(arn)
                }) {
                    return Err(DomainError::Conflict(format!(
                        "a listener destination of this certificate still uses {arn}: detach it first"
                    )));
                }
                self.pusher()?
                    .delete_certificate(&d.target, arn)
                    .await
                    .map_err(|e| DomainError::Conflict(format!("ACM kept {arn}: {e}")))?;
                removed = Some(arn.to_owned());
            }
        }
        let audit = AuditEvent::success(
            now,
            actor,
            "certificate.destination.detach",
            target(certificate_id),
            json!({
                "destination_id": d.id, "kind": d.kind.as_str(), "region": d.target.region,
                "external_id": d.external_id, "listener_arn": d.listener_arn,
                "deleted_certificate": removed,
            }),
        );
        self.destination_ports()?
            .store
            .delete_destination(id, &audit)
            .await
    }

    /// Delivery counts per kind and status (metrics).
    pub async fn destination_stats(&self) -> DomainResult<DestinationStats> {
        self.destination_ports()?.store.destination_stats().await
    }

    /// One round of the outbox: pushes the current version to every due
    /// destination, in order (a certificate's ACM destination before its
    /// listeners, which reuse its ARN).
    pub async fn deliver_destinations(&self, now: OffsetDateTime) -> DomainResult<DeliveryRound> {
        let ports = self.destination_ports()?.clone();
        let due = ports
            .store
            .claim_destinations(now, now + ports.settings.lease, BATCH)
            .await?;
        let mut round = DeliveryRound::default();
        for d in due {
            if self.deliver_one(&ports, d, now).await? {
                round.delivered += 1;
            } else {
                round.failed += 1;
            }
        }
        Ok(round)
    }

    /// The ARN to re-import under: the destination's own, else that of
    /// another destination of the certificate in the same account and region.
    async fn known_arn(
        &self,
        ports: &DestinationPorts,
        d: &Destination,
    ) -> DomainResult<Option<String>> {
        if d.external_id.is_some() {
            return Ok(d.external_id.clone());
        }
        let siblings = ports
            .store
            .certificate_destinations(d.certificate_id)
            .await?;
        Ok(siblings
            .into_iter()
            .filter(|s| s.id != d.id && s.target == d.target)
            // The ACM destination's ARN first: it is the one kept on renewal.
            .min_by_key(|s| (s.is_listener(), s.created_at))
            .and_then(|s| s.external_id))
    }

    async fn bundle(&self, certificate_id: Uuid, version: u32) -> DomainResult<PushBundle> {
        let view = self.certificate(certificate_id).await?;
        let v = view
            .versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| {
                DomainError::NotFound(format!("version {version} of certificate {certificate_id}"))
            })?;
        let key_pem = self.private_key(v).await?.to_pem();
        let certificate_pem = self
            .download(certificate_id, Some(version), DownloadKind::Certificate)
            .await?;
        let chain = self
            .download(certificate_id, Some(version), DownloadKind::Chain)
            .await?;
        Ok(PushBundle {
            certificate_id,
            name: view.certificate.name.clone(),
            team: view.certificate.team.clone(),
            version,
            certificate_pem,
            chain_pem: without_roots(&chain)?,
            key_pem,
        })
    }

    /// Imports (or re-imports), binds, and reads back: the ARN and the
    /// served serial, or the ARN known so far and the reason.
    async fn push(
        &self,
        pusher: &dyn DestinationPusher,
        d: &Destination,
        arn: Option<String>,
        bundle: &PushBundle,
        serial: &str,
    ) -> Result<(String, String), (Option<String>, String)> {
        let arn = pusher
            .import(&d.target, arn.as_deref(), bundle)
            .await
            .map_err(|e| (arn.clone(), e))?;
        let fail = |e: String| (Some(arn.clone()), e);
        let served = pusher
            .served_certificate(&d.target, &arn)
            .await
            .and_then(|pem| serial_of(&pem))
            .map_err(fail)?;
        if served != serial {
            return Err(fail(format!(
                "ACM serves serial {served} under {arn} after the import, not {serial}"
            )));
        }
        if let (true, Some(listener)) = (d.is_listener(), d.listener_arn.as_deref()) {
            pusher
                .bind(&d.target, listener, &arn, d.default_certificate)
                .await
                .map_err(fail)?;
            let listed = pusher
                .listener_certificates(&d.target, listener)
                .await
                .map_err(fail)?;
            if !listed.contains(&arn) {
                return Err(fail(format!(
                    "listener {listener} does not list {arn} after binding it"
                )));
            }
        }
        Ok((arn, served))
    }

    /// Delivers one due destination and records the attempt: `true` when
    /// it now serves the version. Errors only when the store fails.
    async fn deliver_one(
        &self,
        ports: &DestinationPorts,
        due: DueDestination,
        now: OffsetDateTime,
    ) -> DomainResult<bool> {
        let d = &due.destination;
        let version = due.version;
        let view = self.certificate(d.certificate_id).await?;
        let serial = view
            .versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| v.serial.to_ascii_lowercase())
            .unwrap_or_default();
        let result = match (&ports.pusher, self.bundle(d.certificate_id, version).await) {
            (None, _) => Err((
                d.external_id.clone(),
                "no AWS client on this worker".to_owned(),
            )),
            (_, Err(e)) => Err((d.external_id.clone(), e.to_string())),
            (Some(pusher), Ok(bundle)) => {
                let arn = self.known_arn(ports, d).await?;
                self.push(pusher.as_ref(), d, arn, &bundle, &serial).await
            }
        };
        let details = |outcome: &str, arn: Option<&str>, error: Option<&str>| {
            json!({
                "destination_id": d.id, "kind": d.kind.as_str(), "region": d.target.region,
                "listener_arn": d.listener_arn, "version": version, "serial": serial,
                "external_id": arn, "outcome": outcome, "error": error,
            })
        };
        let (outcome, audit, ok) = match result {
            Ok((arn, served)) => (
                AttemptOutcome::Delivered {
                    external_id: arn.clone(),
                    serial: served,
                },
                details("delivered", Some(&arn), None),
                true,
            ),
            Err((arn, error)) => {
                let error = clip_error(&error);
                let wait = backoff(
                    d.attempts,
                    ports.settings.backoff_base,
                    ports.settings.backoff_cap,
                );
                tracing::warn!(destination = %d.id, certificate = %d.certificate_id, version, error = %error, "destination push failed; will retry");
                self.announce_failure(d, &view.certificate, version, &error, now)
                    .await;
                (
                    AttemptOutcome::Failed {
                        external_id: arn.clone(),
                        error: error.clone(),
                        retry_at: now + wait,
                    },
                    details("failed", arn.as_deref(), Some(&error)),
                    false,
                )
            }
        };
        let audit = AuditEvent::success(
            now,
            &actor(),
            "certificate.destination.push",
            target(d.certificate_id),
            audit,
        );
        match ports
            .store
            .record_destination_attempt(d.id, version, now, &outcome, &audit)
            .await
        {
            // Detached while it was pushed: nothing left to record.
            Err(DomainError::NotFound(_)) => Ok(ok),
            other => other.map(|()| ok),
        }
    }

    /// `deployment-failed`, once per destination and version.
    async fn announce_failure(
        &self,
        d: &Destination,
        cert: &certflow_core::model::Certificate,
        version: u32,
        error: &str,
        now: OffsetDateTime,
    ) {
        let place = d
            .listener_arn
            .as_deref()
            .unwrap_or(d.target.region.as_str());
        self.publish(
            Notification {
                reason: Some(error.to_owned()),
                summary: format!(
                    "{} version {version} could not be pushed to {} {place}; retrying",
                    cert.name,
                    d.kind.as_str()
                ),
                details: json!({
                    "destination_id": d.id, "kind": d.kind.as_str(), "region": d.target.region,
                    "listener_arn": d.listener_arn, "external_id": d.external_id,
                }),
                ..Notification::about(EventKind::DeploymentFailed, cert, version, now)
            },
            Some(&format!("destination-failed/{}/v{version}", d.id)),
        )
        .await;
    }

    /// Reads back delivered destinations not checked for `verify_every`:
    /// another serial in ACM, or a listener that no longer lists the ARN, is
    /// drift — announced once per (destination, version, what was found)
    /// and delivered again. Returns how many drifted.
    pub async fn verify_destinations(&self, now: OffsetDateTime) -> DomainResult<usize> {
        let ports = self.destination_ports()?.clone();
        let Some(pusher) = ports.pusher.clone() else {
            return Ok(0);
        };
        let candidates = ports
            .store
            .verify_candidates(now - ports.settings.verify_every, BATCH)
            .await?;
        let mut drifted = 0;
        for due in candidates {
            let d = &due.destination;
            let (Some(arn), Some(expected)) =
                (d.external_id.as_deref(), d.delivered_serial.as_deref())
            else {
                continue;
            };
            let found = match pusher.served_certificate(&d.target, arn).await {
                Ok(pem) => serial_of(&pem),
                Err(e) => Err(e),
            };
            let drift = match found {
                Ok(serial) if serial == expected => {
                    match (d.is_listener(), d.listener_arn.as_deref()) {
                        (true, Some(listener)) => {
                            match pusher.listener_certificates(&d.target, listener).await {
                                Ok(list) if !list.iter().any(|a| a == arn) => {
                                    Some(format!("listener {listener} no longer lists {arn}"))
                                }
                                // Unreachable is not drift: checked again next time.
                                _ => None,
                            }
                        }
                        _ => None,
                    }
                }
                Ok(serial) => Some(format!(
                    "ACM serves serial {serial} under {arn}, not {expected} (version {})",
                    due.version
                )),
                Err(e) => {
                    tracing::warn!(destination = %d.id, error = %e, "destination read-back failed");
                    None
                }
            };
            ports
                .store
                .record_verification(d.id, now, drift.as_deref())
                .await?;
            if let Some(reason) = drift {
                drifted += 1;
                self.announce_drift(d, due.version, &reason, now).await?;
            }
        }
        Ok(drifted)
    }

    async fn announce_drift(
        &self,
        d: &Destination,
        version: u32,
        reason: &str,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let cert = self.certificate(d.certificate_id).await?.certificate;
        self.publish(
            Notification {
                reason: Some(reason.to_owned()),
                summary: format!(
                    "{} version {version} is no longer what {} serves; pushing it again",
                    cert.name,
                    d.kind.as_str()
                ),
                details: json!({
                    "destination_id": d.id, "kind": d.kind.as_str(), "region": d.target.region,
                    "listener_arn": d.listener_arn, "external_id": d.external_id,
                }),
                ..Notification::about(EventKind::DeploymentDrift, &cert, version, now)
            },
            Some(&format!(
                "destination-drift/{}/v{version}/{}",
                d.id,
                now.unix_timestamp() / 3600
            )),
        )
        .await;
        Ok(())
    }
}
