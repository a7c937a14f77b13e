"""The browser for the page tests: Debian's chromium (tests/web/ensure_chromium.sh installs it
under `make test`), driven by Playwright through executable_path, so no browser is downloaded."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright
from psycopg import sql
from psycopg.rows import dict_row

from smsbus import access, channels, rules
from tests.conftest import url_for
from tests.peers.processes import ServiceProcess, free_port, service_environment, start_service
from tests.peers.smsc import PASSWORD as PASSWORD_OF_SMSC
from tests.peers.smsc import SYSTEM_ID, Smsc, start_smsc

WEB_PACKAGE = Path(__file__).resolve().parents[2] / "services" / "api" / "smsbus_api" / "web"
STATIC = WEB_PACKAGE / "static"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("the browser tests need Chromium: run tests/web/ensure_chromium.sh as root")


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # --no-sandbox: the tests run as root in CI, where Chromium's sandbox refuses to start
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
    yield launched
    launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    opened = browser.new_context(viewport={"width": 1280, "height": 800})
    yield opened
    opened.close()


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest) -> Iterator[Page]:
    opened = context.new_page()
    opened.set_default_timeout(10000)
    yield opened
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        # what the browser showed when the test failed, in the test's report
        print(f"page at failure: {opened.url}\n{opened.locator('body').inner_text()[:3000]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    if call.when == "call":
        item.report_call = outcome.get_result()  # type: ignore[attr-defined]


@dataclass
class WebStack:
    """The whole stack a browser talks to: api (pages and /v1), broker, router, an SMPP channel
    named `sim` bound to the SMSC simulator, and one user per role (password PASSWORD)."""

    url: str
    database_url: str
    env: dict[str, str]
    smsc: Smsc
    api: ServiceProcess

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row)

    def log_in(self, page: Page, role: str, then: str = "/") -> None:
        page.goto(f"{self.url}/login?next={quote(then, safe='')}")
        page.get_by_label("User name").fill(role)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(lambda url: "/login" not in url)


PASSWORD = "correct horse battery"
ROLES = ("admin", "operator", "agent")
API_COMMAND = ["smsbus-api"]


@pytest.fixture(scope="session")
def web_database(server_url: str, template_database: str) -> Iterator[str]:
    """One database for every browser test (a stack takes seconds to start): the tests use
    numbers and names of their own, so they do not see each other's rows."""
    name = f"smsbus_web_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        create = sql.SQL("CREATE DATABASE {} TEMPLATE {}")
        admin.execute(create.format(sql.Identifier(name), sql.Identifier(template_database)))
    yield url_for(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def web_stack(web_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    directory = tmp_path_factory.mktemp("web")
    env = service_environment(web_database, directory / "var")
    port = free_port()
    env.update(SMSBUS_API_PORT=str(port), SMSBUS_ROUTER_METRICS_PORT="0", SMSBUS_TRIGGERS_METRICS_PORT="0")
    # the simulator answers a submit after 0.8 s and sends its receipt 0.8 s later: slow
    # enough that a page shows each status in turn
    smsc = start_smsc(env, directory, "--latency-ms", "800", "--receipt-delay-ms", "800")
    with psycopg.connect(web_database, row_factory=dict_row) as conn:
        for role in ROLES:
            access.add_user(conn, role, role, PASSWORD)
        channels.add_channel(conn, "sim", "smpp", {
            "host": "127.0.0.1", "port": smsc.port, "system_id": SYSTEM_ID, "password": PASSWORD_OF_SMSC,
            "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, "poll_interval_s": 0.5,
        })
        conn.commit()
        rules.add_routing_rule(conn, "everything to the simulator", "true", ["sim"])
    started = [
        start_service(["smsbus-broker"], env, directory / "broker.log"),
        start_service(["smsbus-router"], env, directory / "router.log"),
        start_service(["smsbus-channel-smpp", "--channel", "sim"], env, directory / "channel-sim.log"),
    ]
    api = start_service(API_COMMAND, env, directory / "api.log")
    started.append(api)
    try:
        api.wait_for_port(port, timeout_s=20)
        smsc.wait_bound()
        yield WebStack(f"http://127.0.0.1:{port}", web_database, env, smsc, api)
    finally:
        for process in reversed(started):
            process.stop()
        smsc.stop()


@pytest.fixture
def stack(web_stack: WebStack) -> WebStack:
    return web_stack
