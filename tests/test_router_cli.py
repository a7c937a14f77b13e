"""`smsbus rules ...` and `smsbus route explain` as an operator runs them: output, exit codes,
clear refusals, and explain changing nothing."""

from __future__ import annotations

import subprocess
from typing import Any

import psycopg
import pytest

from smsbus import channel_health
from tests.peers.processes import BIN_DIR

Conn = psycopg.Connection[dict[str, Any]]


def smsbus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN_DIR / "smsbus"), *args], env=env, capture_output=True, text=True, timeout=30)


def ok(env: dict[str, str], *args: str) -> str:
    result = smsbus(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def channels(conn: Conn) -> None:
    conn.execute("INSERT INTO channels (name, type, daily_limit) VALUES ('kpn', 'smpp', 100), ('vf', 'smpp', NULL)")
    channel_health.report(conn, None, "kpn", connected=True)


def test_rules_add_list_show_move_remove(service_env: dict[str, str], channels: None) -> None:
    assert ok(service_env, "rules", "block", "add", "sat", "--condition", "to_address LIKE '+8821%'") == (
        'added blocking rule "sat" (id 1)\n'
    )
    ok(service_env, "rules", "route", "add", "nl", "--condition", "to_address LIKE '+31%'",
       "--channels", "vf,kpn", "--strategy", "weighted", "--weights", "1,2")
    ok(service_env, "rules", "route", "add", "all", "--condition", "true", "--channels", "kpn")
    assert ok(service_env, "rules", "route", "list").splitlines() == [
        "  1. nl  -> vf,kpn weighted weights 1,2  WHERE to_address LIKE '+31%'",
        "  2. all  -> kpn failover  WHERE true",
    ]
    shown = ok(service_env, "rules", "route", "show", "nl")
    assert "channels    vf,kpn" in shown and "strategy    weighted" in shown
    assert ok(service_env, "rules", "route", "move", "all", "--to", "1").splitlines()[0] == (
        "  1. all  -> kpn failover  WHERE true"
    )
    assert ok(service_env, "rules", "route", "remove", "1") == 'removed routing rule "nl"\n'
    assert ok(service_env, "rules", "route", "list").splitlines() == ["  1. all  -> kpn failover  WHERE true"]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["rules", "block", "add", "x", "--condition", "bdy = 'x'"],
         1, 'condition of blocking rule "x" refused: column "bdy" does not exist'),
        (["rules", "block", "add", "x", "--condition", "  "], 1, "condition: must not be empty"),
        (["rules", "route", "add", "x", "--condition", "true", "--channels", "kpn,nosuch"],
         1, "channels: no channel named nosuch"),
        (["rules", "route", "add", "x", "--condition", "true", "--channels", "kpn", "--weights", "a"],
         2, "argument --weights: expected comma-separated positive whole numbers"),
        (["rules", "route", "add", "x", "--condition", "true", "--channels", "kpn", "--strategy", "random"],
         2, "invalid choice: 'random'"),
        (["rules", "route", "add", "x", "--condition", "true", "--channels", "kpn,"],
         2, "expected comma-separated channel names"),
        (["rules", "block", "remove", "nothing"], 1, "no blocking rule named or numbered 'nothing'"),
        (["rules", "block", "move", "nothing", "--to", "1"], 1, "no blocking rule named or numbered 'nothing'"),
        (["route", "explain"], 1, "give a message id, or --to and --body"),
        (["route", "explain", "7", "--to", "+31612345678"], 1, "either a message id or --to/--body"),
        (["route", "explain", "7"], 1, "no message with id 7"),
        (["route", "explain", "--to", "+31612345678", "--body", "x", "--properties", "[1]"],
         2, "must be a JSON object"),
    ],
)
def test_bad_input_is_one_clear_line(
    service_env: dict[str, str], channels: None, args: list[str], code: int, says: str
) -> None:
    result = smsbus(service_env, *args)
    assert result.returncode == code
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_explain_names_the_rule_and_the_channel_and_changes_nothing(
    service_env: dict[str, str], conn: Conn, channels: None
) -> None:
    ok(service_env, "rules", "block", "add", "sat", "--condition", "to_address LIKE '+8821%'")
    ok(service_env, "rules", "route", "add", "nl", "--condition", "to_address LIKE '+31%'", "--channels", "vf,kpn")
    conn.execute("INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31612345678', 'hi')")

    assert ok(service_env, "route", "explain", "1").splitlines() == [
        "message 1: status QUEUED, channel -",
        "blocking rules: none of 1 enabled matches",
        "routing rule: \"nl\" (position 1) matches: to_address LIKE '+31%'",
        "  failover over vf, kpn",
        "  vf               enabled, not connected",
        "  kpn              enabled, connected, 100 left today",
        "verdict: QUEUED via kpn",
    ]
    assert ok(service_env, "route", "explain", "--to", "+882161234567", "--body", "hi").splitlines() == [
        "proposed message to +882161234567",
        "blocking rule: \"sat\" (position 1) matches: to_address LIKE '+8821%'",
        'verdict: BLOCKED (blocked by rule "sat")',
    ]
    assert ok(service_env, "route", "explain", "--to", "+4915112345678", "--body", "hi").splitlines()[-1] == (
        "verdict: NOCHANNEL (no routing rule matches)"
    )
    named = ok(service_env, "route", "explain", "--to", "+4915112345678", "--body", "hi", "--channel", "kpn")
    assert "routing: skipped, the message names channel kpn" in named
    assert named.splitlines()[-1] == "verdict: QUEUED via kpn"

    row = conn.execute("SELECT status, channel, routed_at FROM messages").fetchone()
    assert row == {"status": "QUEUED", "channel": None, "routed_at": None}
    assert conn.execute("SELECT count(*) AS n FROM messages").fetchone() == {"n": 1}
    assert conn.execute("SELECT count(*) AS n FROM channel_daily_counts").fetchone() == {"n": 0}


def test_explain_by_properties(service_env: dict[str, str], channels: None) -> None:
    ok(service_env, "rules", "block", "add", "bulk", "--condition", "properties->>'kind' = 'bulk'")
    described = ok(service_env, "route", "explain", "--to", "+31612345678", "--body", "hi",
                   "--properties", '{"kind": "bulk"}')
    assert described.splitlines()[-1] == 'verdict: BLOCKED (blocked by rule "bulk")'


def test_explain_refuses_a_message_the_table_would_refuse(service_env: dict[str, str], conn: Conn) -> None:
    refused = smsbus(service_env, "route", "explain", "--to", "+0612345678", "--body", "hi")
    assert refused.returncode == 1
    assert "this message would be refused" in refused.stderr and "messages_to_address_format" in refused.stderr
    empty = smsbus(service_env, "route", "explain", "--to", "+31612345678", "--body", "")
    assert empty.returncode == 1 and "body" in empty.stderr, empty.stderr
    assert conn.execute("SELECT count(*) AS n FROM messages").fetchone() == {"n": 0}
