-- Audited writes move their chain's head themselves (SQLite), as on
-- PostgreSQL (migrations/postgres/0019_audit_heads_moved_by_writers.sql,
-- which explains why): the writer inserts the linked events, then moves the
-- head onto the last of them in the same transaction (src/audit.rs).
--
-- The database still refuses changing or deleting an event (the one update
-- allowed links an event from before 0004, which still moves its head), an
-- event without a complete link, a head moving back, to another chain or
-- onto an event that is not there, and adding or removing heads. An event
-- written around the store that does not extend its head is no longer
-- refused, but `certflow admin verify-audit` names it.
DROP TRIGGER audit_events_link;
DROP TRIGGER audit_events_advance_on_insert;
DROP TRIGGER audit_chain_head_forward;

CREATE TRIGGER audit_events_linked BEFORE INSERT ON audit_events
WHEN NEW.seq IS NULL OR NEW.seq < 1 OR length(NEW.prev_hash) IS NOT 64
  OR length(NEW.hash) IS NOT 64
BEGIN
    SELECT RAISE(ABORT, 'audit_events: a new event must be linked (seq, prev_hash, hash)');
END;

-- Forward only, by more than one link when a batch is written at once.
CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE ON audit_chain_head
WHEN NEW.chain IS NOT OLD.chain OR NEW.seq IS NULL OR NEW.seq <= OLD.seq
  OR NOT EXISTS (
        SELECT 1 FROM audit_events e
        WHERE e.chain = NEW.chain AND e.seq = NEW.seq AND e.hash = NEW.hash
     )
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_head only moves forward, onto its chain''s newest event');
END;
