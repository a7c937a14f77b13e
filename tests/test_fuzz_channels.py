"""Fuzzing the incoming side of both channels (issue 14): hypothesis-generated deliver_sm
(bodies, data_codings, UDHs, senders, TON/NPI) through the real channel-smpp process from the
SMSC simulator, and SMS-DELIVER PDUs (well-formed or not) through the real channel-gsm process
from the modem emulator. Every one is acknowledged / leaves the SIM and ends RECEIVED (as a
message, a part of one, or a kept-whole malformed one, which is counted), and the channel goes
on sending. Short under `make test`; SMSBUS_SOAK=1 (`make soak`) runs many more examples.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from smsbus.encoding import split_user_data
from smsbus_channel_gsm import pdu
from smsbus_channel_smpp.channel_smpp import _address as stored_smpp_address
from tests import test_gsm_channel as gsm
from tests.peers.metrics import value
from tests.peers.modem import EmulatedModem
from tests.peers.processes import ServiceProcess, free_port, start_service
from tests.peers.smsc import Smsc
from tests.test_smpp import add_channel, send, wait_for, wait_status

Conn = psycopg.Connection[dict[str, Any]]
SOAK = bool(os.environ.get("SMSBUS_SOAK"))
# no shrinking: the processes keep the state of every example before (a failure is reported as found)
FUZZ = settings(max_examples=300 if SOAK else 6, deadline=None, derandomize=not SOAK,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

concatenation_headers = st.builds(
    lambda reference, total, number: bytes([5, 0, 3, reference, total, number]),
    st.integers(0, 3), st.integers(0, 3), st.integers(0, 4),
)


@dataclass
class Reassembly:
    """The channels' reassembly, told over in the test: how many RECEIVED rows the injected
    messages make (a complete or stale concatenation is one row; a repeated part is dropped)."""

    rows: int = 0
    waiting: dict[tuple[Any, ...], set[int]] = field(default_factory=dict)

    def single(self) -> None:
        self.rows += 1

    def part(self, key: tuple[Any, ...], number: int, total: int) -> None:
        numbers = self.waiting.setdefault(key, set())
        numbers.add(number)
        if len(numbers) == total:
            del self.waiting[key]
            self.rows += 1

    def swept(self) -> None:
        """The stale sweep stored what waited, each concatenation as one row: a part that comes
        later starts a new one."""
        self.rows += len(self.waiting)
        self.waiting.clear()


def received_count(conn: Conn, channel: str) -> int:
    row = conn.execute("SELECT count(*) AS n FROM messages WHERE direction = 'in' AND status = 'RECEIVED'"
                       " AND channel = %s", (channel,)).fetchone()
    assert row is not None
    return int(row["n"])


def parts_waiting(conn: Conn, channel: str) -> int:
    row = conn.execute("SELECT count(*) AS n FROM incoming_parts WHERE channel = %s", (channel,)).fetchone()
    assert row is not None
    return int(row["n"])


# --- SMPP ---------------------------------------------------------------------------------------

deliver_sms = st.fixed_dictionaries({
    # no NUL: it ends a C-Octet String, so no SMSC can put one inside an address
    "source_addr": st.one_of(st.from_regex(r"[0-9]{1,20}", fullmatch=True).map(str.encode),
                             st.binary(min_size=0, max_size=20).map(lambda b: b.replace(b"\x00", b"?"))),
    "source_addr_ton": st.integers(0, 255),
    "source_addr_npi": st.integers(0, 255),
    "data_coding": st.one_of(st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x04, 0x08]), st.integers(0, 255)),
    "esm_class": st.sampled_from([0x00, 0x40, 0x03, 0x43, 0x80]),
    "short_message": st.one_of(
        st.binary(max_size=254),
        st.tuples(concatenation_headers, st.binary(max_size=100)).map(lambda t: t[0] + t[1]),
        st.text(max_size=60).map(lambda t: t.encode("utf-16-be", "surrogatepass")),
    ),
})


def expect_smpp(model: Reassembly, deliver: dict[str, Any]) -> bool:
    """Tells the model about one deliver_sm; True when the channel keeps it whole as malformed."""
    try:
        concatenation, _ = split_user_data(deliver["short_message"], bool(deliver["esm_class"] & 0x40))
    except ValueError:
        model.single()
        return True
    if concatenation is None:
        model.single()
    else:
        sender = stored_smpp_address(deliver["source_addr"], deliver["source_addr_ton"])
        model.part((sender, concatenation.reference, concatenation.total), concatenation.number,
                   concatenation.total)
    return False


@pytest.mark.soak
@pytest.mark.timeout(1800 if SOAK else 120)
def test_fuzzed_deliver_sm_all_end_received_or_counted_and_the_channel_keeps_sending(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, service_env: dict[str, str], tmp_path: Path
) -> None:
    metrics_port = free_port()
    add_channel(conn, smsc, reassembly_timeout_s=0.2, metrics_port=metrics_port)
    channel = start_service(["smsbus-channel-smpp", "--channel", "sim"], service_env, tmp_path / "channel.log")
    smsc.wait_bound()
    model = Reassembly()
    injected: list[int] = [0]
    malformed: list[int] = [0]

    @FUZZ
    @given(st.lists(deliver_sms, min_size=1, max_size=10))
    def inject(batch: list[dict[str, Any]]) -> None:
        for deliver in batch:
            smsc.command("inject-raw " + json.dumps({**deliver, "source_addr": deliver["source_addr"].hex(),
                                                     "short_message": deliver["short_message"].hex()}))
            malformed[0] += expect_smpp(model, deliver)
        injected[0] += len(batch)
        # each acknowledged with ESME_ROK: committed, never refused, never offered again
        responses = wait_for(lambda: (r := smsc.pdus("in", "deliver_sm_resp")) and len(r) == injected[0] and r,
                             what=f"{injected[0]} deliver_sm_resp")
        assert {r["status"] for r in responses} == {0}
        if model.waiting:
            wait_for(lambda: parts_waiting(conn, "sim") == 0, what="the stale parts swept")
            model.swept()
        assert channel.process.poll() is None

    try:
        inject()
        wait_status(conn, send(conn, "still sending after the fuzz"), "DELIVERED")
        expected = model.rows
        wait_for(lambda: received_count(conn, "sim") == expected, what=f"{expected} RECEIVED rows")
        assert value(metrics_port, "smsbus_smpp_incoming_total", channel="sim", kind="malformed") == malformed[0]
    finally:
        assert channel.stop()[0] == 0, channel.log()


# --- GSM ----------------------------------------------------------------------------------------

senders = st.one_of(st.from_regex(r"\+[1-9][0-9]{3,14}", fullmatch=True), st.from_regex(r"[A-Za-z0-9]{1,11}",
                                                                                          fullmatch=True))


@st.composite
def deliver_pdus(draw: st.DrawFn) -> str:
    """An SMS-DELIVER in hex as a SIM lists it: often well-formed with odd DCS and user data,
    sometimes cut short or plain garbage."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40)).hex().upper() or "00"
    udh = draw(st.one_of(st.just(b""), concatenation_headers))
    user_data = udh + draw(st.binary(max_size=120))
    dcs = draw(st.one_of(st.sampled_from([0x00, 0x04, 0x08, 0xF4, 0xF0]), st.integers(0, 255)))
    length = draw(st.one_of(st.just(len(user_data)), st.integers(0, 255)))
    stamp = pdu.encode_timestamp(datetime(2026, 12, 5, 12, 0, tzinfo=UTC))
    tpdu = (bytes([pdu.MTI_DELIVER | (pdu.UDHI if udh else 0)]) + pdu.encode_address(draw(senders))
            + bytes([draw(st.integers(0, 255)), dcs]) + stamp + bytes([length]) + user_data)
    cut = draw(st.one_of(st.just(len(tpdu)), st.integers(0, len(tpdu))))
    return "00" + tpdu[:cut].hex().upper()


