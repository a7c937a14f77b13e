"""The embedded PostgreSQL: the `pgserver` wheel's binaries, data under the data directory.

Used when no database URL is configured (`smsbus up` runs it as a supervisord program) and
by the test session. It listens on a Unix socket only, in a folder only its system user may
enter (0700, and the socket itself 0700), and asks every role for a password (scram-sha-256).
The passwords are generated at the first start and kept in a pgpass file (0600) that the
connection URL names, so no password is ever in a command line or an environment variable.
The services connect as the role `smsbus`, which owns the database and its schema but is no
superuser (no COPY TO PROGRAM, no server files). Started as root, the server runs as the
services' system user (PostgreSQL refuses root), see smsbus.privileges.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import os
import pwd
import secrets
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from smsbus.errors import SmsbusError
from smsbus.privileges import ensure_service_user, open_path_to, private_folder, started_as_root

DATABASE_NAME = "smsbus"
SUPERUSER = "postgres"
# the role the services, the CLI and migrations use: owns the database, is no superuser
APPLICATION_ROLE = "smsbus"
DEFAULT_SERVICE_USER = "smsbus"
# sun_path holds 107 bytes; the socket file is <socket_dir>/.s.PGSQL.5432
MAX_SOCKET_DIR_LENGTH = 90
PASSWORD_BYTES = 32

ROLE_EXISTS = "SELECT 1 FROM pg_roles WHERE rolname = %(role)s"
CREATE_ROLE = sql.SQL("CREATE ROLE {role} LOGIN")
# ALTER ROLE takes no parameters: the password goes in already hashed by libpq, never in clear
SET_ROLE_PASSWORD = sql.SQL(
    "ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
    " PASSWORD {hashed}"
)
DATABASE_OWNER = "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = %(database)s"
CREATE_DATABASE = sql.SQL("CREATE DATABASE {database} OWNER {role}")
GIVE_DATABASE = sql.SQL("ALTER DATABASE {database} OWNER TO {role}")
# A database made before the application role (by the superuser, under trust): everything
# the superuser owns outside the system schemas goes to the role. REASSIGN OWNED cannot be
# used: the bootstrap superuser's system objects are not to be moved. Sequences and indexes
# of a table follow it; the public schema follows the database (pg_database_owner).
GIVE_OBJECTS = """
DO $$
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT format('ALTER SCHEMA %I OWNER TO smsbus', nspname) AS command
        FROM pg_namespace
        WHERE nspowner = 'postgres'::regrole AND nspname !~ '^(pg_|information_schema$|public$)'
        UNION ALL
        SELECT format('ALTER %s %I.%I OWNER TO smsbus',
                      CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                     WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                      n.nspname, c.relname)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relowner = 'postgres'::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
          AND n.nspname !~ '^(pg_|information_schema$)'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.objid = c.oid AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
        UNION ALL
        SELECT format('ALTER ROUTINE %s OWNER TO smsbus', p.oid::regprocedure)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proowner = 'postgres'::regrole AND n.nspname !~ '^(pg_|information_schema$)'
    LOOP
        EXECUTE item.command;
    END LOOP;
END
$$
"""
# pg_hba.conf of a data directory made before passwords (initdb --auth=trust)
PASSWORD_HBA = """\
# smsbus: every connection gives its password (scram-sha-256); see smsbus.embedded_pg
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""


def binaries_path() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise SmsbusError("the pgserver package is not installed (needed for the embedded PostgreSQL)")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def passfile_path(data_path: Path) -> Path:
    return data_path / "secrets" / "pgpass"


def embedded_database_url(data_path: Path, database: str = DATABASE_NAME, role: str = APPLICATION_ROLE) -> str:
    """A URL psql takes too: the socket folder and the passfile, never the password."""
    socket_dir = quote(str(data_path / "pgsocket"), safe="/")
    passfile = quote(str(passfile_path(data_path)), safe="/")
    return f"postgresql://{role}@/{database}?host={socket_dir}&passfile={passfile}"


