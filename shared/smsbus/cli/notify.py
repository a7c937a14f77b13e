"""`smsbus notify status|nonstatus [IDS]` and `smsbus listen`: port 16725 from the shell."""

from __future__ import annotations

import argparse
from typing import Any

from smsbus.bus import Listener, notify_non_status_update, notify_status_update
from smsbus.cli.messages import positive_int


def register(commands: Any) -> None:
    parser = commands.add_parser("notify", help="announce a change on UDP port 16725")
    parser.add_argument("kind", choices=["status", "nonstatus"])
    parser.add_argument("ids", nargs="*", type=id_list, help="message ids, space- or comma-separated (optional)")
    parser.set_defaults(handler=run_notify)
    listen = commands.add_parser("listen", help="print each notification as a line (TCP 16725)")
    listen.add_argument("--count", type=positive_int, help="stop after this many")
    listen.set_defaults(handler=run_listen)


def id_list(text: str) -> list[int]:
    return [positive_int(part) for part in text.split(",") if part]


def run_notify(args: argparse.Namespace) -> int:
    announce = notify_status_update if args.kind == "status" else notify_non_status_update
    announce(i for ids in args.ids for i in ids)
    return 0


def run_listen(args: argparse.Namespace) -> int:
    with Listener() as listener:
        for received, notification in enumerate(listener, start=1):
            print(notification.to_line().decode(), end="", flush=True)
            if args.count and received >= args.count:
                break
    return 0
