-- The archive (SPEC §8): messages the archiver moved out of the live queue.
-- This file is the one definition of the archive schema. `smsbus db migrate` applies it to the
-- live database; the archiver applies it to a separate archive database too
-- (archiver.archive_database_url, see smsbus/archive.py). So: IF NOT EXISTS throughout, and
-- nothing here may refer to a live table. A later change to the archive goes into a migration
-- of its own, listed in smsbus.archive.ARCHIVE_MIGRATIONS.
-- No NOTIFY triggers and no CHECK constraints: nobody waits on archived rows, and the archive
-- keeps whatever the live table accepted.

CREATE SCHEMA IF NOT EXISTS archive;

-- The columns of `messages` in the same order: 0001, routed_at (0003), trigger_error and
-- trigger_owner_pid (0006), lease_owner and lease_until (0007); plus when it was archived.
-- A migration that adds a column to messages adds it here too, in a migration of its own.
CREATE TABLE IF NOT EXISTS archive.messages (
    id                bigint PRIMARY KEY,
    direction         text NOT NULL,
    type              text NOT NULL,
    status            text NOT NULL,
    ack_status        text NOT NULL,
    trigger_status    text NOT NULL,
    channel           text,
    from_address      text,
    to_address        text,
    body              text NOT NULL,
    properties        jsonb NOT NULL,
    client_ref        text,
    scheduled_at      timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    sent_at           timestamptz,
    report_at         timestamptz,
    received_at       timestamptz,
    provider_id       text,
    parts             integer,
    attempts          integer NOT NULL,
    next_attempt_at   timestamptz,
    error             text,
    campaign_id       bigint,
    routed_at         timestamptz,
    trigger_error     text,
    trigger_owner_pid integer,
    lease_owner       text,
    lease_until       timestamptz,
    archived_at       timestamptz NOT NULL DEFAULT now()
);

-- Retention deletes the rows archived longest ago; lookups by id use the primary key.
CREATE INDEX IF NOT EXISTS archive_messages_archived_at_idx ON archive.messages (archived_at);

-- Only for a separate archive database: ids copied into archive.messages whose delete from
-- the live database is not confirmed yet. An archiver that dies between the two commits leaves
-- its ids here; the next pass settles them (see smsbus/archive.py), so nothing is lost or
-- kept twice.
CREATE TABLE IF NOT EXISTS archive.unconfirmed_copies (
    id        bigint PRIMARY KEY,
    copied_at timestamptz NOT NULL DEFAULT now()
);
