"""Trigger conditions, evaluated by PostgreSQL for a whole batch of messages in one query.

Conditions are the one place where text becomes SQL: each was prepared by PostgreSQL when it
was saved (smsbus.triggers.check_trigger), and runs inside this query's parentheses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from smsbus.triggers import Trigger, condition_sql


def matching_triggers_query(triggers: Sequence[Trigger]) -> bytes:
    """Per message id ($1: the ids), the ids of the triggers whose condition holds, in
    trigger order."""
    cases = ",\n".join(
        f"CASE WHEN {condition_sql(t.condition)} IS TRUE THEN {int(t.id)}::bigint END" for t in triggers
    )
    return (
        f"SELECT id, array_remove(ARRAY[\n{cases}\n]::bigint[], NULL) AS matched\n"
        "FROM messages WHERE id = ANY($1)"
    ).encode()


def evaluate_conditions(conn: psycopg.Connection[Any], triggers: Sequence[Trigger], ids: list[int]) -> list[Any]:
    return psycopg.RawCursor(conn).execute(matching_triggers_query(triggers), [ids]).fetchall()
