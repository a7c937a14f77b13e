"""`smsbus triggers test T --message ID`: run one trigger on one message the way the service
would, in a transaction that is rolled back, and say what it would do. The script really
runs: what it does outside the database (an HTTP call) really happens.
"""

from __future__ import annotations

from typing import Any

import msgspec

from smsbus import db, queue
from smsbus.message import Message
from smsbus.statuses import TriggerStatus
from smsbus.triggers import Trigger, find_trigger
from smsbus_triggers.chain import ChainResult, StatementTimeout, run_chain
from smsbus_triggers.conditions import evaluate_conditions
from smsbus_triggers.runner import WorkerProcess

# the script sees the message as the service would show it, whatever its trigger_status is,
# claimed by this connection as the service's claim guard expects
PRETEND_PROCESSING = """
UPDATE messages SET trigger_status = 'PROCESSING', trigger_owner_pid = pg_backend_pid() WHERE id = %(id)s
"""
LAST_ID = "SELECT coalesce(max(id), 0) AS id FROM messages"
CREATED_SINCE = "SELECT * FROM messages WHERE id > %(id)s ORDER BY id"
# what the service itself changes on every message: not the trigger's doing
BOOKKEEPING = frozenset({"updated_at", "trigger_status", "trigger_error"})


class Trial(msgspec.Struct):
    trigger: Trigger
    message_id: int
    condition_holds: bool
    result: ChainResult
    # field -> (before, after) on the message itself
    changes: dict[str, tuple[Any, Any]]
    # messages inserted while the trigger ran (by a SQL script; Python's show as actions)
    created: list[Message]


def try_trigger(database_url: str, trigger_key: str, message_id: int) -> Trial:
    worker = WorkerProcess(database_url)
    try:
        with db.connect(database_url, application="smsbus-triggers-test") as conn:
            trigger = find_trigger(conn, trigger_key)
            before = queue.get_message(conn, message_id)
            holds = bool(evaluate_conditions(conn, [trigger], [message_id])[0]["matched"])
            with conn.transaction(force_rollback=True):
                last = conn.execute(LAST_ID).fetchone()
                conn.execute(PRETEND_PROCESSING, {"id": message_id})
                current = msgspec.structs.replace(before, trigger_status=TriggerStatus.PROCESSING)
                result = run_chain(conn, current, [trigger], worker, StatementTimeout(conn))
                after = queue.get_message(conn, message_id)
                created = [queue.to_message(row) for row in conn.execute(CREATED_SINCE, last)]
    finally:
        worker.stop()
    changes = {
        field: (getattr(before, field), getattr(after, field))
        for field in before.__struct_fields__
        if field not in BOOKKEEPING and getattr(before, field) != getattr(after, field)
    }
    sql_created = created if trigger.language == "sql" else []
    return Trial(trigger, message_id, holds, result, changes, sql_created)


def print_trial(trial: Trial) -> None:
    trigger = trial.trigger
    print(f"trigger {trigger.name} ({trigger.language}) on message {trial.message_id}")
    print(f"condition: {'holds' if trial.condition_holds else 'does not hold (the service would not run it)'}")
    for run in trial.result.runs:
        if run.rows is not None:
            print(f"sql: {run.rows} row(s) touched")
        for action in run.actions:
            print(f"would {describe_action(action)}")
        if run.error is not None:
            print(f"error: {run.error}")
    for field, (old, new) in trial.changes.items():
        print(f"would change {field}: {old!r} -> {new!r}")
    for message in trial.created:
        print(f"would create message to_address={message.to_address!r} body={message.body!r}")
    print(f"trigger_status would be: {trial.result.trigger_status}")
    print("nothing was committed")


def describe_action(action: Any) -> str:
    tag = type(action).__struct_config__.tag
    fields = {k: v for k, v in msgspec.structs.asdict(action).items() if v not in (None, (), {})}
    if "message" in fields:
        fields = {k: v for k, v in msgspec.structs.asdict(fields["message"]).items() if v not in (None, {})}
    details = " ".join(f"{k}={v!r}" for k, v in fields.items())
    return f"{tag} {details}".rstrip()
