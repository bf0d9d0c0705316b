//! Revocation publishing for internal issuers: the CRL (signed on every
//! revocation and before nextUpdate, stored in the blob store, served from
//! the stored copy) and the OCSP responder (RFC 6960).
//!
//! CRL numbers come from a counter in the settings table that every replica
//! increments in one statement, and the published CRL is a pointer that only
//! moves forward: whichever replica signs last with the highest number wins,
//! and because the number is taken after the revocation commits and before
//! the revoked list is read, the CRL with the highest number lists every
//! revocation committed before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use certflow_core::model::{IssuerKind, VersionStatus};
use certflow_core::{DomainError, DomainResult};
use certflow_pki::{
    OcspAnswer, OcspCertStatus, OcspIssuer, OcspRequest, OcspResponseStatus, OcspSigner,
    RevokedEntry,
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::Services;

/// A CRL is valid this long after it is signed (nextUpdate - thisUpdate);
/// CA/B BR §4.9.7 allows up to 10 days.
pub const CRL_VALIDITY: Duration = Duration::hours(24);
/// The scheduler signs a fresh CRL once less than this is left.
pub const CRL_REFRESH_BEFORE: Duration = Duration::hours(12);
/// OCSP answers are valid this long (nextUpdate - thisUpdate).
pub const OCSP_VALIDITY: Duration = Duration::hours(1);
/// A status looked up for OCSP is reused this long on this replica; a
/// revocation on this replica drops it at once, other replicas within this.
pub const OCSP_CACHE_TTL: Duration = Duration::seconds(60);
/// Lifetime of a delegated OCSP responder certificate; replaced when half is left.
pub const OCSP_SIGNER_VALIDITY: Duration = Duration::hours(24);
/// Entries kept in the OCSP status cache before it is pruned.
const OCSP_CACHE_MAX: usize = 10_000;
/// Stored CRLs kept behind the published one (a replica that read the
/// previous pointer can still fetch its blob).
const CRLS_KEPT: u64 = 5;

/// A published CRL as served.
#[derive(Debug, Clone)]
pub struct PublishedCrl {
    /// cRLNumber.
    pub number: u64,
    /// DER.
    pub der: Bytes,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
}

/// An OCSP response and, for successful single answers, how long HTTP
/// caches may keep it.
#[derive(Debug, Clone)]
pub struct OcspReply {
    /// The DER OCSPResponse (successful or an error status).
    pub der: Vec<u8>,
    /// thisUpdate and nextUpdate of a successful response.
    pub validity: Option<(OffsetDateTime, OffsetDateTime)>,
    /// Whether the request's nonce was echoed (the answer is then for that
    /// requester only and must not be cached).
    pub nonce: bool,
}

#[derive(Debug, Clone, Copy)]
struct CachedStatus {
    status: OcspCertStatus,
    this_update: OffsetDateTime,
}

struct Responder {
    signer: OcspSigner,
    issuer: OcspIssuer,
}

/// Per-replica state: responders, the OCSP status cache, the last CRL read.
#[derive(Default)]
pub(crate) struct Revocation {
    responders: tokio::sync::Mutex<HashMap<Uuid, Arc<Responder>>>,
    statuses: Mutex<HashMap<(Uuid, String), CachedStatus>>,
    crls: Mutex<HashMap<Uuid, PublishedCrl>>,
}

fn counter_key(issuer: Uuid) -> String {
    format!("crl:{issuer}:next-number")
}

fn pointer_key(issuer: Uuid) -> String {
    format!("crl:{issuer}:published")
}

fn crl_blob(issuer: Uuid, number: u64) -> String {
    // Outside the certificates/ and issuers/ layout, so the orphan sweeper
    // leaves it alone; zero-padded so listings sort by number.
    format!("crl/{issuer}/{number:020}.der")
}

impl Revocation {
    fn forget(&self, issuer: Uuid, serial: &str) {
        if let Ok(mut statuses) = self.statuses.lock() {
            statuses.remove(&(issuer, serial.to_owned()));
        }
    }
}

impl Services {
    /// Signs a CRL of everything `issuer_id` revoked, stores it and
    /// publishes it (unless another replica published a newer one meanwhile).
    pub async fn publish_crl(
        &self,
        issuer_id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<PublishedCrl> {
        let issuer = self.issuer(issuer_id).await?;
        if issuer.kind != IssuerKind::Internal {
            return Err(DomainError::NotFound(format!(
                "CRL of issuer {issuer_id} (certflow publishes CRLs for its own CAs only)"
            )));
        }
        // Starts at the Unix time so it stays above the numbers earlier
        // releases used (the signing time in seconds).
        let initial = u64::try_from(now.unix_timestamp()).unwrap_or(1);
        let number = self
            .store
            .increment_setting(&counter_key(issuer_id), initial)
            .await?;
        let revoked: Vec<RevokedEntry> = self
            .store
            .list_revoked(issuer_id)
            .await?
            .into_iter()
            .filter_map(|v| {
                Some(RevokedEntry {
                    serial_hex: v.serial,
                    revoked_at: v.revoked_at?,
                    reason: v.revocation_reason?,
                })
            })
            .collect();
        let ca_der = self.issuer_certificate_der(issuer_id).await?;
        let signer = self.signer(&issuer).await?;
        let revoked_count = revoked.len();
        // One entry per revoked certificate: built off the async runtime,
        // then signed wherever the CA key lives.
        let tbs = self
            .cpu
            .run("CRL signing", move || {
                certflow_pki::crl_tbs(&ca_der, &revoked, number, now, now + CRL_VALIDITY)
            })
            .await?;
        let der = signer.sign(tbs).await?;
        let info = certflow_pki::crl_info(&der)?;
        let der = Bytes::from(der);
        self.blobs
            .put(&crl_blob(issuer_id, number), der.clone())
            .await?;
        let published = PublishedCrl {
            number,
            der,
            this_update: info.this_update,
            next_update: info.next_update,
        };
        if self
            .store
            .raise_setting(&pointer_key(issuer_id), number)
            .await?
        {
            tracing::info!(issuer = %issuer_id, crl_number = number, revoked = revoked_count, "CRL published");
            self.remember_crl(issuer_id, &published);
            self.prune_crls(issuer_id, number).await;
        } else {
            // A newer CRL is already out; ours stays as a stored leftover for pruning.
            tracing::info!(issuer = %issuer_id, crl_number = number, "a newer CRL was published meanwhile");
        }
        Ok(published)
    }

    fn remember_crl(&self, issuer_id: Uuid, crl: &PublishedCrl) {
        if let Ok(mut crls) = self.revocation.crls.lock() {
            crls.insert(issuer_id, crl.clone());
        }
    }

    async fn prune_crls(&self, issuer_id: Uuid, published: u64) {
        let Ok(keys) = self.blobs.list(&format!("crl/{issuer_id}/")).await else {
            return;
        };
        for key in keys {
            let number = key
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".der"))
                .and_then(|n| n.parse::<u64>().ok());
            if number.is_some_and(|n| n + CRLS_KEPT < published)
                && let Err(e) = self.blobs.delete(&key).await
            {
                tracing::warn!(blob = %key, error = %e, "could not remove an old CRL");
            }
        }
    }

    /// The published CRL of `issuer_id`, as stored (no signing per request):
    /// signed now if none was published yet or the last one is past its
    /// nextUpdate (no scheduler ran).
    pub async fn current_crl(
        &self,
        issuer_id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<PublishedCrl> {
        let pointer = self.store.get_setting(&pointer_key(issuer_id)).await?;
        let Some(number) = pointer.and_then(|p| p.parse::<u64>().ok()) else {
            return self.publish_crl(issuer_id, now).await;
        };
        let cached = self
            .revocation
            .crls
            .lock()
            .ok()
            .and_then(|crls| crls.get(&issuer_id).filter(|c| c.number == number).cloned());
        let crl = match cached {
            Some(crl) => crl,
            None => match self.blobs.get(&crl_blob(issuer_id, number)).await {
                Ok(der) => {
                    let info = certflow_pki::crl_info(&der)?;
                    let crl = PublishedCrl {
                        number,
                        der,
                        this_update: info.this_update,
                        next_update: info.next_update,
                    };
                    self.remember_crl(issuer_id, &crl);
                    crl
                }
                // Pruned under us by a much newer publication: sign afresh.
                Err(DomainError::NotFound(_)) => return self.publish_crl(issuer_id, now).await,
                Err(e) => return Err(e),
            },
        };
        if crl.next_update <= now {
            return self.publish_crl(issuer_id, now).await;
        }
        Ok(crl)
    }

    /// Signs a fresh CRL for every internal issuer whose published one has
    /// less than [`CRL_REFRESH_BEFORE`] left (scheduler role); returns how
    /// many were published. One issuer's failure does not stop the others.
    pub async fn refresh_crls(&self, now: OffsetDateTime) -> DomainResult<usize> {
        let mut published = 0;
        for issuer in self.store.list_issuers().await? {
            if issuer.kind != IssuerKind::Internal {
                continue;
            }
            let due = match self.current_crl(issuer.id, now).await {
                Ok(crl) => crl.next_update - now < CRL_REFRESH_BEFORE,
                Err(e) => {
                    tracing::warn!(issuer = %issuer.id, error = %e, "cannot read the published CRL");
                    true
                }
            };
            if due {
                match self.publish_crl(issuer.id, now).await {
                    Ok(_) => published += 1,
                    Err(e) => {
                        tracing::warn!(issuer = %issuer.id, error = %e, "CRL refresh failed; will retry")
                    }
                }
            }
        }
        Ok(published)
    }

    /// After a revocation committed: drop the cached OCSP status and publish
    /// a new CRL. Failures are logged, not returned: the revocation stands,
    /// and the scheduler's refresh (or the next CRL fetch) catches up.
    pub(crate) async fn revocation_committed(
        &self,
        issuer_id: Uuid,
        serial: &str,
        now: OffsetDateTime,
    ) {
        self.revocation.forget(issuer_id, serial);
        match self.store.get_issuer(issuer_id).await {
            Ok(Some(issuer)) if issuer.kind == IssuerKind::Internal => {
                if let Err(e) = self.publish_crl(issuer_id, now).await {
                    tracing::warn!(issuer = %issuer_id, error = %e, "CRL not published after a revocation; the scheduler will retry");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(issuer = %issuer_id, error = %e, "CRL not published after a revocation")
            }
        }
    }

    async fn responder(
        &self,
        issuer_id: Uuid,
        now: OffsetDateTime,
    ) -> DomainResult<Option<Arc<Responder>>> {
        let mut responders = self.revocation.responders.lock().await;
        if let Some(r) = responders.get(&issuer_id)
            && r.signer.not_after() - now > OCSP_SIGNER_VALIDITY / 2
        {
            return Ok(Some(r.clone()));
        }
        let issuer = match self.store.get_issuer(issuer_id).await? {
            Some(i) if i.kind == IssuerKind::Internal => i,
            _ => return Ok(None),
        };
        let ca_der = self.issuer_certificate_der(issuer_id).await?;
        // The CA key signs once per responder lifetime, not per response.
        let signer = {
            let ca = self.signer(&issuer).await?;
            let pending = OcspSigner::prepare(&ca_der, now, OCSP_SIGNER_VALIDITY)?;
            let signature = ca.signature(pending.tbs()).await?;
            pending.finish(&signature)?
        };
        tracing::info!(issuer = %issuer_id, not_after = %signer.not_after(), "OCSP responder certificate issued");
        let responder = Arc::new(Responder {
            signer,
            issuer: OcspIssuer::new(&ca_der)?,
        });
        responders.insert(issuer_id, responder.clone());
        Ok(Some(responder))
    }

    async fn ocsp_status(
        &self,
        issuer_id: Uuid,
        serial: &str,
        now: OffsetDateTime,
    ) -> DomainResult<CachedStatus> {
        let key = (issuer_id, serial.to_owned());
        if let Some(hit) = self
            .revocation
            .statuses
            .lock()
            .ok()
            .and_then(|s| s.get(&key).copied())
            .filter(|c| now - c.this_update < OCSP_CACHE_TTL && c.this_update <= now)
        {
            return Ok(hit);
        }
        let status = match self.store.version_by_serial(issuer_id, serial).await? {
            None => OcspCertStatus::Unknown,
            Some(v) => match (v.status, v.revoked_at, v.revocation_reason) {
                (VersionStatus::Revoked, Some(at), Some(reason)) => {
                    OcspCertStatus::Revoked { at, reason }
                }
                _ => OcspCertStatus::Good,
            },
        };
        let fresh = CachedStatus {
            status,
            this_update: now,
        };
        if let Ok(mut statuses) = self.revocation.statuses.lock() {
            if statuses.len() >= OCSP_CACHE_MAX {
                statuses.retain(|_, c| now - c.this_update < OCSP_CACHE_TTL);
                if statuses.len() >= OCSP_CACHE_MAX {
                    statuses.clear();
                }
            }
            statuses.insert(key, fresh);
        }
        Ok(fresh)
    }

    /// Answers a DER OCSP request about certificates of `issuer_id`. Never
    /// fails: a request that does not parse gets `malformedRequest`, an
    /// issuer certflow does not sign for (or a CertID naming another CA)
    /// `unauthorized`, a backend failure `tryLater`.
    pub async fn ocsp(
        &self,
        issuer_id: Uuid,
        request_der: &[u8],
        now: OffsetDateTime,
    ) -> OcspReply {
        let error = |status| OcspReply {
            der: certflow_pki::ocsp_error_response(status),
            validity: None,
            nonce: false,
        };
        let request: OcspRequest = match certflow_pki::parse_ocsp_request(request_der) {
            Ok(r) => r,
            Err(why) => {
                tracing::debug!(issuer = %issuer_id, reason = %why, "malformed OCSP request");
                return error(OcspResponseStatus::MalformedRequest);
            }
        };
        let responder = match self.responder(issuer_id, now).await {
            Ok(Some(r)) => r,
            Ok(None) => return error(OcspResponseStatus::Unauthorized),
            Err(e) => {
                tracing::warn!(issuer = %issuer_id, error = %e, "OCSP responder unavailable");
                return error(OcspResponseStatus::TryLater);
            }
        };
        if !request.certs.iter().all(|c| responder.issuer.issued(c)) {
            return error(OcspResponseStatus::Unauthorized);
        }
        let mut answers = Vec::with_capacity(request.certs.len());
        for cert in &request.certs {
            let status = match self.ocsp_status(issuer_id, &cert.serial_hex, now).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(issuer = %issuer_id, error = %e, "OCSP status lookup failed");
                    return error(OcspResponseStatus::TryLater);
                }
            };
            answers.push(OcspAnswer {
                cert_id_der: cert.der.clone(),
                status: status.status,
                this_update: status.this_update,
                next_update: status.this_update + OCSP_VALIDITY,
            });
        }
        let validity = answers
            .iter()
            .map(|a| (a.this_update, a.next_update))
            .min_by_key(|(_, next)| *next);
        match responder
            .signer
            .sign(&answers, request.nonce.as_deref(), now)
        {
            Ok(der) => OcspReply {
                der,
                validity,
                nonce: request.nonce.is_some(),
            },
            Err(e) => {
                tracing::warn!(issuer = %issuer_id, error = %e, "OCSP response not signed");
                error(OcspResponseStatus::InternalError)
            }
        }
    }
}
