//! OCSP (RFC 6960): request parsing, signed responses and the delegated
//! responder certificate that signs them.
//!
//! The ASN.1 is written by hand on the crate's DER helpers rather than with
//! RustCrypto's `x509-ocsp`: its only release (0.2) is built on `der` 0.7 and
//! `x509-cert` 0.2 while the workspace already carries `der` 0.8 and
//! `x509-cert` 0.3 (through `pkcs12`), so it would duplicate that whole
//! stack, and its builder signs through the `signature` traits that our
//! aws-lc-rs keys do not implement. The subset needed here (one request
//! shape in, one response shape out) is small, and both directions are
//! checked against OpenSSL in the unit tests and the end-to-end test.
//!
//! Responses are signed by a delegated responder (RFC 6960 §4.2.2.2): a
//! short-lived certificate with id-kp-OCSPSigning and id-pkix-ocsp-nocheck,
//! issued by the CA for a fresh P-256 key that only ever lives in memory. The
//! CA key is then unsealed once per responder lifetime instead of once per
//! response, so a flood of OCSP requests for distinct serials costs one
//! ECDSA signature each and never a key-provider (KMS) call; a stolen
//! responder key can only forge OCSP answers until its certificate expires.

use aws_lc_rs::digest::{self, SHA1_FOR_LEGACY_USE_ONLY, SHA256, SHA384, SHA512};
use certflow_core::{DomainError, DomainResult, KeyType, RevocationReason};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData,
};
use time::{Duration, OffsetDateTime};

use crate::asn1::{self, internal, parse_cert, tlv, whole_seconds};
use crate::inspect::key_matches_cert;
use crate::keys::PrivateKey;
use crate::signer::{CaPublicKey, Deferred, ToBeSigned};

/// Most certificates one request may ask about; OpenSSL asks about one.
pub const MAX_OCSP_CERTS: usize = 16;

/// id-pkix-ocsp-nonce (RFC 6960 §4.4.1), full TLV of the OID.
const OID_NONCE: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02,
];
/// id-pkix-ocsp-basic.
const OID_BASIC: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01,
];
/// id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1).
const ARC_NOCHECK: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5];
/// ecdsa-with-SHA256 AlgorithmIdentifier (RFC 5758 §3.2: no parameters).
const ALG_ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// OCSPResponseStatus (RFC 6960 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspResponseStatus {
    /// Response has valid confirmations.
    Successful = 0,
    /// Illegal confirmation request.
    MalformedRequest = 1,
    /// Internal error in issuer.
    InternalError = 2,
    /// Try again later.
    TryLater = 3,
    /// Request unauthorized (not an issuer this responder answers for).
    Unauthorized = 6,
}

/// An unsigned OCSPResponse carrying only an error status.
pub fn ocsp_error_response(status: OcspResponseStatus) -> Vec<u8> {
    tlv(0x30, &tlv(0x0a, &[status as u8]))
}

/// Hash algorithm of a CertID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspHash {
    /// SHA-1, what most clients (OpenSSL by default) send.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl OcspHash {
    fn from_oid(content: &[u8]) -> Option<Self> {
        Some(match content {
            [0x2b, 0x0e, 0x03, 0x02, 0x1a] => Self::Sha1,
            [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01] => Self::Sha256,
            [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02] => Self::Sha384,
            [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03] => Self::Sha512,
            _ => return None,
        })
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            Self::Sha1 => &SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &SHA256,
            Self::Sha384 => &SHA384,
            Self::Sha512 => &SHA512,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }
}

/// One certificate asked about (a Request's CertID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspCertId {
    /// The CertID's DER, echoed in the answer (RFC 6960 §4.2.2.3 matching).
    pub der: Vec<u8>,
    /// Hash algorithm of the two issuer hashes.
    pub hash: OcspHash,
    /// Hash of the issuer's subject DN DER.
    pub issuer_name_hash: Vec<u8>,
    /// Hash of the issuer's subjectPublicKey bits.
    pub issuer_key_hash: Vec<u8>,
    /// The serial as certflow stores it: lower-case hex, no leading zero
    /// octets.
    pub serial_hex: String,
}

/// A parsed OCSPRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspRequest {
    /// The certificates asked about, in order.
    pub certs: Vec<OcspCertId>,
    /// The whole nonce Extension (TLV), echoed in the response when present.
    pub nonce: Option<Vec<u8>>,
}

