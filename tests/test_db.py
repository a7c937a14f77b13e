"""Every session of a service has a statement_timeout: a runaway query ends."""

from __future__ import annotations

import psycopg
import pytest

from smsbus import db
from smsbus.archive import ArchiverSettings


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
