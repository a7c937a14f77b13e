"""`smsbus db migrate|url|psql`: the schema, and a psql session as the services' role.

The embedded database asks for a password: its URL names the passfile that holds it, so
`psql "$(smsbus db url)"` or `smsbus db psql` connect without a password being typed or shown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from smsbus import config
from smsbus.embedded_pg import binaries_path
from smsbus.errors import SmsbusError
from smsbus.migrate import migrate


def register(commands: Any) -> None:
    parser = commands.add_parser("db", help="the database schema")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("migrate", help="apply missing migrations").set_defaults(handler=run_migrate)
    verbs.add_parser(
        "url", help="the database URL the services use (a password in it is left out)"
    ).set_defaults(handler=run_url)
    psql = verbs.add_parser("psql", help="psql connected as the services' role")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, metavar="-- ARGS", help="passed on to psql")
    psql.set_defaults(handler=run_psql)


def run_migrate(args: argparse.Namespace) -> int:
    applied = migrate(config.load().resolved_database_url())
    print("\n".join(f"applied {name}" for name in applied) or "schema up to date")
    return 0


def without_password(url: str) -> tuple[str, str | None]:
    """The conninfo without its password, and the password (None: there is none)."""
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    return make_conninfo("", **params), None if password is None else str(password)


def run_url(args: argparse.Namespace) -> int:
    url = config.load().resolved_database_url()
    conninfo, password = without_password(url)
    if password is None:
        print(url)
    else:
        print(conninfo)
        print("smsbus: the configured URL's password is left out (use a passfile)", file=sys.stderr)
    return 0


def run_psql(args: argparse.Namespace) -> int:
    """exec psql; a password of a configured URL goes in PGPASSWORD, never in its argv."""
    conninfo, password = without_password(config.load().resolved_database_url())
    beside = binaries_path() / "psql"
    psql = str(beside) if beside.exists() else shutil.which("psql")
    if psql is None:
        raise SmsbusError("psql not found (install the PostgreSQL client)")
    env = dict(os.environ) if password is None else dict(os.environ, PGPASSWORD=password)
    passed = args.psql_args[1:] if args.psql_args[:1] == ["--"] else args.psql_args
    os.execve(psql, [psql, conninfo, *passed], env)
