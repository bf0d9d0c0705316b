//! dns-01 (RFC 8555 §8.4): a TXT record at `_acme-challenge.<name>` (the
//! wildcard's base name) equal to base64url(SHA-256(key authorization)).

use super::resolve::Resolver;
use super::{Target, ValidationFailure};
use crate::keyauth::dns01_txt_value;

pub(super) async fn validate(
    resolver: &Resolver,
    target: &Target,
    key_authorization: &str,
) -> Result<(), ValidationFailure> {
    let Target::Dns(name) = target else {
        // RFC 8738 §7: IP identifiers cannot be validated over DNS.
        return Err(ValidationFailure::new(
            "unauthorized",
            "dns-01 cannot validate an IP identifier (RFC 8738 §7)",
        ));
    };
    let record = format!("_acme-challenge.{name}");
    let expected = dns01_txt_value(key_authorization);
    let found = resolver.txt(&record).await?;
    if found.iter().any(|v| v == expected.as_bytes()) {
        Ok(())
    } else if found.is_empty() {
        Err(ValidationFailure::new(
            "dns",
            format!("there is no TXT record at {record}"),
        ))
    } else {
        Err(ValidationFailure::new(
            "incorrectResponse",
            format!(
                "none of the {} TXT records at {record} is the digest of this challenge's key authorization",
                found.len()
            ),
        ))
    }
}