/// A minimal DER reader: definite lengths, one-octet tags.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    /// Next element: (tag, content, whole TLV).
    fn next(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), String> {
        let buf = self.0;
        let (&tag, rest) = buf.split_first().ok_or("truncated DER")?;
        if tag & 0x1f == 0x1f {
            return Err("multi-octet DER tags are not expected in OCSP".into());
        }
        let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err("indefinite or oversized DER length".into());
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len < 0x80 || rest[0] == 0 {
                return Err("non-minimal DER length".into());
            }
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err("DER length beyond the data".into());
        }
        let header = buf.len() - rest.len();
        self.0 = &rest[len..];
        Ok((tag, &rest[..len], &buf[..header + len]))
    }

    fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8], String> {
        match self.next()? {
            (t, content, _) if t == tag => Ok(content),
            (t, _, _) => Err(format!("{what}: expected tag {tag:#04x}, found {t:#04x}")),
        }
    }

    fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, String> {
        if self.peek() == Some(tag) {
            return self.next().map(|(_, content, _)| Some(content));
        }
        Ok(None)
    }
}

fn parse_cert_id(whole: &[u8], content: &[u8]) -> Result<OcspCertId, String> {
    let mut d = Der(content);
    let mut alg = Der(d.expect(0x30, "hashAlgorithm")?);
    let oid = alg.expect(0x06, "hashAlgorithm OID")?;
    let hash = OcspHash::from_oid(oid).ok_or("unsupported CertID hash algorithm")?;
    let issuer_name_hash = d.expect(0x04, "issuerNameHash")?.to_vec();
    let issuer_key_hash = d.expect(0x04, "issuerKeyHash")?.to_vec();
    let serial = d.expect(0x02, "serialNumber")?;
    if !d.is_empty() {
        return Err("trailing data in CertID".into());
    }
    if serial.is_empty() || serial.len() > asn1::MAX_SERIAL_LEN + 1 {
        return Err("serial number of an impossible length".into());
    }
    Ok(OcspCertId {
        der: whole.to_vec(),
        hash,
        issuer_name_hash,
        issuer_key_hash,
        serial_hex: hex::encode(asn1::strip_leading_zeros(serial)),
    })
}

/// Parses a DER OCSPRequest; the error says what is malformed (answer
/// `malformedRequest`). Signed requests are accepted, their signature is
/// ignored: certflow answers anyone (RFC 6960 §4.1.2).
pub fn parse_ocsp_request(der: &[u8]) -> Result<OcspRequest, String> {
    // The reader below checks tags and lengths; the DER rules of the values
    // (a serial's shortest INTEGER, a BOOLEAN's 0xFF) are checked here.
    crate::der_strict::check_der(der)?;
    let mut outer = Der(der);
    let request = outer.expect(0x30, "OCSPRequest")?;
    if !outer.is_empty() {
        return Err("trailing data after the OCSPRequest".into());
    }
    let mut request = Der(request);
    let mut tbs = Der(request.expect(0x30, "tbsRequest")?);
    request.optional(0xa0)?; // optionalSignature
    if !request.is_empty() {
        return Err("trailing data in the OCSPRequest".into());
    }
    if let Some(version) = tbs.optional(0xa0)?
        && version != [0x02, 0x01, 0x00]
    {
        return Err("only OCSP version 1 is supported".into());
    }
    tbs.optional(0xa1)?; // requestorName
    let mut list = Der(tbs.expect(0x30, "requestList")?);
    let mut nonce = None;
    if let Some(exts) = tbs.optional(0xa2)? {
        let mut exts = Der(Der(exts).expect(0x30, "requestExtensions")?);
        while !exts.is_empty() {
            let (tag, content, whole) = exts.next()?;
            if tag != 0x30 {
                return Err("an extension is not a SEQUENCE".into());
            }
            if content.starts_with(OID_NONCE) {
                let mut ext = Der(&content[OID_NONCE.len()..]);
                ext.optional(0x01)?; // critical
                let value = ext.expect(0x04, "nonce extnValue")?;
                // RFC 8954 §2.1: 1 to 32 octets in the inner OCTET STRING.
                let inner = Der(value).expect(0x04, "nonce").unwrap_or(value);
                if inner.is_empty() || inner.len() > 32 {
                    return Err("the nonce must be 1 to 32 octets (RFC 8954)".into());
                }
                nonce = Some(whole.to_vec());
            }
        }
    }
    if !tbs.is_empty() {
        return Err("trailing data in the tbsRequest".into());
    }
    let mut certs = Vec::new();
    while !list.is_empty() {
        let mut req = Der(list.expect(0x30, "Request")?);
        let (tag, content, whole) = req.next()?;
        if tag != 0x30 {
            return Err("reqCert is not a CertID".into());
        }
        certs.push(parse_cert_id(whole, content)?);
        req.optional(0xa0)?; // singleRequestExtensions
        if !req.is_empty() {
            return Err("trailing data in a Request".into());
        }
    }
    if certs.is_empty() || certs.len() > MAX_OCSP_CERTS {
        return Err(format!(
            "a request asks about 1 to {MAX_OCSP_CERTS} certificates"
        ));
    }
    Ok(OcspRequest { certs, nonce })
}

