-- The router's pass (SPEC §5) and the channels' health, shared by the router and every channel.

-- Set by the router when it lets a message through (blocking rules, limits, a channel chosen).
-- A channel claims only QUEUED messages with routed_at set: naming a channel bypasses nothing.
ALTER TABLE messages ADD COLUMN routed_at timestamptz;

-- What each channel process reports about itself, every few seconds while it runs.
-- A table of its own: a heartbeat must not look like a configuration change (config.channels).
CREATE TABLE channel_health (
    channel    text PRIMARY KEY REFERENCES channels (name) ON DELETE CASCADE ON UPDATE CASCADE,
    connected  boolean NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}'
               CONSTRAINT channel_health_details_is_object CHECK (jsonb_typeof(details) = 'object'),
    updated_at timestamptz NOT NULL DEFAULT now()
);
