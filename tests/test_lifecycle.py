"""A message's whole life cycle across the services, as real processes: router, channel-smpp
against the SMSC simulator, triggers. What one service does must not hold up another."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psycopg

from smsbus import triggers
from tests.conftest import StartServices
from tests.peers.processes import ServiceProcess, start_service
from tests.peers.smsc import start_smsc
from tests.test_smpp import add_channel, message, send, wait_status

Conn = psycopg.Connection[dict[str, Any]]

SLEEP_ON_SENT = """
import time

def handle(message, api):
    time.sleep(10)
    api.change(properties={'slept': True})
"""


def test_a_python_trigger_sleeping_10_s_on_one_message_delays_no_receipt(
    conn: Conn, service_env: dict[str, str], tmp_path: Path, start_services: StartServices,
    broker: ServiceProcess,
) -> None:
    # the receipt comes while the script sleeps on the message it is about
    smsc = start_smsc(service_env, tmp_path, "--receipt-delay-ms", "1500")
    channel: ServiceProcess | None = None
    try:
        add_channel(conn, smsc)
        triggers.add_trigger(conn, name="sleepy", condition="status = 'SENT' AND body = 'slow'",
                             language="python", script=SLEEP_ON_SENT, timeout_s=20)
        start_services("triggers")
        channel = start_service(["smsbus-channel-smpp", "--channel", "sim"], service_env, tmp_path / "channel.log")
        smsc.wait_bound()

        slow = send(conn, "slow")
        wait_status(conn, slow, "SENT")
        started = time.monotonic()
        wait_for_trigger_status(conn, slow, {"PENDING", "PROCESSING"}, timeout_s=5)
        time.sleep(0.3)  # the script is sleeping now
        others = [send(conn, f"quick {n}") for n in range(20)]

        for message_id in [slow, *others]:
            wait_status(conn, message_id, "DELIVERED", timeout_s=8)
        # well under the script's 10 s: no receipt waited for it, its own neither
        assert time.monotonic() - started < 6
        # the script's change was for a SENT message that is DELIVERED now: not applied, and
        # the message is offered to the triggers again for DELIVERED
        wait_for_trigger_status(conn, slow, {"NOMATCH"}, timeout_s=15)
        assert "slept" not in message(conn, slow)["properties"]
    finally:
        if channel is not None:
            assert channel.stop()[0] == 0
        smsc.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_smpp_channel_does_not_claim_in_a_loop(
    conn: Conn, service_env: dict[str, str], tmp_path: Path, broker: ServiceProcess
) -> None:
    """Its database thread's empty claim is no reason for another claim."""
    smsc = start_smsc(service_env, tmp_path)
    add_channel(conn, smsc)
    channel = start_service(["smsbus-channel-smpp", "--channel", "sim"], service_env, tmp_path / "channel.log")
    try:
        smsc.wait_bound()
        time.sleep(0.5)
        before = cpu_seconds(channel.process.pid)
        time.sleep(3)
        assert cpu_seconds(channel.process.pid) - before < 0.3
        # and it still wakes for work
        wait_status(conn, send(conn, "after a quiet while"), "DELIVERED")
    finally:
        assert channel.stop()[0] == 0
        smsc.stop()


def notifications_of(listener: Conn, statement: str, params: Any = ()) -> list[str]:
    """The payloads on `smsbus` that one autocommitted statement of the listening session caused."""
    listener.execute(statement, params)
    return sorted(n.payload for n in listener.notifies(timeout=0.2, stop_after=20))


def test_the_database_announces_outgoing_channel_once_per_statement_for_rows_made_ready(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN smsbus")
        # the router's pass: one announcement per channel touched, and a `nonstatus`
        unrouted = notifications_of(
            listener, "INSERT INTO messages (direction, to_address, body)"
            " SELECT 'out', '+31612345678', 'x' FROM generate_series(1, 6)",
        )
        assert unrouted == ["status"]
        passed = notifications_of(
            listener, "UPDATE messages SET routed_at = now(),"
            " channel = CASE WHEN mod(id, 3) = 0 THEN 'kpn' ELSE 'vodafone' END WHERE id <= 5",
        )
        assert passed == ["nonstatus", "outgoing.kpn", "outgoing.vodafone"]
        # a routed row inserted by plain SQL wakes its channel too
        inserted = notifications_of(
            listener, "INSERT INTO messages (direction, to_address, body, channel, routed_at)"
            " VALUES ('out', '+31612345678', 'y', 'kpn', now())",
        )
        assert inserted == ["outgoing.kpn", "status"]
        # the channel's claim, an unrelated edit, rows ready before and still: no wake-up
        claimed = notifications_of(listener, "UPDATE messages SET status = 'SENDING' WHERE channel = 'kpn'")
        assert claimed == ["status"]
        edited = notifications_of(listener, "UPDATE messages SET properties = '{\"a\": 1}' WHERE channel = 'vodafone'")
        assert edited == ["nonstatus"]
        # a name no topic can carry is not announced
        odd = notifications_of(
            listener, "INSERT INTO messages (direction, to_address, body, channel, routed_at)"
            " VALUES ('out', '+31612345678', 'z', 'Not A Topic!', now())",
        )
        assert odd == ["status"]


def wait_for_trigger_status(conn: Conn, message_id: int, wanted: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while message(conn, message_id)["trigger_status"] not in wanted:
        assert time.monotonic() < deadline, f"message {message_id} never reached {wanted}: {message(conn, message_id)}"
        time.sleep(0.02)
