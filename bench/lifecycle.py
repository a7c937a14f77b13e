"""The whole life cycle against the protocol floor (issue 13).

    .venv/bin/python bench/lifecycle.py [--messages 50000]

All in one run, against `smsbus-smsc-sim` on loopback (response latency 0, receipts at once):
(a) the floor: a bare smpplib client, window 50, submit_sm until every receipt came back.
(s) the send path: messages inserted with no channel -> router -> channel-smpp (window 50) ->
    receipt, until all DELIVERED, no triggers service running.
(b) the same through one SQL trigger on DELIVERED, until every message is PROCESSED.
(c) the same with one Python trigger instead.
Goals: (s) >= 0.9 x (a), (b) >= 0.7 x (a), (c) >= 0.5 x (a). CPU ms per message of each
process (the services, the simulator, PostgreSQL's processes together) from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import smpplib.client
import smpplib.consts
from psycopg.rows import dict_row

from common import ServiceProcess, print_table, service_environment, start_broker, start_service, throwaway_database
from tests.peers.smsc import PASSWORD, SYSTEM_ID, Smsc, start_smsc

WINDOW = 50
CHANNEL = "bench"
INSERT_CHANNEL = "INSERT INTO channels (name, type, settings) VALUES (%(name)s, 'smpp', %(settings)s)"
# inserted with no channel: the router picks it through its one routing rule
COPY_MESSAGES = "COPY messages (direction, to_address, body) FROM STDIN"
ADD_ROUTE = "INSERT INTO routing_rules (position, name, condition, channels) VALUES (1, 'all', 'true', %(channels)s)"
COUNT_DONE = "SELECT count(*) AS n FROM messages WHERE direction = 'out' AND {done}"
DELIVERED = "status = 'DELIVERED'"
PROCESSED = "status = 'DELIVERED' AND trigger_status = 'PROCESSED'"
RESET = "TRUNCATE messages, channel_daily_counts, triggers CASCADE"
SQL_TRIGGER = "UPDATE messages SET properties = properties || '{\"seen\": true}' WHERE id = $1"
PYTHON_TRIGGER = "def handle(message, api):\n    api.change(properties={'seen': True})\n"
ADD_TRIGGER = """
INSERT INTO triggers (position, name, condition, language, script)
VALUES (1, 'seen', 'status = ''DELIVERED''', %(language)s, %(script)s)
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def postgres_pids(database_url: str) -> list[int]:
    """The postmaster and its children (every backend, the WAL writer, ...)."""
    with psycopg.connect(database_url) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert backend is not None
    postmaster = parent_of(backend[0])
    return [postmaster, *(pid for pid in all_pids() if parent_of(pid) == postmaster)]


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


class CpuMeter:
    """CPU seconds each named process used between start() and stop()."""

    def __init__(self, processes: dict[str, Callable[[], list[int]]]) -> None:
        self.processes = processes
        self.before: dict[str, dict[int, float]] = {}

    def start(self) -> None:
        self.before = {name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self.processes.items()}

    def stop(self) -> dict[str, float]:
        used = {}
        for name, pids in self.processes.items():
            now = {pid: cpu_seconds(pid) for pid in pids()}
            used[name] = sum(now[pid] - self.before[name].get(pid, 0.0) for pid in now)
        return used


def floor(smsc: Smsc, count: int) -> float:
    """(a) messages/s: a bare smpplib client keeping WINDOW submit_sm in flight, until every
    receipt has come back (smpplib answers each deliver_sm itself)."""
    client = smpplib.client.Client("127.0.0.1", smsc.port, allow_unknown_opt_params=True)
    answered = [0]
    receipts = [0]
    client.set_message_sent_handler(lambda pdu: answered.__setitem__(0, answered[0] + 1))
    client.set_message_received_handler(lambda pdu: receipts.__setitem__(0, receipts[0] + 1))
    client.connect()
    client.bind_transceiver(system_id=SYSTEM_ID, password=PASSWORD)
    started = time.monotonic()
    sent = 0
    while receipts[0] < count:
        while sent < count and sent - answered[0] < WINDOW:
            client.send_message(
                source_addr_ton=smpplib.consts.SMPP_TON_INTL, source_addr="31600000000",
                dest_addr_ton=smpplib.consts.SMPP_TON_INTL, destination_addr=f"3161{sent % 10_000_000:07d}",
                short_message=f"bench message {sent}".encode(), registered_delivery=1,
            )
            sent += 1
        client.read_once()
    elapsed = time.monotonic() - started
    client.unbind()
    client.disconnect()
    return count / elapsed


def fill_queue(conn: Any, count: int) -> None:
    with conn.cursor() as cursor, cursor.copy(COPY_MESSAGES) as copy:
        for i in range(count):
            copy.write_row(("out", f"+3161{i % 10_000_000:07d}", f"bench message {i}"))


