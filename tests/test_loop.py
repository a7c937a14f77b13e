"""The main loop every service runs, exercised through a minimal real service (the probe)
and the real broker, all as separate processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.peers.processes import ServiceProcess, start_service

Conn = psycopg.Connection[dict[str, Any]]
PROBE_INSERT = (
    "INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31612345678', 'probe') RETURNING id"
)

StartProbe = Callable[[float], ServiceProcess]


@pytest.fixture
def start_probe(service_env: dict[str, str], tmp_path: Path) -> Iterator[StartProbe]:
    started: list[ServiceProcess] = []

    def start(poll_interval_s: float) -> ServiceProcess:
        env = dict(service_env, SMSBUS_PROBE_POLL_INTERVAL_S=str(poll_interval_s))
        probe = start_service(["-m", "tests.peers.probe_service"], env, tmp_path / f"probe{len(started)}.log")
        probe.wait_for_log("database connected")
        started.append(probe)
        return probe

    yield start
    for probe in started:
        probe.stop()


def seconds_until_seen(conn: Conn, timeout_s: float = 5.0) -> float:
    """Insert a probe message; how long until the probe service moved it."""
    row = conn.execute(PROBE_INSERT).fetchone()
    assert row is not None
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        status = conn.execute("SELECT status FROM messages WHERE id = %s", (row["id"],)).fetchone()
        if status == {"status": "FAILED"}:
            return time.monotonic() - started
        time.sleep(0.005)
    raise AssertionError(f"probe did not see message {row['id']} within {timeout_s} s")


def restart_broker(service_env: dict[str, str], tmp_path: Path) -> ServiceProcess:
    broker = start_service(["smsbus-broker"], service_env, tmp_path / "broker-again.log")
    broker.wait_for_port(int(service_env["SMSBUS_BUS_NOTIFY_PORT"]))
    return broker


def test_a_commit_wakes_the_service_through_the_broker(
    conn: Conn, broker: ServiceProcess, start_probe: StartProbe
) -> None:
    start_probe(60)
    seconds_until_seen(conn, timeout_s=3)  # the subscription settles
    assert seconds_until_seen(conn, timeout_s=1) < 0.5  # far below the 60 s poll


def test_service_keeps_working_by_polling_while_the_broker_is_dead(
    conn: Conn, broker: ServiceProcess, start_probe: StartProbe
) -> None:
    start_probe(0.3)
    broker.kill()
    for _ in range(3):
        assert seconds_until_seen(conn, timeout_s=2) < 1.0


def test_wakeups_resume_after_broker_restart_without_restarting_the_service(
    conn: Conn, broker: ServiceProcess, start_probe: StartProbe, service_env: dict[str, str], tmp_path: Path
) -> None:
    probe = start_probe(60)
    seconds_until_seen(conn, timeout_s=3)
    broker.kill()
    again = restart_broker(service_env, tmp_path)
    try:
        # ZeroMQ reconnects and resubscribes by itself within its reconnect interval
        again.wait_for_log("subscribed topic=status", timeout_s=3)
        for _ in range(3):
            assert seconds_until_seen(conn, timeout_s=1) < 0.5
        assert probe.process.poll() is None
    finally:
        again.stop()


def test_changes_made_while_the_broker_was_away_are_picked_up_on_reconnect(
    conn: Conn, broker: ServiceProcess, start_probe: StartProbe, service_env: dict[str, str], tmp_path: Path
) -> None:
    start_probe(60)
    seconds_until_seen(conn, timeout_s=3)
    broker.kill()
    row = conn.execute(PROBE_INSERT).fetchone()
    assert row is not None
    again = restart_broker(service_env, tmp_path)
    try:
        deadline = time.monotonic() + 3  # far below the 60 s poll
        query = "SELECT status FROM messages WHERE id = %s"
        while conn.execute(query, (row["id"],)).fetchone() != {"status": "FAILED"}:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        again.stop()


def test_sigterm_exits_0_within_a_second_even_with_a_long_poll_interval(
    broker: ServiceProcess, start_probe: StartProbe
) -> None:
    probe = start_probe(60)
    code, seconds = probe.stop()
    assert (code, seconds < 1.0) == (0, True)


def test_lost_database_connection_is_reconnected(conn: Conn, broker: ServiceProcess, start_probe: StartProbe) -> None:
    probe = start_probe(0.2)
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'probe' AND datname = current_database()"
    )
    assert seconds_until_seen(conn, timeout_s=5) < 5
    assert "database connection lost" in probe.log() or "database unavailable" in probe.log()
    assert probe.log().count("database connected") >= 2


def test_service_started_without_a_database_waits_and_stops_on_sigterm(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(service_env, SMSBUS_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    probe = start_service(["-m", "tests.peers.probe_service"], env, tmp_path / "nodb.log")
    probe.wait_for_log("database unavailable")
    time.sleep(0.5)  # in the middle of a backoff
    code, seconds = probe.stop()
    assert (code, seconds < 1.0) == (0, True)