class EmbeddedPostgres:
    def __init__(self, data_path: Path, service_user: str = DEFAULT_SERVICE_USER) -> None:
        self.data_path = data_path
        self.pgdata = data_path / "pgdata"
        self.socket_dir = data_path / "pgsocket"
        self.passfile = passfile_path(data_path)
        # root: the server runs as the services' system user (created by ensure_initialized)
        self.run_as = service_user if started_as_root() else None
        if len(str(self.socket_dir)) > MAX_SOCKET_DIR_LENGTH:
            raise SmsbusError(
                f"data directory path too long for a PostgreSQL socket ({self.socket_dir}):"
                " set data_dir to a shorter path"
            )

    def url(self, database: str = DATABASE_NAME, role: str = APPLICATION_ROLE) -> str:
        return embedded_database_url(self.data_path, database, role)

    def ensure_initialized(self) -> list[Path]:
        """The folders (only the server's user may enter them), the passwords, and initdb on
        first use. Root keeps the data directory itself (supervisord's config and logs live
        there); the service user's group may enter it, no one else. Returns the folders above
        it made passable for that user (see smsbus.privileges)."""
        owner = ensure_service_user(self.run_as) if self.run_as is not None else None
        opened = []
        if owner is None:
            private_folder(self.data_path, None)
        else:
            private_folder(self.data_path, None, 0o750)
            os.chown(self.data_path, 0, owner.pw_gid)
            opened = open_path_to(owner, self.data_path)
        for folder in (self.pgdata, self.socket_dir, self.passfile.parent):
            private_folder(folder, owner)
        if owner is not None and self.pgdata.stat().st_uid != owner.pw_uid:
            _chown_tree(self.pgdata, owner)  # a data directory of another system user before
        initialized = (self.pgdata / "PG_VERSION").exists()
        made_before_passwords = initialized and not self.passfile.exists()
        self._ensure_passfile(owner)
        if not initialized:
            self._initdb(owner)
        elif made_before_passwords:
            self._require_passwords()
        return opened

    def _ensure_passfile(self, owner: pwd.struct_passwd | None) -> None:
        if self.passfile.exists():
            return
        lines = "".join(
            f"*:*:*:{role}:{secrets.token_urlsafe(PASSWORD_BYTES)}\n" for role in (SUPERUSER, APPLICATION_ROLE)
        )
        _write_private(self.passfile, lines, owner)

    def password(self, role: str) -> str:
        for line in self.passfile.read_text().splitlines():
            *_, name, password = line.split(":")
            if name == role:
                return password
        raise SmsbusError(f"no password for role {role} in {self.passfile}")

    def _initdb(self, owner: pwd.struct_passwd | None) -> None:
        pwfile = self.passfile.with_name("initdb-password")
        pwfile.unlink(missing_ok=True)  # left by an initdb that was interrupted
        _write_private(pwfile, self.password(SUPERUSER) + "\n", owner)
        try:
            initdb = subprocess.run(
                [
                    str(binaries_path() / "initdb"),
                    "-D", str(self.pgdata),
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "-U", SUPERUSER,
                ],
                check=False,
                capture_output=True,
                text=True,
                **self._as_server_user(),
            )
            if initdb.returncode != 0:
                raise SmsbusError(f"initdb failed: {initdb.stderr.strip() or initdb.stdout.strip()}")
        finally:
            pwfile.unlink()

    def _as_server_user(self) -> dict[str, Any]:
        """subprocess arguments that run a child as the server's user with its groups (user=
        alone would keep root's groups, and the data directory is entered through the group)."""
        if self.run_as is None:
            return {}
        entry = pwd.getpwnam(self.run_as)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": os.getgrouplist(self.run_as, entry.pw_gid)}

    def _require_passwords(self) -> None:
        """A data directory of an smsbus from before passwords (trust for everyone): the
        superuser gets its password through single-user mode (the server is down, nothing
        listens), then pg_hba.conf asks everyone for theirs. ensure_database then hands the
        database over to the application role."""
        # base64 and $:, never a quote: safe inside the literal (single-user mode has no
        # parameters)
        hashed = _scram_verifier(self.password(SUPERUSER))
        single = subprocess.run(
            [str(binaries_path() / "postgres"), "--single", "-D", str(self.pgdata), "postgres"],
            input=f"ALTER ROLE {SUPERUSER} PASSWORD '{hashed}';\n",
            capture_output=True,
            text=True,
            check=False,
            **self._as_server_user(),
        )
        if single.returncode != 0:
            raise SmsbusError(f"cannot set the superuser's password: {single.stderr.strip()}")
        hba = self.pgdata / "pg_hba.conf"
        hba.with_name("pg_hba.conf.trust").write_text(hba.read_text())  # kept for the record
        hba.write_text(PASSWORD_HBA)

    def server_argv(self, settings: Mapping[str, str] | None = None) -> list[str]:
        """The postgres command line, for supervisord or for a test session's Popen."""
        argv = [
            str(binaries_path() / "postgres"),
            "-D", str(self.pgdata),
            "-k", str(self.socket_dir),
            "-c", "listen_addresses=",
            "-c", "unix_socket_permissions=0700",
        ]
        for name, value in (settings or {}).items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def start(self, settings: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run the server as a child (tests, benchmarks); supervisord runs it otherwise."""
        self.ensure_initialized()
        log = (self.data_path / "postgres.log").open("ab")
        process = subprocess.Popen(self.server_argv(settings), stdout=log, stderr=log, **self._as_server_user())
        self.wait_ready(process=process)
        return process

    def wait_ready(self, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.url("postgres", SUPERUSER), connect_timeout=2).close()
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
        """The application role (its password from the passfile) and its own database."""
        role = sql.Identifier(APPLICATION_ROLE)
        with psycopg.connect(self.url("postgres", SUPERUSER), autocommit=True) as conn:
            if not conn.execute(ROLE_EXISTS, {"role": APPLICATION_ROLE}).fetchone():
                conn.execute(CREATE_ROLE.format(role=role))
            hashed = _scram_verifier(self.password(APPLICATION_ROLE))
            conn.execute(SET_ROLE_PASSWORD.format(role=role, hashed=sql.Literal(hashed)))
            found = conn.execute(DATABASE_OWNER, {"database": database}).fetchone()
            if found is None:
                conn.execute(CREATE_DATABASE.format(database=sql.Identifier(database), role=role))
            elif found[0] != APPLICATION_ROLE:
                conn.execute(GIVE_DATABASE.format(database=sql.Identifier(database), role=role))
                with psycopg.connect(self.url(database, SUPERUSER), autocommit=True) as owned:
                    owned.execute(GIVE_OBJECTS)


def _scram_verifier(password: str, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a scram-sha-256 password (RFC 5802/7677), made here so
    that the clear password never reaches the server or its logs."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def _write_private(path: Path, text: str, owner: pwd.struct_passwd | None) -> None:
    """A new file only its owner may read, created so (never readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        if owner is not None:
            os.fchown(f.fileno(), owner.pw_uid, owner.pw_gid)
        f.write(text)


def _chown_tree(path: Path, owner: pwd.struct_passwd) -> None:
    for root, folders, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in folders + files)]:
            os.lchown(name, owner.pw_uid, owner.pw_gid)
