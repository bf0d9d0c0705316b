//! Input rules for fields that are not names (see `certflow_core::names` for those).

use certflow_core::FieldError;
use certflow_core::model::Labels;

const MAX_LABELS: usize = 32;

/// Team identifiers: short, lower-case, URL- and label-safe.
pub(crate) fn team(errors: &mut Vec<FieldError>, value: &str) {
    if value.is_empty() {
        errors.push(FieldError::new("team", "is required"));
    } else if value.len() > 64
        || !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        errors.push(FieldError::new(
            "team",
            "must be 1-64 characters of a-z, 0-9, '-' or '_'",
        ));
    }
}

/// Display names: printable, bounded.
pub(crate) fn display_name(errors: &mut Vec<FieldError>, value: &str) {
    if value.is_empty() || value.len() > 253 {
        errors.push(FieldError::new("name", "must be 1-253 characters"));
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new("name", "contains a control character"));
    }
}

/// Labels: bounded count, Kubernetes-like keys, printable values.
pub(crate) fn labels(errors: &mut Vec<FieldError>, labels: &Labels) {
    if labels.len() > MAX_LABELS {
        errors.push(FieldError::new(
            "labels",
            format!(
                "{} labels given; at most {MAX_LABELS} are allowed",
                labels.len()
            ),
        ));
        return;
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !key_ok {
            errors.push(FieldError::new(
                format!("labels.{k}"),
                "key must be 1-63 characters of letters, digits, '-', '_', '.', '/', starting with a letter or digit",
            ));
        }
        if v.len() > 255 || v.chars().any(char::is_control) {
            errors.push(FieldError::new(
                format!("labels.{k}"),
                "value must be at most 255 printable characters",
            ));
        }
    }
}

/// PKCS#12 passwords protect a private key in transit: insist on some length.
pub(crate) fn pkcs12_password(value: &str) -> Result<(), FieldError> {
    if value.chars().count() < 8 {
        Err(FieldError::new("password", "must be at least 8 characters"))
    } else if value.len() > 1024 || value.chars().any(char::is_control) {
        Err(FieldError::new(
            "password",
            "must be at most 1024 printable characters",
        ))
    } else {
        Ok(())
    }
}

/// The field an `Idempotency-Key` error names: the console API's header.
pub(crate) const IDEMPOTENCY_KEY_FIELD: &str = "Idempotency-Key";

/// Idempotency keys: 1-255 printable ASCII characters (space included).
pub(crate) fn idempotency_key(value: &str) -> Result<(), FieldError> {
    if value.is_empty()
        || value.len() > 255
        || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        Err(FieldError::new(
            IDEMPOTENCY_KEY_FIELD,
            "must be 1-255 printable ASCII characters",
        ))
    } else {
        Ok(())
    }
}
