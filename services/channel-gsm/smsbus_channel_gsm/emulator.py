"""smsbus-modem-emu: a GSM modem on a pseudo-terminal, speaking the AT subset the channel uses
in PDU mode (3GPP TS 27.005), for the tests and for trying the channel without hardware.

The channel opens the slave side (or the stable symlink given with --link) like a serial
port. A control socket (JSON lines on a Unix socket) injects incoming messages (concatenated
too) and status reports, and makes the modem hang, talk garbage, or disconnect.
One thread: select() over the pty master, the control socket and its clients.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import socket
import sys
import time
import tty
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smsbus.encoding import Encoding, choose_encoding, decode_payload, segment_text
from smsbus_channel_gsm import pdu

CTRL_Z = 0x1A
ESCAPE = 0x1B
SIM_CAPACITY = 50
# +CMS ERROR codes (TS 27.005 3.2.5) and +CME ERROR codes (TS 27.007 9.2)
CMS_INVALID_PDU = 304
CMS_INVALID_INDEX = 321
CMS_MEMORY_FULL = 322
CMS_NO_NETWORK = 331
CME_SIM_PIN_REQUIRED = 11
CME_INCORRECT_PASSWORD = 16
REOPEN_CHECK_S = 0.05


@dataclass
class Stored:
    stat: int  # 0 REC UNREAD, 1 REC READ
    pdu_hex: str  # with the SMSC prefix, as a modem lists it


@dataclass
class SentMessage:
    reference: int
    destination: str
    encoding: str
    udh: str
    payload: str
    text: str
    request_report: bool


@dataclass
class Modem:
    """The modem's state: what a reset (AT+CFUN=1,1) puts back is in `reset`."""

    pin: str | None
    smsc: str = "+31000000000"
    echo: bool = True
    pin_ok: bool = False
    pdu_mode: bool = False
    report_unsolicited: int = 0  # CNMI <ds>: 1 = +CDS, 2 = stored and announced (+CDSI)
    # a modem that stores its status reports whatever CNMI <ds> asks (+CDSI, read with AT+CMGL)
    store_reports: bool = False
    notify_incoming: int = 0  # CNMI <mt>: 1 = +CMTI
    registration: int = 1  # +CREG <stat>: 1 home, 5 roaming, 0 searching
    creg_mode: int = 0
    csq: int = 20
    functional: bool = True
    next_reference: int = 0
    storage: dict[int, Stored] = field(default_factory=dict)
    sent: list[SentMessage] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    auto_report: str = "off"  # "delivered", "failed" or "off"
    hung: bool = False
    hang_on: str | None = None
    hang_after: int = 0  # commands with the hang_on prefix answered before it hangs
    garbage: bool = False
    # after refuse_after more accepted ones, the next refuse_count AT+CMGS are answered
    # +CMS ERROR: refuse_code (refuse_after 1: part 2 of a long message)
    refuse_code: int = 0
    refuse_count: int = 0
    refuse_after: int = 0

    def reset(self) -> None:
        self.echo = True
        self.pin_ok = self.pin is None
        self.pdu_mode = False
        self.report_unsolicited = 0
        self.notify_incoming = 0
        self.creg_mode = 0
        self.functional = True

    def store(self, pdu_hex: str) -> int:
        free = next((i for i in range(1, SIM_CAPACITY + 1) if i not in self.storage), None)
        if free is None:
            raise OverflowError("SIM full")
        self.storage[free] = Stored(0, pdu_hex)
        return free


def tpdu_length(pdu_hex: str) -> int:
    """<length> of +CMGL/+CMGR: the TPDU's octets (a PDU that does not parse: all of them)."""
    try:
        return len(pdu.skip_smsc(pdu.from_hex(pdu_hex)))
    except pdu.PduError:
        return len(pdu_hex) // 2


