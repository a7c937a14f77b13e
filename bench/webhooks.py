"""Delivery callbacks: throughput, latency from status change to callback received, memory, and
what the outbox trigger costs a status UPDATE.

    .venv/bin/python bench/webhooks.py [--messages 2000] [--rate 200] [--seconds 10]
                                       [--concurrency 16] [--batch-size 100]

Real processes: the broker, the webhooks service (smsbus-webhooks) and a receiver
(tests/peers/callback_server.py, a threading HTTP server that logs each request's arrival).
(a) burst: --messages messages with a status_callback move SENDING, SENT, DELIVERED (one
    UPDATE of 100 rows per statement, as a channel records a batch): callbacks/s from the
    first commit to the last callback received;
(b) paced: status changes at --rate per second for --seconds (batches of 10 every
    10/rate s): p50/p99 from each change's commit to its callback's arrival;
(c) the webhooks process's peak RSS;
(d) an UPDATE moving 1,000 rows' status, without and with callbacks on them (p50 of 20 each,
    alternating).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

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
from tests.peers.callback_server import CallbackServer

INSERT_KEY = """
INSERT INTO api_keys (name, secret_sha256, scopes, callback_secret)
VALUES ('bench', %(hash)s, '{send}', 'bench-secret') RETURNING id
"""
INSERT_MESSAGES = """
INSERT INTO messages (direction, to_address, body, status_callback, api_key_id)
SELECT 'out', '+3161' || lpad(n::text, 7, '0'), 'bench ' || n, %(url)s, %(key)s
FROM generate_series(1, %(count)s) AS n RETURNING id
"""
MOVE = "UPDATE messages SET status = %(to)s WHERE id = ANY(%(ids)s) AND status = %(from)s"
LIFE = (("QUEUED", "SENDING"), ("SENDING", "SENT"), ("SENT", "DELIVERED"))
TRIGGER_ROWS = 1000
TRIGGER_RUNS = 20


def received(receiver: CallbackServer) -> dict[tuple[int, str], float]:
    """(message id, status) -> arrival time of its first callback."""
    arrivals: dict[tuple[int, str], float] = {}
    for request in receiver.requests():
        payload = json.loads(request["body"])
        arrivals.setdefault((payload["message_id"], payload["status"]), request["at"])
    return arrivals


def wait_received(receiver: CallbackServer, count: int, timeout_s: float) -> dict[tuple[int, str], float]:
    deadline = time.monotonic() + timeout_s
    while True:
        arrivals = received(receiver)
        if len(arrivals) >= count or time.monotonic() > deadline:
            return arrivals
        time.sleep(0.1)


def add_messages(conn: psycopg.Connection[Any], url: str | None, key: int, count: int) -> list[int]:
    rows = conn.execute(INSERT_MESSAGES, {"url": url, "key": key, "count": count}).fetchall()
    return sorted(r[0] for r in rows)


def burst(conn: psycopg.Connection[Any], receiver: CallbackServer, key: int, count: int) -> tuple[float, int]:
    ids = add_messages(conn, receiver.url + "/burst", key, count)
    started = time.time()
    for source, target in LIFE:
        for i in range(0, len(ids), 100):
            conn.execute(MOVE, {"ids": ids[i : i + 100], "from": source, "to": target})
    arrivals = wait_received(receiver, 3 * count, timeout_s=300)
    mine = [at for (message_id, _), at in arrivals.items() if message_id in set(ids)]
    return len(mine) / (max(mine) - started), len(mine)


def paced(
    conn: psycopg.Connection[Any], receiver: CallbackServer, key: int, rate: float, seconds: float
) -> list[float]:
    """Latencies (s) from each change's commit to its callback's arrival."""
    before = len(received(receiver))
    batch = 10
    ids = add_messages(conn, receiver.url + "/paced", key, int(rate * seconds / 3) + batch)
    committed: dict[tuple[int, str], float] = {}
    interval = batch / rate
    next_at = time.monotonic()
    position = 0
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at and position < len(ids):
        chunk = ids[position : position + batch]
        position += batch
        for source, target in LIFE:
            next_at += interval / 3
            time.sleep(max(0.0, next_at - time.monotonic()))
            conn.execute(MOVE, {"ids": chunk, "from": source, "to": target})
            now = time.time()
            committed.update({(m, target): now for m in chunk})
    arrivals = wait_received(receiver, before + len(committed), timeout_s=120)
    return [arrivals[event] - at for event, at in committed.items() if event in arrivals]


def trigger_cost(conn: psycopg.Connection[Any], url: str, key: int) -> tuple[float, float]:
    """p50 ms of one UPDATE moving TRIGGER_ROWS rows QUEUED -> SENDING (its own transaction),
    without and with callbacks on the rows; the two alternate, so that the machine's load
    weighs on both alike."""
    timings: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(TRIGGER_RUNS):
        for with_callbacks in (False, True):
            ids = add_messages(conn, url if with_callbacks else None, key, TRIGGER_ROWS)
            started = time.perf_counter()
            conn.execute(MOVE, {"ids": ids, "from": "QUEUED", "to": "SENDING"})
            timings[with_callbacks].append((time.perf_counter() - started) * 1000)
    return percentile(timings[False], 0.5), percentile(timings[True], 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()

    with throwaway_database() as url, tempfile.TemporaryDirectory(prefix="smsbus-bench-webhooks-") as tmp:
        directory = Path(tmp)
        env = service_environment(url, directory / "var")
        env.update({"SMSBUS_LOG_LEVEL": "WARNING", "SMSBUS_WEBHOOKS_CONCURRENCY": str(args.concurrency),
                    "SMSBUS_WEBHOOKS_BATCH_SIZE": str(args.batch_size), "SMSBUS_WEBHOOKS_POLL_INTERVAL_S": "1"})
        broker = start_broker(env, directory)
        receiver = CallbackServer(env, directory).start()
        webhooks: ServiceProcess = start_service(["smsbus-webhooks"], env, directory / "webhooks.log")
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                key = conn.execute(INSERT_KEY, {"hash": hashlib.sha256(os.urandom(32)).digest()}).fetchone()[0]
                time.sleep(1)
                rate, delivered = burst(conn, receiver, key, args.messages)
                latencies = paced(conn, receiver, key, args.rate, args.seconds)
                rss = peak_rss_mb(webhooks.process.pid)
                # the trigger alone: no service delivering its rows meanwhile
                webhooks.stop()
                without, with_callbacks = trigger_cost(conn, receiver.url + "/cost", key)
        finally:
            webhooks.stop()
            receiver.stop()
            broker.stop()

    paced_rate = f"{args.rate:g} changes/s"
    print_table(
        f"Delivery callbacks (concurrency {args.concurrency}, batch {args.batch_size}; one receiver process)",
        ["measure", "value"],
        [
            [f"(a) burst: {delivered:,} callbacks, callbacks/s", rate],
            [f"(b) paced {paced_rate}: change committed -> received p50 ms", percentile(latencies, 0.5) * 1000],
            [f"(b) paced {paced_rate}: p99 ms", percentile(latencies, 0.99) * 1000],
            ["(b) callbacks measured", len(latencies)],
            ["(c) webhooks peak RSS MB", rss],
            [f"(d) UPDATE of {TRIGGER_ROWS:,} rows' status, no callbacks: p50 ms", without],
            [f"(d) UPDATE of {TRIGGER_ROWS:,} rows' status, all with callbacks: p50 ms", with_callbacks],
        ],
    )


if __name__ == "__main__":
    main()
