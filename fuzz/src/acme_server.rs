//! Entry point over certflow-acme-server.

use certflow_acme_server::{KeyRef, check_header, parse_eab, parse_jws};

/// An ACME request body (RFC 8555 §6.2, flattened JWS) as every ACME POST
/// sees it, with no account, nonce or order state: the JWS and its protected
/// header, the payload's JSON, the embedded key (its thumbprint and the
/// signature checked with it) and, on a newAccount, the external account
/// binding's inner JWS.
pub fn acme_jws(data: &[u8]) {
    let Ok(jws) = parse_jws(data) else {
        return;
    };
    let _ = check_header(&jws.header, &jws.header.url, None);
    let _ = jws.is_post_as_get();
    let payload = jws.payload_json();
    if let KeyRef::Jwk(jwk) = &jws.header.key {
        let _ = jwk.thumbprint();
        let _ = jws.verify(jwk);
        if let Ok(payload) = &payload
            && let Some(eab) = payload.get("externalAccountBinding")
        {
            let _ = parse_eab(eab, &jws.header.url, jwk);
        }
    }
}
