"""The broker as a real process: PostgreSQL NOTIFY, UDP and TCP on its port, ZeroMQ out."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smsbus.bus import Listener, Notification, Publisher, Subscriber, notify_status_update
from smsbus.config import BusSettings
from tests.peers.metrics import value
from tests.peers.processes import ServiceProcess, environment_bus, start_service

Conn = psycopg.Connection[dict[str, Any]]
PLAIN_INSERT = "INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31612345678', 'hi')"


@pytest.fixture
def bus(service_env: dict[str, str]) -> BusSettings:
    return environment_bus(service_env)


@pytest.fixture
def subscriber(bus: BusSettings, broker: ServiceProcess) -> Any:
    sub = Subscriber(bus, ["status", "nonstatus", "config", "outgoing"])
    wait_until_subscribed(bus, sub)
    yield sub
    sub.close()


@pytest.fixture
def listener(bus: BusSettings, broker: ServiceProcess) -> Any:
    mark = broker.log_mark()
    with Listener(bus) as tcp:
        # the broker logs each listener it accepts
        broker.wait_for_log("listener connected", after=mark)
        yield tcp


def wait_until_subscribed(bus: BusSettings, sub: Subscriber) -> None:
    """ZeroMQ subscriptions take a moment to reach the broker: ping until one arrives."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        notify_status_update([0], bus)
        if sub.receive(0.1) is not None:
            time.sleep(0.05)
            sub.drain()
            return
    raise AssertionError("subscription never reached the broker")


def receive(sub: Subscriber, topic: str, timeout_s: float = 2.0) -> Notification:
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        got = sub.receive(remaining)
        if got is not None and got.topic == topic:
            return got
    raise AssertionError(f"no {topic!r} notification within {timeout_s} s")


def receive_line(listener: Listener, topic: str, timeout_s: float = 2.0) -> Notification:
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        got = listener.receive(remaining)
        if got is not None and got.topic == topic:
            return got
    raise AssertionError(f"no {topic!r} line within {timeout_s} s")


def test_plain_sql_insert_reaches_zeromq_subscriber_and_tcp_listener(
    database_url: str, subscriber: Subscriber, listener: Listener
) -> None:
    # plain psycopg, no smsbus code involved
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(PLAIN_INSERT)
    assert receive(subscriber, "status") == Notification("status")
    assert receive_line(listener, "status") == Notification("status")


def test_non_status_change_and_config_change_are_told_apart(
    conn: Conn, subscriber: Subscriber, listener: Listener
) -> None:
    conn.execute(PLAIN_INSERT)
    receive(subscriber, "status")
    conn.execute("UPDATE messages SET error = 'note'")
    receive(subscriber, "nonstatus")
    conn.execute("INSERT INTO channels (name, type) VALUES ('kpn', 'smpp')")
    assert receive(subscriber, "config.channels") == Notification("config.channels")
    assert receive_line(listener, "config.channels") == Notification("config.channels")


def test_raw_udp_datagram_reaches_subscriber_and_listener(
    bus: BusSettings, subscriber: Subscriber, listener: Listener
) -> None:
    # exactly what `echo "status 42,43" | nc -u -w0 127.0.0.1 16725` sends
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"status 42,43\n", ("127.0.0.1", bus.notify_port))
    assert receive(subscriber, "status") == Notification("status", (42, 43))
    assert receive_line(listener, "status") == Notification("status", (42, 43))


def test_service_publication_reaches_subscribers_and_listeners(
    bus: BusSettings, subscriber: Subscriber, listener: Listener
) -> None:
    publisher = Publisher(bus)
    try:
        deadline = time.monotonic() + 3
        while subscriber.receive(0.05) is None and time.monotonic() < deadline:
            publisher.publish("outgoing.kpn", [7])  # the first ones race the connection
    finally:
        publisher.close()
    assert receive_line(listener, "outgoing.kpn") == Notification("outgoing.kpn", (7,))


