-- What an SMPP channel (and any channel like it) keeps in the database so that a crash, a
-- reconnect or an early receipt loses nothing (SPEC §4).

-- A SENDING message is owned through a lease: the owner process and until when it holds it.
-- A new owner requeues (or fails, on_unknown = "fail") SENDING rows whose owner is gone.
ALTER TABLE messages ADD COLUMN lease_owner text;
ALTER TABLE messages ADD COLUMN lease_until timestamptz;

-- The provider id of every part of a sent message; receipts are matched here (the ids are
-- normalised by the channel: hex vs decimal, leading zeros, case). A message is DELIVERED
-- when all its parts are, NOTDELIVERED as soon as one fails.
CREATE TABLE message_parts (
    message_id   bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    part_number  integer NOT NULL CONSTRAINT message_parts_number_positive CHECK (part_number > 0),
    channel      text NOT NULL,
    provider_id  text NOT NULL,
    submitted_at timestamptz NOT NULL DEFAULT now(),
    -- NULL until the part's receipt arrives; then the receipt's final state (DELIVRD, UNDELIV...),
    -- or NOREPORT once the report timeout passed (a late receipt still counts)
    receipt_state text,
    receipt_at    timestamptz,
    PRIMARY KEY (message_id, part_number)
);

-- The receipts still awaited, by provider id: the lookup every receipt makes, and the
-- report-timeout sweep's (channel, submitted_at) walk.
CREATE INDEX message_parts_awaiting_receipt_idx ON message_parts (channel, provider_id)
    WHERE receipt_state IS NULL OR receipt_state = 'NOREPORT';
CREATE INDEX message_parts_awaiting_since_idx ON message_parts (channel, submitted_at)
    WHERE receipt_state IS NULL;

-- Receipts that arrived before the submit_sm_resp with their id was recorded: kept and
-- applied when it is, dropped after the channel's report timeout.
CREATE TABLE early_receipts (
    channel     text NOT NULL,
    provider_id text NOT NULL,
    state       text NOT NULL,
    error       text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, provider_id)
);

-- Parts of incoming concatenated messages waiting for the rest; the message row is written
-- once all parts are here, or when the reassembly timeout passes (with what did arrive).
CREATE TABLE incoming_parts (
    channel      text NOT NULL,
    from_address text NOT NULL,
    reference    integer NOT NULL,
    total        integer NOT NULL CONSTRAINT incoming_parts_total_positive CHECK (total > 0),
    part_number  integer NOT NULL,
    to_address   text,
    data_coding  integer NOT NULL,
    payload      bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, from_address, reference, total, part_number),
    CONSTRAINT incoming_parts_number_in_range CHECK (part_number BETWEEN 1 AND total)
);

CREATE INDEX incoming_parts_received_idx ON incoming_parts (channel, received_at);
