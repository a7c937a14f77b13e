"""The triggers service (SPEC §6): runs the user's triggers on each message that reached a
permanent status, in order, one message at a time per process.

Owns trigger_status N/A -> PENDING (the claim: several processes share the work through
SKIP LOCKED) -> PROCESSING -> PROCESSED / NOMATCH / NOTRIGGERS / FAILED. The conditions of
every enabled trigger are evaluated by PostgreSQL for the whole claimed batch in one query.
Wakes on `status` and `config.triggers`; the triggers table is read at every step, so an
edited trigger applies to the next batch. Python scripts run in a worker child process with
no transaction open; chains of SQL triggers only share one transaction per batch.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Annotated

import msgspec
import prometheus_client
import psycopg

from smsbus import queue
from smsbus.bus import Publisher, config_topic
from smsbus.config import OptionalPort, Seconds, Settings
from smsbus.errors import SmsbusError
from smsbus.loop import Connection, LoopSettings, prepare, run
from smsbus.message import Message
from smsbus.statuses import TriggerStatus, check_trigger_move
from smsbus.triggers import Trigger, list_triggers, move_trigger_status
from smsbus_triggers.chain import ChainResult, StatementTimeout, run_chain, run_sql_chain_in_bulk
from smsbus_triggers.conditions import evaluate_conditions
from smsbus_triggers.runner import WorkerProcess
from smsbus_triggers.trial import print_trial, try_trigger

SERVICE = "triggers"

log = logging.getLogger(SERVICE)

MESSAGES_DONE = prometheus_client.Counter(
    "smsbus_trigger_messages_total", "Messages the triggers finished with, by trigger_status", ["trigger_status"]
)


# a step works through its batch for this long at most, then lets the loop look for SIGTERM
STEP_BUDGET_S = 1.0
# chains of SQL triggers share one transaction for this long at most: the rows stay locked
SQL_BATCH_BUDGET_S = 0.25


class TriggersSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    poll_interval_s: Seconds = 5.0
    metrics_port: OptionalPort = 16732
    # messages claimed at once (one query evaluates every condition for all of them)
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


check_trigger_move(TriggerStatus.PENDING, TriggerStatus.NOT_APPLICABLE)
check_trigger_move(TriggerStatus.PROCESSING, TriggerStatus.NOT_APPLICABLE)

CLAIMABLE = f"trigger_status = 'N/A' AND {queue.IS_PERMANENT}"

# trigger_status N/A -> PENDING for a batch, oldest first; the claimer is our backend
CLAIM_MESSAGES = f"""
UPDATE messages SET trigger_status = 'PENDING', trigger_owner_pid = pg_backend_pid()
WHERE id IN (
    SELECT id FROM messages WHERE {CLAIMABLE}
    ORDER BY id LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED)
RETURNING *
"""

# The rest of a batch this process claimed and left for its next step. Conditions are
# evaluated again then: a trigger edited in between applies.
SELECT_OWN_CLAIMS = f"""
SELECT * FROM messages
WHERE trigger_status = 'PENDING' AND {queue.IS_PERMANENT} AND trigger_owner_pid = pg_backend_pid()
ORDER BY id LIMIT %(limit)s
"""

# trigger_status PENDING / PROCESSING -> N/A for claims whose process's backend is gone (it
# crashed or lost its connection mid-batch, maybe while a script ran): another process takes
# them, and runs their scripts again (at-least-once).
RELEASE_ORPHANED_CLAIMS = f"""
UPDATE messages SET trigger_status = 'N/A', trigger_owner_pid = NULL
WHERE id IN (
    SELECT id FROM messages
    WHERE trigger_status IN ('PENDING', 'PROCESSING') AND {queue.IS_PERMANENT}
      AND trigger_owner_pid <> ALL (ARRAY(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL))
    ORDER BY id
    FOR NO KEY UPDATE SKIP LOCKED)
