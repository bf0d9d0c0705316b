//! Certificate revocation lists (RFC 5280 §5, CA/B BR §7.2): a complete CRL of
//! everything an issuer revoked. The services sign one on every revocation
//! and before nextUpdate, store it, and serve the stored copy.

use certflow_core::{DomainError, DomainResult, FieldError, RevocationReason};
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

use crate::asn1::{self, MAX_SERIAL_LEN, internal, parse_cert, whole_seconds};
use crate::inspect::key_matches_cert;
use crate::keys::PrivateKey;
use crate::signer::{CaPublicKey, Deferred, ToBeSigned, sign_locally};

/// One revoked certificate on a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Serial number, hex (as `CertInfo::serial_hex`).
    pub serial_hex: String,
    /// When certflow processed the revocation.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

fn reason_code(r: RevocationReason) -> Option<rcgen::RevocationReason> {
    use rcgen::RevocationReason as R;
    Some(match r {
        // RFC 5280 §5.3.1 and CA/B BR §7.2.2: unspecified is expressed by
        // leaving the reasonCode extension out.
        RevocationReason::Unspecified => return None,
        RevocationReason::KeyCompromise => R::KeyCompromise,
        RevocationReason::CaCompromise => R::CaCompromise,
        RevocationReason::AffiliationChanged => R::AffiliationChanged,
        RevocationReason::Superseded => R::Superseded,
        RevocationReason::CessationOfOperation => R::CessationOfOperation,
        RevocationReason::CertificateHold => R::CertificateHold,
        RevocationReason::RemoveFromCrl => R::RemoveFromCrl,
        RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => R::AaCompromise,
    })
}

fn serial_bytes(hex_text: &str) -> Result<Vec<u8>, String> {
    let padded = if hex_text.len() % 2 == 1 {
        format!("0{hex_text}")
    } else {
        hex_text.to_owned()
    };
    let bytes =
        hex::decode(padded).map_err(|_| format!("'{hex_text}' is not a hex serial number"))?;
    let significant = asn1::strip_leading_zeros(&bytes);
    if significant.is_empty() || significant.len() > MAX_SERIAL_LEN {
        return Err(format!(
            "'{hex_text}' is not a serial number of 1 to 20 octets"
        ));
    }
    Ok(significant.to_vec())
}

/// Signs a complete CRL with the CA key: `crl_number` must grow with every
/// CRL (RFC 5280 §5.2.3) and `next_update` must be after `now`.
pub fn build_crl(
    ca_cert_der: &[u8],
    ca_key: &PrivateKey,
    revoked: &[RevokedEntry],
    crl_number: u64,
    now: OffsetDateTime,
    next_update: OffsetDateTime,
) -> DomainResult<Vec<u8>> {
    let tbs = crl_tbs(ca_cert_der, revoked, crl_number, now, next_update)?;
    if !key_matches_cert(ca_key, ca_cert_der) {
        return Err(DomainError::Internal(
            "the CA key does not match the CA certificate".into(),
        ));
    }
    sign_locally(ca_key, tbs)
}

/// The TBSCertList of a complete CRL of the CA `ca_cert_der`, for its key to
/// sign wherever it lives (see [`build_crl`] for the rules).
pub fn crl_tbs(
    ca_cert_der: &[u8],
    revoked: &[RevokedEntry],
    crl_number: u64,
    now: OffsetDateTime,
    next_update: OffsetDateTime,
) -> DomainResult<ToBeSigned> {
    let this_update = whole_seconds(now)?;
    let next_update = whole_seconds(next_update)?;
    let mut errors = Vec::new();
    if next_update <= this_update {
        errors.push(FieldError::new("next_update", "must be after this update"));
    }
    let mut revoked_certs = Vec::with_capacity(revoked.len());
    for (i, entry) in revoked.iter().enumerate() {
        match serial_bytes(&entry.serial_hex) {
            Ok(serial) => revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: whole_seconds(entry.revoked_at)?,
                reason_code: reason_code(entry.reason),
                invalidity_date: None,
            }),
            Err(reason) => errors.push(FieldError::new(format!("revoked[{i}].serial_hex"), reason)),
        }
    }
    if !errors.is_empty() {
        return Err(DomainError::Invalid(errors));
    }

    let ca = parse_cert("certificate", ca_cert_der)
        .map_err(|_| DomainError::Internal("the CA certificate does not parse".into()))?;
    let ca_public = CaPublicKey::of_certificate(ca_cert_der)?;
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        // rcgen derives the CRL's AKI from the key with this method, not from
        // the CA certificate: pin it to the certificate's actual SKI.
        key_identifier_method: match asn1::subject_key_id(&ca) {
            Some(ski) => KeyIdMethod::PreSpecified(ski),
            None => KeyIdMethod::Sha256,
        },
    };
    let deferred = Deferred(&ca_public);
    let issuer = Issuer::from_ca_cert_der(&ca_cert_der.into(), &deferred)
        .map_err(internal("CA certificate as issuer"))?;
    let crl = params.signed_by(&issuer).map_err(|e| match e {
        rcgen::Error::IssuerNotCrlSigner => DomainError::Conflict(
            "the CA certificate's keyUsage does not allow signing CRLs (cRLSign)".into(),
        ),
        other => DomainError::Internal(format!("CRL: {other}")),
    })?;
    match x509_parser::parse_x509_crl(crl.der()) {
        Ok((_, parsed)) if parsed.issuer().as_raw() == ca.subject().as_raw() => {
            ToBeSigned::from_placeholder(crl.der(), &ca_public)
        }
        _ => Err(DomainError::Internal(
            "CRL issuer name differs from the CA's subject".into(),
        )),
    }
}

