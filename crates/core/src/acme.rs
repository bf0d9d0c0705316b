//! certflow's ACME server (RFC 8555, RFC 9773 renewal information, RFC 8737
//! tls-alpn-01): accounts bound to teams by External Account Binding, orders,
//! authorizations, challenges and replay nonces; the [`AcmeStore`] port that
//! keeps them in the metadata database (so any replica answers any request),
//! the [`ChallengeValidator`] port that proves control of an identifier, and
//! [`AcmeError`], the use cases' error that maps one to one onto ACME problem
//! documents (`urn:ietf:params:acme:error:*`).
//!
//! The protocol layer verifies JWS signatures and EAB MACs and computes RFC
//! 7638 thumbprints; everything here receives inputs already verified.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{DomainError, DomainResult};
use crate::model::AuditEvent;

/// Prefix of every ACME problem type (RFC 8555 §6.7).
pub const ACME_ERROR_PREFIX: &str = "urn:ietf:params:acme:error:";

/// The certificate label naming the ACME account that ordered it.
pub const ACME_ACCOUNT_LABEL: &str = "acme_account";

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The protocol's (and the database's) spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }

            /// Parses the protocol's spelling.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(
    /// An account's status (RFC 8555 §7.1.2).
    AccountStatus {
        /// May order.
        Valid = "valid",
        /// Closed by its holder; refused from then on.
        Deactivated = "deactivated",
        /// Closed by the server.
        Revoked = "revoked",
    }
);

str_enum!(
    /// An order's status (RFC 8555 §7.1.6).
    OrderStatus {
        /// Some authorization is not valid yet.
        Pending = "pending",
        /// Every authorization is valid: finalize may be called.
        Ready = "ready",
        /// Finalize was accepted; the certificate is being issued.
        Processing = "processing",
        /// The certificate is issued.
        Valid = "valid",
        /// An authorization failed, the order expired or issuance failed.
        Invalid = "invalid",
    }
);

str_enum!(
    /// An authorization's status (RFC 8555 §7.1.6).
    AuthzStatus {
        /// No challenge succeeded yet.
        Pending = "pending",
        /// A challenge succeeded.
        Valid = "valid",
        /// A challenge failed.
        Invalid = "invalid",
        /// Deactivated by the account.
        Deactivated = "deactivated",
        /// Its lifetime ended.
        Expired = "expired",
        /// Revoked by the server.
        Revoked = "revoked",
    }
);

str_enum!(
    /// A challenge's status (RFC 8555 §7.1.6).
    ChallengeStatus {
        /// Not answered yet.
        Pending = "pending",
        /// Answered: a validation worker will (re)try it.
        Processing = "processing",
        /// Validated.
        Valid = "valid",
        /// Failed for good.
        Invalid = "invalid",
    }
);

str_enum!(
    /// The challenge types certflow validates.
    ChallengeType {
        /// RFC 8555 §8.3: GET `http://<name>/.well-known/acme-challenge/<token>`.
        Http01 = "http-01",
        /// RFC 8555 §8.4: TXT `_acme-challenge.<name>`.
        Dns01 = "dns-01",
        /// RFC 8737: TLS with ALPN `acme-tls/1` and the acmeIdentifier extension.
        TlsAlpn01 = "tls-alpn-01",
    }
);

str_enum!(
    /// The identifier types certflow certifies (RFC 8555 §9.7.7, RFC 8738).
    IdentifierType {
        /// A DNS name, possibly a wildcard (`*.example.com`).
        Dns = "dns",
        /// An IPv4 or IPv6 address.
        Ip = "ip",
    }
);

/// An identifier of an order or authorization (`{"type": "dns", "value": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AcmeIdentifier {
    /// `dns` or `ip`.
    #[serde(rename = "type")]
    pub kind: IdentifierType,
    /// The name (lower-case A-labels, `*.` kept in orders) or the address as text.
    pub value: String,
}

impl AcmeIdentifier {
    /// A DNS identifier.
    pub fn dns(value: impl Into<String>) -> Self {
        Self {
            kind: IdentifierType::Dns,
            value: value.into(),
        }
    }

    /// An IP identifier.
    pub fn ip(value: impl Into<String>) -> Self {
        Self {
            kind: IdentifierType::Ip,
            value: value.into(),
        }
    }

    /// Whether it is a wildcard DNS name.
    pub fn is_wildcard(&self) -> bool {
        self.kind == IdentifierType::Dns && self.value.starts_with("*.")
    }

