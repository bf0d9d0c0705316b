-- renewal_jobs.expires_at: the notAfter of the certificate when its job was
-- enqueued (the version the job replaces). The database queue claims
-- runnable jobs soonest-expiring first, so the renewal of a certificate with
-- little time left goes ahead of a backlog of long-lived ones. The default
-- (no known expiry) sorts last.
ALTER TABLE renewal_jobs ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 9223372036854775807;
UPDATE renewal_jobs SET expires_at = (SELECT c.not_after FROM certificates c WHERE c.id = renewal_jobs.certificate_id);
CREATE INDEX renewal_jobs_urgency ON renewal_jobs (state, expires_at);
