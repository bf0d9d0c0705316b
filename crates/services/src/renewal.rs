//! Renewal as the workers perform it, renewal times (policy, jitter, ARI),
//! and the events other parts of the system are told about.
//!
//! Events are published after the change they describe has committed: a crash
//! in between loses the notification, never invents one (the audit trail,
//! written in the change's own transaction, stays the record of truth). A
//! renewal's `renewed` event, where the notifications are rows of the metadata
//! database, commits in the version's own transaction instead, and so does the
//! database queue's acknowledgement of the job
//! ([`Services::run_renewal_delivery`]).

use certflow_core::FieldError;
use certflow_core::error::DomainResult;
use certflow_core::model::{
    Actor, AuditEvent, Certificate, CertificateStatus, CertificateVersion, Issuer, KeySource,
    Outcome,
};
use certflow_core::notify::{EventKind, Notification};
use certflow_core::policy::IssuanceRequest;
use certflow_core::renewal::{JobDelivery, MarginFit, RenewalJob, RenewalPolicy, jitter_seed};
use serde_json::json;
use time::OffsetDateTime;

use crate::Services;
use crate::certificates::CertificateView;

/// What a renewal job came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// A new version was stored.
    Renewed {
        /// Its number.
        version: u32,
    },
    /// A later version already exists (a duplicate delivery, or a manual renewal came first).
    AlreadyRenewed,
    /// The certificate is archived or revoked: nothing to renew.
    NotRenewable,
    /// An issuance policy no longer allows the certificate (tightened since it
    /// was issued), or its requester-held key was revoked for keyCompromise
    /// ("key compromised: re-key needed"). Retrying cannot help: the job is
    /// given up at once; the refusal is already audited and the team told
    /// (`policy-violation`).
    PolicyRefused {
        /// Every broken rule with its offending value, on one line.
        reason: String,
    },
}

/// The subject the workers act as in the audit trail.
pub const RENEWAL_ACTOR: &str = "system:renewal";

fn renewal_actor() -> Actor {
    Actor {
        subject: RENEWAL_ACTOR.into(),
        source: None,
    }
}

/// A renewal refused for good: what the audit trail, the log and the
/// `policy-violation` alert say of it.
struct Refusal<'a> {
    reason: &'a str,
    /// The log line's message.
    log: &'static str,
    /// "renewal of <name> <summary>: <reason>" in the alert.
    summary: &'static str,
    /// The audit event's details.
    audit: serde_json::Value,
    /// The alert's details.
    details: serde_json::Value,
    /// Alert de-duplication key prefix (one alert per certificate version).
    dedupe: &'static str,
}

impl Services {
    /// When `version` should be renewed: the policy's window with per-version
    /// jitter, or the CA's suggested window (ACME ARI) when it offers one.
    pub(crate) async fn renew_after(
        &self,
        issuer: &Issuer,
        policy: &RenewalPolicy,
        version: &CertificateVersion,
    ) -> OffsetDateTime {
        let u = jitter_seed(version.certificate_id, version.version);
        let ari = match self.backends.get(issuer) {
            // Only the CA that signed the version can advise on it (a
            // certificate taken over from another CA has no window here yet).
            Ok(backend)
                if issuer.kind != certflow_core::model::IssuerKind::Internal
                    && version.issuer_id == issuer.id =>
            {
                match self.blobs.get(&version.cert_blob).await {
                    Ok(der) => match backend.renewal_info(issuer, &der).await {
                        Ok(window) => window,
                        Err(e) => {
                            // ARI is advice: without it the policy decides.
                            tracing::warn!(issuer = %issuer.name, error = %e, "renewal information unavailable");
                            None
                        }
                    },
                    Err(_) => None,
                }
            }
            _ => None,
        };
        // notBefore is backdated a minute for relying parties whose clocks run
        // behind; the lifetime the policy divides starts at issuance, or a
        // short-lived certificate (60 s valid, 120 s from notBefore) would be
        // due at once under any fraction below one half.
        let issued = version
            .created_at
            .max(version.not_before)
            .min(version.not_after);
        policy.renew_after(issued, version.not_after, ari, u)
    }

    /// Warns (log) when a new certificate has less time left at renewal than
    /// the renewal settings need in the worst case (see
    /// [`Services::with_renewal_margin`]), naming the keys to change. Not a
    /// refusal: the request may knowingly trade margin for a short lifetime,
    /// and `renewal-at-risk` alerts if it comes to that.
    pub(crate) fn warn_if_renewal_margin_short(&self, cert: &Certificate) {
        let Some(margin) = self.renewal_margin else {
            return;
        };
        let left = cert.not_after - cert.renew_after;
        let consequence = match margin.fit(left) {
            MarginFit::Fits => return,
            MarginFit::NoRetry => "a failed attempt after a dead worker lets it expire",
            MarginFit::NoTakeover => {
                "a worker dying mid-renewal (or the scheduler's wait) lets it expire"
            }
        };
        tracing::warn!(
            certificate = %cert.id,
            name = %cert.name,
            seconds_left_at_renewal = left.whole_seconds(),
            renew_at_fraction = cert.renewal.renew_at_fraction,
            jitter_fraction = cert.renewal.jitter_fraction,
            "renewal margin too short: {} s left at renewal, {consequence}; the worst case needs {}. \
             Lengthen validity_seconds (or validity_days), lower renewal.renew_at_fraction or \
             jitter_fraction, or lower those [renewal] settings",
            left.whole_seconds(),
            margin.explain(),
        );
    }

