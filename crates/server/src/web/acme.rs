//! The ACME page (`/console/acme`): External Account Binding keys of the
//! teams the person operates — create (the HMAC key shown once), list,
//! revoke — with what an ACME client needs to register.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use certflow_core::DomainError;
use certflow_core::access::Permission;

use super::{Ctx, Layout, PageResult, html, redirect, when};
use crate::extract::now;
use crate::state::AppState;

/// The state of a key at `at`, as the API names it.
fn eab_state(k: &certflow_core::acme::EabKey, at: time::OffsetDateTime) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.account_id.is_some() {
        "bound"
    } else if k.expires_at <= at {
        "expired"
    } else {
        "unused"
    }
}

/// An EAB key row.
pub(crate) struct EabRow {
    key_id: String,
    team: String,
    state: &'static str,
    usable: bool,
    expires: String,
    created_by: String,
    account: String,
}

#[derive(Template)]
#[template(path = "acme.html")]
struct AcmePage {
    l: Layout,
    enabled: bool,
    keys: Vec<EabRow>,
    /// A key just created: shown once.
    key_id: String,
    hmac_key: String,
    key_team: String,
    key_expires: String,
    error: String,
    form_team: String,
    notice: &'static str,
}

fn blank(ctx: &Ctx, enabled: bool) -> AcmePage {
    AcmePage {
        l: ctx.layout("ACME", "acme"),
        enabled,
        keys: Vec::new(),
        key_id: String::new(),
        hmac_key: String::new(),
        key_team: String::new(),
        key_expires: String::new(),
        error: String::new(),
        form_team: String::new(),
        notice: "",
    }
}

async fn render(ctx: &Ctx, app: &AppState, mut page: AcmePage) -> PageResult<Response> {
    if let Some(acme) = &app.acme {
        let scope = ctx.principal().scope(Permission::CertificateRead, None)?;
        let at = now();
        page.keys = acme
            .list_eab_keys(scope.teams())
            .await?
            .into_iter()
            .map(|k| EabRow {
                state: eab_state(&k, at),
                usable: k.revoked_at.is_none() && k.account_id.is_none() && k.expires_at > at,
                key_id: k.key_id,
                team: k.team,
                expires: when(k.expires_at),
                created_by: k.created_by,
                account: k.account_id.map(|a| a.to_string()).unwrap_or_default(),
            })
            .collect();
    }
    let status = if page.error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    page.l = ctx.layout("ACME", "acme");
    let mut resp = html(&page);
    *resp.status_mut() = status;
    Ok(resp)
}

/// `GET /console/acme`.
pub(super) async fn page(
    ctx: Ctx,
    State(app): State<AppState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> PageResult<Response> {
    let mut page = blank(&ctx, app.acme.is_some());
    if raw.as_deref() == Some("done=revoked") {
        page.notice = "The EAB key was revoked: it binds no account from now on.";
    }
    render(&ctx, &app, page).await
}

/// `POST /console/acme/eab-keys`: a new key, its HMAC key shown once.
pub(super) async fn create(
    ctx: Ctx,
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    let form = ctx.form(&headers, &body)?;
    let mut page = blank(&ctx, app.acme.is_some());
    page.form_team = form.get("team").trim().to_owned();
    let Some(acme) = &app.acme else {
        page.error = "The ACME server is not enabled ([acme_server] enabled = true).".into();
        return render(&ctx, &app, page).await;
    };
    ctx.principal()
        .authorize(Permission::CertificateWrite, Some(&page.form_team))?;
    match acme
        .create_eab_key(&ctx.actor, &page.form_team, now())
        .await
    {
        Ok(created) => {
            page.key_id = created.key.key_id;
            page.hmac_key = created.hmac_key;
            page.key_team = created.key.team;
            page.key_expires = when(created.key.expires_at);
            page.form_team.clear();
        }
        Err(DomainError::Invalid(fields)) => {
            page.error = fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
        }
        Err(e) => return Err(e.into()),
    }
    render(&ctx, &app, page).await
}

/// `POST /console/acme/eab-keys/{key_id}/revoke`.
pub(super) async fn revoke(
    ctx: Ctx,
    State(app): State<AppState>,
    Path(key_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> PageResult<Response> {
    ctx.form(&headers, &body)?;
    let acme = app
        .acme
        .as_ref()
        .ok_or_else(|| DomainError::NotFound("the ACME server".into()))?;
    let key = acme.get_eab_key(&key_id).await?;
    if !ctx
        .principal()
        .can(Permission::CertificateRead, Some(&key.team))
    {
        return Err(DomainError::NotFound(format!("EAB key {key_id}")).into());
    }
    ctx.principal()
        .authorize(Permission::CertificateWrite, Some(&key.team))?;
    acme.revoke_eab_key(&ctx.actor, &key_id, now()).await?;
    Ok(redirect("/console/acme?done=revoked"))
}
