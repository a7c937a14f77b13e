"""Blocking and routing rules compiled into one query, and the channel choice (SPEC §5).

Shared by the router service and `smsbus route explain`, so that explain shows exactly what
the router would decide. Rule conditions are evaluated by PostgreSQL for a whole batch at
once; picking among a matched rule's channels is a pure function of the channels' state.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import psycopg
from psycopg import sql

from smsbus.channel_health import connected_channels
from smsbus.errors import ConfigError
from smsbus.statuses import Status

Strategy = Literal["failover", "round_robin", "weighted"]


class BlockingRule(msgspec.Struct, frozen=True):
    id: int
    position: int
    name: str
    condition: str


class RoutingRule(msgspec.Struct, frozen=True):
    id: int
    position: int
    name: str
    condition: str
    channels: tuple[str, ...]
    strategy: Strategy
    weights: tuple[int, ...] | None


class Rules(msgspec.Struct, frozen=True, dict=True):
    """The enabled rules in their order: what one compiled query evaluates."""

    blocking: tuple[BlockingRule, ...]
    routing: tuple[RoutingRule, ...]

    @functools.cached_property
    def routing_by_id(self) -> dict[int, RoutingRule]:
        return {rule.id: rule for rule in self.routing}

    @functools.cached_property
    def blocking_by_id(self) -> dict[int, BlockingRule]:
        return {rule.id: rule for rule in self.blocking}


class Evaluated(msgspec.Struct, frozen=True):
    """One message as the compiled query saw it: the first matching rule of each kind."""

    id: int
    channel: str | None
    blocking_rule_id: int | None
    routing_rule_id: int | None
    # where the locked row is: the router writes its verdict by TID, which needs no
    # statistics (a burst of new rows has none yet) to find 1,000 rows fast
    row_ctid: str | None = None


class ChannelState(msgspec.Struct, frozen=True):
    enabled: bool
    connected: bool
    # None: no daily limit; otherwise how many more it may be passed today
    remaining_today: int | None


class Decision(msgspec.Struct, frozen=True):
    """The router's verdict on one message: QUEUED with a channel, or a final status."""

    id: int
    status: Status
    channel: str | None = None
    error: str | None = None


SELECT_BLOCKING_RULES = """
SELECT id, position, name, condition FROM blocking_rules WHERE enabled ORDER BY position
"""
SELECT_ROUTING_RULES = """
SELECT id, position, name, condition, channels, strategy, weights
FROM routing_rules WHERE enabled ORDER BY position
"""
SELECT_CHANNELS = "SELECT name, enabled, daily_limit FROM channels"
SELECT_TODAY = "SELECT (now() AT TIME ZONE %(time_zone)s)::date AS day"
SELECT_DAILY_COUNTS = """
SELECT channel, routed FROM channel_daily_counts WHERE day = %(day)s AND channel = ANY(%(channels)s)
"""
SET_RULE_TIMEOUT = "SELECT set_config('statement_timeout', %(timeout_ms)s, true)"

# The compiled query: {source} yields rows shaped like `messages` under the name `messages`,
# so a condition may say `to_address` or `messages.to_address`. A message that names its
# channel skips routing but not the blocking rules.
EVALUATE_RULES = """
SELECT id, channel, row_ctid::text,
       {blocking} AS blocking_rule_id,
       CASE WHEN channel IS NOT NULL THEN NULL ELSE {routing} END AS routing_rule_id
FROM {source} AS messages
"""
# the router's claim: unrouted QUEUED messages in id order, skipping what others hold
CLAIMED_SOURCE = """(
    SELECT *, ctid AS row_ctid FROM messages WHERE status = 'QUEUED' AND routed_at IS NULL
    ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)"""
