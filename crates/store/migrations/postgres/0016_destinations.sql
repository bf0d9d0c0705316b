-- Destinations (PostgreSQL): the same tables as migrations/sqlite/0016_destinations.sql,
-- which explains them, in the conventions of 0001_init.sql.
CREATE TABLE destinations (
    id                  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    certificate_id      TEXT COLLATE "C" NOT NULL REFERENCES certificates (id),
    kind                TEXT COLLATE "C" NOT NULL,
    region              TEXT             NOT NULL,
    role_arn            TEXT,
    role_external_id    TEXT,
    listener_arn        TEXT,
    default_certificate BIGINT           NOT NULL DEFAULT 0 CHECK (default_certificate IN (0, 1)),
    status              TEXT COLLATE "C" NOT NULL,
    external_id         TEXT,
    delivered_version   BIGINT,
    delivered_serial    TEXT,
    target_version      BIGINT,
    attempts            BIGINT           NOT NULL DEFAULT 0,
    total_attempts      BIGINT           NOT NULL DEFAULT 0,
    next_attempt_at     BIGINT           NOT NULL,
    lease_until         BIGINT,
    last_error          TEXT,
    verified_at         BIGINT,
    created_by          TEXT             NOT NULL,
    created_at          BIGINT           NOT NULL,
    updated_at          BIGINT           NOT NULL
);

CREATE UNIQUE INDEX destinations_place ON destinations
    (certificate_id, kind, region, COALESCE(role_arn, ''), COALESCE(listener_arn, ''));
CREATE INDEX destinations_due ON destinations (next_attempt_at);

CREATE TABLE destination_attempts (
    destination_id TEXT COLLATE "C" NOT NULL REFERENCES destinations (id) ON DELETE CASCADE,
    attempt        BIGINT           NOT NULL CHECK (attempt >= 1),
    version        BIGINT           NOT NULL,
    at             BIGINT           NOT NULL,
    error          TEXT,
    PRIMARY KEY (destination_id, attempt)
);
