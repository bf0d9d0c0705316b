//! Entry point over certflow-auth.

/// A bearer token as it arrives in `Authorization`: the header's scheme,
/// then the compact JWS's pure stage (split, base64url, JSON, header policy,
/// signature encoding, date claims) that runs before any key is looked up.
pub fn jws(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let token = certflow_auth::bearer_token(text).unwrap_or(text);
    let _ = certflow_auth::parse_compact_jws(token);
}
