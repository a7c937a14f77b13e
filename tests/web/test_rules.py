"""The Manager's rules in Chromium: a condition with a SQL typo is refused with PostgreSQL's
message at the field, and the explain box answers exactly as `smsbus route explain`."""

from __future__ import annotations

import subprocess

import pytest
from playwright.sync_api import Page, expect

from smsbus import rules
from smsbus.rules import RuleRefused
from tests.peers.processes import BIN_DIR
from tests.web.conftest import SCREENSHOTS, WebStack


def routing_rule_names(stack: WebStack) -> list[str]:
    with stack.connect() as conn:
        return [r["name"] for r in conn.execute("SELECT name FROM routing_rules ORDER BY position")]


def test_a_sql_typo_is_refused_with_postgresqls_message_and_explain_matches_the_cli(
    stack: WebStack, page: Page
) -> None:
    stack.log_in(page, "operator", "/manager/rules")
    page.get_by_text("Add a routing rule").click()
    page.locator("#route-name").fill("dutch numbers")
    page.locator("#route-condition").fill("to_address LIKE '+31%' AND")
    page.locator("#route-channels").fill("sim")
    page.locator("#route-position").fill("1")
    page.locator("#route-name").press("Enter")
    # PostgreSQL's own words, as the CLI's shared code gets them
    with stack.connect() as conn, pytest.raises(RuleRefused) as refused:
        rules.add_routing_rule(conn, "dutch numbers", "to_address LIKE '+31%' AND", ["sim"])
    assert "syntax error" in str(refused.value)
    expect(page.locator("#route-condition-error")).to_have_text(str(refused.value))
    expect(page.locator("#route-condition")).to_have_value("to_address LIKE '+31%' AND")
    assert "dutch numbers" not in routing_rule_names(stack)
    page.screenshot(path=SCREENSHOTS / "rules-error.png", full_page=True)

    page.locator("#route-condition").fill("to_address LIKE '+31%'")
    page.get_by_role("button", name="Save rule").last.click()
    expect(page.get_by_role("status")).to_contain_text("Saved routing rule dutch numbers")
    assert routing_rule_names(stack)[0] == "dutch numbers"

    page.get_by_label("To", exact=True).fill("+31612345678")
    page.get_by_label("Text").fill("Is this routed?")
    page.get_by_role("button", name="Explain").click()
    shown = page.locator("#explain-result").inner_text()
    cli = subprocess.run(
        [str(BIN_DIR / "smsbus"), "route", "explain", "--to", "+31612345678", "--body", "Is this routed?"],
        env=stack.env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert shown.strip() == cli.stdout.strip()
    assert 'routing rule: "dutch numbers" (position 1)' in shown
    page.screenshot(path=SCREENSHOTS / "rules.png", full_page=True)

    page.get_by_role("button", name="Move dutch numbers down").click()
    expect(page.get_by_role("status")).to_contain_text("Moved routing rule dutch numbers down")
    assert routing_rule_names(stack)[1] == "dutch numbers"
    with stack.connect() as conn:
        conn.execute("DELETE FROM routing_rules WHERE name = 'dutch numbers'")
