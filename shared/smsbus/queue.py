"""The queue's shared SQL: insert, find, count, and the guarded status move.

Every status change goes through `move`, which the table in smsbus.statuses allows
(the database's trigger refuses the rest, for plain SQL too).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from smsbus.db import translate_refusal
from smsbus.errors import MessageNotFound, SmsbusError
from smsbus.message import Message, NewMessage
from smsbus.statuses import check_move

# smsbus.statuses.PERMANENT written out, as in migration 0006's partial index
# (messages_trigger_work_idx), so that the planner sees the index fits: the triggers' claim and
# the router's queue depth use it (tests/test_triggers.py compares the three)
IS_PERMANENT = """status IN ('SENT', 'FAILED', 'NOCHANNEL', 'BLOCKED', 'DAILYLIMIT', 'DELIVERED',
                  'NOTDELIVERED', 'NOREPORT', 'RECEIVED')"""

INSERT_MESSAGE = """
INSERT INTO messages (direction, to_address, from_address, body, channel, scheduled_at,
                      properties, client_ref)
VALUES (%(direction)s, %(to_address)s, %(from_address)s, %(body)s, %(channel)s,
        %(scheduled_at)s, %(properties)s, %(client_ref)s)
RETURNING id
"""

SELECT_MESSAGE = "SELECT * FROM messages WHERE id = %(id)s"

# One constant query: a NULL filter matches everything (custom plans prune the branch).
# The archive (smsbus.archive) filters its rows the same way.
MESSAGE_FILTERS = """
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(direction)s::text IS NULL OR direction = %(direction)s)
  AND (%(channel)s::text IS NULL OR channel = %(channel)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
ORDER BY id DESC
LIMIT %(limit)s
"""
FIND_MESSAGES = "SELECT * FROM messages" + MESSAGE_FILTERS

COUNT_BY_STATUS = """
SELECT direction, status, count(*) AS messages FROM messages
GROUP BY direction, status ORDER BY direction DESC, status
"""

# Columns a status move may set alongside the status; everything else is not the mover's.
MOVE_COLUMNS = frozenset(
    {
        "ack_status",
        "trigger_status",
        "channel",
        "sent_at",
        "report_at",
        "received_at",
        "provider_id",
        "parts",
        "attempts",
        "next_attempt_at",
        "error",
        # a channel's lease on a SENDING message (SPEC §4 crash semantics)
        "lease_owner",
        "lease_until",
    }
)


def insert_message(conn: psycopg.Connection[Any], new: NewMessage) -> int:
    """In the caller's transaction; a refusal raises InvalidMessage naming the constraint."""
    params = msgspec.structs.asdict(new)
    params["properties"] = Jsonb(new.properties)
    try:
        row = conn.execute(INSERT_MESSAGE, params).fetchone()
    except psycopg.errors.IntegrityError as e:
        raise translate_refusal(e) from None
    assert row is not None
    return row_id(row)


def get_message(conn: psycopg.Connection[Any], message_id: int) -> Message:
    row = conn.execute(SELECT_MESSAGE, {"id": message_id}).fetchone()
    if row is None:
        raise MessageNotFound(message_id)
    return to_message(row)


def find_messages(
    conn: psycopg.Connection[Any],
    *,
    status: str | None = None,
    direction: str | None = None,
    channel: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[Message]:
    params = {
        "status": status,
        "direction": direction,
        "channel": channel,
        "since": since,
        "limit": limit,
    }
    return [to_message(row) for row in conn.execute(FIND_MESSAGES, params)]


def count_by_status(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int]]:
    return [(r["direction"], r["status"], r["messages"]) for r in conn.execute(COUNT_BY_STATUS)]


def move(
    conn: psycopg.Connection[Any],
    ids: Iterable[int],
    from_status: str,
    to_status: str,
    **changes: Any,
) -> list[int]:
    """Move the messages still in from_status; returns the ids that moved, sorted.

    A move smsbus.statuses forbids raises ForbiddenMove before touching the database.
    """
    check_move(from_status, to_status)
    return guarded_update(
        conn, ids, "status", sql.SQL("status = %(from_status)s"),
        {"from_status": from_status, "to_status": to_status}, changes, MOVE_COLUMNS,
    )


def guarded_update(
    conn: psycopg.Connection[Any],
    ids: Iterable[int],
    axis: str,
    guard: sql.Composable,
    params: dict[str, Any],
    changes: dict[str, Any],
    allowed: frozenset[str],
) -> list[int]:
    """SET <axis> = %(to_status)s plus the allowed `changes` on the ids the guard still holds
    for; returns the ids that moved, sorted. The one shape of every status-axis move."""
    unknown = set(changes) - allowed
    if unknown:
        raise SmsbusError(f"a {axis} move cannot set {', '.join(sorted(unknown))}")
    assignments = [sql.SQL("{} = %(to_status)s").format(sql.Identifier(axis))] + [
        sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
        for column in sorted(changes)
    ]
    query = sql.SQL("UPDATE messages SET {} WHERE id = ANY(%(ids)s) AND {} RETURNING id").format(
        sql.SQL(", ").join(assignments), guard
    )
    return sorted(row_id(row) for row in conn.execute(query, {"ids": list(ids), **params, **changes}))


def to_message(row: Any) -> Message:
    return msgspec.convert(dict(row), Message)


def row_id(row: Sequence[Any] | dict[str, Any]) -> int:
    return int(row["id"] if isinstance(row, dict) else row[0])
