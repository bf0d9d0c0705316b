-- Destinations (issue 19): where a certificate is pushed besides agents —
-- AWS Certificate Manager, and ELBv2 listeners serving the ACM certificate.
--
-- A destination row is its own outbox entry: it is due while
-- delivered_version differs from its certificate's current_version, at
-- next_attempt_at (backoff after failures) or at once when a version newer
-- than target_version (the one last attempted) appeared. lease_until keeps
-- two workers from pushing the same destination at once. external_id is the
-- ACM certificate ARN, kept so that every renewal re-imports under it.
-- role_external_id is AssumeRole's external id (not a secret in AWS's model).
CREATE TABLE destinations (
    id                  TEXT    NOT NULL PRIMARY KEY,
    certificate_id      TEXT    NOT NULL REFERENCES certificates (id),
    kind                TEXT    NOT NULL,
    region              TEXT    NOT NULL,
    role_arn            TEXT,
    role_external_id    TEXT,
    listener_arn        TEXT,
    default_certificate INTEGER NOT NULL DEFAULT 0 CHECK (default_certificate IN (0, 1)),
    status              TEXT    NOT NULL,
    external_id         TEXT,
    delivered_version   INTEGER,
    delivered_serial    TEXT,
    target_version      INTEGER,
    attempts            INTEGER NOT NULL DEFAULT 0,
    total_attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER NOT NULL,
    lease_until         INTEGER,
    last_error          TEXT,
    verified_at         INTEGER,
    created_by          TEXT    NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

-- One destination per place: the same listener (or ACM region and role) twice is a conflict.
CREATE UNIQUE INDEX destinations_place ON destinations
    (certificate_id, kind, region, COALESCE(role_arn, ''), COALESCE(listener_arn, ''));
CREATE INDEX destinations_due ON destinations (next_attempt_at);

-- Every attempt, kept until its destination is detached.
CREATE TABLE destination_attempts (
    destination_id TEXT    NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    attempt        INTEGER NOT NULL CHECK (attempt >= 1),
    version        INTEGER NOT NULL,
    at             INTEGER NOT NULL,
    error          TEXT,
    PRIMARY KEY (destination_id, attempt)
);
