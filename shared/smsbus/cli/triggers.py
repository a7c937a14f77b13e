"""`smsbus triggers add|list|show|edit|enable|disable|remove|move|test`: the triggers table,
edited while the triggers service runs (it reads the table at every batch and is woken by
`config.triggers`). A condition, an SQL script or a Python script that could never run is
refused when saved, with PostgreSQL's or Python's own words.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from smsbus import config, db
from smsbus.cli.messages import positive_int
from smsbus.errors import SmsbusError
from smsbus.triggers import (
    LANGUAGES,
    Trigger,
    add_trigger,
    edit_trigger,
    find_trigger,
    list_triggers,
    move_trigger,
    remove_trigger,
)

SERVICE_EXECUTABLE = "smsbus-triggers"
EXTENSION_LANGUAGES = {".py": "python", ".sql": "sql"}


@contextlib.contextmanager
def connection() -> Iterator[psycopg.Connection[Any]]:
    """Commits when the command succeeded."""
    with db.connect(config.load().resolved_database_url(), application="smsbus-cli") as conn:
        yield conn
        conn.commit()


def register(commands: Any) -> None:
    parser = commands.add_parser("triggers", help="scripts run when a message reaches a final state")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    add = verbs.add_parser("add", help="add a trigger (checked before it is saved)")
    add.add_argument("name")
    add.add_argument("--script", required=True, type=script_file, help="file with the script, - for stdin")
    add.add_argument("--language", choices=LANGUAGES, help="default: from the file's extension (.py, .sql)")
    add.add_argument("--condition", default="true", help="SQL boolean over the message (default: true)")
    add.add_argument("--timeout", type=positive_seconds, default=5.0, help="seconds (default 5)")
    add.add_argument("--position", type=positive_int, help="1 = runs first (default: last)")
    add.add_argument("--disabled", action="store_true", help="save it switched off")
    add.set_defaults(handler=run_add)

    listing = verbs.add_parser("list", help="in the order they run")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)

    show = verbs.add_parser("show", help="every field of one trigger, and its script")
    show.add_argument("trigger", help="name or id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)

    edit = verbs.add_parser("edit", help="change some fields (checked before they are saved)")
    edit.add_argument("trigger", help="name or id")
    edit.add_argument("--name")
    edit.add_argument("--script", type=script_file, help="file with the new script, - for stdin")
    edit.add_argument("--language", choices=LANGUAGES)
    edit.add_argument("--condition")
    edit.add_argument("--timeout", type=positive_seconds, help="seconds")
    edit.set_defaults(handler=run_edit)

    for verb, enabled in (("enable", True), ("disable", False)):
        switch = verbs.add_parser(verb, help=f"{verb} a trigger")
        switch.add_argument("trigger", help="name or id")
        switch.set_defaults(handler=run_switch, enabled=enabled)

    remove = verbs.add_parser("remove", help="delete a trigger")
    remove.add_argument("trigger", help="name or id")
    remove.set_defaults(handler=run_remove)

    move = verbs.add_parser("move", help="change its place in the order")
    move.add_argument("trigger", help="name or id")
    move.add_argument("--to", dest="position", type=positive_int, required=True, help="new position, 1 = first")
    move.set_defaults(handler=run_move)

    test = verbs.add_parser("test", help="run a trigger on a message without committing; show what it would do")
    test.add_argument("trigger", help="name or id")
    test.add_argument("--message", type=positive_int, required=True, help="message id")
    test.set_defaults(handler=run_test)


class ScriptFile(msgspec.Struct, frozen=True):
    text: str
    suffix: str


def script_file(path: str) -> ScriptFile:
    if path == "-":
        return ScriptFile(sys.stdin.read(), "")
    try:
        return ScriptFile(Path(path).read_text(encoding="utf-8"), Path(path).suffix)
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e}") from None


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def language_of(script: ScriptFile, given: str | None) -> str:
    if given is not None:
        return given
    if script.suffix in EXTENSION_LANGUAGES:
        return EXTENSION_LANGUAGES[script.suffix]
    raise SmsbusError("--language: give python or sql (the script file's name does not tell)")


def describe(trigger: Trigger) -> str:
    """One line: position, name, language, timeout, and its condition."""
    off = "" if trigger.enabled else "  (disabled)"
    return (
        f"{trigger.position:>3}. {trigger.name} [{trigger.language}, {trigger.timeout_s:g} s]{off}"
        f"  WHERE {trigger.condition}"
    )


def run_add(args: argparse.Namespace) -> int:
    with connection() as conn:
        trigger = add_trigger(
            conn,
            name=args.name,
            condition=args.condition,
            language=language_of(args.script, args.language),
            script=args.script.text,
            timeout_s=args.timeout,
            enabled=not args.disabled,
            position=args.position,
        )
    print(f'added trigger "{trigger.name}" (id {trigger.id}) at position {trigger.position}')
    return 0


def run_list(args: argparse.Namespace) -> int:
    with connection() as conn:
        triggers = list_triggers(conn)
    for trigger in triggers:
        print(msgspec.json.encode(trigger).decode() if args.json else describe(trigger))
    return 0


def run_show(args: argparse.Namespace) -> int:
    with connection() as conn:
        trigger = find_trigger(conn, args.trigger)
    if args.json:
        print(msgspec.json.encode(trigger).decode())
        return 0
    for field in trigger.__struct_fields__:
        value = f"{trigger.timeout_s:g} s" if field == "timeout" else getattr(trigger, field)
        if field != "script":
            print(f"{field:11} {value}")
    print(f"script:\n{trigger.script.rstrip()}")
    return 0


def run_edit(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {
        field: getattr(args, field)
        for field in ("name", "language", "condition", "timeout")
        if getattr(args, field) is not None
    }
    if args.script is not None:
        changes["script"] = args.script.text
        if args.language is None and args.script.suffix in EXTENSION_LANGUAGES:
            changes["language"] = EXTENSION_LANGUAGES[args.script.suffix]
    if not changes:
        raise SmsbusError("nothing to change: give --name, --script, --language, --condition or --timeout")
    with connection() as conn:
        trigger = edit_trigger(conn, find_trigger(conn, args.trigger), **changes)
    print(describe(trigger))
    return 0


def run_switch(args: argparse.Namespace) -> int:
    with connection() as conn:
        trigger = edit_trigger(conn, find_trigger(conn, args.trigger), enabled=args.enabled)
    print(describe(trigger))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    with connection() as conn:
        trigger = find_trigger(conn, args.trigger)
        remove_trigger(conn, trigger)
    print(f'removed trigger "{trigger.name}"')
    return 0


def run_move(args: argparse.Namespace) -> int:
    with connection() as conn:
        move_trigger(conn, find_trigger(conn, args.trigger), args.position)
        triggers = list_triggers(conn)
    for trigger in triggers:
        print(describe(trigger))
    return 0


def run_test(args: argparse.Namespace) -> int:
    """The triggers service's own code runs it (smsbus never imports a service)."""
    beside = Path(sys.executable).parent / SERVICE_EXECUTABLE
    executable = str(beside) if beside.exists() else shutil.which(SERVICE_EXECUTABLE)
    if executable is None:
        raise SmsbusError(f"{SERVICE_EXECUTABLE} is not installed (pip install smsbus-triggers)")
    return subprocess.run(
        [executable, "test", args.trigger, "--message", str(args.message)], check=False
    ).returncode
