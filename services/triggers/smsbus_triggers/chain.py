"""One message's chain of matching triggers, in order. No transaction is open while a Python
script runs: its requests are applied afterwards in a short transaction guarded by the claim
(trigger_status PROCESSING under this backend's pid), so a receipt for the message never waits.

What each trigger changes is in a savepoint of its own: a trigger that fails (raises, times
out, asks for a move the status table forbids, creates a message PostgreSQL refuses) leaves
nothing behind, stops the chain, and the message ends trigger_status FAILED with the error in
`trigger_error`.
Owns trigger_status PROCESSING -> PROCESSED / FAILED.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import prometheus_client
import psycopg
from psycopg.types.json import Jsonb

from smsbus import queue
from smsbus.errors import SmsbusError
from smsbus.message import Message
from smsbus.statuses import Status, TriggerStatus, check_trigger_move
from smsbus.triggers import Trigger, move_trigger_status
from smsbus_triggers.protocol import (
    Action,
    ChangeMessage,
    Log,
    MarkProcessed,
    Notify,
    SendMessage,
)
from smsbus_triggers.runner import WorkerProcess

log = logging.getLogger("triggers")

TRIGGER_RUNS = prometheus_client.Counter(
    "smsbus_trigger_runs_total", "Trigger script runs", ["language", "outcome"]
)
TRIGGER_SECONDS = prometheus_client.Histogram(
    "smsbus_trigger_run_seconds", "Duration of one trigger script run, actions applied", ["language"]
)

MERGE_PROPERTIES = """
UPDATE messages SET properties = properties || %(properties)s WHERE id = %(id)s RETURNING *
"""
# a message sent again goes through the router again (blocking rules, limits, a channel)
CLEAR_ROUTED_AT = "UPDATE messages SET routed_at = NULL WHERE id = %(id)s"
SET_SCRIPT_TIMEOUT = "SELECT set_config('statement_timeout', %(ms)s, false)"

# The claim guard: a message is this backend's to change while it is PROCESSING under its pid.
SELECT_OWN_PROCESSING = """
SELECT * FROM messages
WHERE id = %(id)s AND trigger_status = 'PROCESSING' AND trigger_owner_pid = pg_backend_pid()
FOR NO KEY UPDATE
"""
# PROCESSING -> PROCESSED / FAILED (smsbus.statuses.TRIGGER_MOVES), under the same guard
FINISH_OWN_PROCESSING = """
UPDATE messages SET trigger_status = %(outcome)s, trigger_error = %(error)s
WHERE id = %(id)s AND trigger_status = 'PROCESSING' AND trigger_owner_pid = pg_backend_pid()
"""
# the same for a batch of SQL-only chains (run_sql_chain_in_bulk)
START_PROCESSING_ALL = """
UPDATE messages SET trigger_status = 'PROCESSING'
WHERE id = ANY(%(ids)s) AND trigger_status = 'PENDING' AND trigger_owner_pid = pg_backend_pid()
RETURNING id
"""
SELECT_ALL_OWN_PROCESSING = """
SELECT id FROM messages
WHERE id = ANY(%(ids)s) AND trigger_status = 'PROCESSING' AND trigger_owner_pid = pg_backend_pid()
ORDER BY id
"""
FINISH_ALL_OWN_PROCESSING = """
UPDATE messages SET trigger_status = 'PROCESSED', trigger_error = NULL
WHERE id = ANY(%(ids)s) AND trigger_status = 'PROCESSING' AND trigger_owner_pid = pg_backend_pid()
"""
SELECT_TRIGGER_STATUSES = "SELECT id, trigger_status FROM messages WHERE id = ANY(%(ids)s)"
check_trigger_move(TriggerStatus.PENDING, TriggerStatus.PROCESSING)
check_trigger_move(TriggerStatus.PROCESSING, TriggerStatus.PROCESSED)
check_trigger_move(TriggerStatus.PROCESSING, TriggerStatus.FAILED)

Connection = psycopg.Connection[dict[str, Any]]


class TriggerRun(msgspec.Struct):
    """What one trigger did to one message (shown by `smsbus triggers test`)."""

    trigger: str
    actions: list[Action] = []
    # rows the SQL script touched
    rows: int | None = None
    error: str | None = None


class ChainResult(msgspec.Struct):
    runs: list[TriggerRun]
    # the message's trigger_status at the end; N/A when it entered a new permanent status
    trigger_status: str
    # published once the message's transaction has committed
    notifications: list[Notify]


class TriggerFailed(Exception):
    pass


def run_chain(
    conn: Connection,
    message: Message,
    triggers: list[Trigger],
    worker: WorkerProcess,
    timeouts: StatementTimeout,
) -> ChainResult:
    """With the message's trigger_status PROCESSING and owned by this connection's backend;
    ends it PROCESSED or FAILED unless a script (or a new permanent status) moved it already.
    Each trigger's changes are a short transaction of their own (a savepoint when the caller
    holds one); a Python script runs before it, so no transaction waits for a script."""
    runs: list[TriggerRun] = []
    notifications: list[Notify] = []
    failure: str | None = None
    current: Message | None = message
    for trigger in triggers:
        assert current is not None
        run = TriggerRun(trigger.name)
        runs.append(run)
        started = time.monotonic()
        try:
            current = run_trigger(conn, current, trigger, worker, run, timeouts)
        except TriggerFailed as e:
            run.error = str(e)
            failure = f"trigger {trigger.name}: {e}"
            TRIGGER_RUNS.labels(trigger.language, "failed").inc()
            log.warning("trigger failed id=%d trigger=%s error=%s", message.id, trigger.name, e)
            break
        finally:
            TRIGGER_SECONDS.labels(trigger.language).observe(time.monotonic() - started)
        TRIGGER_RUNS.labels(trigger.language, "ok").inc()
        notifications += [a for a in run.actions if isinstance(a, Notify)]
        if current is None:
            # a script marked it processed, or it entered a new permanent status meanwhile
            return ChainResult(runs, trigger_status_now(conn, message.id), notifications)
    outcome = TriggerStatus.FAILED if failure is not None else TriggerStatus.PROCESSED
    with conn.transaction():
        finished = conn.execute(FINISH_OWN_PROCESSING, {"id": message.id, "outcome": outcome, "error": failure})
    if finished.rowcount:
        return ChainResult(runs, outcome, notifications)
    return ChainResult(runs, trigger_status_now(conn, message.id), notifications)


def run_sql_chain_in_bulk(
    conn: Connection, ids: list[int], triggers: list[Trigger], timeouts: StatementTimeout
) -> dict[int, str] | None:
    """The same chain of SQL triggers over many PENDING messages in one transaction: one
    statement moves them all to PROCESSING, each script is sent for every message at once
    (executemany: pipelined, one round trip), one statement finishes them. Returns each
    message's trigger_status; None when any script failed, nothing kept: the caller then runs
    the messages one by one, each failure on its own message."""
    started = time.monotonic()
    try:
        with conn.transaction():
            own = [row["id"] for row in conn.execute(START_PROCESSING_ALL, {"ids": ids})]
            for trigger in triggers:
                timeouts.set(trigger.timeout_s)
                if own:
                    psycopg.RawCursor(conn).executemany(trigger.script.encode(), [[i] for i in own])
                    own = [row["id"] for row in conn.execute(SELECT_ALL_OWN_PROCESSING, {"ids": own})]
            conn.execute(FINISH_ALL_OWN_PROCESSING, {"ids": own})
            outcomes = {row["id"]: row["trigger_status"] for row in conn.execute(SELECT_TRIGGER_STATUSES, {"ids": ids})}
    except psycopg.errors.Error as e:
        if connection_lost(conn, e):
            raise
        return None
    elapsed = (time.monotonic() - started) / max(1, len(ids))
    for trigger in triggers:
        TRIGGER_RUNS.labels(trigger.language, "ok").inc(len(ids))
        for _ in ids:
            TRIGGER_SECONDS.labels(trigger.language).observe(elapsed / len(triggers))
    return outcomes


def connection_lost(conn: Connection, error: psycopg.errors.Error) -> bool:
    """A timeout (QueryCanceled is an OperationalError too) is the script's doing; a broken
    connection is not: the main loop reconnects."""
    return isinstance(error, psycopg.OperationalError) and (
        conn.closed or not isinstance(error, psycopg.errors.QueryCanceled)
    )


def trigger_status_now(conn: Connection, message_id: int) -> str:
    """In a transaction of its own: none is left open behind the chain."""
    with conn.transaction():
        return queue.get_message(conn, message_id).trigger_status


class StatementTimeout:
    """The connection's statement_timeout, set only when a SQL trigger needs another one. A
    session setting (not SET LOCAL): it stays for the next messages' transactions."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.current_ms: str | None = None

    def set(self, seconds: float) -> None:
        wanted = str(int(seconds * 1000))
        if wanted != self.current_ms:
            self.conn.execute(SET_SCRIPT_TIMEOUT, {"ms": wanted})
            self.current_ms = wanted


