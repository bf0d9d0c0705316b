-- Tamper-evident audit trail (SQLite). Same conventions as 0001_init.sql.
--
-- Every event gets a gapless sequence number, the hash of the event before it
-- (64 zeros for the first) and its own hash: SHA-256 over that link and every
-- stored field, computed by the store (src/audit.rs spells out the encoding).
-- Editing or deleting a row then breaks the chain where it happened, which
-- `certflow admin verify-audit` finds.
--
-- Events from before this migration get their links when the store opens
-- (in id order), not here: SQLite has no SHA-256 function. Until then their
-- seq is NULL, which the partial index finds cheaply.
ALTER TABLE audit_events ADD COLUMN seq INTEGER;
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_events ADD COLUMN hash TEXT;

CREATE UNIQUE INDEX audit_events_seq ON audit_events (seq);
CREATE INDEX audit_events_unchained ON audit_events (id) WHERE seq IS NULL;

-- The last link. A writer reads it inside its transaction to chain its event
-- (SQLite: under the database write lock; PostgreSQL: FOR UPDATE); the
-- triggers below move it, so it always names the newest row.
CREATE TABLE audit_chain_head (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);

INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- A new event must extend the head by exactly one link.
CREATE TRIGGER audit_events_link BEFORE INSERT ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events: a new event must extend the chain head by one link')
    WHERE NOT EXISTS (
        SELECT 1 FROM audit_chain_head h
        WHERE h.id = 1 AND NEW.seq = h.seq + 1 AND NEW.prev_hash = h.hash
          AND length(NEW.hash) = 64
    );
END;

-- Append-only. The one update allowed links an event from before 0004
-- (seq still NULL) as the head's next link, changing nothing else.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
WHEN OLD.seq IS NOT NULL
  OR NEW.id IS NOT OLD.id OR NEW.at IS NOT OLD.at OR NEW.subject IS NOT OLD.subject
  OR NEW.source IS NOT OLD.source OR NEW.action IS NOT OLD.action
  OR NEW.target IS NOT OLD.target OR NEW.outcome IS NOT OLD.outcome
  OR NEW.details IS NOT OLD.details
  OR NOT EXISTS (
        SELECT 1 FROM audit_chain_head h
        WHERE h.id = 1 AND NEW.seq = h.seq + 1 AND NEW.prev_hash = h.hash
          AND length(NEW.hash) = 64
     )
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_advance_on_insert AFTER INSERT ON audit_events
BEGIN
    UPDATE audit_chain_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
END;

CREATE TRIGGER audit_events_advance_on_link AFTER UPDATE ON audit_events
BEGIN
    UPDATE audit_chain_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
END;

-- The head only ever moves one link forward, onto a row that exists.
CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE ON audit_chain_head
WHEN NEW.id IS NOT OLD.id OR NEW.seq IS NOT OLD.seq + 1
  OR NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.seq = NEW.seq AND e.hash = NEW.hash)
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_head only moves one link forward');
END;

CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE ON audit_chain_head
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_head cannot be deleted');
END;
