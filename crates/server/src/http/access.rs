//! Authorisation of the console API. Every route declares the permission it
//! needs in [`declared`]; a middleware checks it before the handler runs, and
//! handlers that act on one team's resource check the team as well, through
//! the domain's decisions ([`Principal::authorize`], [`Principal::scope`],
//! `Services::certificate_for`). A route without a declaration is refused
//! (fail closed), and the role/route matrix test walks the OpenAPI document
//! against this table.

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use certflow_core::DomainError;
use certflow_core::access::{Permission, Principal};

use crate::errors::ApiError;

/// Prefix of the console API routes.
pub const CONSOLE_PREFIX: &str = "/console/api/v1";

/// The permission `method` on `path` (an OpenAPI path under the console
/// prefix, e.g. `/certificates/{id}`) requires, or `None` if undeclared.
pub fn declared(method: &Method, path: &str) -> Option<Permission> {
    use Permission::*;
    let m = method.as_str();
    Some(match (m, path) {
        ("GET", "/certificates" | "/certificates/{id}") => CertificateRead,
        ("POST", "/certificates" | "/certificates/import") => CertificateWrite,
        // `format=key` additionally needs KeyDownload (checked by the handler).
        ("GET", "/certificates/{id}/download") => CertificateRead,
        ("POST", "/certificates/{id}/pkcs12") => KeyDownload,
        (
            "POST",
            "/certificates/{id}/renew"
            | "/certificates/{id}/revoke"
            | "/certificates/{id}/archive"
            | "/certificates/{id}/manage",
        ) => CertificateWrite,
        ("GET", "/issuers") => IssuerRead,
        ("POST", "/issuers/import") => IssuerAdmin,
        ("GET", "/audit") => AuditRead,
        ("GET", "/renewal/queue") => OperationsRead,
        ("GET", "/subscriptions" | "/deliveries" | "/deliveries/{id}/attempts") => NotificationRead,
        ("POST", "/subscriptions") | ("DELETE", "/subscriptions/{id}") => NotificationWrite,
        ("GET", "/agents" | "/agents/join-tokens") | ("POST", "/agents/join-tokens") => AgentAdmin,
        ("POST", "/agents/join-tokens/{id}/revoke") => AgentAdmin,
        ("POST", "/agents/{id}/disable" | "/agents/{id}/enable" | "/agents/{id}/revoke") => {
            AgentAdmin
        }
        ("GET" | "POST", "/agents/{id}/assignments")
        | ("DELETE", "/agents/{id}/assignments/{certificate_id}") => AgentAdmin,
        ("GET", "/certificates/{id}/deployments") => CertificateRead,
        // Team-checked by the handlers; attaching and detaching like renewing.
        (
            "GET",
            "/certificates/{id}/destinations"
            | "/certificates/{id}/destinations/{destination_id}/attempts",
        ) => CertificateRead,
        ("POST", "/certificates/{id}/destinations")
        | ("DELETE", "/certificates/{id}/destinations/{destination_id}") => CertificateWrite,
        // Team-filtered by the handler: a non-admin sees only their teams.
        ("GET", "/compliance") => CertificateRead,
        // Team-filtered by the handler (the discovering agent's teams).
        ("GET", "/discovered") => CertificateRead,
        // The body's team is checked by the handler.
        ("POST", "/discovered/{id}/take-over") => CertificateWrite,
        // ACME EAB keys and "renew now": team-checked by the handlers, as issuing.
        ("GET", "/acme/eab-keys") => CertificateRead,
        ("POST", "/acme/eab-keys" | "/acme/certificates/{id}/renew-now")
        | ("DELETE", "/acme/eab-keys/{id}") => CertificateWrite,
        _ => return None,
    })
}

/// Middleware (after authentication): the caller must hold the route's
/// declared permission for at least one team; team-scoped handlers then
/// check the resource's own team.
pub async fn authorize(req: Request, next: Next) -> Result<Response, ApiError> {
    let Some(principal) = req.extensions().get::<Principal>() else {
        return Err(ApiError::unauthorized("not authenticated"));
    };
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().trim_start_matches(CONSOLE_PREFIX).to_owned())
        .unwrap_or_default();
    let Some(permission) = declared(req.method(), &path) else {
        tracing::error!(method = %req.method(), path, "route without a declared permission refused");
        return Err(DomainError::Forbidden("this route declares no permission".into()).into());
    };
    principal.authorize(permission, None)?;
    Ok(next.run(req).await)
}