def run_trigger(
    conn: Connection,
    message: Message,
    trigger: Trigger,
    worker: WorkerProcess,
    run: TriggerRun,
    timeouts: StatementTimeout,
) -> Message | None:
    """One trigger: a Python script first runs with no transaction open; then, in one short
    transaction that holds the message only while it is still ours, the SQL script runs or
    the Python script's requests are applied, in a savepoint (a failure leaves nothing).
    Returns the message as the trigger left it, or None when it is ours no longer."""
    result = worker.run(trigger, message) if trigger.language == "python" else None
    if result is not None:
        log_script_lines(message, trigger, result.actions)
        run.actions = list(result.actions)
        if result.error is not None:
            raise TriggerFailed(result.error)
    with conn.transaction():
        if select_own_processing(conn, message.id) is None:
            return None
        if result is None:
            timeouts.set(trigger.timeout_s)  # outside the savepoint, which would undo it
            with conn.transaction():
                run.rows = run_sql_script(conn, message, trigger)
        else:
            apply_actions(conn, message, result.actions)
        return select_own_processing(conn, message.id)


def select_own_processing(conn: Connection, message_id: int) -> Message | None:
    """The message, locked, while this backend's claim on it holds; else None."""
    row = conn.execute(SELECT_OWN_PROCESSING, {"id": message_id}).fetchone()
    return None if row is None else queue.to_message(row)


