"""The AT command layer (3GPP TS 27.007 / 27.005) over a serial port: one command at a time,
each with its own timeout, while unsolicited result codes (+CMTI, +CDS, RING, ...) may arrive
at any moment, inside a command's answer or between commands. Lines that are neither the
answer nor a known unsolicited code are garbage: logged (at most once a second) and ignored.

No thread: between commands the port's descriptor sits in the service's main-loop poller and
`read_available` collects what arrived; a command waits for its answer with select().
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import prometheus_client

log = logging.getLogger("channel-gsm.at")

CTRL_Z = b"\x1a"
ESCAPE = b"\x1b"
PROMPT = b"> "
FINAL_OK = "OK"
FINAL_ERRORS = ("ERROR", "+CMS ERROR:", "+CME ERROR:", "NO CARRIER")
# unsolicited codes; the two-line ones are followed by a PDU line
UNSOLICITED = ("+CMTI:", "+CDSI:", "RING", "+CLIP:", "+CREG:", "+CGREG:", "+CUSD:", "^", "+CMT:", "+CDS:", "+CBM:")
UNSOLICITED_WITH_PDU = ("+CMT:", "+CDS:", "+CBM:")
# a line longer than this without a line end is garbage, not a slow answer
MAX_LINE_BYTES = 4096
READ_BYTES = 65536
# unsolicited codes waiting for the step; beyond this a flooding modem's codes are dropped
MAX_UNSOLICITED = 1000

GARBAGE = prometheus_client.Counter(
    "smsbus_gsm_garbage_lines_total", "Lines from the modem that were neither an answer nor a known code", ["channel"]
)


class ModemError(Exception):
    """The modem cannot be talked to right now (timeout, port gone); the watchdog resets it."""


class ModemTimeout(ModemError):
    pass


class PortLost(ModemError):
    pass


class CommandFailed(Exception):
    """The modem answered ERROR / +CMS ERROR / +CME ERROR: the command was refused."""

    def __init__(self, command: str, final: str) -> None:
        self.command = command
        self.final = final
        code = final.split(":", 1)[1].strip() if ":" in final else ""
        self.code = int(code) if code.isdigit() else None
        super().__init__(f"{command} answered {final}")


@dataclass(frozen=True)
class Unsolicited:
    """+CMTI: "SM",3 -> name "+CMTI", value '"SM",3'; +CDS carries its PDU line."""

    name: str
    value: str
    pdu: str | None = None


class SerialLike(Protocol):
    def fileno(self) -> int: ...
    def write(self, data: bytes, /) -> int | None: ...


class AtPort:
    def __init__(self, port: SerialLike, channel: str) -> None:
        self.port = port
        self.fd = port.fileno()
        self.channel = channel
        self.buffer = bytearray()
        self.unsolicited: deque[Unsolicited] = deque()
        self.pending_pdu_for: Unsolicited | None = None
        self.last_garbage_log_at = 0.0
        self.garbage_suppressed = 0

    def fileno(self) -> int:
        return self.fd

    # --- reading -------------------------------------------------------------------------------

    def _read_into_buffer(self) -> None:
        """Only after select() said readable: a tty in raw mode (VMIN=0) reads b"" when
        empty, so an empty read of a readable port is how a vanished device shows."""
        try:
            data = os.read(self.fd, READ_BYTES)
        except BlockingIOError:
            return
        except OSError as e:
            raise PortLost(f"reading the port failed: {e}") from None
        if not data:
            raise PortLost("the device reports readiness to read but returned no data (gone?)")
        self.buffer += data
        # the buffer stays bounded: whole lines are taken before the next read, and a line
        # that grows past MAX_LINE_BYTES without its end is garbage
        unfinished = self.buffer.rfind(b"\n") + 1
        if len(self.buffer) - unfinished > MAX_LINE_BYTES:
            junk = bytes(self.buffer[unfinished:])
            del self.buffer[unfinished:]
            self._garbage(junk.decode("latin-1"))

    def _take_line(self) -> str | None:
        end = self.buffer.find(b"\n")
        if end < 0:
            return None
        raw = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return raw.decode("latin-1").strip("\r\x00 ")

    def _wait_readable(self, deadline: float, command: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ModemTimeout(f"no answer to {command} within the timeout")
        ready, _, _ = select.select([self.fd], [], [], remaining)
        if not ready:
            raise ModemTimeout(f"no answer to {command} within the timeout")
        self._read_into_buffer()

    def read_available(self) -> bool:
        """Between commands: read what arrived; True when unsolicited codes are waiting."""
        if select.select([self.fd], [], [], 0)[0]:
            self._read_into_buffer()
        self._parse_buffered()
        return bool(self.unsolicited)

    def _parse_buffered(self) -> None:
        """Whole lines already read that no command claims: codes or garbage."""
        while (line := self._take_line()) is not None:
            if line:
                self._between_commands(line)

    def _between_commands(self, line: str) -> None:
        if self.pending_pdu_for is not None:
            head, self.pending_pdu_for = self.pending_pdu_for, None
            self._queue(Unsolicited(head.name, head.value, line))
        elif not self._take_unsolicited(line):
            self._garbage(line)

    def _take_unsolicited(self, line: str) -> bool:
        for name in UNSOLICITED:
            if line.startswith(name):
                name = line.split(":", 1)[0] if ":" in line else line
                value = line.split(":", 1)[1].strip() if ":" in line else ""
                code = Unsolicited(name, value)
                if line.startswith(UNSOLICITED_WITH_PDU):
                    self.pending_pdu_for = code
                else:
                    self._queue(code)
                return True
        return False

    def _queue(self, code: Unsolicited) -> None:
        if len(self.unsolicited) >= MAX_UNSOLICITED:
            self._garbage(f"{code.name} dropped: {MAX_UNSOLICITED} unsolicited codes already wait")
            return
        self.unsolicited.append(code)

    def _garbage(self, line: str) -> None:
        GARBAGE.labels(self.channel).inc()
        now = time.monotonic()
        if now - self.last_garbage_log_at < 1.0:
            self.garbage_suppressed += 1
            return
        log.warning(
            "garbage from modem ignored channel=%s line=%r suppressed=%d",
            self.channel,
            line[:80],
            self.garbage_suppressed,
        )
        self.last_garbage_log_at, self.garbage_suppressed = now, 0

    def take_unsolicited(self) -> list[Unsolicited]:
        codes = list(self.unsolicited)
        self.unsolicited.clear()
        return codes

    # --- commands ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except OSError as e:
            raise PortLost(f"writing to the port failed: {e}") from None
        except Exception as e:  # pyserial's SerialException / SerialTimeoutException
            raise PortLost(f"writing to the port failed: {e}") from None

    def command(
        self, command: str, timeout_s: float, *, answer: str | None = None, pdu_lines: bool = False
    ) -> list[str]:
        """Send `command`, return the lines of its answer (those starting with `answer`, and
        with pdu_lines the PDU line after each). Raises CommandFailed, ModemTimeout, PortLost."""
        self.read_available()  # anything that arrived before belongs to no command
        self._write(command.encode("ascii") + b"\r")
        lines = self._collect(command, time.monotonic() + timeout_s, answer, pdu_lines)
        self._parse_buffered()
        return lines

    def send_pdu(self, length: int, pdu_hex: str, timeout_s: float) -> int:
        """AT+CMGS=<length>, the `> ` prompt, the PDU and Ctrl-Z; returns TP-MR."""
        command = f"AT+CMGS={length}"
        self.read_available()
        self._write(command.encode("ascii") + b"\r")
        deadline = time.monotonic() + timeout_s
        self._wait_for_prompt(command, deadline)
        self._write(pdu_hex.encode("ascii") + CTRL_Z)
        lines = self._collect(command, deadline, "+CMGS:", False)
        self._parse_buffered()
        for line in lines:
            value = line.split(":", 1)[1].strip().split(",")[0]
            if value.isdigit():
                return int(value)
        raise CommandFailed(command, "OK without a +CMGS message reference")

    def _wait_for_prompt(self, command: str, deadline: float) -> None:
        while True:
            prompt_at = self.buffer.find(PROMPT)
            if prompt_at >= 0:
                before = bytes(self.buffer[:prompt_at])
                del self.buffer[: prompt_at + len(PROMPT)]
                for raw in before.split(b"\n"):
                    line = raw.decode("latin-1").strip("\r\x00 ")
                    if line and line != command:
                        self._between_commands(line)
                return
            line_end = self.buffer.find(b"\n")
            if line_end >= 0:
                answer = self._take_line()
                if answer and answer != command:
                    if answer.startswith(FINAL_ERRORS):
                        raise CommandFailed(command, answer)
                    self._between_commands(answer)
                continue
            self._wait_readable(deadline, command)

    def _collect(self, command: str, deadline: float, answer: str | None, pdu_lines: bool) -> list[str]:
        lines: list[str] = []
        expecting_pdu = False
        while True:
            line = self._take_line()
            if line is None:
                self._wait_readable(deadline, command)
                continue
            if not line or line == command:
                continue  # blank separators; the echo before ATE0 takes effect
            if expecting_pdu:
                lines.append(line)
                expecting_pdu = False
            elif self.pending_pdu_for is not None:
                self._between_commands(line)
            elif line == FINAL_OK:
                return lines
            elif line.startswith(FINAL_ERRORS):
                raise CommandFailed(command, line)
            elif answer is not None and line.startswith(answer):
                lines.append(line)
                expecting_pdu = pdu_lines
            else:
                self._between_commands(line)
