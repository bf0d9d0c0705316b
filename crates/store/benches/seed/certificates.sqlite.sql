-- $1 certificates for the due-for-renewal benchmark and plan tests, in one
-- statement; $2 is "now" (unix seconds). Row n (0-based), by n % 100:
--   0..=4  archived, renew_after up to a year ago (never renewed again)
--   5..=6  revoked, likewise
--   99     active and due: renew_after up to 30 days ago (1%)
--   else   active, due within the next 60 days
-- n * 7919 spreads renew_after over distinct seconds; ids are unique
-- UUID-shaped text (n in the last group). Same rows as certificates.postgres.sql.
WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < $1),
rows AS (
    SELECT n, n % 100 AS k,
           CASE WHEN n % 100 = 99 THEN $2 - (n * 7919) % 2592000
                WHEN n % 100 < 7 THEN $2 - (n * 7919) % 31536000
                ELSE $2 + 1 + (n * 7919) % 5184000 END AS renew_after
    FROM seq
)
INSERT INTO certificates (id, name, name_folded, team, profile, key_type, key_source, names,
                          validity_days, issuer_id, renew_at_fraction, renew_before_days, status,
                          current_version, not_after, renew_after, created_at, updated_at)
SELECT printf('%08x-%04x-7000-8000-%012x', (n * 2654435761) % 4294967296, n % 65536, n),
       'svc-' || n || '.example.com',
       'svc-' || n || '.example.com',
       'team-' || (n % 50),
       'tls-server', 'ecdsa-p256', 'server',
       '[{"type":"dns","value":"svc-' || n || '.example.com"}]',
       90, '00000000-0000-7000-8000-000000000000', 0.6666666666666666, NULL,
       CASE WHEN k < 5 THEN 'archived' WHEN k < 7 THEN 'revoked' ELSE 'active' END,
       1, renew_after + 2592000, renew_after, renew_after - 5184000, renew_after - 5184000
FROM rows
