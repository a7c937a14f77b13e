"""The composer's counter (static/sms_counter.js) in a real Chromium against smsbus.encoding:
the parts and alphabet it shows are what the channels send."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from smsbus.encoding import Encoding, choose_encoding, counter_table, segment_text
from tests.web.conftest import STATIC

TRICKY_TEXTS = [
    "",
    "hello",
    "a" * 160,
    "a" * 161,
    "a" * 153 * 2,
    "a" * (153 * 2 + 1),
    "€" * 80,  # two septets each: exactly 160
    "€" * 81,
    "a" * 159 + "€",
    "a" * 152 + "€" + "a" * 10,  # the escape pair does not fit in the first part's last septet
    "a" * 159 + "{",
    "{}[]~^|\\\f",
    "\x1b lone escape",  # not sendable in GSM 7-bit: UCS-2
    "😀",
    "😀" * 70,  # 140 octets: one part
    "😀" * 71,
    "a" * 66 + "😀" + "a" * 80,  # a surrogate pair never cut between parts
    "Grüße aus Köln, ça va? ñ",  # ç is not GSM: UCS-2
    "Ærø ÅÖ Ü ß é ΔΦΓ ¿¡ §",
    "line\nbreak\r\n",
    "中文短信" * 20,
    "mixed € and 😀 " * 12,
]


def count_in_browser(page: Page, texts: list[str], preferred: list[str]) -> list[dict[str, object]]:
    page.set_content("<!doctype html><title>counter</title>")
    page.add_script_tag(path=STATIC / "sms_counter.js")
    result = page.evaluate(
        "([texts, table, preferred]) => texts.map((t) => SmsCounter.count(t, table, preferred))",
        [texts, counter_table(), preferred],
    )
    assert isinstance(result, list)
    return result


@pytest.mark.parametrize("preferred", [["gsm7", "ucs2"], ["gsm7", "latin1", "ucs2"], ["ucs2"]])
def test_counter_in_the_browser_counts_as_segment_text(page: Page, preferred: list[str]) -> None:
    counted = count_in_browser(page, TRICKY_TEXTS, preferred)
    for text, shown in zip(TRICKY_TEXTS, counted, strict=True):
        encoding = choose_encoding(text, [Encoding(e) for e in preferred])
        parts = segment_text(text, encoding).parts if text else 0
        assert (shown["encoding"], shown["parts"], shown["characters"]) == (
            str(encoding), parts, len(text)
        ), text
