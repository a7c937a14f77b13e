"""The triggers service's step on a real PostgreSQL, with its real script worker process:
order, chaining, "processed", globals, outcomes, failures, SENT then DELIVERED, reprocess."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from smsbus import db, queue, triggers
from smsbus.bus import Notification, Subscriber
from smsbus.config import Settings
from smsbus.statuses import PERMANENT
from smsbus_triggers.triggers import CLAIMABLE, Triggers, TriggersSettings
from tests.peers.processes import PROJECT_ROOT, environment_bus

Conn = psycopg.Connection[dict[str, Any]]

EXAMPLES = PROJECT_ROOT / "deploy" / "triggers"
SENDER = "+31611111111"
INSERT_INCOMING = """
INSERT INTO messages (direction, status, from_address, to_address, body)
VALUES ('in', 'RECEIVED', %(sender)s, '+31622222222', %(body)s) RETURNING id
"""
INSERT_SENT = """
INSERT INTO messages (direction, status, to_address, body, error)
VALUES ('out', 'SENT', '+31633333333', %(body)s, %(error)s) RETURNING id
"""
# a SQL trigger that appends its name to properties.order: shows which ran, in which order
APPEND_ORDER = """
UPDATE messages SET properties = jsonb_set(properties, '{{order}}',
    coalesce(properties->'order', '[]') || to_jsonb('{name}'::text))
WHERE id = $1
"""
PYTHON_APPEND_ORDER = """
def handle(message, api):
    api.change(properties={{"order": message.properties.get("order", []) + ["{name}"]}})
"""


@pytest.fixture
def service(database_url: str, service_env: dict[str, str]) -> Iterator[Triggers]:
    """The service's step in this process; its scripts run in the real worker process."""
    settings = Settings(database_url=database_url, bus=environment_bus(service_env))
    running = Triggers(settings, TriggersSettings(batch_size=50))
    yield running
    running.close()


@pytest.fixture
def worker_conn(database_url: str) -> Iterator[Conn]:
    """The service's own kind of connection (not autocommit)."""
    with db.connect(database_url, application="triggers-test") as connection:
        yield connection


def add(conn: Conn, name: str, script: str, *, condition: str = "true", language: str = "python",
        timeout_s: float = 5.0) -> triggers.Trigger:
    return triggers.add_trigger(
        conn, name=name, condition=condition, language=language, script=script, timeout_s=timeout_s
    )


def add_order_trigger(conn: Conn, name: str, *, condition: str = "true", language: str = "sql") -> None:
    script = (APPEND_ORDER if language == "sql" else PYTHON_APPEND_ORDER).format(name=name)
    add(conn, name, script, condition=condition, language=language)


def incoming(conn: Conn, body: str = "hello", sender: str = SENDER) -> int:
    row = conn.execute(INSERT_INCOMING, {"sender": sender, "body": body}).fetchone()
    assert row is not None
    return int(row["id"])


def run_until_idle(service: Triggers, conn: Conn) -> int:
    done = 0
    while (claimed := service.step(conn)) > 0:
        done += claimed
    return done


