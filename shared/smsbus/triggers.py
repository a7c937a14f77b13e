"""The triggers table (SPEC §6) and the trigger_status moves, shared by the triggers service,
the CLI and the API: read, check and save triggers; guarded trigger_status moves.

A trigger is checked before it is saved: its condition and SQL script are prepared by
PostgreSQL (never executed), a Python script is compiled and must define handle().
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
import psycopg
from psycopg import sql

from smsbus import queue
from smsbus.db import IDLE_IN_TRANSACTION_TIMEOUT_S
from smsbus.errors import SmsbusError
from smsbus.statuses import TRIGGERS_DONE, TriggerStatus, check_trigger_move

Language = Literal["python", "sql"]

# A SQL trigger runs inside the message's transaction: stopped well before PostgreSQL would
# end the session for an idle transaction. Python scripts run with no transaction open, but
# share the cap so one number bounds every trigger.
MAX_TIMEOUT_S = IDLE_IN_TRANSACTION_TIMEOUT_S - 10
LANGUAGES: tuple[str, ...] = ("python", "sql")


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `triggers`."""

    id: int
    position: int
    name: str
    condition: str
    language: Language
    script: str
    timeout: timedelta
    enabled: bool
    created_at: datetime
    updated_at: datetime

    @property
    def timeout_s(self) -> float:
        """The timeout it runs with: a row saved by plain SQL beyond the cap gets the cap."""
        return min(self.timeout.total_seconds(), MAX_TIMEOUT_S)

    @property
    def digest(self) -> str:
        """Names this version of the script: a Python module is kept while it stays the same."""
        return hashlib.sha256(self.script.encode()).hexdigest()[:16]


class TriggerNotFound(SmsbusError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no trigger {key}")


class InvalidTrigger(SmsbusError):
    """A trigger refused before it is saved; says which field and what was wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


SELECT_TRIGGERS = "SELECT * FROM triggers ORDER BY position"
SELECT_ENABLED_TRIGGERS = "SELECT * FROM triggers WHERE enabled ORDER BY position"
SELECT_TRIGGER_BY_ID = "SELECT * FROM triggers WHERE id = %(id)s"
SELECT_TRIGGER_BY_NAME = "SELECT * FROM triggers WHERE name = %(name)s"
NEXT_POSITION = "SELECT coalesce(max(position), 0) + 1 AS position FROM triggers"
INSERT_TRIGGER = """
INSERT INTO triggers (position, name, condition, language, script, timeout, enabled)
VALUES (%(position)s, %(name)s, %(condition)s, %(language)s, %(script)s, %(timeout)s, %(enabled)s)
RETURNING *
"""
DELETE_TRIGGER = "DELETE FROM triggers WHERE id = %(id)s"
# positions 1..n in the order given (the unique constraint is checked at the statement's end)
RENUMBER_TRIGGERS = """
UPDATE triggers AS t SET position = o.position
FROM unnest(%(ids)s::bigint[]) WITH ORDINALITY AS o(id, position)
WHERE t.id = o.id AND t.position <> o.position
"""
# the query the service evaluates conditions with, so what passes here runs there
CHECK_CONDITION = "PREPARE smsbus_check_condition AS {query}"
CHECK_SQL_SCRIPT = "PREPARE smsbus_check_script(bigint) AS {script}"
SELECT_SCRIPT_PARAMETERS = """
SELECT cardinality(parameter_types) AS parameters FROM pg_prepared_statements
WHERE name = 'smsbus_check_script'
"""

EDITABLE = frozenset({"name", "condition", "language", "script", "timeout", "enabled"})


def condition_sql(condition: str) -> str:
    """A condition as an SQL expression: on lines of its own, so a trailing `--` comment
    cannot swallow what follows."""
    return f"(\n{condition}\n)"


def matching_triggers_query(conditions: Sequence[tuple[str, int]]) -> bytes:
    """Per message id ($1: the ids), the ids of the triggers (condition, id) whose condition
    holds, in the order given: the triggers service's one query per batch."""
    cases = ",\n".join(
        f"CASE WHEN {condition_sql(condition)} IS TRUE THEN {int(trigger_id)}::bigint END"
        for condition, trigger_id in conditions
    )
    return (
        f"SELECT id, array_remove(ARRAY[\n{cases}\n]::bigint[], NULL) AS matched\n"
        "FROM messages WHERE id = ANY($1)"
    ).encode()


def list_triggers(conn: psycopg.Connection[Any], *, enabled_only: bool = False) -> list[Trigger]:
    query = SELECT_ENABLED_TRIGGERS if enabled_only else SELECT_TRIGGERS
    return [msgspec.convert(dict(row), Trigger) for row in conn.execute(query)]


def find_trigger(conn: psycopg.Connection[Any], key: str) -> Trigger:
    """By id (digits) or by name."""
    if key.isdigit():
        row = conn.execute(SELECT_TRIGGER_BY_ID, {"id": int(key)}).fetchone()
    else:
        row = conn.execute(SELECT_TRIGGER_BY_NAME, {"name": key}).fetchone()
    if row is None:
        raise TriggerNotFound(key)
    return msgspec.convert(dict(row), Trigger)


def check_trigger(conn: psycopg.Connection[Any], condition: str, language: str, script: str) -> None:
    """Refuse what could never run, with PostgreSQL's or Python's own words."""
    if not condition.strip():
        raise InvalidTrigger("condition", "empty (use `true` to match every message)")
    if language not in LANGUAGES:
        raise InvalidTrigger("language", f"{language!r} is not one of {', '.join(LANGUAGES)}")
    if not script.strip():
        raise InvalidTrigger("script", "empty")
    query = matching_triggers_query([(condition, 0)]).decode()
    with _prepared(conn, "condition", CHECK_CONDITION.format(query=query)):
        pass
    if language == "python":
        check_python_script(script)
        return
    with _prepared(conn, "script", CHECK_SQL_SCRIPT.format(script=script)):
        row = conn.execute(SELECT_SCRIPT_PARAMETERS).fetchone()
    if row is not None and row["parameters"] > 1:
        raise InvalidTrigger("script", "uses parameters beyond $1 (the message id is the only one)")


def check_python_script(script: str) -> None:
    try:
        tree = ast.parse(script, filename="<script>")
        compile(tree, "<script>", "exec")
    except SyntaxError as e:
        raise InvalidTrigger("script", f"{e.msg} (line {e.lineno})") from None
    defines_handle = any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "handle"
        for node in tree.body
    )
    if not defines_handle:
        raise InvalidTrigger("script", "defines no handle(message, api) function")


