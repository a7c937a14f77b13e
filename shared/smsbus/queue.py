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
                      properties, client_ref, status_callback, api_key_id)
VALUES (%(direction)s, %(to_address)s, %(from_address)s, %(body)s, %(channel)s,
        %(scheduled_at)s, %(properties)s, %(client_ref)s, %(status_callback)s, %(api_key_id)s)
RETURNING id
"""

# Idempotent sends (SPEC §10): a client_ref already in the table inserts nothing (a concurrent
# insert of the same client_ref is waited for, then skipped) and the caller reads the first.
INSERT_MESSAGE_ONCE = """
INSERT INTO messages (direction, to_address, from_address, body, channel, scheduled_at,
                      properties, client_ref, status_callback, api_key_id)
VALUES (%(direction)s, %(to_address)s, %(from_address)s, %(body)s, %(channel)s,
        %(scheduled_at)s, %(properties)s, %(client_ref)s, %(status_callback)s, %(api_key_id)s)
ON CONFLICT (client_ref) WHERE client_ref IS NOT NULL DO NOTHING
RETURNING *
"""
# A batch in one statement, one array per column; ids are drawn in the arrays' order, so the
# returned ids sorted are the inserted rows in order. A repeated client_ref inserts nothing.
INSERT_MESSAGES_ONCE = """
INSERT INTO messages (direction, to_address, from_address, body, channel, scheduled_at,
                      properties, client_ref, status_callback, api_key_id)
SELECT direction, to_address, from_address, body, channel, scheduled_at,
       properties::jsonb, client_ref, status_callback, api_key_id
FROM unnest(%(direction)s::text[], %(to_address)s::text[], %(from_address)s::text[],
            %(body)s::text[], %(channel)s::text[], %(scheduled_at)s::timestamptz[],
            %(properties)s::text[], %(client_ref)s::text[], %(status_callback)s::text[],
            %(api_key_id)s::bigint[])
     AS batch(direction, to_address, from_address, body, channel, scheduled_at,
              properties, client_ref, status_callback, api_key_id)
ON CONFLICT (client_ref) WHERE client_ref IS NOT NULL DO NOTHING
RETURNING id, client_ref
"""
SELECT_BY_CLIENT_REFS = "SELECT id, client_ref FROM messages WHERE client_ref = ANY(%(client_refs)s)"
SELECT_BY_CLIENT_REF = "SELECT * FROM messages WHERE client_ref = %(client_ref)s"

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


def batch_columns(messages: Sequence[NewMessage]) -> dict[str, list[Any]]:
    """INSERT_MESSAGES_ONCE's parameters: one list per column, in the messages' order."""
    encode = msgspec.json.encode
    return {
        "direction": [m.direction for m in messages],
        "to_address": [m.to_address for m in messages],
        "from_address": [m.from_address for m in messages],
        "body": [m.body for m in messages],
        "channel": [m.channel for m in messages],
        "scheduled_at": [m.scheduled_at for m in messages],
        "properties": [encode(m.properties).decode() for m in messages],
        "client_ref": [m.client_ref for m in messages],
        "status_callback": [m.status_callback for m in messages],
        "api_key_id": [m.api_key_id for m in messages],
    }


# what an operator may send again (its routed_at cleared by the database, so the router
# looks at it afresh), and what may still be cancelled
REQUEUEABLE = ("FAILED", "NOCHANNEL", "BLOCKED", "DAILYLIMIT")
CANCELLABLE = ("QUEUED", "SCHEDULED")
CANCELLED_ERROR = "cancelled"
SELECT_STATUSES = "SELECT id, status FROM messages WHERE id = ANY(%(ids)s)"


def requeue(conn: Any, ids: Iterable[int]) -> dict[int, str | None]:
    """FAILED/NOCHANNEL/BLOCKED/DAILYLIMIT -> QUEUED with a fresh attempt count. Returns, per
    id, None when it moved or why not. Caller commits (CLI and API alike)."""
    return _move_each(conn, ids, REQUEUEABLE, "QUEUED", "requeued", attempts=0, next_attempt_at=None, error=None)


def cancel(conn: Any, ids: Iterable[int]) -> dict[int, str | None]:
    """QUEUED/SCHEDULED -> FAILED with error 'cancelled' (one a channel has claimed is SENDING
    and can no longer be). Returns, per id, None when it moved or why not. Caller commits."""
    return _move_each(conn, ids, CANCELLABLE, "FAILED", "cancelled", error=CANCELLED_ERROR)


def _move_each(
    conn: Any, ids: Iterable[int], sources: Sequence[str], to_status: str, verb: str, **changes: Any
) -> dict[int, str | None]:
    wanted = list(dict.fromkeys(ids))
    found = {row_id(row): row["status"] for row in conn.execute(SELECT_STATUSES, {"ids": wanted})}
    moved: set[int] = set()
    for source in sources:
        moved.update(move(conn, [i for i in wanted if found.get(i) == source], source, to_status, **changes))
    return {
        i: None if i in moved
        else f"no message with id {i}" if i not in found
        else f"message {i} is {found[i]}; only {', '.join(sources)} can be {verb}"
        for i in wanted
    }
