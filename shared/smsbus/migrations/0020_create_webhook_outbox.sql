-- Delivery callbacks (SPEC §10): every status change of a message that names a
-- status_callback becomes one row here, written by the statement that changed the status, in
-- its transaction: a crash loses none. The webhooks service delivers the rows of a message one
-- at a time in id order (the same message's changes commit one after the other, row-locked,
-- so id order is change order) and deletes each once the receiver took it.

CREATE TABLE webhook_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      bigint NOT NULL,
    status          text NOT NULL,
    previous_status text NOT NULL,
    changed_at      timestamptz NOT NULL,
    url             text NOT NULL,
    api_key_id      bigint,
    -- the message as it was right after the change: a callback tells what happened then,
    -- even when the message has moved on (or been archived) before the callback goes out
    message         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    -- due time; a claim pushes it out by the claim's lease, so a killed service's claims
    -- fall due again by themselves (at least once)
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    -- delivery given up (after the retry window, or a URL nothing can reach): kept for the
    -- operator, never sent again, and no longer holding back the message's later changes
    abandoned_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- the head of each message's line (the claim) and the due time of the heads (the wake-up)
CREATE INDEX webhook_outbox_message_idx ON webhook_outbox (message_id, id) WHERE abandoned_at IS NULL;


-- One INSERT per statement from the transition tables, and one constant NOTIFY so the
-- webhooks service wakes at once. Only messages with a callback are joined; the function's
-- own enable_nestloop = off makes the join of the transition tables a hash join (a nested
-- loop over them costs n^2, see 0004).
CREATE FUNCTION messages_queue_callbacks() RETURNS trigger LANGUAGE plpgsql
SET enable_nestloop = off AS $$
BEGIN
    INSERT INTO webhook_outbox (message_id, status, previous_status, changed_at, url, api_key_id, message)
    SELECT n.id, n.status, o.status, n.updated_at, n.status_callback, n.api_key_id, to_jsonb(n)
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.status_callback IS NOT NULL AND n.status IS DISTINCT FROM o.status
    ORDER BY n.id;
    IF FOUND THEN
        PERFORM pg_notify('smsbus', 'webhooks');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_queue_callbacks AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION messages_queue_callbacks();
