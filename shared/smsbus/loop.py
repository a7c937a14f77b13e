"""The one main loop every service runs.

Wake on a bus topic, on a watched socket, or at the poll interval (0 = never poll); then
work until no work is left. SIGTERM/SIGINT only set a flag and write to a pipe the poller
watches, so stopping means: finish the step in hand, commit, exit 0 in well under a second.
A lost database is reconnected with capped backoff while the poller keeps serving.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec
import psycopg
import zmq

from smsbus import config, db, metrics
from smsbus import log as log_setup
from smsbus.backoff import Backoff
from smsbus.bus import Subscriber
from smsbus.config import OptionalPort, Seconds, Settings
from smsbus.errors import ConfigError

log = logging.getLogger("smsbus.loop")

Connection = psycopg.Connection[dict[str, Any]]
Step = Callable[[Connection], int]


class LoopSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The part of a service's settings the loop reads; services embed these fields."""

    poll_interval_s: Seconds = 5.0
    metrics_port: OptionalPort = 0
    # the longest a query of this service may run (db.connect); 0: no limit
    statement_timeout_s: Seconds = db.DEFAULT_STATEMENT_TIMEOUT_S


S = TypeVar("S", bound=msgspec.Struct)


def prepare(service: str, section: type[S], log_level: str | None = None) -> tuple[Settings, S]:
    """A service's start-up: its settings and logging (at log_level, else the configured
    one). A bad setting exits non-zero with a message naming it, so supervisord marks the
    program FATAL instead of restarting it."""
    try:
        settings = config.load()
        own = config.load_section(service, section)
    except ConfigError as e:
        sys.exit(f"{service}: {e}")
    log_setup.configure(service, log_level or settings.log_level)
    return settings, own


class HasFileno(Protocol):
    def fileno(self) -> int: ...


@dataclass
class Watch:
    """A socket or file the poller watches for the service, and what to do when ready."""

    target: zmq.Socket[bytes] | HasFileno | int
    # receives the ready events (zmq.POLLIN / POLLOUT); a true result asks for a step
    # (a channel's socket delivered PDUs whose handling needs the database)
    on_ready: Callable[[int], bool | None]
    events: int = zmq.POLLIN


