//! ACME problem documents (RFC 8555 §6.7): RFC 7807/9457 problem details
//! whose `type` is `urn:ietf:params:acme:error:<name>`, with `subproblems`
//! naming the identifier each one is about (§6.7.1).

use serde_json::{Map, Value, json};

/// The URN prefix of every ACME error type.
pub const ERROR_PREFIX: &str = "urn:ietf:params:acme:error:";

/// The media type of a problem document.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The JWS algorithms this server accepts (RFC 8555 §6.2: no `none`, no MAC),
/// listed in `badSignatureAlgorithm` problems as RFC 8555 §6.2 asks.
pub const ALGORITHMS: [&str; 4] = ["ES256", "ES384", "RS256", "EdDSA"];

/// An ACME error type (RFC 8555 §6.7, RFC 9773 §7.4's `alreadyReplaced`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ProblemType {
    AccountDoesNotExist,
    AlreadyReplaced,
    AlreadyRevoked,
    BadCsr,
    BadNonce,
    BadPublicKey,
    BadRevocationReason,
    BadSignatureAlgorithm,
    Caa,
    Compound,
    Connection,
    Dns,
    ExternalAccountRequired,
    IncorrectResponse,
    InvalidContact,
    Malformed,
    OrderNotReady,
    RateLimited,
    RejectedIdentifier,
    ServerInternal,
    Tls,
    Unauthorized,
    UnsupportedContact,
    UnsupportedIdentifier,
    UserActionRequired,
}

impl ProblemType {
    /// The name after the URN prefix.
    pub fn name(self) -> &'static str {
        use ProblemType as P;
        match self {
            P::AccountDoesNotExist => "accountDoesNotExist",
            P::AlreadyReplaced => "alreadyReplaced",
            P::AlreadyRevoked => "alreadyRevoked",
            P::BadCsr => "badCSR",
            P::BadNonce => "badNonce",
            P::BadPublicKey => "badPublicKey",
            P::BadRevocationReason => "badRevocationReason",
            P::BadSignatureAlgorithm => "badSignatureAlgorithm",
            P::Caa => "caa",
            P::Compound => "compound",
            P::Connection => "connection",
            P::Dns => "dns",
            P::ExternalAccountRequired => "externalAccountRequired",
            P::IncorrectResponse => "incorrectResponse",
            P::InvalidContact => "invalidContact",
            P::Malformed => "malformed",
            P::OrderNotReady => "orderNotReady",
            P::RateLimited => "rateLimited",
            P::RejectedIdentifier => "rejectedIdentifier",
            P::ServerInternal => "serverInternal",
            P::Tls => "tls",
            P::Unauthorized => "unauthorized",
            P::UnsupportedContact => "unsupportedContact",
            P::UnsupportedIdentifier => "unsupportedIdentifier",
            P::UserActionRequired => "userActionRequired",
        }
    }

    /// The type named `name` (without the URN prefix), if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        ALL.iter().copied().find(|t| t.name() == name)
    }

    /// The full URN.
    pub fn urn(self) -> String {
        format!("{ERROR_PREFIX}{}", self.name())
    }

    /// The HTTP status a top-level problem of this type is sent with.
    pub fn status(self) -> u16 {
        use ProblemType as P;
        match self {
            P::Unauthorized | P::OrderNotReady | P::UserActionRequired => 403,
            P::RateLimited => 429,
            P::ServerInternal => 500,
            P::AlreadyReplaced => 409,
            _ => 400,
        }
    }
}

const ALL: [ProblemType; 25] = {
    use ProblemType as P;
    [
        P::AccountDoesNotExist,
        P::AlreadyReplaced,
        P::AlreadyRevoked,
        P::BadCsr,
        P::BadNonce,
        P::BadPublicKey,
        P::BadRevocationReason,
        P::BadSignatureAlgorithm,
        P::Caa,
        P::Compound,
        P::Connection,
        P::Dns,
        P::ExternalAccountRequired,
        P::IncorrectResponse,
        P::InvalidContact,
        P::Malformed,
        P::OrderNotReady,
        P::RateLimited,
        P::RejectedIdentifier,
        P::ServerInternal,
        P::Tls,
        P::Unauthorized,
        P::UnsupportedContact,
        P::UnsupportedIdentifier,
        P::UserActionRequired,
    ]
};

