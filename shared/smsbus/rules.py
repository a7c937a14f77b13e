"""Blocking and routing rules as the operator edits them: add, list, show, remove, move.

Each change is one short transaction; the tables' triggers announce it (`config.<table>`)
and the database compiles a rule's condition as it is saved, so a bad one is refused here,
with PostgreSQL's message, and never reaches the router.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from smsbus.errors import SmsbusError

# a condition that takes longer than this to compile is refused
SAVE_TIMEOUT_MS = 5000
STRATEGIES = ("failover", "round_robin", "weighted")


class RuleKind(enum.StrEnum):
    BLOCK = "block"
    ROUTE = "route"

    @property
    def table(self) -> str:
        return "blocking_rules" if self is RuleKind.BLOCK else "routing_rules"

    @property
    def noun(self) -> str:
        return "blocking rule" if self is RuleKind.BLOCK else "routing rule"


class RuleRefused(SmsbusError):
    """A rule the operator asked for that cannot be saved; the message says which field."""


class RuleNotFound(SmsbusError):
    def __init__(self, kind: RuleKind, ref: str) -> None:
        super().__init__(f"no {kind.noun} named or numbered {ref!r}")


SET_SAVE_TIMEOUT = "SELECT set_config('statement_timeout', %(timeout_ms)s, true)"
SELECT_CHANNEL_NAMES = "SELECT name FROM channels WHERE name = ANY(%(names)s)"
SELECT_RULES = "SELECT * FROM {table} ORDER BY position"
SELECT_RULE = "SELECT * FROM {table} WHERE name = %(ref)s OR id::text = %(ref)s"
SELECT_NEXT_POSITION = "SELECT coalesce(max(position), 0) + 1 AS position FROM {table}"
# the position constraint is checked at the end of each statement: shifting is one UPDATE
MAKE_ROOM = "UPDATE {table} SET position = position + 1 WHERE position >= %(position)s"
INSERT_BLOCKING_RULE = """
INSERT INTO blocking_rules (position, name, condition, enabled)
VALUES (%(position)s, %(name)s, %(condition)s, %(enabled)s)
RETURNING *
"""
INSERT_ROUTING_RULE = """
INSERT INTO routing_rules (position, name, condition, channels, strategy, weights, enabled)
VALUES (%(position)s, %(name)s, %(condition)s, %(channels)s, %(strategy)s, %(weights)s, %(enabled)s)
RETURNING *
"""
UPDATE_BLOCKING_RULE = """
UPDATE blocking_rules SET name = %(name)s, condition = %(condition)s, enabled = %(enabled)s
WHERE id = %(id)s RETURNING *
"""
UPDATE_ROUTING_RULE = """
UPDATE routing_rules SET name = %(name)s, condition = %(condition)s, enabled = %(enabled)s,
                         channels = %(channels)s, strategy = %(strategy)s, weights = %(weights)s
