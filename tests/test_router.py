"""The router's decisions on a real PostgreSQL: every outcome, rule order, each strategy, daily
limits, rules saved and refused. The router's step runs in this process on a worker
connection; tests/test_router_processes.py runs it as real processes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from smsbus import channel_health, db
from smsbus.routing import ChannelState, Decision, Evaluated, Rotation, RoutingRule, Rules, decide
from smsbus.rules import (
    RuleKind,
    RuleRefused,
    add_blocking_rule,
    add_routing_rule,
    list_rules,
    move_rule,
    remove_rule,
)
from smsbus.statuses import Status
from smsbus_router.queue_depth import SELECT_QUEUE_DEPTH
from smsbus_router.router import Router, RouterSettings

Conn = psycopg.Connection[dict[str, Any]]

INSERT_OUT = """
INSERT INTO messages (direction, to_address, body, channel)
SELECT 'out', %(to)s, 'hi', %(channel)s FROM generate_series(1, %(count)s)
RETURNING id
"""


def add_channel(conn: Conn, name: str, *, daily_limit: int | None = None, enabled: bool = True,
                connected: bool = True) -> None:
    conn.execute(
        "INSERT INTO channels (name, type, enabled, daily_limit) VALUES (%s, 'smpp', %s, %s)",
        (name, enabled, daily_limit),
    )
    channel_health.report(conn, None, name, connected=connected)


def queue(conn: Conn, count: int = 1, to: str = "+31612345678", channel: str | None = None) -> list[int]:
    rows = conn.execute(INSERT_OUT, {"to": to, "channel": channel, "count": count}).fetchall()
    return sorted(r["id"] for r in rows)


def outcome(conn: Conn, message_id: int) -> tuple[str, str | None, str | None]:
    row = conn.execute("SELECT status, channel, error, routed_at FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row is not None
    if row["status"] == "QUEUED":
        assert row["routed_at"] is not None, "a passed message has routed_at"
    return row["status"], row["channel"], row["error"]


@pytest.fixture
def worker(database_url: str) -> Iterator[Conn]:
    with db.connect(database_url, application="router-test") as connection:
        yield connection


@pytest.fixture
def route(worker: Conn) -> Iterator[Any]:
    """Run the router's step until it finds nothing more to do."""
    router = Router(RouterSettings(batch_size=50))

    def run() -> int:
        handled = 0
        while (done := router.step(worker)) > 0:
            handled += done
        return handled

    yield run


def test_each_outcome_queued_blocked_nochannel_dailylimit(conn: Conn, route: Any) -> None:
    add_channel(conn, "kpn", daily_limit=1)
    add_blocking_rule(conn, "satellite", "to_address LIKE '+8821%'")
    add_routing_rule(conn, "netherlands", "to_address LIKE '+31%'", ["kpn"])
    sent, limited = queue(conn, 2)
    blocked = queue(conn, to="+882161234567")[0]
    unroutable = queue(conn, to="+4915112345678")[0]
    assert route() == 4
    assert outcome(conn, sent) == ("QUEUED", "kpn", None)
    assert outcome(conn, limited) == ("DAILYLIMIT", None, 'routing rule "netherlands": daily limit reached on kpn')
    assert outcome(conn, blocked) == ("BLOCKED", None, 'blocked by rule "satellite"')
    assert outcome(conn, unroutable) == ("NOCHANNEL", None, "no routing rule matches")


def test_first_matching_rule_wins_and_moving_a_rule_changes_the_winner(conn: Conn, route: Any) -> None:
    add_channel(conn, "kpn")
    add_channel(conn, "vodafone")
    add_routing_rule(conn, "everything", "true", ["vodafone"])
    add_routing_rule(conn, "netherlands", "to_address LIKE '+31%'", ["kpn"])
    first = queue(conn)[0]
    route()
    assert outcome(conn, first)[1] == "vodafone"
    move_rule(conn, RuleKind.ROUTE, "netherlands", 1)
    second = queue(conn)[0]
    route()
    assert outcome(conn, second)[1] == "kpn"


def test_first_matching_blocking_rule_is_named(conn: Conn, route: Any) -> None:
    add_channel(conn, "kpn")
    add_routing_rule(conn, "all", "true", ["kpn"])
    add_blocking_rule(conn, "dutch", "to_address LIKE '+31%'")
    add_blocking_rule(conn, "everyone", "true", position=1)
    message = queue(conn)[0]
    route()
    assert outcome(conn, message) == ("BLOCKED", None, 'blocked by rule "everyone"')


def test_failover_skips_disabled_and_disconnected_channels(conn: Conn, route: Any) -> None:
    add_channel(conn, "off", enabled=False)
    add_channel(conn, "down", connected=False)
    add_channel(conn, "up")
    add_routing_rule(conn, "all", "true", ["off", "down", "up"])
    ids = queue(conn, 3)
    route()
    assert {outcome(conn, i) for i in ids} == {("QUEUED", "up", None)}


