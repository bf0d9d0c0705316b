-- renewal_jobs.expires_at (PostgreSQL): see migrations/sqlite/0012_renewal_urgency.sql.
ALTER TABLE renewal_jobs ADD COLUMN expires_at BIGINT NOT NULL DEFAULT 9223372036854775807;
UPDATE renewal_jobs j SET expires_at = c.not_after FROM certificates c WHERE c.id = j.certificate_id;
CREATE INDEX renewal_jobs_urgency ON renewal_jobs (state, expires_at);
