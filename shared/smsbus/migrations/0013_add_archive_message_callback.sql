-- archive.messages keeps the columns 0012 added to messages (see 0005 for why its own file).
ALTER TABLE archive.messages
    ADD COLUMN IF NOT EXISTS status_callback text,
    ADD COLUMN IF NOT EXISTS api_key_id bigint;
