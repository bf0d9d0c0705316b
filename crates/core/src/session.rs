//! Browser sessions of the console: the short-lived pending login that spans
//! the trip to the identity provider, and the server-side session it becomes.
//! Both are keyed by the SHA-256 of a random value the browser holds (the
//! OAuth `state`, the session cookie), so a copy of the database cannot be
//! replayed as a cookie, and a session keeps no other secret in the clear.

use time::OffsetDateTime;

use crate::access::Principal;

/// A login started at `/console/login`, waiting for the provider's callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// SHA-256 (hex) of the OAuth `state` sent to the provider.
    pub state_hash: String,
    /// The OpenID `nonce` the ID token must carry.
    pub nonce: String,
    /// PKCE code verifier (RFC 7636) the token request must present.
    pub pkce_verifier: String,
    /// When the login started.
    pub created_at: OffsetDateTime,
    /// After this the callback is refused.
    pub expires_at: OffsetDateTime,
    /// The console page to show after the login (a path under `/console/`,
    /// checked before it is stored); `None`: the dashboard.
    pub return_to: Option<String>,
}

/// A signed-in browser session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// SHA-256 (hex) of the session id in the cookie; the id itself is never stored.
    pub id_hash: String,
    /// Who signed in, with the roles and teams mapped at login.
    pub principal: Principal,
    /// The provider's ID token, sealed under a key derived from the session
    /// id (which only the browser holds), so the stored row alone cannot
    /// give it away; opened at logout for `id_token_hint`. The session's
    /// CSRF token is not stored at all: it is derived from the id too.
    pub sealed_id_token: Option<String>,
    /// When the session was created (login).
    pub created_at: OffsetDateTime,
    /// Last request seen (written at most every few seconds).
    pub last_seen: OffsetDateTime,
    /// Ends the session if no request arrives before it.
    pub idle_expires_at: OffsetDateTime,
    /// Ends the session whatever the activity.
    pub absolute_expires_at: OffsetDateTime,
}

impl Session {
    /// Whether the session is still valid at `now`.
    pub fn is_live(&self, now: OffsetDateTime) -> bool {
        now < self.idle_expires_at && now < self.absolute_expires_at
    }

    /// When the session ends if no further request arrives.
    pub fn expires_at(&self) -> OffsetDateTime {
        self.idle_expires_at.min(self.absolute_expires_at)
    }
}
