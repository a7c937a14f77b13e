-- A concatenated message whose first parts went out before the modem refused one (or before
-- the channel stopped): a retry sends only the parts that did not go out, with the same
-- concatenation reference and alphabet, so the recipient's phone joins them into one text
-- and gets no part twice (SPEC §4). Written (and committed) after each part the modem
-- accepted, before the next AT+CMGS, so a crash keeps it too; deleted when the message is
-- SENT. The parts' TP-MRs are also in message_parts (0007) when reports are asked for, so
-- the reports of the early parts match while the rest waits for its retry.
CREATE TABLE gsm_partial_sends (
    message_id    bigint PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    -- the channel whose reference this is: another channel sends the message whole
    channel       text NOT NULL,
    concatenation_reference integer NOT NULL
        CONSTRAINT gsm_partial_sends_reference_octet CHECK (concatenation_reference BETWEEN 0 AND 255),
    encoding      text NOT NULL CONSTRAINT gsm_partial_sends_encoding_known CHECK (encoding IN ('gsm7', 'ucs2')),
    total_parts   integer NOT NULL CONSTRAINT gsm_partial_sends_total_concatenated CHECK (total_parts > 1),
    -- TP-MR of parts 1..n that went out, in order
    sent_references integer[] NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT gsm_partial_sends_some_not_sent CHECK (cardinality(sent_references) < total_parts)
);
