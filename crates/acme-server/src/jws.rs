//! Request authentication (RFC 8555 §6.2-§6.5): every POST body is a JWS in
//! the flattened JSON serialization (RFC 7515 §7.2.2) with one signature, a
//! protected header only, an accepted asymmetric algorithm, exactly one of
//! `jwk` and `kid`, a `nonce` and a `url` equal to the request URL.
//!
//! Parsing ([`parse_jws`]) and the header rules ([`check_header`]) are pure
//! functions of their input, so a fuzz target can drive them; signature
//! verification is [`Jws::verify`].

use serde_json::{Map, Value};

use crate::jwk::{Jwk, b64url_decode};
use crate::problem::{ALGORITHMS, Problem, ProblemType};

/// The largest JWS body this module parses (the server's route limit is
/// lower or equal; this one guards direct callers such as a fuzz target).
pub const MAX_JWS_BYTES: usize = 64 * 1024;

/// How the request names its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// An embedded key (newAccount, revokeCert by certificate key).
    Jwk(Jwk),
    /// An account URL.
    Kid(String),
}

/// The protected header, as RFC 8555 uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedHeader {
    /// `alg`.
    pub alg: String,
    /// `jwk` or `kid`.
    pub key: KeyRef,
    /// `nonce`, when present (required on every request, absent in an EAB JWS).
    pub nonce: Option<String>,
    /// `url`.
    pub url: String,
}

/// A parsed flattened JWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jws {
    /// The protected header.
    pub header: ProtectedHeader,
    /// The decoded payload; empty for POST-as-GET.
    pub payload: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
    /// `BASE64URL(protected) || '.' || BASE64URL(payload)`, what was signed.
    pub signing_input: Vec<u8>,
}

impl Jws {
    /// Whether this is a POST-as-GET (RFC 8555 §6.3: the payload is the empty string).
    pub fn is_post_as_get(&self) -> bool {
        self.payload.is_empty()
    }

    /// The payload as a JSON object (`malformed` if it is not one).
    pub fn payload_json(&self) -> Result<Map<String, Value>, Problem> {
        match serde_json::from_slice::<Value>(&self.payload) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(Problem::malformed("the JWS payload is not a JSON object")),
        }
    }

    /// Verifies the signature with `key` (the embedded `jwk` or the account's).
    pub fn verify(&self, key: &Jwk) -> Result<(), Problem> {
        key.verify(&self.header.alg, &self.signing_input, &self.signature)
    }
}

/// The members of a flattened JWS object this server reads, as strings,
/// refusing the general serialization and unprotected headers.
pub(crate) fn flattened_parts(obj: &Map<String, Value>) -> Result<[&str; 3], Problem> {
    if obj.contains_key("signatures") {
        return Err(Problem::malformed(
            "the JWS must use the flattened JSON serialization with one signature (RFC 8555 §6.2)",
        ));
    }
    if obj.contains_key("header") {
        return Err(Problem::malformed(
            "the JWS must not have an unprotected header (RFC 8555 §6.2)",
        ));
    }
    if let Some(other) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "protected" | "payload" | "signature"))
    {
        return Err(Problem::malformed(format!(
            "unexpected JWS member {other:?}"
        )));
    }
    let get = |name: &str| {
        obj.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::malformed(format!("the JWS has no string member {name:?}")))
    };
    Ok([get("protected")?, get("payload")?, get("signature")?])
}

/// Parses a request body as a flattened JWS and its protected header
/// (`malformed`, `badSignatureAlgorithm`, `badPublicKey` or `badNonce`,
/// naming what is wrong). The `url` comparison needs the request:
/// [`check_header`].
pub fn parse_jws(body: &[u8]) -> Result<Jws, Problem> {
    if body.len() > MAX_JWS_BYTES {
        return Err(Problem::malformed(format!(
            "the JWS is larger than {MAX_JWS_BYTES} bytes"
        )));
    }
    let obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => obj,
        _ => {
            return Err(Problem::malformed(
                "the body is not a JSON object (a flattened JWS)",
            ));
        }
    };
    let [protected_b64, payload_b64, signature_b64] = flattened_parts(&obj)?;
    let protected = b64url_decode("the JWS protected header", protected_b64)?;
    let payload = b64url_decode("the JWS payload", payload_b64)?;
    let signature = b64url_decode("the JWS signature", signature_b64)?;
    let header = parse_protected_header(&protected)?;
    let mut signing_input = Vec::with_capacity(protected_b64.len() + payload_b64.len() + 1);
    signing_input.extend_from_slice(protected_b64.as_bytes());
    signing_input.push(b'.');
    signing_input.extend_from_slice(payload_b64.as_bytes());
    Ok(Jws {
        header,
        payload,
        signature,
        signing_input,
    })
}

