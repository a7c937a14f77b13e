"""The broker as when exposed (bind_host 0.0.0.0): a flood of connections, hostile publishers."""

from __future__ import annotations

import resource
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import psycopg
import pytest
import zmq

from smsbus.bus import MAX_FRAME_BYTES, Listener, Publisher, Subscriber, notify_status_update
from smsbus.bus_keys import make_keys
from tests.peers.cli import Result
from tests.peers.metrics import value
from tests.peers.processes import BIN_DIR, PROJECT_ROOT, ServiceProcess, environment_bus
from tests.test_broker import receive, receive_line, wait_until_subscribed

FLOOD = 10_000


def start_broker(env: dict[str, str], log_path: Path, descriptor_limit: int | None = None) -> ServiceProcess:
    """The broker, optionally with a hard descriptor limit (as a small system would give)."""

    def limit() -> None:
        if descriptor_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (descriptor_limit, descriptor_limit))

    process = subprocess.Popen(
        [str(BIN_DIR / "smsbus-broker")], env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
        cwd=PROJECT_ROOT, start_new_session=True, preexec_fn=limit,
    )
    broker = ServiceProcess(process, log_path)
    broker.wait_for_port(int(env["SMSBUS_BUS_NOTIFY_PORT"]))
    return broker


def flood(port: int, count: int) -> list[socket.socket]:
    """`count` connections attempted at once, kept open (each refused one closes by itself)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 512), hard))
    opened = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        opened.append(sock)
    return opened


@pytest.mark.parametrize(
    ("max_listeners", "descriptor_limit", "reason"),
    [("50", None, "max_listeners"), (str(FLOOD), 200, "no_descriptors")],
    ids=["listener-cap", "out-of-descriptors"],
)
def test_ten_thousand_connections_leave_the_first_listeners_served(
    service_env: dict[str, str], tmp_path: Path, max_listeners: str, descriptor_limit: int | None, reason: str
) -> None:
    env = dict(service_env, SMSBUS_BROKER_MAX_LISTENERS=max_listeners)
    broker = start_broker(env, tmp_path / "broker.log", descriptor_limit)
    bus = environment_bus(env)
    first = [Listener(bus) for _ in range(3)]
    opened: list[socket.socket] = []
    try:
        for listener in first:
            listener.connect()
        broker.wait_for_log("listeners=3")
        opened = flood(bus.notify_port, FLOOD)
        broker.wait_for_log(f"listener refused peer=127.0.0.1 reason={reason}", timeout_s=20)
        time.sleep(0.5)  # the broker works through the rest of the flood
        assert broker.process.poll() is None, broker.log()
        notify_status_update([42], bus)
        for listener in first:
            assert receive_line(listener, "status", timeout_s=5).ids == (42,)
    finally:
        for sock in opened:
            sock.close()
        for listener in first:
            listener.close()
        code, _ = broker.stop()
    assert code == 0, broker.log()[-2000:]


def test_a_published_topic_cannot_write_lines_of_its_own(service_env: dict[str, str], tmp_path: Path) -> None:
    broker = start_broker(service_env, tmp_path / "broker.log")
    bus = environment_bus(service_env)
    context = zmq.Context.instance()
    publisher = context.socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.connect(f"tcp://127.0.0.1:{bus.publish_port}")
    try:
        with Listener(bus) as listener:
            broker.wait_for_log("listener connected")
            time.sleep(0.3)  # the PUB connection completes
            publisher.send_multipart([b"status\nconfig.channels", b"1"])
            publisher.send_multipart([b"nonstatus", b"7"])
            # the injected topic is refused; the honest one after it arrives as it was sent
            assert receive_line(listener, "nonstatus").ids == (7,)
            broker.wait_for_log("malformed notification source=zeromq")
            # the same through PostgreSQL, where any role may NOTIFY
            with psycopg.connect(service_env["SMSBUS_DATABASE_URL"], autocommit=True) as conn:
                conn.execute("SELECT pg_notify('smsbus', 'status' || chr(10) || 'config.channels')")
                conn.execute("SELECT pg_notify('smsbus', 'config.rules')")
            assert receive_line(listener, "config.rules").ids == ()
            port = int(service_env["SMSBUS_BROKER_METRICS_PORT"])
            assert value(port, "smsbus_broker_malformed_total", source="postgres") == 1
            # a message above the size limit disconnects its sender, the broker lives on
            publisher.send_multipart([b"status", b"1," * (MAX_FRAME_BYTES // 2 + 1)])
            notify_status_update([5], bus)
            assert receive_line(listener, "status").ids == (5,)
    finally:
        publisher.close()
        code, _ = broker.stop()
    assert code == 0, broker.log()[-2000:]


def test_with_curve_keys_only_allowed_hosts_publish_and_subscribe(service_env: dict[str, str], tmp_path: Path) -> None:
    keys, stranger_keys = tmp_path / "curve", tmp_path / "stranger"
    make_keys(keys, broker=True, owner=None)
    # a host that knows the broker's public key but is not on its allow list
    make_keys(stranger_keys, broker=False, owner=None)
    shutil.copyfile(keys / "broker.key", stranger_keys / "broker.key")
    env = dict(service_env, SMSBUS_BUS_CURVE_DIR=str(keys))
    broker = start_broker(env, tmp_path / "broker.log")
    bus = msgspec.structs.replace(environment_bus(env), curve_dir=str(keys))
    allowed = Subscriber(bus, ["status", "nonstatus"])
    stranger = Subscriber(msgspec.structs.replace(bus, curve_dir=str(stranger_keys)), ["status", "nonstatus"])
    plain = Subscriber(msgspec.structs.replace(bus, curve_dir=""), ["status", "nonstatus"])
    publishers = [Publisher(bus), Publisher(msgspec.structs.replace(bus, curve_dir=str(stranger_keys)))]
    try:
        wait_until_subscribed(bus, allowed)
        publishers[1].publish("nonstatus", [666])
        publishers[0].publish("nonstatus", [7])
        assert receive(allowed, "nonstatus").ids == (7,)  # the stranger's came first: it never arrived
        notify_status_update([8], bus)
        assert receive(allowed, "status").ids == (8,)
        assert stranger.receive(0.5) is None and plain.receive(0.1) is None
        assert stranger.drain_connections() == 0 and plain.drain_connections() == 0
    finally:
        for sock in (allowed, stranger, plain, *publishers):
            sock.close()
        code, _ = broker.stop()
    assert code == 0, broker.log()[-2000:]


def test_bus_keys_makes_only_what_is_missing_with_private_secrets(
    smsbus: Callable[..., Result], tmp_path: Path
) -> None:
    folder = tmp_path / "curve"
    made = smsbus("bus", "keys", str(folder), "--broker")
    assert made.returncode == 0, made.stderr
    assert {p.name for p in folder.iterdir()} == {"broker.key", "broker.key_secret", "client.key",
                                                  "client.key_secret", "clients"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.glob("*.key_secret"))
    assert [p.read_bytes() for p in (folder / "clients").iterdir()] == [(folder / "client.key").read_bytes()]
    again = smsbus("bus", "keys", str(folder), "--broker")
    assert again.returncode == 0 and "every key there already" in again.stdout
