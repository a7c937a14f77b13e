"""One message's chain of matching triggers, in order, in the message's transaction.

What each trigger changes is in a savepoint of its own: a trigger that fails (raises, times
out, asks for a move the status table forbids, creates a message PostgreSQL refuses) leaves
nothing behind, stops the chain, and the message ends trigger_status FAILED with the error in
`trigger_error`.
Owns trigger_status PROCESSING -> PROCESSED / FAILED.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import prometheus_client
import psycopg
from psycopg.types.json import Jsonb

from smsbus import queue
from smsbus.errors import SmsbusError
from smsbus.message import Message
from smsbus.statuses import Status, TriggerStatus
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
    """In the caller's transaction, with the message's trigger_status PROCESSING; ends it
    PROCESSED or FAILED unless a script already moved it (to PROCESSED, or a status that
    offers it to the triggers anew)."""
    runs: list[TriggerRun] = []
    notifications: list[Notify] = []
    failure: str | None = None
    # after a SQL script the message is read again, but only when a next trigger needs it
    current: Message | None = message
    for trigger in triggers:
        if current is None:
            current = queue.get_message(conn, message.id)
        if current.trigger_status != TriggerStatus.PROCESSING:
            break
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
    if failure is not None:
        outcome = TriggerStatus.FAILED
    elif current is None or current.trigger_status == TriggerStatus.PROCESSING:
        outcome = TriggerStatus.PROCESSED
    else:
        return ChainResult(runs, current.trigger_status, notifications)
    # guarded: a script may have moved it already (PROCESSED, or N/A by a new permanent status)
    if move_trigger_status(conn, [message.id], TriggerStatus.PROCESSING, outcome, trigger_error=failure):
        return ChainResult(runs, outcome, notifications)
    return ChainResult(runs, queue.get_message(conn, message.id).trigger_status, notifications)


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
    """One trigger; what it changes is in a savepoint of its own. Returns the message as the
    trigger left it, or None when a SQL script may have changed it."""
    if trigger.language == "sql":
        timeouts.set(trigger.timeout_s)  # outside the savepoint, which would undo it
        with conn.transaction():
            run.rows = run_sql_script(conn, message, trigger)
        return None
    result = worker.run(trigger, message)
    run.actions = list(result.actions)
    for action in result.actions:
        if isinstance(action, Log):
            log.log(
                logging.getLevelName(action.level.upper()),
                "script log id=%d trigger=%s text=%s", message.id, trigger.name, action.text,
            )
    if result.error is not None:
        raise TriggerFailed(result.error)
    changes = [a for a in result.actions if isinstance(a, SendMessage | ChangeMessage | MarkProcessed)]
    if not changes:
        return message
    try:
        with conn.transaction():
            for action in changes:
                message = apply_action(conn, message, action)
    except psycopg.errors.Error as e:
        if isinstance(e, psycopg.OperationalError):
            raise  # the connection, not the script: the main loop reconnects
        raise TriggerFailed(f"PostgreSQL refused a change: {e.diag.message_primary or e}") from None
    return message


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
