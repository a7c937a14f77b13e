"""One SMPP connection: connect, bind, frame PDUs, send. smpplib encodes and decodes the PDUs;
the socket is ours, owned by the main thread alone (smpplib's Client is blocking and not
thread-safe), non-blocking and watched by the main loop's poller.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time
from typing import Any

from smpplib import command_codes, exceptions, smpp
from smpplib.client import SimpleSequenceGenerator

from smsbus.channel_settings import SmppSettings
from smsbus.errors import ConfigError

PDU = Any  # smpplib's PDU classes carry no type annotations
HEADER_BYTES = 16
# far above any PDU we accept (short_message <= 254 octets, message_payload a few KB)
MAX_PDU_BYTES = 65_536
RECEIVE_BYTES = 65_536
# read per call at most: an SMSC that floods waits in the kernel (TCP flow control) until
# what was read is dispatched, stored and acknowledged
MAX_BUFFER_BYTES = 4 * MAX_PDU_BYTES
SEND_TIMEOUT_S = 5.0
# requests whose mandatory fields must be there even when empty
ALWAYS_HAVE_BODY = frozenset({"deliver_sm", "data_sm", "submit_sm"})
# the commands smpplib can decode; any other command_id is garbage to us
KNOWN_COMMANDS = {
    code: name
    for name, code in command_codes.commands.items()
    if name not in ("outbind", "replace_sm", "replace_sm_resp", "cancel_sm", "cancel_sm_resp",
                    "submit_multi", "submit_multi_resp")
}
PARSE_ERRORS = (struct.error, IndexError, ValueError, KeyError, TypeError, UnicodeDecodeError,
                exceptions.UnknownCommandError, exceptions.PDUError)


def check_mandatory_fields(pdu: PDU, body: bytes) -> None:
    """smpplib reads a truncated body as missing fields and an unterminated string as
    garbage without complaint: walk the mandatory fields as SMPP 3.4 lays them out."""
    position = 0
    for name in pdu.params_order:
        if pdu.field_is_optional(name):
            return
        param = pdu.params[name]
        if param.type is int:
            position += param.size
        elif param.type is str:
            end = body.find(b"\x00", position)
            if end < 0:
                raise ProtocolError(f"malformed {pdu.command}: {name} has no NUL terminator")
            position = end + 1
        else:
            position += int(getattr(pdu, param.len_field, 0) or 0)
        if position > len(body):
            raise ProtocolError(f"malformed {pdu.command}: the body ends inside {name}")


class SessionError(Exception):
    """The connection cannot go on: it is closed and the bind made again."""


class ConnectionLost(SessionError):
    pass


class ProtocolError(SessionError):
    """The SMSC sent something that is not SMPP 3.4 (a wrong length, an unknown command,
    a malformed body)."""


class BindRefused(SessionError):
    def __init__(self, command: str, status: int) -> None:
        super().__init__(f"{command} refused with command_status 0x{status:08X}")
        self.status = status


class Session:
    """A bound SMPP connection; `kind` is the bind command (bind_transceiver, ...)."""

    def __init__(self, sock: socket.socket, kind: str) -> None:
        self.sock = sock
        self.kind = kind
        self.sequences = SimpleSequenceGenerator()
        self.buffer = bytearray()
        self.last_sent_at = time.monotonic()
        # sequence -> when an enquire_link went out without its response yet
        self.enquire_links: dict[int, float] = {}

    @classmethod
    def open(cls, settings: SmppSettings, kind: str) -> Session:
        """Connect and bind, blocking for at most connect_timeout_s per step."""
        try:
            raw = socket.create_connection((settings.host, settings.port), timeout=settings.connect_timeout_s)
        except OSError as e:
            raise ConnectionLost(f"cannot connect to {settings.host}:{settings.port}: {e}") from None
        # each PDU goes out at once: Nagle would hold a submit until the previous one is acked
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        if settings.tls:
            try:
                # a private SMSC's own CA (tls_ca_file), else the system's; the host name checked
                context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
                sock = context.wrap_socket(raw, server_hostname=settings.host)
            except (OSError, ssl.SSLError) as e:
                raw.close()
                raise ConnectionLost(f"TLS handshake with {settings.host} failed: {e}") from None
        session = cls(sock, kind)
        try:
            session._bind(settings)
        except BaseException:
            session.close()
            raise
        sock.setblocking(False)
        return session

    def _bind(self, settings: SmppSettings) -> None:
        try:
            password = settings.bind_password()
        except ConfigError as e:  # the file went away or changed mode: tried again later
            raise ConnectionLost(str(e)) from None
        self.send(self.make(self.kind, system_id=settings.system_id, password=password,
                            system_type=settings.system_type))
        deadline = time.monotonic() + settings.connect_timeout_s
        while True:
            pdu = self.next_pdu()
            if pdu is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost(f"no {self.kind}_resp within {settings.connect_timeout_s} s")
                self.sock.settimeout(remaining)
                self._receive_blocking()
                continue
            if pdu.command == f"{self.kind}_resp" or pdu.command == "generic_nack":
                if pdu.status != 0:
                    raise BindRefused(self.kind, int(pdu.status))
                return

    def _receive_blocking(self) -> None:
        try:
            data = self.sock.recv(RECEIVE_BYTES)
        except TimeoutError:
            return
        except OSError as e:
            raise ConnectionLost(str(e)) from None
        if not data:
            raise ConnectionLost("the SMSC closed the connection")
        self.buffer += data

    def fileno(self) -> int:
        return self.sock.fileno()

    def make(self, command: str, **fields: Any) -> PDU:
        return smpp.make_pdu(command, client=self.sequences, **fields)

    def respond(self, request: PDU, command: str, status: int = 0) -> None:
        response = self.make(command, status=status)
        # smpplib keeps the client's current sequence unless it is set after construction
        response.sequence = request.sequence
        self.send(response)

    def receive_available(self) -> bool:
        """Read what the kernel holds without blocking, up to MAX_BUFFER_BYTES buffered;
        True when the buffer is full and more may wait (in the kernel or in TLS's buffer,
        which the poller does not see): call again once the PDUs are dispatched."""
        while len(self.buffer) < MAX_BUFFER_BYTES:
            try:
                data = self.sock.recv(min(RECEIVE_BYTES, MAX_BUFFER_BYTES - len(self.buffer)))
            except (BlockingIOError, ssl.SSLWantReadError):
                return False
            except OSError as e:
                raise ConnectionLost(str(e)) from None
            if not data:
                raise ConnectionLost("the SMSC closed the connection")
            self.buffer += data
        return True

    def next_pdu(self) -> PDU | None:
        """The next complete PDU in the buffer, or None; ProtocolError for garbage."""
        if len(self.buffer) < 4:
            return None
        length = int.from_bytes(self.buffer[:4], "big")
        if not HEADER_BYTES <= length <= MAX_PDU_BYTES:
            raise ProtocolError(f"wrong command_length {length}")
        if len(self.buffer) < length:
            return None
        raw = bytes(self.buffer[:length])
        del self.buffer[:length]
        command_id = int.from_bytes(raw[4:8], "big")
        name = KNOWN_COMMANDS.get(command_id)
        if name is None:
            raise ProtocolError(f"unknown command_id 0x{command_id:08X}")
        try:
            pdu = smpp.parse_pdu(raw, client=self.sequences, allow_unknown_opt_params=True)
        except PARSE_ERRORS as e:
            raise ProtocolError(f"malformed {name} ({type(e).__name__}: {e})") from None
        body = raw[HEADER_BYTES:]
        if body or name in ALWAYS_HAVE_BODY:
            check_mandatory_fields(pdu, body)
        return pdu

    def send(self, pdu: PDU) -> None:
        data = memoryview(pdu.generate())
        deadline = time.monotonic() + SEND_TIMEOUT_S
        while data:
            try:
                sent = self.sock.send(data)
                data = data[sent:]
            except (BlockingIOError, ssl.SSLWantWriteError):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectionLost(f"the SMSC read nothing for {SEND_TIMEOUT_S} s") from None
                select.select([], [self.sock], [], remaining)
            except OSError as e:
                raise ConnectionLost(str(e)) from None
        self.last_sent_at = time.monotonic()

    def close(self, unbind: bool = False) -> None:
        if unbind:
            try:
                self.send(self.make("unbind"))
            except SessionError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