/// The issuer hashes a CertID must carry to be about this CA.
#[derive(Debug, Clone)]
pub struct OcspIssuer {
    subject_der: Vec<u8>,
    key_bits: Vec<u8>,
}

impl OcspIssuer {
    /// From the CA certificate's DER.
    pub fn new(ca_cert_der: &[u8]) -> DomainResult<Self> {
        let ca = parse_cert("issuer", ca_cert_der)?;
        Ok(Self {
            subject_der: ca.subject().as_raw().to_vec(),
            key_bits: ca.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Whether `id` names this CA as the issuer.
    pub fn issued(&self, id: &OcspCertId) -> bool {
        id.hash.digest(&self.subject_der) == id.issuer_name_hash
            && id.hash.digest(&self.key_bits) == id.issuer_key_hash
    }
}

/// What the responder says about one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspCertStatus {
    /// Issued by this CA and not revoked.
    Good,
    /// Revoked at this time for this reason.
    Revoked {
        /// When certflow processed the revocation.
        at: OffsetDateTime,
        /// RFC 5280 reason (unspecified is sent without a reason, as on the CRL).
        reason: RevocationReason,
    },
    /// This CA never issued that serial.
    Unknown,
}

/// One SingleResponse to sign.
#[derive(Debug, Clone)]
pub struct OcspAnswer {
    /// The CertID as asked (its DER).
    pub cert_id_der: Vec<u8>,
    /// The status.
    pub status: OcspCertStatus,
    /// thisUpdate: when the status was known to be correct.
    pub this_update: OffsetDateTime,
    /// nextUpdate: when newer information will be available.
    pub next_update: OffsetDateTime,
}

fn generalized_time(t: OffsetDateTime) -> DomainResult<Vec<u8>> {
    let t = whole_seconds(t)?;
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    Ok(tlv(0x18, text.as_bytes()))
}

fn single_response(a: &OcspAnswer) -> DomainResult<Vec<u8>> {
    let status = match a.status {
        OcspCertStatus::Good => vec![0x80, 0x00],
        OcspCertStatus::Unknown => vec![0x82, 0x00],
        OcspCertStatus::Revoked { at, reason } => {
            let mut info = generalized_time(at)?;
            // As on the CRL (RFC 5280 §5.3.1): unspecified goes without a reason.
            if reason != RevocationReason::Unspecified {
                info.extend(tlv(0xa0, &tlv(0x0a, &[reason.code()])));
            }
            tlv(0xa1, &info)
        }
    };
    let mut body = a.cert_id_der.clone();
    body.extend(status);
    body.extend(generalized_time(a.this_update)?);
    body.extend(tlv(0xa0, &generalized_time(a.next_update)?));
    Ok(tlv(0x30, &body))
}

/// A delegated OCSP responder: its certificate (issued by the CA) and its
/// in-memory key.
pub struct OcspSigner {
    key: PrivateKey,
    cert_der: Vec<u8>,
    key_hash: Vec<u8>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for OcspSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OcspSigner(not_after {}, <key redacted>)",
            self.not_after
        )
    }
}

/// A responder key waiting for the CA to certify it: [`OcspSigner::prepare`]
/// made it, the CA key signs [`Self::tbs`], [`Self::finish`] makes the signer.
pub struct PendingOcspSigner {
    key: PrivateKey,
    tbs: ToBeSigned,
    key_hash: Vec<u8>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for PendingOcspSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingOcspSigner(<key redacted>)")
    }
}

impl PendingOcspSigner {
    /// What the CA key signs: the responder certificate's TBS.
    pub fn tbs(&self) -> &ToBeSigned {
        &self.tbs
    }