WHERE id = %(id)s RETURNING *
"""
DELETE_RULE = "DELETE FROM {table} WHERE id = %(id)s"
# positions 1..n in the order given
RENUMBER = """
UPDATE {table} AS r SET position = o.position
FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS o(id, position)
WHERE r.id = o.id AND r.position <> o.position
"""


def _query(template: str, kind: RuleKind) -> sql.Composed:
    return sql.SQL(template).format(table=sql.Identifier(kind.table))


def list_rules(conn: psycopg.Connection[Any], kind: RuleKind) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute(_query(SELECT_RULES, kind))]


def get_rule(conn: psycopg.Connection[Any], kind: RuleKind, ref: str) -> dict[str, Any]:
    """By name or by id."""
    row = conn.execute(_query(SELECT_RULE, kind), {"ref": ref}).fetchone()
    if row is None:
        raise RuleNotFound(kind, ref)
    return dict(row)


def add_blocking_rule(
    conn: psycopg.Connection[Any],
    name: str,
    condition: str,
    *,
    position: int | None = None,
    enabled: bool = True,
) -> dict[str, Any]:
    """Saves and commits; `position` (1 = first) shifts the later rules down."""
    return _add(conn, RuleKind.BLOCK, INSERT_BLOCKING_RULE, position, name=name, condition=condition, enabled=enabled)


def add_routing_rule(
    conn: psycopg.Connection[Any],
    name: str,
    condition: str,
    channels: Sequence[str],
    *,
    strategy: str = "failover",
    weights: Sequence[int] | None = None,
    position: int | None = None,
    enabled: bool = True,
) -> dict[str, Any]:
    """Saves and commits; every channel must exist, and `weights` go with `weighted` only."""
    check_channels_and_weights(conn, channels, strategy, weights)
    return _add(
        conn,
        RuleKind.ROUTE,
        INSERT_ROUTING_RULE,
        position,
        name=name,
        condition=condition,
        channels=list(channels),
        strategy=strategy,
        weights=list(weights) if weights is not None else None,
        enabled=enabled,
    )


def check_channels_and_weights(
    conn: psycopg.Connection[Any], channels: Sequence[str], strategy: str, weights: Sequence[int] | None
) -> None:
    if not channels:
        raise RuleRefused("channels: give at least one channel")
    if len(set(channels)) != len(channels):
        raise RuleRefused(f"channels: {', '.join(channels)} names a channel twice")
    if strategy not in STRATEGIES:
        raise RuleRefused(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if strategy == "weighted" and weights is None:
        raise RuleRefused("weights: the weighted strategy needs one weight per channel")
    if strategy != "weighted" and weights is not None:
        raise RuleRefused(f"weights: only the weighted strategy uses weights, not {strategy}")
    if weights is not None and len(weights) != len(channels):
        raise RuleRefused(f"weights: {len(weights)} weights for {len(channels)} channels")
    if weights is not None and any(w <= 0 for w in weights):
        raise RuleRefused("weights: every weight must be a positive whole number")
    known = {row["name"] for row in conn.execute(SELECT_CHANNEL_NAMES, {"names": list(channels)})}
    unknown = [c for c in channels if c not in known]
    if unknown:
        raise RuleRefused(f"channels: no channel named {', '.join(unknown)}")


def _add(
    conn: psycopg.Connection[Any], kind: RuleKind, insert: str, position: int | None, **values: Any
) -> dict[str, Any]:
    if not values["name"]:
        raise RuleRefused("name: must not be empty")
    if not values["condition"].strip():
        raise RuleRefused("condition: must not be empty (write `true` to match every message)")
    if position is not None and position < 1:
        raise RuleRefused(f"position: must be 1 or more, got {position}")
    with refusals_said(kind, values["name"]), conn.transaction():
        conn.execute(SET_SAVE_TIMEOUT, {"timeout_ms": str(SAVE_TIMEOUT_MS)})
        if position is None:
            row = conn.execute(_query(SELECT_NEXT_POSITION, kind)).fetchone()
            assert row is not None
            position = int(row["position"])
        else:
            conn.execute(_query(MAKE_ROOM, kind), {"position": position})
        saved = conn.execute(insert, {"position": position, **values}).fetchone()
        _renumber(conn, kind)
    conn.commit()
    assert saved is not None
    return dict(saved)


@contextlib.contextmanager
def refusals_said(kind: RuleKind, name: str) -> Iterator[None]:
    """PostgreSQL's refusal of a rule as RuleRefused, naming the field it is about."""
    try:
        yield
    except psycopg.errors.UniqueViolation as e:
        if (e.diag.constraint_name or "").endswith("_position_key"):
            raise RuleRefused("position: another rule was saved there at the same moment; try again") from None
        raise RuleRefused(f'name: a {kind.noun} named "{name}" already exists') from None
    except psycopg.errors.QueryCanceled:
        raise RuleRefused(f"condition: PostgreSQL took over {SAVE_TIMEOUT_MS} ms to compile it") from None
    except (psycopg.IntegrityError, psycopg.ProgrammingError, psycopg.DataError) as e:
        raise RuleRefused(refusal_text(e)) from None


def edit_rule(
    conn: psycopg.Connection[Any],
    kind: RuleKind,
    ref: str,
    *,
    name: str,
    condition: str,
    enabled: bool,
    channels: Sequence[str] = (),
    strategy: str = "failover",
    weights: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Change a rule in place (its position stays); checked as on add, and commits."""
    if not name:
        raise RuleRefused("name: must not be empty")
    if not condition.strip():
        raise RuleRefused("condition: must not be empty (write `true` to match every message)")
    if kind is RuleKind.ROUTE:
        check_channels_and_weights(conn, channels, strategy, weights)
    rule = get_rule(conn, kind, ref)
    values = {"id": rule["id"], "name": name, "condition": condition, "enabled": enabled,
              "channels": list(channels), "strategy": strategy,
              "weights": list(weights) if weights is not None else None}
    update = UPDATE_ROUTING_RULE if kind is RuleKind.ROUTE else UPDATE_BLOCKING_RULE
    with refusals_said(kind, name), conn.transaction():
        conn.execute(SET_SAVE_TIMEOUT, {"timeout_ms": str(SAVE_TIMEOUT_MS)})
        saved = conn.execute(update, values).fetchone()
    conn.commit()
    assert saved is not None
    return dict(saved)


def refusal_text(error: psycopg.Error) -> str:
    """PostgreSQL's message, with its hint when it has one."""
    diag = error.diag
    text = diag.message_primary or str(error)
    return f"{text} ({diag.message_hint})" if diag.message_hint else text


def remove_rule(conn: psycopg.Connection[Any], kind: RuleKind, ref: str) -> dict[str, Any]:
    with conn.transaction():
        rule = get_rule(conn, kind, ref)
        conn.execute(_query(DELETE_RULE, kind), {"id": rule["id"]})
        _renumber(conn, kind)
    conn.commit()
    return rule


def move_rule(conn: psycopg.Connection[Any], kind: RuleKind, ref: str, position: int) -> list[dict[str, Any]]:
    """Put the rule at `position` (1 = evaluated first; past the end = last)."""
    if position < 1:
        raise RuleRefused(f"position: must be 1 or more, got {position}")
    with conn.transaction():
        rule = get_rule(conn, kind, ref)
        order = [r["id"] for r in list_rules(conn, kind) if r["id"] != rule["id"]]
        order.insert(position - 1, rule["id"])
        conn.execute(_query(RENUMBER, kind), {"ids": order})
    conn.commit()
    return list_rules(conn, kind)


def _renumber(conn: psycopg.Connection[Any], kind: RuleKind) -> None:
    """Close the gaps an add or a remove left: positions stay 1..n, as the operator sees them."""
    order = [r["id"] for r in list_rules(conn, kind)]
    conn.execute(_query(RENUMBER, kind), {"ids": order})
