"""SMS text encoding and concatenation: pure decisions, tested without a database."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsbus.encoding import (
    LIMITS,
    Concatenation,
    Encoding,
    TextNotEncodable,
    can_encode,
    choose_encoding,
    decode_payload,
    join_payloads,
    segment_text,
    split_user_data,
)

# PostgreSQL text holds neither lone surrogates nor NUL, so no message body does either
any_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=800)
gsm_text = st.text(st.sampled_from("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
                                   "¡ABCXYZÄÖÑÜ§¿abcxyzäöñüà€[]~^{}\\|"), max_size=700)


def reassemble(text: str, encoding: Encoding) -> tuple[str, list[bytes]]:
    segments = segment_text(text, encoding)
    messages = segments.short_messages(reference=42)
    payloads = []
    for number, message in enumerate(messages, start=1):
        concatenation, payload = split_user_data(message, has_udh=segments.parts > 1)
        if segments.parts > 1:
            assert concatenation == Concatenation(42, segments.parts, number)
        payloads.append(payload)
    return join_payloads(payloads, encoding), payloads


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_any_text_segments_and_reassembles_within_the_size_limit(text: str) -> None:
    encoding = choose_encoding(text)
    back, payloads = reassemble(text, encoding)
    assert back == text
    limits = LIMITS[encoding]
    limit = limits.single if len(payloads) == 1 else limits.per_part
    assert all(len(p) <= limit for p in payloads)
    # no part ends in the middle of a character: each decodes on its own
    assert "".join(decode_payload(p, encoding) for p in payloads) == text


@settings(max_examples=200, deadline=None)
@given(gsm_text)
def test_gsm_text_never_cuts_an_escape_sequence(text: str) -> None:
    assert choose_encoding(text) is Encoding.GSM7
    back, payloads = reassemble(text, Encoding.GSM7)
    assert back == text
    assert all(not p.endswith(b"\x1b") for p in payloads)
    assert all(len(p) <= (160 if len(payloads) == 1 else 153) for p in payloads)


def test_long_gsm_text_with_extension_characters_splits_at_153_septets() -> None:
    text = "€[]~^" * 40  # 200 characters, 400 septets
    segments = segment_text(text, Encoding.GSM7)
    assert segments.data_coding == 0x00
    assert segments.parts == 3
    assert [len(p) for p in segments.payloads] == [152, 152, 96]
    assert "".join(decode_payload(p, Encoding.GSM7) for p in segments.payloads) == text


def test_emoji_text_uses_ucs2_and_keeps_surrogate_pairs_whole() -> None:
    text = "😀" * 40 + "x"  # 81 UTF-16 units
    encoding = choose_encoding(text)
    assert encoding is Encoding.UCS2
    segments = segment_text(text, encoding)
    assert segments.data_coding == 0x08
    assert segments.parts == 2
    # 67 units per part would split the 34th emoji: the part stops at 66 units
    assert len(segments.payloads[0]) == 132
    assert join_payloads(list(segments.payloads), encoding) == text


def test_short_text_is_one_part_without_udh() -> None:
    segments = segment_text("a" * 160, Encoding.GSM7)
    assert segments.parts == 1
    assert segments.short_messages(7) == [b"a" * 160]
    assert segment_text("a" * 161, Encoding.GSM7).parts == 2


def test_latin1_is_chosen_only_when_preferred() -> None:
    text = "café ü ñ ÿ"  # ÿ is not in GSM 03.38
    assert choose_encoding(text) is Encoding.UCS2
    assert choose_encoding(text, (Encoding.GSM7, Encoding.LATIN1)) is Encoding.LATIN1
    segments = segment_text(text, Encoding.LATIN1)
    assert segments.data_coding == 0x03
    assert decode_payload(segments.payloads[0], Encoding.LATIN1) == text


def test_text_the_alphabet_lacks_is_refused_naming_the_character() -> None:
    assert not can_encode("ÿ", Encoding.GSM7)
    with pytest.raises(TextNotEncodable, match="'ÿ'"):
        segment_text("abc ÿ", Encoding.GSM7)


def test_more_than_255_parts_is_refused() -> None:
    with pytest.raises(TextNotEncodable, match="at most 255"):
        segment_text("a" * 153 * 256, Encoding.GSM7)


def test_sixteen_bit_reference_header_is_understood() -> None:
    message = bytes([6, 0x08, 4, 0x12, 0x34, 3, 2]) + b"abc"
    assert split_user_data(message, has_udh=True) == (Concatenation(0x1234, 3, 2), b"abc")


@pytest.mark.parametrize(
    "message",
    [bytes([9, 0, 3, 1]), b""],
)
def test_udh_running_past_the_message_is_an_error(message: bytes) -> None:
    with pytest.raises(ValueError):
        split_user_data(message, has_udh=True)


def test_udh_with_part_number_past_total_is_not_concatenation() -> None:
    message = bytes([5, 0x00, 3, 9, 2, 3]) + b"x"
    assert split_user_data(message, has_udh=True) == (None, b"x")


def test_a_lone_escape_character_is_not_gsm() -> None:
    assert not can_encode("a\x1bb", Encoding.GSM7)
    assert choose_encoding("a\x1bb") is Encoding.UCS2


@given(st.binary(max_size=200))
def test_any_received_gsm_octets_decode_without_losing_the_message(payload: bytes) -> None:
    text = decode_payload(payload, Encoding.GSM7, "replace")
    assert isinstance(text, str)
