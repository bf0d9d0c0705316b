//! The application state every console-listener handler shares (API, pages,
//! probes): the use cases and the caches, behind one `Arc`.

use std::sync::Arc;

use certflow_core::ports::{NotificationStore, RenewalLedger};
use certflow_core::renewal::RenewalQueue;
use certflow_services::Services;
use certflow_services::agents::Agents;

use crate::deploy_cache::DeployState;

/// Shared state of all handlers. axum clones it for every `State`
/// extractor and every stateful middleware of every request, so it is one
/// `Arc` (as the agent listener's `AgentState` is): cloning the use cases by
/// value copied dozens of `Arc`s a request, each an atomic increment and
/// decrement on a cache line the cores fight over.
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

impl std::ops::Deref for AppState {
    type Target = AppShared;

    fn deref(&self) -> &AppShared {
        &self.0
    }
}

impl From<AppShared> for AppState {
    fn from(shared: AppShared) -> Self {
        Self(Arc::new(shared))
    }
}

/// What [`AppState`] shares: the use cases and the caches.
pub struct AppShared {
    /// The use cases.
    pub services: Services,
    /// SHA-256 (hex) of the bootstrap admin token, when that token is enabled;
    /// refreshed when a replica announces a settings change.
    pub bootstrap_hash: std::sync::Arc<std::sync::RwLock<Option<String>>>,
    /// Renewal queue, ledger and deliveries, for status and metrics.
    pub renewal: Arc<RenewalView>,
    /// Bearer-token authenticators tried after the bootstrap token.
    pub authenticators: std::sync::Arc<Vec<std::sync::Arc<dyn crate::auth::BearerAuthenticator>>>,
    /// Browser sessions (console SSO), when `[auth.oidc]` is configured.
    pub sessions: Option<crate::session::Sessions>,
    /// The identity provider's name on the console's sign-in page
    /// (`[auth.oidc] display_name`, else the issuer's host), with `[auth.oidc]`.
    pub sign_in_provider: Option<String>,
    /// Console rate limits and client addresses (`[console]`).
    pub limits: std::sync::Arc<crate::rate_limit::ConsoleLimits>,
    /// The deployment use cases and the agents' assignment cache.
    pub deploy: DeployState,
    /// The agent use cases (agents, join tokens, the agent-identity CA).
    pub agents: Agents,
    /// The ACME server's use cases (EAB keys for the console), when wired.
    pub acme: Option<certflow_services::acme::AcmeService>,
}

/// What the API reads about renewal and notifications.
pub struct RenewalView {
    /// The configured renewal queue (for depth and age).
    pub queue: Arc<dyn RenewalQueue>,
    /// Renewal jobs per certificate.
    pub ledger: Arc<dyn RenewalLedger>,
    /// Deliveries (for metrics).
    pub notifications: Arc<dyn NotificationStore>,
}
