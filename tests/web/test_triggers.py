"""The Manager's triggers in Chromium: a script with a syntax error is refused at the script
field on save; a good one is saved and its dry run on a message shows what it would do."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.web.conftest import SCREENSHOTS, WebStack


def test_a_broken_script_is_refused_on_save_and_a_dry_run_shows_what_a_good_one_would_do(
    stack: WebStack, page: Page
) -> None:
    with stack.connect() as conn:
        row = conn.execute("INSERT INTO messages (direction, from_address, to_address, body, status) "
                           "VALUES ('in', '+31611000030', '+3197010000000', 'hello', 'RECEIVED') "
                           "RETURNING id").fetchone()
    assert row is not None
    stack.log_in(page, "admin", "/manager/triggers")
    page.get_by_label("Name").fill("auto reply")
    page.get_by_label("Script").fill("def handle(message, api)\n    pass\n")
    page.get_by_role("button", name="Save trigger").click()
    expect(page.locator("#t-script-error")).to_contain_text("line 1")
    with stack.connect() as conn:
        assert conn.execute("SELECT count(*) AS n FROM triggers").fetchone() == {"n": 0}

    page.get_by_label("Script").fill('def handle(message, api):\n    api.log(f"would answer {message.id}")\n')
    page.get_by_label("Enabled").uncheck()
    page.get_by_role("button", name="Save trigger").click()
    expect(page.get_by_role("status")).to_contain_text("Saved trigger auto reply")

    page.get_by_label("Message id").fill(str(row["id"]))
    page.get_by_role("button", name="Run without changing anything").click()
    expect(page.locator("#dry-run-output")).to_contain_text(f"would answer {row['id']}", timeout=20000)
    page.screenshot(path=SCREENSHOTS / "triggers.png", full_page=True)
    with stack.connect() as conn:
        conn.execute("DELETE FROM triggers")
