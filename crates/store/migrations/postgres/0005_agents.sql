-- Agents (PostgreSQL): the same tables as migrations/sqlite/0005_agents.sql,
-- which explains them, in the conventions of 0001_init.sql.

CREATE TABLE agent_ca (
    slot             TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    id               TEXT COLLATE "C" NOT NULL,
    issuing_cert_pem TEXT             NOT NULL,
    chain_pem        TEXT             NOT NULL,
    key_blob         TEXT             NOT NULL,
    root_key_blob    TEXT,
    not_after        BIGINT           NOT NULL,
    created_at       BIGINT           NOT NULL
);

CREATE TABLE agent_join_tokens (
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    token_sha256 TEXT COLLATE "C" NOT NULL UNIQUE,
    name         TEXT             NOT NULL,
    teams        TEXT             NOT NULL,
    expires_at   BIGINT           NOT NULL,
    created_by   TEXT             NOT NULL,
    created_at   BIGINT           NOT NULL,
    used_at      BIGINT,
    agent_id     TEXT COLLATE "C"
);

CREATE TABLE agents (
    id                      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name                    TEXT             NOT NULL,
    teams                   TEXT             NOT NULL,
    status                  TEXT COLLATE "C" NOT NULL,
    cert_serial             TEXT COLLATE "C" NOT NULL,
    cert_fingerprint_sha256 TEXT COLLATE "C" NOT NULL,
    cert_not_after          BIGINT           NOT NULL,
    created_at              BIGINT           NOT NULL,
    last_seen               BIGINT
);