    /// The responder, once `signature` (by the CA key over [`Self::tbs`]) verifies.
    pub fn finish(self, signature: &[u8]) -> DomainResult<OcspSigner> {
        Ok(OcspSigner {
            cert_der: self.tbs.finish(signature)?,
            key: self.key,
            key_hash: self.key_hash,
            not_after: self.not_after,
        })
    }
}

impl OcspSigner {
    /// Generates a P-256 key and has the CA certify it for OCSP signing for
    /// `validity` (capped at the CA's own notAfter).
    pub fn issue(
        ca_cert_der: &[u8],
        ca_key: &PrivateKey,
        now: OffsetDateTime,
        validity: Duration,
    ) -> DomainResult<Self> {
        if !key_matches_cert(ca_key, ca_cert_der) {
            return Err(DomainError::Internal(
                "the CA certificate is not a CA or does not match its key".into(),
            ));
        }
        let pending = Self::prepare(ca_cert_der, now, validity)?;
        let signature = ca_key.sign(pending.tbs().message())?;
        pending.finish(&signature)
    }

    /// Generates the responder's P-256 key and the certificate the CA key
    /// must sign for it (id-kp-OCSPSigning, id-pkix-ocsp-nocheck, valid for
    /// `validity` capped at the CA's notAfter), wherever the CA key lives.
    pub fn prepare(
        ca_cert_der: &[u8],
        now: OffsetDateTime,
        validity: Duration,
    ) -> DomainResult<PendingOcspSigner> {
        let ca = parse_cert("issuer", ca_cert_der)
            .map_err(|_| DomainError::Internal("the CA certificate does not parse".into()))?;
        if !ca.is_ca() {
            return Err(DomainError::Internal(
                "the CA certificate is not a CA".into(),
            ));
        }
        let now = whole_seconds(now)?;
        let ca_not_after = ca.validity().not_after.to_datetime();
        if ca_not_after <= now {
            return Err(DomainError::Conflict(format!(
                "the CA expired at {ca_not_after}"
            )));
        }
        let key = PrivateKey::generate(KeyType::EcdsaP256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let ca_cn = ca
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("certflow CA");
        let cn: String = format!("{ca_cn} OCSP responder").chars().take(64).collect();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.serial_number = Some(asn1::random_serial()?);
        params.not_before = now - Duration::minutes(1);
        params.not_after = (now + validity).min(ca_not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method =
            asn1::key_identifier(key.signing_key_pair().get().der_bytes());
        // id-pkix-ocsp-nocheck, value NULL: clients need not check the
        // responder's own status (it is short-lived instead).
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                ARC_NOCHECK,
                vec![0x05, 0x00],
            ));
        let ca_public = CaPublicKey::of_certificate(ca_cert_der)?;
        let deferred = Deferred(&ca_public);
        let issuer = Issuer::from_ca_cert_der(&ca_cert_der.into(), &deferred)
            .map_err(internal("CA certificate as issuer"))?;
        let placeholder = params
            .signed_by(key.signing_key_pair().get(), &issuer)
            .map_err(internal("OCSP responder certificate"))?;
        let key_hash = OcspHash::Sha1.digest(key.signing_key_pair().get().der_bytes());
        Ok(PendingOcspSigner {
            tbs: ToBeSigned::from_placeholder(placeholder.der(), &ca_public)?,
            key,
            key_hash,
            not_after: params.not_after,
        })
    }

