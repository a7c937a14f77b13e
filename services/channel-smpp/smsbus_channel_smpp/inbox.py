"""The incoming side's SQL: receipts matched to message parts (SENT/NOREPORT -> DELIVERED or
NOTDELIVERED, SENT -> NOREPORT after the report timeout), early receipts kept until their
submit_sm_resp is recorded, and incoming messages (concatenated ones reassembled) stored as
`in`/RECEIVED. The caller commits before it acknowledges anything to the SMSC.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from smsbus import incoming, queue
from smsbus.encoding import Concatenation, encoding_of
from smsbus.statuses import Status
from smsbus_channel_smpp.receipts import FAILED_STATES, Receipt, receipt_key

Connection = Any  # psycopg.Connection[dict[str, Any]]
log = logging.getLogger("channel-smpp")

# a batch of receipts at once, each by its id as the part recorded it
APPLY_RECEIPTS = """
UPDATE message_parts AS p SET receipt_state = r.state, receipt_at = now()
FROM unnest(%(provider_ids)s::text[], %(states)s::text[], %(receipts)s::integer[])
     AS r(provider_id, state, receipt)
WHERE p.channel = %(channel)s AND p.provider_id = r.provider_id
  AND (p.receipt_state IS NULL OR p.receipt_state = 'NOREPORT')
RETURNING p.message_id, p.submitted_at, r.receipt
"""

KEEP_EARLY_RECEIPTS = """
INSERT INTO early_receipts (channel, provider_id, state, error)
SELECT %(channel)s, provider_id, state, error
FROM unnest(%(provider_ids)s::text[], %(states)s::text[], %(errors)s::text[]) AS r(provider_id, state, error)
ON CONFLICT (channel, provider_id) DO UPDATE
SET state = EXCLUDED.state, error = EXCLUDED.error, received_at = now()
"""

TAKE_EARLY_RECEIPTS = """
DELETE FROM early_receipts
WHERE channel = %(channel)s AND provider_id = ANY(%(provider_ids)s)
RETURNING provider_id, state, error
"""

FORGET_OLD_EARLY_RECEIPTS = """
DELETE FROM early_receipts
WHERE channel = %(channel)s AND received_at < now() - %(report_timeout)s::interval
"""

# one row per message: delivered when every part is, failed as soon as one part is
SUMMARISE_PARTS = """
SELECT message_id,
       -- a part without its receipt yet is not delivered (bool_and alone skips NULLs)
       bool_and(coalesce(receipt_state = 'DELIVRD', false)) AS delivered,
       bool_or(receipt_state = ANY(%(failed_states)s)) AS failed,
       string_agg('part ' || part_number || ' ' || receipt_state, ', ' ORDER BY part_number)
           FILTER (WHERE receipt_state = ANY(%(failed_states)s)) AS failures
FROM message_parts
WHERE message_id = ANY(%(ids)s)
GROUP BY message_id
"""

# parts still awaiting a receipt past the channel's report timeout, of messages still SENT
SELECT_OVERDUE = """
UPDATE message_parts SET receipt_state = 'NOREPORT'
WHERE channel = %(channel)s AND receipt_state IS NULL
  AND submitted_at < now() - %(report_timeout)s::interval
RETURNING message_id
"""

INSERT_INCOMING_PART = """
INSERT INTO incoming_parts (channel, from_address, reference, total, part_number, to_address,
                            data_coding, payload)
VALUES (%(channel)s, %(from_address)s, %(reference)s, %(total)s, %(part_number)s,
        %(to_address)s, %(data_coding)s, %(payload)s)
ON CONFLICT DO NOTHING
"""

# all parts of one concatenated message, locked; deleted once the message row is written
TAKE_INCOMING_PARTS = """
DELETE FROM incoming_parts
WHERE channel = %(channel)s AND from_address = %(from_address)s
  AND reference = %(reference)s AND total = %(total)s
RETURNING part_number, to_address, data_coding, payload
"""

COUNT_INCOMING_PARTS = """
SELECT count(*) AS parts FROM incoming_parts
WHERE channel = %(channel)s AND from_address = %(from_address)s
  AND reference = %(reference)s AND total = %(total)s
