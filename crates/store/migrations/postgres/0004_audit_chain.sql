-- Tamper-evident audit trail (PostgreSQL): the same columns, table and rules
-- as migrations/sqlite/0004_audit_chain.sql, which explains them, in the
-- conventions of 0001_init.sql. TRUNCATE is refused too.
--
-- Every audited write locks the one head row (FOR UPDATE) from its audit
-- insert to its commit, so audited writes commit one at a time; the store
-- inserts the audit event last in each transaction to keep that window short.
ALTER TABLE audit_events
    ADD COLUMN seq       BIGINT,
    ADD COLUMN prev_hash TEXT COLLATE "C",
    ADD COLUMN hash      TEXT COLLATE "C";

CREATE UNIQUE INDEX audit_events_seq ON audit_events (seq);
CREATE INDEX audit_events_unchained ON audit_events (id) WHERE seq IS NULL;

CREATE TABLE audit_chain_head (
    id   INTEGER          NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT           NOT NULL,
    hash TEXT COLLATE "C" NOT NULL
);

INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Whether NEW is the head's next link.
CREATE FUNCTION audit_events_is_next_link(new_seq BIGINT, new_prev TEXT, new_hash TEXT)
RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM audit_chain_head h
        WHERE h.id = 1 AND new_seq = h.seq + 1 AND new_prev = h.hash
          AND length(new_hash) = 64
    )
$$;

CREATE FUNCTION audit_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT audit_events_is_next_link(NEW.seq, NEW.prev_hash, NEW.hash) THEN
            RAISE EXCEPTION 'audit_events: a new event must extend the chain head by one link';
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
       AND audit_events_is_next_link(NEW.seq, NEW.prev_hash, NEW.hash) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only';
END
$$;

CREATE FUNCTION audit_events_advance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_chain_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
    RETURN NULL;
END
$$;

CREATE FUNCTION audit_chain_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id AND NEW.seq = OLD.seq + 1
       AND EXISTS (SELECT 1 FROM audit_events e WHERE e.seq = NEW.seq AND e.hash = NEW.hash) THEN
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
CREATE TRIGGER audit_chain_head_guard BEFORE UPDATE OR DELETE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION audit_chain_head_guard();
CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE ON audit_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_head_guard();
