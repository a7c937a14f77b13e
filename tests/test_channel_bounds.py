"""What an SMSC or a modem sends is bounded in memory and in metrics series (issue 14 item 6):
the SMPP receive buffer, the modem's unfinished line and unsolicited queue, the
command_status label. Real sockets and pipes, no database."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from smsbus_channel_gsm.at import MAX_LINE_BYTES, MAX_UNSOLICITED, AtPort
from smsbus_channel_smpp.command_status import ESME_ROK, ESME_RTHROTTLED, status_label
from smsbus_channel_smpp.session import MAX_BUFFER_BYTES, Session


class PipePort:
    """The read end of a pipe standing in for a serial port: AtPort only reads its descriptor."""

    def __init__(self, read_fd: int) -> None:
        self.read_fd = read_fd

    def fileno(self) -> int:
        return self.read_fd

    def write(self, data: bytes, /) -> int:
        return len(data)


@pytest.fixture
def modem_pipe() -> Iterator[tuple[AtPort, int]]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    yield AtPort(PipePort(read_fd), "modem1"), write_fd
    os.close(read_fd)
    os.close(write_fd)


def test_unknown_command_status_codes_share_one_label() -> None:
    assert status_label(ESME_ROK) == "0x00000000"
    assert status_label(ESME_RTHROTTLED) == "0x00000058"
    assert {status_label(code) for code in (0x400, 0x4FF, 0x12345678, 0xFFFFFFFF)} == {"other"}


def test_a_flooding_smsc_fills_the_buffer_to_its_cap_and_the_rest_waits_in_the_kernel() -> None:
    ours, smsc = socket.socketpair()
    smsc.setblocking(False)
    ours.setblocking(False)
    session = Session(ours, "bind_transceiver")
    full = False
    for _ in range(1000):  # the SMSC writes whatever the kernel takes; we read without dispatching
        try:
            smsc.send(b"\x00" * 65536)
        except BlockingIOError:
            pass
        full = session.receive_available()
        if full:
            break
    assert full and len(session.buffer) == MAX_BUFFER_BYTES
    assert session.receive_available() is True and len(session.buffer) == MAX_BUFFER_BYTES
    # dispatched: the next call reads again
    session.buffer.clear()
    smsc.send(b"\x01" * 1000)
    session.receive_available()
    assert 0 < len(session.buffer) <= MAX_BUFFER_BYTES
    ours.close()
    smsc.close()


def test_a_modem_line_without_an_end_is_dropped_as_garbage_not_buffered(modem_pipe: tuple[AtPort, int]) -> None:
    at, writer = modem_pipe
    for _ in range(8):
        os.write(writer, b"x" * 8192)
        at.read_available()
        assert len(at.buffer) <= MAX_LINE_BYTES
    os.write(writer, b"\r\n+CMTI: \"SM\",1\r\n")
    assert at.read_available()
    assert [c.name for c in at.take_unsolicited()] == ["+CMTI"]


def test_unsolicited_codes_beyond_the_cap_are_dropped(modem_pipe: tuple[AtPort, int]) -> None:
    at, writer = modem_pipe
    flood = b"RING\r\n" * (MAX_UNSOLICITED + 500)
    written = 0
    while written < len(flood):
        written += os.write(writer, flood[written:written + 32768])
        at.read_available()
    assert len(at.take_unsolicited()) == MAX_UNSOLICITED
