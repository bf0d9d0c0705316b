-- The audit trail as several independent hash chains (SQLite). Same
-- conventions as 0001_init.sql; 0004_audit_chain.sql explains the links.
--
-- With one chain, every audited write held the one head row from its audit
-- insert to its commit, so on PostgreSQL audited writes committed one at a
-- time. Now there are 16 heads (chains 0..15): a writer takes a head no other
-- transaction holds (PostgreSQL: FOR UPDATE SKIP LOCKED, lowest chain first),
-- so up to 16 audited writes commit side by side. Each event carries its
-- `chain` and a gapless `seq` within that chain; `prev_hash` is the previous
-- link of the same chain, and the hash covers the chain number (src/audit.rs,
-- encoding v2). SQLite has one writer, so it only ever uses chain 0.
--
-- Existing events become chain 0 with their seq and hash unchanged (encoding
-- v1, without the chain number: a prefix of chain 0). Events from before 0004
-- that are still unlinked stay so, to be linked into chain 0 when the store
-- opens.
--
-- The rules of 0004 are rebuilt around the chain number, so they go first.
DROP TRIGGER audit_events_link;
DROP TRIGGER audit_events_no_update;
DROP TRIGGER audit_events_no_delete;
DROP TRIGGER audit_events_advance_on_insert;
DROP TRIGGER audit_events_advance_on_link;
DROP TRIGGER audit_chain_head_forward;
DROP TRIGGER audit_chain_head_no_delete;

ALTER TABLE audit_events ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;

DROP INDEX audit_events_seq;
CREATE UNIQUE INDEX audit_events_chain_seq ON audit_events (chain, seq);

-- One row per chain, each naming the chain's newest link. The old single row
-- (id 1) becomes chain 0; a renamed `id` also makes an older release's
-- `WHERE id = 1` fail instead of linking into the wrong chain.
ALTER TABLE audit_chain_head RENAME TO audit_chain_head_0004;

CREATE TABLE audit_chain_head (
    chain INTEGER NOT NULL PRIMARY KEY CHECK (chain BETWEEN 0 AND 15),
    seq   INTEGER NOT NULL,
    hash  TEXT    NOT NULL
);

INSERT INTO audit_chain_head (chain, seq, hash) SELECT 0, seq, hash FROM audit_chain_head_0004;
INSERT INTO audit_chain_head (chain, seq, hash)
WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 15)
SELECT n, 0, '0000000000000000000000000000000000000000000000000000000000000000' FROM c;

DROP TABLE audit_chain_head_0004;

-- A new event must extend its chain's head by exactly one link.
CREATE TRIGGER audit_events_link BEFORE INSERT ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events: a new event must extend its chain head by one link')
    WHERE NOT EXISTS (
        SELECT 1 FROM audit_chain_head h
        WHERE h.chain = NEW.chain AND NEW.seq = h.seq + 1 AND NEW.prev_hash = h.hash
          AND length(NEW.hash) = 64
    );
END;

-- Append-only. The one update allowed links an event from before 0004
-- (seq still NULL) as a head's next link, changing nothing else.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
WHEN OLD.seq IS NOT NULL
  OR NEW.id IS NOT OLD.id OR NEW.at IS NOT OLD.at OR NEW.subject IS NOT OLD.subject
  OR NEW.source IS NOT OLD.source OR NEW.action IS NOT OLD.action
  OR NEW.target IS NOT OLD.target OR NEW.outcome IS NOT OLD.outcome
  OR NEW.details IS NOT OLD.details
  OR NOT EXISTS (
        SELECT 1 FROM audit_chain_head h
        WHERE h.chain = NEW.chain AND NEW.seq = h.seq + 1 AND NEW.prev_hash = h.hash
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
    UPDATE audit_chain_head SET seq = NEW.seq, hash = NEW.hash WHERE chain = NEW.chain;
END;

CREATE TRIGGER audit_events_advance_on_link AFTER UPDATE ON audit_events
BEGIN
    UPDATE audit_chain_head SET seq = NEW.seq, hash = NEW.hash WHERE chain = NEW.chain;
END;

-- A head only ever moves one link forward, onto a row of its chain that exists.
CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE ON audit_chain_head
WHEN NEW.chain IS NOT OLD.chain OR NEW.seq IS NOT OLD.seq + 1
  OR NOT EXISTS (
        SELECT 1 FROM audit_events e
        WHERE e.chain = NEW.chain AND e.seq = NEW.seq AND e.hash = NEW.hash
     )
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_head only moves one link forward');
END;

CREATE TRIGGER audit_chain_head_no_insert BEFORE INSERT ON audit_chain_head
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_head has one row per chain, made by migration 0017');
END;

CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE ON audit_chain_head
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_head cannot be deleted');
END;
