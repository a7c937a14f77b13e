-- What a GSM modem channel keeps so that an incoming message is stored exactly once (SPEC §4).
-- A message is deleted from the SIM only after its row is committed; a crash between the
-- commit and AT+CMGD leaves it on the SIM, and it is read again after the restart. Every PDU
-- committed is remembered here by a key made from the PDU itself (SHA-256 of the TPDU: it
-- holds the SMSC timestamp, the sender, the concatenation reference and part number, and
-- the text), so the second reading is recognised and only deleted.
-- Concatenated parts wait in incoming_parts (0007) like the SMPP channel's; status reports
-- are matched by TP-MR through message_parts (0007), provider_id = the TP-MR in decimal.
CREATE TABLE gsm_received_pdus (
    channel     text NOT NULL,
    pdu_key     text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, pdu_key)
);

-- the sweep that forgets keys long after their PDU left the SIM
CREATE INDEX gsm_received_pdus_received_idx ON gsm_received_pdus (received_at);
