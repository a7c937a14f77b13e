-- Triggers no longer hold a transaction while a script runs: a message stays PROCESSING
-- (committed, under its owner's backend pid) until its actions are applied. When that process
-- dies, its PROCESSING rows are released like its PENDING ones, so the claim index covers them.
-- Must list the same statuses as smsbus.statuses.PERMANENT (a test compares them).
DROP INDEX messages_trigger_work_idx;
CREATE INDEX messages_trigger_work_idx ON messages (id)
    WHERE trigger_status IN ('N/A', 'PENDING', 'PROCESSING')
      AND status IN ('SENT', 'FAILED', 'NOCHANNEL', 'BLOCKED', 'DAILYLIMIT', 'DELIVERED',
                     'NOTDELIVERED', 'NOREPORT', 'RECEIVED');
