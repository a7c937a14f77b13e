"""SMS text encoding and concatenation, shared by every channel type (SMPP, GSM modem).

GSM 03.38 7-bit with the extension table (the `gsm0338` codec, one septet per octet as SMPP
carries it), Latin-1 and UCS-2/UTF-16. A long text is split into UDH-concatenated parts of at
most 153 septets / 134 octets / 67 UTF-16 units, never cutting an escape sequence (the
extension table's two septets) or a surrogate pair (an emoji's two UTF-16 units).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)

from smsbus.errors import SmsbusError

GSM_CODEC = "gsm03.38"
# the escape to the extension table: a septet, not a character anybody can send
GSM_ESCAPE = "\x1b"
# concatenation needs a part number in one octet
MAX_PARTS = 255
# IEI 0x00: concatenated short messages, 8-bit reference; 0x08: the same with 16-bit reference
IEI_CONCATENATED_8BIT = 0x00
IEI_CONCATENATED_16BIT = 0x08
UDH_CONCATENATED_LENGTH = 6


class Encoding(enum.StrEnum):
    GSM7 = "gsm7"
    LATIN1 = "latin1"
    UCS2 = "ucs2"


@dataclass(frozen=True)
class EncodingLimits:
    data_coding: int
    # in octets as SMPP carries them (GSM 7-bit unpacked: one septet per octet)
    single: int
    per_part: int


LIMITS: dict[Encoding, EncodingLimits] = {
    Encoding.GSM7: EncodingLimits(data_coding=0x00, single=160, per_part=153),
    Encoding.LATIN1: EncodingLimits(data_coding=0x03, single=140, per_part=134),
    Encoding.UCS2: EncodingLimits(data_coding=0x08, single=140, per_part=134),
}
# what the GSM 03.38 / SMPP data_coding octet says about the alphabet of a received message
DATA_CODINGS: dict[int, Encoding] = {
    0x00: Encoding.GSM7,
    0x01: Encoding.GSM7,  # IA5/ASCII: a subset read the same way for printable text
    0x03: Encoding.LATIN1,
    0x08: Encoding.UCS2,
}


class TextNotEncodable(SmsbusError):
    """The text cannot be sent in the requested alphabet, or needs more than 255 parts."""


@dataclass(frozen=True)
class Segments:
    """A text encoded for sending: one payload per SMS, UDH not yet added."""

    encoding: Encoding
    payloads: tuple[bytes, ...]

    @property
    def data_coding(self) -> int:
        return LIMITS[self.encoding].data_coding

    @property
    def parts(self) -> int:
        return len(self.payloads)

    def short_messages(self, reference: int) -> list[bytes]:
        """What goes into short_message: the payload alone, or behind a concatenation UDH."""
        if len(self.payloads) == 1:
            return [self.payloads[0]]
        total = len(self.payloads)
        return [
            bytes([5, IEI_CONCATENATED_8BIT, 3, reference & 0xFF, total, number]) + payload
            for number, payload in enumerate(self.payloads, start=1)
        ]


def encode_character(character: str, encoding: Encoding) -> bytes:
    """One code point's bytes; raises UnicodeEncodeError when the alphabet lacks it."""
    if encoding is Encoding.GSM7:
        return _encode_gsm(character)
    if encoding is Encoding.LATIN1:
        return character.encode("latin-1")
    return character.encode("utf-16-be")


def can_encode(text: str, encoding: Encoding) -> bool:
    try:
        encode_text(text, encoding)
    except UnicodeEncodeError:
        return False
    return True


def encode_text(text: str, encoding: Encoding) -> bytes:
    if encoding is Encoding.GSM7:
        return _encode_gsm(text)
    if encoding is Encoding.LATIN1:
        return text.encode("latin-1")
    return text.encode("utf-16-be")


def _encode_gsm(text: str) -> bytes:
    """The codec would write a lone ESC (U+001B) as the escape septet, which reads back as
    nothing: it is refused like any other character the alphabet lacks."""
    escape = text.find(GSM_ESCAPE)
    if escape >= 0:
        raise UnicodeEncodeError(GSM_CODEC, text, escape, escape + 1, "ESC is the extension escape")
    return text.encode(GSM_CODEC)


def decode_payload(payload: bytes, encoding: Encoding, errors: str = "strict") -> str:
    """errors="replace" for received text: a bad octet must not lose the message."""
    if encoding is Encoding.GSM7:
        try:
            return payload.decode(GSM_CODEC, errors)
        except (UnicodeDecodeError, KeyError):
            # the codec raises KeyError for an escape before an unassigned septet
            if errors == "strict":
                raise UnicodeDecodeError(GSM_CODEC, payload, 0, len(payload), "invalid GSM 03.38") from None
            return _decode_gsm_leniently(payload)
    if encoding is Encoding.LATIN1:
        return payload.decode("latin-1", errors)
    return payload.decode("utf-16-be", errors)


