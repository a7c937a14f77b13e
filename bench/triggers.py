"""Messages/s through a chain of three cheap Python triggers and one SQL trigger, with 1 and
2 `smsbus-triggers` processes, and what the isolation of Python scripts costs per message.

    .venv/bin/python bench/triggers.py [--messages 2000] [--samples 200] [--calls 2000]

(a) throughput: a backlog of incoming RECEIVED messages, inserted in one statement while the
    services wait, until every one is trigger_status PROCESSED (the real services, the broker);
    and the CPU time per message of each kind of process (service, worker, its PostgreSQL
    backends, broker), which the machine's other load disturbs far less than messages/s
(b) latency: one message at a time, from the INSERT's commit to the `status` wake-up that
    follows its PROCESSED commit (with one process)
(c) isolation: the same handler called in this process (ScriptHost.run) and through the
    worker process (WorkerProcess.run: a MessagePack frame each way over a pipe), in this run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from common import (
    ServiceProcess,
    peak_rss_mb,
    percentile,
    print_table,
    service_environment,
    start_broker,
    start_service,
    throwaway_database,
)
from smsbus import triggers
from smsbus.bus import Subscriber, notify_status_update
from smsbus.config import BusSettings
from smsbus.message import Message
from smsbus.queue import IS_PERMANENT
from smsbus_triggers.protocol import RunScript
from smsbus_triggers.runner import WorkerProcess
from smsbus_triggers.worker import ScriptHost

PYTHON_TRIGGERS = {
    "keyword": "def handle(message, api):\n    if message.body.startswith('STOP'):\n        api.mark_processed()\n",
    "tag": "def handle(message, api):\n    api.change(properties={'tagged': True})\n",
    "count": "seen = 0\n\ndef handle(message, api):\n    global seen\n    seen += 1\n",
}
SQL_TRIGGER = "UPDATE messages SET properties = properties || '{\"sql\": true}' WHERE id = $1"
INSERT_BACKLOG = """
INSERT INTO messages (direction, status, from_address, body)
SELECT 'in', 'RECEIVED', '+31611111111', 'bench ' || i FROM generate_series(1, %(count)s) AS i
"""
INSERT_ONE = """
INSERT INTO messages (direction, status, from_address, body)
VALUES ('in', 'RECEIVED', '+31611111111', 'latency') RETURNING id
"""
# through the claim's partial index: the observer must not scan the table it measures
COUNT_UNFINISHED = f"SELECT count(*) AS n FROM messages WHERE trigger_status IN ('N/A', 'PENDING') AND {IS_PERMANENT}"
# the triggers services' own database backends (db.connect names them after the service)
SERVICE_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE application_name = 'triggers'"
TRIGGER_STATUS = "SELECT trigger_status FROM messages WHERE id = %(id)s"


def add_chain(url: str) -> None:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        for name, script in PYTHON_TRIGGERS.items():
            triggers.add_trigger(conn, name=name, condition="direction = 'in'", language="python",
                                 script=script, timeout_s=5)
        triggers.add_trigger(conn, name="sql-tag", condition="true", language="sql", script=SQL_TRIGGER,
                             timeout_s=5)
        conn.commit()


def wait_until_done(conn: psycopg.Connection[dict[str, int]], timeout_s: float = 600) -> float:
    """Seconds until no incoming message is left unprocessed."""
    began = time.perf_counter()
    while (row := conn.execute(COUNT_UNFINISHED).fetchone()) is not None and row["n"] > 0:
        if time.perf_counter() - began > timeout_s:
            raise SystemExit(f"{row['n']} messages still unprocessed after {timeout_s} s")
        time.sleep(0.05)
    return time.perf_counter() - began


def worker_pids(service: ServiceProcess) -> list[int]:
    pid = service.process.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes used so far (Linux /proc)."""
    ticks = 0
    for pid in pids:
        # the fields after the command name, which may hold spaces: utime and stime are 14, 15
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure_throughput(
    url: str, env: dict[str, str], tmp: Path, broker: ServiceProcess, processes: int, count: int
) -> list[object]:
    services = [
        start_service(["smsbus-triggers"], env, tmp / f"triggers-{processes}-{i}.log") for i in range(processes)
    ]
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for service in services:
            service.wait_for_log("database connected", timeout_s=60)
        # warm up: every process has its worker and scripts loaded before the clock starts
        conn.execute(INSERT_BACKLOG, {"count": 20 * processes})
        wait_until_done(conn)
        backends = [row["pid"] for row in conn.execute(SERVICE_BACKENDS)]
        workers = [w for s in services for w in worker_pids(s)]
        groups = {
            "service": [s.process.pid for s in services], "worker": workers, "postgres": backends,
            "broker": [broker.process.pid],
        }
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        conn.execute(INSERT_BACKLOG, {"count": count})
        seconds = wait_until_done(conn)
        cpu_ms = [(cpu_seconds(pids) - before[name]) * 1000 / count for name, pids in groups.items()]
    rss = max(peak_rss_mb(s.process.pid) for s in services)
    worker_rss = max((peak_rss_mb(w) for w in workers), default=float("nan"))
    for service in services:
        code, _ = service.stop()
        if code != 0:
            raise SystemExit(f"triggers exited {code}:\n{service.log()}")
    return [f"(a) {processes} process{'es' if processes > 1 else ''}, backlog of {count}",
            count / seconds, *cpu_ms, rss, worker_rss]