@contextlib.contextmanager
def _prepared(conn: psycopg.Connection[Any], field: str, statement: str) -> Iterator[None]:
    """PostgreSQL parses and plans the statement without running it. prepare=True sends it
    with the extended protocol, which refuses a second statement smuggled in."""
    name = f"smsbus_check_{field}"
    try:
        with conn.transaction():
            conn.execute(statement.encode(), prepare=True)
    except psycopg.errors.Error as e:
        primary = e.diag.message_primary or str(e)
        raise InvalidTrigger(field, f"PostgreSQL refused it: {primary}") from None
    try:
        yield
    finally:
        conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))


def add_trigger(
    conn: psycopg.Connection[Any],
    *,
    name: str,
    condition: str,
    language: str,
    script: str,
    timeout_s: float,
    enabled: bool = True,
    position: int | None = None,
) -> Trigger:
    """Checked, then inserted at `position` (the end when None); the caller commits."""
    _check_name(name)
    _check_timeout(timeout_s)
    check_trigger(conn, condition, language, script)
    row = conn.execute(NEXT_POSITION).fetchone()
    assert row is not None
    new = {
        "position": row["position"],
        "name": name,
        "condition": condition,
        "language": language,
        "script": script,
        "timeout": timedelta(seconds=timeout_s),
        "enabled": enabled,
    }
    try:
        saved = msgspec.convert(dict(conn.execute(INSERT_TRIGGER, new).fetchone() or {}), Trigger)
    except psycopg.errors.UniqueViolation:
        raise InvalidTrigger("name", f"a trigger named {name!r} exists already") from None
    if position is not None:
        saved = move_trigger(conn, saved, position)
    return saved


