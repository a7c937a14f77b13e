"""Queue depth (SPEC §9): how many messages wait in each working state, per channel, and how
long the oldest has waited, for an operator to see a queue backing up. One query, refreshed by
the router on a timer between its batches. Moves no status.
"""

from __future__ import annotations

import prometheus_client

from smsbus.loop import Connection
from smsbus.queue import IS_PERMANENT

QUEUE_DEPTH = prometheus_client.Gauge(
    "smsbus_queue_depth",
    "Messages waiting in a working state (SENT: still awaiting its delivery report); channel '' for none",
    ["status", "channel"],
)
QUEUE_OLDEST_AGE = prometheus_client.Gauge(
    "smsbus_queue_oldest_age_seconds",
    "How long the oldest message in the state has waited since it could go on (0 when none has)",
    ["status", "channel"],
)
TRIGGER_QUEUE_DEPTH = prometheus_client.Gauge(
    "smsbus_trigger_queue_depth",
    "Messages in a permanent status waiting for the triggers service, by trigger_status",
    ["trigger_status"],
)
TRIGGER_QUEUE_OLDEST_AGE = prometheus_client.Gauge(
    "smsbus_trigger_queue_oldest_age_seconds",
    "How long the oldest message waiting for the triggers service has been in its permanent status",
    ["trigger_status"],
)

# Each branch reads one partial index on a working state, so the cost follows the messages in
# hand, never the millions of finished rows. `waiting_since` is when the message could go on:
# the age is 0 while it is not due yet (a SCHEDULED time or a retry's next_attempt_at ahead).
SELECT_QUEUE_DEPTH = f"""
WITH waiting AS (
-- SCHEDULED (messages_scheduled_idx): overdue since its scheduled_at
SELECT 'status' AS axis, 'SCHEDULED' AS status, coalesce(channel, '') AS channel, count(*) AS depth,
       min(scheduled_at) AS waiting_since
FROM messages WHERE status = 'SCHEDULED' GROUP BY channel
UNION ALL
-- QUEUED (messages_queued_idx): since it was created, fell due, or its retry fell due
SELECT 'status', 'QUEUED', coalesce(channel, ''), count(*),
       min(greatest(created_at, scheduled_at, next_attempt_at))
FROM messages WHERE status = 'QUEUED' GROUP BY channel
UNION ALL
-- SENDING (messages_sending_idx): since a channel claimed it
SELECT 'status', 'SENDING', coalesce(channel, ''), count(*), min(updated_at)
FROM messages WHERE status = 'SENDING' GROUP BY channel
UNION ALL
-- SENT and still awaiting a delivery report (message_parts_awaiting_since_idx): since its
-- first part still awaited was submitted; parts of messages already finished do not count
SELECT 'status', 'SENT', parts.channel, count(DISTINCT parts.message_id), min(parts.submitted_at)
FROM message_parts AS parts JOIN messages ON messages.id = parts.message_id
WHERE parts.receipt_state IS NULL AND messages.status = 'SENT'
GROUP BY parts.channel
UNION ALL
-- waiting for the triggers service (messages_trigger_work_idx): since it entered its status
SELECT 'trigger_status', trigger_status, '', count(*), min(updated_at)
FROM messages WHERE trigger_status IN ('N/A', 'PENDING') AND {IS_PERMANENT}
GROUP BY trigger_status
)
SELECT axis, status, channel, depth,
       greatest(0, extract(epoch FROM now() - waiting_since))::float8 AS oldest_age_s
FROM waiting
"""


class QueueDepth:
    """The gauges, refreshed from one query. A (status, channel) once seen and now empty is set
    to 0: a series that kept its last value would show a queue that is no longer there."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, str]] = set()

    def refresh(self, conn: Connection) -> None:
        rows = conn.execute(SELECT_QUEUE_DEPTH).fetchall()
        conn.commit()
        current = {(row["axis"], row["status"], row["channel"]): (row["depth"], row["oldest_age_s"]) for row in rows}
        self.seen.update(current)
        for key in self.seen:
            axis, status, channel = key
            depth, oldest_age_s = current.get(key, (0, 0.0))
            if axis == "status":
                QUEUE_DEPTH.labels(status, channel).set(depth)
                QUEUE_OLDEST_AGE.labels(status, channel).set(oldest_age_s)
            else:
                TRIGGER_QUEUE_DEPTH.labels(status).set(depth)
                TRIGGER_QUEUE_OLDEST_AGE.labels(status).set(oldest_age_s)
