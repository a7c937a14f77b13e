"""Guarded moves and the queue's shared SQL, through smsbus code, on a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from smsbus import queue
from smsbus.errors import ForbiddenMove, InvalidMessage, MessageNotFound, SmsbusError
from smsbus.message import NewMessage
from smsbus.statuses import Status

Conn = psycopg.Connection[dict[str, Any]]


def insert(conn: Conn, **fields: Any) -> int:
    return queue.insert_message(conn, NewMessage(to_address="+31612345678", body="hi", **fields))


def test_move_changes_only_rows_still_in_the_from_status(conn: Conn) -> None:
    first, second = insert(conn), insert(conn)
    conn.execute("UPDATE messages SET status = 'SENDING' WHERE id = %s", (second,))
    moved = queue.move(conn, [first, second], Status.QUEUED, Status.SENDING, attempts=1)
    assert moved == [first]
    assert queue.get_message(conn, first).attempts == 1


def test_forbidden_move_raises_before_touching_the_database(conn: Conn) -> None:
    message_id = insert(conn)
    with pytest.raises(ForbiddenMove, match="QUEUED -> DELIVERED"):
        queue.move(conn, [message_id], Status.QUEUED, Status.DELIVERED)
    assert queue.get_message(conn, message_id).status == "QUEUED"


def test_move_refuses_columns_that_are_not_the_movers(conn: Conn) -> None:
    with pytest.raises(SmsbusError, match="cannot set body"):
        queue.move(conn, [insert(conn)], Status.QUEUED, Status.SENDING, body="changed")


def test_insert_translates_a_refusal_into_invalid_message(conn: Conn) -> None:
    with pytest.raises(InvalidMessage) as refused:
        queue.insert_message(conn, NewMessage(to_address="nonsense!", body="hi"))
    assert refused.value.constraint == "messages_to_address_format"
    assert "messages_to_address_format" in str(refused.value)


def test_find_filters_and_returns_newest_first(conn: Conn) -> None:
    ids = [insert(conn, channel="kpn"), insert(conn), insert(conn, channel="kpn")]
    found = queue.find_messages(conn, channel="kpn", status="QUEUED", direction="out")
    assert [m.id for m in found] == [ids[2], ids[0]]
    assert [m.id for m in queue.find_messages(conn, limit=1)] == [ids[2]]


def test_get_unknown_message_raises_not_found(conn: Conn) -> None:
    with pytest.raises(MessageNotFound, match="no message with id 999"):
        queue.get_message(conn, 999)


def test_count_by_status(conn: Conn) -> None:
    insert(conn), insert(conn)
    assert queue.count_by_status(conn) == [("out", "QUEUED", 2)]
