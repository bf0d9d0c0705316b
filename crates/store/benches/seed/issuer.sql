-- The issuer every seeded certificate refers to (both dialects).
INSERT INTO issuers (id, name, kind, is_default, key_type, issuing_cert_pem, chain_pem,
                     key_blob, root_key_blob, subject, not_after, created_at)
VALUES ('00000000-0000-7000-8000-000000000000', 'bench', 'internal', TRUE, 'ecdsa-p256',
        '-----BEGIN CERTIFICATE-----', '', 'issuers/bench/issuing.key', NULL, 'CN=bench',
        4102444800, 1735689600)
