"""Incoming messages made storable, whatever a provider or modem sent (SPEC §13: hostile input
is never a reason to lose or wedge a message). Every channel type writes its `in`/RECEIVED rows
through `received` + `insert_received`.

PostgreSQL text and jsonb refuse NUL (binary data read as Latin-1, UCS-2 0x0000) and Python
strings with lone surrogates; the messages table's address check refuses unusual senders (a
12-character alphanumeric id, odd characters). The text stored then has U+FFFD in their place
and properties keep the raw user data in hex; a refused address is kept in properties.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from smsbus.encoding import Encoding, join_payloads

# characters PostgreSQL text/jsonb cannot hold (NUL) or UTF-8 cannot encode (lone surrogates)
REFUSED_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT_CHARACTER = "\ufffd"
# the messages table's CHECK messages_from_address_format / messages_to_address_format (0001);
# tests/test_incoming.py holds the two to the same answers
ADDRESS_FORMAT = re.compile(
    r"^(\+[1-9][0-9]{1,14}|[0-9]{1,15}|(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9 ._&-]{0,10})$"
)
# from_address of a message whose sender the address check refuses (kept in properties.sender)
UNKNOWN_SENDER = "unknown"
# the table refuses an empty body; an empty SMS is still a message somebody sent
EMPTY_BODY = " "
# an address longer than this is not one: cut before it goes into properties
MAX_ADDRESS_CHARACTERS = 64

INSERT_RECEIVED = """
INSERT INTO messages (direction, status, channel, from_address, to_address, body, parts,
                      received_at, error, properties)
VALUES ('in', 'RECEIVED', %(channel)s, %(from_address)s, %(to_address)s, %(body)s, %(parts)s,
        now(), %(error)s, %(properties)s)
RETURNING id
"""


@dataclass(frozen=True)
class Received:
    """An incoming message as the messages table accepts it."""

    from_address: str
    to_address: str | None
    body: str
    properties: dict[str, Any]


def storable_text(text: str) -> str:
    """The text with every character PostgreSQL refuses replaced by U+FFFD."""
    return REFUSED_CHARACTERS.sub(REPLACEMENT_CHARACTER, text)


def is_storable_address(address: str) -> bool:
    return ADDRESS_FORMAT.match(address) is not None


def decode_body(payloads: Sequence[bytes], encoding: Encoding) -> tuple[str, dict[str, Any]]:
    """The body to store, and the properties that keep what it could not: the raw user data
    (hex) and its alphabet whenever the stored text is not the payload read faithfully."""
    try:
        text = join_payloads(payloads, encoding)
        faithful = True
    except ValueError:  # UnicodeDecodeError: an octet the alphabet has no character for
        text = join_payloads(payloads, encoding, errors="replace")
        faithful = False
    body = storable_text(text)
    if faithful and body == text:
        return body or EMPTY_BODY, {}
    return body or EMPTY_BODY, {"user_data": b"".join(payloads).hex(), "encoding": encoding.value}


def received(
    sender: str,
    recipient: str | None,
    payloads: Sequence[bytes],
    encoding: Encoding,
    properties: Mapping[str, Any] = {},
) -> Received:
    """The row for what arrived: never refused by the table's checks."""
    body, kept = decode_body(payloads, encoding)
    extra: dict[str, Any] = {**properties, **kept}
    from_address = sender
    if not is_storable_address(sender):
        from_address = UNKNOWN_SENDER
        extra["sender"] = storable_text(sender[:MAX_ADDRESS_CHARACTERS])
    to_address = recipient or None
    if to_address is not None and not is_storable_address(to_address):
        extra["recipient"] = storable_text(to_address[:MAX_ADDRESS_CHARACTERS])
        to_address = None
    return Received(from_address, to_address, body, extra)


def insert_received(conn: Any, channel: str, message: Received, parts: int, error: str | None = None) -> int:
    """The RECEIVED row's id. `conn` is a psycopg connection with dict rows."""
    row = conn.execute(INSERT_RECEIVED, {
        "channel": channel, "from_address": message.from_address, "to_address": message.to_address,
        "body": message.body, "parts": parts, "error": storable_text(error) if error else None,
        "properties": Jsonb(message.properties),
    }).fetchone()
    return int(row["id"])
