"""Wake-up latency from a committed INSERT to a subscriber, and UDP notifications/s without loss.

    .venv/bin/python bench/wake_latency.py [--samples 1000] [--udp-seconds 2]

(a) INSERT -> PostgreSQL NOTIFY -> broker -> ZeroMQ subscriber
(b) UDP datagram -> broker -> ZeroMQ subscriber
(c) baseline: a service polling the table every 1 s
For (a) two clocks are shown: from the INSERT's commit acknowledgement (the notification may
already be on its way: a lower bound) and from the start of the INSERT statement (an upper
bound that includes the insert and the commit itself).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from common import (
    peak_rss_mb,
    percentile,
    print_table,
    service_environment,
    start_broker,
    throwaway_database,
)
from smsbus.bus import Subscriber, notify_status_update
from smsbus.config import BusSettings

INSERT = "INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31612345678', 'bench') RETURNING id"


def bus_of(env: dict[str, str]) -> BusSettings:
    return BusSettings(
        notify_port=int(env["SMSBUS_BUS_NOTIFY_PORT"]),
        publish_port=int(env["SMSBUS_BUS_PUBLISH_PORT"]),
        subscribe_port=int(env["SMSBUS_BUS_SUBSCRIBE_PORT"]),
    )


def wait_subscribed(bus: BusSettings, subscriber: Subscriber) -> None:
    while True:
        notify_status_update([0], bus)
        if subscriber.receive(0.1) is not None:
            time.sleep(0.1)
            subscriber.drain()
            return


def measure_notify(url: str, subscriber: Subscriber, samples: int) -> tuple[list[float], list[float]]:
    from_commit, from_start = [], []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(samples):
            started = time.perf_counter()
            conn.execute(INSERT)
            committed = time.perf_counter()
            while True:
                got = subscriber.receive(2.0)
                if got is None:
                    raise SystemExit("a NOTIFY wake-up was lost")
                if got.topic == "status":
                    break
            woke = time.perf_counter()
            from_commit.append(woke - committed)
            from_start.append(woke - started)
    return from_commit, from_start


def measure_udp(bus: BusSettings, subscriber: Subscriber, samples: int) -> list[float]:
    latencies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for i in range(1, samples + 1):
            started = time.perf_counter()
            udp.sendto(f"status {i}\n".encode(), (bus.host, bus.notify_port))
            while True:
                got = subscriber.receive(2.0)
                if got is None:
                    raise SystemExit("a UDP wake-up was lost")
                if i in got.ids:
                    break
            latencies.append(time.perf_counter() - started)
    return latencies


def measure_polling(url: str, samples: int, interval_s: float = 1.0, spread_s: float = 10.0) -> list[float]:
    """Inserts at random moments over spread_s; a poller looks every interval_s."""
    committed_at: dict[int, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        last_id = 0
        with psycopg.connect(url, autocommit=True) as conn:
            while not done.is_set() or len(latencies) < samples:
                rows = conn.execute("SELECT id FROM messages WHERE id > %s ORDER BY id", (last_id,)).fetchall()
                now = time.perf_counter()
                for (message_id,) in rows:
                    if message_id in committed_at:
                        latencies.append(now - committed_at[message_id])
                    last_id = message_id
                time.sleep(interval_s)

    with psycopg.connect(url, autocommit=True) as conn:
        start = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
        assert start is not None
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        moments = sorted(random.uniform(0, spread_s) for _ in range(samples))
        began = time.perf_counter()
        for moment in moments:
            time.sleep(max(0.0, began + moment - time.perf_counter()))
            row = conn.execute(INSERT).fetchone()
            assert row is not None
            committed_at[row[0]] = time.perf_counter()
        done.set()
        poller.join(spread_s + 5)
    return latencies


def send_udp(port: int, rate: int, seconds: float, first_id: int, result: Any) -> None:
    """Paced in bursts of 50; in its own process so it has the other core."""
    count = int(rate * seconds)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        began = time.perf_counter()
        for i in range(count):
            if i % 50 == 0:
                time.sleep(max(0.0, began + i / rate - time.perf_counter()))
            udp.sendto(b"status %d" % (first_id + i), ("127.0.0.1", port))
        result[0], result[1] = count, time.perf_counter() - began


def broker_udp_in(env: dict[str, str]) -> float:
    port = env["SMSBUS_BROKER_METRICS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    for line in text.splitlines():
        if line.startswith('smsbus_broker_notifications_in_total{source="udp"}'):
            return float(line.split()[-1])
    return 0.0


def measure_udp_throughput(
    env: dict[str, str], bus: BusSettings, subscriber: Subscriber, rate: int, seconds: float, first_id: int
) -> tuple[int, float, int, int]:
    """(sent, achieved send rate, counted by the broker, distinct ids the subscriber received)."""
    before = broker_udp_in(env)
    sent = multiprocessing.Array("d", 2)
    sender = multiprocessing.Process(target=send_udp, args=(bus.notify_port, rate, seconds, first_id, sent))
    sender.start()
    received: set[int] = set()
    deadline = time.monotonic() + seconds + 30
    while time.monotonic() < deadline:
        got = subscriber.receive(0.5)
        if got is not None:
            received.update(i for i in got.ids if i >= first_id)
        elif not sender.is_alive():
            break
    sender.join()
    return int(sent[0]), sent[0] / sent[1], int(broker_udp_in(env) - before), len(received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--udp-seconds", type=float, default=2.0)
    parser.add_argument("--rates", default="25000,50000,100000", help="UDP datagrams/s to try")
    args = parser.parse_args()

    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        env = service_environment(url, Path(tmp) / "var")
        env["SMSBUS_BROKER_MAX_LISTENER_BUFFER_BYTES"] = "1048576"
        broker = start_broker(env, Path(tmp))
        bus = bus_of(env)
        subscriber = Subscriber(bus, ["status"])
        wait_subscribed(bus, subscriber)

        notify_commit, notify_start = measure_notify(url, subscriber, args.samples)
        udp = measure_udp(bus, subscriber, args.samples)
        polled = measure_polling(url, args.samples)
        ms = 1000.0
        print_table(
            f"Wake-up latency, {args.samples} samples each (ms)",
            ["path", "p50", "p99", "max"],
            [
                ["(a) NOTIFY -> broker -> ZeroMQ, from commit", *(v * ms for v in summary(notify_commit))],
                ["(a) NOTIFY -> broker -> ZeroMQ, from INSERT start", *(v * ms for v in summary(notify_start))],
                ["(b) UDP -> broker -> ZeroMQ", *(v * ms for v in summary(udp))],
                ["(c) polling every 1 s (baseline)", *(v * ms for v in summary(polled))],
            ],
        )
        print(
            f"ratio baseline/(a) at p50: {percentile(polled, 0.5) / percentile(notify_commit, 0.5):,.0f}x;"
            f" baseline/(b): {percentile(polled, 0.5) / percentile(udp, 0.5):,.0f}x"
        )

        rows = []
        first_id = 10_000_000
        for rate in (int(r) for r in args.rates.split(",")):
            sent, achieved, counted, delivered = measure_udp_throughput(
                env, bus, subscriber, rate, args.udp_seconds, first_id
            )
            first_id += sent + 1
            rows.append([rate, achieved, sent, counted, delivered, f"{100 * (sent - delivered) / sent:.2f}%"])
        print_table(
            f"UDP notifications through the broker ({args.udp_seconds:g} s per rate)",
            ["offered/s", "achieved/s", "sent", "broker counted", "subscriber got", "lost"],
            rows,
        )
        print(f"\nbroker peak RSS: {peak_rss_mb(broker.process.pid):.1f} MB; bench process: {peak_rss_mb():.1f} MB")
        subscriber.close()
        broker.stop()


def summary(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 0.5), percentile(values, 0.99), max(values)


if __name__ == "__main__":
    main()
