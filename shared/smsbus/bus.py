"""Wake-ups: the ZeroMQ topics services publish and subscribe to, and port 16725.

Wire format on port 16725 (UDP in, TCP out), one notification per datagram or line:

    <topic>[ <id>,<id>,...]\\n        e.g. "status 17,18,19\\n" or "nonstatus\\n"

Programs may send the topics `status` and `nonstatus`; TCP listeners receive every topic
(`status`, `nonstatus`, `config.<table>`, `outgoing.<channel>`, ...). A notification is a hint
to look at the table, never the data itself: the poll interval stays the guarantee.
"""

from __future__ import annotations

import functools
import re
import socket
import time
from collections.abc import Iterable, Iterator

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from smsbus.bus_keys import secure_client
from smsbus.config import BusSettings, load
from smsbus.errors import MalformedNotification

STATUS = "status"
NONSTATUS = "nonstatus"
CONFIG = "config"
OUTGOING = "outgoing"
# the webhook outbox has callbacks to deliver (its trigger's NOTIFY)
WEBHOOKS = "webhooks"
# a campaign was made, or changed state or pacing (wakes the campaigns service)
CAMPAIGNS = "campaigns"
# what an outside program may announce through UDP or a TCP line
ANNOUNCEABLE = frozenset({STATUS, NONSTATUS})

MAX_LINE_BYTES = 8192
# the largest ZeroMQ message a socket accepts (zmq.MAXMSGSIZE); a peer sending more is
# disconnected. Generous: a service may announce thousands of ids at once
MAX_FRAME_BYTES = 1_048_576
TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")
IDS_PATTERN = re.compile(r"^[0-9]{1,19}(,[0-9]{1,19})*$")


def outgoing_topic(channel: str) -> str:
    return f"{OUTGOING}.{channel}"


def config_topic(table: str) -> str:
    return f"{CONFIG}.{table}"


class Notification(msgspec.Struct, frozen=True):
    topic: str
    ids: tuple[int, ...] = ()

    def to_line(self) -> bytes:
        if self.ids:
            return f"{self.topic} {','.join(map(str, self.ids))}\n".encode()
        return f"{self.topic}\n".encode()


def parse_notification(data: bytes, allowed_topics: Iterable[str] | None = ANNOUNCEABLE) -> Notification:
    """One datagram or line; MalformedNotification says what was wrong."""
    if len(data) > MAX_LINE_BYTES:
        raise MalformedNotification(f"longer than {MAX_LINE_BYTES} bytes")
    try:
        text = data.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise MalformedNotification("not ASCII text") from None
    topic, _, ids_text = text.partition(" ")
    if not TOPIC_PATTERN.match(topic):
        raise MalformedNotification(f"bad topic {topic[:40]!r}")
    if allowed_topics is not None and topic not in allowed_topics:
        raise MalformedNotification(f"unknown topic {topic!r} (expected status or nonstatus)")
    if not ids_text:
        return Notification(topic)
    if not IDS_PATTERN.match(ids_text):
        raise MalformedNotification(f"bad ids {ids_text[:40]!r} (expected comma-separated numbers)")
    return Notification(topic, tuple(int(i) for i in ids_text.split(",")))


def encode_frames(notification: Notification) -> list[bytes]:
    return [notification.topic.encode(), ",".join(map(str, notification.ids)).encode()]


def decode_frames(frames: list[bytes]) -> Notification:
    """ValueError for anything but a topic and numbers: a topic becomes a line for the TCP
    listeners, so a newline in it would let a publisher write lines of its own."""
    topic = frames[0].decode("ascii")
    if not TOPIC_PATTERN.match(topic):
        raise ValueError(f"bad topic {topic[:40]!r}")
    ids = tuple(int(i) for i in frames[1].split(b",")) if len(frames) > 1 and frames[1] else ()
    return Notification(topic, ids)


@functools.cache
def default_bus() -> BusSettings:
    return load().bus


# -- for integrators: UDP in ------------------------------------------------------------

# one datagram stays well under the 65,507-byte UDP limit and the broker's line limit
IDS_PER_DATAGRAM = 400


