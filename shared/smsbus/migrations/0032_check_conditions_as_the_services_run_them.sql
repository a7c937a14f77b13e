-- 0009 compiled a condition in a template of its own (`WHERE false AND (cond) LIMIT 0`), not
-- the ones the services run it in: `true) ORDER BY (1` passed there and then failed every
-- message in the router's `CASE WHEN (cond) THEN id ... END`. A condition is now compiled in
-- each shape a service runs it in, each as a statement of its own (so text that closes a
-- parenthesis cannot balance one shape against another): 0009's lone boolean first (its
-- words for the usual typos), the router's CASE branch, the triggers service's
-- `CASE WHEN (cond) IS TRUE` (smsbus.triggers.matching_triggers_query). A cursor plans the text and refuses a second statement before any
-- of it runs; `WHERE false` and LIMIT 0 return no row. The same check now guards `triggers`
-- rows written by plain SQL, as it guards the rules.
CREATE OR REPLACE FUNCTION rules_check_condition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    hint text;
    shape text;
    unused record;
BEGIN
    FOREACH shape IN ARRAY ARRAY[
        'SELECT 1 FROM messages WHERE false AND (%s) LIMIT 0',
        'SELECT CASE WHEN (%s) THEN 1 END FROM messages WHERE false LIMIT 0',
        'SELECT ARRAY[CASE WHEN (%s) IS TRUE THEN 1::bigint END] FROM messages WHERE false LIMIT 0'
    ] LOOP
        BEGIN
            FOR unused IN EXECUTE format(shape, E'\n' || NEW.condition || E'\n') LOOP
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
            RAISE EXCEPTION 'condition of % "%" refused: %', TG_ARGV[0], NEW.name, SQLERRM
                USING ERRCODE = SQLSTATE, HINT = hint, COLUMN = 'condition', TABLE = TG_TABLE_NAME;
        END;
    END LOOP;
    RETURN NEW;
END
$$;

CREATE TRIGGER triggers_check_condition BEFORE INSERT OR UPDATE OF condition ON triggers
    FOR EACH ROW EXECUTE FUNCTION rules_check_condition('trigger');
