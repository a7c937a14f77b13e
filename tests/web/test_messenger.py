"""The Web Messenger in Chromium against the real stack (api, router, SMPP channel, SMSC
simulator): send with the live counter, ticks that follow the status, incoming messages live."""

from __future__ import annotations

import time

from playwright.sync_api import Browser, Page, expect

from smsbus.encoding import choose_encoding, segment_text
from tests.web.conftest import SCREENSHOTS, WebStack

LONG_EMOJI_TEXT = "Party tonight 🎉🎈 bring snacks 🍕🍩 and good mood 😀 " * 4

# records every status the bubble of a message shows, however briefly, as the page sees it
WATCH_STATUSES = """
(id) => {
  window.seenStatuses = [];
  const note = () => {
    const bubble = document.querySelector(`[data-message-id="${id}"]`);
    const status = bubble && bubble.dataset.status;
    if (status && window.seenStatuses.at(-1) !== status) window.seenStatuses.push(status);
  };
  note();
  new MutationObserver(note).observe(document.getElementById("thread"), { childList: true, subtree: true });
}
"""


def newest_outgoing(stack: WebStack, to: str) -> dict[str, object]:
    with stack.connect() as conn:
        row = conn.execute(
            "SELECT * FROM messages WHERE to_address = %(to)s ORDER BY id DESC LIMIT 1", {"to": to}
        ).fetchone()
    assert row is not None
    return row


def test_a_long_emoji_message_is_counted_sent_and_its_ticks_follow_without_reload(
    stack: WebStack, page: Page
) -> None:
    to = "+31611000001"
    stack.log_in(page, "agent", "/messenger/new")
    page.get_by_label("To").fill(to)
    page.get_by_label("Message").fill(LONG_EMOJI_TEXT)
    counter = page.locator("#counter")
    expected_parts = segment_text(LONG_EMOJI_TEXT, choose_encoding(LONG_EMOJI_TEXT)).parts
    expect(counter).to_have_attribute("data-parts", str(expected_parts))
    expect(counter).to_contain_text(f"{expected_parts} parts · UCS-2")
    page.screenshot(path=SCREENSHOTS / "messenger-composer.png")
    page.get_by_role("button", name="Send").click()

    page.wait_for_url("**/messenger/chat?party=*")
    message = newest_outgoing(stack, to)
    page.wait_for_function("document.body.dataset.live === 'connected'")
    page.evaluate(WATCH_STATUSES, message["id"])
    bubble = page.locator(f'[data-message-id="{message["id"]}"]')
    expect(bubble).to_have_attribute("data-status", "DELIVERED", timeout=15000)
    expect(bubble).to_contain_text("Delivered")
    seen = page.evaluate("window.seenStatuses")
    assert seen[-2:] == ["SENT", "DELIVERED"], seen
    assert set(seen[:-2]) <= {"QUEUED", "SENDING"}, seen
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1

    submits = [p for p in stack.smsc.pdus("in", "submit_sm") if p.get("destination_addr") == to.lstrip("+")
               or p.get("destination_addr") == to]
    assert len(submits) == expected_parts, submits
    page.screenshot(path=SCREENSHOTS / "messenger-thread.png")


def test_an_incoming_message_appears_in_the_open_conversation_and_the_unread_count_of_another_tab(
    stack: WebStack, page: Page, browser: Browser
) -> None:
    party = "+31611000002"
    with stack.connect() as conn:
        conn.execute("INSERT INTO messages (direction, to_address, body) VALUES ('out', %(to)s, 'Hello there')",
                     {"to": party})
    stack.log_in(page, "agent", f"/messenger/chat?party={party.replace('+', '%2B')}")
    # another user, who has not read the conversation, with the list open
    other_tab = browser.new_context().new_page()
    stack.log_in(other_tab, "operator", "/messenger")
    for tab in (page, other_tab):
        tab.wait_for_function("document.body.dataset.live === 'connected'")

    started = time.monotonic()
    stack.smsc.command(f"inject {party} +3197010000000 Yes, see you at eight")
    expect(page.locator(".bubble.in", has_text="Yes, see you at eight")).to_be_visible(timeout=5000)
    appeared_s = time.monotonic() - started
    # the injected PDU goes simulator -> channel -> database -> broker -> /v1/events -> page
    assert appeared_s < 1.0, f"took {appeared_s:.2f} s"
    expect(other_tab.locator(f'.conversations a[data-party="{party}"] .unread')).to_have_text("1")
    # whoever has the conversation open has read it
    expect(page.locator(f'.conversations a[data-party="{party}"] .unread')).to_have_count(0)
    other_tab.context.close()