"""

# the guarded move PENDING -> PROCESSING (smsbus.statuses.TRIGGER_MOVES), returning the
# message as the scripts get it
START_PROCESSING = """
UPDATE messages SET trigger_status = 'PROCESSING' WHERE id = %(id)s AND trigger_status = 'PENDING'
RETURNING *
"""
check_trigger_move(TriggerStatus.PENDING, TriggerStatus.PROCESSING)

SET_CONDITION_TIMEOUT = "SELECT set_config('statement_timeout', %(ms)s, true)"


class Triggers:
    """The step: claim a batch, evaluate conditions, run each message's chain."""

    def __init__(self, settings: Settings, own: TriggersSettings) -> None:
        self.own = own
        self.worker = WorkerProcess(settings.resolved_database_url())
        self.publisher = Publisher(settings.bus)
        self.timeouts: StatementTimeout | None = None

    def step(self, conn: Connection) -> int:
        """Claim (or resume) a batch and work through it for STEP_BUDGET_S at most: the loop
        checks for SIGTERM between steps, and what is left stays ours for the next step."""
        conn.execute(RELEASE_ORPHANED_CLAIMS)
        limit = {"limit": self.own.batch_size}
        rows = conn.execute(SELECT_OWN_CLAIMS, limit).fetchall() or conn.execute(CLAIM_MESSAGES, limit).fetchall()
        # RETURNING has no order
        claimed = sorted((queue.to_message(row) for row in rows), key=lambda m: m.id)
        if not claimed:
            conn.commit()
            return 0
        # read after the claim: a message committed after a trigger was edited meets the edit
        triggers = list_triggers(conn, enabled_only=True)
        matched, condition_errors = self.match(conn, claimed, triggers)
        self.finish_without_scripts(conn, claimed, matched, condition_errors, bool(triggers))
        conn.commit()
        by_id = {t.id: t for t in triggers}
        chains = [(m, [by_id[i] for i in matched[m.id]]) for m in claimed if matched.get(m.id)]
        deadline = time.monotonic() + STEP_BUDGET_S
        self.process_sql_chains(conn, [(m, chain) for m, chain in chains if all(t.language == "sql" for t in chain)])
        for message, chain in chains:
            if all(t.language == "sql" for t in chain):
                continue
            self.publish(self.process(conn, message, chain))
            if time.monotonic() > deadline:
                break
        return len(claimed)

    def process_sql_chains(self, conn: Connection, chains: list[tuple[Message, list[Trigger]]]) -> None:
        """Chains of SQL triggers only, grouped by chain: each group in bulk (a few statements
        for the lot); a group where some script failed goes message by message instead."""
        groups: dict[tuple[int, ...], list[Message]] = {}
        for message, chain in chains:
            groups.setdefault(tuple(t.id for t in chain), []).append(message)
        by_key = {tuple(t.id for t in chain): chain for _, chain in chains}
        for key, messages in groups.items():
            outcomes = run_sql_chain_in_bulk(conn, [m.id for m in messages], by_key[key], self.statement_timeout(conn))
            if outcomes is None:
                self.timeouts = None  # rolled back with the transaction
                self.process_in_one_transaction(conn, [(m, by_key[key]) for m in messages])
                continue
            for trigger_status in outcomes.values():
                MESSAGES_DONE.labels(trigger_status).inc()

    def process_in_one_transaction(self, conn: Connection, chains: list[tuple[Message, list[Trigger]]]) -> None:
        """One transaction for the lot (a savepoint each, so a failure stays with its message):
        one commit, not one per message. Those left at SQL_BATCH_BUDGET_S stay ours."""
        deadline = time.monotonic() + SQL_BATCH_BUDGET_S
        results = []
        with conn.transaction():
            for message, chain in chains:
                results.append(self.process(conn, message, chain))
                if time.monotonic() > deadline:
                    break
        for result in results:
            self.publish(result)

    def statement_timeout(self, conn: Connection) -> StatementTimeout:
        if self.timeouts is None or self.timeouts.conn is not conn:
            self.timeouts = StatementTimeout(conn)  # a new connection has the default again
        return self.timeouts

    def process(self, conn: Connection, message: Message, triggers: list[Trigger]) -> ChainResult | None:
        """PENDING -> PROCESSING in a short transaction, then its chain (run_chain keeps no
        transaction open while a Python script runs). None when the claim was lost."""
        timeouts = self.statement_timeout(conn)
        try:
            with conn.transaction():
                row = conn.execute(START_PROCESSING, {"id": message.id}).fetchone()
                if row is None:
                    return None  # it entered another permanent status meanwhile: offered again later
            return run_chain(conn, queue.to_message(row), triggers, self.worker, timeouts)
        except BaseException:
            self.timeouts = None  # a rolled-back transaction undid the setting
            raise

    def publish(self, result: ChainResult | None) -> None:
        """Counts the outcome and publishes what the scripts asked for (after the commit)."""
        if result is None:
            return
        MESSAGES_DONE.labels(result.trigger_status).inc()
        for notification in result.notifications:
            self.publisher.publish(notification.topic, notification.ids)

    def match(
        self, conn: Connection, messages: list[Message], triggers: list[Trigger]
    ) -> tuple[dict[int, list[int]], dict[int, str]]:
        """message id -> matching trigger ids; and message id -> why a condition failed."""
        if not triggers:
            return {}, {}
        ids = [m.id for m in messages]
        longest_ms = str(int(max(t.timeout_s for t in triggers) * 1000))
        try:
            with conn.transaction():
                conn.execute(SET_CONDITION_TIMEOUT, {"ms": longest_ms})
                rows = evaluate_conditions(conn, triggers, ids)
            return {row["id"]: row["matched"] for row in rows}, {}
        except psycopg.errors.Error as e:
            # one message made a condition fail (a cast, a division): find it, keep the rest
            log.warning("conditions failed for the batch, evaluating one by one error=%s", e.diag.message_primary)
        matched: dict[int, list[int]] = {}
        errors: dict[int, str] = {}
        for message_id in ids:
            matched[message_id] = []
            for trigger in triggers:
                try:
                    with conn.transaction():
                        conn.execute(SET_CONDITION_TIMEOUT, {"ms": str(int(trigger.timeout_s * 1000))})
                        holds = bool(evaluate_conditions(conn, [trigger], [message_id])[0]["matched"])
                except psycopg.errors.Error as e:
                    errors[message_id] = f"condition of trigger {trigger.name}: {e.diag.message_primary or e}"
                    matched[message_id] = []  # the message fails as a whole: no trigger runs
                    break
                if holds:
                    matched[message_id].append(trigger.id)
        return matched, errors

    def finish_without_scripts(
        self,
        conn: Connection,
        messages: list[Message],
        matched: dict[int, list[int]],
        condition_errors: dict[int, str],
        any_triggers: bool,
    ) -> None:
        """NOTRIGGERS, NOMATCH and failed conditions end in the claim's transaction, in bulk."""
        idle = [m.id for m in messages if not matched.get(m.id)]
        if not idle:
            return
        processing = move_trigger_status(conn, idle, TriggerStatus.PENDING, TriggerStatus.PROCESSING)
        failed = [i for i in processing if i in condition_errors]
        for message_id in failed:
            move_trigger_status(
                conn, [message_id], TriggerStatus.PROCESSING, TriggerStatus.FAILED,
                trigger_error=condition_errors[message_id],
            )
        outcome = TriggerStatus.NOMATCH if any_triggers else TriggerStatus.NOTRIGGERS
        finished = move_trigger_status(
            conn, [i for i in processing if i not in condition_errors], TriggerStatus.PROCESSING, outcome,
            trigger_error=None,
        )
        MESSAGES_DONE.labels(outcome).inc(len(finished))
        MESSAGES_DONE.labels(TriggerStatus.FAILED).inc(len(failed))

    def close(self) -> None:
        self.worker.stop()
        self.publisher.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="smsbus-triggers", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb")
    test = verbs.add_parser("test", help="run a trigger on a message without committing")
    test.add_argument("trigger", help="trigger id or name")
    test.add_argument("--message", type=int, required=True, help="message id")
    args = parser.parse_args(argv)
    settings, own = prepare(SERVICE, TriggersSettings, log_level="WARNING" if args.verb == "test" else None)
    if args.verb == "test":
        try:
            trial = try_trigger(settings.resolved_database_url(), args.trigger, args.message)
        except SmsbusError as e:
            sys.exit(f"smsbus: error: {e}")
        print_trial(trial)
        return
    service = Triggers(settings, own)
    try:
        run(
            settings=settings,
            service=SERVICE,
            loop=LoopSettings(poll_interval_s=own.poll_interval_s, metrics_port=own.metrics_port),
            step=service.step,
            wake_on=["status", config_topic("triggers")],
        )
    finally:
        service.close()
