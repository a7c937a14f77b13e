"""The Web Messenger's view of the queue: conversations by the other party's number, a
thread's messages, and each user's read marks (unread counts). Reads only; sending goes
through smsbus.queue.insert_message like every other way in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import psycopg

Connection = psycopg.AsyncConnection[dict[str, Any]]

# the newest message of each conversation, newest conversation first, and the user's unread
# incoming messages in it; `pattern` (a LIKE pattern or NULL) keeps parties or texts that match
# message_party() (migration 0045) is the expression messages_party_idx indexes
LIST_CONVERSATIONS = """
WITH latest AS (
    SELECT message_party(direction, to_address, from_address) AS party, max(id) AS last_id
    FROM messages
    WHERE message_party(direction, to_address, from_address) IS NOT NULL
      AND (%(pattern)s::text IS NULL
           OR message_party(direction, to_address, from_address) ILIKE %(pattern)s
           OR body ILIKE %(pattern)s)
    GROUP BY 1
    ORDER BY last_id DESC
    LIMIT %(limit)s
)
SELECT latest.party, m.id, m.direction, m.status, m.body, m.created_at,
       (SELECT count(*) FROM messages unread
        WHERE message_party(unread.direction, unread.to_address, unread.from_address) = latest.party
          AND unread.direction = 'in' AND unread.id > coalesce(r.last_read_id, 0)) AS unread
FROM latest
JOIN messages m ON m.id = latest.last_id
LEFT JOIN conversation_reads r ON r.user_id = %(user_id)s AND r.party = latest.party
ORDER BY latest.last_id DESC
"""

# the newest messages of one conversation (shown oldest first)
LIST_THREAD = """
SELECT id, direction, status, body, error, channel, from_address, to_address, parts,
       created_at, sent_at, report_at, received_at
FROM messages
WHERE message_party(direction, to_address, from_address) = %(party)s
ORDER BY id DESC
LIMIT %(limit)s
"""

# a read mark only moves forward (two tabs may report in either order)
MARK_READ = """
INSERT INTO conversation_reads (user_id, party, last_read_id)
VALUES (%(user_id)s, %(party)s, %(last_read_id)s)
ON CONFLICT (user_id, party) DO UPDATE
SET last_read_id = greatest(conversation_reads.last_read_id, excluded.last_read_id), read_at = now()
"""




class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    party: str
    id: int
    direction: str
    status: str
    body: str
    created_at: datetime
    unread: int


class ThreadMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    direction: str
    status: str
    body: str
    error: str | None
    channel: str | None
    from_address: str | None
    to_address: str | None
    parts: int | None
    created_at: datetime
    sent_at: datetime | None
    report_at: datetime | None
    received_at: datetime | None


def like_pattern(search: str) -> str:
    """A substring match where the user's % and _ are plain characters."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_conversations(conn: Connection, user_id: int, search: str = "", limit: int = 50) -> list[Conversation]:
    params = {"user_id": user_id, "pattern": like_pattern(search) if search else None, "limit": limit}
    rows = await (await conn.execute(LIST_CONVERSATIONS, params)).fetchall()
    return [msgspec.convert(row, Conversation) for row in rows]


async def list_thread(conn: Connection, party: str, limit: int = 200) -> list[ThreadMessage]:
    rows = await (await conn.execute(LIST_THREAD, {"party": party, "limit": limit})).fetchall()
    return [msgspec.convert(row, ThreadMessage) for row in reversed(rows)]


async def mark_read(conn: Connection, user_id: int, party: str, last_read_id: int) -> None:
    await conn.execute(MARK_READ, {"user_id": user_id, "party": party, "last_read_id": last_read_id})

