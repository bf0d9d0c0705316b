-- Certificate.managed: whether certflow renews the certificate. An imported
-- certificate kept as inventory only is rated and shown but never renewed
-- until someone takes over its management.
ALTER TABLE certificates ADD COLUMN managed INTEGER NOT NULL DEFAULT 1 CHECK (managed IN (0, 1));
-- Before this column, inventory-only imports were kept out of renewal by a
-- renew_after of 9999-12-31T23:59:59Z; they become unmanaged, due at their
-- notAfter (what the column reads as for them: when they stop being useful).
UPDATE certificates SET managed = 0, renew_after = not_after WHERE renew_after = 253402300799;
-- The scheduler only reads managed rows, so an expired inventory certificate
-- is not walked past on every tick.
DROP INDEX certificates_due;
CREATE INDEX certificates_due ON certificates (status, renew_after) WHERE managed = TRUE;
