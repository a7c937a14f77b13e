"""The outgoing side's SQL: claim QUEUED -> SENDING under a lease, and record each outcome
(SENT, FAILED, or QUEUED again for a retry or an unknown outcome) in a short transaction.
Every move is guarded by the status it leaves and allowed by smsbus.statuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from smsbus import queue
from smsbus.statuses import Status, check_move

Connection = Any  # psycopg.Connection[dict[str, Any]]

# QUEUED -> SENDING in one statement (one round trip on the path from INSERT to the wire);
# routed_at: only what the router has let through (SPEC §5)
CLAIM_QUEUED = """
WITH claimable AS (
    SELECT id FROM messages
    WHERE status = 'QUEUED' AND channel = %(channel)s AND routed_at IS NOT NULL
      AND (next_attempt_at IS NULL OR next_attempt_at <= now())
    -- live traffic first: one-off messages before campaign messages (migration 0041)
    ORDER BY (campaign_id IS NOT NULL), id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE messages AS m
SET status = 'SENDING', ack_status = 'WAITING', lease_owner = %(owner)s, lease_until = %(lease_until)s
FROM claimable
WHERE m.id = claimable.id AND m.status = 'QUEUED'
RETURNING m.id, m.from_address, m.to_address, m.body, m.properties, m.attempts, m.created_at, m.error
"""

# one statement for a whole batch of accepted messages, each with its own provider id
RECORD_SENT = """
UPDATE messages AS m
SET status = 'SENT', ack_status = 'ACK', sent_at = now(), provider_id = s.provider_id,
    parts = s.parts, error = NULL, lease_owner = NULL, lease_until = NULL
FROM unnest(%(ids)s::bigint[], %(provider_ids)s::text[], %(parts)s::integer[])
     AS s(id, provider_id, parts)
WHERE m.id = s.id AND m.status = 'SENDING'
"""

# the provider id of every part, where receipts will look for it
INSERT_PARTS = """
INSERT INTO message_parts (message_id, part_number, channel, provider_id)
SELECT message_id, part_number, %(channel)s, provider_id
FROM unnest(%(message_ids)s::bigint[], %(part_numbers)s::integer[], %(provider_ids)s::text[])
     AS p(message_id, part_number, provider_id)
ON CONFLICT (message_id, part_number) DO NOTHING
"""

# back to the queue: a retry (attempt counted), throttling (not counted), an unknown outcome
REQUEUE = """
UPDATE messages
SET status = 'QUEUED', attempts = attempts + %(counted)s,
    next_attempt_at = now() + make_interval(secs => %(delay_s)s),
    error = %(error)s, ack_status = %(ack_status)s, lease_owner = NULL, lease_until = NULL
WHERE id = ANY(%(ids)s) AND status = 'SENDING'
RETURNING id
"""

# SENDING rows nobody holds: all others' when we take the channel; later, those whose lease
# ran out (a crashed owner's, or ours if we lost track of one)
SELECT_ORPHANED = """
SELECT id, attempts, created_at FROM messages
WHERE status = 'SENDING' AND channel = %(channel)s
  AND ((%(all_others)s AND lease_owner IS DISTINCT FROM %(owner)s)
       OR lease_until IS NULL OR lease_until < now())
ORDER BY id
FOR UPDATE SKIP LOCKED
"""

# the session default: the outgoing side's commits do not wait for the disk (see
# SmppChannel._record_and_send); what is acknowledged to the SMSC waits (COMMIT_DURABLY)
COMMIT_WITHOUT_WAITING = "SET synchronous_commit = off"
COMMIT_DURABLY = "SET LOCAL synchronous_commit = on"

# only what this process holds in memory: a row it lost track of expires and is settled
RENEW_LEASES = """
UPDATE messages SET lease_until = %(lease_until)s
WHERE id = ANY(%(ids)s) AND status = 'SENDING' AND lease_owner = %(owner)s
"""

ANY_EARLY_RECEIPTS = "SELECT EXISTS (SELECT 1 FROM early_receipts WHERE channel = %(channel)s) AS waiting"


@dataclass(frozen=True)
class Claimed:
    id: int
    from_address: str | None
    to_address: str
    body: str
    properties: dict[str, Any]
    attempts: int
    created_at: datetime
    # the last attempt's error, kept when the message goes back to the queue unsent
    error: str | None


def lease_until(lease_s: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=lease_s)


def claim_queued(conn: Connection, channel: str, owner: str, limit: int, lease_s: float) -> list[Claimed]:
    """QUEUED -> SENDING in the caller's transaction, committed before any network I/O."""
    check_move(Status.QUEUED, Status.SENDING)
    params = {"channel": channel, "limit": limit, "owner": owner, "lease_until": lease_until(lease_s)}
    rows = conn.execute(CLAIM_QUEUED, params).fetchall()
    return sorted((Claimed(**row) for row in rows), key=lambda c: c.id)


def record_sent(
    conn: Connection, channel: str, sent: Sequence[tuple[int, list[str]]], receipts_expected: bool
) -> Any:
    """(message id, provider id per part) for messages the SMSC accepted. Fetches nothing,
    so that in pipeline mode it costs no round trip of its own: returns the move's cursor,
    whose rowcount (once the pipeline synced) says how many moved."""
    check_move(Status.SENDING, Status.SENT)
    params = {
        "ids": [message_id for message_id, _ in sent],
        "provider_ids": [ids[0] for _, ids in sent],
        "parts": [len(ids) for _, ids in sent],
    }
    moved = conn.execute(RECORD_SENT, params)
    if receipts_expected:
        parts = [(message_id, number, pid) for message_id, ids in sent for number, pid in enumerate(ids, 1)]
        conn.execute(
            INSERT_PARTS,
            {
                "channel": channel,
                "message_ids": [p[0] for p in parts],
                "part_numbers": [p[1] for p in parts],
                "provider_ids": [p[2] for p in parts],
            },
        )
    return moved


def record_failed(conn: Connection, ids: Sequence[int], error: str) -> list[int]:
    return queue.move(
        conn, ids, Status.SENDING, Status.FAILED,
        ack_status="NACK", error=error, lease_owner=None, lease_until=None,
    )


def requeue(
    conn: Connection, ids: Sequence[int], *, error: str | None, delay_s: float, counted: bool, ack_status: str
) -> list[int]:
    check_move(Status.SENDING, Status.QUEUED)
    params = {
        "ids": list(ids), "error": error, "delay_s": delay_s,
        "counted": 1 if counted else 0, "ack_status": ack_status,
    }
    return sorted(row["id"] for row in conn.execute(REQUEUE, params))


def select_orphaned(conn: Connection, channel: str, owner: str, all_others: bool) -> list[dict[str, Any]]:
    params = {"channel": channel, "owner": owner, "all_others": all_others}
    return list(conn.execute(SELECT_ORPHANED, params))


def renew_leases(conn: Connection, ids: Sequence[int], owner: str, lease_s: float) -> None:
    conn.execute(RENEW_LEASES, {"ids": list(ids), "owner": owner, "lease_until": lease_until(lease_s)})


def early_receipts_waiting(conn: Connection, channel: str) -> bool:
    return bool(conn.execute(ANY_EARLY_RECEIPTS, {"channel": channel}).fetchone()["waiting"])