BY_ID_SOURCE = "(SELECT *, ctid AS row_ctid FROM messages WHERE id = ANY(%(ids)s))"
# a message that does not exist yet, for explain: what a plain INSERT would make of it
PROPOSED_SOURCE = """(
    SELECT (jsonb_populate_record(NULL::messages,
        jsonb_build_object('id', 0, 'direction', 'out', 'status', 'QUEUED', 'type', 'sms',
                           'ack_status', 'N/A', 'trigger_status', 'N/A', 'properties', '{}'::jsonb,
                           'attempts', 0, 'created_at', now(), 'updated_at', now())
        || %(fields)s)).*, NULL::tid AS row_ctid
)"""


def load_rules(conn: psycopg.Connection[Any]) -> Rules:
    blocking = tuple(msgspec.convert(dict(r), BlockingRule) for r in conn.execute(SELECT_BLOCKING_RULES))
    routing = tuple(msgspec.convert(dict(r), RoutingRule) for r in conn.execute(SELECT_ROUTING_RULES))
    return Rules(blocking, routing)


@functools.lru_cache(maxsize=16)
def compile_rules(rules: Rules, source: str) -> sql.Composed:
    """The one query that evaluates every rule for every message of `source`."""
    return sql.SQL(EVALUATE_RULES).format(
        blocking=_first_match((rule.condition, rule.id) for rule in rules.blocking),
        routing=_first_match((rule.condition, rule.id) for rule in rules.routing),
        source=sql.SQL(source),
    )


def _first_match(conditions: Iterable[tuple[str, int]]) -> sql.Composable:
    # Conditions are the one place text becomes SQL: the database compiled each one when
    # it was saved (migration 0004). The newlines keep a trailing `--` comment inside; a
    # `%` (LIKE '+31%') is doubled because the query is sent with parameters.
    branches = [
        sql.SQL("WHEN (\n{}\n) THEN {}").format(sql.SQL(condition.replace("%", "%%")), sql.Literal(rule_id))
        for condition, rule_id in conditions
    ]
    if not branches:
        return sql.SQL("NULL::bigint")
    return sql.SQL("CASE {} END").format(sql.SQL(" ").join(branches))


def evaluate(
    conn: psycopg.Connection[Any], rules: Rules, source: str, params: dict[str, Any], timeout_s: float
) -> list[Evaluated]:
    """Run the compiled query under the rule timeout (for the rest of the transaction)."""
    conn.execute(SET_RULE_TIMEOUT, {"timeout_ms": str(int(timeout_s * 1000))})
    rows = conn.execute(compile_rules(rules, source), params).fetchall()
    return sorted((msgspec.convert(dict(r), Evaluated) for r in rows), key=lambda e: e.id)


class RouterZone(msgspec.Struct, frozen=True):
    """The one router setting others read (`smsbus route explain`): the day of the limits."""

    time_zone: str = "UTC"


def check_time_zone(time_zone: str) -> str:
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("router.time_zone", f"unknown time zone {time_zone!r} (e.g. Europe/Amsterdam)") from None
    return time_zone


def today(conn: psycopg.Connection[Any], time_zone: str) -> date:
    """The date daily limits count in, in the router's time zone."""
    row = conn.execute(SELECT_TODAY, {"time_zone": time_zone}).fetchone()
    assert row is not None
    day: date = row["day"]
    return day


def read_channels(conn: psycopg.Connection[Any]) -> dict[str, tuple[bool, int | None]]:
    """name -> (enabled, daily_limit)."""
    return {r["name"]: (r["enabled"], r["daily_limit"]) for r in conn.execute(SELECT_CHANNELS)}


def channel_states(
    channels: dict[str, tuple[bool, int | None]], connected: set[str], routed_today: dict[str, int]
) -> dict[str, ChannelState]:
    return {
        name: ChannelState(
            enabled=enabled,
            connected=name in connected,
            remaining_today=None if limit is None else max(0, limit - routed_today.get(name, 0)),
        )
        for name, (enabled, limit) in channels.items()
    }


def read_channel_states(conn: psycopg.Connection[Any], time_zone: str) -> dict[str, ChannelState]:
    """Without locking anything: what explain shows. The router locks the counts it uses."""
    channels = read_channels(conn)
    params = {"day": today(conn, time_zone), "channels": list(channels)}
    routed = {r["channel"]: r["routed"] for r in conn.execute(SELECT_DAILY_COUNTS, params)}
    return channel_states(channels, connected_channels(conn), routed)


