"""The dashboard in Chromium: its counts are what `smsbus status` prints at the same moment,
and they change live as messages move."""

from __future__ import annotations

import re
import subprocess

from playwright.sync_api import Page, expect

from tests.peers.processes import BIN_DIR
from tests.web.conftest import SCREENSHOTS, WebStack

COUNT_LINE = re.compile(r"^(in|out)\s+([A-Z]+)\s+(\d+)$")


def status_counts(stack: WebStack) -> dict[str, int]:
    """`smsbus status`'s table (it exits 3 here: the stack runs without supervisord)."""
    shown = subprocess.run([str(BIN_DIR / "smsbus"), "status"], env=stack.env, capture_output=True, text=True,
                           timeout=30)
    counts = {}
    for line in shown.stdout.splitlines():
        match = COUNT_LINE.match(line.strip())
        if match:
            counts[f"{match.group(1)} {match.group(2)}"] = int(match.group(3))
    assert counts, shown.stdout
    return counts


def dashboard_counts(page: Page) -> dict[str, int]:
    cells = page.locator("[data-count]")
    return {cells.nth(i).get_attribute("data-count") or "": int(cells.nth(i).inner_text())
            for i in range(cells.count())}


def test_the_dashboards_numbers_equal_smsbus_status_and_follow_live(stack: WebStack, page: Page) -> None:
    with stack.connect() as conn:
        # a message no rule lets through stays put: NOCHANNEL is decided at once
        conn.execute("INSERT INTO messages (direction, to_address, body, scheduled_at) "
                     "VALUES ('out', '+31611000020', 'later', now() + interval '1 hour')")
    stack.log_in(page, "operator", "/manager")
    for _ in range(3):  # other tests' messages may still be moving: compare a quiet moment
        cli = status_counts(stack)
        page.reload()
        if dashboard_counts(page) == cli and status_counts(stack) == cli:
            break
    assert dashboard_counts(page) == cli
    expect(page.locator("[data-depth=SCHEDULED]")).to_have_text(str(cli.get("out SCHEDULED", 0)))
    page.screenshot(path=SCREENSHOTS / "dashboard.png", full_page=True)

    before = cli.get("out SCHEDULED", 0)
    with stack.connect() as conn:
        conn.execute("INSERT INTO messages (direction, to_address, body, scheduled_at) "
                     "VALUES ('out', '+31611000021', 'later too', now() + interval '1 hour')")
    # the numbers are fetched again every 5 s, and at once on an event of /v1/events
    expect(page.locator("[data-depth=SCHEDULED]")).to_have_text(str(before + 1), timeout=7000)
