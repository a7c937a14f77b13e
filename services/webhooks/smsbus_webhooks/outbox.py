"""The outbox's SQL: claim the head of each message's line, then record what came of it
(delete when taken, retry later, or give up). No transaction is held across HTTP: a claim
commits a lease (next_attempt_at pushed out by lease_s), the outcomes are a second one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smsbus.loop import Connection
from smsbus_webhooks.formats import Callback

# the oldest change of each message not yet taken (its line's head), when due, oldest first
CLAIM_DUE = """
WITH heads AS (
    SELECT o.id FROM webhook_outbox o
    WHERE o.abandoned_at IS NULL AND o.next_attempt_at <= now()
      -- an earlier change of the same message goes first, claimed or not
      AND NOT EXISTS (SELECT 1 FROM webhook_outbox earlier
                      WHERE earlier.message_id = o.message_id AND earlier.id < o.id
                        AND earlier.abandoned_at IS NULL)
    ORDER BY o.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE webhook_outbox o SET next_attempt_at = now() + make_interval(secs => %(lease_s)s)
FROM heads WHERE o.id = heads.id
RETURNING o.id, o.message_id, o.status, o.previous_status, o.changed_at, o.url, o.api_key_id,
    o.message, o.attempts, o.created_at,
    (SELECT k.callback_secret FROM api_keys k WHERE k.id = o.api_key_id) AS secret,
    EXISTS (SELECT 1 FROM api_keys k WHERE k.id = o.api_key_id) AS key_found
"""
DELETE_TAKEN = "DELETE FROM webhook_outbox WHERE id = ANY(%(ids)s)"
RETRY_LATER = """
UPDATE webhook_outbox o SET attempts = o.attempts + 1,
    next_attempt_at = now() + make_interval(secs => r.delay_s), last_error = r.error
FROM unnest(%(ids)s::bigint[], %(delays)s::float8[], %(errors)s::text[]) AS r(id, delay_s, error)
WHERE o.id = r.id
"""
GIVE_UP = """
UPDATE webhook_outbox o SET attempts = o.attempts + 1, abandoned_at = now(), last_error = r.error
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS r(id, error)
WHERE o.id = r.id
"""
# when the earliest head falls due (a retry's backoff, a dead claimer's lease)
SELECT_NEXT_DUE = """
SELECT extract(epoch FROM min(next_attempt_at))::float8 AS due FROM (
    SELECT DISTINCT ON (message_id) next_attempt_at FROM webhook_outbox
    WHERE abandoned_at IS NULL ORDER BY message_id, id
) AS heads
"""
DELETE_OLD_ABANDONED = """
DELETE FROM webhook_outbox WHERE abandoned_at < now() - make_interval(secs => %(keep_s)s)
"""
SELECT_DEPTH = """
SELECT count(*) FILTER (WHERE abandoned_at IS NULL) AS waiting,
       count(*) FILTER (WHERE abandoned_at IS NOT NULL) AS abandoned,
       extract(epoch FROM now() - min(changed_at) FILTER (WHERE abandoned_at IS NULL))::float8 AS oldest_s
FROM webhook_outbox
"""


@dataclass(frozen=True)
class Claimed:
    callback: Callback
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Depth:
    waiting: int
    abandoned: int
    oldest_s: float


def claim_due(conn: Connection, limit: int, lease_s: float) -> list[Claimed]:
    with conn.transaction():
        rows = conn.execute(CLAIM_DUE, {"limit": limit, "lease_s": lease_s}).fetchall()
    # RETURNING has no order
    return sorted((_claimed(row) for row in rows), key=lambda c: c.callback.id)


def _claimed(row: dict[str, Any]) -> Claimed:
    callback = Callback(
        id=row["id"], message_id=row["message_id"], status=row["status"],
        previous_status=row["previous_status"], changed_at=row["changed_at"], url=row["url"],
        message=row["message"], api_key_id=row["api_key_id"], secret=row["secret"],
        key_found=row["key_found"],
    )
    return Claimed(callback, row["attempts"], row["created_at"])


def record(
    conn: Connection,
    taken: list[int],
    retries: list[tuple[int, float, str]],
    given_up: list[tuple[int, str]],
) -> None:
    """What came of a claimed batch, in one transaction."""
    with conn.transaction():
        if taken:
            conn.execute(DELETE_TAKEN, {"ids": taken})
        if retries:
            ids, delays, errors = zip(*retries, strict=True)
            conn.execute(RETRY_LATER, {"ids": list(ids), "delays": list(delays), "errors": list(errors)})
        if given_up:
            ids, errors = zip(*given_up, strict=True)
            conn.execute(GIVE_UP, {"ids": list(ids), "errors": list(errors)})


def next_due(conn: Connection) -> float | None:
    with conn.transaction():
        row = conn.execute(SELECT_NEXT_DUE).fetchone()
    due = row["due"] if row else None
    return float(due) if due is not None and math.isfinite(due) else None


def depth(conn: Connection, keep_abandoned_s: float) -> Depth:
    """The gauges' figures, after forgetting callbacks given up longer ago than keep_abandoned_s."""
    with conn.transaction():
        conn.execute(DELETE_OLD_ABANDONED, {"keep_s": keep_abandoned_s})
        row = conn.execute(SELECT_DEPTH).fetchone()
    assert row is not None
    return Depth(row["waiting"], row["abandoned"], float(row["oldest_s"] or 0.0))
