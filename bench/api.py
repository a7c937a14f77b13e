"""The api's throughput and latency (issue 10), in one run on this machine:

    .venv/bin/python bench/api.py [--seconds 5] [--connections 16] [--batches 20] [--sse-clients 1000]

(a) single-message POST /v1/messages over keep-alive connections from a load generator in its
    own process: requests/s and p50/p99, against the same INSERTs made directly with psycopg
    from the same load generator (the baseline); then p50/p99 at 1,000 requests/s offered.
(b) batch POSTs of 1,000 messages: messages/s.
(c) SSE clients connected to /v1/events while (a) runs again: the latency of a bus
    notification to every client (p50/p99), and the api's peak RSS.
PostgreSQL runs with synchronous_commit off (see main).
The load generator speaks HTTP/1.1 itself on raw sockets: a client library would cost more
CPU than the server on these 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from common import (
    peak_rss_mb,
    percentile,
    print_table,
    service_environment,
    start_broker,
    start_service,
    throwaway_database,
)
from smsbus import access
from smsbus.bus import Publisher
from smsbus.queue import INSERT_MESSAGE_ONCE
from tests.peers.processes import environment_bus, free_port

MESSAGE = {"to_address": "+31612345678", "body": "bench message"}


def request_bytes(path: str, key: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def post_loop(port: int, request: bytes, until: float, latencies: list[float], rate: float | None,
                    start: float, index: int, connections: int) -> None:
    """One keep-alive connection; with `rate`, requests are sent on a schedule (open loop) and
    latency counts from the scheduled time, so a stall is not hidden by waiting."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    while True:
        scheduled = start + (sent * connections + index) / rate if rate else time.perf_counter()
        if scheduled >= until:
            break
        if rate:
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        writer.write(request)
        status = await read_response(reader)
        assert status in (200, 201), status
        latencies.append(time.perf_counter() - scheduled)
        sent += 1
    writer.close()


def run_http(port: int, request: bytes, seconds: float, connections: int, rate: float | None, out: Any) -> None:
    async def main() -> list[float]:
        latencies: list[float] = []
        start = time.perf_counter()
        until = start + seconds
        await asyncio.gather(*(post_loop(port, request, until, latencies, rate, start, i, connections)
                               for i in range(connections)))
        return latencies

    out.put(asyncio.run(main()))


def run_direct(url: str, seconds: float, connections: int, out: Any) -> None:
    """The baseline: the api's own INSERT statement, straight from psycopg."""
    params = {"direction": "out", "to_address": MESSAGE["to_address"], "from_address": None,
              "body": MESSAGE["body"], "channel": None, "scheduled_at": None, "properties": Jsonb({}),
              "client_ref": None, "status_callback": None, "api_key_id": None}

    async def one(until: float, latencies: list[float]) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while time.perf_counter() < until:
                began = time.perf_counter()
                await (await conn.execute(INSERT_MESSAGE_ONCE, params)).fetchone()
                latencies.append(time.perf_counter() - began)

    async def main() -> list[float]:
        latencies: list[float] = []
        until = time.perf_counter() + seconds
        await asyncio.gather(*(one(until, latencies) for _ in range(connections)))
        return latencies

    out.put(asyncio.run(main()))


def in_process(target: Any, *args: Any) -> list[float]:
    out: Any = multiprocessing.Queue()
    process = multiprocessing.Process(target=target, args=(*args, out))
    process.start()
    result: list[float] = out.get()
    process.join()
    return result


