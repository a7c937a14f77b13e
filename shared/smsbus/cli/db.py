"""`smsbus db migrate`: apply the schema migrations that are missing."""

from __future__ import annotations

import argparse
from typing import Any

from smsbus import config
from smsbus.migrate import migrate


def register(commands: Any) -> None:
    parser = commands.add_parser("db", help="the database schema")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("migrate", help="apply missing migrations").set_defaults(handler=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    applied = migrate(config.load().resolved_database_url())
    print("\n".join(f"applied {name}" for name in applied) or "schema up to date")
    return 0