    /// Performs one renewal job: renews the job's version unless a later one
    /// exists. Duplicate deliveries share one idempotency key, so at most one
    /// of them stores a version; the others find it and report `AlreadyRenewed`.
    /// Its CPU work is background work: it waits for the CPU pool rather than
    /// fail on a full queue (the worker bounds how many jobs run at once).
    pub async fn run_renewal_job(
        &self,
        job: &RenewalJob,
        now: OffsetDateTime,
    ) -> DomainResult<JobOutcome> {
        crate::cpu::background(self.renew_job(job, None, now))
            .await
            .map(|(outcome, _)| outcome)
    }

    /// [`run_renewal_job`](Self::run_renewal_job) for a delivery of a queue
    /// whose jobs are rows of the metadata database
    /// ([`certflow_core::renewal::RenewalQueue::in_metadata_database`]): a
    /// new version acknowledges the job in its own transaction. Says whether
    /// it did (not when there was no new version, or the lease was lost).
    pub async fn run_renewal_delivery(
        &self,
        delivery: &JobDelivery,
        now: OffsetDateTime,
    ) -> DomainResult<(JobOutcome, bool)> {
        crate::cpu::background(self.renew_job(&delivery.job, Some(delivery), now)).await
    }

    async fn renew_job(
        &self,
        job: &RenewalJob,
        completes: Option<&JobDelivery>,
        now: OffsetDateTime,
    ) -> DomainResult<(JobOutcome, bool)> {
        // One read of the certificate for the whole job: the checks below and
        // the renewal itself work from it. Its versions are the newest and
        // those revoked for keyCompromise, all a renewal reads (the whole
        // history grows with every renewal); so is the view it answers.
        let view = self.renewal_view(job.certificate_id).await?;
        let cert = &view.certificate;
        // The scheduler never queues an inventory-only certificate, but a job
        // may reach the worker by another way (a queue replay, an operator).
        if cert.status != CertificateStatus::Active || !cert.managed {
            return Ok((JobOutcome::NotRenewable, false));
        }
        // A committed earlier attempt of this job, or a manual renewal, came
        // first. (A duplicate delivery still in flight loses at the commit,
        // on the job's idempotency key, and answers the version stored.)
        if cert.current_version > job.version {
            return Ok((JobOutcome::AlreadyRenewed, false));
        }
        let issuer = self.issuer_to_sign_with(cert.issuer_id).await?;
        if let Some(fields) = self
            .check_renewal_policy(&renewal_actor(), cert, &issuer, job.version, now)
            .await?
        {
            let reason = fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Ok((JobOutcome::PolicyRefused { reason }, false));
        }
        // A requester-held key revoked for keyCompromise cannot be renewed
        // without its holder: retrying repeats the refusal, so it is given
        // up at once like a policy refusal.
        if cert.key_source == KeySource::Csr
            && let Some(reason) = self.key_compromised(&view).await?
        {
            self.key_compromise_refused(cert, job.version, &reason, now)
                .await?;
            return Ok((JobOutcome::PolicyRefused { reason }, false));
        }
        let key = job.idempotency_key();
        let (view, committed) = self
            .renew_for_job(&renewal_actor(), view, issuer, &key, completes, now)
            .await?;
        let version = view.certificate.current_version;
        Ok((JobOutcome::Renewed { version }, committed.completed))
    }

    /// Holds a certificate about to be renewed against today's issuance
    /// policies. A refusal is audited (`certificate.renewal.refused`) and
    /// announced (`policy-violation`, once per version) before the broken
    /// rules are returned; `None` means the renewal may go ahead.
    pub(crate) async fn check_renewal_policy(
        &self,
        actor: &Actor,
        cert: &Certificate,
        issuer: &Issuer,
        version: u32,
        now: OffsetDateTime,
    ) -> DomainResult<Option<Vec<FieldError>>> {
        let Err(fields) = self.policies.check(&IssuanceRequest {
            team: &cert.team,
            issuer: &issuer.name,
            profile: cert.profile,
            key_type: cert.key_type,
            names: &cert.names,
            validity_days: cert.validity_days,
            validity_secs: cert.validity_secs,
        }) else {
            return Ok(None);
        };
        let reason = fields
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let violations = json!({ "violations": fields });
        self.renewal_refused(
            actor,
            cert,
            version,
            Refusal {
                reason: &reason,
                log: "renewal refused by issuance policy",
                summary: "refused by issuance policy",
                audit: json!({ "version": version, "violations": fields }),
                details: violations,
                dedupe: "policy-violation",
            },
            now,
        )
        .await?;
        Ok(Some(fields))
    }

