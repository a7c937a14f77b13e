"""Keys and users (SPEC §13): `smsbus api-keys` and `smsbus users` from the CLI, then used over
HTTP: a key is shown once and works; a user's session cookie is HttpOnly and SameSite=Strict,
its writes need the CSRF token; failed logins are refused beyond the limit; the first start
creates admin with a one-time password kept 0600."""

from __future__ import annotations

import io
import stat
import sys
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from smsbus import config
from smsbus.cli.stack import FIRST_ADMIN_PASSWORD_FILE, create_first_admin
from tests.peers.api import Api
from tests.peers.cli import Result

PASSWORD = "correct horse battery"


@pytest.fixture
def api_settings() -> dict[str, str]:
    return {"max_failed_logins_per_user": "3"}


def with_stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def test_a_key_created_by_the_cli_is_shown_once_and_works_until_revoked(
    api: Api, smsbus: Callable[..., Result], conn: psycopg.Connection[Any]
) -> None:
    created = smsbus("api-keys", "create", "shop", "--scopes", "send")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("shop.") and len(key) > 40
    listed = smsbus("api-keys", "list")
    assert "shop" in listed.stdout and key.split(".")[1] not in listed.stdout
    stored = conn.execute("SELECT secret_sha256 FROM api_keys WHERE name = 'shop'").fetchone()
    assert stored is not None and key.split(".")[1].encode() not in bytes(stored["secret_sha256"])
    message = {"to_address": "+31612345678", "body": "hi"}
    with httpx.Client(base_url=api.url) as client:
        assert client.post("/v1/messages", json=message, headers={"X-API-Key": key}).status_code == 201
        assert smsbus("api-keys", "revoke", "shop").returncode == 0
        assert client.post("/v1/messages", json=message, headers={"X-API-Key": key}).status_code == 401
    bad_scope = smsbus("api-keys", "create", "x", "--scopes", "send,root")
    assert bad_scope.returncode == 1 and "scopes" in bad_scope.stderr


def test_a_session_cookie_is_strict_and_its_writes_need_the_csrf_token(
    api: Api, smsbus: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_stdin(monkeypatch, PASSWORD + "\n")
    assert smsbus("users", "add", "ann", "--role", "agent").returncode == 0
    with httpx.Client(base_url=api.url) as browser:
        login = browser.post("/v1/session", json={"name": "ann", "password": PASSWORD})
        assert login.status_code == 201, login.text
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        csrf = login.json()["csrf_token"]
        message = {"to_address": "+31612345678", "body": "from the browser"}
        assert browser.get("/v1/messages").status_code == 200
        assert browser.post("/v1/messages", json=message).status_code == 403
        assert browser.post("/v1/messages", json=message, headers={"X-CSRF-Token": "forged"}).status_code == 403
        assert browser.post("/v1/messages", json=message, headers={"X-CSRF-Token": csrf}).status_code == 201
        assert browser.post("/v1/channels/x/enable", headers={"X-CSRF-Token": csrf}).status_code == 403  # agent
        assert smsbus("users", "disable", "ann").returncode == 0
        assert browser.get("/v1/messages").status_code == 401


def test_failed_logins_are_refused_beyond_the_limit(
    api: Api, smsbus: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_stdin(monkeypatch, PASSWORD + "\n")
    assert smsbus("users", "add", "bob", "--role", "operator").returncode == 0
    with httpx.Client(base_url=api.url) as client:
        wrong = [client.post("/v1/session", json={"name": "bob", "password": "guess"}).status_code for _ in range(3)]
        after = client.post("/v1/session", json={"name": "bob", "password": PASSWORD})
    assert wrong == [401, 401, 401]
    assert after.status_code == 429 and "Retry-After" in after.headers


def test_the_first_start_creates_admin_with_a_one_time_password(
    database_url: str, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = config.load(cli_env)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)  # as typed in a terminal
    create_first_admin(settings)
    create_first_admin(settings)  # a second start changes nothing
    printed = capsys.readouterr().out
    password_file = settings.data_path / FIRST_ADMIN_PASSWORD_FILE
    password = password_file.read_text().strip()
    assert printed.count(password) == 1
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT role, password_hash FROM users WHERE name = 'admin'").fetchone()
    assert row is not None and row[0] == "admin" and row[1].startswith("$argon2id$")
