"""The script worker: a child process of the triggers service that runs Python scripts'
handle(message, api), so a script that hangs or crashes can be killed and replaced without
touching the service. Reads RunScript frames on stdin, writes ScriptResult frames on stdout
(the script's own print() goes to stderr, which is the service's log).

Each trigger's script is a module kept between messages, so its globals persist until the
script changes (a new digest) or the worker is replaced (a timeout, a crash, a restart).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback
import types
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row

from smsbus.bus import TOPIC_PATTERN
from smsbus.message import Message, NewMessage
from smsbus.privileges import forbid_new_privileges
from smsbus.statuses import Status, check_move
from smsbus_triggers.protocol import (
    ENCODER,
    REQUEST_DECODER,
    Action,
    ChangeMessage,
    Log,
    MarkProcessed,
    Notify,
    RunScript,
    ScriptResult,
    SendMessage,
    WorkerGone,
    read_frame,
    write_frame,
)

# a read-only query of a script may take this long at most (the trigger's timeout stops it too)
QUERY_TIMEOUT_MS = 10_000
READ_ONLY_OPTIONS = f"-c default_transaction_read_only=on -c statement_timeout={QUERY_TIMEOUT_MS}"
LOG_LEVELS = ("debug", "info", "warning", "error")
PR_SET_PDEATHSIG = 1


class ScriptApi:
    """The `api` a script's handle(message, api) gets. Changes are requests: the service
    applies them in the message's transaction after handle() returns, in the order asked."""

    def __init__(self, message: Message, reader: ReadOnlyDatabase) -> None:
        self._message = message
        self._reader = reader
        self.actions: list[Action] = []

    def send(
        self,
        to: str,
        body: str,
        *,
        sender: str | None = None,
        channel: str | None = None,
        at: datetime | None = None,
        properties: dict[str, Any] | None = None,
        client_ref: str | None = None,
    ) -> None:
        """Create an outgoing message (QUEUED, or SCHEDULED when `at` is in the future)."""
        fields = {
            "to_address": to,
            "body": body,
            "from_address": sender,
            "channel": channel,
            "scheduled_at": at,
            "properties": properties or {},
            "client_ref": client_ref,
        }
        try:
            new = msgspec.convert(fields, NewMessage)
        except msgspec.ValidationError as e:
            raise ValueError(f"api.send: {e}") from None
        check_json("api.send: properties", new.properties)
        self.actions.append(SendMessage(new))

    def change(
        self,
        *,
        status: str | None = None,
        channel: str | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        """Move the message's status (only as smsbus.statuses allows, e.g. FAILED -> QUEUED to
        send it again, optionally through another channel) and/or merge keys into properties."""
        if status is None and properties is None:
            raise ValueError("api.change: give a status and/or properties")
        if channel is not None and status != Status.QUEUED:
            raise ValueError("api.change: a channel can only be set with status='QUEUED'")
        if status is not None:
            check_move(self._message.status, status)
        if properties is not None:
            check_json("api.change: properties", properties)
        self.actions.append(ChangeMessage(status=status, channel=channel, properties=properties))

    def mark_processed(self) -> None:
        """trigger_status PROCESSED once this script returns: later triggers are skipped."""
        self.actions.append(MarkProcessed())

    def query(self, sql: str, params: dict[str, Any] | tuple[Any, ...] | None = None) -> list[dict[str, Any]]:
        """One read-only statement (%s or %(name)s parameters) on the worker's own connection:
        it sees committed data, not what this message's transaction changed so far. Read-only
        guards against mistakes; scripts are trusted code, not a sandbox."""
        return self._reader.query(sql, params)

    def notify(self, topic: str, ids: Iterable[int] = ()) -> None:
        """Publish a notification on the bus (TCP listeners of port 16725 see it too)."""
        if not isinstance(topic, str) or not TOPIC_PATTERN.match(topic):
            raise ValueError(f"api.notify: bad topic {topic!r} (lower-case letters, digits, . _ -)")
        self.actions.append(Notify(topic, tuple(int(i) for i in ids)))

    def log(self, text: str, level: str = "info") -> None:
        if level not in LOG_LEVELS:
            raise ValueError(f"api.log: level must be one of {', '.join(LOG_LEVELS)}")
        self.actions.append(Log(level, str(text)))


class ReadOnlyDatabase:
    """The worker's own connection, opened on the first query, read-only."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.conn: psycopg.Connection[dict[str, Any]] | None = None

    def query(self, sql: str, params: dict[str, Any] | tuple[Any, ...] | None) -> list[dict[str, Any]]:
        if self.url is None:
            raise RuntimeError("api.query: no database configured for scripts")
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                self.url, autocommit=True, row_factory=dict_row, options=READ_ONLY_OPTIONS,
                application_name="triggers-script",
            )
        try:
            # prepare=True: the extended protocol, one statement only (no "; DELETE ..." after it)
            return self.conn.execute(sql.encode(), params, prepare=True).fetchall()
        except psycopg.OperationalError:
            self.conn.close()
            raise


class LoadedScript(msgspec.Struct):
    digest: str
    module: types.ModuleType | None
    # why the module could not be loaded (it raised at import, or has no handle())
    error: str | None


class ScriptHost:
    """Runs scripts in this process: the worker's heart, and the benchmark's in-process baseline."""

    def __init__(self, database_url: str | None) -> None:
        self.reader = ReadOnlyDatabase(database_url)
        self.scripts: dict[int, LoadedScript] = {}

    def run(self, request: RunScript) -> ScriptResult:
        loaded = self.scripts.get(request.trigger_id)
        if loaded is None or loaded.digest != request.digest:
            if request.script is None:
                return ScriptResult([], error="internal: the worker does not have this script version")
            loaded = self.load(request.trigger_id, request.trigger_name, request.digest, request.script)
            self.scripts[request.trigger_id] = loaded
        if loaded.module is None:
            return ScriptResult([], error=loaded.error)
        api = ScriptApi(request.message, self.reader)
        try:
            loaded.module.handle(request.message, api)
        except Exception as e:
            return ScriptResult(api.actions, error=describe(e, script_filename(request.trigger_name)))
        return ScriptResult(api.actions)

    def load(self, trigger_id: int, name: str, digest: str, script: str) -> LoadedScript:
        """A fresh module (fresh globals) for this version of the script. It is registered in
        sys.modules, as an imported module would be (dataclasses and pickle look it up)."""
        filename = script_filename(name)
        module = types.ModuleType(f"smsbus_trigger_{trigger_id}")
        module.__file__ = filename
        sys.modules[module.__name__] = module
        try:
            exec(compile(script, filename, "exec"), module.__dict__)
        except Exception as e:
            return LoadedScript(digest, None, f"loading the script: {describe(e, filename)}")
        if not callable(getattr(module, "handle", None)):
            return LoadedScript(digest, None, "the script defines no handle(message, api) function")
        return LoadedScript(digest, module, None)


def check_json(what: str, value: Any) -> None:
    """Refuse now, in the script, what the database could not store as a jsonb object."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON: {e}") from None


def script_filename(trigger_name: str) -> str:
    return f"<trigger {trigger_name}>"


def describe(error: BaseException, filename: str) -> str:
    """`ZeroDivisionError: division by zero (line 3)`: the last line of the script involved."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == filename]
    if isinstance(error, SyntaxError) and error.filename == filename:
        lines.append(error.lineno or 0)
    where = f" (line {lines[-1]})" if lines else ""
    return f"{type(error).__name__}: {error}{where}"


def die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this worker when the service dies, even mid-`while True`."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the service decides, not us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(int(sys.argv[1]))
    # the scripts run with the service's rights at most: no setuid program raises them
    forbid_new_privileges()
    requests_fd, results_fd = os.dup(0), os.dup(1)
    # scripts that print() must not corrupt the frames: fd 1 becomes stderr, fd 0 nothing
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    host = ScriptHost(os.environ.get("SMSBUS_DATABASE_URL"))
    while True:
        try:
            request = REQUEST_DECODER.decode(read_frame(requests_fd))
        except WorkerGone:
            return
        write_frame(results_fd, ENCODER.encode(host.run(request)))


if __name__ == "__main__":
    main()