    /// The identifier an authorization is for: a wildcard's base name
    /// (RFC 8555 §7.1.4: the authorization carries `wildcard: true` instead).
    pub fn authorization_identifier(&self) -> AcmeIdentifier {
        match self.value.strip_prefix("*.") {
            Some(base) if self.kind == IdentifierType::Dns => AcmeIdentifier::dns(base),
            _ => self.clone(),
        }
    }
}

/// An ACME account: a public key, bound to the team whose policy its orders obey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcmeAccount {
    /// UUIDv7; the account URL ends with it.
    pub id: Uuid,
    /// The team its certificates belong to (from its EAB key or `default_team`).
    pub team: String,
    /// The account's public key as a JWK (public members only).
    pub jwk: serde_json::Value,
    /// RFC 7638 SHA-256 thumbprint of `jwk`, base64url without padding (unique).
    pub thumbprint: String,
    /// valid, deactivated or revoked.
    pub status: AccountStatus,
    /// `mailto:` URLs.
    pub contact: Vec<String>,
    /// The EAB key it was created with, if any.
    pub eab_key_id: Option<String>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change (status, contact, key).
    pub updated_at: OffsetDateTime,
}

/// An External Account Binding key: created by an operator of `team`, bound
/// to at most one account. Its HMAC key is stored sealed only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EabKey {
    /// The `kid` a client puts in its EAB JWS (random, URL-safe).
    pub key_id: String,
    /// The team an account bound with it belongs to.
    pub team: String,
    /// The HMAC key sealed under the master key (opaque text; never shown).
    #[serde(skip_serializing)]
    pub hmac_sealed: String,
    /// Who created it (audit subject).
    pub created_by: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// After this it binds no account.
    pub expires_at: OffsetDateTime,
    /// When an operator revoked it, if so.
    pub revoked_at: Option<OffsetDateTime>,
    /// The account it bound, once used.
    pub account_id: Option<Uuid>,
}

impl EabKey {
    /// Whether it may bind an account at `now`: not revoked, unexpired, unused.
    pub fn usable(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now && self.account_id.is_none()
    }
}

/// An order (RFC 8555 §7.1.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcmeOrder {
    /// UUIDv7.
    pub id: Uuid,
    /// The account that placed it.
    pub account_id: Uuid,
    /// The issuer whose directory it was placed at.
    pub issuer_id: Uuid,
    /// pending, ready, processing, valid, invalid.
    pub status: OrderStatus,
    /// What the certificate will certify, in request order, deduplicated.
    pub identifiers: Vec<AcmeIdentifier>,
    /// Its authorizations, one per identifier, in the same order.
    pub authorization_ids: Vec<Uuid>,
    /// After this a pending or ready order is invalid.
    pub expires: OffsetDateTime,
    /// The issued certificate, once valid.
    pub certificate_id: Option<Uuid>,
    /// Which version of it.
    pub certificate_version: Option<u32>,
    /// Why it is invalid: an ACME problem document.
    pub error: Option<serde_json::Value>,
    /// RFC 9773 `replaces`: the ARI certificate identifier it renews.
    pub replaces: Option<String>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// An authorization (RFC 8555 §7.1.4), with its challenges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcmeAuthorization {
    /// UUIDv7.
    pub id: Uuid,
    /// The account it belongs to (authorizations are never shared).
    pub account_id: Uuid,
    /// What it authorizes (a wildcard's base name, see `wildcard`).
    pub identifier: AcmeIdentifier,
    /// Whether it was created for `*.<identifier>` (then only dns-01 is offered).
    pub wildcard: bool,
    /// pending, valid, invalid, deactivated, expired, revoked.
    pub status: AuthzStatus,
    /// End of its lifetime (pending: to be answered; valid: to be reused).
    pub expires: OffsetDateTime,
    /// Its challenges, in the order offered.
    pub challenges: Vec<AcmeChallenge>,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

impl AcmeAuthorization {
    /// The status as the client sees it at `now`: a pending or valid
    /// authorization past its lifetime is expired even before the sweep.
    pub fn status_at(&self, now: OffsetDateTime) -> AuthzStatus {
        match self.status {
            AuthzStatus::Pending | AuthzStatus::Valid if self.expires <= now => {
                AuthzStatus::Expired
            }
            s => s,
        }
    }
}

