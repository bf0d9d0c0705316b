//! The web console: server-rendered HTML pages under `/console/` (askama
//! templates in `crates/server/templates/`, compiled and type-checked with the
//! crate). Pages use the same use cases ([`certflow_services::Services`]) and
//! the same authorization decisions ([`Principal::can`],
//! [`Principal::scope`], `Services::certificate_for`) as the JSON API under
//! `/console/api/v1`; they only differ in how they answer (HTML, and
//! a redirect to the next page after a form).
//!
//! People sign in through the existing OIDC login (`/console/login`): the
//! console's address (`/console/`) without a session shows the sign-in start
//! page (what certflow is, "Sign in with <provider>"); any other page without
//! one sends the browser to the login, which comes back to that page. Every
//! form carries the session's CSRF token in a hidden field, checked together
//! with `Origin` by the same code as the API's `X-CSRF-Token`
//! ([`Sessions::check_csrf`]). Reads work without JavaScript; htmx (vendored
//! from npm, served from `/console/static/`) only makes the inventory filter
//! live.
//!
//! Every response carries a strict Content-Security-Policy (no inline script
//! or style), HSTS, `nosniff`, `Referrer-Policy` and `frame-ancestors 'none'`.

mod acme;
mod admin;
mod assets;
mod audit;
mod certificates;
mod compliance;
mod dashboard;
mod deployments;
mod destinations;
mod discovery;
pub mod login;

use std::net::SocketAddr;

use askama::Template;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use certflow_core::DomainError;
use certflow_core::access::{Permission, Principal, Role};
use certflow_core::model::Actor;
use certflow_core::session::Session;
use time::OffsetDateTime;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::rate_limit::Limited;
use crate::session::{CSRF_HEADER, Sessions};
use crate::state::AppState;

/// Content-Security-Policy of every console response: scripts and styles
/// only from certflow itself (no inline code), no plugins, no `<base>`, no
/// framing (clickjacking).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// How recent a login must be to download a private key.
const RECENT_LOGIN: time::Duration = time::Duration::minutes(10);

/// The console pages, static assets and form actions (merged into the app
/// by [`crate::router::app`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/", get(dashboard::page))
        .route("/console", get(|| async { redirect("/console/") }))
        .route("/console/certificates", get(certificates::inventory))
        .route(
            "/console/certificates/new",
            get(certificates::request_form).post(certificates::request_submit),
        )
        .route("/console/certificates/{id}", get(certificates::detail))
        .route(
            "/console/certificates/{id}/renew",
            post(certificates::renew),
        )
        .route(
            "/console/certificates/{id}/manage",
            post(certificates::manage),
        )
        .route(
            "/console/certificates/{id}/revoke",
            get(certificates::revoke_confirm).post(certificates::revoke),
        )
        .route(
            "/console/certificates/{id}/download",
            get(certificates::download),
        )
        .route(
            "/console/certificates/{id}/download-key",
            post(certificates::download_key),
        )
        .route(
            "/console/certificates/{id}/assign",
            post(deployments::assign),
        )
        .route(
            "/console/certificates/{id}/unassign",
            post(deployments::unassign),
        )
        .route(
            "/console/certificates/{id}/destinations",
            post(destinations::attach),
        )
        .route(
            "/console/certificates/{id}/destinations/{destination_id}/detach",
            post(destinations::detach),
        )
        .route("/console/agents", get(admin::agents))
        .route("/console/agents/join-token", post(admin::join_token))
        .route("/console/agents/{id}/disable", post(admin::disable_agent))
        .route("/console/audit", get(admin::audit))
        .route("/console/issuers", get(admin::issuers))
        .route("/console/compliance", get(compliance::page))
        .route("/console/discovered", get(discovery::page))
        .route(
            "/console/discovered/{id}/take-over",
            post(discovery::take_over),
        )
        .route("/console/subscriptions", get(admin::subscriptions))
        .route("/console/acme", get(acme::page))
        .route("/console/acme/eab-keys", post(acme::create))
        .route("/console/acme/eab-keys/{key_id}/revoke", post(acme::revoke))
        .route("/console/signed-out", get(|| async { signed_out_page() }))
        .route("/console/static/{file}", get(assets::serve))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        // Browsers ignore it over plain HTTP; behind TLS it pins the console to HTTPS.
        .layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        // Pages show certificates and tokens: never cached (assets set their own).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}

/// Why a page could not be shown; rendered as an HTML error page (or a
/// redirect to the login).
#[derive(Debug)]
pub(crate) enum PageError {
    /// No session: to the login, coming back to `return_to`.
    SignIn(String),
    /// A status with a message for the person.
    Status(StatusCode, String),
    /// A domain error from a use case.
    Domain(DomainError),
    /// Over the `[console]` rate limit: 429 with `Retry-After`.
    Limited(Limited),
}

impl From<DomainError> for PageError {
    fn from(e: DomainError) -> Self {
        PageError::Domain(e)
    }
}

