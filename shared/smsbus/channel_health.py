"""Channel health: each channel process reports whether it can send, in the database and on
the bus (`health.<channel>`); the router counts a channel usable only while the report is
fresh, so a channel whose process died stops receiving messages by itself.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from smsbus.bus import Publisher

HEALTH = "health"
# a channel reports at least every REPORT_INTERVAL_S; older reports count as disconnected
REPORT_INTERVAL_S = 5.0
MAX_AGE_S = 3 * REPORT_INTERVAL_S

UPSERT_HEALTH = """
INSERT INTO channel_health (channel, connected, details, updated_at)
VALUES (%(channel)s, %(connected)s, %(details)s, now())
ON CONFLICT (channel) DO UPDATE
SET connected = EXCLUDED.connected, details = EXCLUDED.details, updated_at = now()
"""

# the same freshness rule for every reader: usable = connected and reported recently
SELECT_CONNECTED = """
SELECT channel FROM channel_health
WHERE connected AND updated_at > now() - make_interval(secs => %(max_age_s)s)
"""


def health_topic(channel: str) -> str:
    return f"{HEALTH}.{channel}"


def report(
    conn: Any,
    publisher: Publisher | None,
    channel: str,
    *,
    connected: bool,
    details: dict[str, Any] | None = None,
) -> None:
    """Record and announce the channel's state; commits, then publishes."""
    conn.execute(
        UPSERT_HEALTH, {"channel": channel, "connected": connected, "details": Jsonb(details or {})}
    )
    conn.commit()
    if publisher is not None:
        publisher.publish(health_topic(channel))


def connected_channels(conn: Any) -> set[str]:
    return {row["channel"] for row in conn.execute(SELECT_CONNECTED, {"max_age_s": MAX_AGE_S})}
