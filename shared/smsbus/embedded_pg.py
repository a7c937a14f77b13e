"""The embedded PostgreSQL: the `pgserver` wheel's binaries, data under the data directory.

Used when no database URL is configured (`smsbus up` runs it as a supervisord program) and
by the test session. It listens on a Unix socket only, so it never collides with a port.
PostgreSQL refuses to run as root: then it runs as the unprivileged `pgserver` user.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg import sql

from smsbus.errors import SmsbusError

DATABASE_NAME = "smsbus"
SUPERUSER = "postgres"
SYSTEM_USER_WHEN_ROOT = "pgserver"
# sun_path holds 107 bytes; the socket file is <socket_dir>/.s.PGSQL.5432
MAX_SOCKET_DIR_LENGTH = 90


def binaries_path() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise SmsbusError("the pgserver package is not installed (needed for the embedded PostgreSQL)")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def embedded_database_url(data_path: Path, database: str = DATABASE_NAME) -> str:
    return f"postgresql://{SUPERUSER}@/{database}?host={data_path / 'pgsocket'}"


class EmbeddedPostgres:
    def __init__(self, data_path: Path) -> None:
        self.data_path = data_path
        self.pgdata = data_path / "pgdata"
        self.socket_dir = data_path / "pgsocket"
        self.run_as = SYSTEM_USER_WHEN_ROOT if os.geteuid() == 0 else None
        if len(str(self.socket_dir)) > MAX_SOCKET_DIR_LENGTH:
            raise SmsbusError(
                f"data directory path too long for a PostgreSQL socket ({self.socket_dir}):"
                " set data_dir to a shorter path"
            )

    def url(self, database: str = DATABASE_NAME) -> str:
        return embedded_database_url(self.data_path, database)

    def ensure_initialized(self) -> None:
        """initdb on first use; make the folders usable by the server's system user."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as is not None:
            self._grant_to_system_user()
        if (self.pgdata / "PG_VERSION").exists():
            return
        subprocess.run(
            [
                str(binaries_path() / "initdb"),
                "-D", str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "-U", SUPERUSER,
            ],
            check=True,
            capture_output=True,
            user=self.run_as,
        )

    def _grant_to_system_user(self) -> None:
        with warnings.catch_warnings():
            # pgserver's import looks up a runtime dir we never use
            warnings.simplefilter("ignore")
            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        entry = ensure_user_exists(SYSTEM_USER_WHEN_ROOT)
        assert entry is not None
        ensure_prefix_permissions(self.pgdata)
        ensure_folder_permissions(binaries_path().parent, 0o055)
        for folder in (self.pgdata, self.socket_dir):
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        os.chmod(self.pgdata, 0o700)

    def server_argv(self, settings: Mapping[str, str] | None = None) -> list[str]:
        """The postgres command line, for supervisord or for a test session's Popen."""
        argv = [
            str(binaries_path() / "postgres"),
            "-D", str(self.pgdata),
            "-k", str(self.socket_dir),
            "-c", "listen_addresses=",
        ]
        for name, value in (settings or {}).items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def start(self, settings: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run the server as a child (tests, benchmarks); supervisord runs it otherwise."""
        self.ensure_initialized()
        log = (self.data_path / "postgres.log").open("ab")
        process = subprocess.Popen(
            self.server_argv(settings), stdout=log, stderr=log, user=self.run_as
        )
        self.wait_ready(process=process)
        return process

    def wait_ready(self, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as e:
                if process is not None and process.poll() is not None:
                    raise SmsbusError(
                        f"embedded PostgreSQL exited with code {process.returncode};"
                        f" see {self.data_path / 'postgres.log'}"
                    ) from e
                if time.monotonic() > deadline:
                    raise SmsbusError(f"embedded PostgreSQL not ready after {timeout_s:.0f} s: {e}") from e
                time.sleep(0.1)

    def ensure_database(self, database: str = DATABASE_NAME) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))

