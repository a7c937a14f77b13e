"""The service's side of the script worker: start it, send it a script run, wait for the
answer up to the trigger's timeout, and kill and replace it when it does not answer.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import prometheus_client

from smsbus.message import Message
from smsbus.triggers import Trigger
from smsbus_triggers.protocol import (
    ENCODER,
    RESULT_DECODER,
    RunScript,
    ScriptResult,
    WorkerGone,
    WorkerTimedOut,
    read_frame,
    write_frame,
)

log = logging.getLogger("triggers")

WORKERS_REPLACED = prometheus_client.Counter(
    "smsbus_trigger_workers_replaced_total", "Script workers killed or lost, and replaced", ["reason"]
)


class WorkerProcess:
    """One script worker, started on first use; `run` is synchronous (one message at a time)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.process: subprocess.Popen[bytes] | None = None
        # trigger id -> the script digest the worker has loaded
        self.loaded: dict[int, str] = {}

    def run(self, trigger: Trigger, message: Message) -> ScriptResult:
        """The script's result; a timeout or a dead worker is a failed result, and the worker
        is replaced before the next run."""
        process = self.process or self._start()
        request = RunScript(
            trigger_id=trigger.id,
            trigger_name=trigger.name,
            digest=trigger.digest,
            script=None if self.loaded.get(trigger.id) == trigger.digest else trigger.script,
            message=message,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            write_frame(process.stdin.fileno(), ENCODER.encode(request))
            self.loaded[trigger.id] = trigger.digest
            answer = read_frame(process.stdout.fileno(), time.monotonic() + trigger.timeout_s)
        except WorkerTimedOut:
            self.stop("timeout")
            return ScriptResult([], error=f"timed out after {trigger.timeout_s:g} s: stopped")
        except (WorkerGone, BrokenPipeError):
            code = process.wait()
            self.stop("exited")
            return ScriptResult([], error=f"the script worker exited (code {code})")
        return RESULT_DECODER.decode(answer)

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, SMSBUS_DATABASE_URL=self.database_url)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smsbus_triggers.worker", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.loaded = {}
        log.info("script worker started pid=%d", self.process.pid)
        return self.process

    def stop(self, reason: str | None = None) -> None:
        """Kill the worker (its scripts' globals go with it); the next run starts a new one."""
        if self.process is None:
            return
        if reason is not None:
            WORKERS_REPLACED.labels(reason).inc()
            log.warning("script worker replaced pid=%d reason=%s", self.process.pid, reason)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self.process = None
        self.loaded = {}