def test_a_stale_health_report_counts_as_disconnected(conn: Conn, route: Any) -> None:
    add_channel(conn, "silent")
    conn.execute("UPDATE channel_health SET updated_at = now() - interval '1 hour'")
    add_routing_rule(conn, "all", "true", ["silent"])
    message = queue(conn)[0]
    route()
    assert outcome(conn, message) == (
        "NOCHANNEL", None, 'routing rule "all": no usable channel (silent: not connected)'
    )


def test_failover_moves_on_when_the_first_channel_reaches_its_limit(conn: Conn, route: Any) -> None:
    add_channel(conn, "cheap", daily_limit=3)
    add_channel(conn, "dear")
    add_routing_rule(conn, "all", "true", ["cheap", "dear"])
    ids = queue(conn, 5)
    route()
    assert [outcome(conn, i)[1] for i in ids] == ["cheap", "cheap", "cheap", "dear", "dear"]


def test_round_robin_takes_turns(conn: Conn, route: Any) -> None:
    for name in ("a", "b", "c"):
        add_channel(conn, name)
    add_routing_rule(conn, "all", "true", ["a", "b", "c"], strategy="round_robin")
    ids = queue(conn, 9)
    route()
    assert Counter(outcome(conn, i)[1] for i in ids) == {"a": 3, "b": 3, "c": 3}


def test_weighted_spreads_by_weight(conn: Conn, route: Any) -> None:
    add_channel(conn, "big")
    add_channel(conn, "small")
    add_routing_rule(conn, "all", "true", ["big", "small"], strategy="weighted", weights=[3, 1])
    ids = queue(conn, 100)
    route()
    assert Counter(outcome(conn, i)[1] for i in ids) == {"big": 75, "small": 25}


def test_a_message_naming_its_channel_skips_routing_but_not_blocking_or_the_limit(conn: Conn, route: Any) -> None:
    add_channel(conn, "kpn", daily_limit=2)
    add_channel(conn, "other")
    add_routing_rule(conn, "all", "true", ["other"])
    add_blocking_rule(conn, "german", "to_address LIKE '+49%'")
    blocked = queue(conn, to="+4915112345678", channel="kpn")[0]
    passed = queue(conn, 3, channel="kpn")
    unknown = queue(conn, channel="nosuch")[0]
    route()
    assert outcome(conn, blocked) == ("BLOCKED", "kpn", 'blocked by rule "german"')
    assert [outcome(conn, i) for i in passed] == [
        ("QUEUED", "kpn", None),
        ("QUEUED", "kpn", None),
        ("DAILYLIMIT", "kpn", 'channel "kpn" reached its daily limit'),
    ]
    assert outcome(conn, unknown) == ("NOCHANNEL", "nosuch", 'no channel named "nosuch"')


def test_daily_counts_are_per_day_in_the_configured_time_zone(conn: Conn, worker: Conn) -> None:
    add_channel(conn, "kpn", daily_limit=1)
    add_routing_rule(conn, "all", "true", ["kpn"])
    # what the counts say for "today" in Tokyo, already full
    conn.execute(
        "INSERT INTO channel_daily_counts VALUES ('kpn', (now() AT TIME ZONE 'Asia/Tokyo')::date, 1)"
    )
    conn.execute("INSERT INTO channel_daily_counts VALUES ('kpn', (now() AT TIME ZONE 'Asia/Tokyo')::date - 1, 1)")
    tokyo = Router(RouterSettings(time_zone="Asia/Tokyo"))
    message = queue(conn)[0]
    tokyo.step(worker)
    assert outcome(conn, message)[0] == "DAILYLIMIT"


def test_a_rule_edited_between_batches_applies_to_the_next_message(conn: Conn, route: Any) -> None:
    add_channel(conn, "kpn")
    add_routing_rule(conn, "all", "true", ["kpn"])
    before = queue(conn)[0]
    route()
    add_blocking_rule(conn, "stop", "true")
    after = queue(conn)[0]
    route()
    remove_rule(conn, RuleKind.BLOCK, "stop")
    again = queue(conn)[0]
    route()
    assert [outcome(conn, i)[0] for i in (before, after, again)] == ["QUEUED", "BLOCKED", "QUEUED"]


