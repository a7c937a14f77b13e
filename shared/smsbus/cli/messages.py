"""`smsbus messages list|show|reprocess`: browse the queue, offer messages to the triggers again."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from smsbus import config, db, triggers
from smsbus.cli.output import escape_controls
from smsbus.cli.send import aware_datetime
from smsbus.errors import SmsbusError
from smsbus.local_api import find, get
from smsbus.statuses import Direction, Status


def register(commands: Any) -> None:
    parser = commands.add_parser("messages", help="browse messages")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="newest first")
    listing.add_argument("--status", type=str.upper, choices=[str(s) for s in Status])
    listing.add_argument("--direction", choices=[str(d) for d in Direction])
    listing.add_argument("--channel")
    listing.add_argument("--since", type=aware_datetime, help="ISO 8601 with zone")
    listing.add_argument("--limit", type=positive_int, default=50)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--archive", action="store_true", help="list archived messages instead")
    listing.set_defaults(handler=run_list)
    show = verbs.add_parser("show", help="every field of one message, live or archived")
    show.add_argument("id", type=positive_int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)
    reprocess = verbs.add_parser("reprocess", help="offer finished messages to the triggers again")
    reprocess.add_argument("ids", nargs="+", type=positive_int, metavar="ID")
    reprocess.set_defaults(handler=run_reprocess)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


LIST_HEADER = f"{'id':>10}  {'dir':3}  {'status':12}  {'channel':12}  {'to':16}  created_at"


def run_list(args: argparse.Namespace) -> int:
    filters = {
        "status": args.status,
        "direction": args.direction,
        "channel": args.channel,
        "since": args.since,
        "limit": args.limit,
    }
    found = find(**filters, archive=args.archive)
    if args.json:
        for message in found:
            print(msgspec.json.encode(message).decode())
        return 0
    print(LIST_HEADER)
    for m in found:
        print(
            f"{m.id:>10}  {m.direction:3}  {m.status:12}  {m.channel or '-':12}  "
            f"{m.to_address or '-':16}  {m.created_at.isoformat(timespec='seconds')}"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    message = get(args.id)
    if args.json:
        print(msgspec.json.encode(message).decode())
        return 0
    for field in message.__struct_fields__:
        value = getattr(message, field)
        print(f"{field:16} {'-' if value is None else escape_controls(str(value))}")
    return 0


def run_reprocess(args: argparse.Namespace) -> int:
    """trigger_status back to N/A; the ones that cannot move are named, and the exit is 1."""
    with db.connect(config.load().resolved_database_url(), application="smsbus-cli") as conn:
        outcome = triggers.reprocess(conn, args.ids)
        conn.commit()
    for message_id, refusal in outcome.items():
        if refusal is None:
            print(f"reprocessing {message_id}")
        else:
            print(f"smsbus: error: {refusal}", file=sys.stderr)
    refused = sum(refusal is not None for refusal in outcome.values())
    if refused:
        raise SmsbusError(f"{refused} of {len(outcome)} messages not reprocessed")
    return 0
