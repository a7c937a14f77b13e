"""The notification broker (SPEC §7): turns every change into an instant wake-up.

In: PostgreSQL NOTIFY on channel `smsbus`, UDP datagrams on port 16725, TCP lines from
connected programs, and what services publish to the ZeroMQ XSUB. Out: the ZeroMQ XPUB that
services subscribe to, and one line per notification to every TCP listener. Owns no status.
One thread owns every socket; the main loop's poller serves them all.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec
import prometheus_client
import zmq
from zmq.auth.thread import ThreadAuthenticator

from smsbus.bus import (
    IDS_PER_DATAGRAM,
    MAX_FRAME_BYTES,
    MAX_LINE_BYTES,
    STATUS,
    TOPIC_PATTERN,
    Notification,
    config_topic,
    decode_frames,
    encode_frames,
    parse_notification,
)
from smsbus.bus_keys import CLIENTS_DIR, secure_server
from smsbus.config import OptionalPort, Settings
from smsbus.errors import ConfigError, MalformedNotification
from smsbus.loop import Connection, LoopSettings, Watch, prepare, run

SERVICE = "broker"
LISTEN_CHANNEL = "smsbus"
CONFIG_TABLES = ("channels", "routing_rules", "blocking_rules", "triggers")
# datagrams read per wake-up before the other sockets get a turn
UDP_BATCH = 256
# fixed (no autotuning): what a stalled listener can hold in the kernel stays bounded
LISTENER_SEND_BUFFER_BYTES = 262_144
# descriptors the broker needs besides its listeners (sockets, ZeroMQ, database, metrics)
OWN_DESCRIPTORS = 256

log = logging.getLogger(SERVICE)

NOTIFICATIONS_IN = prometheus_client.Counter(
    "smsbus_broker_notifications_in_total", "Notifications received", ["source"]
)
NOTIFICATIONS_OUT = prometheus_client.Counter(
    "smsbus_broker_notifications_out_total", "Notifications sent on", ["sink"]
)
MALFORMED = prometheus_client.Counter(
    "smsbus_broker_malformed_total", "Datagrams and lines ignored as malformed", ["source"]
)
LISTENERS = prometheus_client.Gauge("smsbus_broker_listeners", "Connected TCP listeners")
LISTENERS_DROPPED = prometheus_client.Counter(
    "smsbus_broker_listeners_dropped_total", "TCP listeners disconnected by the broker", ["reason"]
)


class BrokerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # the ZeroMQ ports' address ("0.0.0.0" for services on other hosts, with bus.curve_dir)
    bind_host: str = "127.0.0.1"
    # port 16725 (UDP in, TCP listeners out) has no authentication: empty, it follows
    # bind_host; keep it "127.0.0.1" when only the ZeroMQ ports must reach other hosts
    notify_bind_host: str = ""
    metrics_port: OptionalPort = 16730
    # a listener that stops reading is disconnected once this much waits for it
    max_listener_buffer_bytes: int = msgspec.field(default=1_048_576)
    udp_receive_buffer_bytes: int = 4 * 1_048_576
    # TCP listeners served at once; more are closed as they connect (the first keep being
    # served). The broker raises its own descriptor limit to fit, as far as the system allows
    max_listeners: int = msgspec.field(default=1000)

    def __post_init__(self) -> None:
        if self.max_listener_buffer_bytes < MAX_LINE_BYTES:
            raise ValueError(f"max_listener_buffer_bytes must be at least {MAX_LINE_BYTES}")
        if self.max_listeners < 1:
            raise ValueError("max_listeners must be at least 1")


class ThrottledLog:
    """At most one log line per second for one kind of event: a flood must not flood the log;
    each line says how many were left out since the last."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.last_at = 0.0
        self.suppressed = 0

    def warn(self, *args: object) -> None:
        now = time.monotonic()
        if now - self.last_at < 1.0:
            self.suppressed += 1
            return
        log.warning(self.text + " suppressed=%d", *args, self.suppressed)
        self.last_at, self.suppressed = now, 0


class MalformedLog:
    """Malformed input: counted, and logged at most once a second."""

    def __init__(self) -> None:
        self.log = ThrottledLog("malformed notification source=%s peer=%s reason=%s")

    def record(self, source: str, peer: object, reason: str) -> None:
        MALFORMED.labels(source).inc()
        self.log.warn(source, peer, reason)


class TcpListener:
    """One connected program: receives every notification as a line; may send lines too."""

    def __init__(self, sock: socket.socket, peer: object) -> None:
        self.sock = sock
        self.peer = peer
        self.outgoing = bytearray()
        self.incoming = b""


