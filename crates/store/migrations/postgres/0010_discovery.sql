-- Discovery (PostgreSQL): the same table as migrations/sqlite/0010_discovery.sql,
-- which explains it, in the conventions of 0001_init.sql. The fingerprint keeps
-- the default collation of certificate_versions.fingerprint_sha256, so the
-- two compare without a collation conflict.

CREATE TABLE discovered_certificates (
    id                        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    agent_id                  TEXT COLLATE "C" NOT NULL REFERENCES agents (id),
    source                    TEXT             NOT NULL,
    fingerprint_sha256        TEXT             NOT NULL,
    serial                    TEXT COLLATE "C" NOT NULL,
    subject                   TEXT             NOT NULL,
    issuer                    TEXT             NOT NULL,
    names                     TEXT             NOT NULL,
    not_after                 BIGINT           NOT NULL,
    certificate_der           BYTEA,
    first_seen                BIGINT           NOT NULL,
    last_seen                 BIGINT           NOT NULL,
    taken_over_certificate_id TEXT COLLATE "C" REFERENCES certificates (id),
    take_over_claimed_at      BIGINT,
    UNIQUE (agent_id, source)
);

CREATE INDEX discovered_certificates_fingerprint ON discovered_certificates (fingerprint_sha256);
CREATE INDEX certificate_versions_fingerprint ON certificate_versions (fingerprint_sha256);
