"""The router (SPEC §5): releases SCHEDULED messages when their time comes, and passes every
QUEUED message it has not seen through the blocking rules, the routing rules and the daily
limits. Status moves: SCHEDULED -> QUEUED; QUEUED -> BLOCKED | NOCHANNEL | DAILYLIMIT
(| FAILED when a rule raises on that message); a QUEUED message it passes gets its channel
and routed_at; the database announces `outgoing.<channel>` when the pass commits (0031).
Any number of routers share the queue: claims skip what another router holds, and daily
counts are row-locked in channel-name order inside the routing transaction.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from datetime import date
from typing import Annotated

import msgspec
import prometheus_client
import psycopg

from smsbus import queue
from smsbus.bus import CONFIG, STATUS
from smsbus.channel_health import connected_channels
from smsbus.config import OptionalPort, Seconds
from smsbus.loop import Connection, LoopSettings, first_line, prepare, run
from smsbus.metrics import count_moves
from smsbus.routing import (
    BY_ID_SOURCE,
    CLAIMED_SOURCE,
    Decision,
    Evaluated,
    Rotation,
    Rules,
    channel_states,
    check_time_zone,
    decide,
    evaluate,
    load_rules,
    read_channels,
    today,
)
from smsbus.statuses import Status, check_move
from smsbus_router.queue_depth import QueueDepth

SERVICE = "router"

log = logging.getLogger(SERVICE)

RELEASED = prometheus_client.Counter(
    "smsbus_router_released_total", "SCHEDULED messages released to QUEUED"
)
RULE_FAILURES = prometheus_client.Counter(
    "smsbus_router_rule_failures_total", "Batches whose rule query failed and were routed one by one"
)

CLAIM_DUE = """
SELECT id FROM messages WHERE status = 'SCHEDULED' AND scheduled_at <= now()
ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""
SELECT_NEXT_DUE = """
SELECT extract(epoch FROM min(scheduled_at))::float8 AS due FROM messages WHERE status = 'SCHEDULED'
"""
CLAIM_UNROUTED = f"SELECT id, row_ctid::text FROM {CLAIMED_SOURCE} AS claimed"
# in name order, so that routers sharing channels always lock them in the same order
CREATE_DAILY_COUNTS = """
INSERT INTO channel_daily_counts (channel, day)
SELECT channel, %(day)s FROM unnest(%(channels)s::text[]) AS channel ORDER BY channel
ON CONFLICT DO NOTHING
"""
LOCK_DAILY_COUNTS = """
SELECT channel, routed FROM channel_daily_counts
WHERE day = %(day)s AND channel = ANY(%(channels)s)
ORDER BY channel FOR UPDATE
"""
ADD_DAILY_COUNTS = """
UPDATE channel_daily_counts AS counts SET routed = counts.routed + added.routed
FROM unnest(%(channels)s::text[], %(routed)s::int[]) AS added(channel, routed)
WHERE counts.channel = added.channel AND counts.day = %(day)s
"""
# Every verdict of a batch in one guarded statement: QUEUED stays QUEUED with its channel and
# routed_at (the pass), the rest move to their final status (allowed by smsbus.statuses,
# checked before, and by the database's trigger). Rows are found by the TIDs the claim locked:
# the guard compares status with a column of the batch, not a constant, so that the planner
# cannot prefer a partial index whose statistics a burst of new rows has made stale.
APPLY_DECISIONS = """
UPDATE messages AS m
SET status = d.status, channel = coalesce(d.channel, m.channel), error = d.error,
    routed_at = CASE WHEN d.status = 'QUEUED' THEN now() END
FROM unnest(%(ctids)s::tid[], %(ids)s::bigint[], %(from_statuses)s::text[], %(statuses)s::text[],
            %(channels)s::text[], %(errors)s::text[]) AS d(ctid, id, from_status, status, channel, error)
WHERE m.ctid = d.ctid AND m.id = d.id
  AND m.status = d.from_status AND m.routed_at IS NULL
RETURNING m.status, m.channel
"""
# after a step finds a due message still held by another router, look again this soon
RETRY_HELD_S = 0.05


class RouterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    poll_interval_s: Seconds = 5.0
    metrics_port: OptionalPort = 16731
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    # the day daily limits count in
    time_zone: str = "UTC"
    # the longest the rules may take over one batch (or, after a failure, one message)
    rule_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    # how often the queue depth gauges are refreshed (0 = never)
    queue_depth_interval_s: Seconds = 15.0

    def __post_init__(self) -> None:
        check_time_zone(self.time_zone)


class Router:
    def __init__(self, own: RouterSettings) -> None:
        self.own = own
        self.rotation = Rotation()
        self.next_due_at: float | None = None
        self.rules: Rules | None = None
        self.queue_depth = QueueDepth()
        # wall-clock time of the next queue depth refresh; None when they are off
        self.next_queue_depth_at: float | None = 0.0 if own.queue_depth_interval_s > 0 else None

    # -- what the main loop calls ------------------------------------------------------

    def step(self, conn: Connection) -> int:
        """Release what is due, route one batch, and refresh the queue depth when its time has
        come (between batches, so a backlog never waits for it); the number of messages handled."""
        handled = self.release_due(conn) + self.route_batch(conn)
        if self.next_queue_depth_at is not None and time.time() >= self.next_queue_depth_at:
            self.queue_depth.refresh(conn)
            self.next_queue_depth_at = time.time() + self.own.queue_depth_interval_s
        return handled

    def next_wake(self) -> float | None:
        return min((t for t in (self.next_due_at, self.next_queue_depth_at) if t is not None), default=None)

    # -- SCHEDULED -> QUEUED -----------------------------------------------------------

    def release_due(self, conn: Connection) -> int:
        ids = [row["id"] for row in conn.execute(CLAIM_DUE, {"limit": self.own.batch_size})]
        released = queue.move(conn, ids, Status.SCHEDULED, Status.QUEUED)
        row = conn.execute(SELECT_NEXT_DUE).fetchone()
        conn.commit()
        RELEASED.inc(len(released))
        due = row["due"] if row else None
        if due is not None and due <= time.time() and not released:
            # due but held by another router that is releasing it right now
            due = time.time() + RETRY_HELD_S
        self.next_due_at = due
        return len(released)

    # -- QUEUED: blocking rules, routing rules, daily limits -----------------------------

    def route_batch(self, conn: Connection) -> int:
        # read every batch (two small queries): an edit applies to the very next message
        rules = load_rules(conn)
        if rules != self.rules:
            log.info("rules loaded blocking=%d routing=%d", len(rules.blocking), len(rules.routing))
            self.rules = rules
        evaluated, failed, ctids = self.claim_and_evaluate(conn, rules)
        if not ctids:
            conn.commit()
            return 0
        day = today(conn, self.own.time_zone)
        channels = read_channels(conn)
        limited = sorted(
            name for name in wanted_channels(evaluated, rules)
            if name in channels and channels[name][1] is not None
        )
        routed_today = lock_daily_counts(conn, day, limited)
        states = channel_states(channels, connected_channels(conn), routed_today)
        decisions = decide(evaluated, rules, states, self.rotation) + failed
        applied = apply(conn, decisions, ctids, day, limited)
        conn.commit()
        receiving = {channel for status, channel in applied if status == Status.QUEUED}
        for (status, channel), count in applied.items():
            count_moves(status, channel, count)
        log.debug("routed batch=%d channels=%s", len(decisions), ",".join(sorted(receiving)) or "-")
        return len(decisions)

    def claim_and_evaluate(
        self, conn: Connection, rules: Rules
    ) -> tuple[list[Evaluated], list[Decision], dict[int, str]]:
        """The whole batch in one query; if a rule raises (a bad cast, the timeout), claim the
        batch and evaluate message by message, so only the messages it raises on fail.
        Returns the evaluated, the failed, and the TID of every claimed row by id."""
        try:
            with conn.transaction():
                params = {"limit": self.own.batch_size}
                evaluated = evaluate(conn, rules, CLAIMED_SOURCE, params, self.own.rule_timeout_s)
                return evaluated, [], {e.id: e.row_ctid for e in evaluated if e.row_ctid is not None}
        except psycopg.Error as e:
            if not is_rule_failure(e):
                raise
            error = e
        RULE_FAILURES.inc()
        log.error("rules failed on a batch, routing it one by one error=%s", first_line(error))
        return self.evaluate_one_by_one(conn, rules)

    def evaluate_one_by_one(
        self, conn: Connection, rules: Rules
    ) -> tuple[list[Evaluated], list[Decision], dict[int, str]]:
        claimed = conn.execute(CLAIM_UNROUTED, {"limit": self.own.batch_size}).fetchall()
        ctids = {row["id"]: row["row_ctid"] for row in claimed}
        evaluated: list[Evaluated] = []
        failed: list[Decision] = []
        for message_id in sorted(ctids):
            try:
                with conn.transaction():
                    evaluated += evaluate(
                        conn, rules, BY_ID_SOURCE, {"ids": [message_id]}, self.own.rule_timeout_s
                    )
            except psycopg.Error as e:
                if not is_rule_failure(e):
                    raise
                failed.append(Decision(message_id, Status.FAILED, error=f"routing rules failed: {first_line(e)}"))
        return evaluated, failed, ctids