def test_a_rule_that_raises_on_one_message_fails_only_that_message(conn: Conn, route: Any) -> None:
    add_channel(conn, "kpn")
    # a cast that fails only where the property is not a number
    add_blocking_rule(conn, "priority", "(properties->>'priority')::int > 5")
    add_routing_rule(conn, "all", "true", ["kpn"])
    good = queue(conn, 3)
    bad = conn.execute(
        "INSERT INTO messages (direction, to_address, body, properties) "
        "VALUES ('out', '+31612345678', 'x', '{\"priority\": \"high\"}') RETURNING id"
    ).fetchone()
    assert bad is not None
    route()
    assert [outcome(conn, i)[0] for i in good] == ["QUEUED"] * 3
    status, _, error = outcome(conn, bad["id"])
    assert status == "FAILED"
    assert error is not None and 'invalid input syntax for type integer: "high"' in error


def test_scheduled_messages_are_released_when_due_and_then_routed(conn: Conn, worker: Conn) -> None:
    add_channel(conn, "kpn")
    add_routing_rule(conn, "all", "true", ["kpn"])
    row = conn.execute(
        "INSERT INTO messages (direction, to_address, body, scheduled_at) "
        "VALUES ('out', '+31612345678', 'later', now() + interval '1 hour') RETURNING id, scheduled_at"
    ).fetchone()
    assert row is not None
    # the queue depth refresh would wake it too
    router = Router(RouterSettings(queue_depth_interval_s=0))
    router.step(worker)
    assert outcome(conn, row["id"])[0] == "SCHEDULED"
    assert router.next_wake() == pytest.approx(row["scheduled_at"].timestamp())
    conn.execute("UPDATE messages SET scheduled_at = now() WHERE id = %s", (row["id"],))
    router.step(worker)
    assert outcome(conn, row["id"]) == ("QUEUED", "kpn", None)
    assert router.next_wake() is None


@pytest.mark.parametrize(
    ("condition", "says"),
    [
        ("to_adress LIKE '+31%'", 'column "to_adress" does not exist'),
        ("to_address LIKE", 'syntax error at or near ")"'),
        ("to_address", "argument of AND must be type boolean"),
        ("nosuchfunction(body)", "function nosuchfunction(text) does not exist"),
        # valid after 0009's `WHERE false AND (...)`, not inside the router's CASE WHEN
        ("true) ORDER BY (1", 'syntax error at or near "ORDER"'),
        ("true), (false", 'syntax error at or near ","'),
    ],
)
def test_a_bad_condition_is_refused_on_save_with_postgresqls_message(
    conn: Conn, route: Any, condition: str, says: str
) -> None:
    add_channel(conn, "kpn")
    with pytest.raises(RuleRefused, match="refused") as refused:
        add_blocking_rule(conn, "typo", condition)
    assert says in str(refused.value)
    assert 'condition of blocking rule "typo"' in str(refused.value)
    with pytest.raises(RuleRefused) as refused_route:
        add_routing_rule(conn, "typo", condition, ["kpn"])
    assert says in str(refused_route.value)
    assert list_rules(conn, RuleKind.BLOCK) == [] and list_rules(conn, RuleKind.ROUTE) == []
    # and the router, which never saw it, keeps routing
    add_routing_rule(conn, "all", "true", ["kpn"])
    message = queue(conn)[0]
    route()
    assert outcome(conn, message)[0] == "QUEUED"


def test_plain_sql_cannot_save_a_bad_condition_either(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.UndefinedColumn, match='column "bdy" does not exist'):
        conn.execute("INSERT INTO blocking_rules (position, name, condition) VALUES (1, 'x', 'bdy = ''x''')")
    conn.execute("INSERT INTO blocking_rules (position, name, condition) VALUES (1, 'x', 'body = ''x''')")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        conn.execute("UPDATE blocking_rules SET condition = 'bdy = 1'")


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"channels": []}, "channels: give at least one channel"),
        ({"channels": ["kpn", "nosuch"]}, "channels: no channel named nosuch"),
        ({"channels": ["kpn", "kpn"]}, "names a channel twice"),
        ({"channels": ["kpn"], "strategy": "random"}, "strategy: 'random' is not one of"),
        ({"channels": ["kpn"], "strategy": "weighted"}, "weights: the weighted strategy needs"),
        ({"channels": ["kpn"], "weights": [1]}, "weights: only the weighted strategy"),
        ({"channels": ["kpn"], "strategy": "weighted", "weights": [1, 2]}, "weights: 2 weights for 1 channels"),
        ({"channels": ["kpn"], "strategy": "weighted", "weights": [0]}, "weights: every weight must be"),
        ({"channels": ["kpn"], "position": 0}, "position: must be 1 or more"),
    ],
)
def test_a_bad_routing_rule_is_refused_naming_the_field(conn: Conn, kwargs: dict[str, Any], says: str) -> None:
    add_channel(conn, "kpn")
    channels = kwargs.pop("channels")
    with pytest.raises(RuleRefused, match=says):
        add_routing_rule(conn, "r", "true", channels, **kwargs)
    assert list_rules(conn, RuleKind.ROUTE) == []


