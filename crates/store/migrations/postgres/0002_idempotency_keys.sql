-- Idempotency keys (the `Idempotency-Key` header of the console API); the
-- same table as migrations/sqlite/0002_idempotency_keys.sql.
--
-- A row commits in the same transaction as the certificate or version it
-- records, so a key is stored exactly when its request took effect; the
-- primary key makes the second of two concurrent requests with one key wait
-- for the first and then fail (and return the first one's result) instead of
-- issuing twice. certificate_id carries no foreign key: records are purged
-- after 24 hours.

CREATE TABLE idempotency_keys (
    -- Actor, operation and (for renewals) certificate: see certflow-services.
    scope          TEXT COLLATE "C" NOT NULL,
    key            TEXT COLLATE "C" NOT NULL,
    -- SHA-256 of the canonical request, lower-case hex.
    request_sha256 TEXT             NOT NULL,
    certificate_id TEXT COLLATE "C" NOT NULL,
    version        BIGINT           NOT NULL,
    created_at     BIGINT           NOT NULL,
    PRIMARY KEY (scope, key)
);

-- The purge: created_at < cut-off.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