def edit_trigger(conn: psycopg.Connection[Any], trigger: Trigger, **changes: Any) -> Trigger:
    """Changes the given fields (checked as a whole); the caller commits."""
    unknown = set(changes) - EDITABLE
    if unknown:
        raise InvalidTrigger(", ".join(sorted(unknown)), "cannot be edited")
    if "name" in changes:
        _check_name(changes["name"])
    if "timeout" in changes:
        _check_timeout(changes["timeout"])
        changes["timeout"] = timedelta(seconds=changes["timeout"])
    merged = {**msgspec.structs.asdict(trigger), **changes}
    check_trigger(conn, merged["condition"], merged["language"], merged["script"])
    query = sql.SQL("UPDATE triggers SET {} WHERE id = %(id)s RETURNING *").format(
        sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
            for column in sorted(changes)
        )
    )
    try:
        row = conn.execute(query, {**changes, "id": trigger.id}).fetchone()
    except psycopg.errors.UniqueViolation:
        raise InvalidTrigger("name", f"a trigger named {changes.get('name')!r} exists already") from None
    if row is None:
        raise TriggerNotFound(str(trigger.id))
    return msgspec.convert(dict(row), Trigger)


def move_trigger(conn: psycopg.Connection[Any], trigger: Trigger, position: int) -> Trigger:
    """Put the trigger at `position` (1 = runs first; past the end = last). Caller commits."""
    if position < 1:
        raise InvalidTrigger("position", f"must be 1 or more, got {position}")
    order = [t.id for t in list_triggers(conn) if t.id != trigger.id]
    order.insert(position - 1, trigger.id)
    conn.execute(RENUMBER_TRIGGERS, {"ids": order})
    return find_trigger(conn, str(trigger.id))


def remove_trigger(conn: psycopg.Connection[Any], trigger: Trigger) -> None:
    """Delete it and close the gap it leaves. Caller commits."""
    conn.execute(DELETE_TRIGGER, {"id": trigger.id})
    conn.execute(RENUMBER_TRIGGERS, {"ids": [t.id for t in list_triggers(conn)]})


def _check_name(name: str) -> None:
    if not name.strip():
        raise InvalidTrigger("name", "empty")
    if name.isdigit():
        raise InvalidTrigger("name", "must not be only digits (ids are)")


def _check_timeout(timeout_s: float) -> None:
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise InvalidTrigger("timeout", f"must be more than 0 and at most {MAX_TIMEOUT_S} seconds, got {timeout_s}")


# -- trigger_status -----------------------------------------------------------------------

# Columns a trigger_status move may set alongside it.
TRIGGER_MOVE_COLUMNS = frozenset({"trigger_error", "trigger_owner_pid"})


def move_trigger_status(
    conn: psycopg.Connection[Any],
    ids: Iterable[int],
    from_statuses: str | Iterable[str],
    to_status: str,
    **changes: Any,
) -> list[int]:
    """Move the messages whose trigger_status is still one of from_statuses; returns the ids
    that moved, sorted. A move smsbus.statuses.TRIGGER_MOVES forbids raises ForbiddenMove."""
    sources = [from_statuses] if isinstance(from_statuses, str) else list(from_statuses)
    for source in sources:
        check_trigger_move(source, to_status)
    return queue.guarded_update(
        conn, ids, "trigger_status", sql.SQL("trigger_status = ANY(%(sources)s)"),
        {"sources": sources, "to_status": to_status}, changes, TRIGGER_MOVE_COLUMNS,
    )


SELECT_TRIGGER_STATUSES = "SELECT id, trigger_status FROM messages WHERE id = ANY(%(ids)s)"


def reprocess(conn: psycopg.Connection[Any], ids: Iterable[int]) -> dict[int, str | None]:
    """trigger_status back to N/A, so the triggers run again on these messages. Returns, per
    id, None when it moved or why not (only finished messages move). Caller commits."""
    wanted = list(dict.fromkeys(ids))
    moved = set(move_trigger_status(conn, wanted, TRIGGERS_DONE, TriggerStatus.NOT_APPLICABLE, trigger_error=None))
    found = {row["id"]: row["trigger_status"] for row in conn.execute(SELECT_TRIGGER_STATUSES, {"ids": wanted})}
    finished = ", ".join(sorted(TRIGGERS_DONE))
    return {
        i: None if i in moved
        else f"no message with id {i}" if i not in found
        else f"message {i} has trigger_status {found[i]}; only {finished} can be reprocessed"
        for i in wanted
    }
