//! Account keys as JSON Web Keys (RFC 7517/7518, RFC 8037 for Ed25519):
//! parsed strictly (public members only, minimal encodings, sizes this
//! server accepts), their RFC 7638 thumbprints, and signature verification
//! with aws-lc-rs.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::problem::{Problem, ProblemType};

/// The smallest RSA modulus accepted (RFC 8555 deployments and the issue: ≥ 2048).
pub const RSA_MIN_BITS: usize = 2048;
/// The largest RSA modulus accepted (bounds verification cost).
pub const RSA_MAX_BITS: usize = 8192;

/// Elliptic curves of ECDSA account keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// P-256 (ES256).
    P256,
    /// P-384 (ES384).
    P384,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }

    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// A public account key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwk {
    /// ECDSA on P-256 or P-384: the affine coordinates.
    Ec {
        /// Curve.
        crv: Curve,
        /// x coordinate, big-endian, full length.
        x: Vec<u8>,
        /// y coordinate, big-endian, full length.
        y: Vec<u8>,
    },
    /// RSA: modulus and public exponent, big-endian, no leading zero.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// Ed25519 (`kty: OKP`, RFC 8037).
    Ed25519 {
        /// The 32-byte public key.
        x: Vec<u8>,
    },
}

fn bad_key(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemType::BadPublicKey, detail)
}

/// Decodes base64url without padding (RFC 7515 §2), refusing anything else.
pub fn b64url_decode(what: &str, s: &str) -> Result<Vec<u8>, Problem> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| Problem::malformed(format!("{what} is not unpadded base64url")))
}

/// Encodes as base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn member<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, Problem> {
    obj.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| bad_key(format!("the JWK has no string member {name:?}")))
}

fn key_bytes(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, Problem> {
    let s = member(obj, name)?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad_key(format!("the JWK member {name:?} is not unpadded base64url")))
}