def expect_gsm(model: Reassembly, pdu_hex: str, seen: set[bytes]) -> bool:
    """Tells the model about one PDU read from the SIM; True when it is kept as undecodable."""
    try:
        tpdu = pdu.skip_smsc(pdu.from_hex(pdu_hex))
        if pdu.message_type(tpdu) == pdu.MTI_STATUS_REPORT:  # applied as a report: no row
            pdu.decode_status_report(tpdu)
            return False
        message = pdu.decode_deliver(tpdu)
    except ValueError:
        key = pdu_hex.encode()
        if key not in seen:
            seen.add(key)
            model.single()
            return True
        return False
    if message.tpdu in seen:  # the same PDU again: already stored
        return False
    seen.add(message.tpdu)
    if message.concatenation is None:
        model.single()
    else:
        part = message.concatenation
        model.part((message.sender, part.reference, part.total), part.number, part.total)
    return False


@pytest.mark.soak
@pytest.mark.timeout(1800 if SOAK else 120)
def test_fuzzed_modem_pdus_all_end_received_and_the_channel_keeps_sending(
    conn: Conn, service_env: dict[str, str], tmp_path: Path
) -> None:
    modem = EmulatedModem(tmp_path, pin="1234", auto_report="delivered")
    metrics_port = free_port()
    gsm.add_channel(conn, modem, reassembly_timeout_s=0.2, metrics_port=metrics_port)
    process = gsm.start_channel(service_env, tmp_path)
    model = Reassembly()
    seen: set[bytes] = set()
    undecodable: list[int] = [0]

    @FUZZ
    @given(st.lists(deliver_pdus(), min_size=1, max_size=10))
    def deliver(batch: list[str]) -> None:
        for pdu_hex in batch:
            modem.call("deliver_raw", pdu=pdu_hex)
            undecodable[0] += expect_gsm(model, pdu_hex, seen)
        # every PDU leaves the SIM only after its row or part is committed
        gsm.wait_until(lambda: modem.stored() == [], "the SIM emptied", process)
        if model.waiting:
            gsm.wait_until(lambda: parts_waiting(conn, gsm.CHANNEL) == 0, "the stale parts swept", process)
            model.swept()
        assert process.process.poll() is None

    try:
        deliver()
        outgoing = gsm.queue_message(conn, "still sending after the fuzz")
        gsm.wait_until(lambda: gsm.status_of(conn, outgoing) == "DELIVERED", "sent and delivered", process)
        expected = model.rows
        gsm.wait_until(lambda: received_count(conn, gsm.CHANNEL) == expected, f"{expected} RECEIVED rows", process)
        assert value(metrics_port, "smsbus_gsm_undecodable_pdus_total", channel=gsm.CHANNEL) == undecodable[0]
    finally:
        assert process.stop()[0] == 0, process.log()
        modem.stop()