class Emulator:
    def __init__(self, modem: Modem, link: Path | None, control_path: Path) -> None:
        self.modem = modem
        self.link = link
        self.master = -1
        self.slave_path = ""
        self.slave_open = False
        self.next_check_at = 0.0
        self.reconnect_at: float | None = None
        self.input = bytearray()
        self.awaiting_pdu: int | None = None  # AT+CMGS length while after the prompt
        self.due_reports: list[tuple[float, bytes]] = []
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            control_path.unlink()
        self.control.bind(str(control_path))
        self.control.listen(8)
        self.clients: dict[socket.socket, bytearray] = {}
        self.stopping = False
        self.open_pty()

    # --- the pseudo-terminal ---------------------------------------------------------------------

    def open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        self.slave_path = os.ttyname(slave)
        os.close(slave)  # the channel holds the slave; we notice when it closes it
        os.set_blocking(master, False)
        self.master = master
        self.slave_open = False
        self.input.clear()
        self.awaiting_pdu = None
        if self.link is not None:
            temporary = self.link.with_name(self.link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            temporary.symlink_to(self.slave_path)
            temporary.replace(self.link)

    def disconnect(self, seconds: float) -> None:
        """The device disappears (USB unplugged) and comes back on a new pty after `seconds`."""
        os.close(self.master)
        self.master = -1
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        self.reconnect_at = time.monotonic() + seconds

    def write(self, text: str) -> None:
        if self.master < 0:
            return
        data = text.encode("latin-1")
        while data:
            try:
                written = os.write(self.master, data)
            except BlockingIOError:
                select.select([], [self.master], [], 1.0)
                continue
            except OSError:
                return  # nobody holds the slave: the modem talks to no one
            data = data[written:]

    def answer(self, *lines: str) -> None:
        if self.modem.garbage:
            self.write("\r\n\x00\xff#GARBAGE\x7f!\r\n")
        self.write("".join(f"\r\n{line}\r\n" for line in lines))

    def read_master(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            if not self.slave_open:
                self.port_opened()
            return
        except OSError:
            # EIO: no process holds the slave (closed by the channel, or not yet opened)
            if self.slave_open:
                self.slave_open = False
            self.next_check_at = time.monotonic() + REOPEN_CHECK_S
            return
        if not self.slave_open:
            self.port_opened()
        self.receive(data)

    def port_opened(self) -> None:
        """Opening the port again drops DTR and back: a hung modem comes back to life."""
        self.slave_open = True
        self.modem.hung = False
        self.input.clear()
        self.awaiting_pdu = None

    # --- the AT interpreter -------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if self.modem.hung:
            # a hung modem answers nothing; the log shows what it was sent meanwhile
            self.modem.commands += [f"hung: {line}" for line in data.decode("latin-1").split("\r") if line.strip()]
            return
        for byte in data:
            if self.awaiting_pdu is not None:
                if byte == CTRL_Z:
                    self.finish_cmgs(self.input.decode("latin-1").strip())
                    self.input.clear()
                elif byte == ESCAPE:
                    self.awaiting_pdu = None
                    self.input.clear()
                    self.answer("OK")
                else:
                    self.input.append(byte)
                continue
            if byte == 0x0D:
                line = self.input.decode("latin-1").strip()
                self.input.clear()
                if line:
                    if self.modem.echo:
                        self.write(line + "\r")
                    try:
                        self.execute(line)
                    except ValueError:  # a malformed argument, as a modem answers it
                        self.answer("ERROR")
            elif byte != 0x0A:
                self.input.append(byte)
            if self.modem.hung:
                return

    def execute(self, line: str) -> None:
        modem = self.modem
        modem.commands.append(line)
        if modem.hang_on is not None and line.upper().startswith(modem.hang_on):
            if modem.hang_after == 0:
                modem.hung, modem.hang_on = True, None
                return
            modem.hang_after -= 1
        command = line.upper()
        if not command.startswith("AT"):
            self.answer("ERROR")
            return
        command = command[2:]
        if command in ("", "Z"):
            self.answer("OK")
        elif command in ("E0", "E1"):
            modem.echo = command == "E1"
            self.answer("OK")
        elif command.startswith("+CMEE=") or command.startswith("+CMMS=") or command.startswith("+CSMS="):
            self.answer("OK")
        elif command == "+CPIN?":
            self.answer("+CPIN: READY" if modem.pin_ok else "+CPIN: SIM PIN", "OK")
        elif command.startswith("+CPIN="):
            given = line[len("AT+CPIN=") :].strip().strip('"')
            if modem.pin_ok or given == modem.pin:
                modem.pin_ok = True
                self.answer("OK")
            else:
                self.answer(f"+CME ERROR: {CME_INCORRECT_PASSWORD}")
        elif command.startswith("+CFUN"):
            self.cfun(command)
        elif not modem.pin_ok:
            self.answer(f"+CME ERROR: {CME_SIM_PIN_REQUIRED}")
        elif command == "+CSQ":
            self.answer(f"+CSQ: {modem.csq},99", "OK")
        elif command == "+CREG?":
            self.answer(f"+CREG: {modem.creg_mode},{modem.registration if modem.functional else 0}", "OK")
        elif command.startswith("+CREG="):
            modem.creg_mode = int(command[6:] or 0)
            self.answer("OK")
        elif command.startswith("+CMGF="):
            modem.pdu_mode = command[6:] == "0"
            self.answer("OK" if modem.pdu_mode else "ERROR")
        elif command == "+CSCA?":
            self.answer(f'+CSCA: "{modem.smsc}",145', "OK")
        elif command.startswith("+CSCA="):
            modem.smsc = line[len("AT+CSCA=") :].split(",")[0].strip().strip('"')
            self.answer("OK")
        elif command.startswith("+CNMI="):
            values = [int(v) if v.strip().isdigit() else 0 for v in command[6:].split(",")]
            values += [0] * (5 - len(values))
            modem.notify_incoming, modem.report_unsolicited = values[1], values[3]
            self.answer("OK")
        elif command.startswith("+CPMS="):
            used = len(modem.storage)
            self.answer(f"+CPMS: {used},{SIM_CAPACITY},{used},{SIM_CAPACITY},{used},{SIM_CAPACITY}", "OK")
        elif not modem.pdu_mode:
            self.answer("ERROR")
        elif command.startswith("+CMGS="):
            self.start_cmgs(command[6:])
        elif command.startswith("+CMGL"):
            self.list_messages()
        elif command.startswith("+CMGR="):
            self.read_message(command[6:])
        elif command.startswith("+CMGD="):
            self.delete_message(command[6:])
        else:
            self.answer("ERROR")

    def cfun(self, command: str) -> None:
        modem = self.modem
        if command == "+CFUN?":
            self.answer(f"+CFUN: {1 if modem.functional else 0}", "OK")
            return
        values = command[len("+CFUN=") :].split(",")
        if len(values) > 1 and values[1] == "1":
            modem.reset()  # a reset: echo back on, PIN asked again, CNMI forgotten
        else:
            modem.functional = values[0] == "1"
        self.answer("OK")

    def start_cmgs(self, argument: str) -> None:
        if not argument.isdigit():
            self.answer("ERROR")
            return
        self.awaiting_pdu = int(argument)
        self.write("\r\n> ")

    def finish_cmgs(self, pdu_hex: str) -> None:
        length, self.awaiting_pdu = self.awaiting_pdu, None
        modem = self.modem
        try:
            tpdu = pdu.skip_smsc(pdu.from_hex(pdu_hex))
            if len(tpdu) != length:
                raise pdu.PduError(f"length {length} given, {len(tpdu)} octets sent")
            submit = pdu.decode_submit(tpdu)
        except pdu.PduError as e:
            print(f"modem-emu: refused PDU: {e}", file=sys.stderr, flush=True)
            self.answer(f"+CMS ERROR: {CMS_INVALID_PDU}")
            return
        if modem.refuse_count > 0 and modem.refuse_after == 0:
            modem.refuse_count -= 1
            self.answer(f"+CMS ERROR: {modem.refuse_code}")
            return
        if not modem.functional or modem.registration not in (1, 5):
            self.answer(f"+CMS ERROR: {CMS_NO_NETWORK}")
            return
        if modem.refuse_count > 0:
            modem.refuse_after -= 1
        reference = modem.next_reference
        modem.next_reference = (reference + 1) % 256
        modem.sent.append(
            SentMessage(
                reference,
                submit.destination,
                submit.encoding.value,
                submit.udh.hex(),
                submit.payload.hex(),
                decode_payload(submit.payload, submit.encoding, "replace"),
                submit.request_report,
            )
        )
        self.answer(f"+CMGS: {reference}", "OK")
        if submit.request_report and modem.auto_report != "off":
            status = 0x00 if modem.auto_report == "delivered" else 0x41
            self.due_reports.append((time.monotonic(), self.status_report(reference, submit.destination, status)))

    def list_messages(self) -> None:
        lines = []
        for index, stored in sorted(self.modem.storage.items()):
            lines += [f"+CMGL: {index},{stored.stat},,{tpdu_length(stored.pdu_hex)}", stored.pdu_hex]
            stored.stat = 1
        self.answer(*lines, "OK")

    def read_message(self, argument: str) -> None:
        stored = self.modem.storage.get(int(argument)) if argument.isdigit() else None
        if stored is None:
            self.answer(f"+CMS ERROR: {CMS_INVALID_INDEX}")
            return
        self.answer(f"+CMGR: {stored.stat},,{tpdu_length(stored.pdu_hex)}", stored.pdu_hex, "OK")
        stored.stat = 1

    def delete_message(self, argument: str) -> None:
        values = argument.split(",")
        if len(values) > 1 and values[1].strip() == "4":
            self.modem.storage.clear()
        elif values[0].isdigit():
            self.modem.storage.pop(int(values[0]), None)
        else:
            self.answer("ERROR")
            return
        self.answer("OK")

    # --- what the network sends ------------------------------------------------------------------

    def smsc_prefix(self) -> bytes:
        return pdu.encode_smsc(self.modem.smsc)

    def status_report(self, reference: int, recipient: str, status: int) -> bytes:
        moment = pdu.now_with_zone()
        return self.smsc_prefix() + pdu.encode_status_report(reference, recipient, moment, moment, status)

    def send_report(self, report: bytes) -> None:
        tpdu_length = len(pdu.skip_smsc(report))
        if self.modem.report_unsolicited == 1 and not self.modem.store_reports:
            self.answer(f"+CDS: {tpdu_length}", report.hex().upper())
            return
        index = self.modem.store(report.hex().upper())
        if self.modem.report_unsolicited != 0:
            self.answer(f'+CDSI: "SM",{index}')

    def deliver(self, sender: str, text: str, encoding: str | None, lose_parts: Iterable[int] = ()) -> list[int]:
        """Store the message (concatenated when long) as the network delivers it; the parts
        numbered in lose_parts never arrive."""
        chosen = Encoding(encoding) if encoding else choose_encoding(text)
        segments = segment_text(text, chosen)
        reference = random.randrange(256)
        indexes = []
        moment = pdu.now_with_zone()
        for number, short_message in enumerate(segments.short_messages(reference), start=1):
            if number in lose_parts:
                continue
            udh = short_message[:6] if segments.parts > 1 else b""
            tpdu = pdu.encode_deliver(sender, moment, short_message[len(udh) :], chosen, udh)
            index = self.modem.store((self.smsc_prefix() + tpdu).hex().upper())
            indexes.append(index)
            if self.modem.notify_incoming == 1:
                self.answer(f'+CMTI: "SM",{index}')
        return indexes

    def deliver_raw(self, pdu_hex: str) -> int:
        """Store a PDU as given, unchecked: what a broken network or SIM can leave there."""
        index = self.modem.store(pdu_hex)
        if self.modem.notify_incoming == 1:
            self.answer(f'+CMTI: "SM",{index}')
        return index

    # --- the control socket --------------------------------------------------------------------

    def control_command(self, request: dict[str, Any]) -> dict[str, Any]:
        modem = self.modem
        command = request.get("command")
        if command == "status":
            return {
                "device": self.slave_path,
                "hung": modem.hung,
                "stored": sorted(modem.storage),
                "sent": len(modem.sent),
                "pdus": {str(index): stored.pdu_hex for index, stored in sorted(modem.storage.items())},
            }
        if command == "deliver":
            lose = [int(n) for n in request.get("lose_parts", [])]
            return {
                "indexes": self.deliver(str(request["sender"]), str(request["text"]), request.get("encoding"), lose)
            }
        if command == "report":
            sent = next((s for s in reversed(modem.sent) if s.reference == int(request["reference"])), None)
            recipient = sent.destination if sent else "+10000000000"
            self.send_report(self.status_report(int(request["reference"]), recipient, int(request.get("status", 0))))
            return {}
        if command == "auto_report":
            modem.auto_report = str(request["mode"])
            return {}
        if command == "refuse":
            modem.refuse_code, modem.refuse_count = int(request["code"]), int(request.get("count", 1))
            modem.refuse_after = int(request.get("after", 0))
            return {}
        if command == "hang":
            modem.hung = True
            return {}
        if command == "hang_on":
            modem.hang_on, modem.hang_after = str(request["prefix"]).upper(), int(request.get("after", 0))
            return {}
        if command == "store_reports":
            modem.store_reports = bool(request.get("on", True))
            return {}
        if command == "deliver_raw":
            return {"index": self.deliver_raw(str(request["pdu"]))}
        if command == "garbage":
            modem.garbage = bool(request.get("on", True))
            self.write("\r\n\x00\xffNOISE%\x80\r\n")
            return {}
        if command == "disconnect":
            self.disconnect(float(request.get("seconds", 1.0)))
            return {}
        if command == "signal":
            modem.csq = int(request["csq"])
            return {}
        if command == "register":
            modem.registration = int(request["stat"])
            if modem.creg_mode == 1:
                self.answer(f"+CREG: {modem.registration}")
            return {}
        if command == "sent":
            return {"sent": [s.__dict__ for s in modem.sent]}
        if command == "commands":
            return {"commands": modem.commands}
        raise ValueError(f"unknown command {command!r}")

    def serve_client(self, client: socket.socket) -> None:
        data = client.recv(65536)
        if not data:
            del self.clients[client]
            client.close()
            return
        buffer = self.clients[client]
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            try:
                reply = {"ok": True, **self.control_command(json.loads(line))}
            except (ValueError, KeyError, TypeError, OverflowError) as e:
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            client.sendall(json.dumps(reply).encode() + b"\n")

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            if self.reconnect_at is not None and now >= self.reconnect_at:
                self.reconnect_at = None
                self.open_pty()
                print(f"modem-emu reconnected device={self.slave_path}", flush=True)
            for due_at, report in [r for r in self.due_reports if r[0] <= now]:
                self.due_reports.remove((due_at, report))
                if not self.modem.hung:
                    self.send_report(report)
            readers: list[Any] = [self.control, *self.clients]
            if self.master >= 0 and (self.slave_open or now >= self.next_check_at):
                readers.append(self.master)
            timeout = REOPEN_CHECK_S if self.due_reports or not self.slave_open or self.reconnect_at else 1.0
            try:
                ready, _, _ = select.select(readers, [], [], timeout)
            except InterruptedError:
                continue
            for item in ready:
                if item is self.control:
                    client, _ = self.control.accept()
                    self.clients[client] = bytearray()
                elif item is self.master:
                    self.read_master()
                elif isinstance(item, socket.socket) and item in self.clients:
                    self.serve_client(item)


def main() -> None:
    parser = argparse.ArgumentParser(prog="smsbus-modem-emu", description=__doc__.splitlines()[0])
    parser.add_argument("--control", type=Path, required=True, help="Unix socket for control commands (JSON lines)")
    parser.add_argument("--link", type=Path, help="a stable symlink to the current pty (like /dev/serial/by-id)")
    parser.add_argument("--pin", help="the SIM asks for this PIN (default: no PIN)")
    parser.add_argument(
        "--auto-report",
        choices=["off", "delivered", "failed"],
        default="off",
        help="answer every message that asks for a status report with this outcome",
    )
    arguments = parser.parse_args()
    modem = Modem(pin=arguments.pin, auto_report=arguments.auto_report)
    modem.reset()
    emulator = Emulator(modem, arguments.link, arguments.control)

    def stop(signum: int, frame: object) -> None:
        emulator.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"modem-emu ready device={emulator.slave_path} control={arguments.control}", flush=True)
    emulator.run()
