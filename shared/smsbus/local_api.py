"""The local API: what integrators import from `smsbus` to send, find, notify and listen.

    import smsbus
    message_id = smsbus.send("+31612345678", "Your code is 1234")
    print(smsbus.get(message_id).status)

Each call opens a short connection to the database smsbus.toml / SMSBUS_DATABASE_URL names
(or the embedded one); pass `conn=` to reuse your own psycopg connection and transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg

from smsbus import campaigns, config, db, queue
from smsbus.archive import find_archived, get_archived
from smsbus.campaigns import Campaign, CampaignNotFound, NewCampaign
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


def campaign(
    name: str,
    *,
    template: str | None = None,
    recipients: Iterable[str | Mapping[str, str]] = (),
    start: bool = False,
    conn: psycopg.Connection[Any] | None = None,
    **settings: Any,
) -> Campaign:
    """A campaign by name, for scripts and trigger scripts: created first when it does not
    exist (given a template, and NewCampaign's other fields as keywords: sender, channel,
    rate_per_s, allowed_hours, time_zone, default_region, start_at), then given the
    recipients (numbers, or mappings with "address" and the template's fields; rejected ones
    are counted in the campaign's report), then started when `start`. One transaction."""
    with _connection(conn) as c:
        try:
            campaigns.find_campaign(c, name)
        except CampaignNotFound:
            if template is None:
                raise
            campaigns.create_campaign(c, NewCampaign(name=name, template=template, **settings))
        rows = [r if isinstance(r, Mapping) else {campaigns.ADDRESS_FIELD: r} for r in recipients]
        if rows:
            header = list(dict.fromkeys(key for row in rows for key in row))
            campaigns.load_rows(c, name, header, [[str(row.get(key, "")) for key in header] for row in rows],
                                address_column=campaigns.ADDRESS_FIELD)
        if start:
            campaigns.start_campaign(c, name)
        return campaigns.find_campaign(c, name)
