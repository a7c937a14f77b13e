"""GET /v1/events over real HTTP, fed by a real broker: a watched message's status changes
arrive within 50 ms of their commit; a client that stops reading is dropped, the api lives on."""

from __future__ import annotations

import contextlib
import queue
import socket
import statistics
import threading
import time
from typing import Any

import httpx
import msgspec
import psycopg
import pytest

from smsbus.bus import Publisher
from tests.peers.api import Api
from tests.peers.processes import ServiceProcess, environment_bus

SLOW_CLIENT_QUEUE = 20


@pytest.fixture
def api_settings() -> dict[str, str]:
    return {"events_client_queue": str(SLOW_CLIENT_QUEUE)}


def read_events(api: Api, params: dict[str, str], into: queue.Queue[tuple[float, str, Any]]) -> threading.Thread:
    """A thread putting (arrival time, event name, data) for every event of one stream."""

    def run() -> None:
        with api.client() as client, client.stream("GET", "/v1/events", params=params, timeout=30) as response:
            assert response.status_code == 200
            name = ""
            with contextlib.suppress(httpx.RemoteProtocolError):  # the api stops at the test's end
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        into.put((time.monotonic(), name, msgspec.json.decode(line[5:].strip())))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def next_event(events: queue.Queue[tuple[float, str, Any]], name: str, status: str | None = None) -> tuple[float, Any]:
    deadline = time.monotonic() + 5
    while True:
        arrived, event, data = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if event == name and (status is None or data["status"] == status):
            return arrived, data


def test_a_watched_message_status_change_arrives_within_50_ms(
    broker: ServiceProcess, api: Api, conn: psycopg.Connection[Any]
) -> None:
    row = conn.execute("INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31612345678', 'x') "
                       "RETURNING id").fetchone()
    assert row is not None
    message_id = row["id"]
    events: queue.Queue[tuple[float, str, Any]] = queue.Queue()
    read_events(api, {"messages": str(message_id), "topics": "none"}, events)
    assert next_event(events, "message")[1]["status"] == "QUEUED"
    latencies = []
    for status in ("SENDING", "QUEUED", "SENDING", "SENT", "DELIVERED"):
        conn.execute("UPDATE messages SET status = %s WHERE id = %s", [status, message_id])
        committed = time.monotonic()
        arrived, _ = next_event(events, "message", status)
        latencies.append(arrived - committed)
    print(f"latencies ms: {[round(s * 1000, 1) for s in latencies]}")
    assert statistics.median(latencies) < 0.050, latencies


def test_a_client_that_stops_reading_is_dropped_and_the_api_lives_on(
    broker: ServiceProcess, api: Api, service_env: dict[str, str]
) -> None:
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", int(api.url.rsplit(":", 1)[1])))
    stalled.sendall(f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.keys['read']}\r\n\r\n".encode())
    mark = api.process.log_mark()
    publisher = Publisher(environment_bus(service_env))
    time.sleep(0.3)  # the subscription reaches the broker
    try:
        deadline = time.monotonic() + 20
        sent = 0
        while "dropped a slow events client" not in api.process.log()[mark:]:
            assert time.monotonic() < deadline, f"not dropped after {sent} notifications:\n{api.process.log()}"
            for _ in range(200):
                publisher.publish(f"config.padding_{sent:06d}_" + "x" * 60)
                sent += 1
            time.sleep(0.02)
    finally:
        publisher.close()
        stalled.close()
    with api.client("read") as client:
        assert client.get("/healthz").status_code == 200
        assert "smsbus_api_event_clients_dropped_total 1.0" in client.get("/metrics").text