def test_garbage_junk_and_a_slow_listener_disturb_nobody(
    service_env: dict[str, str],
    bus: BusSettings,
    broker: ServiceProcess,
    subscriber: Subscriber,
    listener: Listener,
) -> None:
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", bus.notify_port))  # and never reads
    junk = socket.create_connection(("127.0.0.1", bus.notify_port))
    broker.wait_for_log("listeners=3")
    good_lines: list[Notification] = []
    reader = threading.Thread(target=collect_until, args=(listener, 999_999, good_lines), daemon=True)
    reader.start()

    garbage = [b"\xff\xfe\x00binary", b"STATUS", b"status x,y", b"status 1,,2", b"launch 1", b"x" * 9000]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for datagram in garbage:
            udp.sendto(datagram, ("127.0.0.1", bus.notify_port))
        junk.sendall(b"hello broker\nstatus; DROP TABLE messages\n" + b"\x00" * 100 + b"\n")
        # far more than the slow listener's buffers hold (SMSBUS_BROKER_MAX_LISTENER_BUFFER_BYTES)
        for i in range(2000):
            ids = ",".join(str(i * 1000 + j) for j in range(150))
            udp.sendto(f"nonstatus {ids}".encode(), ("127.0.0.1", bus.notify_port))
            if i % 100 == 0:
                time.sleep(0.005)  # a sender's pace, not a flood of the kernel's UDP queue
        udp.sendto(b"status 999999\n", ("127.0.0.1", bus.notify_port))

    assert 999_999 in ids_until(subscriber.receive, 999_999)
    reader.join(10)
    received_ids = {i for n in good_lines for i in n.ids}
    assert 999_999 in received_ids
    # the good listener lost nothing although the slow one stalled
    assert {i * 1000 + j for i in range(2000) for j in range(150)} <= received_ids
    assert broker.process.poll() is None
    port = int(service_env["SMSBUS_BROKER_METRICS_PORT"])
    assert value(port, "smsbus_broker_malformed_total", source="udp") == len(garbage)
    assert value(port, "smsbus_broker_malformed_total", source="tcp") == 3
    # the junk sender never reads either: both stalled connections are dropped
    assert value(port, "smsbus_broker_listeners_dropped_total", reason="slow") == 2
    assert "malformed notification" in broker.log()
    slow.close()
    junk.close()


def collect_until(listener: Listener, wanted: int, into: list[Notification]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = listener.receive(1.0)
        if got is not None:
            into.append(got)
            if wanted in got.ids:
                return


def test_line_without_end_is_dropped_and_broker_lives(
    service_env: dict[str, str], bus: BusSettings, broker: ServiceProcess, subscriber: Subscriber
) -> None:
    endless = socket.create_connection(("127.0.0.1", bus.notify_port))
    endless.sendall(b"a" * 20000)
    broker.wait_for_log("reason=malformed")
    notify_status_update([5], bus)
    assert 5 in ids_until(subscriber.receive, 5)
    endless.close()


def ids_until(receive: Callable[[float], Notification | None], wanted: int, timeout_s: float = 5.0) -> set[int]:
    """Every id received (from a Subscriber or a Listener) until `wanted` arrives."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while wanted not in seen and (remaining := deadline - time.monotonic()) > 0:
        got = receive(remaining)
        if got is not None:
            seen.update(got.ids)
    return seen


def test_broker_reconnects_to_the_database_and_keeps_serving_meanwhile(
    conn: Conn, bus: BusSettings, broker: ServiceProcess, subscriber: Subscriber
) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'broker' AND datname = current_database()"
    )
    notify_status_update([11], bus)  # UDP keeps working without the database
    assert 11 in ids_until(subscriber.receive, 11)
    broker.wait_for_log("database connection lost")
    # after the reconnect the broker announces a catch-up, then NOTIFY flows again
    deadline = time.monotonic() + 5
    while "database connected" not in broker.log().split("database connection lost")[-1]:
        assert time.monotonic() < deadline, broker.log()
        time.sleep(0.05)
    subscriber.drain()
    conn.execute(PLAIN_INSERT)
    receive(subscriber, "status")


def test_sigterm_stops_the_broker_with_exit_0_within_a_second(broker: ServiceProcess, listener: Listener) -> None:
    code, seconds = broker.stop()
    assert code == 0
    assert seconds < 1.0


def test_bad_setting_stops_the_broker_naming_it(service_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(service_env, SMSBUS_BUS_NOTIFY_PORT="seventy")
    process = start_service(["smsbus-broker"], env, tmp_path / "bad.log")
    assert process.process.wait(10) != 0
    assert "bus.notify_port" in process.log() and "SMSBUS_BUS_NOTIFY_PORT" in process.log()