def row(conn: Conn, message_id: int) -> dict[str, Any]:
    found = conn.execute("SELECT * FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert found is not None
    return found


def test_triggers_run_in_position_order_python_and_sql_alike(service: Triggers, conn: Conn, worker_conn: Conn) -> None:
    add_order_trigger(conn, "a")
    add_order_trigger(conn, "b", language="python")
    add_order_trigger(conn, "c")
    triggers.move_trigger(conn, triggers.find_trigger(conn, "c"), 1)
    message_id = incoming(conn)

    assert run_until_idle(service, worker_conn) == 1

    done = row(conn, message_id)
    assert done["properties"]["order"] == ["c", "a", "b"]
    assert done["trigger_status"] == "PROCESSED"


def test_overlapping_conditions_chain_the_triggers_that_match(service: Triggers, conn: Conn, worker_conn: Conn) -> None:
    add_order_trigger(conn, "x", condition="body LIKE 'x%'")
    add_order_trigger(conn, "every-incoming", condition="direction = 'in'", language="python")
    add_order_trigger(conn, "y", condition="body LIKE 'y%'")
    x, y = incoming(conn, "x1"), incoming(conn, "y1")

    run_until_idle(service, worker_conn)

    assert row(conn, x)["properties"]["order"] == ["x", "every-incoming"]
    assert row(conn, y)["properties"]["order"] == ["every-incoming", "y"]


@pytest.mark.parametrize(
    ("language", "script"),
    [
        ("python", "def handle(message, api):\n    api.mark_processed()\n"),
        ("sql", "UPDATE messages SET trigger_status = 'PROCESSED' WHERE id = $1"),
    ],
)
def test_marking_processed_skips_the_later_triggers(
    service: Triggers, conn: Conn, worker_conn: Conn, language: str, script: str
) -> None:
    add_order_trigger(conn, "before")
    add(conn, "stop-here", script, language=language)
    add_order_trigger(conn, "after")
    message_id = incoming(conn)

    run_until_idle(service, worker_conn)

    done = row(conn, message_id)
    assert done["properties"]["order"] == ["before"]
    assert done["trigger_status"] == "PROCESSED"


# a dataclass too: a script's module is a real module (dataclasses look it up in sys.modules)
COUNTING_SCRIPT = """
from dataclasses import dataclass

@dataclass
class Counter:
    seen: int = 0

counter = Counter()

def handle(message, api):
    counter.seen += 1
    api.change(properties={"count": counter.seen})
"""


def test_globals_persist_between_messages_and_reset_when_the_script_is_edited(
    service: Triggers, conn: Conn, worker_conn: Conn
) -> None:
    counting = add(conn, "counting", COUNTING_SCRIPT)
    first, second = incoming(conn), incoming(conn)
    run_until_idle(service, worker_conn)
    assert [row(conn, i)["properties"]["count"] for i in (first, second)] == [1, 2]

    third = incoming(conn)
    run_until_idle(service, worker_conn)
    assert row(conn, third)["properties"]["count"] == 3

    triggers.edit_trigger(conn, counting, script=COUNTING_SCRIPT + "# edited\n")
    fourth = incoming(conn)
    run_until_idle(service, worker_conn)
    assert row(conn, fourth)["properties"]["count"] == 1


def test_no_matching_condition_is_nomatch_and_no_triggers_is_notriggers(
    service: Triggers, conn: Conn, worker_conn: Conn
) -> None:
    before_any = incoming(conn)
    run_until_idle(service, worker_conn)
    assert row(conn, before_any)["trigger_status"] == "NOTRIGGERS"

    add_order_trigger(conn, "only-out", condition="direction = 'out'")
    unmatched = incoming(conn)
    run_until_idle(service, worker_conn)
    assert row(conn, unmatched)["trigger_status"] == "NOMATCH"


def test_disabled_triggers_do_not_run(service: Triggers, conn: Conn, worker_conn: Conn) -> None:
    add_order_trigger(conn, "off")
    triggers.edit_trigger(conn, triggers.find_trigger(conn, "off"), enabled=False)
    message_id = incoming(conn)
    run_until_idle(service, worker_conn)
    assert row(conn, message_id)["trigger_status"] == "NOTRIGGERS"


def test_a_script_that_raises_leaves_the_message_failed_with_the_error(
    service: Triggers, conn: Conn, worker_conn: Conn
) -> None:
    add_order_trigger(conn, "first")
    add(conn, "boom", "def handle(message, api):\n"
        "    api.send('+31644444444', 'lost')\n"
        "    raise ValueError('no such customer')\n")
    add_order_trigger(conn, "never")
    failing = conn.execute(INSERT_SENT, {"body": "x", "error": "the sending's own error"}).fetchone()
    assert failing is not None

    run_until_idle(service, worker_conn)

    done = row(conn, failing["id"])
    assert done["trigger_status"] == "FAILED"
    assert done["trigger_error"] == "trigger boom: ValueError: no such customer (line 3)"
    # the sending error stays; the trigger before the failing one keeps its effect
    assert done["error"] == "the sending's own error"
    assert done["properties"]["order"] == ["first"]
    # what the failing script asked for is not applied
    assert conn.execute("SELECT count(*) AS n FROM messages WHERE body = 'lost'").fetchone() == {"n": 0}


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("def handle(message, api):\n    api.change(status='QUEUED')\n",
         "trigger bad: ForbiddenMove: status move RECEIVED -> QUEUED is not allowed (line 2)"),
        ("def handle(message, api):\n    api.send('not a number!', 'x')\n",
         "trigger bad: api.send refused: new row for relation \"messages\" violates check constraint"
         " \"messages_to_address_format\""),
        ("def handle(message, api):\n    api.query('DELETE FROM messages')\n",
         "trigger bad: ReadOnlySqlTransaction: cannot execute DELETE in a read-only transaction (line 2)"),
        ("def handle(message, api):\n    api.query('SELECT 1; DELETE FROM messages')\n",
         "trigger bad: SyntaxError: cannot insert multiple commands into a prepared statement (line 2)"),
        ("def handle(message, api):\n    api.change(properties={'seen': {1, 2}})\n",
         "trigger bad: ValueError: api.change: properties is not JSON: Object of type set is not JSON serializable"
         " (line 2)"),
        ("import no_such_module\ndef handle(message, api):\n    pass\n",
         "trigger bad: loading the script: ModuleNotFoundError: No module named 'no_such_module' (line 1)"),
    ],
)
def test_refused_requests_fail_the_trigger_with_a_clear_error(
    service: Triggers, conn: Conn, worker_conn: Conn, script: str, error: str
) -> None:
    add(conn, "bad", script)
    message_id = incoming(conn)
    run_until_idle(service, worker_conn)
    done = row(conn, message_id)
    assert done["trigger_status"] == "FAILED"
    assert done["trigger_error"].startswith(error)