def is_rule_failure(error: psycopg.Error) -> bool:
    """A condition that raised or ran out of time, as opposed to a lost connection."""
    return isinstance(error, psycopg.errors.QueryCanceled) or not isinstance(error, psycopg.OperationalError)


def wanted_channels(evaluated: Iterable[Evaluated], rules: Rules) -> set[str]:
    """Every channel this batch might be passed to."""
    wanted: set[str] = set()
    for message in evaluated:
        if message.blocking_rule_id is not None:
            continue
        if message.channel is not None:
            wanted.add(message.channel)
        elif message.routing_rule_id is not None:
            wanted.update(rules.routing_by_id[message.routing_rule_id].channels)
    return wanted


def lock_daily_counts(conn: Connection, day: date, channels: list[str]) -> dict[str, int]:
    """Today's counts of these channels, locked until the commit."""
    if not channels:
        return {}
    params = {"day": day, "channels": channels}
    conn.execute(CREATE_DAILY_COUNTS, params)
    return {row["channel"]: row["routed"] for row in conn.execute(LOCK_DAILY_COUNTS, params)}


def apply(
    conn: Connection, decisions: list[Decision], ctids: dict[int, str], day: date, limited: list[str]
) -> Counter[tuple[str, str]]:
    """Write the decisions and count the passes; returns the messages written by (status,
    channel, "" for none): QUEUED is a pass to that channel."""
    for status in {d.status for d in decisions} - {Status.QUEUED}:
        check_move(Status.QUEUED, status)
    params = {
        "ctids": [ctids[d.id] for d in decisions],
        "ids": [d.id for d in decisions],
        "from_statuses": [str(Status.QUEUED)] * len(decisions),
        "statuses": [str(d.status) for d in decisions],
        "channels": [d.channel for d in decisions],
        "errors": [d.error for d in decisions],
    }
    applied = Counter((row["status"], row["channel"] or "") for row in conn.execute(APPLY_DECISIONS, params))
    received = {channel: count for (status, channel), count in applied.items() if status == Status.QUEUED}
    counted = [name for name in limited if received.get(name)]
    if counted:
        conn.execute(
            ADD_DAILY_COUNTS, {"day": day, "channels": counted, "routed": [received[c] for c in counted]}
        )
    return applied


def main() -> None:
    settings, own = prepare(SERVICE, RouterSettings)
    router = Router(own)
    run(
        settings=settings,
        service=SERVICE,
        loop=LoopSettings(poll_interval_s=own.poll_interval_s, metrics_port=own.metrics_port),
        step=router.step,
        wake_on=[STATUS, CONFIG],
        next_wake=router.next_wake,
    )
