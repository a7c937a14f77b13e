"""What the CLI prints of a message body cannot drive the operator's terminal."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from tests.peers.cli import Result

Conn = psycopg.Connection[dict[str, Any]]
# retitle the window, turn red, overwrite the line, reorder it, CSI in its 8-bit form
HOSTILE_BODY = "\x1b]0;owned\x07\x1b[31mred\rfake\u202eevil\x9b2J\nline two\ttab"


def insert_incoming(conn: Conn, body: str) -> int:
    row = conn.execute(
        "INSERT INTO messages (direction, status, from_address, body) VALUES ('in', 'RECEIVED', %s, %s)"
        " RETURNING id",
        ("+31612345678", body),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def test_messages_show_escapes_terminal_controls_on_one_line(conn: Conn, smsbus: Callable[..., Result]) -> None:
    message_id = insert_incoming(conn, HOSTILE_BODY)
    shown = smsbus("messages", "show", str(message_id))
    assert shown.returncode == 0, shown.stderr
    body_line = next(line for line in shown.stdout.splitlines() if line.startswith("body "))
    assert body_line.split(None, 1)[1] == (
        "\\u001b]0;owned\\u0007\\u001b[31mred\\rfake\\u202eevil\\u009b2J\\nline two\\ttab"
    )
    assert not any(c in shown.stdout for c in "\x1b\x07\r\x9b\u202e")


def test_json_output_stays_json_with_the_body_intact(conn: Conn, smsbus: Callable[..., Result]) -> None:
    message_id = insert_incoming(conn, HOSTILE_BODY)
    for args in (("messages", "show", str(message_id), "--json"), ("messages", "list", "--json")):
        shown = smsbus(*args)
        assert not any(c in shown.stdout for c in "\x1b\x07\r\x9b\u202e"), args
        assert json.loads(shown.stdout.splitlines()[0])["body"] == HOSTILE_BODY


def test_errors_naming_user_input_are_escaped_too(smsbus: Callable[..., Result]) -> None:
    # argparse names an unrecognized argument as given
    refused = smsbus("messages", "list", "\x1b[2J")
    assert refused.returncode == 2
    assert "unrecognized arguments: \\u001b[2J" in refused.stderr and "\x1b" not in refused.stderr