    /// The responder certificate's DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// When the responder certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A successful OCSPResponse (BasicOCSPResponse, responder by key hash,
    /// the responder certificate included) answering `answers`, with the
    /// request's nonce extension echoed when given.
    pub fn sign(
        &self,
        answers: &[OcspAnswer],
        nonce: Option<&[u8]>,
        produced_at: OffsetDateTime,
    ) -> DomainResult<Vec<u8>> {
        let mut data = tlv(0xa2, &tlv(0x04, &self.key_hash)); // responderID byKey
        data.extend(generalized_time(produced_at)?);
        let mut responses = Vec::new();
        for a in answers {
            responses.extend(single_response(a)?);
        }
        data.extend(tlv(0x30, &responses));
        if let Some(nonce) = nonce {
            data.extend(tlv(0xa1, &tlv(0x30, nonce)));
        }
        let tbs = tlv(0x30, &data);
        let signature = self
            .key
            .sign(&tbs)
            .map_err(|_| DomainError::Internal("OCSP response signature failed".into()))?;
        let mut bits = vec![0x00];
        bits.extend(signature);
        let mut basic = tbs;
        basic.extend_from_slice(ALG_ECDSA_SHA256);
        basic.extend(tlv(0x03, &bits));
        basic.extend(tlv(0xa0, &tlv(0x30, &self.cert_der)));
        let basic = tlv(0x30, &basic);
        let mut bytes = OID_BASIC.to_vec();
        bytes.extend(tlv(0x04, &basic));
        let mut out = tlv(0x0a, &[OcspResponseStatus::Successful as u8]);
        out.extend(tlv(0xa0, &tlv(0x30, &bytes)));
        Ok(tlv(0x30, &out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::testutil::{ca, now};
    use x509_parser::prelude::FromDer;

    /// A request as OpenSSL builds it (`openssl ocsp -reqout`): SHA-1
    /// CertID for serial 0x4a1b2c of the given CA, with a nonce.
    fn request(ca_der: &[u8], serial: &[u8], nonce: Option<&[u8]>) -> Vec<u8> {
        let issuer = OcspIssuer::new(ca_der).unwrap();
        let alg = tlv(
            0x30,
            &[tlv(0x06, &[0x2b, 0x0e, 0x03, 0x02, 0x1a]), vec![0x05, 0x00]].concat(),
        );
        let cert_id = tlv(
            0x30,
            &[
                alg,
                tlv(0x04, &OcspHash::Sha1.digest(&issuer.subject_der)),
                tlv(0x04, &OcspHash::Sha1.digest(&issuer.key_bits)),
                tlv(0x02, serial),
            ]
            .concat(),
        );
        let mut tbs = tlv(0x30, &tlv(0x30, &cert_id));
        if let Some(n) = nonce {
            let ext = tlv(
                0x30,
                &[OID_NONCE.to_vec(), tlv(0x04, &tlv(0x04, n))].concat(),
            );
            tbs.extend(tlv(0xa2, &tlv(0x30, &ext)));
        }
        tlv(0x30, &tlv(0x30, &tbs))
    }

    #[test]
    fn parses_requests_and_matches_the_issuer() {
        let m = ca(KeyType::EcdsaP256);
        let other = ca(KeyType::Ed25519);
        let der = request(&m.issuing_cert_der, &[0x00, 0x8a, 0x1b], Some(&[7; 16]));
        let req = parse_ocsp_request(&der).unwrap();
        assert_eq!(req.certs.len(), 1);
        assert_eq!(req.certs[0].serial_hex, "8a1b");
        assert_eq!(req.certs[0].hash, OcspHash::Sha1);
        assert!(req.nonce.as_ref().unwrap().starts_with(&[0x30]));
        assert!(
            OcspIssuer::new(&m.issuing_cert_der)
                .unwrap()
                .issued(&req.certs[0])
        );
        assert!(
            !OcspIssuer::new(&other.issuing_cert_der)
                .unwrap()
                .issued(&req.certs[0])
        );
        assert!(
            parse_ocsp_request(&request(&m.issuing_cert_der, &[1], None))
                .unwrap()
                .nonce
                .is_none()
        );
    }

    #[test]
    fn refuses_malformed_requests() {
        let m = ca(KeyType::EcdsaP256);
        let good = request(&m.issuing_cert_der, &[1], None);
        let mut trailing = good.clone();
        trailing.push(0);
        let too_long_nonce = request(&m.issuing_cert_der, &[1], Some(&[1; 33]));
        let empty_list = tlv(0x30, &tlv(0x30, &tlv(0x30, &[])));
        let padded_serial = request(&m.issuing_cert_der, &[0x00, 0x01], None);
        for (bad, why) in [
            // 4 SEQUENCE headers, CertID's, its AlgorithmIdentifier (11) and
            // two SHA-1 OCTET STRINGs (22 each) precede the serial: byte 65.
            (
                padded_serial,
                "INTEGER at byte 65 has a redundant leading 0x00",
            ),
            (b"garbage".to_vec(), "beyond"),
            (vec![0x04, 0x00], "expected tag"),
            (vec![], "truncated"),
            (good[..good.len() - 1].to_vec(), "beyond"),
            (trailing, "trailing"),
            (too_long_nonce, "nonce"),
            (empty_list, "1 to 16"),
            (vec![0x30, 0x80, 0x00, 0x00], "indefinite"),
        ] {
            let err = parse_ocsp_request(&bad).unwrap_err();
            assert!(err.contains(why), "{err} should mention {why}");
        }
    }

    #[test]
    fn error_responses_are_bare_statuses() {
        assert_eq!(
            ocsp_error_response(OcspResponseStatus::MalformedRequest),
            vec![0x30, 0x03, 0x0a, 0x01, 0x01]
        );
        assert_eq!(
            ocsp_error_response(OcspResponseStatus::Unauthorized),
            vec![0x30, 0x03, 0x0a, 0x01, 0x06]
        );
    }

    #[test]
    fn signed_response_verifies_under_the_delegated_responder() {
        for kt in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Ed25519] {
            let m = ca(kt);
            let t = now();
            let signer =
                OcspSigner::issue(&m.issuing_cert_der, &m.issuing_key, t, Duration::days(1))
                    .unwrap();
            // The responder certificate: issued by the CA, OCSPSigning, nocheck.
            let (_, rc) =
                x509_parser::certificate::X509Certificate::from_der(signer.certificate_der())
                    .unwrap();
            let (_, ca_cert) =
                x509_parser::certificate::X509Certificate::from_der(&m.issuing_cert_der).unwrap();
            rc.verify_signature(Some(ca_cert.public_key())).unwrap();
            assert!(rc.extended_key_usage().unwrap().unwrap().value.ocsp_signing);
            assert!(
                rc.iter_extensions()
                    .any(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.48.1.5")
            );
            assert!(signer.not_after() <= t + Duration::days(1));

            let req =
                parse_ocsp_request(&request(&m.issuing_cert_der, &[0x4a], Some(&[9; 16]))).unwrap();
            let answers: Vec<OcspAnswer> = [
                OcspCertStatus::Good,
                OcspCertStatus::Revoked {
                    at: t - Duration::hours(1),
                    reason: RevocationReason::KeyCompromise,
                },
                OcspCertStatus::Unknown,
            ]
            .into_iter()
            .map(|status| OcspAnswer {
                cert_id_der: req.certs[0].der.clone(),
                status,
                this_update: t,
                next_update: t + Duration::hours(1),
            })
            .collect();
            let der = signer.sign(&answers, req.nonce.as_deref(), t).unwrap();
            // Walk it back: status 0, basic response, signature over tbs.
            let mut outer = Der(&der);
            let mut resp = Der(outer.expect(0x30, "resp").unwrap());
            assert_eq!(resp.expect(0x0a, "status").unwrap(), &[0]);
            let mut bytes = Der(Der(resp.expect(0xa0, "bytes").unwrap())
                .expect(0x30, "rb")
                .unwrap());
            assert_eq!(bytes.next().unwrap().2, OID_BASIC);
            let basic = bytes.expect(0x04, "basic").unwrap();
            let mut basic = Der(Der(basic).expect(0x30, "basic").unwrap());
            let (_, tbs_content, tbs) = basic.next().unwrap();
            assert_eq!(basic.next().unwrap().2, ALG_ECDSA_SHA256);
            let sig = basic.expect(0x03, "sig").unwrap();
            let spki = rc.public_key().subject_public_key.data.to_vec();
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
                &spki,
            )
            .verify(tbs, &sig[1..])
            .unwrap();
            let mut tbs = Der(tbs_content);
            let responder = tbs.expect(0xa2, "responderID").unwrap();
            assert_eq!(
                Der(responder).expect(0x04, "hash").unwrap(),
                OcspHash::Sha1.digest(&spki)
            );
            tbs.expect(0x18, "producedAt").unwrap();
            let mut singles = Der(tbs.expect(0x30, "responses").unwrap());
            let mut statuses = Vec::new();
            while !singles.is_empty() {
                let mut single = Der(singles.expect(0x30, "single").unwrap());
                assert_eq!(single.next().unwrap().2, req.certs[0].der.as_slice());
                statuses.push(single.next().unwrap().2.to_vec());
            }
            assert_eq!(statuses[0], vec![0x80, 0x00]);
            assert_eq!(statuses[1][0], 0xa1);
            assert!(
                statuses[1].ends_with(&[0xa0, 0x03, 0x0a, 0x01, 0x01]),
                "keyCompromise = 1"
            );
            assert_eq!(statuses[2], vec![0x82, 0x00]);
            let exts = tbs.expect(0xa1, "responseExtensions").unwrap();
            assert_eq!(
                Der(exts).expect(0x30, "exts").unwrap(),
                req.nonce.as_deref().unwrap()
            );
        }
    }
}
