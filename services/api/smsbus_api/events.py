"""GET /v1/events: Server-Sent Events fed by the ZeroMQ bus (SPEC §10).

One subscriber per process feeds every client. Bus notifications (`status`, `nonstatus`,
`config.<table>`, `health.<channel>`) are passed on as `notification` events; a client that
names messages (`?messages=17,18`) also gets a `message` event with the row's statuses each
time one of them changes (the database's notifications carry no ids, so on each `status`
wake-up the api reads the watched rows by primary key and sends what changed).
Each event has an id; `Last-Event-ID` replays what the client missed within
`events_resume_window_s` (ids are this process's own). A client whose queue of unsent events
reaches `events_client_queue` is dropped: memory per client stays bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Annotated, Any

import msgspec
import prometheus_client
import zmq
import zmq.asyncio
from litestar import Request, get
from litestar.params import Parameter
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from smsbus.bus import CONFIG, NONSTATUS, RECONNECT_INTERVAL_MAX_MS, RECONNECT_INTERVAL_MS, STATUS, decode_frames
from smsbus.channel_health import HEALTH
from smsbus.config import BusSettings
from smsbus_api.auth import scope
from smsbus_api.database import Database
from smsbus_api.problems import ProblemError

log = logging.getLogger("api")

TOPICS = (STATUS, NONSTATUS, CONFIG, HEALTH)
MAX_WATCHED_PER_CLIENT = 1000
# a comment line this often: proxies keep the stream open, and a vanished client is noticed
KEEPALIVE_S = 15.0
MAX_REMEMBERED_EVENTS = 100_000

CLIENTS = prometheus_client.Gauge("smsbus_api_event_clients", "Clients connected to /v1/events")
DROPPED = prometheus_client.Counter(
    "smsbus_api_event_clients_dropped_total", "Event clients dropped because they did not keep up"
)
EVENTS = prometheus_client.Counter("smsbus_api_events_total", "Events sent out by /v1/events, by kind", ["kind"])

SELECT_WATCHED = """
SELECT id, status, ack_status, trigger_status, channel, error, updated_at
FROM messages WHERE id = ANY(%(ids)s)
"""


class MessageState(msgspec.Struct, frozen=True):
    """What a `message` event carries: the statuses of one watched message."""

    id: int
    status: str
    ack_status: str
    trigger_status: str
    channel: str | None
    error: str | None
    updated_at: datetime


class Notification(msgspec.Struct, frozen=True):
    """What a `notification` event carries: a bus notification (ids when the announcer gave them)."""

    topic: str
    ids: tuple[int, ...]


class Event(msgspec.Struct, frozen=True):
    id: int
    at: float
    kind: str  # "notification" or "message"
    data: bytes
    topic: str = ""
    message_id: int = 0


class Client:
    def __init__(self, topics: tuple[str, ...], messages: frozenset[int], queue_size: int, receive: Any) -> None:
        self.topics = topics
        self.messages = messages
        self.queue: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        # the server's receive callable: with uvicorn, it leads to the connection to cut
        self.receive = receive
        self.dropped = False

    def disconnect(self) -> None:
        """Cut the connection: a stream blocked writing to a client that does not read ends as
        if the client had left. (uvicorn's request cycle holds the transport; any other
        server gets its request cancelled, which it logs.)"""
        transport = getattr(getattr(self.receive, "__self__", None), "transport", None)
        if transport is not None:
            transport.abort()
        elif self.task is not None:
            self.task.cancel()


def topic_prefixes(topic: str) -> list[str]:
    """The filters a topic matches, whole dotted parts: config.bench -> config, config.bench."""
    parts = topic.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


class EventHub:
    """The bus subscriber, the recent events (for resume) and the connected clients."""

    def __init__(self, bus: BusSettings, db: Database, resume_window_s: float, queue_size: int) -> None:
        self.bus = bus
        self.db = db
        self.resume_window_s = resume_window_s
        self.queue_size = queue_size
        self.clients: set[Client] = set()
        # who wants what, so that an event costs its own readers only, not every client
        self.by_topic: collections.defaultdict[str, set[Client]] = collections.defaultdict(set)
        self.by_message: collections.defaultdict[int, set[Client]] = collections.defaultdict(set)
        self.recent: collections.deque[Event] = collections.deque(maxlen=MAX_REMEMBERED_EVENTS)
        self.last_id = 0
        self.known: dict[int, MessageState] = {}
        self.watched: collections.Counter[int] = collections.Counter()
        self.context = zmq.asyncio.Context()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="events")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.disconnect_all()
        self.context.destroy(linger=0)

    def disconnect_all(self) -> None:
        """On a stop: open streams would hold the server's graceful shutdown until they end."""
        for client in list(self.clients):
            client.disconnect()

    async def run(self) -> None:
        socket = self.context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_INTERVAL_MS)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_INTERVAL_MAX_MS)
        for topic in TOPICS:
            socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        socket.connect(f"tcp://{self.bus.host}:{self.bus.subscribe_port}")
        try:
            while True:
                notification = decode_frames(await socket.recv_multipart())
                self.publish("notification", msgspec.json.encode(Notification(notification.topic, notification.ids)),
                             topic=notification.topic)
                if notification.topic in (STATUS, NONSTATUS) and self.watched:
                    await self.look_at_watched()
        finally:
            socket.close(linger=0)

    async def look_at_watched(self) -> None:
        try:
            states = await self.read_states(self.watched)
        except Exception as e:  # the database away: the next wake-up looks again
            log.warning("events could not read watched messages: %s", type(e).__name__)
            return
        for state in states:
            if self.known.get(state.id) != state:
                self.known[state.id] = state
                self.publish("message", msgspec.json.encode(state), message_id=state.id)

    async def read_states(self, ids: Iterable[int]) -> list[MessageState]:
        async with self.db.pool.connection() as conn:
            rows = await (await conn.execute(SELECT_WATCHED, {"ids": list(ids)})).fetchall()
        return [msgspec.convert(row, MessageState) for row in rows]

    def publish(self, kind: str, data: bytes, *, topic: str = "", message_id: int = 0) -> None:
        self.last_id += 1
        event = Event(self.last_id, time.monotonic(), kind, data, topic, message_id)
        self.recent.append(event)
        horizon = event.at - self.resume_window_s
        while self.recent and self.recent[0].at < horizon:
            self.recent.popleft()
        for client in self.readers(event):
            self.deliver(client, event)

    def readers(self, event: Event) -> set[Client]:
        if event.kind == "message":
            return set(self.by_message.get(event.message_id, ()))
        found: set[Client] = set()
        for prefix in topic_prefixes(event.topic):
            found.update(self.by_topic.get(prefix, ()))
        return found

    def deliver(self, client: Client, event: Event) -> None:
        if client.dropped:
            return
        try:
            client.queue.put_nowait(event)
        except asyncio.QueueFull:
            # it stopped reading: end its stream rather than hold events for it without bound
            client.dropped = True
            DROPPED.inc()
            log.warning("dropped a slow events client queued=%d", client.queue.qsize())
            client.disconnect()

    def missed(self, client: Client, last_event_id: int) -> list[Event] | None:
        """What the client missed since last_event_id; None when that is beyond the window."""
        if last_event_id >= self.last_id:
            return []
        if not self.recent or self.recent[0].id > last_event_id + 1:
            return None
        return [e for e in self.recent if e.id > last_event_id and client in self.readers(e)]

    def attach(self, client: Client) -> None:
        self.clients.add(client)
        for topic in client.topics:
            self.by_topic[topic].add(client)
        for message_id in client.messages:
            self.by_message[message_id].add(client)
        self.watched.update(client.messages)
        CLIENTS.set(len(self.clients))

    def detach(self, client: Client) -> None:
        self.clients.discard(client)
        for topic in client.topics:
            self.by_topic[topic].discard(client)
            if not self.by_topic[topic]:
                del self.by_topic[topic]
        self.watched.subtract(client.messages)
        for message_id in client.messages:
            self.by_message[message_id].discard(client)
            if self.watched[message_id] <= 0:
                del self.watched[message_id]
                del self.by_message[message_id]
                self.known.pop(message_id, None)
        CLIENTS.set(len(self.clients))