def wait_count(conn: Any, done: str, count: int, timeout_s: float) -> float:
    started = time.monotonic()
    query = COUNT_DONE.format(done=done)
    while conn.execute(query).fetchone()["n"] < count:
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"fewer than {count} messages with {done} after {timeout_s:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def life_cycle(
    conn: Any, env: dict[str, str], directory: Path, smsc: Smsc, count: int, trigger: str | None,
    meter_extra: dict[str, Any],
) -> tuple[float, float | None, dict[str, float]]:
    """Messages/s until all DELIVERED, until all PROCESSED (with a trigger), and CPU seconds
    per process. The services start on an empty queue; the messages arrive in one COPY."""
    conn.execute(RESET)
    if trigger is not None:
        conn.execute(ADD_TRIGGER, {"language": trigger, "script": SQL_TRIGGER if trigger == "sql" else PYTHON_TRIGGER})
    names = ["router", "channel-smpp"] + (["triggers"] if trigger is not None else [])
    services: dict[str, ServiceProcess] = {}
    for name in names:
        argv = ["smsbus-channel-smpp", "--channel", CHANNEL] if name == "channel-smpp" else [f"smsbus-{name}"]
        services[name] = start_service(argv, env, directory / f"{name}-{trigger}.log")
    try:
        smsc.wait_bound(timeout_s=20)
        time.sleep(1.5)  # the services connect; subscriptions reach the broker
        meter = CpuMeter({
            **{name: (lambda p=process: [p.process.pid]) for name, process in services.items()},
            **meter_extra,
        })
        meter.start()
        started = time.monotonic()
        fill_queue(conn, count)
        delivered_s = wait_count(conn, DELIVERED, count, timeout_s=max(300.0, count / 10))
        processed_s = None
        if trigger is not None:
            wait_count(conn, PROCESSED, count, timeout_s=max(300.0, count / 10))
            processed_s = time.monotonic() - started
        used = meter.stop()
    finally:
        for process in services.values():
            process.stop()
    return count / delivered_s, None if processed_s is None else count / processed_s, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    count = args.messages

    with throwaway_database() as url, tempfile.TemporaryDirectory(prefix="smsbus-bench-lifecycle-") as temp:
        directory = Path(temp)
        env = service_environment(url, directory / "var")
        env["SMSBUS_LOG_LEVEL"] = "WARNING"
        broker = start_broker(env, directory)
        smsc = start_smsc(env, directory, "--receipt-delay-ms", "0")
        try:
            database = postgres_pids(url)
            extra = {
                "broker": lambda: [broker.process.pid],
                "smsc-sim": lambda: [smsc.process.process.pid],
                "postgres (all)": lambda: [p for p in database if p > 0] + [
                    p for p in all_pids() if parent_of(p) == database[0] and p not in database],
            }
            floor_meter = CpuMeter({"smsc-sim": extra["smsc-sim"]})
            floor_meter.start()
            floor_rate = floor(smsc, count)
            floor_cpu = floor_meter.stop()
            with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
                settings = {"host": "127.0.0.1", "port": smsc.port, "system_id": SYSTEM_ID, "password": PASSWORD,
                            "window": WINDOW}
                conn.execute(INSERT_CHANNEL, {"name": CHANNEL, "settings": json.dumps(settings)})
                conn.execute(ADD_ROUTE, {"channels": [CHANNEL]})
                runs = {
                    "(s) send path, no triggers": life_cycle(conn, env, directory, smsc, count, None, extra),
                    "(b) one SQL trigger": life_cycle(conn, env, directory, smsc, count, "sql", extra),
                    "(c) one Python trigger": life_cycle(conn, env, directory, smsc, count, "python", extra),
                }
        finally:
            smsc.stop()
            broker.stop()

    goals = {"(s)": 0.9, "(b)": 0.7, "(c)": 0.5}
    rows: list[list[object]] = [["(a) floor: bare smpplib, window 50", floor_rate, "", "1.00", ""]]
    for label, (delivered, processed, _) in runs.items():
        rate = processed if processed is not None else delivered
        rows.append([label, delivered, "" if processed is None else processed, f"{rate / floor_rate:.2f}",
                     f">= {goals[label[:3]]}"])
    print_table(f"{count:,} messages, simulator receipts at once, window {WINDOW}",
                ["path", "DELIVERED msgs/s", "PROCESSED msgs/s", "of floor", "goal"], rows)
    processes = ["router", "channel-smpp", "triggers", "broker", "smsc-sim", "postgres (all)"]
    cpu_rows: list[list[object]] = [
        ["(a) floor", *["" for _ in processes[:4]], 1000 * floor_cpu["smsc-sim"] / count, ""]
    ]
    for label, (_, _, used) in runs.items():
        cpu_rows.append([label[:3], *[1000 * used[p] / count if p in used else "" for p in processes]])
    print_table("CPU ms per message, by process", ["run", *processes], cpu_rows)


if __name__ == "__main__":
    main()