def run_sse_clients(port: int, key: str, clients: int, seconds: float, ready: Any, out: Any) -> None:
    """`clients` streams of /v1/events?topics=config.bench; each notification's id is its
    send time in microseconds, so every client measures its own latency."""

    async def client(latencies: list[float], connected: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /v1/events?topics=config.bench HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {key}\r\n\r\n"
                     .encode())
        await reader.readuntil(b"\r\n\r\n")
        connected.append(1)
        until = time.time() + seconds
        while time.time() < until:
            try:
                line = await asyncio.wait_for(reader.readline(), max(0.01, until - time.time()))
            except TimeoutError:
                break
            if line.startswith(b"data:") and b'"ids"' in line:
                sent_us = json.loads(line[5:])["ids"][0]
                latencies.append(time.time() - sent_us / 1e6)
        writer.close()

    async def main() -> list[float]:
        latencies: list[float] = []
        connected: list[int] = []
        tasks = [asyncio.create_task(client(latencies, connected)) for _ in range(clients)]
        while len(connected) < clients:
            await asyncio.sleep(0.05)
        ready.set()
        await asyncio.gather(*tasks)
        return latencies

    out.put(asyncio.run(main()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--sse-clients", type=int, default=1000)
    args = parser.parse_args()

    # commits do not wait for the disk: the figures are the api's and PostgreSQL's CPU, not the
    # disk's flush rate (which the direct baseline and the api share alike)
    with throwaway_database({"synchronous_commit": "off"}) as url, tempfile.TemporaryDirectory() as tmp:
        env = service_environment(url, Path(tmp) / "var")
        port = free_port()
        env.update(SMSBUS_API_PORT=str(port), SMSBUS_BROKER_METRICS_PORT="0")
        with psycopg.connect(url) as conn:
            key = access.create_api_key(conn, "bench", ["send", "read"]).key
        broker = start_broker(env, Path(tmp))
        api = start_service(["smsbus-api"], env, Path(tmp) / "api.log")
        api.wait_for_port(port)
        try:
            single = request_bytes("/v1/messages", key, json.dumps(MESSAGE).encode())
            in_process(run_http, port, single, 1.0, args.connections, None)  # warm up
            direct = in_process(run_direct, url, args.seconds, args.connections)
            over_http = in_process(run_http, port, single, args.seconds, args.connections, None)
            paced = in_process(run_http, port, single, args.seconds, 32, 1000.0)
            rows: list[list[Any]] = [
                ["direct psycopg INSERT", args.connections, len(direct) / args.seconds,
                 percentile(direct, 0.5) * 1000, percentile(direct, 0.99) * 1000],
                ["POST /v1/messages", args.connections, len(over_http) / args.seconds,
                 percentile(over_http, 0.5) * 1000, percentile(over_http, 0.99) * 1000],
                ["POST at 1,000/s offered", 32, len(paced) / args.seconds,
                 percentile(paced, 0.5) * 1000, percentile(paced, 0.99) * 1000],
            ]
            print_table("(a) single messages", ["load", "connections", "req/s", "p50 ms", "p99 ms"], rows)
            print(f"POST rate / direct rate: {len(over_http) / max(1, len(direct)):.0%}")

            batch = request_bytes("/v1/messages", key, json.dumps([MESSAGE] * 1000).encode())
            began = time.perf_counter()
            batch_latencies = in_process(run_http, port, batch, args.batches / 10, 4, 10.0)
            elapsed = time.perf_counter() - began
            print_table("(b) batches of 1,000", ["batches", "messages/s", "p50 ms", "p99 ms"],
                        [[len(batch_latencies), len(batch_latencies) * 1000 / elapsed,
                          percentile(batch_latencies, 0.5) * 1000, percentile(batch_latencies, 0.99) * 1000]])

            ready: Any = multiprocessing.Event()
            out: Any = multiprocessing.Queue()
            listening = args.seconds + 3
            sse = multiprocessing.Process(target=run_sse_clients,
                                          args=(port, key, args.sse_clients, listening, ready, out))
            sse.start()
            ready.wait(60)
            publisher = Publisher(environment_bus(env))
            load: Any = multiprocessing.Queue()
            generator = multiprocessing.Process(target=run_http, args=(port, single, args.seconds,
                                                                         args.connections, None, load))
            generator.start()
            for _ in range(int(args.seconds * 10)):
                publisher.publish("config.bench", [time.time_ns() // 1000])
                time.sleep(0.1)
            under_sse = load.get()
            generator.join()
            latencies = out.get()
            sse.join()
            publisher.close()
            print_table(f"(c) {args.sse_clients} SSE clients while (a) runs",
                        ["POST req/s", "events received", "event p50 ms", "event p99 ms", "api peak RSS MB"],
                        [[len(under_sse) / args.seconds, len(latencies), percentile(latencies, 0.5) * 1000,
                          percentile(latencies, 0.99) * 1000, peak_rss_mb(api.process.pid)]])
        finally:
            api.stop()
            broker.stop()


if __name__ == "__main__":
    main()
