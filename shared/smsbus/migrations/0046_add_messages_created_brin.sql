-- The dashboard's last hour and the channels' sent-per-minute look at recent messages by
-- created_at. A BRIN index fits a column that grows with the table's physical order: a few
-- pages for millions of rows, and created_at never changes, so status moves stay HOT.
CREATE INDEX messages_created_at_brin ON messages USING brin (created_at);
