-- Discovery (SQLite): certificates agents found in local files and on TLS
-- endpoints of their host, whether certflow manages them or not. Same
-- conventions as 0001_init.sql.

-- One row per (agent, source): each report replaces the agent's previous
-- view (rows of sources it no longer reports are deleted), keeping the id
-- and first_seen of a source seen before.
CREATE TABLE discovered_certificates (
    id                        TEXT    NOT NULL PRIMARY KEY,
    agent_id                  TEXT    NOT NULL REFERENCES agents (id),
    -- `file:/path` or `tls:host:port[,sni]`.
    source                    TEXT    NOT NULL,
    fingerprint_sha256        TEXT    NOT NULL,
    serial                    TEXT    NOT NULL,
    subject                   TEXT    NOT NULL,
    issuer                    TEXT    NOT NULL,
    -- JSON array of names (DNS and IP SANs).
    names                     TEXT    NOT NULL,
    not_after                 INTEGER NOT NULL,
    -- The public leaf, when the agent sent it (rates key and signature).
    certificate_der           BLOB,
    first_seen                INTEGER NOT NULL,
    last_seen                 INTEGER NOT NULL,
    -- The certflow certificate created to replace it ("take over").
    taken_over_certificate_id TEXT    REFERENCES certificates (id),
    -- A take-over in progress since then (one at a time; a claim older than
    -- the claim timeout is a crashed one and may be taken again).
    take_over_claimed_at      INTEGER,
    UNIQUE (agent_id, source)
);

-- "Managed" means the fingerprint is one of a certflow version's: both
-- sides of that join are looked up by fingerprint.
CREATE INDEX discovered_certificates_fingerprint ON discovered_certificates (fingerprint_sha256);
CREATE INDEX certificate_versions_fingerprint ON certificate_versions (fingerprint_sha256);
