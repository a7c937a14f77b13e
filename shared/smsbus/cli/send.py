"""`smsbus send --to ... --body ...`: queue one outgoing message and print its id."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from smsbus.errors import SmsbusError
from smsbus.local_api import send


def register(commands: Any) -> None:
    parser = commands.add_parser("send", help="queue an outgoing message")
    parser.add_argument("--to", required=True, help="E.164 number, e.g. +31612345678")
    parser.add_argument("--body", required=True, help="the text")
    parser.add_argument("--from", dest="sender", help="sender number or alphanumeric id")
    parser.add_argument("--channel", help="send through this channel (skips routing)")
    parser.add_argument("--at", type=aware_datetime, help="send not before, ISO 8601 with zone")
    parser.add_argument("--client-ref", help="your idempotency key")
    parser.set_defaults(handler=run_send)


def aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. {text}+01:00 or {text}Z")
    return value


def run_send(args: argparse.Namespace) -> int:
    if args.client_ref == "":
        raise SmsbusError("--client-ref must not be empty")
    message_id = send(
        args.to,
        args.body,
        sender=args.sender,
        channel=args.channel,
        at=args.at,
        client_ref=args.client_ref,
    )
    print(message_id)
    return 0
