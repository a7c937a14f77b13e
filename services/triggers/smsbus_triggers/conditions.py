"""Trigger conditions, evaluated by PostgreSQL for a whole batch of messages in one query.

Conditions are the one place where text becomes SQL: each was prepared by PostgreSQL when it
was saved (smsbus.triggers.check_trigger), and runs inside this query's parentheses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from smsbus.triggers import Trigger, matching_triggers_query


def evaluate_conditions(conn: psycopg.Connection[Any], triggers: Sequence[Trigger], ids: list[int]) -> list[Any]:
    query = matching_triggers_query([(t.condition, t.id) for t in triggers])
    return psycopg.RawCursor(conn).execute(query, [ids]).fetchall()
