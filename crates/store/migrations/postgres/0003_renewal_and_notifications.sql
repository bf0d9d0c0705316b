-- Auto-renewal and notifications (PostgreSQL): the same tables as
-- migrations/sqlite/0003_renewal_and_notifications.sql, which explains them,
-- in the conventions of 0001_init.sql.

ALTER TABLE certificates ADD COLUMN renew_jitter_fraction DOUBLE PRECISION NOT NULL DEFAULT 0.1;
ALTER TABLE certificates ADD COLUMN validity_secs BIGINT;

CREATE TABLE renewal_jobs (
    id              TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    certificate_id  TEXT COLLATE "C" NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    version         BIGINT           NOT NULL,
    state           TEXT COLLATE "C" NOT NULL,
    attempts        BIGINT           NOT NULL,
    max_attempts    BIGINT           NOT NULL,
    run_at          BIGINT           NOT NULL,
    lease_until     BIGINT,
    lease_token     TEXT COLLATE "C",
    last_attempt_at BIGINT,
    last_error      TEXT,
    created_at      BIGINT           NOT NULL,
    updated_at      BIGINT           NOT NULL,
    UNIQUE (certificate_id, version)
);

CREATE INDEX renewal_jobs_runnable ON renewal_jobs (state, run_at);
CREATE INDEX renewal_jobs_leases ON renewal_jobs (state, lease_until);

CREATE TABLE subscriptions (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    team       TEXT COLLATE "C" NOT NULL,
    events     TEXT             NOT NULL,
    channel    TEXT             NOT NULL,
    created_at BIGINT           NOT NULL
);

CREATE INDEX subscriptions_team ON subscriptions (team, id);

CREATE TABLE notifications (
    id             TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    kind           TEXT COLLATE "C" NOT NULL,
    team           TEXT COLLATE "C" NOT NULL,
    certificate_id TEXT COLLATE "C",
    payload        TEXT             NOT NULL,
    dedupe_key     TEXT COLLATE "C" UNIQUE,
    at             BIGINT           NOT NULL
);

CREATE INDEX notifications_team ON notifications (team);
CREATE INDEX notifications_certificate ON notifications (certificate_id);

CREATE TABLE deliveries (
    id              TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    notification_id TEXT COLLATE "C" NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    subscription_id TEXT COLLATE "C" NOT NULL,
    channel         TEXT             NOT NULL,
    state           TEXT COLLATE "C" NOT NULL,
    attempts        BIGINT           NOT NULL,
    next_attempt_at BIGINT           NOT NULL,
    lease_until     BIGINT,
    last_error      TEXT,
    delivered_at    BIGINT,
    created_at      BIGINT           NOT NULL
);

CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_notification ON deliveries (notification_id);
CREATE INDEX deliveries_created_at ON deliveries (created_at, id);

CREATE TABLE delivery_attempts (
    delivery_id TEXT COLLATE "C" NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt     BIGINT           NOT NULL,
    at          BIGINT           NOT NULL,
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
