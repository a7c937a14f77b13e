"""The local API: what integrators import from `smsbus` to send, find, notify and listen.

    import smsbus
    message_id = smsbus.send("+31612345678", "Your code is 1234")
    print(smsbus.get(message_id).status)

Each call opens a short connection to the database smsbus.toml / SMSBUS_DATABASE_URL names
(or the embedded one); pass `conn=` to reuse your own psycopg connection and transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg

from smsbus import config, db, queue
from smsbus.archive import find_archived, get_archived
from smsbus.errors import MessageNotFound
from smsbus.message import Message, NewMessage


@contextlib.contextmanager
def _connection(conn: psycopg.Connection[Any] | None) -> Iterator[psycopg.Connection[Any]]:
    if conn is not None:
        yield conn
        return
    with db.connect(config.load().resolved_database_url(), application="smsbus-local-api") as own:
        yield own
        own.commit()


def send(
    to: str,
    body: str,
    *,
    sender: str | None = None,
    channel: str | None = None,
    at: datetime | None = None,
    properties: dict[str, Any] | None = None,
    client_ref: str | None = None,
    conn: psycopg.Connection[Any] | None = None,
) -> int:
    """Queue an outgoing message (SCHEDULED when `at` is in the future); returns its id.

    Raises smsbus.InvalidMessage with PostgreSQL's message naming the constraint.
    The database announces the new row itself: no notify call is needed.
    """
    new = NewMessage(
        to_address=to,
        body=body,
        from_address=sender,
        channel=channel,
        scheduled_at=at,
        properties=properties or {},
        client_ref=client_ref,
    )
    with _connection(conn) as c:
        return queue.insert_message(c, new)


def get(message_id: int, *, conn: psycopg.Connection[Any] | None = None) -> Message:
    """One message, live or else archived (an ArchivedMessage, which adds `archived_at`), as
    `smsbus messages show` finds it; raises smsbus.MessageNotFound. The archive is read where
    the archiver writes it (`archiver.archive_database_url`), whatever `conn` is."""
    try:
        with _connection(conn) as c:
            return queue.get_message(c, message_id)
    except MessageNotFound:
        return get_archived(message_id)


def find(
    *,
    status: str | None = None,
    direction: str | None = None,
    channel: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    archive: bool = False,
    conn: psycopg.Connection[Any] | None = None,
) -> Sequence[Message]:
    """The newest messages matching every filter given; archive=True: archived ones instead
    (read where the archiver writes them, whatever `conn` is)."""
    filters: dict[str, Any] = {
        "status": status, "direction": direction, "channel": channel, "since": since, "limit": limit
    }
    if archive:
        return find_archived(**filters)
    with _connection(conn) as c:
        return queue.find_messages(c, **filters)