/// A challenge (RFC 8555 §8) and its validation state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcmeChallenge {
    /// UUIDv7.
    pub id: Uuid,
    /// Its authorization.
    pub authz_id: Uuid,
    /// http-01, dns-01 or tls-alpn-01.
    pub kind: ChallengeType,
    /// 128 random bits, base64url (RFC 8555 §8.3: at least 128 bits of entropy).
    pub token: String,
    /// pending, processing, valid, invalid.
    pub status: ChallengeStatus,
    /// Validation attempts started so far.
    pub attempts: u32,
    /// When a worker may try it next (processing only).
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Until when a worker holds it (other workers skip it meanwhile).
    pub lease_until: Option<OffsetDateTime>,
    /// The last failure: an ACME problem document.
    pub error: Option<serde_json::Value>,
    /// When it was validated.
    pub validated_at: Option<OffsetDateTime>,
}

/// RFC 8555 §8.1 key authorization: `token || '.' || base64url(thumbprint)`.
pub fn key_authorization(token: &str, thumbprint: &str) -> String {
    format!("{token}.{thumbprint}")
}

/// How one validation attempt ended, as a worker records it.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidationOutcome {
    /// Control proven: the challenge and its authorization become valid.
    Valid,
    /// Failed; tried again at `next_attempt_at` (the challenge stays processing).
    Retry {
        /// When.
        next_attempt_at: OffsetDateTime,
        /// The failure, an ACME problem document (shown on the challenge meanwhile).
        error: serde_json::Value,
    },
    /// Failed for good: the challenge and its authorization become invalid.
    Invalid {
        /// The failure, an ACME problem document.
        error: serde_json::Value,
    },
}

/// The ACME-side record of an issued certificate: who ordered it and whether
/// "renew now" moved its renewal window (RFC 9773).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcmeCertificate {
    /// The managed certificate (inventory) it is.
    pub certificate_id: Uuid,
    /// Its version.
    pub version: u32,
    /// The order that issued it.
    pub order_id: Uuid,
    /// The account that ordered it.
    pub account_id: Uuid,
    /// Serial, lower-case hex (as in `CertificateVersion`).
    pub serial: String,
    /// Set by "renew now": the renewal window starts here.
    pub renew_now_at: Option<OffsetDateTime>,
}

/// What the sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmePurge {
    /// Expired nonces.
    pub nonces: u64,
    /// Orders past their expiry (unfinished) or past retention (finished).
    pub orders: u64,
    /// Authorizations past their expiry, no longer named by any order.
    pub authorizations: u64,
}

