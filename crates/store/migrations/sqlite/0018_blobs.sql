-- Blobs in the database (blob.kind = "database", the embedded default): a
-- version's certificate, chain and sealed key, written with the rows that
-- point at them. Keys compare bytewise, so a prefix is a key range.
CREATE TABLE blobs (
    key        TEXT    NOT NULL PRIMARY KEY,
    data       BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
