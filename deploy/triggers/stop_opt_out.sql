-- STOP keyword opt-out: the sender goes on the block list, and the later triggers (an
-- auto-reply, say) are skipped for this message. $1 is the message id.
--
--   smsbus triggers add stop-opt-out --script deploy/triggers/stop_opt_out.sql --position 1 \
--       --condition "direction = 'in' AND status = 'RECEIVED' AND body ~* '^\s*(stop|unsubscribe)\s*$'"
--   smsbus rules block add opted-out --condition "to_address IN (SELECT address FROM blocked_addresses)"
WITH opted_out AS (
    INSERT INTO blocked_addresses (address, reason, message_id)
    SELECT from_address, 'STOP keyword', id FROM messages WHERE id = $1
    ON CONFLICT (address) DO NOTHING
)
UPDATE messages SET trigger_status = 'PROCESSED' WHERE id = $1
