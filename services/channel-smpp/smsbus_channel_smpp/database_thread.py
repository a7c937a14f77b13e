"""The channel's database thread: one job at a time (record a batch, claim the next messages)
on a connection of its own, so that the thread that owns the SMPP sockets never waits for
PostgreSQL: submit_sm keep flowing and responses keep being read while a batch commits.

The main thread hands a job over with `submit` and takes its result with `take`; a socketpair
that the main loop's poller watches says a result is ready. A failed job's connection is
dropped and opened again for the next one.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from smsbus import db
from smsbus.loop import Connection

log = logging.getLogger("channel-smpp")

Job = Callable[[Connection], Any]


class JobResult:
    def __init__(self, value: Any, error: Exception | None) -> None:
        self.value = value
        self.error = error


class DatabaseThread:
    def __init__(self, url: str, application: str, prepare: Callable[[Connection], None]) -> None:
        self.url = url
        self.application = application
        self.prepare = prepare
        self.requests: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        self.ready, self.signal = socket.socketpair()
        self.ready.setblocking(False)
        self.busy = False
        self.thread = threading.Thread(target=self._run, name="database", daemon=True)
        self.thread.start()

    def fileno(self) -> int:
        """Readable when a result waits: for the main loop's poller."""
        return self.ready.fileno()

    def submit(self, job: Job) -> None:
        assert not self.busy, "one job at a time"
        self.busy = True
        self.requests.put(job)

    def take(self, timeout_s: float | None = None) -> JobResult | None:
        """The finished job's result, or None while it runs (waits up to timeout_s)."""
        try:
            while self.ready.recv(4096):
                pass
        except BlockingIOError:
            pass
        try:
            result = self.results.get(timeout=timeout_s) if timeout_s else self.results.get_nowait()
        except queue.Empty:
            return None
        self.busy = False
        return result

    def stop(self) -> None:
        self.requests.put(None)
        self.thread.join(timeout=10)
        self.ready.close()
        self.signal.close()

    def _run(self) -> None:
        conn: Connection | None = None
        while (job := self.requests.get()) is not None:
            try:
                if conn is None:
                    conn = db.connect(self.url, application=self.application)
                    self.prepare(conn)
                result = JobResult(job(conn), None)
            except Exception as e:  # handed to the main thread, which decides
                result = JobResult(None, e)
                if conn is not None and (conn.closed or isinstance(e, psycopg.OperationalError)):
                    conn.close()
                    conn = None
            self.results.put(result)
            try:
                self.signal.send(b"\0")
            except OSError:
                log.warning("database thread could not wake the main loop")
        if conn is not None:
            conn.close()
