-- The database announces `outgoing.<channel>` itself, once per statement and channel, for the
-- rows a statement made ready for a channel (QUEUED with routed_at: the router's pass, a plain
-- SQL insert of a routed row, a channel's own retry). Channels then wake on their own topic
-- only, not on every `status` of the whole queue; the router no longer publishes it.
-- Statement-level (transition tables), a constant payload per channel: PostgreSQL merges
-- identical notifications in a transaction. Only names a topic can carry are announced
-- (bus.TOPIC_PATTERN; every row of `channels` matches channels_name_format).
CREATE FUNCTION announce_outgoing_channels(ready_channels text[]) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('smsbus', 'outgoing.' || channel)
    FROM (SELECT DISTINCT unnest(ready_channels) AS channel) AS named
    WHERE channel ~ '^[a-z0-9][a-z0-9_-]{0,62}$'
$$;

CREATE OR REPLACE FUNCTION messages_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows) THEN
        PERFORM pg_notify('smsbus', 'status');
        PERFORM announce_outgoing_channels(ARRAY(
            SELECT channel FROM new_rows
            WHERE status = 'QUEUED' AND routed_at IS NOT NULL AND channel IS NOT NULL));
    END IF;
    RETURN NULL;
END
$$;

-- 0004's test for `status` / `nonstatus`, then the rows that became ready for a channel in
-- this statement (the router's pass is a `nonstatus` update; a row that was ready before and
-- still is is not announced again).
CREATE OR REPLACE FUNCTION messages_notify_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT id, status, trigger_status, ack_status FROM new_rows
               EXCEPT
               SELECT id, status, trigger_status, ack_status FROM old_rows) THEN
        PERFORM pg_notify('smsbus', 'status');
    ELSIF EXISTS (SELECT 1 FROM new_rows) THEN
        PERFORM pg_notify('smsbus', 'nonstatus');
    ELSE
        RETURN NULL;
    END IF;
    PERFORM announce_outgoing_channels(ARRAY(
        SELECT channel FROM (
            SELECT id, channel FROM new_rows
            WHERE status = 'QUEUED' AND routed_at IS NOT NULL AND channel IS NOT NULL
            EXCEPT
            SELECT id, channel FROM old_rows WHERE status = 'QUEUED' AND routed_at IS NOT NULL
        ) AS ready));
    RETURN NULL;
END
$$;
