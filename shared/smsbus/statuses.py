"""The three status axes of a message and every status move SPEC §3 allows.

This is the one table of allowed moves: `smsbus db migrate` copies it into the
`status_moves` table so the database refuses a forbidden move made by plain SQL too.
Standard library only (and smsbus.errors).
"""

from __future__ import annotations

import enum

from smsbus.errors import ForbiddenMove


class Status(enum.StrEnum):
    CREATING = "CREATING"
    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    SENDING = "SENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    NOCHANNEL = "NOCHANNEL"
    BLOCKED = "BLOCKED"
    DAILYLIMIT = "DAILYLIMIT"
    DELIVERED = "DELIVERED"
    NOTDELIVERED = "NOTDELIVERED"
    NOREPORT = "NOREPORT"
    RECEIVING = "RECEIVING"
    RECEIVED = "RECEIVED"


class AckStatus(enum.StrEnum):
    NOT_APPLICABLE = "N/A"
    WAITING = "WAITING"
    ACK = "ACK"
    NACK = "NACK"


class TriggerStatus(enum.StrEnum):
    NOT_APPLICABLE = "N/A"
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    PROCESSED = "PROCESSED"
    NOMATCH = "NOMATCH"
    NOTRIGGERS = "NOTRIGGERS"
    FAILED = "FAILED"


class Direction(enum.StrEnum):
    OUT = "out"
    IN = "in"


PERMANENT: frozenset[Status] = frozenset(
    {
        Status.SENT,
        Status.FAILED,
        Status.NOCHANNEL,
        Status.BLOCKED,
        Status.DAILYLIMIT,
        Status.DELIVERED,
        Status.NOTDELIVERED,
        Status.NOREPORT,
        Status.RECEIVED,
    }
)

OUTGOING: frozenset[Status] = frozenset(Status) - {Status.RECEIVING, Status.RECEIVED}
INCOMING: frozenset[Status] = frozenset({Status.CREATING, Status.RECEIVING, Status.RECEIVED})

# from -> the statuses it may move to. Anything not listed is refused.
ALLOWED_MOVES: dict[Status, frozenset[Status]] = {
    Status.CREATING: frozenset({Status.SCHEDULED, Status.QUEUED, Status.RECEIVING}),
    # released by the router, or cancelled by an operator before its time
    Status.SCHEDULED: frozenset({Status.QUEUED, Status.FAILED}),
    # router outcomes; a channel claims; a message that can never be sent fails
    Status.QUEUED: frozenset(
        {
            Status.SENDING,
            Status.NOCHANNEL,
            Status.BLOCKED,
            Status.DAILYLIMIT,
            Status.FAILED,
        }
    ),
    # QUEUED again: a temporary error to retry, or an unknown outcome after a crash
    Status.SENDING: frozenset({Status.SENT, Status.FAILED, Status.QUEUED}),
    Status.SENT: frozenset({Status.DELIVERED, Status.NOTDELIVERED, Status.NOREPORT}),
    # a receipt that arrives after the report timeout still tells the truth
    Status.NOREPORT: frozenset({Status.DELIVERED, Status.NOTDELIVERED}),
    Status.RECEIVING: frozenset({Status.RECEIVED}),
    # an operator's "send it again" after fixing a rule, a channel or a limit
    Status.FAILED: frozenset({Status.QUEUED}),
    Status.NOCHANNEL: frozenset({Status.QUEUED}),
    Status.BLOCKED: frozenset({Status.QUEUED}),
    Status.DAILYLIMIT: frozenset({Status.QUEUED}),
    Status.DELIVERED: frozenset(),
    Status.NOTDELIVERED: frozenset(),
    Status.RECEIVED: frozenset(),
}


def is_allowed(from_status: Status, to_status: Status) -> bool:
    return to_status in ALLOWED_MOVES[from_status]


def check_move(from_status: str, to_status: str) -> tuple[Status, Status]:
    """Both statuses as enums, or ForbiddenMove naming both."""
    try:
        source, target = Status(from_status), Status(to_status)
    except ValueError:
        raise ForbiddenMove(from_status, to_status) from None
    if not is_allowed(source, target):
        raise ForbiddenMove(source, target)
    return source, target


def all_moves() -> list[tuple[str, str]]:
    """Every allowed (from, to) pair, for the database's copy of the table."""
    return sorted((str(a), str(b)) for a, targets in ALLOWED_MOVES.items() for b in targets)


# trigger_status: from -> the statuses it may move to (SPEC §3, §6). Entering a permanent
# status resets trigger_status to N/A in the database itself, from any trigger_status.
TRIGGER_MOVES: dict[TriggerStatus, frozenset[TriggerStatus]] = {
    # claimed by a triggers process (several share the work)
    TriggerStatus.NOT_APPLICABLE: frozenset({TriggerStatus.PENDING}),
    # N/A again: the process that claimed it is gone, another may take it
    TriggerStatus.PENDING: frozenset({TriggerStatus.PROCESSING, TriggerStatus.NOT_APPLICABLE}),
    # N/A again from PROCESSING too: its process died while a script ran (at-least-once)
    TriggerStatus.PROCESSING: frozenset(
        {
            TriggerStatus.NOT_APPLICABLE,
            TriggerStatus.PROCESSED,
            TriggerStatus.NOMATCH,
            TriggerStatus.NOTRIGGERS,
            TriggerStatus.FAILED,
        }
    ),
    # "reprocess": offered to the triggers again
    TriggerStatus.PROCESSED: frozenset({TriggerStatus.NOT_APPLICABLE}),
    TriggerStatus.NOMATCH: frozenset({TriggerStatus.NOT_APPLICABLE}),
    TriggerStatus.NOTRIGGERS: frozenset({TriggerStatus.NOT_APPLICABLE}),
    TriggerStatus.FAILED: frozenset({TriggerStatus.NOT_APPLICABLE}),
}

TRIGGERS_DONE: frozenset[TriggerStatus] = frozenset(
    {TriggerStatus.PROCESSED, TriggerStatus.NOMATCH, TriggerStatus.NOTRIGGERS, TriggerStatus.FAILED}
)


def check_trigger_move(from_status: str, to_status: str) -> tuple[TriggerStatus, TriggerStatus]:
    """Both trigger statuses as enums, or ForbiddenMove naming both."""
    try:
        source, target = TriggerStatus(from_status), TriggerStatus(to_status)
    except ValueError:
        raise ForbiddenMove(from_status, to_status) from None
    if target not in TRIGGER_MOVES[source]:
        raise ForbiddenMove(source, target)
    return source, target