class Broker:
    def __init__(self, settings: Settings, own: BrokerSettings) -> None:
        self.settings = settings
        self.own = own
        bus = settings.bus
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.xsub = context.socket(zmq.XSUB)
        self.xpub = context.socket(zmq.XPUB)
        # CURVE: the library's authenticator (ZAP) is a thread of its own, checking each
        # connecting key against the allow list; it touches none of the loop's sockets
        self.authenticator: ThreadAuthenticator | None = None
        if bus.curve_dir:
            self.authenticator = ThreadAuthenticator(context)
            self.authenticator.start()
            self.authenticator.configure_curve(domain="*", location=str(Path(bus.curve_dir) / CLIENTS_DIR))
        for sock in (self.xsub, self.xpub):
            sock.setsockopt(zmq.LINGER, 0)
            # a bigger message (or subscription) disconnects its sender
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
            if bus.curve_dir:
                secure_server(sock, bus.curve_dir)
        self.xsub.bind(f"tcp://{own.bind_host}:{bus.publish_port}")
        self.xpub.bind(f"tcp://{own.bind_host}:{bus.subscribe_port}")
        # the broker wants everything services publish, for its TCP listeners too
        self.xsub.send(b"\x01")

        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, own.udp_receive_buffer_bytes)
        notify_host = own.notify_bind_host or own.bind_host
        self.udp.bind((notify_host, bus.notify_port))
        self.udp.setblocking(False)

        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((notify_host, bus.notify_port))
        self.tcp.listen(128)
        self.tcp.setblocking(False)

        self.listeners: dict[int, TcpListener] = {}
        self.malformed = MalformedLog()
        self.refused_log = ThrottledLog(
            "listener refused peer=%s reason=%s listeners=%d max_listeners=%d"
            " (the first listeners keep being served; see broker.max_listeners)"
        )
        # a descriptor kept in reserve: out of descriptors (EMFILE), it is given up for a
        # moment to accept and close the waiting connection, instead of it waiting for ever
        # and the listening socket waking the loop again and again
        self.reserve_fd: int | None = os.open(os.devnull, os.O_RDONLY)

    # -- what the main loop calls ------------------------------------------------------

    def on_connect(self, conn: Connection) -> None:
        conn.execute(f"LISTEN {LISTEN_CHANNEL}")
        # changes made while the broker had no database went unannounced: announce them now
        self.publish([Notification(STATUS)] + [Notification(config_topic(t)) for t in CONFIG_TABLES])

    def forward_database_notifications(self, conn: Connection) -> int:
        """Any role of the database may NOTIFY on the channel: a payload that is no topic
        (a newline would write lines to the listeners) is malformed like any input."""
        topics = set()
        for payload in {n.payload for n in conn.notifies(timeout=0)}:
            if TOPIC_PATTERN.match(payload):
                topics.add(payload)
            else:
                self.malformed.record("postgres", "-", f"bad topic {payload[:40]!r}")
        NOTIFICATIONS_IN.labels("postgres").inc(len(topics))
        self.publish(Notification(t) for t in sorted(topics))
        return len(topics)

    def watches(self) -> Iterator[Watch]:
        yield Watch(self.udp, self.on_udp)
        yield Watch(self.tcp, self.on_accept)
        yield Watch(self.xsub, self.on_xsub)
        yield Watch(self.xpub, self.on_xpub)
        for listener in self.listeners.values():
            events = zmq.POLLIN | (zmq.POLLOUT if listener.outgoing else 0)
            yield Watch(listener.sock, functools.partial(self.on_listener, listener), events)

    # -- in ----------------------------------------------------------------------------

    def on_udp(self, events: int) -> None:
        received: list[Notification] = []
        for _ in range(UDP_BATCH):
            try:
                data, peer = self.udp.recvfrom(65535)
            except BlockingIOError:
                break
            try:
                received.append(parse_notification(data))
            except MalformedNotification as e:
                self.malformed.record("udp", peer[0], str(e))
        NOTIFICATIONS_IN.labels("udp").inc(len(received))
        self.publish(coalesce(received))

    def on_xsub(self, events: int) -> None:
        received = []
        while True:
            try:
                frames = self.xsub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                received.append(decode_frames(frames))
            except (UnicodeDecodeError, ValueError):
                self.malformed.record("zeromq", "-", "undecodable frames")
        NOTIFICATIONS_IN.labels("zeromq").inc(len(received))
        self.publish(received)

    def on_xpub(self, events: int) -> None:
        # subscription messages: XSUB already subscribes to everything, so only log them
        while True:
            try:
                message = self.xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                log.info("subscribed topic=%s", message[1:].decode(errors="replace") or "*")

    def on_accept(self, events: int) -> None:
        while True:
            try:
                sock, peer = self.tcp.accept()
            except BlockingIOError:
                return
            except OSError as e:
                # (Linux says EMFILE before it looks whether anyone waits)
                if e.errno in (errno.EMFILE, errno.ENFILE) and self.refuse_without_descriptors():
                    continue
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # gone before we took it
                raise
            if len(self.listeners) >= self.own.max_listeners:
                sock.close()
                self.refuse("max_listeners", peer[0])
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LISTENER_SEND_BUFFER_BYTES)
            self.listeners[sock.fileno()] = TcpListener(sock, peer[0])
            LISTENERS.set(len(self.listeners))
            log.info("listener connected peer=%s listeners=%d", peer[0], len(self.listeners))

    def refuse(self, reason: str, peer: object) -> None:
        LISTENERS_DROPPED.labels(reason).inc()
        self.refused_log.warn(peer, reason, len(self.listeners), self.own.max_listeners)

    def refuse_without_descriptors(self) -> bool:
        """Accept and close one waiting connection with the reserve descriptor; False when
        none waits (or the reserve could not be had back: the next wake-up tries again)."""
        if self.reserve_fd is None:
            return False
        os.close(self.reserve_fd)
        self.reserve_fd = None
        try:
            sock, peer = self.tcp.accept()
        except OSError:
            return False
        else:
            sock.close()
            self.refuse("no_descriptors", peer[0])
            return True
        finally:
            try:
                self.reserve_fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self.reserve_fd = None

    def on_listener(self, listener: TcpListener, events: int) -> None:
        if events & zmq.POLLIN:
            self.read_listener(listener)
        if events & zmq.POLLOUT and listener.sock.fileno() in self.listeners:
            self.flush_listener(listener)

    def read_listener(self, listener: TcpListener) -> None:
        try:
            data = listener.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop_listener(listener, "closed")
            return
        *lines, listener.incoming = (listener.incoming + data).split(b"\n")
        received = []
        for line in lines:
            try:
                received.append(parse_notification(line))
            except MalformedNotification as e:
                self.malformed.record("tcp", listener.peer, str(e))
        if len(listener.incoming) > MAX_LINE_BYTES:
            self.malformed.record("tcp", listener.peer, f"line longer than {MAX_LINE_BYTES} bytes")
            self.drop_listener(listener, "malformed")
        NOTIFICATIONS_IN.labels("tcp").inc(len(received))
        self.publish(coalesce(received))

    # -- out ---------------------------------------------------------------------------

    def publish(self, notifications: Iterable[Notification]) -> None:
        for notification in notifications:
            self.xpub.send_multipart(encode_frames(notification))
            NOTIFICATIONS_OUT.labels("zeromq").inc()
            line = notification.to_line()
            for listener in list(self.listeners.values()):
                if len(listener.outgoing) + len(line) > self.own.max_listener_buffer_bytes:
                    self.drop_listener(listener, "slow")
                    continue
                listener.outgoing += line
                NOTIFICATIONS_OUT.labels("tcp").inc()
                # most listeners keep up: write now rather than wait for the next poll
                self.flush_listener(listener)

    def flush_listener(self, listener: TcpListener) -> None:
        try:
            sent = listener.sock.send(listener.outgoing)
        except BlockingIOError:
            return
        except OSError as e:
            self.drop_listener(listener, "closed" if e.errno in (errno.EPIPE, errno.ECONNRESET) else "error")
            return
        del listener.outgoing[:sent]

    def drop_listener(self, listener: TcpListener, reason: str) -> None:
        self.listeners.pop(listener.sock.fileno(), None)
        listener.sock.close()
        LISTENERS.set(len(self.listeners))
        if reason != "closed":
            LISTENERS_DROPPED.labels(reason).inc()
        log.info("listener disconnected peer=%s reason=%s listeners=%d", listener.peer, reason, len(self.listeners))

    def close(self) -> None:
        for listener in list(self.listeners.values()):
            listener.sock.close()
        self.udp.close()
        self.tcp.close()
        self.xsub.close()
        self.xpub.close()
        if self.reserve_fd is not None:
            os.close(self.reserve_fd)
        if self.authenticator is not None:
            self.authenticator.stop()


