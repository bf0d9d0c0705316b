-- The ACME server's state (PostgreSQL): the same tables as
-- migrations/sqlite/0015_acme.sql, which explains them, in the conventions
-- of 0001_init.sql.

-- External Account Binding keys: the HMAC key only sealed under the master
-- key. Binding an account is a conditional UPDATE (account_id IS NULL, not
-- revoked, unexpired) in the account's transaction: one account per key.
CREATE TABLE acme_eab_keys (
    key_id      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    team        TEXT COLLATE "C" NOT NULL,
    hmac_sealed TEXT    NOT NULL,
    created_by  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    revoked_at  BIGINT,
    account_id  TEXT
);
CREATE INDEX acme_eab_keys_team ON acme_eab_keys (team, created_at);

-- Accounts by key: a JWS with `jwk` finds its account by RFC 7638 thumbprint.
CREATE TABLE acme_accounts (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    team       TEXT COLLATE "C" NOT NULL,
    -- The public JWK, JSON.
    jwk        TEXT    NOT NULL,
    thumbprint TEXT COLLATE "C" NOT NULL UNIQUE,
    status     TEXT COLLATE "C" NOT NULL,
    -- JSON array of contact URLs.
    contact    TEXT    NOT NULL,
    eab_key_id TEXT,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);

CREATE TABLE acme_orders (
    id                  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    account_id          TEXT COLLATE "C" NOT NULL REFERENCES acme_accounts (id),
    issuer_id           TEXT COLLATE "C" NOT NULL,
    status              TEXT COLLATE "C" NOT NULL,
    -- JSON arrays: identifiers and their authorization ids, in the same order.
    identifiers         TEXT    NOT NULL,
    authorization_ids   TEXT    NOT NULL,
    expires             BIGINT  NOT NULL,
    certificate_id      TEXT,
    certificate_version BIGINT,
    -- An ACME problem document, JSON.
    error               TEXT,
    replaces            TEXT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL
);
-- The open-order bound counts an account's unfinished, unexpired orders.
CREATE INDEX acme_orders_account ON acme_orders (account_id, status, expires);
CREATE INDEX acme_orders_expires ON acme_orders (expires);

-- Authorizations are never shared between accounts; reuse looks them up by
-- account, identifier and wildcard flag.
CREATE TABLE acme_authorizations (
    id               TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    account_id       TEXT COLLATE "C" NOT NULL REFERENCES acme_accounts (id),
    identifier_type  TEXT COLLATE "C" NOT NULL,
    identifier_value TEXT COLLATE "C" NOT NULL,
    wildcard         BOOLEAN NOT NULL,
    status           TEXT COLLATE "C" NOT NULL,
    expires          BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL
);
CREATE INDEX acme_authorizations_reuse
    ON acme_authorizations (account_id, identifier_type, identifier_value, wildcard, expires);
CREATE INDEX acme_authorizations_expires ON acme_authorizations (expires);

-- Challenges; a validation worker on any replica claims due processing rows
-- with a lease (lease_until) and counts each attempt, so a recorded outcome
-- is compare-and-set on (status, attempts).
CREATE TABLE acme_challenges (
    id              TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    authz_id        TEXT COLLATE "C" NOT NULL REFERENCES acme_authorizations (id) ON DELETE CASCADE,
    position        BIGINT  NOT NULL,
    type            TEXT COLLATE "C" NOT NULL,
    token           TEXT COLLATE "C" NOT NULL,
    status          TEXT COLLATE "C" NOT NULL,
    attempts        BIGINT  NOT NULL,
    next_attempt_at BIGINT,
    lease_until     BIGINT,
    error           TEXT,
    validated_at    BIGINT
);
CREATE INDEX acme_challenges_authz ON acme_challenges (authz_id, position);
CREATE INDEX acme_challenges_due ON acme_challenges (status, next_attempt_at);

-- Which account and order issued a certificate version, and "renew now"
-- (RFC 9773: the renewal window moved to that time).
CREATE TABLE acme_certificates (
    certificate_id TEXT COLLATE "C" NOT NULL,
    version        BIGINT  NOT NULL,
    serial         TEXT COLLATE "C" NOT NULL,
    order_id       TEXT COLLATE "C" NOT NULL,
    account_id     TEXT COLLATE "C" NOT NULL,
    renew_now_at   BIGINT,
    PRIMARY KEY (certificate_id, version)
);
CREATE INDEX acme_certificates_serial ON acme_certificates (serial);

-- Replay nonces: taking one is a DELETE ... RETURNING, so it is accepted once
-- whichever replica answers.
CREATE TABLE acme_nonces (
    nonce      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX acme_nonces_expires ON acme_nonces (expires_at);