def log_script_lines(message: Message, trigger: Trigger, actions: Sequence[Action]) -> None:
    for action in actions:
        if isinstance(action, Log):
            log.log(
                logging.getLevelName(action.level.upper()),
                "script log id=%d trigger=%s text=%s", message.id, trigger.name, action.text,
            )


def apply_actions(conn: Connection, message: Message, actions: Sequence[Action]) -> None:
    """The changes a script asked for, in order, all or none."""
    changes = [a for a in actions if isinstance(a, SendMessage | ChangeMessage | MarkProcessed)]
    try:
        with conn.transaction():
            for action in changes:
                message = apply_action(conn, message, action)
    except psycopg.errors.Error as e:
        if isinstance(e, psycopg.OperationalError):
            raise  # the connection, not the script: the main loop reconnects
        raise TriggerFailed(f"PostgreSQL refused a change: {e.diag.message_primary or e}") from None


def run_sql_script(conn: Connection, message: Message, trigger: Trigger) -> int:
    """The script with the message id as $1; the caller has set the trigger's timeout."""
    try:
        cursor = psycopg.RawCursor(conn).execute(trigger.script.encode(), [message.id])
    except psycopg.errors.QueryCanceled:
        raise TriggerFailed(f"timed out after {trigger.timeout_s:g} s: stopped") from None
    except psycopg.errors.Error as e:
        raise TriggerFailed(f"PostgreSQL: {e.diag.message_primary or e}") from None
    return cursor.rowcount


def apply_action(conn: Connection, message: Message, action: SendMessage | ChangeMessage | MarkProcessed) -> Message:
    """Applies one requested change; returns the message as it is now."""
    match action:
        case SendMessage(new):
            try:
                created = queue.insert_message(conn, new)
            except SmsbusError as e:
                raise TriggerFailed(f"api.send refused: {e}") from None
            log.info("trigger created id=%d from=%d", created, message.id)
        case ChangeMessage(status, channel, properties):
            if properties is not None:
                row = conn.execute(MERGE_PROPERTIES, {"properties": Jsonb(properties), "id": message.id}).fetchone()
                message = queue.to_message(row)
            if status is not None:
                extra = {} if channel is None else {"channel": channel}
                try:
                    queue.move(conn, [message.id], message.status, status, **extra)
                except SmsbusError as e:
                    raise TriggerFailed(f"api.change refused: {e}") from None
                if status == Status.QUEUED:
                    conn.execute(CLEAR_ROUTED_AT, {"id": message.id})
                message = queue.get_message(conn, message.id)
        case MarkProcessed():
            move_trigger_status(
                conn, [message.id], TriggerStatus.PROCESSING, TriggerStatus.PROCESSED, trigger_error=None
            )
            message = msgspec.structs.replace(message, trigger_status=TriggerStatus.PROCESSED)
    return message
