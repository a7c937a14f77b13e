"""The Manager's channels in Chromium: live health of the simulator's channel, and the add
form validated by the CLI's code (the error at its field, nothing saved)."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.web.conftest import SCREENSHOTS, WebStack


def saved_channels(stack: WebStack) -> list[str]:
    with stack.connect() as conn:
        return [row["name"] for row in conn.execute("SELECT name FROM channels ORDER BY name")]


def test_a_bad_port_is_shown_at_its_field_and_nothing_is_saved_then_a_good_one_is(stack: WebStack, page: Page) -> None:
    stack.log_in(page, "operator", "/manager/channels")
    sim = page.locator('tr[data-channel="sim"]')
    expect(sim.locator("[data-health]")).to_contain_text("bound")
    page.screenshot(path=SCREENSHOTS / "channels.png")

    page.get_by_role("link", name="Add a channel").click()
    page.get_by_label("Name", exact=True).fill("provider-b")
    page.get_by_label("Host *").fill("127.0.0.1")
    page.get_by_label("Port", exact=True).fill("99999")
    page.get_by_label("System id *").fill("smsbus")
    page.get_by_role("button", name="Add channel").click()

    port_error = page.locator("#e-port")
    expect(port_error).to_contain_text("65535")
    expect(page.get_by_label("Port", exact=True)).to_have_attribute("aria-invalid", "true")
    # what was typed is still there, to be corrected
    expect(page.get_by_label("Host *")).to_have_value("127.0.0.1")
    assert "provider-b" not in saved_channels(stack)
    port_error.scroll_into_view_if_needed()
    page.screenshot(path=SCREENSHOTS / "channel-form-error.png")

    page.get_by_label("Port", exact=True).fill("2775")
    page.get_by_label("Enabled").uncheck()
    page.get_by_role("button", name="Add channel").click()
    page.wait_for_url("**/manager/channels?done=*")
    expect(page.get_by_role("status")).to_contain_text("Added channel provider-b")
    assert "provider-b" in saved_channels(stack)

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('tr[data-channel="provider-b"]').get_by_role("button", name="Enable").click()
    expect(page.get_by_role("status")).to_contain_text("Enabled channel provider-b")
    with stack.connect() as conn:
        row = conn.execute("SELECT enabled, settings FROM channels WHERE name = 'provider-b'").fetchone()
    assert row is not None and row["enabled"] and row["settings"]["port"] == 2775
    with stack.connect() as conn:
        conn.execute("DELETE FROM channels WHERE name = 'provider-b'")
