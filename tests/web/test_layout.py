"""Every page on a phone-sized screen: no horizontal scrolling (tables scroll inside
themselves), and the Messenger is usable by keyboard alone."""

from __future__ import annotations

from playwright.sync_api import Browser, expect

from tests.web.conftest import WebStack

PAGES = ("/messenger", "/messenger/new", "/manager", "/manager/messages", "/manager/channels",
         "/manager/channels/new", "/manager/rules", "/manager/triggers", "/manager/users")
PHONE = {"width": 390, "height": 844}


def test_no_page_scrolls_sideways_on_a_phone_and_the_composer_works_by_keyboard(
    stack: WebStack, browser: Browser
) -> None:
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    stack.log_in(page, "admin", "/manager")
    for path in PAGES:
        page.goto(stack.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width} px wide"
    # keyboard only: Tab from the number to the text, Ctrl+Enter sends
    page.goto(f"{stack.url}/messenger/new")
    page.get_by_label("To").focus()
    page.keyboard.type("+31611000040")
    page.keyboard.press("Tab")
    page.keyboard.type("typed without a mouse")
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/messenger/chat?party=*")
    expect(page.locator(".bubble.out", has_text="typed without a mouse")).to_be_visible()
    context.close()
