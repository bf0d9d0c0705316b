-- Auto-renewal and notifications (SQLite). Same conventions as 0001_init.sql.

-- RenewalPolicy.jitter_fraction; existing rows get the policy default.
ALTER TABLE certificates ADD COLUMN renew_jitter_fraction REAL NOT NULL DEFAULT 0.1;
-- Certificate.validity_secs: exact lifetime of short-lived certificates,
-- overriding validity_days when set.
ALTER TABLE certificates ADD COLUMN validity_secs INTEGER;

-- The renewal ledger, and the queue of the embedded (database) renewal queue.
-- UNIQUE (certificate_id, version) is what makes "one renewal job per
-- certificate version" hold with several schedulers: the second insert does
-- nothing. It also serves "the newest job of a certificate" (version DESC)
-- and the scheduler's NOT EXISTS probe in due_for_renewal.
CREATE TABLE renewal_jobs (
    id              TEXT    NOT NULL PRIMARY KEY,
    certificate_id  TEXT    NOT NULL REFERENCES certificates (id) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    run_at          INTEGER NOT NULL,
    lease_until     INTEGER,
    -- Random per delivery: only its holder may extend, complete or fail the job.
    lease_token     TEXT,
    last_attempt_at INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (certificate_id, version)
);

-- Claiming: queued jobs whose run_at has come, and running jobs whose lease
-- expired (a crashed worker's). Also the per-state counts of the stats.
CREATE INDEX renewal_jobs_runnable ON renewal_jobs (state, run_at);
CREATE INDEX renewal_jobs_leases ON renewal_jobs (state, lease_until);

CREATE TABLE subscriptions (
    id         TEXT    NOT NULL PRIMARY KEY,
    team       TEXT    NOT NULL,
    -- JSON array of EventKind identifiers.
    events     TEXT    NOT NULL,
    -- JSON Channel, including the webhook secret if any.
    channel    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE INDEX subscriptions_team ON subscriptions (team, id);

CREATE TABLE notifications (
    id             TEXT    NOT NULL PRIMARY KEY,
    kind           TEXT    NOT NULL,
    team           TEXT    NOT NULL,
    -- No foreign key: digests concern no certificate, and the record of what
    -- was said should not depend on the certificate's row.
    certificate_id TEXT,
    -- The Notification as JSON.
    payload        TEXT    NOT NULL,
    -- Set for events that must go out once (expiry warnings per version and
    -- threshold); NULLs never collide.
    dedupe_key     TEXT    UNIQUE,
    at             INTEGER NOT NULL
);

CREATE INDEX notifications_team ON notifications (team);
CREATE INDEX notifications_certificate ON notifications (certificate_id);

-- One notification to one subscription. subscription_id has no foreign key:
-- deleting a subscription keeps its past deliveries. channel is a snapshot,
-- so a delivery goes where the subscription pointed when it was created.
CREATE TABLE deliveries (
    id              TEXT    NOT NULL PRIMARY KEY,
    notification_id TEXT    NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    subscription_id TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    -- A dispatcher's claim; others skip the delivery until it passes.
    lease_until     INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER,
    created_at      INTEGER NOT NULL
);

-- Claiming: pending deliveries whose next attempt has come.
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_notification ON deliveries (notification_id);
-- Listing, newest first.
CREATE INDEX deliveries_created_at ON deliveries (created_at, id);

CREATE TABLE delivery_attempts (
    delivery_id TEXT    NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    -- NULL on success.
    error       TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
