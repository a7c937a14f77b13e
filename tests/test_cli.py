"""`smsbus` as an operator or a script runs it: output and exit codes."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import psycopg
import pytest

from smsbus.bus import Listener
from tests.peers.processes import BIN_DIR, ServiceProcess, environment_bus

Conn = psycopg.Connection[dict[str, Any]]


def smsbus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN_DIR / "smsbus"), *args], env=env, capture_output=True, text=True, timeout=30)


def test_send_prints_the_id_of_a_queued_message(service_env: dict[str, str], conn: Conn) -> None:
    result = smsbus(service_env, "send", "--to", "+31612345678", "--body", "hello", "--channel", "kpn")
    assert result.returncode == 0, result.stderr
    row = conn.execute("SELECT * FROM messages WHERE id = %s", (int(result.stdout),)).fetchone()
    assert row is not None and (row["status"], row["channel"], row["body"]) == ("QUEUED", "kpn", "hello")


def test_send_at_a_future_time_schedules(service_env: dict[str, str], conn: Conn) -> None:
    result = smsbus(service_env, "send", "--to", "+31612345678", "--body", "later", "--at", "2099-01-01T09:00:00+01:00")
    assert result.returncode == 0, result.stderr
    assert conn.execute("SELECT status FROM messages").fetchone() == {"status": "SCHEDULED"}


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["send", "--to", "not-a-number!", "--body", "x"], 1, "messages_to_address_format"),
        (["send", "--to", "+31612345678", "--body", ""], 1, "messages_body_not_empty"),
        (["send", "--to", "+31612345678", "--body", "x", "--at", "tomorrow"], 2, "not an ISO 8601 time"),
        (["send", "--to", "+31612345678", "--body", "x", "--at", "2099-01-01T09:00"], 2, "needs a time zone"),
        (["messages", "show", "424242"], 1, "no message with id 424242"),
        (["messages", "show", "abc"], 2, "expected a positive whole number"),
        (["messages", "list", "--status", "LOST"], 2, "invalid choice"),
        (["notify", "status", "1,x"], 2, "expected a positive whole number"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_reliable_exit_code(
    service_env: dict[str, str], args: list[str], code: int, says: str
) -> None:
    result = smsbus(service_env, *args)
    assert result.returncode == code
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_database_unreachable_exits_4(service_env: dict[str, str]) -> None:
    env = dict(service_env, SMSBUS_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    result = smsbus(env, "send", "--to", "+31612345678", "--body", "x")
    assert result.returncode == 4 and "cannot reach the database" in result.stderr


def test_list_filters_and_show_prints_every_field(service_env: dict[str, str], conn: Conn) -> None:
    for channel in ("kpn", "vodafone", "kpn"):
        smsbus(service_env, "send", "--to", "+31612345678", "--body", "x", "--channel", channel)
    listed = smsbus(service_env, "messages", "list", "--channel", "kpn", "--status", "queued", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["id"] for r in rows] == [3, 1] and {r["channel"] for r in rows} == {"kpn"}
    table = smsbus(service_env, "messages", "list", "--limit", "1").stdout.splitlines()
    assert len(table) == 2 and table[1].split()[:3] == ["3", "out", "QUEUED"]
    shown = smsbus(service_env, "messages", "show", "2").stdout
    assert "channel          vodafone" in shown and "to_address       +31612345678" in shown


def test_notify_and_listen(service_env: dict[str, str], broker: ServiceProcess) -> None:
    mark = broker.log_mark()
    with Listener(environment_bus(service_env)) as listener:
        broker.wait_for_log("listener connected", after=mark)
        assert smsbus(service_env, "notify", "status", "17,18", "19").returncode == 0
        got = listener.receive(3)
        assert got is not None and (got.topic, got.ids) == ("status", (17, 18, 19))
    mark = broker.log_mark()
    listen = subprocess.Popen(
        [str(BIN_DIR / "smsbus"), "listen", "--count", "1"], env=service_env, stdout=subprocess.PIPE, text=True
    )
    try:
        broker.wait_for_log("listener connected", after=mark)
        smsbus(service_env, "notify", "nonstatus")
        out, _ = listen.communicate(timeout=5)
    finally:
        listen.kill()
    assert (listen.returncode, out) == (0, "nonstatus\n")


def test_db_migrate_is_idempotent(service_env: dict[str, str]) -> None:
    result = smsbus(service_env, "db", "migrate")
    assert (result.returncode, result.stdout.strip()) == (0, "schema up to date")


def test_status_without_supervisord_exits_3_and_still_counts(service_env: dict[str, str], conn: Conn) -> None:
    smsbus(service_env, "send", "--to", "+31612345678", "--body", "x")
    result = smsbus(service_env, "status")
    assert result.returncode == 3
    assert "not running" in result.stdout and "QUEUED" in result.stdout
