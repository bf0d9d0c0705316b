-- Deployments (PostgreSQL): the same tables as migrations/sqlite/0007_deployments.sql,
-- which explains them, in the conventions of 0001_init.sql.

CREATE TABLE agent_assignments (
    agent_id               TEXT COLLATE "C" NOT NULL REFERENCES agents (id),
    certificate_id         TEXT COLLATE "C" NOT NULL REFERENCES certificates (id),
    created_by             TEXT             NOT NULL,
    created_at             BIGINT           NOT NULL,
    drift_notified_version BIGINT,
    PRIMARY KEY (agent_id, certificate_id)
);

CREATE INDEX agent_assignments_certificate ON agent_assignments (certificate_id);

CREATE TABLE agent_deployments (
    agent_id           TEXT COLLATE "C" NOT NULL,
    certificate_id     TEXT COLLATE "C" NOT NULL,
    version            BIGINT           NOT NULL CHECK (version >= 0),
    fingerprint_sha256 TEXT             NOT NULL,
    status             TEXT COLLATE "C" NOT NULL,
    attempted_version  BIGINT,
    error              TEXT,
    reported_at        BIGINT           NOT NULL,
    agent_version      TEXT,
    PRIMARY KEY (agent_id, certificate_id),
    FOREIGN KEY (agent_id, certificate_id)
        REFERENCES agent_assignments (agent_id, certificate_id) ON DELETE CASCADE
);
