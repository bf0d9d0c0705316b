//! The use cases against real stores, one test binary (one link, one build
//! for all of them): agents and join tokens (SQLite and PostgreSQL), the
//! compliance report, discovery, revocation with replacement, and
//! subscriptions (outbound policy, sealed webhook secrets, cancellation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod access;
mod agents;
mod compliance;
mod discovery;
mod replacement;
mod subscriptions;

use std::sync::Arc;

use certflow_blob::ObjectBlobStore;
use certflow_core::policy::IssuancePolicies;
use certflow_core::{KeyType, SubjectName};
use certflow_seal::{LocalKeyProvider, MasterKey, Sealer};
use certflow_services::{CaSettings, Services};
use certflow_store::SqliteStore;
use time::OffsetDateTime;

/// Services over a fresh SQLite file store, local blobs, a new master key
/// and a new internal CA ("test", P-256), under `policies`. The directory
/// holds them all: keep it alive as long as the services.
pub(crate) async fn sqlite_services(
    policies: IssuancePolicies,
) -> (tempfile::TempDir, Arc<SqliteStore>, Services) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("certflow.db"))
            .await
            .unwrap(),
    );
    let blobs = Arc::new(ObjectBlobStore::local(&dir.path().join("blobs")).unwrap());
    let sealer = Sealer::new(Arc::new(LocalKeyProvider::new(
        MasterKey::generate().unwrap(),
        Vec::new(),
    )));
    let services = Services::new(store.clone(), blobs, sealer, None)
        .with_issuance_policies(policies.compile().unwrap());
    services
        .ensure_ca(
            &CaSettings {
                name: "test".into(),
                key_type: KeyType::EcdsaP256,
                root_validity_days: 3650,
                intermediate_validity_days: 1825,
            },
            OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    (dir, store, services)
}

/// A DER CSR of an agent's identity key (what enrolment certifies).
pub(crate) fn agent_csr() -> Vec<u8> {
    let key = certflow_pki::PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    certflow_pki::build_csr(&key, &[SubjectName::Dns("agent.invalid".into())]).unwrap()
}