/// The ACME server's state in the metadata database. Every write that a
/// person or account caused commits its audit event in the same transaction.
/// Compare-and-set methods answer `Conflict` when the row moved meanwhile.
#[async_trait]
pub trait AcmeStore: Send + Sync {
    /// Stores a new EAB key (`Conflict` if the key id exists).
    async fn insert_eab_key(&self, key: &EabKey, audit: &AuditEvent) -> DomainResult<()>;
    /// One EAB key, whatever its state.
    async fn get_eab_key(&self, key_id: &str) -> DomainResult<Option<EabKey>>;
    /// EAB keys of `teams` (all when `None`), newest first, at most `limit`.
    async fn list_eab_keys(
        &self,
        teams: Option<&[String]>,
        limit: u32,
    ) -> DomainResult<Vec<EabKey>>;
    /// Revokes an unrevoked key at `now`; `NotFound` if absent, `Conflict` if
    /// already revoked. Returns the key as stored afterwards.
    async fn revoke_eab_key(
        &self,
        key_id: &str,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<EabKey>;

    /// Stores a new account; with `account.eab_key_id`, consumes that key in
    /// the same transaction (unrevoked, unexpired at `now`, unused and of the
    /// account's team, else `Forbidden` and nothing changes: of two accounts
    /// racing for one key exactly one is created). `Conflict` if an account
    /// with the thumbprint exists.
    async fn create_account(
        &self,
        account: &AcmeAccount,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// One account.
    async fn get_account(&self, id: Uuid) -> DomainResult<Option<AcmeAccount>>;
    /// The account of an RFC 7638 thumbprint.
    async fn get_account_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> DomainResult<Option<AcmeAccount>>;
    /// Overwrites status and contact (and `updated_at`) if the account's
    /// status is still `expected` (`Conflict` otherwise; `NotFound` if absent).
    async fn update_account(
        &self,
        account: &AcmeAccount,
        expected: AccountStatus,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// Replaces a valid account's key if its thumbprint is still
    /// `old_thumbprint` (`Conflict` otherwise, or if another account has the
    /// new key).
    async fn change_account_key(
        &self,
        id: Uuid,
        old_thumbprint: &str,
        jwk: &serde_json::Value,
        thumbprint: &str,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()>;

    /// A pending or valid authorization of the account for `identifier` and
    /// `wildcard` that is still alive at `valid_until` (reuse), newest first.
    async fn find_reusable_authorization(
        &self,
        account_id: Uuid,
        identifier: &AcmeIdentifier,
        wildcard: bool,
        valid_until: OffsetDateTime,
    ) -> DomainResult<Option<AcmeAuthorization>>;
    /// Stores the order and its new authorizations (with their challenges) in
    /// one transaction, if the account has fewer than `max_open_orders`
    /// pending, ready or processing unexpired orders at `order.created_at`
    /// (`Conflict` naming the limit otherwise).
    async fn create_order(
        &self,
        order: &AcmeOrder,
        new_authorizations: &[AcmeAuthorization],
        max_open_orders: u32,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// One order.
    async fn get_order(&self, id: Uuid) -> DomainResult<Option<AcmeOrder>>;
    /// Overwrites status, certificate, error and `updated_at` if the order's
    /// status is still `expected` (`Conflict` otherwise); appends `audit` if given.
    async fn update_order(
        &self,
        order: &AcmeOrder,
        expected: OrderStatus,
        audit: Option<&AuditEvent>,
    ) -> DomainResult<()>;
    /// One authorization with its challenges.
    async fn get_authorization(&self, id: Uuid) -> DomainResult<Option<AcmeAuthorization>>;
    /// Sets an authorization's status if it is still `expected` (`Conflict` otherwise).
    async fn set_authorization_status(
        &self,
        id: Uuid,
        expected: AuthzStatus,
        status: AuthzStatus,
        audit: &AuditEvent,
    ) -> DomainResult<()>;
    /// One challenge.
    async fn get_challenge(&self, id: Uuid) -> DomainResult<Option<AcmeChallenge>>;
    /// Marks a pending challenge of a pending authorization processing, due
    /// at `now`; returns whether it changed (`false`: it was answered before).
    async fn start_challenge(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<bool>;
    /// Leases up to `limit` processing challenges due at `now` (and not
    /// leased) until `lease_until`, counting an attempt on each; concurrent
    /// workers on any replica never get the same challenge while leased.
    async fn claim_due_challenges(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<AcmeChallenge>>;
    /// Records an attempt's outcome if the challenge is still processing at
    /// `attempts` (the worker's lease); `Valid`/`Invalid` move its
    /// authorization too (if still pending), in one transaction, with
    /// `audit`. `Conflict` if another worker recorded meanwhile.
    async fn finish_challenge(
        &self,
        id: Uuid,
        attempts: u32,
        outcome: &ValidationOutcome,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()>;

    /// Records an issued certificate's ACME origin (no audit: the issuance audits).
    async fn insert_acme_certificate(&self, cert: &AcmeCertificate) -> DomainResult<()>;
    /// The ACME record of a certificate version by serial (lower-case hex).
    async fn get_acme_certificate(&self, serial: &str) -> DomainResult<Option<AcmeCertificate>>;
    /// The ACME records of a certificate, newest version first.
    async fn acme_certificates_of(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<AcmeCertificate>>;
    /// "Renew now": sets `renew_now_at` on every version of the certificate;
    /// returns how many (0: not an ACME certificate).
    async fn set_renew_now(
        &self,
        certificate_id: Uuid,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<u64>;

    /// Stores a fresh nonce, valid until `expires_at`.
    async fn insert_nonce(&self, nonce: &str, expires_at: OffsetDateTime) -> DomainResult<()>;
    /// Consumes a nonce: `true` exactly once per nonce unexpired at `now`,
    /// across every replica.
    async fn take_nonce(&self, nonce: &str, now: OffsetDateTime) -> DomainResult<bool>;
    /// Deletes expired nonces, unfinished orders expired at `now`, finished
    /// orders created before `finished_before`, and expired authorizations no
    /// remaining order names.
    async fn purge_expired_acme(
        &self,
        now: OffsetDateTime,
        finished_before: OffsetDateTime,
    ) -> DomainResult<AcmePurge>;
}

/// Why a validation attempt failed: an ACME problem type and a detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem_type}: {detail}")]
pub struct AcmeValidationError {
    /// `connection`, `incorrectResponse`, `dns`, `tls`, `unauthorized`...
    pub problem_type: &'static str,
    /// What was seen (no secrets).
    pub detail: String,
}

/// Proves control of an identifier by one challenge type (through the
/// outbound policy and the configured resolver; never on a request handler).
#[async_trait]
pub trait ChallengeValidator: Send + Sync {
    /// One attempt. `identifier` is the authorization's (a wildcard's base name).
    async fn validate(
        &self,
        challenge_type: ChallengeType,
        identifier: &AcmeIdentifier,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeValidationError>;
}

str_enum!(
    /// ACME problem types (RFC 8555 §6.7, RFC 9773) the use cases return.
    AcmeErrorKind {
        /// The request message was malformed.
        Malformed = "malformed",
        /// The client lacks sufficient authorization.
        Unauthorized = "unauthorized",
        /// The account does not exist (or was never created).
        AccountDoesNotExist = "accountDoesNotExist",
        /// The server will not issue for the identifier.
        RejectedIdentifier = "rejectedIdentifier",
        /// The identifier is of an unsupported type.
        UnsupportedIdentifier = "unsupportedIdentifier",
        /// The request attempted to finalize an order that is not ready.
        OrderNotReady = "orderNotReady",
        /// The CSR is unacceptable.
        BadCsr = "badCSR",
        /// The JWS was signed by an unsupported or unacceptable public key.
        BadPublicKey = "badPublicKey",
        /// The certificate was already revoked.
        AlreadyRevoked = "alreadyRevoked",
        /// The revocation reason is not allowed.
        BadRevocationReason = "badRevocationReason",
        /// The server requires external account binding.
        ExternalAccountRequired = "externalAccountRequired",
        /// A contact URL is invalid.
        InvalidContact = "invalidContact",
        /// A contact URL scheme is unsupported.
        UnsupportedContact = "unsupportedContact",
        /// The request exceeds a rate limit.
        RateLimited = "rateLimited",
        /// The replay nonce was unacceptable.
        BadNonce = "badNonce",
        /// The server could not connect to the validation target.
        Connection = "connection",
        /// A DNS problem.
        Dns = "dns",
        /// The response received did not match the challenge's requirements.
        IncorrectResponse = "incorrectResponse",
        /// A TLS problem during validation.
        Tls = "tls",
        /// Several problems: see the subproblems.
        Compound = "compound",
        /// The server experienced an internal error.
        ServerInternal = "serverInternal",
        /// RFC 9773: `replaces` names a certificate that cannot be replaced.
        AlreadyReplaced = "alreadyReplaced",
    }
);

impl AcmeErrorKind {
    /// The problem document's `type`: `urn:ietf:params:acme:error:<kind>`.
    pub fn urn(self) -> String {
        format!("{ACME_ERROR_PREFIX}{}", self.as_str())
    }

    /// The HTTP status a problem of this kind is answered with by default.
    pub fn default_status(self) -> u16 {
        match self {
            Self::Unauthorized => 403,
            Self::AccountDoesNotExist => 400,
            Self::OrderNotReady => 403,
            Self::RateLimited => 429,
            Self::ServerInternal => 500,
            Self::AlreadyReplaced => 409,
            _ => 400,
        }
    }
}

/// One identifier's problem inside a compound or per-identifier error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSubproblem {
    /// Its type.
    pub kind: AcmeErrorKind,
    /// Human-readable detail.
    pub detail: String,
    /// The identifier it is about.
    pub identifier: Option<AcmeIdentifier>,
}

/// An ACME use case's refusal, one to one with a problem document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct AcmeError {
    /// The problem type.
    pub kind: AcmeErrorKind,
    /// Human-readable detail (names the rule, the identifier, the limit).
    pub detail: String,
    /// Per-identifier problems.
    pub subproblems: Vec<AcmeSubproblem>,
    /// The HTTP status (404 for an unknown order/authz/challenge/certificate).
    pub status: u16,
}

impl AcmeError {
    /// A problem of `kind` with its default status.
    pub fn new(kind: AcmeErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            subproblems: Vec::new(),
            status: kind.default_status(),
        }
    }

    /// `malformed`.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(AcmeErrorKind::Malformed, detail)
    }

    /// `unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(AcmeErrorKind::Unauthorized, detail)
    }

    /// An unknown (or not the account's) resource: `malformed` with status 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self {
            status: 404,
            ..Self::malformed(detail)
        }
    }

    /// `serverInternal`; the detail says nothing about internals.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(AcmeErrorKind::ServerInternal, detail)
    }

    /// Adds per-identifier subproblems.
    pub fn with_subproblems(mut self, subproblems: Vec<AcmeSubproblem>) -> Self {
        self.subproblems = subproblems;
        self
    }

    /// Overrides the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The RFC 8555 §6.7 / RFC 9457 problem document.
    pub fn to_problem(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "type": self.kind.urn(),
            "detail": self.detail,
            "status": self.status,
        });
        if !self.subproblems.is_empty() {
            doc["subproblems"] = self
                .subproblems
                .iter()
                .map(|s| {
                    let mut sub = serde_json::json!({"type": s.kind.urn(), "detail": s.detail});
                    if let Some(i) = &s.identifier {
                        sub["identifier"] = serde_json::json!(i);
                    }
                    sub
                })
                .collect();
        }
        doc
    }
}

impl From<DomainError> for AcmeError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid(_) | DomainError::Conflict(_) => Self::malformed(e.to_string()),
            DomainError::IdempotencyKeyReused(_) => Self::malformed(e.to_string()),
            DomainError::NotFound(what) => Self::not_found(format!("{what} not found")),
            DomainError::Forbidden(why) => Self::unauthorized(why),
            DomainError::Unavailable { backend, .. } => {
                Self::internal(format!("the {backend} is unavailable; try again later"))
                    .with_status(503)
            }
            // Integrity and internal failures are logged by the caller, not shown.
            _ => Self::internal("internal error"),
        }
    }
}

