//! certflow's use cases: request, issue, renew, revoke, archive and download
//! certificates; bootstrap or import the internal CA. Talks only to ports
//! (metadata store, blob store, sealer) and the PKI library; the clock is read
//! by the caller and passed in as `now`.

mod access;
pub mod acme;
pub mod agents;
mod ca;
mod certificates;
pub mod compliance;
mod cpu;
pub mod deployments;
pub mod destinations;
pub mod discovery;
mod import;
mod issuing;
mod maintenance;
mod renewal;
mod revocation;
mod subscriptions;
mod validate;

use std::collections::HashMap;
use std::sync::Arc;

use certflow_core::outbound::OutboundPolicy;
use certflow_core::policy::PolicySet;
use certflow_core::ports::{BlobStore, IssuerBackend, MetadataStore, NotificationStore};
use certflow_core::renewal::{RenewalDefaults, RenewalMargin};
use certflow_seal::Sealer;
use uuid::Uuid;

pub use ca::CaSettings;
pub use certificates::{
    CertificateView, Created, DownloadKind, FirstIssue, Replacement, Revocation,
};
pub use cpu::CpuPool;
pub use import::{ImportError, ImportRequest, MAX_IMPORT_BYTES};
pub use issuing::InternalCa;
pub use maintenance::{RewrapReport, StoreReport, SweepReport};
pub use renewal::{JobOutcome, RENEWAL_ACTOR};
pub use revocation::{OcspReply, PublishedCrl};
pub use subscriptions::{SealedSecrets, WebhookSecretReport, redacted};

/// The tenant every record belongs to until multi-tenancy lands; bound into
/// encryption contexts now so that adding tenants does not require re-encryption.
pub const DEFAULT_TENANT: &str = "default";

/// Entry point of the use cases, cheap to clone.
#[derive(Clone)]
pub struct Services {
    store: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    sealer: Sealer,
    backends: issuing::Backends,
    notifications: Option<Arc<dyn NotificationStore>>,
    renewal_defaults: Arc<RenewalDefaults>,
    renewal_margin: Option<RenewalMargin>,
    revocation: Arc<revocation::Revocation>,
    issuers: Arc<ca::IssuerCache>,
    policies: Arc<PolicySet>,
    cpu: CpuPool,
    outbound: Arc<OutboundPolicy>,
    destinations: Option<destinations::DestinationPorts>,
}

impl Services {
    /// Wires the use cases to their ports. `public_url` is the externally
    /// reachable base URL written into certificates (AIA caIssuers, CRL DP).
    pub fn new(
        store: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        sealer: Sealer,
        public_url: Option<String>,
    ) -> Self {
        let public_url = public_url.map(|u| u.trim_end_matches('/').to_owned());
        let cpu = CpuPool::for_this_machine();
        Self {
            backends: issuing::Backends {
                internal: InternalCa::new(blobs.clone(), sealer.clone(), public_url, cpu.clone()),
                external: HashMap::new(),
            },
            store,
            blobs,
            sealer,
            notifications: None,
            renewal_defaults: Arc::new(RenewalDefaults::default()),
            renewal_margin: None,
            revocation: Arc::default(),
            issuers: Arc::default(),
            policies: Arc::new(PolicySet::default()),
            cpu,
            outbound: Arc::default(),
            destinations: None,
        }
    }

    /// Keeps the keys of CAs created from now on in `keys` (a PKCS#11 token,
    /// AWS KMS) instead of sealing them in the blob store, and signs with
    /// the keys it holds. Without it, CA keys are local (sealed).
    pub fn with_ca_key_store(mut self, keys: Arc<dyn certflow_core::ca_keys::CaKeyStore>) -> Self {
        self.backends.internal.set_key_store(keys);
        self
    }

    /// Lets `backend` sign for the (non-internal) issuer `issuer_id`.
    pub fn with_issuer_backend(mut self, issuer_id: Uuid, backend: Arc<dyn IssuerBackend>) -> Self {
        self.backends.external.insert(issuer_id, backend);
        self
    }

    /// Publishes events (issued, renewed, revoked, renewal failing...) to `store`.
    pub fn with_notifications(mut self, store: Arc<dyn NotificationStore>) -> Self {
        self.notifications = Some(store);
        self
    }

    /// Renewal policies for new certificates that name none.
    pub fn with_renewal_defaults(mut self, defaults: RenewalDefaults) -> Self {
        self.renewal_defaults = Arc::new(defaults);
        self
    }

    /// The worst-case renewal times of the deployment's renewal settings: a
    /// new certificate with less time left at renewal than they need is
    /// warned about, and it is the `renewal-at-risk` threshold.
    pub fn with_renewal_margin(mut self, margin: RenewalMargin) -> Self {
        self.renewal_margin = Some(margin);
        self
    }

    /// See [`Services::with_renewal_margin`].
    pub fn renewal_margin(&self) -> Option<RenewalMargin> {
        self.renewal_margin
    }

    /// Issuance policies, checked on every request and before every renewal.
    pub fn with_issuance_policies(mut self, policies: PolicySet) -> Self {
        self.policies = Arc::new(policies);
        self
    }

    /// The outbound policy webhook URLs are checked against when a
    /// subscription is created (the strict default allows no loopback,
    /// private or link-local address).
    pub fn with_outbound_policy(mut self, policy: Arc<OutboundPolicy>) -> Self {
        self.outbound = policy;
        self
    }

    /// Runs CPU-heavy work on `pool` (by default a pool of its own, one
    /// thread per core): the server shares one with its other CPU-heavy work.
    pub fn with_cpu_pool(mut self, pool: CpuPool) -> Self {
        self.backends.internal.cpu = pool.clone();
        self.cpu = pool;
        self
    }

    /// The pool CPU-heavy work runs on.
    pub fn cpu(&self) -> &CpuPool {
        &self.cpu
    }

    /// The metadata store (for readiness checks and settings).
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// The envelope sealer (for adapters that keep secrets in the blob store,
    /// such as ACME account credentials).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }
}

#[cfg(test)]
mod acme_lint_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
