"""Hostile input from an SMSC or a modem never wedges a channel (SPEC §13, issue 14): messages
with NUL (binary data read as Latin-1, UCS-2 0x0000) and unusual senders are stored RECEIVED
while the channel goes on sending, and a stale concatenated message the table refuses stays
behind alone. The real channel processes against the SMSC simulator and the modem emulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smsbus.encoding import Encoding
from smsbus_channel_gsm import pdu
from tests import test_gsm_channel as gsm
from tests.peers.modem import EmulatedModem
from tests.peers.processes import ServiceProcess, start_service
from tests.peers.smsc import Smsc
from tests.test_smpp import add_channel, send, wait_for, wait_status

Conn = psycopg.Connection[dict[str, Any]]

# a constraint an operator might add: here, the one message the table refuses
REFUSE_POISON = "ALTER TABLE messages ADD CONSTRAINT test_refuses_poison CHECK (body <> 'poison')"
INSERT_STALE_PART = """
INSERT INTO incoming_parts (channel, from_address, reference, total, part_number, data_coding, payload,
                            received_at)
VALUES (%(channel)s, %(sender)s, %(reference)s, 2, 1, 0, %(payload)s, now() - interval '1 hour')
"""


@pytest.fixture
def smpp_channel(
    conn: Conn, smsc: Smsc, broker: ServiceProcess, service_env: dict[str, str], tmp_path: Path
) -> Iterator[ServiceProcess]:
    add_channel(conn, smsc, reassembly_timeout_s=1)
    process = start_service(["smsbus-channel-smpp", "--channel", "sim"], service_env, tmp_path / "channel.log")
    smsc.wait_bound()
    yield process
    code, _ = process.stop()
    assert code == 0, process.log()


def inject_raw(smsc: Smsc, source: bytes, short_message: bytes, data_coding: int, ton: int = 1, npi: int = 1,
               esm_class: int = 0) -> None:
    smsc.command("inject-raw " + json.dumps({
        "source_addr": source.hex(), "source_addr_ton": ton, "source_addr_npi": npi,
        "destination_addr": b"3197010000000".hex(), "dest_addr_ton": 1,
        "data_coding": data_coding, "esm_class": esm_class, "short_message": short_message.hex(),
    }))


def incoming_rows(conn: Conn, count: int) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM messages WHERE direction = 'in' ORDER BY id").fetchall()
    return rows if len(rows) >= count else []


def test_smpp_nul_bearing_and_odd_sender_messages_are_received_while_the_channel_keeps_sending(
    conn: Conn, smsc: Smsc, smpp_channel: ServiceProcess
) -> None:
    inject_raw(smsc, b"31611111111", b"bin\x00ary\xff", data_coding=0x04)
    inject_raw(smsc, b"31622222222", "nul\x00".encode("utf-16-be"), data_coding=0x08)
    inject_raw(smsc, b"ABCDEFGHIJKL", b"from a 12-character sender id", data_coding=0x00, ton=5, npi=0)
    inject_raw(smsc, b"0031\xe9#", b"odd TON/NPI and characters", data_coding=0x00, ton=6, npi=14)
    # a user data header longer than the message: kept whole, counted as malformed
    inject_raw(smsc, b"31633333333", b"\x09\x00\x03", data_coding=0x00, esm_class=0x40)
    outgoing = send(conn, "still sending")
    binary, ucs2, alphanumeric, odd, malformed = wait_for(lambda: incoming_rows(conn, 5), what="5 incoming rows")
    assert all(r["status"] == "RECEIVED" for r in (binary, ucs2, alphanumeric, odd, malformed))
    assert binary["body"] == "bin\ufffdary\xff" and binary["from_address"] == "+31611111111"
    assert binary["properties"] == {"user_data": b"bin\x00ary\xff".hex(), "encoding": "latin1"}
    assert ucs2["body"] == "nul\ufffd" and ucs2["properties"]["encoding"] == "ucs2"
    assert (alphanumeric["from_address"], alphanumeric["properties"]) == ("unknown", {"sender": "ABCDEFGHIJKL"})
    assert odd["from_address"] == "unknown" and odd["properties"]["sender"] == "0031é#"
    assert malformed["properties"]["malformed_udh"] and malformed["error"].startswith("malformed user data header")
    # every deliver_sm acknowledged with ESME_ROK: nothing refused, nothing offered again
    wait_for(lambda: [p["status"] for p in smsc.pdus("in", "deliver_sm_resp")] == [0] * 5 or None,
             what="five deliver_sm_resp 0")
    wait_status(conn, outgoing, "DELIVERED")
    assert smpp_channel.process.poll() is None


def test_smpp_stale_sweep_stores_the_good_group_and_leaves_the_refused_one_alone(
    conn: Conn, smpp_channel: ServiceProcess
) -> None:
    conn.execute(REFUSE_POISON)
    for reference, payload in ((1, b"poison"), (2, b"fine")):
        conn.execute(INSERT_STALE_PART, {"channel": "sim", "sender": "+31611111111", "reference": reference,
                                         "payload": payload})
    rows = wait_for(lambda: incoming_rows(conn, 1), what="the good stale group stored")
    assert [(r["body"], r["error"]) for r in rows] == [("fine", "incomplete: part(s) 2 of 2 never arrived")]
    smpp_channel.wait_for_log("stale concatenated message not stored channel=sim reference=1")
    outgoing = send(conn, "the sweep does not stop sending")
    wait_status(conn, outgoing, "DELIVERED")


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[EmulatedModem]:
    emulator = EmulatedModem(tmp_path, pin="1234", auto_report="delivered")
    yield emulator
    emulator.stop()


def gsm_deliver(sender: str, text: str, data_coding: int | None = None) -> str:
    """An SMS-DELIVER PDU in UCS-2, or with its TP-DCS replaced (0x04: 8-bit data)."""
    tpdu = bytearray(pdu.encode_deliver(sender, datetime(2026, 12, 5, tzinfo=UTC), text.encode("utf-16-be"),
                                        Encoding.UCS2))
    if data_coding is not None:
        tpdu[1 + len(pdu.encode_address(sender)) + 1] = data_coding
    return "00" + tpdu.hex().upper()


def test_gsm_nul_bearing_messages_are_received_the_sim_emptied_and_sending_goes_on(
    conn: Conn, modem: EmulatedModem, service_env: dict[str, str], tmp_path: Path
) -> None:
    gsm.add_channel(conn, modem, reassembly_timeout_s=1)
    process = gsm.start_channel(service_env, tmp_path)
    modem.call("deliver_raw", pdu=gsm_deliver("+31611111111", "nul\x00"))
    modem.call("deliver_raw", pdu=gsm_deliver("+31622222222", "ab", data_coding=0x04))  # 00 61 00 62: NULs
    modem.call("deliver", sender="ABCDEFGHIJKL", text="twelve characters")
    outgoing = gsm.queue_message(conn, "still sending")
    rows = {r["from_address"]: r for r in wait_for(lambda: incoming_rows(conn, 3), what="3 incoming rows")}
    ucs2, binary, alphanumeric = rows["+31611111111"], rows["+31622222222"], rows["unknown"]
    assert ucs2["body"] == "nul\ufffd" and ucs2["properties"]["user_data"] == "006e0075006c0000"
    assert binary["body"] == "\ufffda\ufffdb" and binary["properties"]["encoding"] == "latin1"
    assert alphanumeric["from_address"] == "unknown" and alphanumeric["properties"]["sender"] == "ABCDEFGHIJKL"
    assert all(r["status"] == "RECEIVED" for r in (ucs2, binary, alphanumeric))
    gsm.wait_until(lambda: modem.stored() == [], "the SIM emptied", process)
    gsm.wait_until(lambda: gsm.status_of(conn, outgoing) == "DELIVERED", "sent and delivered", process)
    # the stale sweep: a refused group stays, the other is stored
    conn.execute(REFUSE_POISON)
    for reference, payload in ((1, b"poison"), (2, b"fine")):
        conn.execute(INSERT_STALE_PART, {"channel": gsm.CHANNEL, "sender": "+31633333333", "reference": reference,
                                         "payload": payload})
    gsm.wait_until(lambda: any(r["body"] == "fine" for r in incoming_rows(conn, 4)), "the good group", process)
    process.wait_for_log(f"stale concatenated message not stored channel={gsm.CHANNEL} reference=1")
    assert process.stop()[0] == 0

