//! Behaviour suite of the store's ports on SQLite and PostgreSQL, one test
//! binary with one module per port or concern (`certificates`, `audit`,
//! `renewal`, `notify`, `deployments`, `discovery`, ...) and [`support`]:
//! the stores under test and the fixtures several modules seed.
//!
//! A case is an async function over the store it is given (`&dyn
//! MetadataStore`, `&dyn Stores`, or `&S` bounded by the ports it needs) and
//! knows nothing about the backend. It is defined and registered in one
//! place: wrapped in `store_case!`, it runs as three tests,
//! `<module>::<case>::{sqlite_memory, sqlite_file, postgres}`, each on a
//! fresh, empty store. To add a case, write it in the module of its port:
//!
//! ```text
//! store_case! {
//!     /// What the store promises.
//!     async fn renames_a_certificate(store: &dyn MetadataStore) {
//!         // arrange, act, assert
//!     }
//! }
//! ```
//!
//! rustfmt leaves macro bodies alone: indent a case as it would one level
//! deep. Behaviour only one backend has (files, reopening, connecting,
//! migrating, tampering behind the store's back) is tested with plain
//! `#[tokio::test]`s in `backends` and `audit_chain`.
//!
//! The PostgreSQL tests need a server: `postgres://postgres@127.0.0.1:5432/postgres`
//! (trust authentication) unless `CERTFLOW_TEST_PG_URL` names another. Each
//! test creates its own database and drops it afterwards. Without a server
//! they fail, saying how to start one; they never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Defines a suite case and registers it on every backend: the `async fn` as
/// written, and next to it a module of the same name with one
/// `#[tokio::test]` per backend, each passing the case a fresh store.
macro_rules! store_case {
    ($(#[$attr:meta])* async fn $case:ident $($signature_and_body:tt)*) => {
        $(#[$attr])*
        async fn $case $($signature_and_body)*

        mod $case {
            #[tokio::test]
            async fn sqlite_memory() {
                let (store, _guard) = crate::support::sqlite_memory().await;
                super::$case(&store).await;
            }

            #[tokio::test]
            async fn sqlite_file() {
                let (store, _guard) = crate::support::sqlite_file().await;
                super::$case(&store).await;
            }

            #[tokio::test]
            async fn postgres() {
                let (store, _guard) = crate::support::postgres().await;
                super::$case(&store).await;
            }
        }
    };
}

mod support;

mod acme;
mod audit;
mod audit_chain;
mod audit_secrets;
mod backends;
mod blobs;
mod certificates;
mod deployments;
mod destinations;
mod discovery;
mod due;
mod group_commit;
mod idempotency;
mod issuers;
mod listing;
mod notify;
mod renewal;
mod scheduler_scan;
mod settings;
mod version_commit;
