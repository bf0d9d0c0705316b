-- Blobs in the database (blob.kind = "database"): a version's certificate,
-- chain and sealed key, written with the rows that point at them. Keys
-- compare bytewise (COLLATE "C"), so a prefix is a key range.
CREATE TABLE blobs (
    key        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    data       BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);
