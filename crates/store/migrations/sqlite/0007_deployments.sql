-- Deployments (SQLite): certificates assigned to agents, and the agents'
-- last report about each. Same conventions as 0001_init.sql.

-- An agent installs exactly the certificates assigned to it. Deleting an
-- agent or a certificate is not something certflow does (they are disabled
-- or archived), so the foreign keys only keep ids honest.
CREATE TABLE agent_assignments (
    agent_id               TEXT    NOT NULL REFERENCES agents (id),
    certificate_id         TEXT    NOT NULL REFERENCES certificates (id),
    created_by             TEXT    NOT NULL,
    created_at             INTEGER NOT NULL,
    -- The version last announced as drift (a new version not installed in
    -- time), so each version is announced once.
    drift_notified_version INTEGER,
    PRIMARY KEY (agent_id, certificate_id)
);

-- GET /certificates/{id}/deployments.
CREATE INDEX agent_assignments_certificate ON agent_assignments (certificate_id);

-- One row per (agent, certificate): the last report replaces the previous one.
CREATE TABLE agent_deployments (
    agent_id           TEXT    NOT NULL,
    certificate_id     TEXT    NOT NULL,
    version            INTEGER NOT NULL CHECK (version >= 0),
    fingerprint_sha256 TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    attempted_version  INTEGER,
    error              TEXT,
    reported_at        INTEGER NOT NULL,
    agent_version      TEXT,
    PRIMARY KEY (agent_id, certificate_id),
    FOREIGN KEY (agent_id, certificate_id)
        REFERENCES agent_assignments (agent_id, certificate_id) ON DELETE CASCADE
);
