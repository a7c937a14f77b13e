"""PostgreSQL for the tests: $SMSBUS_TEST_DATABASE_URL if set, else an embedded server that
the session starts itself. A template database is migrated once by the same code the
deploy runs; each test gets its own copy (CREATE DATABASE ... TEMPLATE) and drops it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from smsbus.embedded_pg import SUPERUSER, EmbeddedPostgres
from smsbus.migrate import migrate
from tests.peers.processes import ServiceProcess, service_environment, start_service
from tests.peers.smsc import Smsc, start_smsc

# the CLI-in-process and supervisord fixtures
pytest_plugins = ["tests.peers.cli", "tests.peers.api"]

TEST_SERVER_SETTINGS = {
    # a test server holds nothing worth a crash-safe write
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}

_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A connection string to a server where the tests may create databases."""
    given = os.environ.get("SMSBUS_TEST_DATABASE_URL")
    if given:
        yield given
        return
    # short: a Unix socket path must fit in 107 bytes
    data_path = Path(tempfile.mkdtemp(prefix="smsbus-test-pg-"))
    embedded = EmbeddedPostgres(data_path)
    process = embedded.start(TEST_SERVER_SETTINGS)
    try:
        # the superuser: the tests create a database each
        yield embedded.url("postgres", SUPERUSER)
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(data_path, ignore_errors=True)


def url_for(server_url: str, database: str) -> str:
    return make_conninfo(server_url, dbname=database)


@pytest.fixture(scope="session")
def template_database(server_url: str) -> str:
    name = f"smsbus_template_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate(url_for(server_url, name))
    return name


@pytest.fixture
def database_url(server_url: str, template_database: str) -> Iterator[str]:
    """A freshly migrated database of this test's own."""
    name = f"smsbus_test_{os.getpid()}_{next(_database_numbers)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    yield url_for(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection, like an integrator's psql session."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def service_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment a service gets from supervisord, on ports of this test's own."""
    return service_environment(database_url, tmp_path / "var")


@pytest.fixture
def broker(service_env: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcess]:
    process = start_service(["smsbus-broker"], service_env, tmp_path / "broker.log")
    process.wait_for_port(int(service_env["SMSBUS_BUS_NOTIFY_PORT"]))
    yield process
    process.stop()


StartServices = Callable[..., ServiceProcess]


@pytest.fixture
def start_services(service_env: dict[str, str], tmp_path: Path) -> Iterator[StartServices]:
    """start_services("router", stop_within_s=2, poll_interval_s="0") starts `smsbus-router` with
    [router] settings from the environment; at the end each is stopped with SIGTERM and must
    exit 0 within its stop_within_s."""
    started: list[tuple[ServiceProcess, float]] = []

    def start(name: str, stop_within_s: float = 3.0, **settings: str) -> ServiceProcess:
        section = name.upper()
        env = dict(service_env, **{f"SMSBUS_{section}_METRICS_PORT": "0"})
        env.update({f"SMSBUS_{section}_{k.upper()}": v for k, v in settings.items()})
        process = start_service([f"smsbus-{name}"], env, tmp_path / f"{name}{len(started)}.log")
        process.wait_for_log("database connected")
        started.append((process, stop_within_s))
        return process

    yield start
    for process, stop_within_s in started:
        code, seconds = process.stop()
        assert code == 0, process.log()
        assert seconds < stop_within_s, f"took {seconds:.1f} s to stop"


@pytest.fixture
def smsc(service_env: dict[str, str], tmp_path: Path) -> Iterator[Smsc]:
    """The SMSC simulator as a process of this test's own."""
    simulator = start_smsc(service_env, tmp_path)
    yield simulator
    simulator.stop()
