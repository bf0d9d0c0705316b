-- Console logins and browser sessions (SQLite). Keys are SHA-256 (hex) of
-- the browser's secrets (OAuth state, session cookie), never the secrets.
-- Instants are unix MILLIseconds (columns end in _ms), unlike the rest of the
-- schema: idle timeouts and the last_seen write throttle work below a second.

-- A login between /console/login and the provider's callback; the callback
-- deletes its row (DELETE ... RETURNING), so a replayed state finds nothing.
CREATE TABLE login_states (
    state_hash    TEXT    NOT NULL PRIMARY KEY,
    nonce         TEXT    NOT NULL,
    pkce_verifier TEXT    NOT NULL,
    created_ms    INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL
);
CREATE INDEX login_states_expiry ON login_states (expires_ms);

CREATE TABLE sessions (
    id_hash       TEXT    NOT NULL PRIMARY KEY,
    subject       TEXT    NOT NULL,
    -- JSON of certflow_core::access::Principal as mapped at login.
    principal     TEXT    NOT NULL,
    csrf_token    TEXT    NOT NULL,
    -- The provider's ID token, for id_token_hint at logout.
    id_token      TEXT,
    created_ms    INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    idle_expires_ms     INTEGER NOT NULL,
    absolute_expires_ms INTEGER NOT NULL
);
CREATE INDEX sessions_subject ON sessions (subject);
CREATE INDEX sessions_absolute_expiry ON sessions (absolute_expires_ms);
CREATE INDEX sessions_idle_expiry ON sessions (idle_expires_ms);