/// Private-key members: a JWK carrying any of them is refused, so a client
/// that leaks its private key learns so instead of having it stored.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl Jwk {
    /// Parses a public JWK (`badPublicKey` naming what is wrong).
    pub fn from_json(value: &Value) -> Result<Self, Problem> {
        let obj = value
            .as_object()
            .ok_or_else(|| bad_key("the JWK is not a JSON object"))?;
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
            return Err(bad_key(format!(
                "the JWK holds the private member {m:?}; send the public key only"
            )));
        }
        match member(obj, "kty")? {
            "EC" => {
                let crv = match member(obj, "crv")? {
                    "P-256" => Curve::P256,
                    "P-384" => Curve::P384,
                    other => {
                        return Err(bad_key(format!(
                            "EC curve {other:?} is not accepted (P-256 or P-384)"
                        )));
                    }
                };
                let (x, y) = (key_bytes(obj, "x")?, key_bytes(obj, "y")?);
                if x.len() != crv.coordinate_len() || y.len() != crv.coordinate_len() {
                    return Err(bad_key(format!(
                        "{} coordinates must be {} bytes",
                        crv.name(),
                        crv.coordinate_len()
                    )));
                }
                let key = Jwk::Ec { crv, x, y };
                key.parsed_ec()?;
                Ok(key)
            }
            "RSA" => {
                let (n, e) = (key_bytes(obj, "n")?, key_bytes(obj, "e")?);
                if n.first() == Some(&0) || e.first() == Some(&0) || e.is_empty() {
                    return Err(bad_key("RSA n and e must be minimal (no leading zero)"));
                }
                let bits = rsa_bits(&n);
                if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                    return Err(bad_key(format!(
                        "RSA keys must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, this one has {bits}"
                    )));
                }
                if e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) {
                    return Err(bad_key("the RSA public exponent must be odd and small"));
                }
                Ok(Jwk::Rsa { n, e })
            }
            "OKP" => {
                let crv = member(obj, "crv")?;
                if crv != "Ed25519" {
                    return Err(bad_key(format!(
                        "OKP curve {crv:?} is not accepted (Ed25519)"
                    )));
                }
                let x = key_bytes(obj, "x")?;
                if x.len() != 32 {
                    return Err(bad_key("Ed25519 public keys are 32 bytes"));
                }
                let key = Jwk::Ed25519 { x };
                ParsedPublicKey::new(&signature::ED25519, key.raw_ed25519())
                    .map_err(|_| bad_key("not a valid Ed25519 public key"))?;
                Ok(key)
            }
            other => Err(bad_key(format!(
                "key type {other:?} is not accepted (EC, RSA or OKP)"
            ))),
        }
    }

    fn raw_ed25519(&self) -> &[u8] {
        match self {
            Jwk::Ed25519 { x } => x,
            _ => &[],
        }
    }

    fn uncompressed_point(&self) -> Vec<u8> {
        match self {
            Jwk::Ec { x, y, .. } => {
                let mut p = Vec::with_capacity(1 + x.len() + y.len());
                p.push(4);
                p.extend_from_slice(x);
                p.extend_from_slice(y);
                p
            }
            _ => Vec::new(),
        }
    }

    fn parsed_ec(&self) -> Result<ParsedPublicKey, Problem> {
        let alg = match self {
            Jwk::Ec {
                crv: Curve::P256, ..
            } => &signature::ECDSA_P256_SHA256_FIXED,
            Jwk::Ec {
                crv: Curve::P384, ..
            } => &signature::ECDSA_P384_SHA384_FIXED,
            _ => return Err(bad_key("not an EC key")),
        };
        ParsedPublicKey::new(alg, self.uncompressed_point())
            .map_err(|_| bad_key("the EC point is not on its curve"))
    }

    /// The RFC 7638 canonical JSON: the required members only, in
    /// lexicographic order, no whitespace.
    pub fn canonical_json(&self) -> String {
        match self {
            Jwk::Ec { crv, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                crv.name(),
                b64url(x),
                b64url(y)
            ),
            Jwk::Rsa { n, e } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64url(e), b64url(n))
            }
            Jwk::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64url(x)),
        }
    }

    /// The RFC 7638 SHA-256 thumbprint, base64url.
    pub fn thumbprint(&self) -> String {
        b64url(digest::digest(&digest::SHA256, self.canonical_json().as_bytes()).as_ref())
    }

    /// The public key as a JSON object (the canonical members), for storage.
    pub fn to_json(&self) -> Value {
        serde_json::from_str(&self.canonical_json()).unwrap_or(Value::Null)
    }

    /// The DER SubjectPublicKeyInfo of this key, as a CSR or certificate
    /// carries it: compare with a CSR's to refuse the account key as the
    /// certificate key.
    pub fn spki_der(&self) -> Vec<u8> {
        crate::der::spki(self)
    }

    /// The JWS algorithms this key may sign with.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Jwk::Ec {
                crv: Curve::P256, ..
            } => "ES256",
            Jwk::Ec {
                crv: Curve::P384, ..
            } => "ES384",
            Jwk::Rsa { .. } => "RS256",
            Jwk::Ed25519 { .. } => "EdDSA",
        }
    }

    /// Verifies `sig` over `message` under algorithm `alg`, which must be
    /// this key's (`badSignatureAlgorithm` otherwise); a wrong signature is
    /// `malformed` (RFC 8555 §6.2 names no finer type).
    pub fn verify(&self, alg: &str, message: &[u8], sig: &[u8]) -> Result<(), Problem> {
        if alg != self.algorithm() {
            return Err(Problem::new(
                ProblemType::BadSignatureAlgorithm,
                format!(
                    "algorithm {alg:?} does not match the key (a {} key signs with {})",
                    self.kind(),
                    self.algorithm()
                ),
            ));
        }
        let ok = match self {
            Jwk::Ec { .. } => self.parsed_ec()?.verify_sig(message, sig).is_ok(),
            Jwk::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            Jwk::Ed25519 { x } => signature::UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(Problem::malformed("the JWS signature does not verify"))
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Jwk::Ec {
                crv: Curve::P256, ..
            } => "P-256",
            Jwk::Ec {
                crv: Curve::P384, ..
            } => "P-384",
            Jwk::Rsa { .. } => "RSA",
            Jwk::Ed25519 { .. } => "Ed25519",
        }
    }
}

fn rsa_bits(n: &[u8]) -> usize {
    match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7638 §3.1 (also RFC 7517 Appendix A.1's first key).
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn rfc7638_section_3_1_thumbprint() {
        let key = Jwk::from_json(&json!({
            "kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"
        }))
        .unwrap();
        assert_eq!(
            key.canonical_json(),
            format!(r#"{{"e":"AQAB","kty":"RSA","n":"{RFC7638_N}"}}"#)
        );
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rfc8037_appendix_a3_ed25519_thumbprint() {
        let key = Jwk::from_json(&json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }))
        .unwrap();
        assert_eq!(
            key.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn keys_the_server_does_not_accept_are_bad_public_keys() {
        let p256 = json!({"kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        Jwk::from_json(&p256).unwrap();
        let mut off_curve = p256.clone();
        off_curve["y"] = json!("x_FFzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0");
        let mut private = p256.clone();
        private["d"] = json!("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI");
        // RFC 7517 A.1's RSA key is 2048 bits; a 1024-bit modulus is refused.
        let small_rsa = json!({"kty": "RSA", "e": "AQAB", "n": b64url(&[0xc5; 128])});
        for (bad, want) in [
            (off_curve, "not on its curve"),
            (private, "private member \"d\""),
            (small_rsa, "2048 to 8192 bits, this one has 1024"),
            (json!({"kty": "oct", "k": "AAAA"}), "private member"),
            (
                json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
                "P-521",
            ),
            (json!({"kty": "OKP", "crv": "X25519", "x": "AA"}), "X25519"),
            (json!("RSA"), "not a JSON object"),
        ] {
            let p = Jwk::from_json(&bad).unwrap_err();
            assert_eq!(p.kind, ProblemType::BadPublicKey, "{bad}");
            assert!(p.detail.contains(want), "{bad}: {}", p.detail);
        }
    }
}
