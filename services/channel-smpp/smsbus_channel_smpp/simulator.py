"""smsbus-smsc-sim: an SMSC simulator to try smsbus without a provider, and the tests' peer.

Binds with a password, answers submit_sm with ids (after a configurable latency), sends
delivery receipts after a delay, injects incoming messages (long ones concatenated), throttles
or errors a chosen fraction, drops connections on command, and logs every PDU as a JSON line.

Commands, one per line on the control port (each answered with one line, `ok ...`/`error ...`):
    latency MS | receipt-delay MS | receipts on|off | receipt-state STATE | early-receipts on|off
    receipt-tlvs on|off
    throttle FRACTION | error FRACTION STATUS | fail-next N STATUS | drop | drop-after N
    inject FROM TO TEXT | inject-parts FROM TO 1,3 TEXT | garbage length|unknown|malformed
    inject-raw JSON (deliver_sm fields as given: source_addr, destination_addr and
        short_message in hex, source_addr_ton, source_addr_npi, data_coding, esm_class)
    stats | flush
Message ids are given in upper-case hex with leading zeros; receipts name them in decimal
in the text and in lower-case hex in the receipted_message_id TLV, as some SMSCs do.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from smpplib import command_codes, smpp
from smpplib.client import SimpleSequenceGenerator

from smsbus.encoding import choose_encoding, segment_text
from smsbus_channel_smpp.command_status import ESME_RTHROTTLED

PDU = Any
ESME_RINVPASWD = 0x0000000E
ESME_RINVCMDID = 0x00000003
ESME_RINVCMDLEN = 0x00000002
RECEIVING_BINDS = ("bind_transceiver", "bind_receiver")
FLUSH_INTERVAL_S = 0.2


@dataclass
class Behaviour:
    """What the operator (or a test) set on the control port."""

    latency_s: float = 0.0
    receipts: bool = True
    receipt_delay_s: float = 0.1
    receipt_state: str = "DELIVRD"
    early_receipts: bool = False
    # off: receipts carry the id only in their text, in decimal
    receipt_tlvs: bool = True
    throttle_fraction: float = 0.0
    error_fraction: float = 0.0
    error_status: int = 0x00000008
    fail_next: list[int] = field(default_factory=list)
    drop_after: int | None = None


class PduLog:
    """Every PDU in and out, one JSON line each."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, direction: str, connection: int, pdu: PDU, **extra: Any) -> None:
        record: dict[str, Any] = {
            "ts": round(time.time(), 6), "dir": direction, "connection": connection,
            "command": pdu.command, "sequence": pdu.sequence, "status": pdu.status,
        }
        for name in ("system_id", "source_addr", "destination_addr", "esm_class", "data_coding",
                     "message_id", "registered_delivery"):
            value = getattr(pdu, name, None)
            if value is not None:
                record[name] = value.decode("latin-1") if isinstance(value, bytes) else value
        short_message = getattr(pdu, "short_message", None)
        if short_message:
            record["short_message"] = bytes(short_message).hex()
        record.update(extra)
        self.out.write(json.dumps(record) + "\n")

    def note(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"ts": round(time.time(), 6), "event": event, **fields}) + "\n")


