-- A campaign's messages by status (its progress, and the feeder's look at how many still wait).
CREATE INDEX messages_campaign_idx ON messages (campaign_id, status) WHERE campaign_id IS NOT NULL;

-- Live traffic first: the channels claim one-off messages before campaign messages
-- (ORDER BY campaign_id IS NOT NULL, id). The queued index gets that order, so the claim
-- still reads the index in order and stops at its LIMIT, however many campaign messages wait.
DROP INDEX messages_queued_idx;
CREATE INDEX messages_queued_idx ON messages (channel, (campaign_id IS NOT NULL), id) WHERE status = 'QUEUED';