"""

SELECT_STALE_INCOMPLETE = """
SELECT DISTINCT from_address, reference, total FROM incoming_parts
WHERE channel = %(channel)s AND received_at < now() - make_interval(secs => %(timeout_s)s)
"""


@dataclass
class Applied:
    """What applying receipts did: each matched part's submit-to-receipt seconds, how many
    receipts were kept for later, and how many messages moved into each status."""

    latencies: list[float] = field(default_factory=list)
    kept: int = 0
    moved: Counter[Status] = field(default_factory=Counter)


@dataclass(frozen=True)
class Incoming:
    from_address: str
    to_address: str | None
    data_coding: int
    payload: bytes
    # kept with the message row: e.g. a malformed UDH's raw short_message
    properties: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def apply_receipts(
    conn: Connection, channel: str, receipts: Iterable[Receipt], receipt_id_format: str
) -> Applied:
    """Match the final receipts to their parts (one statement), keep the unmatched ones for
    later, then move the messages they complete."""
    final = [r for r in receipts if r.is_final]
    if not final:
        return Applied()
    keys = [receipt_key(r, receipt_id_format) for r in final]
    rows = conn.execute(APPLY_RECEIPTS, {
        "channel": channel,
        "provider_ids": keys,
        "states": [r.state for r in final],
        "receipts": list(range(len(final))),
    }).fetchall()
    now = datetime.now(UTC)
    latencies = [max(0.0, (now - row["submitted_at"]).total_seconds()) for row in rows]
    matched = {row["receipt"] for row in rows}
    # the last receipt for an id wins, as it would arriving one by one
    unmatched = {keys[n]: r for n, r in enumerate(final) if n not in matched}
    if unmatched:
        conn.execute(KEEP_EARLY_RECEIPTS, {
            "channel": channel,
            "provider_ids": list(unmatched),
            "states": [r.state for r in unmatched.values()],
            "errors": [r.error for r in unmatched.values()],
        })
    moved = conclude(conn, sorted({row["message_id"] for row in rows})) if rows else Counter()
    return Applied(latencies, len(unmatched), moved)


def apply_early_receipts(conn: Connection, channel: str, provider_ids: Iterable[str]) -> Applied:
    """After parts were recorded: the receipts that came first (kept under the recorded
    form of their id) are applied now."""
    rows = conn.execute(TAKE_EARLY_RECEIPTS, {"channel": channel, "provider_ids": sorted(set(provider_ids))}).fetchall()
    kept = [Receipt(r["provider_id"], r["state"], r["error"]) for r in rows]
    return apply_receipts(conn, channel, kept, "same")


def conclude(conn: Connection, message_ids: Sequence[int]) -> Counter[Status]:
    """The messages whose parts all have their receipt: DELIVERED or NOTDELIVERED; returns
    how many moved into each."""
    params = {"ids": list(message_ids), "failed_states": sorted(FAILED_STATES)}
    delivered, failed = [], []
    for row in conn.execute(SUMMARISE_PARTS, params).fetchall():
        if row["failed"]:
            failed.append((row["message_id"], f"delivery receipt: {row['failures']}"))
        elif row["delivered"]:
            delivered.append(row["message_id"])
    now = datetime.now(UTC)
    moved: Counter[Status] = Counter()
    # SENT usually; NOREPORT when the receipt came after the report timeout
    if delivered:
        on_time = queue.move(conn, delivered, Status.SENT, Status.DELIVERED, report_at=now)
        late = set(delivered) - set(on_time)
        moved[Status.DELIVERED] += len(on_time)
        if late:
            moved[Status.DELIVERED] += len(
                queue.move(conn, sorted(late), Status.NOREPORT, Status.DELIVERED, report_at=now))
    for message_id, error in failed:
        for source in (Status.SENT, Status.NOREPORT):
            if queue.move(conn, [message_id], source, Status.NOTDELIVERED, report_at=now, error=error):
                moved[Status.NOTDELIVERED] += 1
                break
    return moved


def mark_overdue(conn: Connection, channel: str, report_timeout: Any) -> list[int]:
    """SENT -> NOREPORT for messages with a part unreported past the timeout; a late
    receipt still moves them on (NOREPORT -> DELIVERED)."""
    ids = sorted({row["message_id"] for row in conn.execute(
        SELECT_OVERDUE, {"channel": channel, "report_timeout": report_timeout})})
    conn.execute(FORGET_OLD_EARLY_RECEIPTS, {"channel": channel, "report_timeout": report_timeout})
    if not ids:
        return []
    return queue.move(conn, ids, Status.SENT, Status.NOREPORT, report_at=datetime.now(UTC),
                      error="no delivery receipt within the report timeout")


def store_incoming(
    conn: Connection, channel: str, message: Incoming, concatenation: Concatenation | None
) -> int | None:
    """The message row's id, or None while parts of a concatenated message are missing."""
    if concatenation is None:
        row = incoming.received(message.from_address, message.to_address, [message.payload],
                                encoding_of(message.data_coding), message.properties)
        return incoming.insert_received(conn, channel, row, 1, message.error)
    key = {"channel": channel, "from_address": message.from_address,
           "reference": concatenation.reference, "total": concatenation.total}
    conn.execute(INSERT_INCOMING_PART, {
        **key, "part_number": concatenation.number, "to_address": message.to_address,
        "data_coding": message.data_coding, "payload": message.payload,
    })
    if conn.execute(COUNT_INCOMING_PARTS, key).fetchone()["parts"] < concatenation.total:
        return None
    return _assemble(conn, key)


def _assemble(conn: Connection, key: dict[str, Any]) -> int:
    parts = sorted(conn.execute(TAKE_INCOMING_PARTS, key).fetchall(), key=lambda p: p["part_number"])
    numbers = [p["part_number"] for p in parts]
    missing = sorted(set(range(1, key["total"] + 1)) - set(numbers))
    error = f"incomplete: part(s) {', '.join(map(str, missing))} of {key['total']} never arrived" if missing else None
    row = incoming.received(key["from_address"], parts[0]["to_address"], [bytes(p["payload"]) for p in parts],
                            encoding_of(parts[0]["data_coding"]))
    return incoming.insert_received(conn, key["channel"], row, len(parts), error)


def store_stale_incomplete(conn: Connection, channel: str, timeout_s: float) -> list[int]:
    """Concatenated messages whose missing parts never came: stored with what did arrive.
    A savepoint per message: one the table refuses stays behind (logged) and the rest go on."""
    stored = []
    for group in conn.execute(SELECT_STALE_INCOMPLETE, {"channel": channel, "timeout_s": timeout_s}).fetchall():
        try:
            with conn.transaction():
                stored.append(_assemble(conn, {"channel": channel, **group}))
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:
            log.error("stale concatenated message not stored channel=%s reference=%s error=%s",
                      channel, group["reference"], str(e).splitlines()[0])
    return stored
