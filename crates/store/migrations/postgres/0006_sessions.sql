-- Console logins and browser sessions (PostgreSQL): the same tables as
-- migrations/sqlite/0006_sessions.sql, which explains them.

CREATE TABLE login_states (
    state_hash    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    nonce         TEXT             NOT NULL,
    pkce_verifier TEXT             NOT NULL,
    created_ms    BIGINT           NOT NULL,
    expires_ms    BIGINT           NOT NULL
);
CREATE INDEX login_states_expiry ON login_states (expires_ms);

CREATE TABLE sessions (
    id_hash       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    subject       TEXT             NOT NULL,
    principal     TEXT             NOT NULL,
    csrf_token    TEXT             NOT NULL,
    id_token      TEXT,
    created_ms    BIGINT           NOT NULL,
    last_seen_ms  BIGINT           NOT NULL,
    idle_expires_ms     BIGINT     NOT NULL,
    absolute_expires_ms BIGINT     NOT NULL
);
CREATE INDEX sessions_subject ON sessions (subject);
CREATE INDEX sessions_absolute_expiry ON sessions (absolute_expires_ms);
CREATE INDEX sessions_idle_expiry ON sessions (idle_expires_ms);
