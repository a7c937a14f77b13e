"""Who may open what, in Chromium: a logged-out browser goes to the login page, an agent is
refused the Manager and its writes (403), and a write without the session's CSRF token
(a cross-site form, or a same-site request without the header) changes nothing."""

from __future__ import annotations

from urllib.parse import quote

from playwright.sync_api import Page, expect

from tests.web.conftest import SCREENSHOTS, WebStack

EVIL_ORIGIN = "http://evil.example"


def count_messages_to(stack: WebStack, to: str) -> int:
    with stack.connect() as conn:
        row = conn.execute("SELECT count(*) AS n FROM messages WHERE to_address = %(to)s", {"to": to}).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_logged_out_browser_is_sent_to_login_and_back_to_the_page_it_wanted(stack: WebStack, page: Page) -> None:
    page.goto(f"{stack.url}/manager/messages?status=FAILED")
    assert page.url == f"{stack.url}/login?next={quote('/manager/messages?status=FAILED', safe='')}"
    page.screenshot(path=SCREENSHOTS / "login.png")
    page.get_by_label("User name").fill("operator")
    page.get_by_label("Password").fill("wrong password!")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    stack.log_in(page, "operator")
    page.goto(f"{stack.url}/login?next={quote('/manager/messages?status=FAILED', safe='')}")
    page.get_by_label("User name").fill("operator")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{stack.url}/manager/messages?status=FAILED")
    expect(page.get_by_label("Status")).to_have_value("FAILED")
    # logging out ends the session: the next page asks for a login again
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{stack.url}/login")
    page.goto(f"{stack.url}/messenger")
    assert "/login?next=" in page.url


def test_an_agent_cannot_open_manager_pages_nor_make_their_writes(stack: WebStack, page: Page) -> None:
    stack.log_in(page, "agent")
    assert page.url == f"{stack.url}/messenger"
    expect(page.get_by_role("link", name="Messages")).to_have_count(0)
    for path in ("/manager", "/manager/messages", "/manager/channels", "/manager/rules", "/manager/users"):
        response = page.goto(stack.url + path)
        assert response is not None and response.status == 403, path
        expect(page.get_by_role("heading")).to_have_text("This page is not for your role")
    with stack.connect() as conn:
        row = conn.execute("INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31611000009', 'x') "
                           "RETURNING id").fetchone()
    assert row is not None
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    refused = page.request.post(f"{stack.url}/manager/messages/{row['id']}/cancel",
                                headers={"X-CSRF-Token": token or ""})
    assert refused.status == 403
    with stack.connect() as conn:
        after = conn.execute("SELECT status FROM messages WHERE id = %(id)s", {"id": row["id"]}).fetchone()
    assert after is not None and after["status"] != "FAILED"


def test_a_cross_site_form_post_and_a_post_without_the_csrf_token_are_refused(stack: WebStack, page: Page) -> None:
    to = "+31611000010"
    stack.log_in(page, "agent", "/messenger")
    # a page of another site that posts a form to the Messenger as soon as it opens
    evil_form = f"""<form id="f" method="post" action="{stack.url}/messenger/send">
        <input name="to" value="{to}"><input name="body" value="free money"></form>
        <script>document.getElementById("f").submit()</script>"""
    page.route(f"{EVIL_ORIGIN}/**", lambda route: route.fulfill(body=evil_form, content_type="text/html"))
    with page.expect_response(f"{stack.url}/messenger/send") as answer:
        page.goto(f"{EVIL_ORIGIN}/win")
    assert answer.value.status in (401, 403)
    # from the site itself, with the session cookie but without the X-CSRF-Token header
    same_site = page.request.post(f"{stack.url}/messenger/send", form={"to": to, "body": "no token"})
    assert same_site.status == 403
    assert count_messages_to(stack, to) == 0
