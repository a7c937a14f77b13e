"""The SMPP channel's pure decisions, without a database or a peer: error classes, receipts,
provider ids, PDU framing of garbage, address types."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smsbus_channel_smpp.channel_smpp import _address_type
from smsbus_channel_smpp.command_status import COMMAND_STATUSES, ErrorClass, classify, describe, parse_overrides
from smsbus_channel_smpp.receipts import Receipt, is_receipt, normalise_provider_id, parse_receipt, receipt_key
from smsbus_channel_smpp.session import ProtocolError, Session


def test_every_smpp_34_error_has_a_class_and_throttling_is_its_own() -> None:
    assert len(COMMAND_STATUSES) == 47
    assert classify(0x58, {}) is ErrorClass.THROTTLING  # ESME_RTHROTTLED
    assert classify(0x14, {}) is ErrorClass.THROTTLING  # ESME_RMSGQFUL
    assert classify(0x0B, {}) is ErrorClass.PERMANENT  # ESME_RINVDSTADR
    assert classify(0x08, {}) is ErrorClass.TEMPORARY  # ESME_RSYSERR
    assert classify(0x0400, {}) is ErrorClass.TEMPORARY  # vendor-specific: unknown, try again


def test_a_channel_overrides_the_class_of_any_code() -> None:
    overrides = parse_overrides({"0x0B": "temporary", "1024": "permanent"})
    assert classify(0x0B, overrides) is ErrorClass.TEMPORARY
    assert classify(0x400, overrides) is ErrorClass.PERMANENT


def test_errors_are_described_in_words() -> None:
    assert describe(0x45) == "0x00000045 ESME_RSUBMITFAIL: submit_sm or submit_multi failed"
    assert describe(0x0401) == "0x00000401 unknown command_status (reserved or vendor-specific)"


def test_receipt_tlvs_win_over_the_text() -> None:
    text = "id:1234 sub:001 dlvrd:000 submit date:2611220000 done date:2611220001 stat:UNDELIV err:034 text:hi"
    from_text = parse_receipt(text)
    assert from_text == Receipt("1234", "UNDELIV", "034", from_text=True)
    assert not from_text.delivered and from_text.is_final
    from_tlvs = parse_receipt(text, receipted_message_id="4d2", message_state=2)
    assert from_tlvs == Receipt("4d2", "DELIVRD", "034", from_text=False)
    assert parse_receipt("no id here stat:DELIVRD") is None
    assert not parse_receipt("id:7 stat:ENROUTE").is_final  # type: ignore[union-attr]


def test_only_delivery_receipts_count_as_receipts() -> None:
    assert is_receipt(0x04) and is_receipt(0x44)  # with a UDH indicator too
    assert not is_receipt(0x00) and not is_receipt(0x08) and not is_receipt(0x40)


@pytest.mark.parametrize(
    ("submitted", "receipt", "receipt_id_format"),
    [
        ("0000A1F", Receipt("a1f", "DELIVRD", None), "same"),  # leading zeros and case
        ("0000002A", Receipt("42", "DELIVRD", None, from_text=True), "decimal"),  # hex, then decimal
        ("42", Receipt("2A", "DELIVRD", None, from_text=True), "hex"),  # decimal, then hex
        ("0000002A", Receipt("2a", "DELIVRD", None, from_text=False), "decimal"),  # a TLV is as submitted
    ],
)
def test_receipt_ids_find_the_id_the_part_recorded(submitted: str, receipt: Receipt, receipt_id_format: str) -> None:
    assert receipt_key(receipt, receipt_id_format) == normalise_provider_id(submitted)


@given(st.integers(min_value=0, max_value=2**64))
def test_a_hex_id_and_its_decimal_in_the_receipt_text_always_meet(number: int) -> None:
    submitted = normalise_provider_id(f"{number:016X}")
    assert receipt_key(Receipt(str(number), "DELIVRD", None, from_text=True), "decimal") == submitted


@pytest.fixture
def session() -> Iterator[Session]:
    ours, theirs = socket.socketpair()
    yield Session(ours, "bind_transceiver")
    ours.close()
    theirs.close()


def header(length: int, command_id: int, sequence: int = 1) -> bytes:
    return length.to_bytes(4, "big") + command_id.to_bytes(4, "big") + bytes(4) + sequence.to_bytes(4, "big")


def test_pdus_are_framed_across_reads(session: Session) -> None:
    pdu = session.make("enquire_link")
    raw = pdu.generate() * 2
    session.buffer += raw[:20]
    first = session.next_pdu()
    assert first is not None and first.command == "enquire_link"
    assert session.next_pdu() is None  # half of the second
    session.buffer += raw[20:]
    assert session.next_pdu().command == "enquire_link"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("garbage", "error"),
    [
        (header(8, 0x15)[:8], "wrong command_length 8"),
        (header(70_000, 0x15), "wrong command_length 70000"),
        (header(16, 0x0000FFFF), "unknown command_id 0x0000FFFF"),
        (header(18, 0x05) + b"\x00\x01", "malformed deliver_sm: the body ends inside source_addr_npi"),
        (header(20, 0x80000004) + b"abcd", "malformed submit_sm_resp: message_id has no NUL terminator"),
    ],
)
def test_garbage_is_a_protocol_error_naming_what_was_wrong(session: Session, garbage: bytes, error: str) -> None:
    session.buffer += garbage
    with pytest.raises(ProtocolError, match=error):
        session.next_pdu()


def test_a_well_formed_deliver_sm_parses(session: Session) -> None:
    pdu = session.make("deliver_sm", source_addr_ton=1, source_addr="31612345678", destination_addr="4000",
                       short_message=b"hello", receipted_message_id="abc", message_state=2)
    session.buffer += pdu.generate()
    parsed = session.next_pdu()
    assert parsed.short_message == b"hello" and parsed.receipted_message_id == b"abc"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("address", "expected"),
    [("+31612345678", (1, 1)), ("ACME", (5, 0)), ("4000", (0, 1)), ("", (0, 1))],
)
def test_address_types_follow_the_address(address: str, expected: tuple[int, int]) -> None:
    assert _address_type(address, None, None) == expected
    assert _address_type(address, 2, 9) == (2, 9)
