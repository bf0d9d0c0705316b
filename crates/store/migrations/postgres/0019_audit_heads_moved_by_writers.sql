-- Audited writes move their chain's head themselves (PostgreSQL; the same
-- rules as migrations/sqlite/0019_audit_heads_moved_by_writers.sql).
--
-- Until now the row trigger audit_events_guard checked every new event
-- against its head and moved the head: a PL/pgSQL call and an UPDATE through
-- SPI per event, about a sixth of an audited write's CPU at 16 writers. Now
-- the writer's own statement locks a head, inserts the linked events and
-- moves the head onto the last of them (src/audit.rs), all or nothing.
--
-- What the database still refuses: changing or deleting an event (the one
-- update allowed links an event from before 0004, and moves its head from
-- the trigger as before), an event without a complete link (CHECK below), a
-- head moving back or to another chain, adding or removing heads. What it no
-- longer refuses but `certflow admin verify-audit` names: an event written
-- around the store that does not extend its head, or a head moved past its
-- events (it breaks the chain at that seq, or leaves its head behind it).
--
-- Chains written before stay as they are and verify as before.
DROP TRIGGER audit_events_guard ON audit_events;
CREATE TRIGGER audit_events_guard BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_guard();

-- NOT VALID: events from before 0004 (no link yet) stay, to be linked when
-- the store opens; every new or linked row must have a complete link.
ALTER TABLE audit_events ADD CONSTRAINT audit_events_linked
    CHECK (coalesce(seq, 0) >= 1 AND coalesce(length(prev_hash), 0) = 64
           AND coalesce(length(hash), 0) = 64)
    NOT VALID;

-- A head moves forward within its chain only, onto a full hash; by more than
-- one link when a batch of events is written at once. Evaluated without
-- calling PL/pgSQL.
CREATE OR REPLACE FUNCTION audit_chain_head_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_chain_head only moves forward within its chain, and has one row per chain';
END
$$;

DROP TRIGGER audit_chain_head_guard ON audit_chain_head;
CREATE TRIGGER audit_chain_head_guard BEFORE UPDATE ON audit_chain_head
    FOR EACH ROW
    WHEN (NEW.chain IS DISTINCT FROM OLD.chain OR NEW.seq IS NULL OR NEW.seq <= OLD.seq
          OR length(NEW.hash) IS DISTINCT FROM 64)
    EXECUTE FUNCTION audit_chain_head_refuse();
