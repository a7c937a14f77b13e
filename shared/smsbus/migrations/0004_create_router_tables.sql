-- The router (SPEC §5): its claim index, the daily counts behind channel daily limits, and
-- rule conditions that the database itself refuses when they do not compile.

-- The router claims QUEUED messages it has not passed yet; channels claim the passed ones.
CREATE INDEX messages_unrouted_idx ON messages (id) WHERE status = 'QUEUED' AND routed_at IS NULL;

-- Messages the router passed to each channel per day (in the router's time zone). A router
-- locks the rows of the channels it routes to, in name order, inside its routing
-- transaction: several routers together never pass a channel more than its daily_limit.
CREATE TABLE channel_daily_counts (
    channel text NOT NULL REFERENCES channels (name) ON DELETE CASCADE ON UPDATE CASCADE,
    day     date NOT NULL,
    routed  integer NOT NULL DEFAULT 0 CONSTRAINT channel_daily_counts_routed_not_negative CHECK (routed >= 0),
    PRIMARY KEY (channel, day)
);

ALTER TABLE routing_rules ADD CONSTRAINT routing_rules_weights_positive
    CHECK (weights IS NULL OR 0 < ALL (weights));

-- A condition is compiled by PostgreSQL when it is saved, by any client (the CLI, the API,
-- plain SQL): a typo, an unknown column or a non-boolean expression is refused at once with
-- PostgreSQL's own message, and so never reaches the router. `false AND` runs nothing.
CREATE FUNCTION rules_check_condition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    hint text;
BEGIN
    BEGIN
        EXECUTE 'SELECT 1 FROM messages WHERE false AND (' || E'\n' || NEW.condition || E'\n) LIMIT 0';
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
        RAISE EXCEPTION 'condition of % "%" refused: %', TG_ARGV[0], NEW.name, SQLERRM
            USING ERRCODE = SQLSTATE, HINT = hint, COLUMN = 'condition', TABLE = TG_TABLE_NAME;
    END;
    RETURN NEW;
END
$$;

CREATE TRIGGER blocking_rules_check_condition BEFORE INSERT OR UPDATE OF condition ON blocking_rules
    FOR EACH ROW EXECUTE FUNCTION rules_check_condition('blocking rule');
CREATE TRIGGER routing_rules_check_condition BEFORE INSERT OR UPDATE OF condition ON routing_rules
    FOR EACH ROW EXECUTE FUNCTION rules_check_condition('routing rule');

-- The same test as 0001's, in linear time: 0001 joined the transition tables, which
-- PostgreSQL plans as a nested loop, so an UPDATE of n rows that changes no status (the
-- router's pass of a batch) cost n^2 comparisons: 0.1 s for 1,000 rows. EXCEPT hashes,
-- and treats NULLs as equal exactly as IS DISTINCT FROM did.
CREATE OR REPLACE FUNCTION messages_notify_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT id, status, trigger_status, ack_status FROM new_rows
               EXCEPT
               SELECT id, status, trigger_status, ack_status FROM old_rows) THEN
        PERFORM pg_notify('smsbus', 'status');
    ELSIF EXISTS (SELECT 1 FROM new_rows) THEN
        PERFORM pg_notify('smsbus', 'nonstatus');
    END IF;
    RETURN NULL;
END
$$;
