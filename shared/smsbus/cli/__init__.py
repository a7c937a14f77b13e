"""`smsbus <noun> <verb>`: the manager's command line. One module per noun.

Exit codes scripts can rely on: 0 done; 1 refused (bad input, forbidden move, not found);
2 usage error; 3 not running (supervisord); 4 database unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

from smsbus.cli import (
    access,
    archive,
    bus,
    campaigns,
    channels,
    db,
    messages,
    notify,
    route,
    rules,
    send,
    stack,
    triggers,
)
from smsbus.cli.output import escaped_output
from smsbus.errors import NotRunning, SmsbusError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_NO_DATABASE = 4

NOUNS = (stack, send, messages, notify, bus, db, archive, rules, route, triggers, channels, access, campaigns)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smsbus", description="smsbus SMS gateway manager")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in NOUNS:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    with escaped_output():
        code = _run(argv)
    sys.exit(code)


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except NotRunning as e:
        print(f"smsbus: {e}", file=sys.stderr)
        code = EXIT_NOT_RUNNING
    except SmsbusError as e:
        print(f"smsbus: error: {e}", file=sys.stderr)
        code = EXIT_REFUSED
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"smsbus: cannot reach the database: {first}", file=sys.stderr)
        code = EXIT_NO_DATABASE
    except KeyboardInterrupt:
        code = 130
    return int(code)
