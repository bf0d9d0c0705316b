-- One label per seeded certificate, as most real ones carry (both dialects).
INSERT INTO certificate_labels (certificate_id, key, value)
SELECT id, 'env', CASE WHEN substr(id, 1, 1) < '8' THEN 'prod' ELSE 'staging' END
FROM certificates
