"""PDU mode of 3GPP TS 23.040: SMS-SUBMIT (what we send), SMS-DELIVER (what we receive) and
SMS-STATUS-REPORT (what the SMSC says about delivery), each both ways so that the modem
emulator speaks the same code and the property tests can round-trip every field.

Text encoding and segmentation are smsbus.encoding's; this module packs GSM 7-bit septets
(with the fill bits a UDH needs), addresses, timestamps and first octets.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from smsbus.encoding import GSM_CODEC, Concatenation, Encoding, decode_payload, split_user_data

# first octet: TP-MTI (bits 0-1) as a modem presents it to us (SC -> MS) or takes from us
MTI_DELIVER = 0x00
MTI_SUBMIT = 0x01
MTI_STATUS_REPORT = 0x02
# SMS-SUBMIT first octet bits
SUBMIT_VPF_RELATIVE = 0x10
SUBMIT_SRR = 0x20
UDHI = 0x40
# SMS-DELIVER / STATUS-REPORT: TP-MMS is set when NO more messages are waiting
MORE_MESSAGES_NOT_WAITING = 0x04
STATUS_REPORT_SRQ = 0x20

# type of address (TS 23.040 9.1.2.5): ext bit, type of number, numbering plan
TOA_INTERNATIONAL = 0x91
TOA_UNKNOWN = 0x81
TOA_ALPHANUMERIC = 0xD0
TON_MASK = 0x70
TON_INTERNATIONAL = 0x10
TON_ALPHANUMERIC = 0x50

MAX_USER_DATA_OCTETS = 140
MAX_SEPTETS = 160


class PduError(ValueError):
    """A PDU that does not parse: the message names the field."""


class Alphabet(enum.Enum):
    GSM7 = "gsm7"
    EIGHT_BIT = "8bit"
    UCS2 = "ucs2"


class ReportOutcome(enum.Enum):
    """TP-ST classes (TS 23.040 9.2.3.15)."""

    DELIVERED = "delivered"  # 0x00-0x1F: transaction completed
    PENDING = "pending"  # 0x20-0x3F: temporary error, the SC is still trying
    FAILED = "failed"  # 0x40-0x7F: permanent error, or the SC gave up


# data coding schemes we send; TS 23.038 general coding group, no message class
DCS_FOR_ENCODING: dict[Encoding, int] = {Encoding.GSM7: 0x00, Encoding.UCS2: 0x08}
ENCODING_FOR_ALPHABET: dict[Alphabet, Encoding] = {
    Alphabet.GSM7: Encoding.GSM7,
    # 8-bit data has no alphabet; read it byte for byte rather than lose it
    Alphabet.EIGHT_BIT: Encoding.LATIN1,
    Alphabet.UCS2: Encoding.UCS2,
}


def alphabet_of(dcs: int) -> Alphabet:
    """TS 23.038 section 4: the alphabet a data coding scheme names (reserved values: GSM 7)."""
    group = dcs >> 4
    if group <= 0x7:  # general data coding and automatic deletion groups
        return {0: Alphabet.GSM7, 1: Alphabet.EIGHT_BIT, 2: Alphabet.UCS2}.get((dcs >> 2) & 0x03, Alphabet.GSM7)
    if group == 0xE:  # message waiting indication, UCS-2
        return Alphabet.UCS2
    if group == 0xF:  # data coding / message class
        return Alphabet.EIGHT_BIT if dcs & 0x04 else Alphabet.GSM7
    return Alphabet.GSM7


@dataclass(frozen=True)
class Submit:
    """An SMS-SUBMIT. `payload` is as smsbus.encoding makes it: GSM 7-bit one septet per octet."""

    destination: str
    payload: bytes
    encoding: Encoding
    udh: bytes = b""
    reference: int = 0
    request_report: bool = False
    # TP-VP relative format (TS 23.040 9.2.3.12.1); None: no validity period
    validity: timedelta | None = None


@dataclass(frozen=True)
class Deliver:
    """An SMS-DELIVER as read from the SIM; `tpdu` (without the SMSC address) identifies it."""

    sender: str
    timestamp: datetime
    dcs: int
    payload: bytes
    concatenation: Concatenation | None
    tpdu: bytes
    udh: bytes = b""

    @property
    def encoding(self) -> Encoding:
        return ENCODING_FOR_ALPHABET[alphabet_of(self.dcs)]


@dataclass(frozen=True)
class StatusReport:
    reference: int
    recipient: str
    timestamp: datetime
    discharge_time: datetime
    status: int

    @property
    def outcome(self) -> ReportOutcome:
        if self.status < 0x20:
            return ReportOutcome.DELIVERED
        if self.status < 0x40:
            return ReportOutcome.PENDING
        return ReportOutcome.FAILED


# --- septets -------------------------------------------------------------------------------


def fill_bits(udh_octets: int) -> int:
    """Bits after a UDH (its length octet included) so that the text starts on a septet."""
    return (7 - (udh_octets * 8) % 7) % 7


def pack_septets(septets: bytes, udh: bytes = b"") -> bytes:
    """The UDH's octets, the fill bits, then 7 bits per septet, least significant bit first."""
    bits = 0
    shift = 0
    for octet in udh:
        bits |= octet << shift
        shift += 8
    shift += fill_bits(len(udh))
    for septet in septets:
        if septet > 0x7F:
            raise PduError(f"septet {septet:#x} does not fit in 7 bits")
        bits |= septet << shift
        shift += 7
    return bits.to_bytes((shift + 7) // 8, "little")


def unpack_septets(data: bytes, septet_count: int, udh_octets: int = 0) -> bytes:
    """The inverse of pack_septets: the text's septets behind a UDH of udh_octets."""
    bits = int.from_bytes(data, "little")
    start = udh_octets * 8 + fill_bits(udh_octets)
    if start + septet_count * 7 > len(data) * 8 + 7:
        raise PduError(f"user data holds fewer than {septet_count} septets")
    return bytes((bits >> (start + 7 * i)) & 0x7F for i in range(septet_count))


def septets_for(udh_octets: int, text_septets: int) -> int:
    """TP-UDL of a 7-bit message: the header counts as the septets it covers."""
    return (udh_octets * 8 + fill_bits(udh_octets)) // 7 + text_septets


# --- addresses and timestamps ----------------------------------------------------------------


def _swap_semi_octets(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex("".join(digits[i + 1] + digits[i] for i in range(0, len(digits), 2)))


def _read_semi_octets(data: bytes) -> str:
    return "".join(f"{b & 0x0F:X}{b >> 4:X}" for b in data)


def encode_address(address: str) -> bytes:
    """TP-DA/TP-OA: length in useful semi-octets, type of address, the digits (or GSM 7-bit)."""
    if address.startswith("+") and address[1:].isdigit():
        digits, toa = address[1:], TOA_INTERNATIONAL
    elif address.isdigit():
        digits, toa = address, TOA_UNKNOWN
    else:
        septets = address.encode(GSM_CODEC)
        packed = pack_septets(septets)
        # the length counts semi-octets of the packed form, not characters
        return bytes([(len(septets) * 7 + 3) // 4, TOA_ALPHANUMERIC]) + packed
    if not digits:
        raise PduError("address is empty")
    return bytes([len(digits), toa]) + _swap_semi_octets(digits)


def decode_address(data: bytes, position: int) -> tuple[str, int]:
    """The address at position and the position after it."""
    if position + 2 > len(data):
        raise PduError("address runs past the end of the PDU")
    length, toa = data[position], data[position + 1]
    octets = (length + 1) // 2
    body = data[position + 2 : position + 2 + octets]
    if len(body) < octets:
        raise PduError("address digits run past the end of the PDU")
    end = position + 2 + octets
    if toa & TON_MASK == TON_ALPHANUMERIC:
        return decode_payload(unpack_septets(body, length * 4 // 7), Encoding.GSM7, "replace"), end
    digits = _read_semi_octets(body)[:length]
    prefix = "+" if toa & TON_MASK == TON_INTERNATIONAL else ""
    return prefix + digits, end


def encode_smsc(address: str) -> bytes:
    """The SMSC prefix of a PDU given to AT+CMGS: length in octets; 00 = the stored AT+CSCA."""
    if not address:
        return b"\x00"
    encoded = encode_address(address)
    return bytes([len(encoded) - 1]) + encoded[1:]


def skip_smsc(data: bytes) -> bytes:
    """The TPDU behind the SMSC address that modems put in front of every PDU."""
    if not data:
        raise PduError("PDU is empty")
    if 1 + data[0] > len(data):
        raise PduError("SMSC address runs past the end of the PDU")
    return data[1 + data[0] :]


def encode_timestamp(moment: datetime) -> bytes:
    """TP-SCTS: semi-octets YYMMDDhhmmss and the zone in quarter hours (bit 3 = west)."""
    if moment.tzinfo is None:
        raise PduError("timestamp must be timezone-aware")
    offset = moment.utcoffset() or timedelta(0)
    quarters = int(offset.total_seconds()) // 900
    digits = moment.strftime("%y%m%d%H%M%S") + f"{abs(quarters):02d}"
    encoded = bytearray(_swap_semi_octets(digits))
    if quarters < 0:
        encoded[6] |= 0x08
    return bytes(encoded)


def decode_timestamp(data: bytes) -> datetime:
    if len(data) != 7:
        raise PduError("timestamp must be 7 octets")
    zone = data[6]
    west = bool(zone & 0x08)
    digits = _read_semi_octets(data[:6] + bytes([zone & 0xF7]))
    try:
        quarters = int(digits[12:14])
        tz = timezone(timedelta(minutes=15 * quarters * (-1 if west else 1)))
        return datetime(
            2000 + int(digits[0:2]),
            int(digits[2:4]),
            int(digits[4:6]),
            int(digits[6:8]),
            int(digits[8:10]),
            int(digits[10:12]),
            tzinfo=tz,
        )
    except ValueError as e:
        raise PduError(f"timestamp {data.hex()} is not a date: {e}") from None


def encode_validity(validity: timedelta) -> int:
    """TP-VP relative: 5-minute steps to 12 h, 30-minute steps to 24 h, days, then weeks."""
    minutes = max(5, int(validity.total_seconds()) // 60)
    if minutes <= 720:
        return (minutes + 4) // 5 - 1
    if minutes <= 1440:
        return 143 + (minutes - 720 + 29) // 30
    days = (minutes + 1439) // 1440
    if days <= 30:
        return 166 + days
    return min(255, 192 + (days + 6) // 7)


def decode_validity(value: int) -> timedelta:
    if value <= 143:
        return timedelta(minutes=(value + 1) * 5)
    if value <= 167:
        return timedelta(hours=12, minutes=(value - 143) * 30)
    if value <= 196:
        return timedelta(days=value - 166)
    return timedelta(weeks=value - 192)


# --- user data ----------------------------------------------------------------------------------


def _encode_user_data(payload: bytes, encoding: Encoding, udh: bytes) -> tuple[int, int, bytes]:
    """(TP-DCS, TP-UDL, TP-UD) for a payload and an optional UDH (its length octet included)."""
    if encoding not in DCS_FOR_ENCODING:
        raise PduError(f"encoding {encoding.value} cannot be sent in PDU mode (gsm7 or ucs2)")
    if encoding is Encoding.GSM7:
        length = septets_for(len(udh), len(payload))
        if length > MAX_SEPTETS:
            raise PduError(f"user data of {length} septets exceeds {MAX_SEPTETS}")
        return DCS_FOR_ENCODING[encoding], length, pack_septets(payload, udh)
    user_data = udh + payload
    if len(user_data) > MAX_USER_DATA_OCTETS:
        raise PduError(f"user data of {len(user_data)} octets exceeds {MAX_USER_DATA_OCTETS}")
    return DCS_FOR_ENCODING[encoding], len(user_data), user_data


def _decode_user_data(data: bytes, position: int, dcs: int, has_udh: bool) -> tuple[bytes, bytes, Concatenation | None]:
    """(UDH, payload, concatenation) from TP-UDL at position."""
    if position >= len(data):
        raise PduError("user data length missing")
    length = data[position]
    user_data = data[position + 1 :]
    if alphabet_of(dcs) is Alphabet.GSM7:
        if len(user_data) * 8 < length * 7:
            raise PduError(f"user data length {length} septets exceeds the {len(user_data)} octets present")
        udh_octets = user_data[0] + 1 if has_udh and user_data else 0
        if udh_octets > len(user_data):
            raise PduError("UDH length runs past the user data")
        header = user_data[:udh_octets]
        text_septets = length - (udh_octets * 8 + fill_bits(udh_octets)) // 7
        if text_septets < 0:
            raise PduError("UDH is longer than the user data length")
        concatenation = split_user_data(header, True)[0] if header else None
        return header, unpack_septets(user_data, text_septets, udh_octets), concatenation
    if len(user_data) < length:
        raise PduError(f"user data length {length} exceeds the {len(user_data)} octets present")
    try:
        concatenation, payload = split_user_data(user_data[:length], has_udh)
    except ValueError as e:
        raise PduError(str(e)) from None
    header = user_data[: length - len(payload)]
    return header, payload, concatenation


# --- the three PDUs ------------------------------------------------------------------------------


def encode_submit(submit: Submit) -> bytes:
    """The TPDU (without SMSC prefix); AT+CMGS takes its length in octets."""
    first = MTI_SUBMIT
    if submit.udh:
        first |= UDHI
    if submit.request_report:
        first |= SUBMIT_SRR
    if submit.validity is not None:
        first |= SUBMIT_VPF_RELATIVE
    dcs, length, user_data = _encode_user_data(submit.payload, submit.encoding, submit.udh)
    validity = bytes([encode_validity(submit.validity)]) if submit.validity is not None else b""
    return (
        bytes([first, submit.reference & 0xFF])
        + encode_address(submit.destination)
        + bytes([0x00, dcs])
        + validity
        + bytes([length])
        + user_data
    )


def decode_submit(tpdu: bytes) -> Submit:
    _require_type(tpdu, MTI_SUBMIT)
    first = tpdu[0]
    if len(tpdu) < 2:
        raise PduError("SMS-SUBMIT ends before TP-MR")
    destination, position = decode_address(tpdu, 2)
    if position + 2 > len(tpdu):
        raise PduError("SMS-SUBMIT ends before TP-DCS")
    dcs = tpdu[position + 1]
    position += 2
    validity: timedelta | None = None
    vpf = (first >> 3) & 0x03
    if vpf == 0b10:
        validity = decode_validity(tpdu[position])
        position += 1
    elif vpf != 0:
        position += 7  # enhanced or absolute: not ours to interpret
    udh, payload, _ = _decode_user_data(tpdu, position, dcs, bool(first & UDHI))
    encoding = ENCODING_FOR_ALPHABET[alphabet_of(dcs)]
    return Submit(destination, payload, encoding, udh, tpdu[1], bool(first & SUBMIT_SRR), validity)


def encode_deliver(sender: str, timestamp: datetime, payload: bytes, encoding: Encoding, udh: bytes = b"") -> bytes:
    first = MTI_DELIVER | MORE_MESSAGES_NOT_WAITING | (UDHI if udh else 0)
    dcs, length, user_data = _encode_user_data(payload, encoding, udh)
    return (
        bytes([first])
        + encode_address(sender)
        + bytes([0x00, dcs])
        + encode_timestamp(timestamp)
        + bytes([length])
        + user_data
    )


def decode_deliver(tpdu: bytes) -> Deliver:
    _require_type(tpdu, MTI_DELIVER)
    first = tpdu[0]
    sender, position = decode_address(tpdu, 1)
    if position + 9 > len(tpdu):
        raise PduError("SMS-DELIVER ends before TP-SCTS")
    dcs = tpdu[position + 1]
    timestamp = decode_timestamp(tpdu[position + 2 : position + 9])
    udh, payload, concatenation = _decode_user_data(tpdu, position + 9, dcs, bool(first & UDHI))
    return Deliver(sender, timestamp, dcs, payload, concatenation, tpdu, udh)


def encode_status_report(
    reference: int, recipient: str, timestamp: datetime, discharge_time: datetime, status: int
) -> bytes:
    first = MTI_STATUS_REPORT | MORE_MESSAGES_NOT_WAITING
    return (
        bytes([first, reference & 0xFF])
        + encode_address(recipient)
        + encode_timestamp(timestamp)
        + encode_timestamp(discharge_time)
        + bytes([status & 0x7F])
    )


def decode_status_report(tpdu: bytes) -> StatusReport:
    _require_type(tpdu, MTI_STATUS_REPORT)
    if len(tpdu) < 2:
        raise PduError("SMS-STATUS-REPORT ends before TP-MR")
    recipient, position = decode_address(tpdu, 2)
    if position + 15 > len(tpdu):
        raise PduError("SMS-STATUS-REPORT ends before TP-ST")
    return StatusReport(
        reference=tpdu[1],
        recipient=recipient,
        timestamp=decode_timestamp(tpdu[position : position + 7]),
        discharge_time=decode_timestamp(tpdu[position + 7 : position + 14]),
        status=tpdu[position + 14],
    )


def message_type(tpdu: bytes) -> int:
    if not tpdu:
        raise PduError("TPDU is empty")
    return tpdu[0] & 0x03


def _require_type(tpdu: bytes, expected: int) -> None:
    if message_type(tpdu) != expected:
        raise PduError(f"TP-MTI is {tpdu[0] & 0x03}, expected {expected}")


def from_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise PduError(f"PDU is not hexadecimal: {text[:40]!r}") from None


def now_with_zone() -> datetime:
    """The emulator's SMSC clock: whole seconds, in UTC (a timestamp has no sub-seconds)."""
    return datetime.now(UTC).replace(microsecond=0)
