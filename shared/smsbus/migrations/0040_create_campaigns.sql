-- Campaigns (SPEC §12): stored bulk sends, their recipients, and the rows a load refused.
-- smsbus.campaigns owns the state moves; the campaigns service feeds RUNNING campaigns.

CREATE TABLE campaigns (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL UNIQUE,
    -- "Hello {name}, your code is {code}": {field} from the recipient's fields, {{ and }} literal
    template       text NOT NULL,
    sender         text,
    -- NULL: the router picks a channel for each message
    channel        text,
    state          text NOT NULL DEFAULT 'DRAFT',
    -- SCHEDULED campaigns start at this time (the database's clock)
    start_at       timestamptz,
    rate_per_s     double precision NOT NULL DEFAULT 10,
    -- messages are made only between these local times (both NULL: any time); a window
    -- may wrap midnight (22:00-06:00)
    allowed_from   time,
    allowed_until  time,
    time_zone      text NOT NULL DEFAULT 'UTC',
    -- where national numbers in a load are read (ISO 3166 code); NULL: only +international
    default_region text,
    -- every field name loaded so far (a template may use only these, and {address})
    fields         text[] NOT NULL DEFAULT '{}',
    -- the pacing clock: messages were made for every 1/rate seconds up to this time
    fed_until      timestamptz,
    fed_count      bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    ended_at       timestamptz,

    CONSTRAINT campaigns_name_not_empty CHECK (name <> ''),
    CONSTRAINT campaigns_template_not_blank CHECK (template ~ '\S'),
    CONSTRAINT campaigns_state_known CHECK (
        state IN ('DRAFT', 'SCHEDULED', 'RUNNING', 'PAUSED', 'FINISHED', 'CANCELLED')),
    CONSTRAINT campaigns_rate_positive CHECK (rate_per_s > 0 AND rate_per_s <= 100000),
    CONSTRAINT campaigns_allowed_hours_both_or_neither CHECK (
        (allowed_from IS NULL) = (allowed_until IS NULL) AND allowed_from <> allowed_until),
    CONSTRAINT campaigns_sender_format CHECK (
        sender ~ '^(\+[1-9][0-9]{1,14}|[0-9]{1,15}|(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9 ._&-]{0,10})$'),
    CONSTRAINT campaigns_channel_not_empty CHECK (channel <> ''),
    CONSTRAINT campaigns_default_region_format CHECK (default_region ~ '^[A-Z]{2}$')
);

-- A valid, unique, not opted-out recipient: PENDING until its message is made (MESSAGED,
-- in the same transaction as the message row), CANCELLED when the campaign is.
CREATE TABLE campaign_recipients (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    address     text NOT NULL,
    fields      jsonb NOT NULL DEFAULT '{}',
    state       text NOT NULL DEFAULT 'PENDING',
    message_id  bigint,

    CONSTRAINT campaign_recipients_state_known CHECK (state IN ('PENDING', 'MESSAGED', 'CANCELLED')),
    CONSTRAINT campaign_recipients_messaged_has_message CHECK ((state = 'MESSAGED') = (message_id IS NOT NULL)),
    CONSTRAINT campaign_recipients_fields_is_object CHECK (jsonb_typeof(fields) = 'object'),
    CONSTRAINT campaign_recipients_once_per_campaign UNIQUE (campaign_id, address)
);

-- the feeder's claim: the next PENDING recipients of a campaign, in load order
CREATE INDEX campaign_recipients_pending_idx ON campaign_recipients (campaign_id, id) WHERE state = 'PENDING';

-- What a load refused and why: counted and shown, never silently dropped.
CREATE TABLE campaign_rejected_rows (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    -- the row's line in its file (1 = the first row after the header), or its place in a list
    line        bigint NOT NULL,
    address     text,
    reason      text NOT NULL,
    fields      jsonb NOT NULL DEFAULT '{}',

    CONSTRAINT campaign_rejected_rows_reason_known CHECK (reason IN ('invalid', 'duplicate', 'opted_out'))
);

CREATE INDEX campaign_rejected_rows_campaign_idx ON campaign_rejected_rows (campaign_id, reason);

CREATE FUNCTION campaigns_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER campaigns_before_update BEFORE UPDATE ON campaigns
    FOR EACH ROW EXECUTE FUNCTION campaigns_before_update();

-- Wakes the campaigns service (topic `campaigns`) when a campaign is made, changes state or
-- pacing; not for the feeder's own bookkeeping (fed_until, fed_count), which would wake it in a loop.
CREATE FUNCTION campaigns_notify_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smsbus', 'campaigns');
    RETURN NULL;
END
$$;

CREATE TRIGGER campaigns_notify_changed
    AFTER INSERT OR DELETE OR UPDATE OF state, start_at, rate_per_s, allowed_from, allowed_until, time_zone
    ON campaigns FOR EACH STATEMENT EXECUTE FUNCTION campaigns_notify_changed();

-- Whether `at` falls inside the campaign's allowed hours, in its time zone.
CREATE FUNCTION campaign_window_open(allowed_from time, allowed_until time, time_zone text, at timestamptz)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN allowed_from IS NULL THEN true
        WHEN allowed_from < allowed_until
            THEN (at AT TIME ZONE time_zone)::time >= allowed_from AND (at AT TIME ZONE time_zone)::time < allowed_until
        ELSE (at AT TIME ZONE time_zone)::time >= allowed_from OR (at AT TIME ZONE time_zone)::time < allowed_until
    END
$$;

-- The next time the allowed hours open after `at` (`at` itself when they are open).
CREATE FUNCTION campaign_window_opens(allowed_from time, allowed_until time, time_zone text, at timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN campaign_window_open(allowed_from, allowed_until, time_zone, at) THEN at
        ELSE (SELECT CASE WHEN today > local THEN today ELSE today + interval '1 day' END AT TIME ZONE time_zone
              FROM (SELECT at AT TIME ZONE time_zone AS local,
                           date_trunc('day', at AT TIME ZONE time_zone) + allowed_from AS today) AS l)
    END
$$;
