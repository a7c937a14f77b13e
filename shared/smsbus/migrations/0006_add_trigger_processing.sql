-- The triggers service (SPEC §6): its claim index, who holds a claim, where a trigger's
-- failure is written, and the block list that the STOP opt-out example fills.

-- `error` holds the sending error (the channel's words); a failing trigger must not
-- overwrite it, so the trigger's own error has a column of its own.
ALTER TABLE messages ADD COLUMN trigger_error text;

-- The backend (pg_backend_pid()) of the triggers process that claimed the message (PENDING).
-- When that backend is gone, its claims go back to N/A for another process to take.
ALTER TABLE messages ADD COLUMN trigger_owner_pid integer;

-- The claim: permanent messages not yet offered to the triggers, and claims to look after.
-- Must list the same statuses as smsbus.statuses.PERMANENT (a test compares them).
CREATE INDEX messages_trigger_work_idx ON messages (id)
    WHERE trigger_status IN ('N/A', 'PENDING')
      AND status IN ('SENT', 'FAILED', 'NOCHANNEL', 'BLOCKED', 'DAILYLIMIT', 'DELIVERED',
                     'NOTDELIVERED', 'NOREPORT', 'RECEIVED');

-- Numbers that asked not to be sent to (the STOP keyword example in deploy/triggers/).
-- A blocking rule uses it: `to_address IN (SELECT address FROM blocked_addresses)`.
CREATE TABLE blocked_addresses (
    address    text PRIMARY KEY
               CONSTRAINT blocked_addresses_address_format CHECK (
                   address ~ '^(\+[1-9][0-9]{1,14}|[0-9]{1,15}|(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9 ._&-]{0,10})$'),
    reason     text NOT NULL DEFAULT '',
    -- the message that asked, when a trigger put the address here
    message_id bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);