def measure_latency(url: str, env: dict[str, str], tmp: Path, samples: int) -> list[float]:
    service = start_service(["smsbus-triggers"], env, tmp / "triggers-latency.log")
    bus = BusSettings(
        notify_port=int(env["SMSBUS_BUS_NOTIFY_PORT"]),
        publish_port=int(env["SMSBUS_BUS_PUBLISH_PORT"]),
        subscribe_port=int(env["SMSBUS_BUS_SUBSCRIBE_PORT"]),
    )
    subscriber = Subscriber(bus, ["status"])
    while True:
        notify_status_update([0], bus)
        if subscriber.receive(0.1) is not None:
            break
    latencies = []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        service.wait_for_log("database connected", timeout_s=60)
        for _ in range(samples + 5):
            row = conn.execute(INSERT_ONE).fetchone()
            assert row is not None
            committed = time.perf_counter()
            while True:
                if subscriber.receive(5.0) is None:
                    raise SystemExit(f"no wake-up within 5 s:\n{service.log()}")
                status = conn.execute(TRIGGER_STATUS, {"id": row["id"]}).fetchone()
                if status is not None and status["trigger_status"] == "PROCESSED":
                    break
            latencies.append(time.perf_counter() - committed)
    subscriber.close()
    service.stop()
    return latencies[5:]  # the first ones start the worker


def measure_isolation(url: str, calls: int) -> tuple[list[float], list[float]]:
    """Seconds per call of the three Python handlers: in this process, and through the worker."""
    now = datetime.now(UTC)
    message = Message(
        id=1, direction="in", type="sms", status="RECEIVED", ack_status="N/A", trigger_status="PROCESSING",
        channel=None, from_address="+31611111111", to_address=None, body="bench", properties={},
        client_ref=None, scheduled_at=None, created_at=now, updated_at=now, sent_at=None, report_at=None,
        received_at=now, provider_id=None, parts=None, attempts=0, next_attempt_at=None, error=None,
        campaign_id=None,
    )
    chain = [
        triggers.Trigger(id=i, position=i, name=name, condition="true", language="python", script=script,
                         timeout=timedelta(seconds=5), enabled=True, created_at=now, updated_at=now)
        for i, (name, script) in enumerate(PYTHON_TRIGGERS.items(), start=1)
    ]
    host = ScriptHost(url)
    worker = WorkerProcess(url)
    in_process, through_worker = [], []
    for trigger in chain:  # load the modules and start the worker outside the clock
        host.run(RunScript(trigger.id, trigger.name, trigger.digest, trigger.script, message))
        worker.run(trigger, message)
    for _ in range(calls):
        for trigger in chain:
            started = time.perf_counter()
            host.run(RunScript(trigger.id, trigger.name, trigger.digest, None, message))
            in_process.append(time.perf_counter() - started)
            started = time.perf_counter()
            worker.run(trigger, message)
            through_worker.append(time.perf_counter() - started)
    worker.stop()
    return in_process, through_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="backlog per throughput run")
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--calls", type=int, default=2000, help="isolation: calls of each handler")
    args = parser.parse_args()

    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        env = service_environment(url, tmp / "var")
        env["SMSBUS_TRIGGERS_METRICS_PORT"] = "0"
        broker = start_broker(env, tmp, timeout_s=60)
        add_chain(url)

        rows = [measure_throughput(url, env, tmp, broker, processes, args.messages) for processes in (1, 2)]
        print_table(
            "Triggers: 3 Python + 1 SQL trigger per message; CPU ms per message by process kind",
            ["run", "messages/s", "service", "worker", "postgres", "broker", "service peak RSS MB",
             "worker peak RSS MB"],
            rows,
        )

        latencies = measure_latency(url, env, tmp, args.samples)
        ms = 1000.0
        print_table(
            f"(b) latency, one message at a time, {len(latencies)} samples (ms)",
            ["path", "p50", "p99", "max"],
            [["INSERT commit -> PROCESSED commit -> wake-up", percentile(latencies, 0.5) * ms,
              percentile(latencies, 0.99) * ms, max(latencies) * ms]],
        )

        in_process, through_worker = measure_isolation(url, args.calls)
        us = 1_000_000.0
        per_message = [
            (percentile(through_worker, q) - percentile(in_process, q)) * len(PYTHON_TRIGGERS) * us
            for q in (0.5, 0.99)
        ]
        print_table(
            f"(c) isolation: each of the 3 handlers called {args.calls} times (microseconds)",
            ["call", "p50", "p99"],
            [
                ["in this process (baseline)", percentile(in_process, 0.5) * us, percentile(in_process, 0.99) * us],
                ["through the worker process", percentile(through_worker, 0.5) * us,
                 percentile(through_worker, 0.99) * us],
                ["isolation cost per message (3 calls)", *per_message],
            ],
        )
        broker.stop()


if __name__ == "__main__":
    main()
