"""The triggers service as supervisord runs it: real `smsbus-triggers` processes, the real
broker, triggers added and edited with the real `smsbus` command while it runs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from smsbus import triggers
from tests.peers.processes import BIN_DIR, PROJECT_ROOT, ServiceProcess

Conn = psycopg.Connection[dict[str, Any]]
StartService = Callable[..., ServiceProcess]

EXAMPLES = PROJECT_ROOT / "deploy" / "triggers"
SENDER = "+31611111111"
OUR_NUMBER = "+31622222222"
TAG_SCRIPT = "UPDATE messages SET properties = properties || '{{\"tag\": {tag}}}' WHERE id = $1"
INSERT_INCOMING = """
INSERT INTO messages (direction, status, from_address, to_address, body)
VALUES ('in', 'RECEIVED', %(sender)s, %(to)s, %(body)s) RETURNING id
"""


@pytest.fixture
def start(start_services: StartService, broker: ServiceProcess) -> StartService:
    """Starts `smsbus-<name>` with the broker running; stops each with SIGTERM and checks exit 0."""
    return start_services


def smsbus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN_DIR / "smsbus"), *args], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result


def incoming(conn: Conn, body: str, sender: str = SENDER) -> int:
    row = conn.execute(INSERT_INCOMING, {"sender": sender, "to": OUR_NUMBER, "body": body}).fetchone()
    assert row is not None
    return int(row["id"])


def wait_for(conn: Conn, query: str, params: Any = (), timeout_s: float = 10.0) -> dict[str, Any]:
    """The first row the query returns, once it returns one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = conn.execute(query, params).fetchone()
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(f"nothing after {timeout_s} s: {query}")


def test_end_to_end_an_incoming_message_gets_the_auto_reply(
    service_env: dict[str, str], conn: Conn, start: StartService
) -> None:
    smsbus(service_env, "triggers", "add", "auto-reply", "--script", str(EXAMPLES / "auto_reply.py"),
           "--condition", "direction = 'in' AND status = 'RECEIVED'")
    triggers = start("triggers")

    message_id = incoming(conn, "When do you open?")

    reply = wait_for(conn, "SELECT * FROM messages WHERE direction = 'out'")
    assert (reply["status"], reply["to_address"], reply["from_address"]) == ("QUEUED", SENDER, OUR_NUMBER)
    assert reply["body"].startswith("Thank you, we received your message")
    wait_for(conn, "SELECT 1 FROM messages WHERE id = %s AND trigger_status = 'PROCESSED'", (message_id,))
    assert f"script log id={message_id} trigger=auto-reply" in triggers.log()


def test_stop_keyword_puts_the_sender_on_the_block_list_that_a_blocking_rule_uses(
    service_env: dict[str, str], conn: Conn, start: StartService
) -> None:
    smsbus(service_env, "triggers", "add", "auto-reply", "--script", str(EXAMPLES / "auto_reply.py"),
           "--condition", "direction = 'in' AND status = 'RECEIVED'")
    smsbus(service_env, "triggers", "add", "stop-opt-out", "--script", str(EXAMPLES / "stop_opt_out.sql"),
           "--position", "1",
           "--condition", r"direction = 'in' AND status = 'RECEIVED' AND body ~* '^\s*(stop|unsubscribe)\s*$'")
    smsbus(service_env, "rules", "block", "add", "opted-out",
           "--condition", "to_address IN (SELECT address FROM blocked_addresses)")
    start("triggers")
    start("router")

    stop = incoming(conn, " Stop ")
    wait_for(conn, "SELECT 1 FROM messages WHERE id = %s AND trigger_status = 'PROCESSED'", (stop,))
    assert conn.execute("SELECT address, message_id FROM blocked_addresses").fetchall() == [
        {"address": SENDER, "message_id": stop}
    ]
    # STOP came first and marked the message processed: no auto-reply to it
    assert conn.execute("SELECT count(*) AS n FROM messages WHERE direction = 'out'").fetchone() == {"n": 0}

    blocked = conn.execute(
        "INSERT INTO messages (direction, to_address, body) VALUES ('out', %s, 'offer') RETURNING id", (SENDER,)
    ).fetchone()
    assert blocked is not None
    outcome = wait_for(conn, "SELECT status, error FROM messages WHERE id = %s AND status <> 'QUEUED'",
                       (blocked["id"],))
    assert outcome["status"] == "BLOCKED" and "opted-out" in outcome["error"]


