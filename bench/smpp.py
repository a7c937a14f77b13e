"""The SMPP channel against the SMSC simulator on loopback (issue 4).

    .venv/bin/python bench/smpp.py [--messages 50000] [--baseline-messages 50000]
                                   [--window-messages 5000] [--latency-messages 300]

(a) `--messages` rows inserted (one COPY, channel named, routed_at set) -> all DELIVERED:
    messages/s with the window (10) and with stop-and-wait (window 1: send, wait for the
    response; the same smpplib PDUs and the same SQL) as the baseline.
(b) simulator response latency 20 ms, window 10, no receipts: the submit rate achieved against
    the window/latency limit of 500 messages/s (goal >= 90 %), from the simulator's PDU log.
(c) committed INSERT -> submit_sm at the simulator, polling disabled (woken by the broker):
    p50 and p99 over `--latency-messages` single-row INSERTs 20 ms apart (goal p50 <= 3 ms,
    p99 <= 15 ms), from the commit time here to the simulator's receive time (one clock).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

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
from tests.peers.smsc import PASSWORD, SYSTEM_ID, Smsc, start_smsc

INSERT_CHANNEL = """
INSERT INTO channels (name, type, settings) VALUES (%(name)s, 'smpp', %(settings)s)
"""
COPY_MESSAGES = "COPY messages (direction, to_address, body, channel, routed_at) FROM STDIN"
INSERT_ONE = """
INSERT INTO messages (direction, to_address, body, channel, routed_at)
VALUES ('out', '+31612345678', %(body)s, %(channel)s, now())
"""
COUNT_STATUS = "SELECT count(*) AS n FROM messages WHERE channel = %(channel)s AND status = %(status)s"

WINDOW = 10
LATENCY_MS = 20


def add_channel(conn: Any, smsc: Smsc, name: str, **settings: Any) -> None:
    values = {"host": "127.0.0.1", "port": smsc.port, "system_id": SYSTEM_ID, "password": PASSWORD,
              "window": WINDOW, "poll_interval_s": 0, **settings}
    conn.execute(INSERT_CHANNEL, {"name": name, "settings": json.dumps(values)})


def fill_queue(conn: Any, channel: str, count: int) -> None:
    now = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime())
    with conn.cursor() as cursor, cursor.copy(COPY_MESSAGES) as copy:
        for i in range(count):
            copy.write_row(("out", f"+3161{i % 10_000_000:07d}", f"bench message {i}", channel, now))


def wait_count(conn: Any, channel: str, status: str, count: int, timeout_s: float) -> float:
    """Seconds until `count` messages of the channel are in `status`."""
    started = time.monotonic()
    while conn.execute(COUNT_STATUS, {"channel": channel, "status": status}).fetchone()["n"] < count:
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"{channel}: fewer than {count} {status} after {timeout_s:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def run_channel(env: dict[str, str], directory: Path, name: str) -> ServiceProcess:
    return start_service(["smsbus-channel-smpp", "--channel", name], env, directory / f"channel-{name}.log")


def throughput(conn: Any, env: dict[str, str], directory: Path, smsc: Smsc, name: str, count: int,
               window: int) -> tuple[float, float]:
    """(messages/s to DELIVERED, the channel's peak RSS in MB)."""
    add_channel(conn, smsc, name, window=window)
    fill_queue(conn, name, count)
    channel = run_channel(env, directory, name)
    seconds = wait_count(conn, name, "DELIVERED", count, timeout_s=max(600.0, count / 20))
    rss = peak_rss_mb(channel.process.pid)
    channel.stop()
    return count / seconds, rss


def window_limit(conn: Any, env: dict[str, str], directory: Path, smsc: Smsc, count: int) -> tuple[float, float]:
    """Submits per second with 20 ms response latency and a window of 10, and the
    simulator's own median submit-to-response delay (its event loop adds to the 20 ms)."""
    name = "bench-latency"
    add_channel(conn, smsc, name, registered_delivery=0)
    smsc.command(f"latency {LATENCY_MS}")
    logged_before = len(smsc.pdus())
    fill_queue(conn, name, count)
    channel = run_channel(env, directory, name)
    wait_count(conn, name, "SENT", count, timeout_s=600)
    channel.stop()
    smsc.command("latency 0")
    # only this channel was bound since: what was logged after the mark is this run's
    records = smsc.pdus()[logged_before:]
    submits = {(r["connection"], r["sequence"]): r["ts"] for r in records if r["command"] == "submit_sm"}
    responses = {(r["connection"], r["sequence"]): r["ts"] for r in records if r["command"] == "submit_sm_resp"}
    delays = [responses[key] - at for key, at in submits.items() if key in responses]
    return len(submits) / (max(responses.values()) - min(submits.values())), percentile(delays, 0.5)


def insert_to_submit(conn: Any, env: dict[str, str], directory: Path, smsc: Smsc, count: int) -> list[float]:
    """Seconds from each single-row INSERT's commit to its submit_sm at the simulator."""
    name = "bench-wake"
    add_channel(conn, smsc, name, registered_delivery=0, poll_interval_s=0)
    channel = run_channel(env, directory, name)
    smsc.wait_bound(binds=1)
    time.sleep(1.0)  # the subscription reaches the broker
    committed: dict[str, float] = {}
    for i in range(count):
        body = f"wake {i}"
        conn.execute(INSERT_ONE, {"body": body, "channel": name})
        committed[body] = time.time()
        time.sleep(0.02)
    wait_count(conn, name, "SENT", count, timeout_s=60)
    channel.stop()
    received = {
        bytes.fromhex(r["short_message"]).decode(): r["ts"]
        for r in smsc.pdus("in", "submit_sm") if "short_message" in r
    }
    return [received[body] - at for body, at in committed.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000, help="(a) with the window")
    parser.add_argument("--baseline-messages", type=int, default=None, help="(a) stop-and-wait (default: --messages)")
    parser.add_argument("--window-messages", type=int, default=5_000, help="(b)")
    parser.add_argument("--latency-messages", type=int, default=300, help="(c)")
    args = parser.parse_args()
    baseline_count = args.baseline_messages or args.messages

    with throwaway_database() as url, tempfile.TemporaryDirectory(prefix="smsbus-bench-smpp-") as temp:
        directory = Path(temp)
        env = service_environment(url, directory / "var")
        env["SMSBUS_LOG_LEVEL"] = "WARNING"
        broker = start_broker(env, directory)
        smsc = start_smsc(env, directory, "--receipt-delay-ms", "0")
        try:
            with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
                window_rate, window_rss = throughput(conn, env, directory, smsc, "bench-window", args.messages, WINDOW)
                baseline_rate, baseline_rss = throughput(conn, env, directory, smsc, "bench-stop-and-wait",
                                                         baseline_count, 1)
                limited_rate, simulator_delay = window_limit(conn, env, directory, smsc, args.window_messages)
                latencies = insert_to_submit(conn, env, directory, smsc, args.latency_messages)
            simulator_rss = peak_rss_mb(smsc.process.process.pid)
        finally:
            smsc.stop()
            broker.stop()

    limit = WINDOW / (LATENCY_MS / 1000)
    print_table(
        "(a) inserted -> all DELIVERED (simulator latency 0, receipts at once)",
        ["mode", "messages", "messages/s", "channel peak RSS MB"],
        [["window 10", args.messages, window_rate, window_rss],
         ["stop-and-wait (window 1, baseline)", baseline_count, baseline_rate, baseline_rss],
         ["ratio window / baseline", "", window_rate / baseline_rate, ""]],
    )
    print_table(
        f"(b) response latency {LATENCY_MS} ms, window {WINDOW}: limit {limit:.0f} messages/s",
        ["messages", "submits/s", "of the limit", "goal", "simulator's p50 response delay ms"],
        [[args.window_messages, limited_rate, f"{100 * limited_rate / limit:.1f} %", ">= 90 %",
          1000 * simulator_delay]],
    )
    print_table(
        "(c) committed INSERT -> submit_sm at the simulator, polling disabled",
        ["messages", "p50 ms", "p99 ms", "max ms", "goal"],
        [[len(latencies), 1000 * percentile(latencies, 0.5), 1000 * percentile(latencies, 0.99),
          1000 * max(latencies), "p50 <= 3 ms, p99 <= 15 ms"]],
    )
    print(f"\nsimulator peak RSS {simulator_rss:.0f} MB")


if __name__ == "__main__":
    main()