def raise_descriptor_limit(wanted: int) -> int:
    """The soft RLIMIT_NOFILE up to `wanted` (the hard limit caps it); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def coalesce(notifications: list[Notification]) -> list[Notification]:
    """One notification per topic, ids merged in order: a burst becomes one wake-up
    (several when the ids would make an overlong line)."""
    by_topic: dict[str, list[int]] = defaultdict(list)
    for notification in notifications:
        by_topic[notification.topic].extend(notification.ids)
    merged = []
    for topic, ids in by_topic.items():
        unique = list(dict.fromkeys(ids))
        merged += [Notification(topic, tuple(unique[i : i + IDS_PER_DATAGRAM]))
                   for i in range(0, len(unique), IDS_PER_DATAGRAM)] or [Notification(topic)]
    return merged


def main() -> None:
    settings, own = prepare(SERVICE, BrokerSettings)
    limit = raise_descriptor_limit(own.max_listeners + OWN_DESCRIPTORS)
    if limit < own.max_listeners + OWN_DESCRIPTORS:
        log.warning(
            "descriptor limit %d is below max_listeners=%d plus %d: listeners past it are refused",
            limit, own.max_listeners, OWN_DESCRIPTORS,
        )
    try:
        broker = Broker(settings, own)
    except OSError as e:
        sys.exit(f"{SERVICE}: cannot open its ports ({e}); set bus.* or broker.bind_host")
    except ConfigError as e:
        sys.exit(f"{SERVICE}: {e}")
    try:
        run(
            settings=settings,
            service=SERVICE,
            # woken by its sockets only: NOTIFY arrives on the database connection
            loop=LoopSettings(poll_interval_s=0, metrics_port=own.metrics_port),
            step=broker.forward_database_notifications,
            watches=broker.watches,
            on_connect=broker.on_connect,
            watch_connection=True,
        )
    finally:
        broker.close()