def test_a_failing_sql_script_is_rolled_back_and_named(service: Triggers, conn: Conn, worker_conn: Conn) -> None:
    add(conn, "divide", "UPDATE messages SET body = 'changed' WHERE id = $1 AND 1 / 0 = 1", language="sql")
    message_id = incoming(conn)
    run_until_idle(service, worker_conn)
    done = row(conn, message_id)
    assert (done["trigger_status"], done["body"]) == ("FAILED", "hello")
    assert done["trigger_error"] == "trigger divide: PostgreSQL: division by zero"


def test_a_condition_that_fails_on_one_message_fails_only_that_message(
    service: Triggers, conn: Conn, worker_conn: Conn
) -> None:
    add_order_trigger(conn, "every")
    add_order_trigger(conn, "numeric-body", condition="body::integer > 10")
    bad, good = incoming(conn, "twelve"), incoming(conn, "12")
    run_until_idle(service, worker_conn)
    assert row(conn, good)["properties"]["order"] == ["every", "numeric-body"]
    failed = row(conn, bad)
    assert (failed["trigger_status"], failed["properties"]) == ("FAILED", {})
    assert failed["trigger_error"].startswith(
        "condition of trigger numeric-body: invalid input syntax for type integer"
    )


def test_a_message_is_offered_once_for_sent_and_once_again_for_delivered(
    service: Triggers, conn: Conn, worker_conn: Conn
) -> None:
    add(conn, "record-status", "UPDATE messages SET properties = properties || jsonb_build_object(status, true)"
        " WHERE id = $1", language="sql")
    add(conn, "count-runs", "runs = 0\ndef handle(message, api):\n    global runs\n    runs += 1\n"
        "    api.change(properties={'runs': runs})\n")
    sent = conn.execute(INSERT_SENT, {"body": "x", "error": None}).fetchone()
    assert sent is not None
    message_id = sent["id"]

    assert run_until_idle(service, worker_conn) == 1
    assert run_until_idle(service, worker_conn) == 0
    assert row(conn, message_id)["properties"] == {"SENT": True, "runs": 1}

    queue.move(conn, [message_id], "SENT", "DELIVERED")
    assert row(conn, message_id)["trigger_status"] == "N/A"
    assert run_until_idle(service, worker_conn) == 1
    assert row(conn, message_id)["properties"] == {"SENT": True, "DELIVERED": True, "runs": 2}


def test_reprocess_offers_finished_messages_again(service: Triggers, conn: Conn, worker_conn: Conn) -> None:
    add(conn, "count-runs", "runs = 0\ndef handle(message, api):\n    global runs\n    runs += 1\n"
        "    api.change(properties={'runs': runs})\n")
    message_id = incoming(conn)
    untouched = conn.execute(
        "INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31655555555', 'q') RETURNING id"
    ).fetchone()
    assert untouched is not None
    run_until_idle(service, worker_conn)

    outcome = triggers.reprocess(conn, [message_id, untouched["id"], 999999])

    assert outcome[message_id] is None
    assert outcome[untouched["id"]] == (
        f"message {untouched['id']} has trigger_status N/A;"
        " only FAILED, NOMATCH, NOTRIGGERS, PROCESSED can be reprocessed"
    )
    assert outcome[999999] == "no message with id 999999"
    assert row(conn, message_id)["trigger_status"] == "N/A"
    run_until_idle(service, worker_conn)
    assert row(conn, message_id)["properties"]["runs"] == 2