/// Result of a page handler.
pub(crate) type PageResult<T = Response> = Result<T, PageError>;

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    l: Layout,
    status: u16,
    heading: &'static str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, heading, message) = match self {
            PageError::SignIn(return_to) => {
                let query = serde_urlencoded::to_string([("return_to", return_to.as_str())])
                    .unwrap_or_default();
                return redirect(&format!("/console/login?{query}"));
            }
            PageError::Status(status, message) => (status, "Something is not right", message),
            PageError::Limited(limited) => {
                let page = ErrorPage {
                    l: Layout::anonymous("Too many requests"),
                    status: 429,
                    heading: "Too many requests",
                    message: format!("slow down: try again in {} seconds", limited.retry_after),
                };
                let mut resp = (StatusCode::TOO_MANY_REQUESTS, Html(page.render())).into_response();
                if let Ok(v) = HeaderValue::from_str(&limited.retry_after.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return resp;
            }
            PageError::Domain(e) => match e {
                DomainError::Invalid(fields) => (
                    StatusCode::BAD_REQUEST,
                    "The request is invalid",
                    fields
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                DomainError::NotFound(what) => (
                    StatusCode::NOT_FOUND,
                    "Not found",
                    format!("{what} does not exist"),
                ),
                DomainError::Forbidden(why) => (StatusCode::FORBIDDEN, "Not allowed", why),
                DomainError::Conflict(why) | DomainError::IdempotencyKeyReused(why) => {
                    (StatusCode::CONFLICT, "Not possible now", why)
                }
                DomainError::Unavailable { backend, .. } => {
                    tracing::warn!(error = %e, "console page: backend unavailable");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Temporarily unavailable",
                        format!("the {backend} is unavailable; retry later"),
                    )
                }
                other => {
                    tracing::error!(error = %other, "console page failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal error",
                        "the server could not show this page; the cause is logged".to_owned(),
                    )
                }
            },
        };
        let page = ErrorPage {
            l: Layout::anonymous(heading),
            status: status.as_u16(),
            heading,
            message,
        };
        (status, Html(page.render())).into_response()
    }
}

/// A rendered template as an HTML response (a rendering failure is a 500).
pub(crate) struct Html(pub askama::Result<String>);

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(body) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                )],
                body,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "console template failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

/// Renders `page` as a 200 HTML response.
pub(crate) fn html(page: &impl Template) -> Response {
    Html(page.render()).into_response()
}

/// 303 to `location` (after a form, or to the login).
pub(crate) fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// What every page's frame (header, navigation) shows.
pub(crate) struct Layout {
    /// Page title.
    pub title: String,
    /// Signed-in person's subject; empty on error pages without a session.
    pub subject: String,
    /// Highest role, for the header.
    pub role: &'static str,
    /// The session's CSRF token, for the forms on the page.
    pub csrf: String,
    /// Which navigation entry is current.
    pub nav: &'static str,
    /// Whether to show administrator entries (agents).
    pub admin: bool,
    /// URL of the stylesheet (content-hashed).
    pub css: &'static str,
    /// URL of htmx (content-hashed).
    pub htmx: &'static str,
}

impl Layout {
    fn anonymous(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            subject: String::new(),
            role: "",
            csrf: String::new(),
            nav: "",
            admin: false,
            css: assets::css_url(),
            htmx: assets::htmx_url(),
        }
    }
}

/// The signed-in person of a page request, from the session cookie.
pub(crate) struct Ctx {
    /// The session (principal, login time).
    pub session: Session,
    /// The session's CSRF token (derived from the cookie, never stored).
    csrf: String,
    /// Who acts, for the audit trail.
    pub actor: Actor,
    sessions: Sessions,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        let Some(sessions) = state.sessions.clone() else {
            return Err(PageError::Status(
                StatusCode::SERVICE_UNAVAILABLE,
                // A first run has no provider yet: name the local recipe too.
                "the console needs single sign-on: configure [auth.oidc] \
                 (to try it on this machine: scripts/dev-idp.sh, see docs/console.md)"
                    .into(),
            ));
        };
        // The same buckets as the console API: per person once signed in,
        // per client address before.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip());
        let client = state.limits.client_ip(peer, &parts.headers);
        let source = client.map(|ip| ip.to_string());
        let current = sessions
            .current_from(&parts.headers, OffsetDateTime::now_utc(), source.as_deref())
            .await?;
        match &current {
            Some(c) => state.limits.subject(&c.session.principal.subject),
            None => state.limits.anonymous(client),
        }
        .map_err(PageError::Limited)?;
        let Some(current) = current else {
            let return_to = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/console/".into());
            return Err(PageError::SignIn(return_to));
        };
        if let Some(slot) = parts
            .extensions
            .get::<crate::telemetry::observe::ActorSlot>()
        {
            slot.set(current.session.principal.subject.clone());
        }
        Ok(Ctx {
            actor: Actor {
                subject: current.session.principal.subject.clone(),
                source,
            },
            session: current.session,
            csrf: current.csrf_token,
            sessions,
        })
    }
}

impl Ctx {
    /// The principal the permission checks are made for.
    pub fn principal(&self) -> &Principal {
        &self.session.principal
    }

