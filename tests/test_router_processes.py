"""The router as supervisord runs it: real `smsbus-router` processes, the real broker, rules
edited with the real `smsbus` command while it runs, and two routers sharing one queue."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from smsbus import channel_health
from tests.peers.metrics import Series, scrape, series
from tests.peers.processes import BIN_DIR, ServiceProcess, free_port, start_service

Conn = psycopg.Connection[dict[str, Any]]
StartRouter = Callable[..., ServiceProcess]

INSERT_ONE = "INSERT INTO messages (direction, to_address, body) VALUES ('out', %s, 'hi') RETURNING id"


@pytest.fixture
def start_router(start_services: StartRouter) -> StartRouter:
    """Starts `smsbus-router` with [router] settings; each must stop within 2 s, exit 0."""
    return functools.partial(start_services, "router", 2.0)


def smsbus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN_DIR / "smsbus"), *args], env=env, capture_output=True, text=True, timeout=30)


def add_channel(conn: Conn, name: str, daily_limit: int | None = None) -> None:
    conn.execute("INSERT INTO channels (name, type, daily_limit) VALUES (%s, 'smpp', %s)", (name, daily_limit))
    channel_health.report(conn, None, name, connected=True)


def wait_for_status(conn: Conn, message_id: int, timeout_s: float = 5.0) -> dict[str, Any]:
    """The message once the router has decided on it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = conn.execute("SELECT * FROM messages WHERE id = %s", (message_id,)).fetchone()
        assert row is not None
        if row["status"] not in ("SCHEDULED", "QUEUED") or row["routed_at"] is not None:
            return row
        time.sleep(0.01)
    raise AssertionError(f"message {message_id} not routed within {timeout_s} s")


def test_a_scheduled_message_is_released_within_100_ms_of_its_time_with_polling_off(
    conn: Conn, broker: ServiceProcess, start_router: StartRouter
) -> None:
    add_channel(conn, "kpn")
    conn.execute("INSERT INTO routing_rules (position, name, condition, channels) VALUES (1, 'all', 'true', '{kpn}')")
    start_router(poll_interval_s="0")
    lateness = []
    for delay_s in (0.8, 1.2):
        row = conn.execute(
            "INSERT INTO messages (direction, to_address, body, scheduled_at) "
            "VALUES ('out', '+31612345678', 'later', now() + make_interval(secs => %s)) RETURNING id",
            (delay_s,),
        ).fetchone()
        assert row is not None
        routed = wait_for_status(conn, row["id"], timeout_s=5)
        assert (routed["status"], routed["channel"]) == ("QUEUED", "kpn")
        # updated_at is the release transaction's start: the time the router acted
        released = conn.execute(
            "SELECT extract(epoch FROM routed_at - scheduled_at) AS late FROM messages WHERE id = %s", (row["id"],)
        ).fetchone()
        assert released is not None
        lateness.append(float(released["late"]))
    assert all(0 <= late < 0.1 for late in lateness), lateness


def test_rules_edited_with_the_cli_while_the_router_runs_apply_to_the_next_message(
    conn: Conn, service_env: dict[str, str], broker: ServiceProcess, start_router: StartRouter
) -> None:
    add_channel(conn, "kpn")
    add_channel(conn, "vodafone")
    start_router(poll_interval_s="60")
    result = smsbus(service_env, "rules", "route", "add", "all", "--condition", "true", "--channels", "kpn")
    assert result.returncode == 0, result.stderr
    first = conn.execute(INSERT_ONE, ("+31612345678",)).fetchone()
    assert first is not None
    assert wait_for_status(conn, first["id"])["channel"] == "kpn"

    result = smsbus(
        service_env, "rules", "route", "add", "dutch", "--condition", "to_address LIKE '+31%'",
        "--channels", "vodafone", "--position", "1",
    )
    assert result.returncode == 0, result.stderr
    second = conn.execute(INSERT_ONE, ("+31612345678",)).fetchone()
    assert second is not None
    assert wait_for_status(conn, second["id"])["channel"] == "vodafone"

    result = smsbus(service_env, "rules", "block", "add", "dutch-numbers", "--condition", "to_address LIKE '+31%'")
    assert result.returncode == 0, result.stderr
    third = conn.execute(INSERT_ONE, ("+31612345678",)).fetchone()
    assert third is not None
    blocked = wait_for_status(conn, third["id"])
    assert (blocked["status"], blocked["error"]) == ("BLOCKED", 'blocked by rule "dutch-numbers"')