# PENDING: claimed, not started; PROCESSING: its script ran, with no transaction open
@pytest.mark.parametrize("left_in", ["PENDING", "PROCESSING"])
def test_claims_of_a_vanished_process_go_back_to_be_claimed_again(
    service: Triggers, conn: Conn, worker_conn: Conn, database_url: str, left_in: str
) -> None:
    add_order_trigger(conn, "a")
    message_id = incoming(conn)
    with db.connect(database_url) as crashed:
        crashed.execute("UPDATE messages SET trigger_status = %s, trigger_owner_pid = pg_backend_pid()", (left_in,))
        crashed.commit()
        # while its backend lives, the claim is respected
        assert run_until_idle(service, worker_conn) == 0
        crashed_pid = crashed.info.backend_pid
    assert row(conn, message_id)["trigger_status"] == left_in
    # a closed connection's backend leaves pg_stat_activity a moment later
    deadline = time.monotonic() + 5
    while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (crashed_pid,)).fetchone():
        assert time.monotonic() < deadline
        time.sleep(0.02)

    assert run_until_idle(service, worker_conn) == 1
    assert (row(conn, message_id)["trigger_status"], row(conn, message_id)["properties"]) == (
        "PROCESSED", {"order": ["a"]}
    )


def test_a_timeout_past_the_idle_transaction_limit_is_refused_and_capped(conn: Conn) -> None:
    with pytest.raises(triggers.InvalidTrigger, match="timeout: must be more than 0 and at most 50 seconds"):
        add(conn, "long", "SELECT $1", language="sql", timeout_s=300)
    conn.execute("INSERT INTO triggers (position, name, condition, language, script, timeout)"
                 " VALUES (1, 'by-sql', 'true', 'sql', 'SELECT $1', interval '10 minutes')")
    assert triggers.find_trigger(conn, "by-sql").timeout_s == triggers.MAX_TIMEOUT_S


def test_a_trigger_created_message_is_queued_and_announced_by_the_database(
    service: Triggers, conn: Conn, worker_conn: Conn
) -> None:
    add(conn, "reply", "def handle(message, api):\n"
        "    api.send(message.from_address, 'hi', sender=message.to_address)\n")
    incoming(conn)
    run_until_idle(service, worker_conn)
    reply = conn.execute("SELECT * FROM messages WHERE direction = 'out'").fetchone()
    assert reply is not None
    assert (reply["status"], reply["to_address"], reply["from_address"], reply["body"]) == (
        "QUEUED", SENDER, "+31622222222", "hi"
    )


def test_the_claim_index_lists_exactly_the_permanent_statuses(conn: Conn) -> None:
    found = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'messages_trigger_work_idx'"
    ).fetchone()
    assert found is not None
    for status in PERMANENT:
        assert f"'{status}'" in found["indexdef"] and f"'{status}'" in CLAIMABLE
    plan = conn.execute(
        "EXPLAIN SELECT id FROM messages WHERE " + CLAIMABLE + " ORDER BY id LIMIT 10"
    ).fetchall()
    assert "messages_trigger_work_idx" in " ".join(r["QUERY PLAN"] for r in plan)


class Webhook:
    """A real HTTP server on 127.0.0.1 that answers 503 to the first `failures` POSTs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[dict[str, Any]] = []
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                webhook.received.append(json.loads(body))
                self.send_response(503 if len(webhook.received) <= webhook.failures else 200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("failures", "outcome"), [(1, "PROCESSED"), (5, "FAILED")])
def test_the_webhook_example_posts_each_incoming_message_and_retries(
    service: Triggers, conn: Conn, worker_conn: Conn, monkeypatch: pytest.MonkeyPatch, failures: int, outcome: str
) -> None:
    webhook = Webhook(failures)
    monkeypatch.setenv("SMSBUS_WEBHOOK_URL", webhook.url)  # the worker inherits the service's environment
    try:
        add(conn, "webhook", (EXAMPLES / "webhook_forward.py").read_text(), timeout_s=10,
            condition="direction = 'in' AND status = 'RECEIVED'")
        message_id = incoming(conn, "forward me")
        run_until_idle(service, worker_conn)
    finally:
        webhook.close()

    done = row(conn, message_id)
    assert done["trigger_status"] == outcome
    attempts = min(failures + 1, 3)
    assert len(webhook.received) == attempts
    assert webhook.received[0] == webhook.received[-1]
    assert (webhook.received[0]["id"], webhook.received[0]["from"], webhook.received[0]["body"]) == (
        message_id, SENDER, "forward me"
    )
    if outcome == "FAILED":
        assert done["trigger_error"].startswith(f"trigger webhook: RuntimeError: webhook {webhook.url} failed after 3")
        assert "HTTP 503" in done["trigger_error"]


def test_scripts_query_read_only_and_notify_on_the_bus_after_the_commit(
    service: Triggers, conn: Conn, worker_conn: Conn, broker: Any, service_env: dict[str, str]
) -> None:
    add(conn, "history", """
