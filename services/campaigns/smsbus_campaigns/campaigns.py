"""The campaigns service (SPEC §12): feeds RUNNING campaigns into `messages` at each campaign's
rate, only inside its allowed hours; starts SCHEDULED campaigns when their time comes and
ends a campaign FINISHED once every recipient has its message. Campaign moves: SCHEDULED ->
RUNNING -> FINISHED; recipient moves: PENDING -> MESSAGED, in the transaction that inserts
its message (a kill -9 leaves both or neither: no duplicate, none skipped).

Any number of copies share the work: a feeder holds a campaign's row (FOR UPDATE SKIP LOCKED)
while it feeds one batch, and the pacing clock (`campaigns.fed_until`) lives in that row.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated, Any

import msgspec
import prometheus_client

from smsbus.bus import CAMPAIGNS
from smsbus.campaigns import render
from smsbus.config import OptionalPort, Seconds
from smsbus.loop import Connection, LoopSettings, prepare, run

SERVICE = "campaigns"

log = logging.getLogger(SERVICE)

FED = prometheus_client.Counter("smsbus_campaign_messages_total", "Messages made for campaign recipients")
RUNNING = prometheus_client.Gauge("smsbus_campaigns_running", "Campaigns in state RUNNING")
HELD_BACK = prometheus_client.Counter(
    "smsbus_campaign_held_back_total",
    "Feeds skipped because the campaign's earlier messages still wait in the queue",
)
FINISHED = prometheus_client.Counter("smsbus_campaigns_finished_total", "Campaigns that made their last message")

START_DUE = """
UPDATE campaigns SET state = 'RUNNING', fed_until = now(), started_at = coalesce(started_at, now())
WHERE state = 'SCHEDULED' AND start_at <= now()
RETURNING id, name
"""
DUE_CONDITION = """
state = 'RUNNING'
AND campaign_window_open(allowed_from, allowed_until, time_zone, now())
AND fed_until + make_interval(secs => 1 / rate_per_s) <= now()
"""
SELECT_DUE = f"SELECT id FROM campaigns WHERE {DUE_CONDITION} ORDER BY fed_until"
# the campaign's row is the feeder's lock; `owed` is what the pacing clock allows now, with
# at most a second's burst after a gap (a pause, closed hours, a slow queue)
CLAIM_CAMPAIGN = f"""
SELECT id, name, template, sender, channel, rate_per_s,
       greatest(fed_until, now() - interval '1 second') AS clock,
       floor(extract(epoch FROM now() - greatest(fed_until, now() - interval '1 second')) * rate_per_s)::bigint AS owed
FROM campaigns WHERE id = %(id)s AND {DUE_CONDITION}
FOR UPDATE SKIP LOCKED
"""
# the campaign's messages not yet claimed by a channel: more than a second's worth waiting
# means the channels are slower than the rate, and feeding more would only fill the queue
COUNT_WAITING = """
SELECT count(*) AS n FROM (
    SELECT 1 FROM messages WHERE campaign_id = %(id)s AND status = 'QUEUED' LIMIT %(cap)s
) AS waiting
"""
PICK_RECIPIENTS = """
SELECT id, address, fields FROM campaign_recipients
WHERE campaign_id = %(id)s AND state = 'PENDING'
ORDER BY id LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
# message ids taken ahead, so that each recipient row can name its message in the same transaction
RESERVE_MESSAGE_IDS = "SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id FROM generate_series(1, %(n)s)"
INSERT_MESSAGES = """
INSERT INTO messages (id, direction, to_address, from_address, body, channel, campaign_id)
SELECT m.id, 'out', m.to_address, %(sender)s, m.body, %(channel)s, %(campaign_id)s
FROM unnest(%(ids)s::bigint[], %(addresses)s::text[], %(bodies)s::text[]) AS m(id, to_address, body)
"""
MARK_MESSAGED = """
UPDATE campaign_recipients AS r SET state = 'MESSAGED', message_id = m.message_id
FROM unnest(%(recipient_ids)s::bigint[], %(message_ids)s::bigint[]) AS m(recipient_id, message_id)
WHERE r.id = m.recipient_id AND r.state = 'PENDING'
"""
ADVANCE_CLOCK = """
UPDATE campaigns SET fed_until = %(clock)s + make_interval(secs => %(fed)s / rate_per_s),
                     fed_count = fed_count + %(fed)s
WHERE id = %(id)s
"""
FINISH_IF_DONE = """
UPDATE campaigns SET state = 'FINISHED', ended_at = now()
WHERE id = %(id)s AND state = 'RUNNING'
  AND NOT EXISTS (SELECT 1 FROM campaign_recipients WHERE campaign_id = %(id)s AND state = 'PENDING')
RETURNING name
"""
# when work falls due next: a scheduled start, or a running campaign's next feed (not before its
# hours open); the service asks again at least every feed_interval_s while a campaign runs
SELECT_NEXT_DUE = """
SELECT extract(epoch FROM min(CASE
    WHEN state = 'SCHEDULED' THEN start_at
    ELSE greatest(campaign_window_opens(allowed_from, allowed_until, time_zone, now()),
                  fed_until + make_interval(secs => 1 / rate_per_s))
END))::float8 AS due, count(*) FILTER (WHERE state = 'RUNNING') AS running
FROM campaigns WHERE state IN ('SCHEDULED', 'RUNNING')
"""


class CampaignsSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # most messages made in one transaction
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    # feed at most this often per campaign: slow rates still get one message at a time
    feed_interval_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.1
    # stop feeding while this many seconds' worth of a campaign's messages wait for a channel
    # (so a pause takes effect on the wire within about that long)
    queue_ahead_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    poll_interval_s: Seconds = 5.0
    metrics_port: OptionalPort = 16735


class Feeder:
    def __init__(self, own: CampaignsSettings) -> None:
        self.settings = own
        self.next_due: float | None = None

    def step(self, conn: Connection) -> int:
        """Start what is due, feed one batch to every campaign that is owed messages."""
        for row in conn.execute(START_DUE).fetchall():
            log.info("campaign started campaign=%s", row["name"])
        due = [row["id"] for row in conn.execute(SELECT_DUE)]
        conn.commit()
        fed = sum(self.feed(conn, campaign_id) for campaign_id in due)
        self.next_due = self._next_due(conn)
        return fed

    def feed(self, conn: Connection, campaign_id: int) -> int:
        """One batch for one campaign, one transaction."""
        try:
            campaign = conn.execute(CLAIM_CAMPAIGN, {"id": campaign_id}).fetchone()
            if campaign is None:
                # another feeder holds it, or it stopped being due since
                return 0
            fed = self._feed_claimed(conn, campaign)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return fed

    def _feed_claimed(self, conn: Connection, campaign: dict[str, Any]) -> int:
        cap = max(1, math.ceil(campaign["rate_per_s"] * self.settings.queue_ahead_s))
        waiting = conn.execute(COUNT_WAITING, {"id": campaign["id"], "cap": cap}).fetchone()
        assert waiting is not None
        limit = min(int(campaign["owed"]), self.settings.batch_size, cap - waiting["n"])
        if limit <= 0:
            HELD_BACK.inc()
            return 0
        recipients = conn.execute(PICK_RECIPIENTS, {"id": campaign["id"], "limit": limit}).fetchall()
        if recipients:
            message_ids = [row["id"] for row in conn.execute(RESERVE_MESSAGE_IDS, {"n": len(recipients)})]
            conn.execute(INSERT_MESSAGES, {
                "campaign_id": campaign["id"], "sender": campaign["sender"], "channel": campaign["channel"],
                "ids": message_ids,
                "addresses": [row["address"] for row in recipients],
                "bodies": [render(campaign["template"], row["address"], row["fields"]) for row in recipients],
            })
            recipient_ids = [row["id"] for row in recipients]
            conn.execute(MARK_MESSAGED, {"recipient_ids": recipient_ids, "message_ids": message_ids})
            conn.execute(ADVANCE_CLOCK, {"id": campaign["id"], "clock": campaign["clock"], "fed": len(recipients)})
            FED.inc(len(recipients))
        if len(recipients) < limit:
            finished = conn.execute(FINISH_IF_DONE, {"id": campaign["id"]}).fetchone()
            if finished is not None:
                FINISHED.inc()
                log.info("campaign finished campaign=%s", finished["name"])
                # a state change counts as work done: the loop looks again
                return len(recipients) or 1
        return len(recipients)

    def _next_due(self, conn: Connection) -> float | None:
        row = conn.execute(SELECT_NEXT_DUE).fetchone()
        conn.commit()
        assert row is not None
        RUNNING.set(row["running"])
        if row["due"] is None:
            return None
        if not row["running"]:
            return float(row["due"])
        # a campaign held back by a full queue is "due" now: look again after feed_interval_s
        return max(float(row["due"]), time.time() + self.settings.feed_interval_s)

    def next_wake(self) -> float | None:
        return self.next_due


def main() -> None:
    settings, own = prepare(SERVICE, CampaignsSettings)
    feeder = Feeder(own)
    run(
        settings=settings,
        service=SERVICE,
        loop=LoopSettings(poll_interval_s=own.poll_interval_s, metrics_port=own.metrics_port),
        step=feeder.step,
        wake_on=[CAMPAIGNS],
        next_wake=feeder.next_wake,
    )