def choose_encoding(text: str, preferred: Sequence[Encoding] = (Encoding.GSM7, Encoding.UCS2)) -> Encoding:
    """The first alphabet in `preferred` that holds the whole text; UCS-2 holds everything."""
    for encoding in preferred:
        if can_encode(text, encoding):
            return encoding
    return Encoding.UCS2


def segment_text(text: str, encoding: Encoding) -> Segments:
    """Split into payloads that each fit one SMS; a character's bytes stay in one part."""
    limits = LIMITS[encoding]
    try:
        whole = encode_text(text, encoding)
    except UnicodeEncodeError as e:
        raise TextNotEncodable(
            f"character {text[e.start]!r} cannot be sent as {encoding.value}"
        ) from None
    if len(whole) <= limits.single:
        return Segments(encoding, (whole,))
    payloads = list(_pack(text, encoding, limits.per_part))
    if len(payloads) > MAX_PARTS:
        raise TextNotEncodable(f"text needs {len(payloads)} parts; at most {MAX_PARTS} are possible")
    return Segments(encoding, tuple(payloads))


def _decode_gsm_leniently(payload: bytes) -> str:
    """Septet by septet (an escape with the septet after it), U+FFFD for what has no meaning."""
    decoded = []
    position = 0
    while position < len(payload):
        width = 2 if payload[position] == 0x1B and position + 1 < len(payload) else 1
        try:
            decoded.append(payload[position : position + width].decode(GSM_CODEC))
        except (UnicodeDecodeError, KeyError, ValueError):
            decoded.append("\ufffd")
        position += width
    return "".join(decoded)


def _pack(text: str, encoding: Encoding, per_part: int) -> Iterable[bytes]:
    part = bytearray()
    for character in text:
        encoded = encode_character(character, encoding)
        if len(part) + len(encoded) > per_part:
            yield bytes(part)
            part.clear()
        part += encoded
    if part:
        yield bytes(part)


@dataclass(frozen=True)
class Concatenation:
    """Where a received part belongs: its message's reference, the total and its number."""

    reference: int
    total: int
    number: int


def split_user_data(short_message: bytes, has_udh: bool) -> tuple[Concatenation | None, bytes]:
    """The concatenation header (if any) and the payload behind the UDH.

    Raises ValueError for a UDH whose length runs past the message."""
    if not has_udh:
        return None, short_message
    if not short_message:
        raise ValueError("UDH indicated but short_message is empty")
    header_length = short_message[0]
    if header_length + 1 > len(short_message):
        raise ValueError(f"UDH length {header_length} runs past the {len(short_message)}-octet message")
    header = short_message[1 : header_length + 1]
    return _find_concatenation(header), short_message[header_length + 1 :]


def _find_concatenation(header: bytes) -> Concatenation | None:
    position = 0
    while position + 2 <= len(header):
        identifier, length = header[position], header[position + 1]
        value = header[position + 2 : position + 2 + length]
        position += 2 + length
        if identifier == IEI_CONCATENATED_8BIT and len(value) == 3:
            return _valid_concatenation(value[0], value[1], value[2])
        if identifier == IEI_CONCATENATED_16BIT and len(value) == 4:
            return _valid_concatenation(int.from_bytes(value[:2], "big"), value[2], value[3])
    return None


def _valid_concatenation(reference: int, total: int, number: int) -> Concatenation | None:
    # a header with total 0 or a number past the total is ignored, as 3GPP TS 23.040 says
    if total == 0 or not 1 <= number <= total:
        return None
    return Concatenation(reference, total, number)


def join_payloads(payloads: Sequence[bytes], encoding: Encoding, errors: str = "strict") -> str:
    """Reassemble in order; joined before decoding, so another sender's split escape or
    surrogate pair is still read correctly."""
    return decode_payload(b"".join(payloads), encoding, errors)


def encoding_of(data_coding: int) -> Encoding:
    """The alphabet of a received message; unknown codings are read as 8-bit Latin-1."""
    return DATA_CODINGS.get(data_coding, Encoding.LATIN1)


@functools.cache
def counter_table() -> dict[str, object]:
    """What a counter outside Python (the Web Messenger's composer) needs to count parts
    exactly as `segment_text` does: the GSM 03.38 characters of one and of two septets, as
    the codec that sends them says, and each alphabet's limits in octets."""
    single: list[str] = []
    extended: list[str] = []
    for code_point in range(0x10000):
        if 0xD800 <= code_point <= 0xDFFF:
            continue
        character = chr(code_point)
        try:
            width = len(encode_character(character, Encoding.GSM7))
        except UnicodeEncodeError:
            continue
        (single if width == 1 else extended).append(character)
    return {
        "gsm7_single": "".join(single),
        "gsm7_extended": "".join(extended),
        "limits": {str(e): {"single": lim.single, "per_part": lim.per_part} for e, lim in LIMITS.items()},
        "max_parts": MAX_PARTS,
    }