/// Parses the decoded protected header (RFC 8555 §6.2).
pub fn parse_protected_header(bytes: &[u8]) -> Result<ProtectedHeader, Problem> {
    let obj = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(obj)) => obj,
        _ => {
            return Err(Problem::malformed(
                "the JWS protected header is not a JSON object",
            ));
        }
    };
    let alg = obj
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| Problem::malformed("the JWS protected header has no \"alg\""))?;
    check_algorithm(alg)?;
    if obj.contains_key("crit") || obj.contains_key("b64") {
        // No extension is understood, so none may be critical (RFC 7515 §4.1.11).
        return Err(Problem::malformed(
            "the JWS protected header uses an extension (crit/b64) this server does not support",
        ));
    }
    let key = match (obj.get("jwk"), obj.get("kid")) {
        (Some(jwk), None) => KeyRef::Jwk(Jwk::from_json(jwk)?),
        (None, Some(kid)) => KeyRef::Kid(
            kid.as_str()
                .ok_or_else(|| Problem::malformed("\"kid\" must be a string (the account URL)"))?
                .to_owned(),
        ),
        (Some(_), Some(_)) => {
            return Err(Problem::malformed(
                "the JWS protected header must have exactly one of \"jwk\" and \"kid\", not both",
            ));
        }
        (None, None) => {
            return Err(Problem::malformed(
                "the JWS protected header must have one of \"jwk\" and \"kid\"",
            ));
        }
    };
    let nonce = match obj.get("nonce") {
        None => None,
        Some(Value::String(n)) => Some(n.clone()),
        Some(_) => return Err(Problem::bad_nonce("\"nonce\" must be a string")),
    };
    let url = obj
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| Problem::malformed("the JWS protected header has no string \"url\""))?
        .to_owned();
    Ok(ProtectedHeader {
        alg: alg.to_owned(),
        key,
        nonce,
        url,
    })
}

/// Accepts only ES256, ES384, RS256 and EdDSA (`badSignatureAlgorithm`
/// listing them otherwise, `none` and MACs included).
pub fn check_algorithm(alg: &str) -> Result<(), Problem> {
    if ALGORITHMS.contains(&alg) {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemType::BadSignatureAlgorithm,
            format!(
                "JWS algorithm {alg:?} is not accepted; use one of {}",
                ALGORITHMS.join(", ")
            ),
        ))
    }
}

