"""`smsbus channels add TYPE NAME ...|list|show|set|enable|disable|remove`: the channels, edited
while everything runs. Settings are validated per type before they are saved (the field is
named); when smsbus is up, the channel's supervisord program follows at once (started,
restarted or stopped) and no other program is touched.

Secrets (an SMPP password, a SIM PIN) are read from a file or stdin (`--password-file -`),
never taken from the command line, where `ps` and the shell history would show them, and
`show` masks them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from smsbus import channels, config, db
from smsbus.channel_settings import SETTINGS_TYPES
from smsbus.errors import SmsbusError


@dataclass(frozen=True)
class Option:
    """A command-line flag for one setting of a channel type."""

    flag: str
    field: str
    kind: type
    help: str
    required: bool = False


def secret_file(path: str) -> str:
    """A secret's value: the first line of the file, or of stdin for `-`."""
    try:
        if path == "-":
            line = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as file:
                line = file.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    return line.rstrip("\r\n")


# settings that are secrets: read with their flag, refused in --set and `set FIELD=VALUE`
SECRET_FLAGS = {field: f"--{field}-file" for field in sorted(channels.SECRET_SETTINGS)}
SECRET_HELP = "('-': the first line of stdin; never give it on the command line)"


class RefusedSecretFlag(argparse.Action):
    """`--password VALUE` (hidden): refused with the way to do it, the value not repeated."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        field = self.dest.removeprefix("refused_")
        parser.error(f"{option_string} would show the {field} to `ps` and the shell history:"
                     f" use {SECRET_FLAGS[field]} FILE (or - for stdin)")


def _add_secret_flags(parser: argparse.ArgumentParser, fields: list[str]) -> None:
    for field in fields:
        parser.add_argument(
            SECRET_FLAGS[field], dest=field, type=secret_file, metavar="FILE", help=f"the {field} {SECRET_HELP}"
        )
        parser.add_argument(f"--{field}", dest=f"refused_{field}", action=RefusedSecretFlag, help=argparse.SUPPRESS)

# the settings most channels need, as flags; any other setting with --set field=value
TYPE_OPTIONS: dict[str, tuple[Option, ...]] = {
    "gsm": (
        Option("--device", "device", str, "serial device, e.g. /dev/serial/by-id/usb-...", required=True),
        Option("--baud-rate", "baud_rate", int, "default 115200"),
        Option("--smsc", "smsc", str, "SMS centre number (default: the SIM's)"),
        Option("--storage", "storage", str, "SM, ME or MT (default SM)"),
    ),
    "smpp": (
        Option("--host", "host", str, "the SMSC's host", required=True),
        Option("--port", "port", int, "default 2775"),
        Option("--system-id", "system_id", str, "bind system_id", required=True),
        Option("--bind-mode", "bind_mode", str, "transmitter, receiver, transceiver or pair"),
    ),
}


# the secrets each type has, read by --pin-file / --password-file
SECRET_FIELDS_OF_TYPE = {"gsm": ["pin"], "smpp": ["password"]}


@contextlib.contextmanager
def connection() -> Iterator[psycopg.Connection[Any]]:
    with db.connect(config.load().resolved_database_url(), application="smsbus-cli") as conn:
        yield conn


def register(commands: Any) -> None:
    parser = commands.add_parser("channels", help="SMPP connections and GSM modems")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="add a channel (its program starts when smsbus is up)")
    types = add.add_subparsers(dest="type", required=True, metavar="TYPE")
    for channel_type in SETTINGS_TYPES:
        typed = types.add_parser(channel_type, help=f"a {channel_type} channel")
        typed.add_argument("name", help="lower case letters, digits, - and _")
        for option in TYPE_OPTIONS.get(channel_type, ()):
            typed.add_argument(
                option.flag, dest=option.field, type=option.kind, help=option.help, required=option.required
            )
        _add_secret_flags(typed, SECRET_FIELDS_OF_TYPE.get(channel_type, []))
        _add_common_options(typed)
        typed.set_defaults(handler=run_add, options=TYPE_OPTIONS.get(channel_type, ()))
    verbs.add_parser("list", help="every channel, enabled or not").set_defaults(handler=run_list)
    show = verbs.add_parser("show", help="every field of one channel")
    show.add_argument("name")
    show.set_defaults(handler=run_show)
    change = verbs.add_parser("set", help="change settings (validated; the program restarts)")
    change.add_argument("name")
    change.add_argument(
        "assignments",
        nargs="*",
        metavar="FIELD=VALUE",
        type=assignment,
        help="a JSON value or plain text; FIELD= (empty) restores the default",
    )
    _add_secret_flags(change, list(SECRET_FLAGS))
    change.set_defaults(handler=run_set)
    for verb, help_text in (
        ("enable", "start sending through it"),
        ("disable", "stop its program, keep it"),
        ("remove", "delete it (its program stops)"),
    ):
        command = verbs.add_parser(verb, help=help_text)
        command.add_argument("name")
        command.set_defaults(handler=run_toggle, verb=verb)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        type=assignment,
        default=[],
        metavar="FIELD=VALUE",
        help="any other setting (repeatable)",
    )
    parser.add_argument(
        "--report-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="no status report within this long: NOREPORT (default 48 h)",
    )
    parser.add_argument("--max-rate", type=float, metavar="PER_SECOND", help="messages per second at most")
    parser.add_argument("--daily-limit", type=int, help="messages per day at most (the router counts)")
    parser.add_argument("--disabled", action="store_true", help="save it switched off")


def assignment(text: str) -> tuple[str, Any]:
    field, separator, value = text.partition("=")
    if not separator or not field:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE")
    if field in SECRET_FLAGS and value:
        # the value is not repeated: it is a secret already exposed once
        raise argparse.ArgumentTypeError(
            f"{field} is a secret: give it with {SECRET_FLAGS[field]} FILE (or - for stdin), not on the command line"
        )
    if value == "":
        return field, None
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def positive_seconds(text: str) -> timedelta:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return timedelta(seconds=seconds)


def run_add(args: argparse.Namespace) -> int:
    fields = [o.field for o in args.options] + SECRET_FIELDS_OF_TYPE.get(args.type, [])
    settings = {field: getattr(args, field) for field in fields if getattr(args, field) is not None}
    settings.update({field: value for field, value in args.assignments if value is not None})
    with connection() as conn:
        channel = channels.add_channel(
            conn,
            args.name,
            args.type,
            settings,
            enabled=not args.disabled,
            report_timeout=args.report_timeout,
            max_rate=args.max_rate,
            daily_limit=args.daily_limit,
        )
        print(f"added {channel['type']} channel {channel['name']!r}" + ("" if channel["enabled"] else " (disabled)"))
        follow_in_supervisor(conn)
    return 0


def run_list(args: argparse.Namespace) -> int:
    with connection() as conn:
        rows = channels.list_channels(conn)
    if not rows:
        print("(no channels; add one with `smsbus channels add gsm|smpp NAME ...`)")
    for row in rows:
        state = "enabled" if row["enabled"] else "disabled"
        target = row["settings"].get("device") or row["settings"].get("host") or ""
        print(f"{row['name']:20} {row['type']:5} {state:9} {target}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    with connection() as conn:
        row = channels.get_channel(conn, args.name)
    for field in ("name", "type", "enabled", "report_timeout", "max_rate", "daily_limit", "created_at", "updated_at"):
        print(f"{field:15} {'-' if row[field] is None else row[field]}")
    for field, value in sorted(channels.masked_settings(row["settings"]).items()):
        print(f"settings.{field:6} {value if field in channels.SECRET_SETTINGS else json.dumps(value)}")
    return 0


def run_set(args: argparse.Namespace) -> int:
    changes = dict(args.assignments)
    changes.update({field: getattr(args, field) for field in SECRET_FLAGS if getattr(args, field) is not None})
    if not changes:
        raise SmsbusError("nothing to change: give FIELD=VALUE or a secret's file")
    with connection() as conn:
        channels.change_settings(conn, args.name, changes)
        print(f"changed channel {args.name!r}")
        follow_in_supervisor(conn)
    return 0


def run_toggle(args: argparse.Namespace) -> int:
    with connection() as conn:
        if args.verb == "remove":
            channels.remove_channel(conn, args.name)
        else:
            channels.set_enabled(conn, args.name, args.verb == "enable")
        print(f"{args.verb}d channel {args.name!r}")
        follow_in_supervisor(conn)
    return 0


def follow_in_supervisor(conn: psycopg.Connection[Any]) -> None:
    """The programs follow the table now when smsbus is up; otherwise at `smsbus up`."""
    changes = channels.follow_in_supervisor(config.load(), conn)
    if changes is None:
        print("smsbus is not running: the channel programs follow at `smsbus up`")
        return
    for verb, programs in changes.items():
        for program in programs:
            print(f"{verb} program {program}")
