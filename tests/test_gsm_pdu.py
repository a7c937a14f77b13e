"""PDU mode (3GPP TS 23.040): round trips of every field, and known PDUs from the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smsbus.encoding import Encoding, join_payloads, segment_text
from smsbus_channel_gsm import pdu

digits = st.text(alphabet="0123456789", min_size=1, max_size=15)
addresses = st.one_of(
    digits, digits.map(lambda d: "+" + d), st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,10}", fullmatch=True)
)
timestamps = st.builds(
    lambda moment, quarters: moment.replace(tzinfo=timezone(timedelta(minutes=15 * quarters))),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
        lambda d: d.replace(microsecond=0)
    ),
    st.integers(min_value=-48, max_value=48),
)
# a sample of the GSM 03.38 alphabet, extension table included
GSM_ALPHABET = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCXYZÄÖÑÜ§¿abcxyzäöñüà^{}\\[~]|€"
gsm_texts = st.text(alphabet=GSM_ALPHABET, min_size=1, max_size=400)
any_texts = st.text(min_size=1, max_size=300).filter(lambda t: t.strip("\x00") != "")


@given(
    septets=st.binary(max_size=160).map(lambda b: bytes(x & 0x7F for x in b)),
    udh=st.sampled_from([b"", bytes([5, 0, 3, 7, 2, 1]), bytes([6, 8, 4, 1, 2, 3, 1])]),
)
def test_septets_round_trip_behind_any_udh(septets: bytes, udh: bytes) -> None:
    packed = pdu.pack_septets(septets, udh)
    assert packed[: len(udh)] == udh
    assert pdu.unpack_septets(packed, len(septets), len(udh)) == septets


@given(address=addresses)
def test_addresses_round_trip(address: str) -> None:
    encoded = pdu.encode_address(address)
    assert pdu.decode_address(encoded, 0) == (address, len(encoded))


@given(moment=timestamps)
def test_timestamps_round_trip_with_their_zone(moment: datetime) -> None:
    decoded = pdu.decode_timestamp(pdu.encode_timestamp(moment))
    assert decoded == moment
    assert decoded.utcoffset() == moment.utcoffset()


@given(text=st.one_of(gsm_texts, any_texts), destination=addresses, report=st.booleans(), reference=st.integers(0, 255))
def test_submit_round_trips_every_segment(text: str, destination: str, report: bool, reference: int) -> None:
    encoding = Encoding.GSM7 if all(c in GSM_ALPHABET for c in text) else Encoding.UCS2
    segments = segment_text(text, encoding)
    rebuilt = b""
    for number, short_message in enumerate(segments.short_messages(reference=42), start=1):
        udh = short_message[:6] if segments.parts > 1 else b""
        payload = short_message[len(udh) :]
        tpdu = pdu.encode_submit(pdu.Submit(destination, payload, encoding, udh, reference, report))
        assert len(tpdu) <= 176
        decoded = pdu.decode_submit(tpdu)
        assert (decoded.destination, decoded.payload, decoded.udh) == (destination, payload, udh)
        assert (decoded.request_report, decoded.reference, decoded.encoding) == (report, reference, encoding)
        rebuilt += payload
        assert number <= segments.parts
    assert rebuilt.decode("gsm03.38" if encoding is Encoding.GSM7 else "utf-16-be") == text


@given(text=st.one_of(gsm_texts, any_texts), sender=addresses, moment=timestamps)
def test_deliver_round_trips_with_its_concatenation(text: str, sender: str, moment: datetime) -> None:
    encoding = Encoding.GSM7 if all(c in GSM_ALPHABET for c in text) else Encoding.UCS2
    segments = segment_text(text, encoding)
    parts = []
    for short_message in segments.short_messages(reference=200):
        udh = short_message[:6] if segments.parts > 1 else b""
        tpdu = pdu.encode_deliver(sender, moment, short_message[len(udh) :], encoding, udh)
        parts.append(pdu.decode_deliver(tpdu))
    assert all(p.sender == sender and p.timestamp == moment and p.encoding is encoding for p in parts)
    if segments.parts > 1:
        assert [
            (p.concatenation.reference, p.concatenation.total, p.concatenation.number) for p in parts if p.concatenation
        ] == [(200, segments.parts, n) for n in range(1, segments.parts + 1)]
    else:
        assert parts[0].concatenation is None
    joined = b"".join(p.payload for p in parts)
    assert joined.decode("gsm03.38" if encoding is Encoding.GSM7 else "utf-16-be") == text


@given(reference=st.integers(0, 255), recipient=addresses, moment=timestamps, status=st.integers(0, 0x7F))
def test_status_report_round_trips(reference: int, recipient: str, moment: datetime, status: int) -> None:
    decoded = pdu.decode_status_report(pdu.encode_status_report(reference, recipient, moment, moment, status))
    assert (decoded.reference, decoded.recipient, decoded.timestamp, decoded.status) == (
        reference,
        recipient,
        moment,
        status,
    )


@given(data=st.binary(max_size=200))
def test_any_bytes_parse_or_raise_pdu_error(data: bytes) -> None:
    for decode in (pdu.decode_deliver, pdu.decode_submit, pdu.decode_status_report):
        try:
            decode(data)
        except pdu.PduError:
            pass


@given(minutes=st.integers(5, 63 * 7 * 1440))
def test_validity_never_shorter_than_asked_below_the_maximum(minutes: int) -> None:
    coded = pdu.encode_validity(timedelta(minutes=minutes))
    assert 0 <= coded <= 255
    if coded < 255:
        assert pdu.decode_validity(coded) >= timedelta(minutes=minutes)


def test_known_deliver_from_a_real_modem() -> None:
    # the classic example PDU: "hellohello" from +27381000015, SMSC +27381000015
    tpdu = pdu.skip_smsc(pdu.from_hex("07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37"))
    message = pdu.decode_deliver(tpdu)
    assert message.sender == "27838890001"
    assert message.payload.decode("gsm03.38") == "hellohello"
    # two-digit years are read as 20YY: an SMSC's clock says now, not 1999
    assert message.timestamp == datetime(2099, 3, 29, 15, 16, 59, tzinfo=timezone(timedelta(hours=2)))


def test_known_submit_matches_the_textbook_encoding() -> None:
    # "hellohello" to +46708251358 with no SMSC, no validity: the 3GPP-style example
    tpdu = pdu.encode_submit(pdu.Submit("+46708251358", "hellohello".encode("gsm03.38"), Encoding.GSM7))
    assert tpdu.hex().upper() == "01000B916407281553F800000AE8329BFD4697D9EC37"


def test_status_report_classes_follow_tp_st() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)

    def outcome(status: int) -> pdu.ReportOutcome:
        return pdu.decode_status_report(pdu.encode_status_report(1, "+1", moment, moment, status)).outcome

    assert outcome(0x00) is pdu.ReportOutcome.DELIVERED
    assert outcome(0x21) is pdu.ReportOutcome.PENDING
    assert outcome(0x41) is pdu.ReportOutcome.FAILED
    assert outcome(0x61) is pdu.ReportOutcome.FAILED


def test_data_coding_groups_name_the_alphabet() -> None:
    assert pdu.alphabet_of(0x00) is pdu.Alphabet.GSM7
    assert pdu.alphabet_of(0x08) is pdu.Alphabet.UCS2
    assert pdu.alphabet_of(0x04) is pdu.Alphabet.EIGHT_BIT
    assert pdu.alphabet_of(0xF0) is pdu.Alphabet.GSM7  # class 0 flash, GSM 7-bit
    assert pdu.alphabet_of(0xF4) is pdu.Alphabet.EIGHT_BIT
    assert pdu.alphabet_of(0x18) is pdu.Alphabet.UCS2  # UCS-2 with a message class


def test_truncated_pdus_name_what_is_missing() -> None:
    full = pdu.encode_deliver("+31612345678", datetime(2026, 1, 1, tzinfo=UTC), b"hi", Encoding.GSM7)
    with pytest.raises(pdu.PduError, match="TP-SCTS"):
        pdu.decode_deliver(full[:10])
    with pytest.raises(pdu.PduError, match="user data length"):
        pdu.decode_deliver(full[:-2])
    with pytest.raises(pdu.PduError, match="not hexadecimal"):
        pdu.from_hex("0791ZZ")
    with pytest.raises(pdu.PduError, match="cannot be sent"):
        pdu.encode_submit(pdu.Submit("+1", b"x", Encoding.LATIN1))


def test_a_16_bit_concatenation_reference_is_read() -> None:
    udh = bytes([6, 0x08, 4, 0x12, 0x34, 2, 1])  # IEI 0x08: reference 0x1234, part 1 of 2
    tpdu = pdu.encode_deliver(
        "+31612345678", datetime(2026, 1, 1, tzinfo=UTC), "part one".encode("gsm03.38"), Encoding.GSM7, udh
    )
    message = pdu.decode_deliver(tpdu)
    assert message.concatenation is not None
    assert (message.concatenation.reference, message.concatenation.total, message.concatenation.number) == (
        0x1234,
        2,
        1,
    )
    assert message.payload.decode("gsm03.38") == "part one" and message.udh == udh


@given(septets=st.binary(max_size=160).map(lambda b: bytes(x & 0x7F for x in b)))
def test_any_received_septets_decode_without_raising(septets: bytes) -> None:
    """A modem hands over whatever the sender put there: the channel stores it, never crashes."""
    tpdu = pdu.encode_deliver("+31612345678", datetime(2026, 1, 1, tzinfo=UTC), septets, Encoding.GSM7)
    message = pdu.decode_deliver(tpdu)
    assert message.payload == septets
    join_payloads([message.payload], message.encoding, errors="replace")


@given(septets=st.binary(min_size=1, max_size=11).map(lambda b: bytes(x & 0x7F for x in b)))
def test_any_alphanumeric_sender_decodes_without_raising(septets: bytes) -> None:
    address = bytes([(len(septets) * 7 + 3) // 4, pdu.TOA_ALPHANUMERIC]) + pdu.pack_septets(septets)
    sender, end = pdu.decode_address(address, 0)
    assert end == len(address) and len(sender) <= len(septets)