/// The rules that need the request: `url` equals `request_url`
/// (`unauthorized` otherwise, RFC 8555 §6.4), a `nonce` is present and
/// base64url (`badNonce`, §6.5.2), and the key is named the way the
/// resource requires (`jwk` for newAccount and revocation by certificate
/// key, `kid` for everything else: `malformed`). Returns the nonce, for the
/// caller to consume from its store.
pub fn check_header<'a>(
    header: &'a ProtectedHeader,
    request_url: &str,
    wants_jwk: Option<bool>,
) -> Result<&'a str, Problem> {
    if header.url != request_url {
        return Err(Problem::unauthorized(format!(
            "the JWS \"url\" {:?} is not the request URL {request_url:?}",
            header.url
        )));
    }
    let nonce = header
        .nonce
        .as_deref()
        .ok_or_else(|| Problem::bad_nonce("the JWS protected header has no \"nonce\""))?;
    if nonce.is_empty() || b64url_decode("nonce", nonce).is_err() {
        return Err(Problem::bad_nonce("the nonce is not base64url"));
    }
    match (wants_jwk, &header.key) {
        (Some(true), KeyRef::Kid(_)) => Err(Problem::malformed(
            "this request must carry the key as \"jwk\", not \"kid\"",
        )),
        (Some(false), KeyRef::Jwk(_)) => Err(Problem::malformed(
            "this request must name the account as \"kid\", not embed a \"jwk\"",
        )),
        _ => Ok(nonce),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::jwk::b64url;
    use serde_json::json;

    /// RFC 7515 A.3 (ES256) and A.2 (RS256): the example payload and keys.
    const PAYLOAD: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    const ES256_SIG: &str =
        "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    const RS256_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const RS256_SIG: &str = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

    fn es256_key() -> Jwk {
        Jwk::from_json(&json!({"kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}))
        .unwrap()
    }

    fn input(protected_b64: &str) -> Vec<u8> {
        format!("{protected_b64}.{PAYLOAD}").into_bytes()
    }

    #[test]
    fn rfc7515_appendix_a3_es256_and_a2_rs256_verify() {
        let sig = b64url_decode("sig", ES256_SIG).unwrap();
        es256_key()
            .verify("ES256", &input("eyJhbGciOiJFUzI1NiJ9"), &sig)
            .unwrap();
        let mut bad = sig.clone();
        bad[5] ^= 1;
        let err = es256_key()
            .verify("ES256", &input("eyJhbGciOiJFUzI1NiJ9"), &bad)
            .unwrap_err();
        assert_eq!(err.kind, ProblemType::Malformed);
        let rsa = Jwk::from_json(&json!({"kty": "RSA", "n": RS256_N, "e": "AQAB"})).unwrap();
        rsa.verify(
            "RS256",
            &input("eyJhbGciOiJSUzI1NiJ9"),
            &b64url_decode("sig", RS256_SIG).unwrap(),
        )
        .unwrap();
        // The key decides the algorithm: an RSA key cannot claim ES256.
        let wrong = rsa
            .verify("ES256", &input("eyJhbGciOiJSUzI1NiJ9"), &sig)
            .unwrap_err();
        assert_eq!(wrong.kind, ProblemType::BadSignatureAlgorithm);
    }

    #[test]
    fn rfc8037_appendix_a4_eddsa_verifies() {
        let key = Jwk::from_json(&json!({"kty": "OKP", "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}))
        .unwrap();
        let sig = b64url_decode("sig", "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg").unwrap();
        key.verify(
            "EdDSA",
            b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
            &sig,
        )
        .unwrap();
    }

    fn body(header: Value, payload: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "protected": b64url(header.to_string().as_bytes()),
            "payload": b64url(payload.as_bytes()),
            "signature": b64url(&[1, 2, 3]),
        }))
        .unwrap()
    }

    fn es_jwk() -> Value {
        json!({"kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
    }

    #[test]
    fn rfc8555_section_6_2_header_rules() {
        let url = "https://ca.example/acme/certflow/new-account";
        let ok = parse_jws(&body(
            json!({"alg": "ES256", "jwk": es_jwk(), "nonce": "abc_-w", "url": url}),
            "{}",
        ))
        .unwrap();
        assert_eq!(check_header(&ok.header, url, Some(true)).unwrap(), "abc_-w");
        assert_eq!(ok.signing_input.iter().filter(|b| **b == b'.').count(), 1);
        let get = parse_jws(&body(
            json!({"alg": "ES256", "kid": "k", "nonce": "n", "url": url}),
            "",
        ))
        .unwrap();
        assert!(get.is_post_as_get());

        let cases: Vec<(Vec<u8>, ProblemType, &str)> = vec![
            (
                body(
                    json!({"alg": "none", "jwk": es_jwk(), "nonce": "n", "url": url}),
                    "{}",
                ),
                ProblemType::BadSignatureAlgorithm,
                "\"none\"",
            ),
            (
                body(
                    json!({"alg": "HS256", "kid": "k", "nonce": "n", "url": url}),
                    "{}",
                ),
                ProblemType::BadSignatureAlgorithm,
                "\"HS256\"",
            ),
            (
                body(
                    json!({"alg": "ES256", "jwk": es_jwk(), "kid": "k", "nonce": "n", "url": url}),
                    "{}",
                ),
                ProblemType::Malformed,
                "not both",
            ),
            (
                body(json!({"alg": "ES256", "nonce": "n", "url": url}), "{}"),
                ProblemType::Malformed,
                "one of \"jwk\" and \"kid\"",
            ),
            (
                body(json!({"alg": "ES256", "kid": "k", "nonce": "n"}), "{}"),
                ProblemType::Malformed,
                "\"url\"",
            ),
            (
                body(
                    json!({"alg": "ES256", "kid": "k", "nonce": "n", "url": url, "crit": ["b64"], "b64": false}),
                    "{}",
                ),
                ProblemType::Malformed,
                "crit",
            ),
            (
                br#"{"payload":"","signatures":[]}"#.to_vec(),
                ProblemType::Malformed,
                "flattened",
            ),
            (
                br#"{"protected":"e30","payload":"","signature":"","header":{}}"#.to_vec(),
                ProblemType::Malformed,
                "unprotected",
            ),
            (
                br#"{"protected":"e30=","payload":"","signature":""}"#.to_vec(),
                ProblemType::Malformed,
                "base64url",
            ),
            (
                b"eyJhbGciOiJFUzI1NiJ9.e30.AAAA".to_vec(),
                ProblemType::Malformed,
                "JSON object",
            ),
        ];
        for (b, kind, want) in cases {
            let p = parse_jws(&b).unwrap_err();
            assert_eq!(p.kind, kind, "{}", String::from_utf8_lossy(&b));
            assert!(
                p.detail.contains(want),
                "{}: {}",
                String::from_utf8_lossy(&b),
                p.detail
            );
        }

        let other_url = check_header(
            &ok.header,
            "https://ca.example/acme/certflow/new-order",
            None,
        )
        .unwrap_err();
        assert_eq!(other_url.kind, ProblemType::Unauthorized);
        let no_nonce =
            parse_jws(&body(json!({"alg": "ES256", "kid": "k", "url": url}), "")).unwrap();
        assert_eq!(
            check_header(&no_nonce.header, url, None).unwrap_err().kind,
            ProblemType::BadNonce
        );
        let bad_nonce = parse_jws(&body(
            json!({"alg": "ES256", "kid": "k", "url": url, "nonce": "a+b"}),
            "",
        ))
        .unwrap();
        assert_eq!(
            check_header(&bad_nonce.header, url, None).unwrap_err().kind,
            ProblemType::BadNonce
        );
        assert_eq!(
            check_header(&ok.header, url, Some(false)).unwrap_err().kind,
            ProblemType::Malformed
        );
    }
}