    /// Audits (`certificate.renewal.refused`) and announces
    /// (`policy-violation`, once per version) a renewal refused because the
    /// key to reuse was reported compromised.
    async fn key_compromise_refused(
        &self,
        cert: &Certificate,
        version: u32,
        reason: &str,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        self.renewal_refused(
            &renewal_actor(),
            cert,
            version,
            Refusal {
                reason,
                log: "renewal refused: key compromised",
                summary: "refused",
                audit: json!({ "version": version, "reason": reason }),
                details: json!({ "key_compromised": true }),
                dedupe: "key-compromised",
            },
            now,
        )
        .await
    }

    /// Audits (`certificate.renewal.refused`, as a failure) and announces
    /// (`policy-violation`, once per `refusal.dedupe` and version) a renewal
    /// that will not happen whatever is retried.
    async fn renewal_refused(
        &self,
        actor: &Actor,
        cert: &Certificate,
        version: u32,
        refusal: Refusal<'_>,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let Refusal {
            reason,
            log,
            summary,
            audit,
            details,
            dedupe,
        } = refusal;
        let mut event = AuditEvent::success(
            now,
            actor,
            "certificate.renewal.refused",
            format!("certificate/{}", cert.id),
            audit,
        );
        event.outcome = Outcome::Failure;
        self.store.append_audit(&event).await?;
        tracing::warn!(certificate = %cert.id, version, %reason, "{log}");
        self.publish(
            Notification {
                reason: Some(reason.to_owned()),
                summary: format!(
                    "renewal of {} {summary}: {reason}; it expires {}",
                    cert.name, cert.not_after
                ),
                details,
                ..Notification::about(EventKind::PolicyViolation, cert, version, now)
            },
            Some(&format!("{dedupe}:{}:v{version}", cert.id)),
        )
        .await;
        Ok(())
    }

    /// Records a failed renewal attempt in the audit trail and tells the
    /// team: once per version when it starts failing, and when it is given up.
    pub async fn renewal_failed(
        &self,
        job: &RenewalJob,
        error: &str,
        dead: bool,
        now: OffsetDateTime,
    ) -> DomainResult<()> {
        let action = if dead {
            "certificate.renewal.dead-lettered"
        } else {
            "certificate.renewal.failed"
        };
        let mut audit = AuditEvent::success(
            now,
            &renewal_actor(),
            action,
            format!("certificate/{}", job.certificate_id),
            json!({ "version": job.version, "attempt": job.attempts, "error": error }),
        );
        audit.outcome = Outcome::Failure;
        self.store.append_audit(&audit).await?;
        let Some(cert) = self.store.get_certificate(job.certificate_id).await? else {
            return Ok(());
        };
        let (kind, dedupe) = if dead {
            (
                EventKind::DeadLettered,
                format!("dead-lettered:{}:v{}", cert.id, job.version),
            )
        } else {
            (
                EventKind::RenewalFailing,
                format!("renewal-failing:{}:v{}", cert.id, job.version),
            )
        };
        let summary = if dead {
            format!(
                "renewal of {} gave up after {} attempts: {error}; it expires {}",
                cert.name, job.attempts, cert.not_after
            )
        } else {
            format!("renewal of {} is failing: {error}", cert.name)
        };
        self.publish(
            Notification {
                reason: Some(error.to_owned()),
                summary,
                details: json!({ "attempts": job.attempts }),
                ..Notification::about(kind, &cert, job.version, now)
            },
            Some(&dedupe),
        )
        .await;
        Ok(())
    }

    /// Publishes a notification when notifications are wired; a failure is
    /// logged and never fails the action that caused it.
    pub(crate) async fn publish(&self, notification: Notification, dedupe_key: Option<&str>) {
        let Some(store) = &self.notifications else {
            return;
        };
        if let Err(e) = store.publish(&notification, dedupe_key).await {
            tracing::warn!(kind = notification.kind.as_str(), error = %e, "could not record a notification");
        }
    }

    /// Whether a new version's event commits in the version's own
    /// transaction: notifications are wired and are rows of the metadata
    /// database.
    pub(crate) fn announces_in_commit(&self) -> bool {
        self.notifications
            .as_ref()
            .is_some_and(|n| n.in_metadata_database())
    }

    /// Publishes the event for a certificate's version change.
    pub(crate) async fn publish_version_event(
        &self,
        kind: EventKind,
        view: &CertificateView,
        version: u32,
        now: OffsetDateTime,
    ) {
        let serial = view
            .versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| v.serial.as_str());
        let event = self.version_event(kind, &view.certificate, version, serial, now);
        self.publish(event, None).await;
    }

    /// The event for version `version` (serial `serial`) of `cert` changing.
    pub(crate) fn version_event(
        &self,
        kind: EventKind,
        cert: &Certificate,
        version: u32,
        serial: Option<&str>,
        now: OffsetDateTime,
    ) -> Notification {
        let verb = match kind {
            EventKind::Issued => "issued",
            EventKind::Renewed => "renewed",
            EventKind::Revoked => "revoked",
            _ => kind.as_str(),
        };
        Notification {
            summary: format!("{} version {version} {verb}", cert.name),
            details: json!({ "serial": serial }),
            ..Notification::about(kind, cert, version, now)
        }
    }
}