/// What a stored CRL says about itself: CRL number, thisUpdate, nextUpdate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlInfo {
    /// cRLNumber (0 when absent).
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate (thisUpdate when absent, i.e. stale at once).
    pub next_update: OffsetDateTime,
}

/// Reads the number and times of a DER CRL (one read back from the blob store).
pub fn crl_info(der: &[u8]) -> DomainResult<CrlInfo> {
    let (_, crl) = x509_parser::parse_x509_crl(der)
        .map_err(|e| DomainError::Internal(format!("stored CRL does not parse: {e}")))?;
    let this_update = crl.last_update().to_datetime();
    Ok(CrlInfo {
        number: crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        this_update,
        next_update: crl.next_update().map_or(this_update, |t| t.to_datetime()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testutil::{ca, now};
    use certflow_core::KeyType;
    use time::Duration;
    use x509_parser::extensions::ParsedExtension;

    #[test]
    fn crl_lists_entries_with_reasons_and_verifies() {
        for kt in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Ed25519] {
            let m = ca(kt);
            let t = now();
            let revoked = vec![
                RevokedEntry {
                    serial_hex: "4a1b2c".into(),
                    revoked_at: t - Duration::hours(1),
                    reason: RevocationReason::KeyCompromise,
                },
                RevokedEntry {
                    serial_hex: "0fff".into(),
                    revoked_at: t,
                    reason: RevocationReason::Unspecified,
                },
            ];
            let der = build_crl(
                &m.issuing_cert_der,
                &m.issuing_key,
                &revoked,
                42,
                t,
                t + Duration::days(7),
            )
            .unwrap();
            let (rest, crl) = x509_parser::parse_x509_crl(&der).unwrap();
            assert!(rest.is_empty());
            let (_, ca_cert) = x509_parser::parse_x509_certificate(&m.issuing_cert_der).unwrap();
            crl.verify_signature(ca_cert.public_key()).unwrap();
            assert_eq!(crl.crl_number().unwrap().to_string(), "42");
            let info = crl_info(&der).unwrap();
            assert_eq!(info.number, 42);
            assert_eq!(info.next_update - info.this_update, Duration::days(7));
            let entries: Vec<(String, Option<u8>)> = crl
                .iter_revoked_certificates()
                .map(|r| (r.raw_serial_as_string(), r.reason_code().map(|(_, c)| c.0)))
                .collect();
            assert_eq!(
                entries,
                vec![("4a:1b:2c".to_owned(), Some(1)), ("0f:ff".to_owned(), None)]
            );
            let aki = crl
                .extensions()
                .iter()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                });
            assert_eq!(aki, asn1::subject_key_id(&ca_cert));
            assert_eq!(
                crl.next_update().unwrap().to_datetime() - crl.last_update().to_datetime(),
                Duration::days(7)
            );
        }
    }

    #[test]
    fn rejects_bad_input() {
        let m = ca(KeyType::EcdsaP256);
        let t = now();
        let bad = [RevokedEntry {
            serial_hex: "xyz".into(),
            revoked_at: t,
            reason: RevocationReason::Superseded,
        }];
        let err = build_crl(&m.issuing_cert_der, &m.issuing_key, &bad, 1, t, t).unwrap_err();
        let DomainError::Invalid(errs) = err else {
            panic!()
        };
        assert_eq!(errs[0].field, "next_update");
        assert_eq!(errs[1].field, "revoked[0].serial_hex");
        let long = [RevokedEntry {
            serial_hex: "11".repeat(21),
            revoked_at: t,
            reason: RevocationReason::Superseded,
        }];
        assert!(
            build_crl(
                &m.issuing_cert_der,
                &m.issuing_key,
                &long,
                1,
                t,
                t + Duration::days(1)
            )
            .is_err()
        );
        assert!(matches!(
            build_crl(
                &m.issuing_cert_der,
                m.root_key.as_ref().unwrap(),
                &[],
                1,
                t,
                t + Duration::days(1)
            ),
            Err(DomainError::Internal(_))
        ));
    }
}
