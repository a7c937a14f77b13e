"""`smsbus bus keys DIR [--broker]`: CURVE keys for a bus shared by several hosts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from smsbus import config
from smsbus.bus_keys import make_keys
from smsbus.privileges import ensure_service_user, started_as_root


def register(commands: Any) -> None:
    parser = commands.add_parser("bus", help="the ZeroMQ bus between hosts")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    keys = verbs.add_parser("keys", help="make the missing CURVE keys in DIR (see docs/deployment.md)")
    keys.add_argument("dir", type=Path, help="the folder bus.curve_dir will name")
    keys.add_argument("--broker", action="store_true", help="this host runs the broker: its pair and allow list too")
    keys.set_defaults(handler=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    folder = args.dir.resolve()
    owner = ensure_service_user(config.load().service_user) if started_as_root() else None
    made = make_keys(folder, broker=args.broker, owner=owner)
    print("\n".join(f"made {path}" for path in made) or f"{folder}: every key there already")
    print(f"set bus.curve_dir = \"{folder}\" (SMSBUS_BUS_CURVE_DIR) on every host of this bus")
    return 0