def test_a_bad_condition_from_the_cli_is_refused_and_the_router_never_sees_it(
    conn: Conn, service_env: dict[str, str], broker: ServiceProcess, start_router: StartRouter
) -> None:
    add_channel(conn, "kpn")
    router = start_router(poll_interval_s="60")
    result = smsbus(service_env, "rules", "block", "add", "typo", "--condition", "to_adress LIKE '+31%'")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'smsbus: error: condition of blocking rule "typo" refused: column "to_adress" does not exist '
        '(Perhaps you meant to reference the column "messages.to_address".)'
    )
    assert conn.execute("SELECT count(*) AS n FROM blocking_rules").fetchone() == {"n": 0}
    added = smsbus(service_env, "rules", "route", "add", "all", "--condition", "true", "--channels", "kpn")
    assert added.returncode == 0, added.stderr
    message = conn.execute(INSERT_ONE, ("+31612345678",)).fetchone()
    assert message is not None
    assert wait_for_status(conn, message["id"])["status"] == "QUEUED"
    assert "ERROR" not in router.log()


# -- several routers, one queue --------------------------------------------------------


def daily_limits(count: int) -> dict[str, int]:
    """Three channels shared by two rules, with room for 65% of `count` in all: 90% of the
    messages want a channel, so each must fill to exactly its limit and no further."""
    return {"a": count // 5, "b": count * 3 // 10, "c": count * 3 // 20}


SETUP_SHARED_QUEUE = """
INSERT INTO routing_rules (position, name, condition, channels, strategy) VALUES
    (1, 'dutch', 'to_address LIKE ''+31%%''', '{a,b}', 'failover'),
    (2, 'german', 'to_address LIKE ''+49%%''', '{b,c}', 'round_robin');
INSERT INTO blocking_rules (position, name, condition) VALUES (1, 'spam', 'body = ''spam''');
"""
FILL_QUEUE = """
INSERT INTO messages (direction, to_address, body)
SELECT 'out', CASE WHEN i %% 2 = 0 THEN '+31612345678' ELSE '+4915112345678' END,
       CASE WHEN i %% 10 = 0 THEN 'spam' ELSE 'hello' END
FROM generate_series(1, %(count)s) AS i
"""
COUNT_OUTCOMES = """
SELECT status, channel, count(*) AS n FROM messages GROUP BY status, channel
"""


def decided_by(port: int) -> int:
    """How many messages this router process decided on, from its own metrics."""
    return int(sum(value for (name, _), value in scrape(port).items() if name == "smsbus_messages_total"))


def wait_for_metrics(port: int, expected: dict[Series, float], router: ServiceProcess, timeout_s: float = 10) -> None:
    """Until every expected series has its value (the queue depth is refreshed on a timer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = scrape(port)
        wrong = {key: found.get(key) for key, value in expected.items() if found.get(key) != value}
        if not wrong:
            return
        assert time.monotonic() < deadline, f"not as expected: {wrong}\n{router.log()}"
        time.sleep(0.05)


@contextlib.contextmanager
def channels_reporting_health(database_url: str, channels: Iterable[str]) -> Iterator[None]:
    """What running channel processes do: report connected every few seconds."""
    stop = threading.Event()

    def report() -> None:
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
            while not stop.wait(channel_health.REPORT_INTERVAL_S):
                for name in channels:
                    channel_health.report(conn, None, name, connected=True)

    reporter = threading.Thread(target=report)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join()


def run_shared_queue(conn: Conn, service_env: dict[str, str], tmp_path: Path, count: int, routers: int) -> None:
    limits = daily_limits(count)
    for name, limit in limits.items():
        add_channel(conn, name, limit)
    conn.execute(SETUP_SHARED_QUEUE)
    ports = [free_port() for _ in range(routers)]
    processes = []
    with channels_reporting_health(service_env["SMSBUS_DATABASE_URL"], limits):
        try:
            for i, port in enumerate(ports):
                env = dict(service_env, SMSBUS_ROUTER_METRICS_PORT=str(port), SMSBUS_ROUTER_BATCH_SIZE="200",
                           SMSBUS_ROUTER_POLL_INTERVAL_S="1")
                processes.append(start_service(["smsbus-router"], env, tmp_path / f"shared{i}.log"))
            for process in processes:
                process.wait_for_log("database connected")
            conn.execute(FILL_QUEUE, {"count": count})
            deadline = time.monotonic() + 30 + count / 1000
            while conn.execute(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE status = 'QUEUED' AND routed_at IS NULL) AS waiting"
            ).fetchone() != {"waiting": False}:
                assert time.monotonic() < deadline, "the routers did not finish the queue"
                time.sleep(0.1)
            decided = [decided_by(port) for port in ports]
        finally:
            for process in processes:
                code, _ = process.stop()
                assert code == 0, process.log()

    # every message decided exactly once, and every router took a share
    assert sum(decided) == count, decided
    assert all(d > 0 for d in decided), decided
    outcomes = {(r["status"], r["channel"]): r["n"] for r in conn.execute(COUNT_OUTCOMES)}
    spam = count // 10
    # demand far above the total limit: each channel filled to exactly its limit, never past it
    assert outcomes == {
        ("BLOCKED", None): spam,
        ("QUEUED", "a"): limits["a"],
        ("QUEUED", "b"): limits["b"],
        ("QUEUED", "c"): limits["c"],
        ("DAILYLIMIT", None): count - spam - sum(limits.values()),
    }
    counted = {r["channel"]: r["routed"] for r in conn.execute("SELECT channel, routed FROM channel_daily_counts")}
    assert counted == limits


def test_two_routers_share_20000_messages_each_routed_once_no_limit_exceeded(
    conn: Conn, service_env: dict[str, str], broker: ServiceProcess, tmp_path: Path
) -> None:
    run_shared_queue(conn, service_env, tmp_path, count=20_000, routers=2)


@pytest.mark.soak
def test_four_routers_share_a_long_queue(
    conn: Conn, service_env: dict[str, str], broker: ServiceProcess, tmp_path: Path
) -> None:
    count = 200_000 if os.environ.get("SMSBUS_SOAK") else 6_000
    run_shared_queue(conn, service_env, tmp_path, count=count, routers=4)


def test_messages_total_counts_each_decision_by_status_and_channel(
    conn: Conn, broker: ServiceProcess, start_router: StartRouter
) -> None:
    add_channel(conn, "kpn", daily_limit=1)
    conn.execute("INSERT INTO blocking_rules (position, name, condition) VALUES (1, 'spam', 'body = ''spam''')")
    conn.execute(
        "INSERT INTO routing_rules (position, name, condition, channels) "
        "VALUES (1, 'nl', 'to_address LIKE ''+31%%''', '{kpn}')"
    )
    port = free_port()
    router = start_router(metrics_port=str(port), queue_depth_interval_s="0.05")
    conn.execute(
        "INSERT INTO messages (direction, to_address, body, channel) VALUES "
        "('out', '+31612345678', 'one', NULL), ('out', '+31612345678', 'two', NULL), "
        "('out', '+4915112345678', 'nowhere', NULL), ('out', '+31612345678', 'spam', 'kpn')"
    )
    expected = {
        series("smsbus_messages_total", status="QUEUED", channel="kpn"): 1.0,
        series("smsbus_messages_total", status="DAILYLIMIT", channel=""): 1.0,
        series("smsbus_messages_total", status="NOCHANNEL", channel=""): 1.0,
        series("smsbus_messages_total", status="BLOCKED", channel="kpn"): 1.0,
        # and the one passed now waits for its channel
        series("smsbus_queue_depth", status="QUEUED", channel="kpn"): 1.0,
    }
    wait_for_metrics(port, expected, router)
    decided = {(r["status"], r["channel"] or ""): r["n"] for r in conn.execute(COUNT_OUTCOMES)}
    assert decided == {("QUEUED", "kpn"): 1, ("DAILYLIMIT", ""): 1, ("NOCHANNEL", ""): 1, ("BLOCKED", "kpn"): 1}
    assert decided_by(port) == 4


# Rows as channels and triggers leave them, written by plain SQL: the router routes none of them
# (the QUEUED ones are passed already, the SCHEDULED ones are not due).
FILL_WORKING_STATES = """
INSERT INTO messages (direction, status, trigger_status, channel, to_address, body,
                      scheduled_at, routed_at, created_at)
VALUES ('out', 'SCHEDULED', 'N/A', NULL, '+31612345678', 'later', now() + interval '1 hour', NULL, now()),
       ('out', 'SCHEDULED', 'N/A', NULL, '+31612345678', 'later', now() + interval '2 hours', NULL, now()),
       ('out', 'QUEUED', 'N/A', 'kpn', '+31612345678', 'waiting', NULL, now(), now() - interval '10 minutes'),
       ('out', 'QUEUED', 'N/A', 'kpn', '+31612345678', 'waiting', NULL, now(), now()),
       ('out', 'QUEUED', 'N/A', 'kpn', '+31612345678', 'waiting', NULL, now(), now()),
       ('out', 'QUEUED', 'N/A', 'vodafone', '+31612345678', 'waiting', NULL, now(), now()),
       ('out', 'SENDING', 'N/A', 'kpn', '+31612345678', 'on the wire', NULL, now(), now()),
       ('out', 'SENT', 'N/A', 'kpn', '+31612345678', 'awaiting its report', NULL, now(), now()),
       ('out', 'DELIVERED', 'N/A', 'kpn', '+31612345678', 'for the triggers', NULL, now(), now()),
       ('out', 'DELIVERED', 'PENDING', 'kpn', '+31612345678', 'a trigger runs', NULL, now(), now()),
       ('out', 'DELIVERED', 'PROCESSED', 'kpn', '+31612345678', 'finished', NULL, now(), now())
"""
# the SENT message has two parts awaiting their receipts; the DELIVERED ones await nothing
FILL_PARTS = """
INSERT INTO message_parts (message_id, part_number, channel, provider_id, receipt_state)
SELECT id, part, 'kpn', id || '-' || part, CASE WHEN status = 'DELIVERED' THEN 'DELIVRD' END
FROM messages, generate_series(1, 2) AS part WHERE status IN ('SENT', 'DELIVERED')
"""


def test_queue_depth_counts_each_working_state_per_channel_and_drops_to_zero(
    conn: Conn, start_router: StartRouter
) -> None:
    port = free_port()
    router = start_router(metrics_port=str(port), queue_depth_interval_s="0.05")
    conn.execute(FILL_WORKING_STATES)
    conn.execute(FILL_PARTS)
    depths = {
        series("smsbus_queue_depth", status="SCHEDULED", channel=""): 2.0,
        series("smsbus_queue_depth", status="QUEUED", channel="kpn"): 3.0,
        series("smsbus_queue_depth", status="QUEUED", channel="vodafone"): 1.0,
        series("smsbus_queue_depth", status="SENDING", channel="kpn"): 1.0,
        series("smsbus_queue_depth", status="SENT", channel="kpn"): 1.0,
        # SENT is a permanent status: it is offered to the triggers too
        series("smsbus_trigger_queue_depth", trigger_status="N/A"): 2.0,
        series("smsbus_trigger_queue_depth", trigger_status="PENDING"): 1.0,
    }
    wait_for_metrics(port, depths, router)
    found = scrape(port)
    # the oldest QUEUED on kpn was created ten minutes ago; the SCHEDULED ones are not due yet
    assert 600 <= found[series("smsbus_queue_oldest_age_seconds", status="QUEUED", channel="kpn")] < 3600
    assert found[series("smsbus_queue_oldest_age_seconds", status="SCHEDULED", channel="")] == 0

    conn.execute("DELETE FROM messages")
    wait_for_metrics(port, dict.fromkeys(depths, 0.0), router)
    found = scrape(port)
    assert found[series("smsbus_queue_oldest_age_seconds", status="QUEUED", channel="kpn")] == 0


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("TIME_ZONE", "Mars/Olympus", "bad setting router.time_zone: unknown time zone 'Mars/Olympus'"),
        ("BATCH_SIZE", "0", "bad setting router.batch_size: Expected `int` >= 1"),
        ("RULE_TIMEOUT_S", "-1", "bad setting router.rule_timeout_s"),
        ("QUEUE_DEPTH_INTERVAL_S", "soon", "bad setting router.queue_depth_interval_s"),
        ("QUEUE_DEPTH_INTERVAL_S", "-1", "bad setting router.queue_depth_interval_s: Expected `float` >= 0"),
    ],
)
def test_a_bad_setting_stops_the_router_at_start_naming_it(
    service_env: dict[str, str], tmp_path: Path, setting: str, value: str, says: str
) -> None:
    env = dict(service_env, **{f"SMSBUS_ROUTER_{setting}": value})
    router = start_service(["smsbus-router"], env, tmp_path / "router.log")
    assert router.process.wait(10) == 1
    assert says in router.log()