def message_of(event: Event) -> ServerSentEventMessage:
    EVENTS.labels(event.kind).inc()
    return ServerSentEventMessage(data=event.data.decode(), event=event.kind, id=event.id)


async def stream(hub: EventHub, client: Client, last_event_id: int | None) -> AsyncIterator[ServerSentEventMessage]:
    hub.attach(client)
    try:
        if last_event_id is not None:
            missed = hub.missed(client, last_event_id)
            if missed is None:
                yield ServerSentEventMessage(data="events since that id are gone; read the current state",
                                             event="reset", id=hub.last_id)
            for event in missed or ():
                yield message_of(event)
        if client.messages:
            for state in await hub.read_states(client.messages):
                hub.known.setdefault(state.id, state)
                yield ServerSentEventMessage(data=msgspec.json.encode(state).decode(), event="message", id=hub.last_id)
        while not client.dropped:
            try:
                event = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ServerSentEventMessage(comment="keepalive")
                continue
            yield message_of(event)
    finally:
        hub.detach(client)


def parse_ids(text: str | None) -> frozenset[int]:
    if not text:
        return frozenset()
    try:
        ids = frozenset(int(part) for part in text.split(","))
    except ValueError:
        raise ProblemError(400, "messages: expected comma-separated message ids", field="messages") from None
    if len(ids) > MAX_WATCHED_PER_CLIENT or any(not 0 < i < 2**63 for i in ids):
        raise ProblemError(400, f"messages: 1 to {MAX_WATCHED_PER_CLIENT} positive ids", field="messages")
    return ids


@get("/v1/events", opt=scope("read"), summary="Server-Sent Events: bus notifications and watched messages' statuses")
async def events(
    request: Request[Any, Any, Any],
    topics: Annotated[str | None, Parameter(
        description="comma-separated topics, each with those below it (default: all)", max_length=1000)] = None,
    messages: Annotated[str | None, Parameter(
        description="comma-separated message ids whose status changes to send", max_length=20_000)] = None,
    last_event_id: Annotated[str | None, Parameter(header="Last-Event-ID", required=False, max_length=20)] = None,
) -> ServerSentEvent:
    hub: EventHub = request.app.state.events
    wanted = tuple(t for t in (topics or ",".join(TOPICS)).split(",") if t)
    if topics is not None and not all(t.replace(".", "").replace("-", "").replace("_", "").isalnum() for t in wanted):
        raise ProblemError(400, "topics: expected comma-separated topic prefixes, e.g. status,config", field="topics")
    resume = None
    if last_event_id:
        if not last_event_id.isdigit():
            raise ProblemError(400, "Last-Event-ID: expected the id of an event", field="Last-Event-ID")
        resume = int(last_event_id)
    client = Client(wanted, parse_ids(messages), hub.queue_size, request.receive)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return ServerSentEvent(stream(hub, client, resume), headers=headers)


ROUTES = [events]
