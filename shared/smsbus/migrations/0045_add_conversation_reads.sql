-- The Web Messenger (SPEC §11): conversations are a message's other party, and each user's
-- unread count is the incoming messages of a conversation past the one they last saw.

-- The other party of a message, as one expression the conversation queries and this index
-- share. Its columns never change on a status move, so the index costs no HOT update.
CREATE FUNCTION message_party(direction text, to_address text, from_address text)
    RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN direction = 'out' THEN to_address ELSE from_address END;

CREATE INDEX messages_party_idx ON messages (message_party(direction, to_address, from_address), id);

-- How far each user has read each conversation (the newest message id they were shown).
CREATE TABLE conversation_reads (
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    party        text NOT NULL,
    last_read_id bigint NOT NULL,
    read_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, party)
);
