"""`smsbus rules block|route add|list|show|remove|move`: the router's rules, edited while it runs.

A change takes effect on the router's next batch (the tables announce it on the bus); a
condition PostgreSQL cannot compile is refused at once with PostgreSQL's message.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from smsbus import config, db
from smsbus.rules import (
    STRATEGIES,
    RuleKind,
    add_blocking_rule,
    add_routing_rule,
    get_rule,
    list_rules,
    move_rule,
    remove_rule,
)


@contextlib.contextmanager
def connection() -> Iterator[psycopg.Connection[Any]]:
    with db.connect(config.load().resolved_database_url(), application="smsbus-cli") as conn:
        yield conn


def register(commands: Any) -> None:
    parser = commands.add_parser("rules", help="blocking and routing rules")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, help_text in ((RuleKind.BLOCK, "blocking rules: the first match blocks"),
                            (RuleKind.ROUTE, "routing rules: the first match picks the channels")):
        verbs = kinds.add_parser(str(kind), help=help_text).add_subparsers(dest="verb", required=True, metavar="VERB")
        add = verbs.add_parser("add", help=f"add a {kind.noun}")
        add.add_argument("name")
        add.add_argument(
            "--condition", required=True, help="SQL boolean over the message, e.g. \"to_address LIKE '+8821%%'\""
        )
        if kind is RuleKind.ROUTE:
            add.add_argument(
                "--channels", required=True, type=name_list, help="comma-separated, in order of preference"
            )
            add.add_argument("--strategy", choices=STRATEGIES, default="failover")
            add.add_argument("--weights", type=weight_list, help="comma-separated, one per channel (weighted)")
        add.add_argument("--position", type=int, help="1 = evaluated first (default: last)")
        add.add_argument("--disabled", action="store_true", help="save it switched off")
        add.set_defaults(handler=run_add, rule_kind=kind)
        verbs.add_parser("list", help="in evaluation order").set_defaults(handler=run_list, rule_kind=kind)
        show = verbs.add_parser("show", help="every field of one rule")
        show.add_argument("rule", help="name or id")
        show.set_defaults(handler=run_show, rule_kind=kind)
        remove = verbs.add_parser("remove", help=f"delete a {kind.noun}")
        remove.add_argument("rule", help="name or id")
        remove.set_defaults(handler=run_remove, rule_kind=kind)
        move = verbs.add_parser("move", help="change its place in the order")
        move.add_argument("rule", help="name or id")
        move.add_argument("--to", dest="position", type=int, required=True, help="new position, 1 = first")
        move.set_defaults(handler=run_move, rule_kind=kind)


def name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated channel names, got {text!r}")
    return names


def weight_list(text: str) -> list[int]:
    try:
        weights = [int(w) for w in text.split(",")]
    except ValueError:
        weights = []
    if not weights or any(w <= 0 for w in weights):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive whole numbers, got {text!r}")
    return weights


def run_add(args: argparse.Namespace) -> int:
    with connection() as conn:
        if args.rule_kind is RuleKind.BLOCK:
            rule = add_blocking_rule(
                conn, args.name, args.condition, position=args.position, enabled=not args.disabled
            )
        else:
            rule = add_routing_rule(
                conn,
                args.name,
                args.condition,
                args.channels,
                strategy=args.strategy,
                weights=args.weights,
                position=args.position,
                enabled=not args.disabled,
            )
    print(f'added {args.rule_kind.noun} "{rule["name"]}" (id {rule["id"]})')
    return 0


def run_list(args: argparse.Namespace) -> int:
    with connection() as conn:
        rules = list_rules(conn, args.rule_kind)
    for rule in rules:
        print(describe(rule))
    return 0


def describe(rule: dict[str, Any]) -> str:
    """One line: position, name, what it does, and its condition."""
    off = "" if rule["enabled"] else "  (disabled)"
    target = ""
    if "channels" in rule:
        weights = f" weights {','.join(map(str, rule['weights']))}" if rule["weights"] else ""
        target = f"  -> {','.join(rule['channels'])} {rule['strategy']}{weights}"
    return f"{rule['position']:>3}. {rule['name']}{target}{off}  WHERE {rule['condition']}"


def run_show(args: argparse.Namespace) -> int:
    with connection() as conn:
        rule = get_rule(conn, args.rule_kind, args.rule)
    for field, value in rule.items():
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        print(f"{field:11} {'-' if value is None else shown}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    with connection() as conn:
        rule = remove_rule(conn, args.rule_kind, args.rule)
    print(f'removed {args.rule_kind.noun} "{rule["name"]}"')
    return 0


def run_move(args: argparse.Namespace) -> int:
    with connection() as conn:
        for rule in move_rule(conn, args.rule_kind, args.rule, args.position):
            print(describe(rule))
    return 0
