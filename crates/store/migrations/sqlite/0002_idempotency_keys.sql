-- Idempotency keys (the `Idempotency-Key` header of the console API).
--
-- A row commits in the same transaction as the certificate or version it
-- records, so a key is stored exactly when its request took effect; the
-- primary key makes the second of two concurrent requests with one key fail
-- (and return the first one's result) instead of issuing twice.
-- certificate_id carries no foreign key: a record outlives nothing it needs,
-- and is purged after 24 hours anyway.

CREATE TABLE idempotency_keys (
    -- Actor, operation and (for renewals) certificate: see certflow-services.
    scope          TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    -- SHA-256 of the canonical request, lower-case hex.
    request_sha256 TEXT    NOT NULL,
    certificate_id TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);

-- The purge: created_at < cut-off.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