/// Result alias of the ACME use cases.
pub type AcmeResult<T> = Result<T, AcmeError>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn problem_types_are_rfc_8555_urns_with_subproblems_per_identifier() {
        let e = AcmeError::new(AcmeErrorKind::RejectedIdentifier, "not allowed").with_subproblems(
            vec![AcmeSubproblem {
                kind: AcmeErrorKind::RejectedIdentifier,
                detail: "x".into(),
                identifier: Some(AcmeIdentifier::dns("evil.example")),
            }],
        );
        let doc = e.to_problem();
        assert_eq!(doc["type"], "urn:ietf:params:acme:error:rejectedIdentifier");
        assert_eq!(doc["status"], 400);
        assert_eq!(doc["subproblems"][0]["identifier"]["type"], "dns");
        assert_eq!(doc["subproblems"][0]["identifier"]["value"], "evil.example");
        assert_eq!(
            AcmeErrorKind::BadCsr.urn(),
            "urn:ietf:params:acme:error:badCSR"
        );
    }

    #[test]
    fn wildcard_authorizations_are_for_the_base_name() {
        let w = AcmeIdentifier::dns("*.example.com");
        assert!(w.is_wildcard());
        assert_eq!(
            w.authorization_identifier(),
            AcmeIdentifier::dns("example.com")
        );
        assert!(!AcmeIdentifier::ip("10.0.0.1").is_wildcard());
    }

    #[test]
    fn identifiers_and_statuses_use_the_protocol_spelling() {
        let json = serde_json::to_value(AcmeIdentifier::ip("::1")).unwrap();
        assert_eq!(json, serde_json::json!({"type": "ip", "value": "::1"}));
        assert_eq!(
            ChallengeType::parse("tls-alpn-01"),
            Some(ChallengeType::TlsAlpn01)
        );
        assert_eq!(OrderStatus::Processing.as_str(), "processing");
        assert_eq!(key_authorization("tok", "thumb"), "tok.thumb");
    }

    #[test]
    fn expired_authorizations_read_as_expired() {
        let now = OffsetDateTime::now_utc();
        let a = AcmeAuthorization {
            id: Uuid::now_v7(),
            account_id: Uuid::now_v7(),
            identifier: AcmeIdentifier::dns("a.example"),
            wildcard: false,
            status: AuthzStatus::Valid,
            expires: now,
            challenges: vec![],
            created_at: now,
        };
        assert_eq!(a.status_at(now), AuthzStatus::Expired);
        assert_eq!(
            a.status_at(now - time::Duration::seconds(1)),
            AuthzStatus::Valid
        );
    }
}