def test_a_hanging_script_is_stopped_at_its_timeout_while_other_messages_keep_flowing(
    conn: Conn, start: StartService
) -> None:
    triggers.add_trigger(conn, name="hang", condition="body = 'hang'", language="python", timeout_s=1,
                         script="def handle(message, api):\n    while True:\n        pass\n")
    tag = triggers.add_trigger(conn, name="tag", condition="true", language="sql", timeout_s=5,
                               script=TAG_SCRIPT.format(tag=1))
    service = start("triggers", batch_size="1")

    hanging = incoming(conn, "hang")
    others = [incoming(conn, f"normal {i}") for i in range(3)]

    failed = wait_for(conn, "SELECT trigger_error FROM messages WHERE id = %s AND trigger_status = 'FAILED'",
                      (hanging,), timeout_s=15)
    assert failed["trigger_error"] == "trigger hang: timed out after 1 s: stopped"
    for message_id in others:
        done = wait_for(conn, "SELECT properties FROM messages WHERE id = %s AND trigger_status = 'PROCESSED'",
                        (message_id,), timeout_s=15)
        assert done["properties"] == {"tag": 1}
    assert "script worker replaced" in service.log()

    # edited while running: the next message gets the new script, without a restart
    triggers.edit_trigger(conn, tag, script=TAG_SCRIPT.format(tag=2))
    later = incoming(conn, "after the edit")
    done = wait_for(conn, "SELECT properties FROM messages WHERE id = %s AND trigger_status = 'PROCESSED'",
                    (later,))
    assert done["properties"] == {"tag": 2}
    assert service.process.poll() is None


def test_two_trigger_processes_never_run_one_message_twice(conn: Conn, start: StartService) -> None:
    conn.execute("CREATE TABLE runs (message_id bigint NOT NULL, backend integer NOT NULL)")
    triggers.add_trigger(conn, name="record", condition="true", language="sql", timeout_s=5,
                         script="INSERT INTO runs SELECT $1, pg_backend_pid()")
    triggers.add_trigger(conn, name="slow", condition="true", language="python", timeout_s=5,
                         script="import time\n\ndef handle(message, api):\n    time.sleep(0.001)\n")
    start("triggers", batch_size="5")
    start("triggers", batch_size="5")

    count = 150
    conn.execute(
        "INSERT INTO messages (direction, status, from_address, body)"
        " SELECT 'in', 'RECEIVED', %s, 'n' || i FROM generate_series(1, %s) AS i",
        (SENDER, count),
    )

    wait_for(conn, "SELECT 1 FROM (SELECT count(*) AS n FROM messages WHERE trigger_status = 'PROCESSED') c"
             " WHERE n = %s", (count,), timeout_s=60)
    runs = conn.execute("SELECT count(*) AS runs, count(DISTINCT message_id) AS messages,"
                        " count(DISTINCT backend) AS backends FROM runs").fetchone()
    assert runs == {"runs": count, "messages": count, "backends": 2}


def test_sigterm_mid_batch_stops_at_once_and_the_next_process_finishes_the_batch(
    conn: Conn, start: StartService
) -> None:
    conn.execute("CREATE TABLE runs (message_id bigint NOT NULL)")
    triggers.add_trigger(conn, name="record", condition="true", language="sql", timeout_s=5,
                         script="INSERT INTO runs VALUES ($1)")
    triggers.add_trigger(conn, name="slow", condition="true", language="python", timeout_s=5,
                         script="import time\n\ndef handle(message, api):\n    time.sleep(0.3)\n")
    first = start("triggers", batch_size="20")
    count = 20
    conn.execute(
        "INSERT INTO messages (direction, status, from_address, body)"
        " SELECT 'in', 'RECEIVED', %s, 'n' || i FROM generate_series(1, %s) AS i",
        (SENDER, count),
    )
    wait_for(conn, "SELECT 1 FROM messages WHERE trigger_status = 'PROCESSED'")

    code, seconds = first.stop()

    assert code == 0, first.log()
    assert seconds < 3, f"took {seconds:.1f} s to stop with a batch in hand"
    left = conn.execute("SELECT count(*) AS n FROM messages WHERE trigger_status = 'PENDING'").fetchone()
    assert left is not None and left["n"] > 0, "the batch was finished before the stop: nothing shown"
    start("triggers")
    wait_for(conn, "SELECT 1 FROM (SELECT count(*) AS n FROM messages WHERE trigger_status = 'PROCESSED') c"
             " WHERE n = %s", (count,), timeout_s=30)
    assert conn.execute("SELECT count(*) AS runs, count(DISTINCT message_id) AS messages FROM runs").fetchone() == {
        "runs": count, "messages": count
    }
