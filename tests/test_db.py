"""Every session of a service has a statement_timeout: a runaway query ends."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import psycopg
import pytest

from smsbus import db
from smsbus.archive import ArchiverSettings
from tests.peers.cli import Result
from tests.peers.processes import BIN_DIR


def test_ordinary_sessions_have_a_statement_timeout(database_url: str) -> None:
    with db.connect(database_url) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == {"statement_timeout": "30s"}


def test_a_query_past_its_timeout_is_cancelled(database_url: str) -> None:
    with db.connect(database_url, statement_timeout_s=0.2) as conn, pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT pg_sleep(2)")


def test_the_archiver_gets_the_longer_timeout_of_its_settings(database_url: str) -> None:
    own = ArchiverSettings()
    with db.connect(database_url, statement_timeout_s=own.statement_timeout_s) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == {"statement_timeout": "10min"}


def test_db_psql_connects_without_a_password_in_its_argv(service_env: dict[str, str]) -> None:
    psql = subprocess.run(
        [str(BIN_DIR / "smsbus"), "db", "psql", "--", "-tAc", "SELECT count(*) FROM messages"],
        env=service_env, capture_output=True, text=True, timeout=30,
    )
    assert psql.returncode == 0 and psql.stdout.strip() == "0", psql.stderr


def test_db_url_leaves_a_configured_password_out(
    smsbus: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMSBUS_DATABASE_URL", "postgresql://app:s3cr%40t@db.example.com/smsbus")
    shown = smsbus("db", "url")
    assert shown.returncode == 0 and "s3cr" not in shown.stdout + shown.stderr
    assert "host=db.example.com" in shown.stdout and "password is left out" in shown.stderr
