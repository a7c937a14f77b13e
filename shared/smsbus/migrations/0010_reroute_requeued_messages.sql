-- An operator's "send it again" (FAILED, NOCHANNEL, BLOCKED or DAILYLIMIT -> QUEUED) goes
-- through the router again: the rules or limits that stopped it may have changed, and a
-- message must never reach a channel with a stale pass. A retry by its channel
-- (SENDING -> QUEUED) keeps its pass. Otherwise as in 0001.
CREATE OR REPLACE FUNCTION messages_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT EXISTS (SELECT 1 FROM status_moves
                       WHERE from_status = OLD.status AND to_status = NEW.status) THEN
            RAISE EXCEPTION 'status move % -> % is not allowed (message %)',
                OLD.status, NEW.status, OLD.id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'messages_status_move',
                      TABLE = 'messages', COLUMN = 'status';
        END IF;
        IF (SELECT permanent FROM message_statuses WHERE status = NEW.status) THEN
            NEW.trigger_status := 'N/A';
        END IF;
        IF NEW.status = 'QUEUED' AND OLD.status <> 'SENDING' THEN
            NEW.routed_at := NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
