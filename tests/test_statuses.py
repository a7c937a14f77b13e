"""The table of allowed status moves (SPEC §3), without a database."""

from __future__ import annotations

import itertools

import pytest

from smsbus.errors import ForbiddenMove
from smsbus.statuses import ALLOWED_MOVES, INCOMING, PERMANENT, Status, check_move, is_allowed


def test_every_status_has_a_row_in_the_move_table() -> None:
    assert set(ALLOWED_MOVES) == set(Status)


def test_outgoing_life_cycle_is_allowed() -> None:
    path = [Status.CREATING, Status.SCHEDULED, Status.QUEUED, Status.SENDING, Status.SENT, Status.DELIVERED]
    for source, target in itertools.pairwise(path):
        assert is_allowed(source, target)


def test_incoming_life_cycle_stays_incoming() -> None:
    assert is_allowed(Status.CREATING, Status.RECEIVING) and is_allowed(Status.RECEIVING, Status.RECEIVED)
    for source in INCOMING - {Status.CREATING}:
        assert ALLOWED_MOVES[source] <= INCOMING


@pytest.mark.parametrize(
    ("source", "target"),
    [("QUEUED", "DELIVERED"), ("DELIVERED", "QUEUED"), ("RECEIVED", "SENT"), ("SENT", "QUEUED"), ("QUEUED", "LOST")],
)
def test_forbidden_move_raises_naming_both_states(source: str, target: str) -> None:
    with pytest.raises(ForbiddenMove, match=f"{source} -> {target}"):
        check_move(source, target)


def test_final_outcomes_cannot_move() -> None:
    for status in (Status.DELIVERED, Status.NOTDELIVERED, Status.RECEIVED):
        assert status in PERMANENT and not ALLOWED_MOVES[status]
