"""Users and API keys in Chromium, for admins only: an operator is refused the page; a new
key is shown once and works against the API; a revoked one does not."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.web.conftest import SCREENSHOTS, WebStack


def test_an_admin_adds_a_user_and_creates_then_revokes_a_key(stack: WebStack, page: Page) -> None:
    stack.log_in(page, "operator")
    response = page.goto(f"{stack.url}/manager/users")
    assert response is not None and response.status == 403
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/login")

    stack.log_in(page, "admin", "/manager/users")
    page.get_by_label("Name", exact=True).fill("nina")
    page.get_by_label("Role").select_option("agent")
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("#user-error")).to_contain_text("at least 10 characters")
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("status")).to_contain_text("Added user nina (agent)")

    page.get_by_label("Name (who uses it)").fill("webshop")
    page.get_by_label("read").check()
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#created-key").inner_text().strip()
    assert key.startswith("webshop.")
    page.screenshot(path=SCREENSHOTS / "users-and-keys.png", full_page=True)
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{stack.url}/v1/messages?limit=1", headers=headers).status_code == 200

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('tr[data-key="webshop"]').get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_contain_text("Revoked API key webshop")
    # the api remembers keys for key_cache_s (1 s by default)
    page.wait_for_timeout(1200)
    assert httpx.get(f"{stack.url}/v1/messages?limit=1", headers=headers).status_code == 401
