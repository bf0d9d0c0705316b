-- certflow metadata schema (PostgreSQL).
--
-- The same tables, columns and indexes as migrations/sqlite/0001_init.sql, so
-- that one implementation of the store (src/repo.rs) runs on both: times are
-- BIGINT unix seconds, UUIDs are TEXT (lower-case, hyphenated, so UUIDv7 text
-- order is time order), enums are their stable identifiers from certflow-core,
-- JSON is TEXT (kept verbatim rather than normalised as JSONB would). Only the
-- boolean is a real BOOLEAN.
--
-- Columns that are sorted on, or compared with text the application sorts,
-- use COLLATE "C": byte order, as SQLite's BINARY, whatever the database's
-- default collation (which may ignore punctuation or case).
-- Enum columns carry no CHECK so that adding a variant needs no table rewrite;
-- the store rejects unknown values when decoding.

CREATE TABLE issuers (
    id               TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name             TEXT COLLATE "C" NOT NULL,
    kind             TEXT             NOT NULL,
    is_default       BOOLEAN          NOT NULL DEFAULT FALSE,
    key_type         TEXT             NOT NULL,
    issuing_cert_pem TEXT             NOT NULL,
    chain_pem        TEXT             NOT NULL,
    key_blob         TEXT             NOT NULL,
    root_key_blob    TEXT,
    subject          TEXT             NOT NULL,
    not_after        BIGINT           NOT NULL,
    created_at       BIGINT           NOT NULL
);

-- At most one default issuer, enforced by the database rather than by callers.
CREATE UNIQUE INDEX issuers_single_default ON issuers (is_default) WHERE is_default;

CREATE TABLE certificates (
    id                TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name              TEXT COLLATE "C" NOT NULL,
    -- Lower-cased by the application (Unicode-aware), so case-insensitive
    -- search behaves the same on every backend.
    name_folded       TEXT COLLATE "C" NOT NULL,
    team              TEXT COLLATE "C" NOT NULL,
    profile           TEXT             NOT NULL,
    key_type          TEXT             NOT NULL,
    key_source        TEXT             NOT NULL,
    -- JSON array of SubjectName, in request order; certificate_names is the
    -- searchable copy.
    names             TEXT             NOT NULL,
    validity_days     BIGINT           NOT NULL,
    issuer_id         TEXT COLLATE "C" NOT NULL REFERENCES issuers (id),
    renew_at_fraction DOUBLE PRECISION NOT NULL,
    renew_before_days BIGINT,
    status            TEXT             NOT NULL,
    current_version   BIGINT           NOT NULL,
    not_after         BIGINT           NOT NULL,
    renew_after       BIGINT           NOT NULL,
    created_at        BIGINT           NOT NULL,
    updated_at        BIGINT           NOT NULL
);

-- Archived certificates free their name for reuse.
CREATE UNIQUE INDEX certificates_team_name ON certificates (team, name) WHERE status <> 'archived';
-- Listing filters and sort keys; id is the tie-breaker of every sort.
CREATE INDEX certificates_team ON certificates (team, name, id);
CREATE INDEX certificates_name ON certificates (name, id);
CREATE INDEX certificates_not_after ON certificates (not_after, id);
CREATE INDEX certificates_created_at ON certificates (created_at, id);
CREATE INDEX certificates_issuer ON certificates (issuer_id);
-- The renewal scheduler's query: status = 'active' AND renew_after <= now.
CREATE INDEX certificates_due ON certificates (status, renew_after);

CREATE TABLE certificate_versions (
    certificate_id     TEXT COLLATE "C" NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    version            BIGINT           NOT NULL CHECK (version >= 1),
    serial             TEXT COLLATE "C" NOT NULL,
    fingerprint_sha256 TEXT             NOT NULL,
    not_before         BIGINT           NOT NULL,
    not_after          BIGINT           NOT NULL,
    key_type           TEXT             NOT NULL,
    names              TEXT             NOT NULL,
    issuer_id          TEXT COLLATE "C" NOT NULL REFERENCES issuers (id),
    status             TEXT             NOT NULL,
    revoked_at         BIGINT,
    revocation_reason  TEXT,
    cert_blob          TEXT             NOT NULL,
    key_blob           TEXT,
    created_at         BIGINT           NOT NULL,
    PRIMARY KEY (certificate_id, version),
    UNIQUE (issuer_id, serial)
);

-- A certificate never has two current versions.
CREATE UNIQUE INDEX certificate_versions_current ON certificate_versions (certificate_id) WHERE status = 'current';
-- CRL generation reads the revoked versions of one issuer.
CREATE INDEX certificate_versions_revoked ON certificate_versions (issuer_id) WHERE status = 'revoked';

-- The current names of each certificate, lower case, for search.
CREATE TABLE certificate_names (
    certificate_id TEXT COLLATE "C" NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    name           TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (certificate_id, name)
);

CREATE INDEX certificate_names_name ON certificate_names (name);

CREATE TABLE certificate_labels (
    certificate_id TEXT COLLATE "C" NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    key            TEXT COLLATE "C" NOT NULL,
    value          TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (certificate_id, key)
);

CREATE INDEX certificate_labels_key_value ON certificate_labels (key, value);

-- Append-only; ordered by id (UUIDv7).
CREATE TABLE audit_events (
    id      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    at      BIGINT           NOT NULL,
    subject TEXT COLLATE "C" NOT NULL,
    source  TEXT,
    action  TEXT COLLATE "C" NOT NULL,
    target  TEXT COLLATE "C" NOT NULL,
    outcome TEXT             NOT NULL,
    details TEXT             NOT NULL
);

CREATE INDEX audit_events_target ON audit_events (target, id);
CREATE INDEX audit_events_subject ON audit_events (subject, id);
CREATE INDEX audit_events_at ON audit_events (at);

CREATE TABLE settings (
    key   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    value TEXT             NOT NULL
);
