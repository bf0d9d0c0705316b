//! Key authorizations (RFC 8555 §8.1) and what each challenge type derives
//! from them: the http-01 body, the dns-01 TXT value (§8.4), the tls-alpn-01
//! acmeIdentifier digest (RFC 8737 §3).

use aws_lc_rs::digest;

use crate::jwk::b64url;

/// `token || '.' || base64url(thumbprint)`, the thumbprint already base64url.
pub fn key_authorization(token: &str, thumbprint: &str) -> String {
    format!("{token}.{thumbprint}")
}

/// The TXT record value at `_acme-challenge.<domain>`: base64url(SHA-256(key authorization)).
pub fn dns01_txt_value(key_authorization: &str) -> String {
    b64url(&tls_alpn01_digest(key_authorization))
}

/// SHA-256 of the key authorization: the acmeIdentifier extension's value.
pub fn tls_alpn01_digest(key_authorization: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, key_authorization.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether `token` is a plausible challenge token: base64url characters
/// only, so that it cannot change the path it is put in (RFC 8555 §8.3).
pub fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns01_value_is_the_digest_of_the_key_authorization() {
        // RFC 8555 §8.1 example token with the RFC 7638 §3.1 thumbprint.
        let ka = key_authorization(
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA",
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
        );
        assert_eq!(
            ka,
            "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // SHA-256 of "abc" (FIPS 180-2 B.1), base64url.
        assert_eq!(
            dns01_txt_value("abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
        assert!(is_token("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"));
        assert!(!is_token("../../etc"));
    }
}
