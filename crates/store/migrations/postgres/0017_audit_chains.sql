-- The audit trail as several independent hash chains (PostgreSQL): the same
-- columns, tables and rules as migrations/sqlite/0017_audit_chains.sql, which
-- explains them, in the conventions of 0001_init.sql.
--
-- A writer locks the lowest-numbered head no other transaction holds
-- (FOR UPDATE SKIP LOCKED) from its audit insert to its commit, so up to 16
-- audited writes commit side by side, each with its own WAL flush; only when
-- all 16 heads are held does a writer wait for one.
DROP TRIGGER audit_events_guard ON audit_events;
DROP TRIGGER audit_events_no_truncate ON audit_events;
DROP TRIGGER audit_events_advance ON audit_events;
DROP TRIGGER audit_chain_head_guard ON audit_chain_head;
DROP TRIGGER audit_chain_head_no_truncate ON audit_chain_head;
DROP FUNCTION audit_events_guard();
DROP FUNCTION audit_events_advance();
DROP FUNCTION audit_chain_head_guard();
DROP FUNCTION audit_events_is_next_link(BIGINT, TEXT, TEXT);

-- A constant default: no table rewrite, every existing row reads chain 0.
ALTER TABLE audit_events ADD COLUMN chain BIGINT NOT NULL DEFAULT 0;

DROP INDEX audit_events_seq;
CREATE UNIQUE INDEX audit_events_chain_seq ON audit_events (chain, seq);

ALTER TABLE audit_chain_head RENAME TO audit_chain_head_0004;
ALTER INDEX audit_chain_head_pkey RENAME TO audit_chain_head_0004_pkey;

CREATE TABLE audit_chain_head (
    chain BIGINT           NOT NULL PRIMARY KEY CHECK (chain BETWEEN 0 AND 15),
    seq   BIGINT           NOT NULL,
    hash  TEXT COLLATE "C" NOT NULL
);

INSERT INTO audit_chain_head (chain, seq, hash) SELECT 0, seq, hash FROM audit_chain_head_0004;
INSERT INTO audit_chain_head (chain, seq, hash)
SELECT n, 0, '0000000000000000000000000000000000000000000000000000000000000000'
FROM generate_series(1, 15) AS n;

DROP TABLE audit_chain_head_0004;

-- Whether NEW is the next link of its chain's head.
CREATE FUNCTION audit_events_is_next_link(
    new_chain BIGINT, new_seq BIGINT, new_prev TEXT, new_hash TEXT
) RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM audit_chain_head h
        WHERE h.chain = new_chain AND new_seq = h.seq + 1 AND new_prev = h.hash
          AND length(new_hash) = 64
    )
$$;

CREATE FUNCTION audit_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT audit_events_is_next_link(NEW.chain, NEW.seq, NEW.prev_hash, NEW.hash) THEN
            RAISE EXCEPTION 'audit_events: a new event must extend its chain head by one link';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE'
       AND OLD.seq IS NULL
       AND (NEW.id, NEW.at, NEW.subject, NEW.source, NEW.action, NEW.target, NEW.outcome,
            NEW.details)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.subject, OLD.source, OLD.action, OLD.target, OLD.outcome,
            OLD.details)
       AND audit_events_is_next_link(NEW.chain, NEW.seq, NEW.prev_hash, NEW.hash) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only';
END
$$;

CREATE FUNCTION audit_events_advance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_chain_head SET seq = NEW.seq, hash = NEW.hash WHERE chain = NEW.chain;
    RETURN NULL;
END
$$;

CREATE FUNCTION audit_chain_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.chain = OLD.chain AND NEW.seq = OLD.seq + 1
       AND EXISTS (
           SELECT 1 FROM audit_events e
           WHERE e.chain = NEW.chain AND e.seq = NEW.seq AND e.hash = NEW.hash
       ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_chain_head only moves one link forward';
END
$$;

CREATE TRIGGER audit_events_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_guard();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_guard();
CREATE TRIGGER audit_events_advance AFTER INSERT OR UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_advance();
CREATE TRIGGER audit_chain_head_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION audit_chain_head_guard();
CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE ON audit_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_head_guard();
