//! certflow's use cases: request, issue, renew, revoke, archive and download
//! certificates; bootstrap or import the internal CA. Talks only to ports
//! (metadata store, blob store, sealer) and the PKI library; the clock is read
//! by the caller and passed in as `now`.

mod ca;
mod certificates;
mod maintenance;
mod validate;

use std::sync::Arc;

use certflow_blob::Sealer;
use certflow_core::ports::{BlobStore, MetadataStore};

pub use ca::CaSettings;
pub use certificates::{CertificateView, DownloadKind};
pub use maintenance::{RewrapReport, SweepReport};

/// The tenant every record belongs to until multi-tenancy lands; bound into
/// encryption contexts now so that adding tenants does not require re-encryption.
pub const DEFAULT_TENANT: &str = "default";

/// Entry point of the use cases, cheap to clone.
#[derive(Clone)]
pub struct Services {
    store: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    sealer: Sealer,
    public_url: Option<String>,
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
        Self {
            store,
            blobs,
            sealer,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
        }
    }

    /// The metadata store (for readiness checks and settings).
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }
}

#[cfg(test)]
mod tests;