class Connection:
    def __init__(self, sim: Simulator, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sim = sim
        self.number = number
        self.reader = reader
        self.writer = writer
        self.sequences = SimpleSequenceGenerator()
        self.bind: str | None = None
        # receipts sent without their deliver_sm_resp yet: sent again if the connection ends
        self.unacked_receipts: dict[int, tuple[PDU, int]] = {}

    def send(self, pdu: PDU) -> None:
        if self.writer.is_closing():
            return
        self.sim.log.write("out", self.number, pdu)
        self.writer.write(pdu.generate())

    def respond(self, request: PDU, command: str, status: int = 0, **fields: Any) -> None:
        response = smpp.make_pdu(command, client=self.sequences, status=status, **fields)
        response.sequence = request.sequence
        self.send(response)

    def close(self) -> None:
        self.writer.close()

    async def serve(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(4)
                length = int.from_bytes(header, "big")
                if length < 16 or length > 65_536:
                    self.sim.log.note("bad_length", connection=self.number, length=length)
                    return
                raw = header + await self.reader.readexactly(length - 4)
                self.handle(raw)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.sim.connections.discard(self)
            self.writer.close()
            self.sim.log.note("disconnected", connection=self.number)
            unacked, self.unacked_receipts = self.unacked_receipts, {}
            for submit, number in unacked.values():
                self.sim.send_receipt(submit, number)

    def handle(self, raw: bytes) -> None:
        command_id = int.from_bytes(raw[4:8], "big")
        try:
            command_codes.get_command_name(command_id)
            pdu = smpp.parse_pdu(raw, client=self.sequences, allow_unknown_opt_params=True)
        except Exception as e:  # anything smpplib cannot read is answered with generic_nack
            self.sim.log.note("unreadable", connection=self.number, error=str(e), raw=raw.hex())
            nack = smpp.make_pdu("generic_nack", client=self.sequences, status=ESME_RINVCMDID)
            nack.sequence = int.from_bytes(raw[12:16], "big")
            self.send(nack)
            return
        self.sim.log.write("in", self.number, pdu)
        self.sim.on_pdu(self, pdu)


class Simulator:
    def __init__(self, args: argparse.Namespace, log: PduLog) -> None:
        self.system_id = args.system_id
        self.password = args.password
        self.behaviour = Behaviour(latency_s=args.latency_ms / 1000, receipt_delay_s=args.receipt_delay_ms / 1000,
                                   receipts=not args.no_receipts)
        self.log = log
        self.connections: set[Connection] = set()
        self.numbers = itertools.count(1)
        self.message_ids = itertools.count(1)
        self.references = itertools.count(1)
        self.counts: dict[str, int] = {"submits": 0, "binds": 0, "receipts_sent": 0, "delivered_acked": 0,
                                       "injected": 0, "errors_sent": 0, "throttled_sent": 0}
        self.held_receipts: list[tuple[PDU, int]] = []
        self.pending_responses = 0
        self.max_pending_responses = 0
        self.random = random.Random(args.seed)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, next(self.numbers), reader, writer)
        self.connections.add(connection)
        self.log.note("connected", connection=connection.number)
        await connection.serve()

    def on_pdu(self, connection: Connection, pdu: PDU) -> None:
        command = pdu.command
        if command in ("bind_transmitter", "bind_receiver", "bind_transceiver"):
            self.on_bind(connection, pdu)
        elif connection.bind is None:
            connection.respond(pdu, "generic_nack", status=0x00000004)
        elif command == "submit_sm":
            self.on_submit(connection, pdu)
        elif command == "enquire_link":
            connection.respond(pdu, "enquire_link_resp")
        elif command == "unbind":
            connection.respond(pdu, "unbind_resp")
            connection.close()
        elif command == "deliver_sm_resp":
            self.counts["delivered_acked"] += 1
            connection.unacked_receipts.pop(pdu.sequence, None)

    def on_bind(self, connection: Connection, pdu: PDU) -> None:
        system_id = (pdu.system_id or b"").decode("latin-1")
        password = (pdu.password or b"").decode("latin-1")
        ok = system_id == self.system_id and password == self.password
        connection.respond(pdu, f"{pdu.command}_resp", status=0 if ok else ESME_RINVPASWD, system_id="smsbus-sim")
        if ok:
            connection.bind = pdu.command
            self.counts["binds"] += 1
            if pdu.command in RECEIVING_BINDS:
                held, self.held_receipts = self.held_receipts, []
                for submit, number in held:
                    self.send_receipt(submit, number)

    def on_submit(self, connection: Connection, pdu: PDU) -> None:
        self.counts["submits"] += 1
        behaviour = self.behaviour
        status = 0
        if behaviour.fail_next:
            status = behaviour.fail_next.pop(0)
        elif self.random.random() < behaviour.throttle_fraction:
            status = ESME_RTHROTTLED
        elif self.random.random() < behaviour.error_fraction:
            status = behaviour.error_status
        if status == ESME_RTHROTTLED:
            self.counts["throttled_sent"] += 1
        elif status:
            self.counts["errors_sent"] += 1
        number = next(self.message_ids) if status == 0 else 0
        self.pending_responses += 1
        self.max_pending_responses = max(self.max_pending_responses, self.pending_responses)
        wants_receipt = status == 0 and behaviour.receipts and int(pdu.registered_delivery or 0) & 0x03
        loop = asyncio.get_running_loop()
        if wants_receipt and behaviour.early_receipts:
            self.send_receipt(pdu, number)
        # the response is scheduled first: with equal delays it goes out first
        loop.call_later(behaviour.latency_s, self.answer_submit, connection, pdu, status, number)
        if wants_receipt and not behaviour.early_receipts:
            loop.call_later(behaviour.latency_s + behaviour.receipt_delay_s, self.send_receipt, pdu, number)
        if behaviour.drop_after is not None:
            behaviour.drop_after -= 1
            if behaviour.drop_after <= 0:
                behaviour.drop_after = None
                loop.call_soon(self.drop)

    def answer_submit(self, connection: Connection, pdu: PDU, status: int, number: int) -> None:
        self.pending_responses -= 1
        connection.respond(pdu, "submit_sm_resp", status=status, message_id=f"{number:08X}" if status == 0 else "")

    def receiver(self) -> Connection | None:
        bound = [c for c in self.connections if c.bind in RECEIVING_BINDS]
        return self.random.choice(bound) if bound else None

    def send_receipt(self, submit: PDU, number: int) -> None:
        connection = self.receiver()
        if connection is None:
            # kept, as an SMSC does, until a receiver binds
            self.held_receipts.append((submit, number))
            return
        state = self.behaviour.receipt_state
        stamp = time.strftime("%y%m%d%H%M", time.gmtime())
        text = (f"id:{number} sub:001 dlvrd:{'001' if state == 'DELIVRD' else '000'} submit date:{stamp} "
                f"done date:{stamp} stat:{state} err:000 text:")
        states = {"DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "ACCEPTD": 6, "UNKNOWN": 7, "REJECTD": 8}
        receipt = smpp.make_pdu(
            "deliver_sm", client=connection.sequences,
            source_addr_ton=1, source_addr=(submit.destination_addr or b"").decode("latin-1"),
            dest_addr_ton=int(submit.source_addr_ton or 0),
            destination_addr=(submit.source_addr or b"").decode("latin-1"),
            esm_class=0x04, data_coding=0, short_message=text.encode(),
            **({"receipted_message_id": f"{number:x}", "message_state": states.get(state, 7)}
               if self.behaviour.receipt_tlvs else {}),
        )
        connection.send(receipt)
        connection.unacked_receipts[receipt.sequence] = (submit, number)
        self.counts["receipts_sent"] += 1

    def inject(self, source: str, destination: str, text: str, only_parts: set[int] | None = None) -> int:
        connection = self.receiver()
        if connection is None:
            raise ValueError("no receiver or transceiver is bound")
        segments = segment_text(text, choose_encoding(text))
        messages = segments.short_messages(next(self.references))
        for number, short_message in enumerate(messages, start=1):
            if only_parts is not None and number not in only_parts:
                continue
            pdu = smpp.make_pdu(
                "deliver_sm", client=connection.sequences,
                source_addr_ton=1 if source.startswith("+") else 0, source_addr=source.lstrip("+"),
                dest_addr_ton=1 if destination.startswith("+") else 0, destination_addr=destination.lstrip("+"),
                esm_class=0x40 if len(messages) > 1 else 0, data_coding=segments.data_coding,
                short_message=short_message,
            )
            connection.send(pdu)
        self.counts["injected"] += 1
        return len(messages)

    def inject_raw(self, fields: dict[str, Any]) -> None:
        """A deliver_sm exactly as asked, unchecked: what a hostile or broken SMSC can send."""
        connection = self.receiver()
        if connection is None:
            raise ValueError("no receiver or transceiver is bound")
        # smpplib writes C-string fields from str, one octet per character
        addresses = {name: bytes.fromhex(fields.get(name, "")).decode("latin-1")
                     for name in ("source_addr", "destination_addr")}
        numbers = {name: int(fields.get(name, 0)) for name in ("source_addr_ton", "source_addr_npi",
                                                                "dest_addr_ton", "dest_addr_npi",
                                                                "data_coding", "esm_class")}
        connection.send(smpp.make_pdu("deliver_sm", client=connection.sequences, **addresses, **numbers,
                                      short_message=bytes.fromhex(fields.get("short_message", ""))))
        self.counts["injected"] += 1

    def drop(self) -> int:
        dropped = len(self.connections)
        for connection in list(self.connections):
            connection.writer.transport.abort()
        self.log.note("dropped", connections=dropped)
        return dropped

    def garbage(self, kind: str) -> None:
        """Something no SMSC should send: a wrong length, an unknown command, a broken body."""
        if kind == "length":
            data = (8).to_bytes(4, "big") + b"\x00" * 4
        elif kind == "unknown":
            data = (16).to_bytes(4, "big") + (0x0000FFFF).to_bytes(4, "big") + bytes(8)
        elif kind == "malformed":
            # a deliver_sm whose body stops inside its mandatory fields
            body = b"\x00\x01"
            data = (16 + len(body)).to_bytes(4, "big") + (0x00000005).to_bytes(4, "big") + bytes(4) \
                + (7).to_bytes(4, "big") + body
        else:
            raise ValueError("garbage is one of: length, unknown, malformed")
        for connection in self.connections:
            connection.writer.write(data)
        self.log.note("garbage", kind=kind, raw=data.hex())

    def control(self, line: str) -> str:
        words = line.split(" ", 1)
        verb, rest = words[0], (words[1] if len(words) > 1 else "")
        behaviour = self.behaviour
        if verb == "latency":
            behaviour.latency_s = float(rest) / 1000
        elif verb == "receipt-delay":
            behaviour.receipt_delay_s = float(rest) / 1000
        elif verb == "receipts":
            behaviour.receipts = _on_off(rest)
        elif verb == "receipt-state":
            behaviour.receipt_state = rest.strip().upper()
        elif verb == "early-receipts":
            behaviour.early_receipts = _on_off(rest)
        elif verb == "receipt-tlvs":
            behaviour.receipt_tlvs = _on_off(rest)
        elif verb == "throttle":
            behaviour.throttle_fraction = _fraction(rest)
        elif verb == "error":
            fraction, status = rest.split()
            behaviour.error_fraction, behaviour.error_status = _fraction(fraction), int(status, 0)
        elif verb == "fail-next":
            count, status = rest.split()
            behaviour.fail_next = [int(status, 0)] * int(count)
        elif verb == "drop":
            return f"ok dropped {self.drop()}"
        elif verb == "drop-after":
            behaviour.drop_after = int(rest)
        elif verb == "inject":
            source, destination, text = rest.split(" ", 2)
            return f"ok parts {self.inject(source, destination, text)}"
        elif verb == "inject-parts":
            source, destination, numbers, text = rest.split(" ", 3)
            only = {int(n) for n in numbers.split(",")}
            return f"ok parts {self.inject(source, destination, text, only)}"
        elif verb == "inject-raw":
            self.inject_raw(json.loads(rest))
        elif verb == "garbage":
            self.garbage(rest.strip())
        elif verb == "stats":
            bound = sorted(c.bind or "-" for c in self.connections)
            stats = {**self.counts, "bound": bound, "max_pending_responses": self.max_pending_responses}
            return "ok " + json.dumps(stats)
        elif verb == "flush":
            self.log.out.flush()
        else:
            raise ValueError(f"unknown command {verb!r}")
        return "ok"

    async def serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            try:
                reply = self.control(line.decode().rstrip("\r\n"))
            except (ValueError, IndexError) as e:
                reply = f"error {e}"
            writer.write((reply + "\n").encode())
            await writer.drain()
        writer.close()


def _on_off(text: str) -> bool:
    if text.strip() not in ("on", "off"):
        raise ValueError("expected on or off")
    return text.strip() == "on"


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("a fraction is between 0 and 1")
    return value


async def serve(args: argparse.Namespace) -> None:
    out = open(args.log, "a", buffering=1 << 16) if args.log != "-" else sys.stdout
    sim = Simulator(args, PduLog(out))
    smpp_server = await asyncio.start_server(sim.accept, args.host, args.port)
    control_server = await asyncio.start_server(sim.serve_control, args.host, args.control_port)
    sim.log.note("listening", port=args.port, control_port=args.control_port)
    out.flush()
    async with smpp_server, control_server:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            out.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="smsbus-smsc-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2775, help="SMPP port")
    parser.add_argument("--control-port", type=int, default=2776, help="port for the line commands")
    parser.add_argument("--system-id", default="smsbus")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each submit_sm_resp")
    parser.add_argument("--receipt-delay-ms", type=float, default=100.0, help="delay from response to receipt")
    parser.add_argument("--no-receipts", action="store_true")
    parser.add_argument("--seed", type=int, default=None, help="for the throttle and error fractions")
    parser.add_argument("--log", default="-", help="file for the JSON lines (default stdout)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