def handle(message, api):
    rows = api.query("SELECT count(*) AS n FROM messages WHERE from_address = %s", (message.from_address,))
    api.change(properties={"from_sender": rows[0]["n"]})
    api.notify("crm.incoming", [message.id])
""")
    bus = environment_bus(service_env)
    subscriber = Subscriber(bus, ["crm."])
    try:
        deadline = time.monotonic() + 5
        while subscriber.receive(0.05) is None:  # the subscription takes a moment to reach the broker
            assert time.monotonic() < deadline, "the subscription never reached the broker"
            service.publisher.publish("crm.ping")
        subscriber.drain()
        first, second = incoming(conn), incoming(conn)

        run_until_idle(service, worker_conn)

        assert [row(conn, i)["properties"] for i in (first, second)] == [{"from_sender": 2}] * 2
        got = [subscriber.receive(2.0), subscriber.receive(2.0)]
        assert got == [Notification("crm.incoming", (first,)), Notification("crm.incoming", (second,))]
    finally:
        subscriber.close()


def test_a_sql_script_past_its_timeout_is_cancelled_on_every_message(
    service: Triggers, conn: Conn, worker_conn: Conn
) -> None:
    add(conn, "sleepy", "SELECT pg_sleep(30) FROM messages WHERE id = $1 AND body = 'slow'", language="sql",
        timeout_s=0.3)
    add_order_trigger(conn, "after")
    slow = [incoming(conn, "slow"), incoming(conn, "quick"), incoming(conn, "slow")]

    run_until_idle(service, worker_conn)

    outcomes = [(row(conn, i)["trigger_status"], row(conn, i)["trigger_error"]) for i in slow]
    assert outcomes == [
        ("FAILED", "trigger sleepy: timed out after 0.3 s: stopped"),
        ("PROCESSED", None),
        ("FAILED", "trigger sleepy: timed out after 0.3 s: stopped"),
    ]
    assert row(conn, slow[1])["properties"]["order"] == ["after"]


@pytest.mark.parametrize(
    ("condition", "says"),
    [("nope = 1", 'column "nope" does not exist'), ("true) ORDER BY (1", 'syntax error at or near "ORDER"'),
     ("true), (false", 'syntax error at or near ","')],
)
def test_a_condition_that_could_not_run_is_refused_when_saved_by_the_cli_or_plain_sql(
    conn: Conn, condition: str, says: str
) -> None:
    with pytest.raises(triggers.InvalidTrigger, match="condition: PostgreSQL refused it") as refused:
        add(conn, "typo", "SELECT $1", condition=condition, language="sql")
    assert says in str(refused.value)
    with pytest.raises(psycopg.errors.Error) as by_sql:
        conn.execute(
            "INSERT INTO triggers (position, name, condition, language, script)"
            " VALUES (1, 'typo', %(condition)s, 'sql', 'SELECT $1')", {"condition": condition}
        )
    assert f'condition of trigger "typo" refused: {says}' in str(by_sql.value)
    assert by_sql.value.diag.column_name == "condition"
    assert triggers.list_triggers(conn) == []


def test_a_script_can_send_a_failed_message_again_through_another_channel_and_the_router(
    service: Triggers, conn: Conn, worker_conn: Conn
) -> None:
    add(conn, "retry", "def handle(message, api):\n"
        "    api.change(status='QUEUED', channel='backup', properties={'retried': True})\n",
        condition="status = 'FAILED' AND NOT properties ? 'retried'")
    failed = conn.execute(
        "INSERT INTO messages (direction, status, to_address, body, channel, routed_at, error)"
        " VALUES ('out', 'FAILED', '+31633333333', 'x', 'main', now(), 'provider down') RETURNING id"
    ).fetchone()
    assert failed is not None

    run_until_idle(service, worker_conn)

    again = row(conn, failed["id"])
    assert (again["status"], again["channel"], again["routed_at"], again["properties"]) == (
        "QUEUED", "backup", None, {"retried": True}
    )
    assert again["trigger_status"] == "PROCESSED"


READ_OWN_STATUS = """
def handle(message, api):
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    api.change(properties={"no_new_privs": status["NoNewPrivs"].strip(), "uid": status["Uid"].split()[0]})
"""


def test_scripts_run_with_the_services_rights_at_most(service: Triggers, conn: Conn, worker_conn: Conn) -> None:
    """no_new_privs: no setuid program a script starts raises them (SPEC §13)."""
    add(conn, "status", READ_OWN_STATUS)
    message_id = incoming(conn)
    assert run_until_idle(service, worker_conn) == 1
    properties = row(conn, message_id)["properties"]
    assert properties == {"no_new_privs": "1", "uid": str(os.getuid())}
