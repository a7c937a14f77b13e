"""`smsbus up|down|status`: the whole stack under supervisord.

up: render supervisord.conf, start supervisord (and the embedded PostgreSQL when no
database_url is set), migrate, then start the services. Foreground unless --detach.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from smsbus import access, channels, config, db, queue
from smsbus.config import CONFIG_ENV, Settings, config_file
from smsbus.embedded_pg import EmbeddedPostgres
from smsbus.errors import NotRunning, SmsbusError
from smsbus.migrate import migrate
from smsbus.privileges import can_read, ensure_service_user, open_path_to, started_as_root
from smsbus.supervisor import POSTGRES_PROGRAM, Supervisor, start

EXIT_SOME_NOT_RUNNING = 1
EXIT_NOT_RUNNING = 3


def register(commands: Any) -> None:
    up = commands.add_parser("up", help="start everything under supervisord")
    up.add_argument("--detach", action="store_true", help="return once everything runs")
    up.set_defaults(handler=run_up)
    commands.add_parser("down", help="stop everything").set_defaults(handler=run_down)
    commands.add_parser(
        "status", help="each program's state and message counts per status"
    ).set_defaults(handler=run_status)


def run_up(args: argparse.Namespace) -> int:
    settings = config.load()
    supervisor = Supervisor(settings)
    if supervisor.is_running():
        raise SmsbusError("smsbus is already running (see `smsbus status`, stop with `smsbus down`)")
    opened = []
    if settings.uses_embedded_postgres:
        opened = EmbeddedPostgres(settings.data_path, settings.service_user).ensure_initialized()
    _prepare_service_user(settings, opened)
    _export_for_services(settings)

    process = start(settings, nodaemon=not args.detach)
    try:
        supervisor.wait_running()
        _prepare_database(settings)
        create_first_admin(settings)
        _add_channel_programs(settings, supervisor)
        started = supervisor.start_stopped(exclude={POSTGRES_PROGRAM})
        print(f"smsbus is up: {', '.join(started) or 'no services'} started;"
              f" logs in {supervisor.paths.log_dir}")
        if args.detach:
            return 0
        return _wait_in_foreground(process)
    except BaseException:
        # Ctrl-C while starting, or a failed step: nothing is left running
        _stop(settings, process, detached=args.detach)
        raise


def _prepare_service_user(settings: Settings, opened: list[Path]) -> None:
    """Started as root: the services' system user exists and can reach what it runs from
    (the virtualenv, the Python it was made from, the config file); `opened`: folders already
    made passable for it."""
    if not started_as_root():
        return
    user = ensure_service_user(settings.service_user)
    needed = [Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable))]
    path = config_file()
    if path is not None:
        if not can_read(user, path):
            raise SmsbusError(
                f"the services' user {user.pw_name} cannot read {path}:"
                f" chgrp {user.pw_name} {path} && chmod g+r {path}"
            )
        needed.append(path)
    for folder in opened + [f for p in needed for f in open_path_to(user, p)]:
        print(f"made {folder} passable (o+x, not listable) for the services' user {user.pw_name}")


def _export_for_services(settings: Settings) -> None:
    """supervisord's children inherit our environment: give them the same configuration."""
    os.environ["SMSBUS_DATABASE_URL"] = settings.resolved_database_url()
    path = config_file()
    if path is not None:
        os.environ[CONFIG_ENV] = str(path)


def _prepare_database(settings: Settings) -> None:
    if settings.uses_embedded_postgres:
        embedded = EmbeddedPostgres(settings.data_path, settings.service_user)
        embedded.wait_ready()
        embedded.ensure_database()
    for name in migrate(settings.resolved_database_url()):
        print(f"applied {name}")


FIRST_ADMIN = "admin"
FIRST_ADMIN_PASSWORD_FILE = "admin-password"


def create_first_admin(settings: Settings) -> None:
    """On the first start (no user at all): `admin` with a random one-time password, printed
    once on a terminal and kept in <data_dir>/admin-password (0600) for whoever missed it.
    Not a terminal (systemd's journal, a CI log): only where the file is, never the password."""
    with db.connect(settings.resolved_database_url(), application="smsbus-cli") as conn:
        if access.has_users(conn):
            return
        password = access.new_secret()
        access.add_user(conn, FIRST_ADMIN, "admin", password)
        path = settings.data_path / FIRST_ADMIN_PASSWORD_FILE
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(password + "\n")
        conn.commit()
    on_terminal = sys.stdout.isatty()
    shown = f"one-time password {password} (also in {path})" if on_terminal else f"its one-time password in {path}"
    print(f"created user {FIRST_ADMIN} with {shown}; change it with `smsbus users passwd {FIRST_ADMIN}`")


def _add_channel_programs(settings: Settings, supervisor: Supervisor) -> None:
    """One program per enabled channel, once the channels table exists."""
    with db.connect(settings.resolved_database_url(), application="smsbus-cli") as conn:
        supervisor.sync_channels(settings, channels.enabled_programs(conn))


def _stop(settings: Settings, process: subprocess.Popen[bytes], *, detached: bool) -> None:
    """In the foreground supervisord is our child: SIGTERM, which stops every program, then
    wait for it. Detached, it is not: ask it over a new XML-RPC connection (the one in use
    may have been cut mid-request by the Ctrl-C that brought us here)."""
    if not detached:
        process.terminate()
    else:
        try:
            Supervisor(settings).shutdown()
        except (NotRunning, SmsbusError, OSError):
            process.terminate()
    process.wait()


def _wait_in_foreground(process: subprocess.Popen[bytes]) -> int:
    """Ctrl-C or SIGTERM reaches supervisord, which stops every program in order."""
    signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)


def run_down(args: argparse.Namespace) -> int:
    supervisor = Supervisor(config.load())
    if not supervisor.is_running():
        print("smsbus is not running")
        return 0
    supervisor.shutdown()
    print("smsbus is down")
    return 0


def run_status(args: argparse.Namespace) -> int:
    settings = config.load()
    supervisor = Supervisor(settings)
    code = 0
    if supervisor.is_running():
        for process in supervisor.processes():
            print(f"{process['name']:24} {process['statename']:10} {process['description']}")
            if process["statename"] != "RUNNING":
                code = EXIT_SOME_NOT_RUNNING
    else:
        print("supervisord              not running")
        code = EXIT_NOT_RUNNING
    _print_counts(settings)
    return code


def _print_counts(settings: Settings) -> None:
    try:
        with db.connect(settings.resolved_database_url(), application="smsbus-cli", timeout_s=3) as conn:
            counts = queue.count_by_status(conn)
    except psycopg.OperationalError:
        print("\nmessages: database not reachable")
        return
    except psycopg.errors.UndefinedTable:
        print("\nmessages: schema not migrated (run `smsbus db migrate`)")
        return
    print(f"\n{'direction':10} {'status':14} {'messages':>10}")
    for direction, status, count in counts:
        print(f"{direction:10} {status:14} {count:>10}")
    if not counts:
        print("(no messages)")
