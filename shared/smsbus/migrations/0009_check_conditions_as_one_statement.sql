-- 0004 compiled a rule's condition with a plain EXECUTE, which runs every statement in its
-- string: a "condition" that closed the parenthesis could run a second statement when the rule
-- was saved. Opening a cursor plans the text and refuses anything but one query before any of
-- it runs ("cannot open multi-query plan as cursor"); `false AND` and LIMIT 0 return no row.
CREATE OR REPLACE FUNCTION rules_check_condition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    hint text;
    unused record;
BEGIN
    BEGIN
        FOR unused IN EXECUTE
            'SELECT 1 FROM messages WHERE false AND (' || E'\n' || NEW.condition || E'\n) LIMIT 0'
        LOOP
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
        RAISE EXCEPTION 'condition of % "%" refused: %', TG_ARGV[0], NEW.name, SQLERRM
            USING ERRCODE = SQLSTATE, HINT = hint, COLUMN = 'condition', TABLE = TG_TABLE_NAME;
    END;
    RETURN NEW;
END
$$;