/// An identifier a subproblem is about (RFC 8555 §7.1.3 identifier object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemIdentifier {
    /// `dns` or `ip`.
    pub kind: String,
    /// The name or address.
    pub value: String,
}

/// One subproblem of a compound error (RFC 8555 §6.7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subproblem {
    /// Its type.
    pub kind: ProblemType,
    /// What was wrong, for a person.
    pub detail: String,
    /// The identifier it concerns.
    pub identifier: Option<ProblemIdentifier>,
}

/// An ACME problem document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Its type.
    pub kind: ProblemType,
    /// What was wrong, for a person.
    pub detail: String,
    /// The HTTP status (the type's default unless overridden).
    pub status: u16,
    /// Per-identifier problems.
    pub subproblems: Vec<Subproblem>,
}

impl Problem {
    /// A problem of `kind` with its default status.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            status: kind.status(),
            subproblems: Vec::new(),
        }
    }

    /// `malformed`.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Malformed, detail)
    }

    /// `unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Unauthorized, detail)
    }

    /// `badNonce`.
    pub fn bad_nonce(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::BadNonce, detail)
    }

    /// `serverInternal`, with a detail that names nothing internal.
    pub fn internal() -> Self {
        Self::new(ProblemType::ServerInternal, "internal error")
    }

    /// The same problem with another HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a subproblem.
    pub fn with_subproblem(mut self, sub: Subproblem) -> Self {
        self.subproblems.push(sub);
        self
    }

    /// The problem document as JSON (`type`, `detail`, `status`, and
    /// `subproblems` or `algorithms` when they apply).
    pub fn to_json(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("type".into(), Value::String(self.kind.urn()));
        doc.insert("detail".into(), Value::String(self.detail.clone()));
        doc.insert("status".into(), json!(self.status));
        if self.kind == ProblemType::BadSignatureAlgorithm {
            doc.insert("algorithms".into(), json!(ALGORITHMS));
        }
        if !self.subproblems.is_empty() {
            let subs = self
                .subproblems
                .iter()
                .map(|s| {
                    let mut sub = Map::new();
                    sub.insert("type".into(), Value::String(s.kind.urn()));
                    sub.insert("detail".into(), Value::String(s.detail.clone()));
                    if let Some(id) = &s.identifier {
                        sub.insert(
                            "identifier".into(),
                            json!({"type": id.kind, "value": id.value}),
                        );
                    }
                    Value::Object(sub)
                })
                .collect();
            doc.insert("subproblems".into(), Value::Array(subs));
        }
        Value::Object(doc)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

impl std::error::Error for Problem {}

/// The use cases' errors become problem documents with the same type,
/// status and subproblems.
impl From<certflow_core::acme::AcmeError> for Problem {
    fn from(e: certflow_core::acme::AcmeError) -> Self {
        let kind = |k: certflow_core::acme::AcmeErrorKind| {
            ProblemType::from_name(k.as_str()).unwrap_or(ProblemType::ServerInternal)
        };
        Problem {
            kind: kind(e.kind),
            detail: e.detail,
            status: e.status,
            subproblems: e
                .subproblems
                .into_iter()
                .map(|s| Subproblem {
                    kind: kind(s.kind),
                    detail: s.detail,
                    identifier: s.identifier.map(|i| ProblemIdentifier {
                        kind: i.kind.as_str().to_owned(),
                        value: i.value,
                    }),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn documents_follow_rfc8555_section_6_7() {
        let p = Problem::new(ProblemType::RejectedIdentifier, "not allowed").with_subproblem(
            Subproblem {
                kind: ProblemType::RejectedIdentifier,
                detail: "policy web forbids it".into(),
                identifier: Some(ProblemIdentifier {
                    kind: "dns".into(),
                    value: "evil.example".into(),
                }),
            },
        );
        let doc = p.to_json();
        assert_eq!(doc["type"], "urn:ietf:params:acme:error:rejectedIdentifier");
        assert_eq!(doc["status"], 400);
        assert_eq!(
            doc["subproblems"][0]["identifier"],
            json!({"type": "dns", "value": "evil.example"})
        );
        let alg = Problem::new(ProblemType::BadSignatureAlgorithm, "HS256").to_json();
        assert_eq!(
            alg["algorithms"],
            json!(["ES256", "ES384", "RS256", "EdDSA"])
        );
        assert_eq!(ProblemType::from_name("badCSR"), Some(ProblemType::BadCsr));
        assert_eq!(ProblemType::RateLimited.status(), 429);
    }
}