class StopFlag:
    """Set by SIGTERM/SIGINT; the pipe wakes a poller that is waiting."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.is_set = False

    def install(self) -> StopFlag:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.is_set = True
        try:
            os.write(self.write_fd, b"x")
        except BlockingIOError:
            pass


def run(
    *,
    settings: Settings,
    service: str,
    loop: LoopSettings,
    step: Step,
    wake_on: Iterable[str] = (),
    watches: Callable[[], Iterable[Watch]] = tuple,
    on_connect: Callable[[Connection], None] | None = None,
    watch_connection: bool = False,
    next_wake: Callable[[], float | None] | None = None,
) -> None:
    """Run until SIGTERM. `watch_connection` wakes the step when the database connection
    has input (the broker's LISTEN); `on_connect` runs after every (re)connect.
    `next_wake`, asked after the steps, returns a wall-clock time (time.time()) when work
    falls due by itself (a scheduled message), or None: the loop wakes then, poll or not."""
    stop = StopFlag().install()
    metrics.start_server(settings.metrics_host, loop.metrics_port)
    topics = list(wake_on)
    subscriber = Subscriber(settings.bus, topics) if topics else None
    url = settings.resolved_database_url()
    backoff = Backoff()
    conn: Connection | None = None
    next_connect_at = 0.0
    work_waiting = True
    next_poll_at = math.inf
    next_due_at = math.inf

    log.info("started service=%s wake_on=%s poll_interval_s=%s", service, ",".join(topics) or "-", loop.poll_interval_s)
    while not stop.is_set:
        now = time.monotonic()
        if conn is None and now >= next_connect_at:
            conn = _connect(url, service, loop.statement_timeout_s, on_connect)
            if conn is None:
                next_connect_at = now + backoff.next_delay()
            else:
                backoff.reset()
                work_waiting = True
        if conn is not None and work_waiting:
            conn = _work(conn, step, stop)
            if conn is None:
                next_connect_at = time.monotonic() + backoff.next_delay()
            work_waiting = False
            next_poll_at = time.monotonic() + loop.poll_interval_s if loop.poll_interval_s > 0 else math.inf
            next_due_at = _due_at(next_wake)

        # without a connection no step can run: wait for the reconnect, not for work falling due
        deadline = next_connect_at if conn is None else min(next_poll_at, next_due_at)
        # rounded up: waking a millisecond early would find the work not yet due
        timeout_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000)) if deadline < math.inf else None

        poller = zmq.Poller()
        poller.register(stop.read_fd, zmq.POLLIN)
        if subscriber is not None:
            poller.register(subscriber.socket, zmq.POLLIN)
            poller.register(subscriber.connections, zmq.POLLIN)
        if watch_connection and conn is not None:
            poller.register(conn.fileno(), zmq.POLLIN)
        extra = list(watches())
        for watch in extra:
            poller.register(watch.target, watch.events)
        ready = dict(poller.poll(timeout_ms))

        if stop.read_fd in ready:
            break
        if subscriber is not None and subscriber.socket in ready:
            subscriber.drain()
            metrics.WAKEUPS.labels("bus").inc()
            work_waiting = True
        if subscriber is not None and subscriber.connections in ready and subscriber.drain_connections():
            metrics.WAKEUPS.labels("bus_connected").inc()
            work_waiting = True
        if watch_connection and conn is not None and conn.fileno() in ready:
            work_waiting = True
        for watch in extra:
            events = ready.get(_poll_key(watch.target))
            if events:
                if watch.on_ready(events):
                    work_waiting = True
        if not work_waiting and time.monotonic() >= next_poll_at:
            metrics.WAKEUPS.labels("poll").inc()
            work_waiting = True
        if not work_waiting and time.monotonic() >= next_due_at:
            metrics.WAKEUPS.labels("due").inc()
            work_waiting = True

    log.info("stopping service=%s", service)
    if subscriber is not None:
        subscriber.close()
    if conn is not None:
        conn.close()


def _due_at(next_wake: Callable[[], float | None] | None) -> float:
    """The service's next due time, moved from the wall clock onto the monotonic one."""
    wall_clock = next_wake() if next_wake is not None else None
    if wall_clock is None:
        return math.inf
    return time.monotonic() + max(0.0, wall_clock - time.time())


def _poll_key(target: zmq.Socket[bytes] | HasFileno | int) -> object:
    """zmq.Poller reports ZeroMQ sockets as themselves and everything else by fd."""
    if isinstance(target, zmq.Socket | int):
        return target
    return target.fileno()


def _connect(
    url: str, service: str, statement_timeout_s: float, on_connect: Callable[[Connection], None] | None
) -> Connection | None:
    """A connection ready for the step, or None (logged) to try again after the backoff."""
    try:
        conn = db.connect(url, application=service, statement_timeout_s=statement_timeout_s)
    except psycopg.OperationalError as e:
        metrics.DATABASE_CONNECTED.set(0)
        metrics.DATABASE_ERRORS.labels("connect").inc()
        log.warning("database unavailable error=%s", first_line(e))
        return None
    try:
        if on_connect is not None:
            on_connect(conn)
            conn.commit()
    except psycopg.Error as e:
        # e.g. the schema is not migrated yet: the same retry as a lost connection
        metrics.DATABASE_ERRORS.labels("connect").inc()
        log.warning("database not ready error=%s: %s", type(e).__name__, first_line(e))
        conn.close()
        return None
    metrics.DATABASE_CONNECTED.set(1)
    log.info("database connected service=%s", service)
    return conn


def _work(conn: Connection, step: Step, stop: StopFlag) -> Connection | None:
    """Steps until one finds nothing to do; None when the connection had to be dropped."""
    try:
        while not stop.is_set:
            with metrics.STEP_SECONDS.time():
                done = step(conn)
            if done <= 0:
                break
        return conn
    except psycopg.OperationalError as e:
        metrics.DATABASE_CONNECTED.set(0)
        metrics.DATABASE_ERRORS.labels("connection_lost").inc()
        log.warning("database connection lost error=%s", first_line(e))
        conn.close()
        return None
    except psycopg.Error as e:
        # a query the database refused (schema not migrated yet, a bad rule): keep the
        # process and start over on a fresh connection after a backoff
        metrics.DATABASE_ERRORS.labels("query").inc()
        log.error("step failed error=%s: %s", type(e).__name__, first_line(e))
        conn.close()
        return None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