def test_duplicate_names_are_refused_and_positions_stay_one_to_n(conn: Conn) -> None:
    add_blocking_rule(conn, "a", "true")
    add_blocking_rule(conn, "b", "true")
    add_blocking_rule(conn, "c", "true", position=1)
    with pytest.raises(RuleRefused, match='name: a blocking rule named "a" already exists'):
        add_blocking_rule(conn, "a", "false")
    remove_rule(conn, RuleKind.BLOCK, "a")
    assert [(r["position"], r["name"]) for r in list_rules(conn, RuleKind.BLOCK)] == [(1, "c"), (2, "b")]


# -- the channel choice alone, without a database --------------------------------------


def rule(strategy: str, channels: tuple[str, ...], weights: tuple[int, ...] | None = None) -> RoutingRule:
    return RoutingRule(1, 1, "r", "true", channels, strategy, weights)  # type: ignore[arg-type]


def pick_all(routing: RoutingRule, states: dict[str, ChannelState], count: int) -> list[Decision]:
    messages = [Evaluated(i, None, None, routing.id) for i in range(count)]
    return decide(messages, Rules((), (routing,)), states, Rotation())


USABLE = ChannelState(enabled=True, connected=True, remaining_today=None)


def test_weighted_rotation_is_smooth_not_bursty() -> None:
    chosen = [d.channel for d in pick_all(rule("weighted", ("a", "b"), (2, 1)), {"a": USABLE, "b": USABLE}, 6)]
    assert chosen == ["a", "b", "a", "a", "b", "a"]


def test_round_robin_spends_each_channels_remaining_capacity_then_says_dailylimit() -> None:
    states = {"a": ChannelState(True, True, 1), "b": ChannelState(True, True, 2)}
    decisions = pick_all(rule("round_robin", ("a", "b")), states, 4)
    assert [(d.status, d.channel) for d in decisions] == [
        (Status.QUEUED, "a"), (Status.QUEUED, "b"), (Status.QUEUED, "b"), (Status.DAILYLIMIT, None),
    ]


def test_nochannel_not_dailylimit_when_a_full_channel_is_also_disconnected() -> None:
    states = {"a": ChannelState(True, False, 0), "b": ChannelState(False, True, 5)}
    [decision] = pick_all(rule("failover", ("a", "b", "c")), states, 1)
    assert decision.status == Status.NOCHANNEL
    assert decision.error == 'routing rule "r": no usable channel (a: not connected, b: disabled, c: no such channel)'


def test_a_rule_that_runs_past_the_timeout_fails_its_messages_not_the_router(conn: Conn, worker: Conn) -> None:
    add_channel(conn, "kpn")
    add_routing_rule(conn, "all", "true", ["kpn"])
    add_blocking_rule(conn, "slow", "body = 'slow' AND pg_sleep(5) IS NULL")
    slow = queue(conn)[0]
    conn.execute("UPDATE messages SET body = 'slow' WHERE id = %s", (slow,))
    fast = queue(conn, 2)
    router = Router(RouterSettings(rule_timeout_s=0.2))
    assert router.step(worker) == 3
    status, _, error = outcome(conn, slow)
    assert (status, error) == ("FAILED", "routing rules failed: canceling statement due to statement timeout")
    assert [outcome(conn, i)[0] for i in fast] == ["QUEUED", "QUEUED"]


def test_a_condition_smuggling_a_second_statement_is_refused_before_it_runs(conn: Conn) -> None:
    smuggled = "true) LIMIT 0; CREATE TABLE smuggled (x int); SELECT 1 FROM messages WHERE (true"
    with pytest.raises(psycopg.errors.Error, match="cannot open multi-query plan"):
        conn.execute("INSERT INTO blocking_rules (position, name, condition) VALUES (1, 'x', %s)", (smuggled,))
    assert conn.execute("SELECT to_regclass('smuggled') AS found").fetchone() == {"found": None}


def test_the_queue_depth_query_can_read_only_the_partial_indexes_of_the_working_states(conn: Conn) -> None:
    # with sequential scans priced out, a branch whose WHERE did not fit its partial index's
    # predicate would still scan the whole table; measured on 2 M old rows: docs/services/router.md
    conn.execute("SET enable_seqscan = off")
    plan = " ".join(r["QUERY PLAN"] for r in conn.execute("EXPLAIN " + SELECT_QUEUE_DEPTH))
    assert "Seq Scan" not in plan, plan
    for index in ("messages_scheduled_idx", "messages_queued_idx", "messages_sending_idx",
                  "message_parts_awaiting_since_idx", "messages_trigger_work_idx"):
        assert index in plan, (index, plan)
