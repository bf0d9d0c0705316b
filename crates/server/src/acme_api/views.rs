//! The ACME resources as JSON (RFC 8555 §7.1): accounts, orders,
//! authorizations and challenges, with URLs under the issuer's base.

use certflow_core::acme::{
    AcmeAccount, AcmeAuthorization, AcmeChallenge, AcmeOrder, ChallengeStatus, OrderStatus,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// An account object (§7.1.2). No `orders` member: there is no order
/// list resource, and a URL pointing at nothing would mislead.
pub(super) fn account(a: &AcmeAccount) -> Value {
    json!({
        "status": a.status.as_str(),
        "contact": a.contact,
    })
}

/// An order object (§7.1.3).
pub(super) fn order(base: &str, o: &AcmeOrder) -> Value {
    let mut v = json!({
        "status": o.status.as_str(),
        "expires": rfc3339(o.expires),
        "identifiers": o.identifiers,
        "authorizations": o
            .authorization_ids
            .iter()
            .map(|id| format!("{base}/authz/{id}"))
            .collect::<Vec<_>>(),
        "finalize": format!("{base}/finalize/{}", o.id),
    });
    if o.status == OrderStatus::Valid && o.certificate_id.is_some() {
        v["certificate"] = json!(format!("{base}/cert/{}", o.id));
    }
    if let Some(e) = &o.error {
        v["error"] = e.clone();
    }
    if let Some(r) = &o.replaces {
        v["replaces"] = json!(r);
    }
    v
}

/// A challenge object (§7.1.5, §8).
pub(super) fn challenge(base: &str, c: &AcmeChallenge) -> Value {
    let mut v = json!({
        "type": c.kind.as_str(),
        "url": format!("{base}/chall/{}", c.id),
        "status": c.status.as_str(),
        "token": c.token,
    });
    if c.status == ChallengeStatus::Valid
        && let Some(at) = c.validated_at
    {
        v["validated"] = json!(rfc3339(at));
    }
    if let Some(e) = &c.error {
        v["error"] = e.clone();
    }
    v
}

/// An authorization object (§7.1.4).
pub(super) fn authorization(base: &str, a: &AcmeAuthorization, now: OffsetDateTime) -> Value {
    let mut v = json!({
        "identifier": a.identifier,
        "status": a.status_at(now).as_str(),
        "expires": rfc3339(a.expires),
        "challenges": a.challenges.iter().map(|c| challenge(base, c)).collect::<Vec<_>>(),
    });
    if a.wildcard {
        v["wildcard"] = json!(true);
    }
    v
}

/// The directory (§7.1.1), with `renewalInfo` (RFC 9773 §4).
pub(super) fn directory(base: &str, eab_required: bool) -> Value {
    json!({
        "newNonce": format!("{base}/new-nonce"),
        "newAccount": format!("{base}/new-account"),
        "newOrder": format!("{base}/new-order"),
        "revokeCert": format!("{base}/revoke-cert"),
        "keyChange": format!("{base}/key-change"),
        "renewalInfo": format!("{base}/renewal-info"),
        "meta": {
            "externalAccountRequired": eab_required,
        },
    })
}