class Rotation:
    """Smooth weighted round robin (as nginx does it) per routing rule, over the channels
    usable at each pick: even spread, no bursts; round_robin is the case of equal weights."""

    def __init__(self) -> None:
        self.current: dict[tuple[int, str], int] = {}

    def pick(self, rule: RoutingRule, candidates: Sequence[str]) -> str:
        weights = dict(zip(rule.channels, rule.weights or [1] * len(rule.channels), strict=True))
        total = 0
        for channel in candidates:
            key = (rule.id, channel)
            self.current[key] = self.current.get(key, 0) + weights[channel]
            total += weights[channel]
        best = max(candidates, key=lambda c: self.current[(rule.id, c)])
        self.current[(rule.id, best)] -= total
        return best


def decide(
    evaluated: Sequence[Evaluated],
    rules: Rules,
    channels: dict[str, ChannelState],
    rotation: Rotation,
) -> list[Decision]:
    """The verdict on each message, in id order, spending each channel's remaining daily
    capacity as it goes: no channel is passed more than it has left."""
    remaining = {name: state.remaining_today for name, state in channels.items()}
    decisions = []
    for message in evaluated:
        if message.blocking_rule_id is not None:
            blocking = rules.blocking_by_id[message.blocking_rule_id]
            decisions.append(Decision(message.id, Status.BLOCKED, error=f'blocked by rule "{blocking.name}"'))
        elif message.channel is not None:
            decisions.append(_named_channel(message, channels, remaining))
        elif message.routing_rule_id is None:
            decisions.append(Decision(message.id, Status.NOCHANNEL, error="no routing rule matches"))
        else:
            rule = rules.routing_by_id[message.routing_rule_id]
            decisions.append(_routed(message.id, rule, channels, remaining, rotation))
    return decisions


def _named_channel(
    message: Evaluated, channels: dict[str, ChannelState], remaining: dict[str, int | None]
) -> Decision:
    name = message.channel
    assert name is not None
    if name not in channels:
        return Decision(message.id, Status.NOCHANNEL, error=f'no channel named "{name}"')
    left = remaining[name]
    if left is not None and left <= 0:
        return Decision(message.id, Status.DAILYLIMIT, error=f'channel "{name}" reached its daily limit')
    if left is not None:
        remaining[name] = left - 1
    return Decision(message.id, Status.QUEUED, channel=name)


def _routed(
    message_id: int,
    rule: RoutingRule,
    channels: dict[str, ChannelState],
    remaining: dict[str, int | None],
    rotation: Rotation,
) -> Decision:
    reachable = [c for c in rule.channels if c in channels and channels[c].enabled and channels[c].connected]
    candidates = [c for c in reachable if remaining[c] is None or (remaining[c] or 0) > 0]
    if not candidates:
        if reachable:
            return Decision(
                message_id,
                Status.DAILYLIMIT,
                error=f'routing rule "{rule.name}": daily limit reached on {", ".join(reachable)}',
            )
        return Decision(
            message_id,
            Status.NOCHANNEL,
            error=f'routing rule "{rule.name}": no usable channel ({unusable_reasons(rule, channels)})',
        )
    chosen = candidates[0] if rule.strategy == "failover" else rotation.pick(rule, candidates)
    left = remaining[chosen]
    if left is not None:
        remaining[chosen] = left - 1
    return Decision(message_id, Status.QUEUED, channel=chosen)


def unusable_reasons(rule: RoutingRule, channels: dict[str, ChannelState]) -> str:
    reasons = []
    for name in rule.channels:
        state = channels.get(name)
        if state is None:
            reasons.append(f"{name}: no such channel")
        elif not state.enabled:
            reasons.append(f"{name}: disabled")
        elif not state.connected:
            reasons.append(f"{name}: not connected")
    return ", ".join(reasons)
