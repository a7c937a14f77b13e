"""The embedded PostgreSQL of an older smsbus (trust for everyone, everything the superuser's)
is brought to passwords and the application role at the next start, its data kept."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from smsbus.embedded_pg import DATABASE_NAME, SUPERUSER, EmbeddedPostgres
from smsbus.migrate import migrate


@pytest.fixture
def data_path() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="smsbus-old-"))  # short: the socket lives below
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_like_before_passwords(embedded: EmbeddedPostgres) -> None:
    """A database made and migrated by the superuser, then trust in pg_hba.conf, no passfile."""
    server = embedded.start()
    try:
        with psycopg.connect(embedded.url("postgres", SUPERUSER), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE_NAME}")
        migrate(embedded.url(DATABASE_NAME, SUPERUSER))
        with psycopg.connect(embedded.url(DATABASE_NAME, SUPERUSER), autocommit=True) as conn:
            conn.execute("INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31612345678', 'old')")
            conn.execute(f"ALTER ROLE {SUPERUSER} PASSWORD NULL")
    finally:
        server.terminate()
        server.wait(30)
    (embedded.pgdata / "pg_hba.conf").write_text("local all all trust\n")
    embedded.passfile.unlink()


def test_a_data_directory_from_before_passwords_is_handed_to_the_application_role(data_path: Path) -> None:
    embedded = EmbeddedPostgres(data_path)
    make_like_before_passwords(embedded)

    server = embedded.start()  # ensure_initialized brings the passwords
    try:
        embedded.ensure_database()
        assert migrate(embedded.url()) == []  # the application role sees a migrated schema
        with psycopg.connect(embedded.url(), autocommit=True) as conn:
            owners = conn.execute(
                "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('public', 'archive')"
            ).fetchall()
            assert owners == [("smsbus",)]
            conn.execute("INSERT INTO messages (direction, to_address, body) VALUES ('out', '+31612345678', 'new')")
            assert conn.execute("SELECT body FROM messages ORDER BY id").fetchall() == [("old",), ("new",)]
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(embedded.url("postgres", SUPERUSER).split("&passfile=")[0]).close()
    finally:
        server.terminate()
        server.wait(30)
    assert (embedded.pgdata / "pg_hba.conf.trust").exists()
