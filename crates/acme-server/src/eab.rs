//! External Account Binding (RFC 8555 §7.3.4): the `externalAccountBinding`
//! member of a newAccount payload is a flattened JWS whose payload is the
//! account key, MACed with the HMAC key the CA handed out under `kid`.
//!
//! [`parse_eab`] is pure (the structure, the header rules, the bound key);
//! [`EabRequest::verify`] checks the MAC once the caller has looked up and
//! unsealed the key named by [`EabRequest::key_id`].

use aws_lc_rs::hmac;
use serde_json::Value;

use crate::jwk::{Jwk, b64url_decode};
use crate::jws::flattened_parts;
use crate::problem::Problem;

/// A parsed external account binding, waiting for its MAC check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EabRequest {
    /// The EAB key identifier (`kid`).
    pub key_id: String,
    alg: hmac::Algorithm,
    signing_input: Vec<u8>,
    mac: Vec<u8>,
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem::unauthorized(format!("external account binding: {}", detail.into()))
}

/// Parses `eab` (the payload's `externalAccountBinding`) for a newAccount
/// request whose outer JWS had `url` and embedded `account_key`
/// (`malformed` for structure, `unauthorized` for a binding to something else).
pub fn parse_eab(eab: &Value, url: &str, account_key: &Jwk) -> Result<EabRequest, Problem> {
    let obj = eab
        .as_object()
        .ok_or_else(|| Problem::malformed("externalAccountBinding is not a JWS object"))?;
    let [protected_b64, payload_b64, mac_b64] = flattened_parts(obj)?;
    let protected = b64url_decode("the EAB protected header", protected_b64)?;
    let header = match serde_json::from_slice::<Value>(&protected) {
        Ok(Value::Object(h)) => h,
        _ => {
            return Err(Problem::malformed(
                "the EAB protected header is not a JSON object",
            ));
        }
    };
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => hmac::HMAC_SHA256,
        Some("HS384") => hmac::HMAC_SHA384,
        Some("HS512") => hmac::HMAC_SHA512,
        other => {
            return Err(bad(format!(
                "\"alg\" must be a MAC algorithm (HS256, HS384, HS512), not {other:?}"
            )));
        }
    };
    if header.contains_key("nonce") {
        return Err(bad("the inner JWS must not have a \"nonce\""));
    }
    if header.contains_key("jwk") || header.contains_key("crit") {
        return Err(Problem::malformed(
            "the EAB protected header has unexpected members",
        ));
    }
    let key_id = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("the inner JWS has no \"kid\""))?
        .to_owned();
    if header.get("url").and_then(Value::as_str) != Some(url) {
        return Err(bad("the inner JWS \"url\" is not the newAccount URL"));
    }
    let payload = b64url_decode("the EAB payload", payload_b64)?;
    let bound = serde_json::from_slice::<Value>(&payload)
        .map_err(|_| Problem::malformed("the EAB payload is not a JWK"))?;
    if Jwk::from_json(&bound)? != *account_key {
        return Err(bad("it binds another key than the account's"));
    }
    let mac = b64url_decode("the EAB signature", mac_b64)?;
    Ok(EabRequest {
        key_id,
        alg,
        signing_input: format!("{protected_b64}.{payload_b64}").into_bytes(),
        mac,
    })
}

impl EabRequest {
    /// Checks the MAC with the EAB key's HMAC key (constant time).
    pub fn verify(&self, hmac_key: &[u8]) -> Result<(), Problem> {
        let key = hmac::Key::new(self.alg, hmac_key);
        hmac::verify(&key, &self.signing_input, &self.mac)
            .map_err(|_| bad("the MAC does not verify with the key of this key identifier"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::jwk::b64url;
    use crate::problem::ProblemType;
    use serde_json::json;

    const URL: &str = "https://ca.example/acme/certflow/new-account";

    fn account() -> (Value, Jwk) {
        let v = json!({"kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        (v.clone(), Jwk::from_json(&v).unwrap())
    }

    /// What RFC 8555 §7.3.4's example client does: HS256 over the account JWK.
    fn binding(header: Value, payload: &Value, hmac_key: &[u8]) -> Value {
        let p = b64url(header.to_string().as_bytes());
        let body = b64url(payload.to_string().as_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA256, hmac_key);
        let mac = hmac::sign(&key, format!("{p}.{body}").as_bytes());
        json!({"protected": p, "payload": body, "signature": b64url(mac.as_ref())})
    }

    #[test]
    fn a_binding_verifies_with_its_key_only() {
        let (v, jwk) = account();
        let secret = b"0123456789abcdef0123456789abcdef";
        let eab = binding(
            json!({"alg": "HS256", "kid": "kid-1", "url": URL}),
            &v,
            secret,
        );
        let req = parse_eab(&eab, URL, &jwk).unwrap();
        assert_eq!(req.key_id, "kid-1");
        req.verify(secret).unwrap();
        let err = req.verify(b"another key of the same length!!").unwrap_err();
        assert_eq!(err.kind, ProblemType::Unauthorized);
    }

    #[test]
    fn bindings_to_something_else_are_refused() {
        let (v, jwk) = account();
        let other = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        for (eab, want) in [
            (
                binding(json!({"alg": "ES256", "kid": "k", "url": URL}), &v, b"k"),
                "MAC algorithm",
            ),
            (
                binding(
                    json!({"alg": "HS256", "kid": "k", "url": URL, "nonce": "n"}),
                    &v,
                    b"k",
                ),
                "nonce",
            ),
            (
                binding(json!({"alg": "HS256", "url": URL}), &v, b"k"),
                "kid",
            ),
            (
                binding(
                    json!({"alg": "HS256", "kid": "k", "url": "https://x/"}),
                    &v,
                    b"k",
                ),
                "url",
            ),
            (
                binding(
                    json!({"alg": "HS256", "kid": "k", "url": URL}),
                    &other,
                    b"k",
                ),
                "another key",
            ),
        ] {
            let err = parse_eab(&eab, URL, &jwk).unwrap_err();
            assert!(err.detail.contains(want), "{want}: {}", err.detail);
        }
    }
}
