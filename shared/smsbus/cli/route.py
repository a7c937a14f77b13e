"""`smsbus route explain ID` / `smsbus route explain --to ... --body ...`: which blocking rule or
routing rule matches a message and which channel the router would pick, changing nothing.

It runs the router's own compiled query and channel choice, in a transaction it rolls back.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from smsbus import config
from smsbus.cli.messages import positive_int
from smsbus.cli.rules import connection
from smsbus.errors import SmsbusError
from smsbus.message import NewMessage
from smsbus.route_explain import explain_changing_nothing
from smsbus.routing import RouterZone


def register(commands: Any) -> None:
    parser = commands.add_parser("route", help="what the router would do with a message")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    command = verbs.add_parser("explain", help="the matching rules and the channel, changing nothing")
    command.add_argument("id", nargs="?", type=positive_int, help="a message in the table")
    command.add_argument("--to", help="or a message described by its fields: E.164 number")
    command.add_argument("--from", dest="sender")
    command.add_argument("--body")
    command.add_argument("--channel", help="a channel the message names itself")
    command.add_argument("--properties", type=json_object, help="a JSON object")
    command.set_defaults(handler=run_explain)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"priority\": 1}'")
    return value


def run_explain(args: argparse.Namespace) -> int:
    described = any(v is not None for v in (args.to, args.sender, args.body, args.channel, args.properties))
    if args.id is not None and described:
        raise SmsbusError("give either a message id or --to/--body, not both")
    if args.id is None and (args.to is None or args.body is None):
        raise SmsbusError("give a message id, or --to and --body (and optionally --from, --channel, --properties)")
    time_zone = config.load_section("router", RouterZone).time_zone
    with connection() as conn:
        proposed = None
        if args.id is None:
            proposed = NewMessage(to_address=args.to, from_address=args.sender, body=args.body,
                                  channel=args.channel, properties=args.properties or {})
        print("\n".join(explain_changing_nothing(conn, time_zone, message_id=args.id, proposed=proposed)))
    return 0
