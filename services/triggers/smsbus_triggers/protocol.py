"""What crosses the pipe between the triggers service and its script worker process:
length-prefixed MessagePack frames of the Structs below (never pickle).

A Python script does not touch the service's transaction: it returns the actions it asks
for, and the service applies them in the message's transaction.
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any

import msgspec

from smsbus.message import Message, NewMessage

FRAME_HEADER = struct.Struct("!I")


class RunScript(msgspec.Struct, frozen=True, tag="run"):
    """Run one trigger's handle(message, api). `script` is sent only when the worker has not
    loaded this digest yet; a new digest replaces the module (and so its globals)."""

    trigger_id: int
    trigger_name: str
    digest: str
    script: str | None
    message: Message


class SendMessage(msgspec.Struct, frozen=True, tag="send"):
    message: NewMessage


class ChangeMessage(msgspec.Struct, frozen=True, tag="change"):
    """A status move (guarded, as smsbus.statuses allows) and/or properties merged in."""

    status: str | None = None
    channel: str | None = None
    properties: dict[str, Any] | None = None


class MarkProcessed(msgspec.Struct, frozen=True, tag="processed"):
    """trigger_status PROCESSED: the triggers after this one are skipped."""


class Notify(msgspec.Struct, frozen=True, tag="notify"):
    topic: str
    ids: tuple[int, ...] = ()


class Log(msgspec.Struct, frozen=True, tag="log"):
    level: str
    text: str


Action = SendMessage | ChangeMessage | MarkProcessed | Notify | Log


class ScriptResult(msgspec.Struct, frozen=True):
    actions: list[Action]
    # the script raised (or could not be loaded): its actions are not applied
    error: str | None = None


class WorkerGone(Exception):
    """The worker closed its pipe: it exited or was killed."""


class WorkerTimedOut(WorkerGone):
    """The worker did not answer before the deadline."""


ENCODER = msgspec.msgpack.Encoder()
REQUEST_DECODER = msgspec.msgpack.Decoder(RunScript)
RESULT_DECODER = msgspec.msgpack.Decoder(ScriptResult)


def write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(FRAME_HEADER.pack(len(payload)) + payload)
    while data:
        written = os.write(fd, data)
        data = data[written:]


def read_frame(fd: int, deadline: float | None = None) -> bytes:
    """One frame; WorkerGone at end of file, WorkerTimedOut when `deadline` (time.monotonic()) passes."""
    (length,) = FRAME_HEADER.unpack(_read_exactly(fd, FRAME_HEADER.size, deadline))
    return _read_exactly(fd, length, deadline)


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise WorkerTimedOut("timed out")
        chunk = os.read(fd, size - len(chunks))
        if not chunk:
            raise WorkerGone("closed its pipe")
        chunks += chunk
    return bytes(chunks)
