-- Agents (SQLite). Same conventions as 0001_init.sql.

-- The agent-identity CA: one row, ever. `slot` is always 'current' so that
-- replicas racing to create it at first start conflict on the primary key and
-- the loser adopts the winner's.
CREATE TABLE agent_ca (
    slot             TEXT    NOT NULL PRIMARY KEY,
    id               TEXT    NOT NULL,
    issuing_cert_pem TEXT    NOT NULL,
    chain_pem        TEXT    NOT NULL,
    key_blob         TEXT    NOT NULL,
    root_key_blob    TEXT,
    not_after        INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
);

-- Join tokens by the SHA-256 of their text (the text is never stored).
-- Consuming one is a conditional UPDATE (used_at IS NULL AND expires_at > now),
-- so of concurrent enrolments with one token exactly one changes the row.
CREATE TABLE agent_join_tokens (
    id           TEXT    NOT NULL PRIMARY KEY,
    token_sha256 TEXT    NOT NULL UNIQUE,
    name         TEXT    NOT NULL,
    -- JSON array of team names.
    teams        TEXT    NOT NULL,
    expires_at   INTEGER NOT NULL,
    created_by   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    used_at      INTEGER,
    agent_id     TEXT
);

-- Every agent request looks its agent up by primary key (status and current
-- serial), so a disabled or revoked agent is refused at its next request.
CREATE TABLE agents (
    id                      TEXT    NOT NULL PRIMARY KEY,
    name                    TEXT    NOT NULL,
    -- JSON array of team names.
    teams                   TEXT    NOT NULL,
    status                  TEXT    NOT NULL,
    cert_serial             TEXT    NOT NULL,
    cert_fingerprint_sha256 TEXT    NOT NULL,
    cert_not_after          INTEGER NOT NULL,
    created_at              INTEGER NOT NULL,
    last_seen               INTEGER
);
