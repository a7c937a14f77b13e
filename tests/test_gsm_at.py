"""The AT command layer against the modem emulator on a real pty: answers, per-command
timeouts, unsolicited codes between and inside answers, garbage, refusals, a vanished port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
import serial  # type: ignore[import-untyped]

from smsbus.encoding import Encoding
from smsbus_channel_gsm import pdu
from smsbus_channel_gsm.at import AtPort, CommandFailed, ModemTimeout, PortLost
from tests.peers.modem import EmulatedModem


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[EmulatedModem]:
    emulator = EmulatedModem(tmp_path, auto_report="delivered")
    yield emulator
    emulator.stop()


@pytest.fixture
def at(modem: EmulatedModem) -> Iterator[AtPort]:
    port = serial.Serial(str(modem.link), 115200, timeout=0)
    layer = AtPort(port, "at-test")
    layer.command("ATE0", 2)
    layer.command("AT+CMGF=0", 2)
    layer.command("AT+CNMI=2,1,0,1,0", 2)
    yield layer
    port.close()


def wait_for_unsolicited(at: AtPort, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not at.read_available():
        assert time.monotonic() < deadline, "no unsolicited code arrived"
        time.sleep(0.01)


def test_answers_and_echo_before_ate0(modem: EmulatedModem) -> None:
    port = serial.Serial(str(modem.link), 115200, timeout=0)
    try:
        layer = AtPort(port, "at-test")
        assert layer.command("AT+CPIN?", 2, answer="+CPIN:") == ["+CPIN: READY"]  # echo skipped
        assert layer.command("AT+CSQ", 2, answer="+CSQ:") == ["+CSQ: 20,99"]
    finally:
        port.close()


def test_unsolicited_codes_between_commands_wake_the_reader(at: AtPort, modem: EmulatedModem) -> None:
    modem.call("deliver", sender="+31611112222", text="hello")
    wait_for_unsolicited(at)
    (code,) = at.take_unsolicited()
    assert (code.name, code.value) == ("+CMTI", '"SM",1')


def test_a_status_report_arriving_inside_an_answer_is_kept_with_its_pdu(at: AtPort) -> None:
    tpdu = pdu.encode_submit(pdu.Submit("+31612345678", b"hi", Encoding.GSM7, request_report=True))
    reference = at.send_pdu(len(tpdu), "00" + tpdu.hex(), 2)
    # the emulator sends +CDS right behind +CMGS/OK: the next command's answer passes over it
    time.sleep(0.1)
    assert at.command("AT+CSQ", 2, answer="+CSQ:") == ["+CSQ: 20,99"]
    (code,) = at.take_unsolicited()
    assert code.name == "+CDS" and code.pdu is not None
    report = pdu.decode_status_report(pdu.skip_smsc(pdu.from_hex(code.pdu)))
    assert report.reference == reference and report.outcome is pdu.ReportOutcome.DELIVERED


def test_refusals_carry_their_code(at: AtPort) -> None:
    with pytest.raises(CommandFailed) as refused:
        at.command("AT+CMGR=42", 2, answer="+CMGR:", pdu_lines=True)
    assert refused.value.code == 321 and "+CMS ERROR: 321" in str(refused.value)
    with pytest.raises(CommandFailed):
        at.send_pdu(3, "00" + "0100", 2)  # length 3 announced, 2 octets sent: invalid PDU


def test_a_modem_that_stops_answering_times_out(at: AtPort, modem: EmulatedModem) -> None:
    modem.call("hang")
    with pytest.raises(ModemTimeout, match="no answer to AT"):
        at.command("AT", 0.3)


def test_garbage_is_counted_and_the_answer_still_found(at: AtPort, modem: EmulatedModem) -> None:
    def garbage_count() -> float:
        return (
            prometheus_client.REGISTRY.get_sample_value("smsbus_gsm_garbage_lines_total", {"channel": "at-test"}) or 0
        )

    before = garbage_count()
    modem.call("garbage", on=True)
    assert at.command("AT+CREG?", 2, answer="+CREG:") == ["+CREG: 0,1"]
    assert garbage_count() >= before + 1


def test_a_vanished_port_is_reported_as_lost(at: AtPort, modem: EmulatedModem) -> None:
    modem.call("disconnect", seconds=30)
    with pytest.raises(PortLost):
        at.command("AT", 1)