    /// The page frame for a page titled `title` under navigation entry `nav`.
    pub fn layout(&self, title: impl Into<String>, nav: &'static str) -> Layout {
        let p = self.principal();
        let role = if p.is_admin() {
            "admin"
        } else if p.roles.contains(&Role::Operator) {
            "operator"
        } else if p.roles.contains(&Role::Viewer) {
            "viewer"
        } else {
            "no role"
        };
        Layout {
            title: title.into(),
            subject: p.subject.clone(),
            role,
            csrf: self.csrf.clone(),
            nav,
            admin: p.can(Permission::AgentAdmin, None),
            css: assets::css_url(),
            htmx: assets::htmx_url(),
        }
    }

    /// The form posted in `body`, once its CSRF token and `Origin` pass
    /// [`Ctx::check_form`]: the only way a page handler reads a form.
    pub fn form(&self, headers: &HeaderMap, body: &[u8]) -> PageResult<Form> {
        let form = Form::parse(body)?;
        self.check_form(headers, &form)?;
        Ok(form)
    }

    /// Refuses a form post without the session's CSRF token (hidden field
    /// `csrf`) or from another origin — the API's own check, fed the field.
    fn check_form(&self, headers: &HeaderMap, form: &Form) -> PageResult<()> {
        let mut h = HeaderMap::new();
        if let Some(origin) = headers.get(header::ORIGIN) {
            h.insert(header::ORIGIN, origin.clone());
        }
        if let Ok(token) = HeaderValue::from_str(form.get("csrf")) {
            h.insert(CSRF_HEADER, token);
        }
        self.sessions.check_csrf(&self.csrf, &h).map_err(|_| {
            PageError::Status(
                StatusCode::FORBIDDEN,
                "the form is stale or comes from another site; reload the page and try again"
                    .into(),
            )
        })
    }

    /// Whether the person signed in within [`RECENT_LOGIN`] (a login always
    /// makes a new session, so its creation is the authentication time).
    pub fn recent_login(&self, now: OffsetDateTime) -> bool {
        now - self.session.created_at <= RECENT_LOGIN
    }
}

/// A URL-encoded form body (fields may repeat).
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    /// Parses `body` (`application/x-www-form-urlencoded`).
    pub fn parse(body: &[u8]) -> PageResult<Self> {
        serde_urlencoded::from_bytes(body).map(Form).map_err(|_| {
            PageError::Status(StatusCode::BAD_REQUEST, "the form could not be read".into())
        })
    }

    /// The first value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// The sign-in start page: what certflow is and a button to the login at
/// `provider`, coming back to `return_to` (a console path) afterwards.
pub(crate) fn sign_in_page(provider: &str, return_to: &str) -> Response {
    let login = if return_to == "/console/" {
        "/console/login".to_owned()
    } else {
        let query = serde_urlencoded::to_string([("return_to", return_to)]).unwrap_or_default();
        format!("/console/login?{query}")
    };
    html(&SignInPage {
        l: Layout::anonymous("Sign in"),
        provider: provider.to_owned(),
        login,
    })
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    l: Layout,
    /// The identity provider's name, for the button.
    provider: String,
    /// The login URL, with the page to come back to.
    login: String,
}

/// The signed-out page (after `POST /console/sign-out`, or where the
/// provider's end-session endpoint sends the browser back to).
pub(crate) fn signed_out_page() -> Response {
    html(&SignedOut {
        l: Layout::anonymous("Signed out"),
        next: String::new(),
    })
}

/// The signed-out page that goes on to the provider's end-session URL `next`
/// (a refresh, not a redirect of the form post: the form's CSP allows posts
/// to this origin only, `form-action 'self'`, which covers their redirects).
/// Served by the login router, so it carries the console's headers itself.
pub(crate) fn leaving_page(next: &str) -> Response {
    let mut resp = html(&SignedOut {
        l: Layout::anonymous("Signed out"),
        next: next.to_owned(),
    });
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// An HTML error page with `status` and `message`.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    PageError::Status(status, message.to_owned()).into_response()
}

/// The HTML error page of a domain error.
pub(crate) fn domain_error_page(e: DomainError) -> Response {
    PageError::Domain(e).into_response()
}

#[derive(Template)]
#[template(path = "signed_out.html")]
struct SignedOut {
    l: Layout,
    /// The provider's end-session URL to go on to, or "".
    next: String,
}

/// `2026-01-31 12:00 UTC`.
pub(crate) fn when(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// `in 3 days`, `5 hours ago`: a coarse distance from `now`.
pub(crate) fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let d = t - now;
    let secs = d.whole_seconds().abs();
    let (n, unit) = if secs >= 2 * 86_400 {
        (secs / 86_400, "days")
    } else if secs >= 2 * 3600 {
        (secs / 3600, "hours")
    } else if secs >= 120 {
        (secs / 60, "minutes")
    } else {
        return "now".into();
    };
    if d.is_negative() {
        format!("{n} {unit} ago")
    } else {
        format!("in {n} {unit}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