def _announce(topic: str, ids: Iterable[int], bus: BusSettings | None) -> None:
    bus = bus or default_bus()
    id_list = list(ids)
    batches = [id_list[i : i + IDS_PER_DATAGRAM] for i in range(0, len(id_list), IDS_PER_DATAGRAM)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for batch in batches or [[]]:
            udp.sendto(Notification(topic, tuple(batch)).to_line(), (bus.host, bus.notify_port))


def notify_status_update(ids: Iterable[int] = (), bus: BusSettings | None = None) -> None:
    """Announce new messages or a change of status/trigger_status/ack_status (one datagram per batch)."""
    _announce(STATUS, ids, bus)


def notify_non_status_update(ids: Iterable[int] = (), bus: BusSettings | None = None) -> None:
    """Announce any other change to messages."""
    _announce(NONSTATUS, ids, bus)


# -- for integrators: TCP out -----------------------------------------------------------


class Listener:
    """Connects to the broker's TCP port and yields one Notification per line.

    Reconnects by itself (the broker may restart); nothing is replayed, so after a
    reconnect look at the table once.
    """

    def __init__(self, bus: BusSettings | None = None, reconnect_delay_s: float = 0.5) -> None:
        self.bus = bus or default_bus()
        self.reconnect_delay_s = reconnect_delay_s
        self._socket: socket.socket | None = None
        self._buffer = b""

    def connect(self) -> None:
        self.close()
        self._socket = socket.create_connection((self.bus.host, self.bus.notify_port), timeout=5)
        self._buffer = b""

    def receive(self, timeout_s: float | None = None) -> Notification | None:
        """The next notification, or None when timeout_s passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if sep:
                self._buffer = rest
                try:
                    return parse_notification(line, allowed_topics=None)
                except MalformedNotification:
                    continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                return None
            try:
                if self._socket is None:
                    self.connect()
                assert self._socket is not None
                self._socket.settimeout(remaining)
                chunk = self._socket.recv(65536)
            except TimeoutError:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                time.sleep(self.reconnect_delay_s)
                continue
            self._buffer += chunk

    def __iter__(self) -> Iterator[Notification]:
        while True:
            notification = self.receive()
            if notification is not None:
                yield notification

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Listener:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- inside: ZeroMQ ---------------------------------------------------------------------

RECONNECT_INTERVAL_MS = 100
RECONNECT_INTERVAL_MAX_MS = 1000


def _tune(sock: zmq.Socket[bytes]) -> None:
    sock.setsockopt(zmq.LINGER, 100)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_INTERVAL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_INTERVAL_MAX_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)


class Publisher:
    """Publishes through the broker's XSUB. Publish after commit, never before."""

    def __init__(self, bus: BusSettings, context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self._socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        _tune(self._socket)
        secure_client(self._socket, bus.curve_dir)
        self._socket.connect(f"tcp://{bus.host}:{bus.publish_port}")

    def publish(self, topic: str, ids: Iterable[int] = ()) -> None:
        # a full queue (broker away) drops the hint: the poll interval covers it
        try:
            self._socket.send_multipart(encode_frames(Notification(topic, tuple(ids))), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self._socket.close()


class Subscriber:
    """Receives the topics it was given (prefixes) from the broker's XPUB."""

    def __init__(
        self,
        bus: BusSettings,
        topics: Iterable[str],
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        self.socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        _tune(self.socket)
        secure_client(self.socket, bus.curve_dir)
        for topic in topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        # tells when a (re)connection to the broker completes: whatever was announced while
        # we were apart is lost, so the service should look at the table once
        self.connections = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.socket.connect(f"tcp://{bus.host}:{bus.subscribe_port}")

    def drain_connections(self) -> int:
        """How many (re)connections to the broker completed since the last call."""
        count = 0
        while True:
            try:
                recv_monitor_message(self.connections, zmq.NOBLOCK)
            except zmq.Again:
                return count
            count += 1

    def drain(self) -> list[Notification]:
        """Everything waiting, without blocking."""
        received: list[Notification] = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return received
            received.append(decode_frames(frames))

    def receive(self, timeout_s: float) -> Notification | None:
        if self.socket.poll(int(timeout_s * 1000)):
            return decode_frames(self.socket.recv_multipart())
        return None

    def close(self) -> None:
        self.socket.disable_monitor()
        self.connections.close()
        self.socket.close()
